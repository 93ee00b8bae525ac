//! tls-handshakes: TLS handshakes per second against an implicit-TLS (smtps) port.
//!
//! Usage: tls-handshakes [-c CONNECTIONS] [-T SECONDS] HOST:PORT
//!
//! CONNECTIONS threads (default 8) each connect, make a full TLS handshake (no session
//! resumption is offered), read the 220 greeting through TLS (that is the end of one
//! handshake, counted), send QUIT, read its 221 and close; then again, until SECONDS
//! (default 10) have passed. Prints one line:
//!
//! `handshakes N seconds S rate R version V suite C group G`
//!
//! where S runs until the last connection ended. The first failure of any connection
//! stops every thread, is printed, and the exit status is 1.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tlsload::smtp::{Session, TlsFacts};
use tlsload::tls::Client;
use tlsload::{loopback_addr, number, Error};

struct Shared {
    addr: SocketAddr,
    client: Client,
    end: Instant,
    count: AtomicU64,
    failed: AtomicBool,
    facts: Mutex<Option<TlsFacts>>,
}

/// One connection: handshake, greeting, QUIT.
fn one(sh: &Shared) -> Result<(), Error> {
    let mut s = Session::connect_tls(sh.addr, &sh.client)?;
    s.expect(220, "greeting")?;
    sh.count.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut f) = sh.facts.lock() {
        if f.is_none() {
            *f = s.tls_facts();
        }
    }
    s.quit()
}

fn worker(sh: &Shared) -> Result<(), Error> {
    while Instant::now() < sh.end && !sh.failed.load(Ordering::Relaxed) {
        one(sh)?;
    }
    Ok(())
}

fn run(args: &[String]) -> Result<String, Error> {
    let (mut conns, mut secs, mut addr) = (8usize, 10u64, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-c" => conns = number("-c", it.next())?,
            "-T" => secs = number("-T", it.next())?,
            s if !s.starts_with('-') && addr.is_none() => addr = Some(loopback_addr(s)?),
            s => return Err(Error(format!("unknown argument {s}"))),
        }
    }
    if conns == 0 || conns > 200 || secs == 0 || secs > 600 {
        return Err(Error(
            "-c: 1 to 200 connections, -T: 1 to 600 seconds".into(),
        ));
    }
    let start = Instant::now();
    let sh = Arc::new(Shared {
        addr: addr.ok_or_else(|| Error("no HOST:PORT".into()))?,
        client: Client::new()?,
        end: start + Duration::from_secs(secs),
        count: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        facts: Mutex::new(None),
    });
    let threads: Vec<_> = (0..conns)
        .map(|n| {
            let sh = sh.clone();
            thread::spawn(move || {
                let r = worker(&sh);
                if let Err(e) = &r {
                    sh.failed.store(true, Ordering::Relaxed);
                    eprintln!("tls-handshakes: connection thread {n}: {e}");
                }
                r.is_ok()
            })
        })
        .collect();
    let mut ok = true;
    for t in threads {
        ok &= t.join().unwrap_or(false);
    }
    let elapsed = start.elapsed().as_secs_f64();
    if !ok {
        return Err(Error("failed (see above)".into()));
    }
    let n = sh.count.load(Ordering::Relaxed);
    let f = sh
        .facts
        .lock()
        .map(|f| f.clone().unwrap_or_default())
        .unwrap_or_default();
    Ok(format!(
        "handshakes {n} seconds {elapsed:.3} rate {:.1} version {} suite {} group {}",
        n as f64 / elapsed,
        f.version,
        f.suite,
        f.group
    ))
}

fn main() -> ExitCode {
    tlsload::main("tls-handshakes", run)
}
