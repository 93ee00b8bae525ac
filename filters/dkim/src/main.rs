//! filter-dkim: signs and verifies DKIM signatures for smtpd. See filter-dkim(8).
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use filter_dkim::config::{self, Config};
use filter_dkim::dns::Resolver;
use filter_dkim::jobs::{self, Pool};
use filter_dkim::machine::{Job, Machine};
use smtpd_filter::codec::{self, Frame};
use smtpd_filter::preamble::Preamble;
use std::io::{self, Read};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Threads that verify: most of their time is spent waiting for the DNS.
const VERIFIERS: usize = 8;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The DNS records of the keys, one a line, in zone file form (strings of at most
/// 255 octets).
fn print_records(cfg: &Config) {
    let mut domains: Vec<&String> = cfg.keys.keys().collect();
    domains.sort();
    for d in domains {
        for k in &cfg.keys[d] {
            let rec = k.key.dns_record();
            let strings: Vec<String> = rec
                .as_bytes()
                .chunks(255)
                .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
                .collect();
            println!(
                "{}._domainkey.{}. IN TXT {}",
                k.selector,
                d,
                strings.join(" ")
            );
        }
    }
}

fn serve(cfg: Arc<Config>) -> io::Result<()> {
    let resolver = Arc::new(Resolver::system());
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let signers = Pool::new(cores, "sign", cfg.clone(), resolver.clone())?;
    let verifiers = Pool::new(VERIFIERS, "verify", cfg.clone(), resolver)?;
    let mut machine = Machine::new(cfg);
    let (hooks, reports) = machine.events();
    let mut out = Vec::with_capacity(256 * 1024);
    let reg = Frame::Register {
        version: codec::VERSION,
        hooks,
        reports,
        name: b"dkim",
    };
    codec::encode(0, &reg, &mut out);
    jobs::send(&out)?;

    let mut stdin = io::stdin().lock();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut buf: Vec<u8> = Vec::with_capacity(2 * codec::MAX_FRAME);
    let mut pre = Preamble::default();
    let mut ready = false;
    // Key lookups end well before the daemon's deadline for the answer.
    let mut budget = Duration::from_secs(10);
    let mut jobs: Vec<Job> = Vec::new();
    loop {
        let n = match stdin.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        buf.extend_from_slice(pre.filter(&chunk[..n]));
        out.clear();
        let mut start = 0;
        let now = now();
        while let Some((sid, frame, used)) = codec::decode(&buf[start..])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            let raw = &buf[start..start + used];
            if !ready {
                let timeout_ms = smtpd_filter::filter::ready_timeout(&frame)?;
                ready = true;
                budget = Duration::from_millis(u64::from(timeout_ms) / 2).min(budget);
            } else if let Some(job) = machine.frame(sid, &frame, raw, now, &mut out) {
                jobs.push(job);
            }
            start += used;
        }
        buf.drain(..start);
        if !out.is_empty() {
            jobs::send(&out)?;
        }
        for job in jobs.drain(..) {
            match job {
                Job::Sign { .. } => signers.submit(job, budget),
                Job::Verify { .. } => verifiers.submit(job, budget),
            }
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match config::parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("filter-dkim: {e}\n{}", config::USAGE);
            return ExitCode::from(1);
        }
    };
    if cfg.print_records {
        print_records(&cfg);
        return ExitCode::SUCCESS;
    }
    match serve(Arc::new(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("filter-dkim: {e}");
            ExitCode::from(1)
        }
    }
}
