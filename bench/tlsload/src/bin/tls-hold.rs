//! tls-hold: holds idle SMTP sessions that completed STARTTLS and EHLO (the memory
//! measure of bench/run).
//!
//! Usage: tls-hold [-n SESSIONS] [-T HOLD_SECONDS] HOST:PORT
//!
//! Opens SESSIONS sessions one after the other (greeting, EHLO, STARTTLS, handshake,
//! EHLO; every reply checked), for at most 180 s; a session that fails is printed and
//! counted. Then prints `READY OK FAILED SECONDS` (as the shared harness's
//! hold_conns.py does), holds them for HOLD_SECONDS (default 120) or until killed, and
//! ends each with QUIT.

use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use tlsload::smtp::Session;
use tlsload::tls::Client;
use tlsload::{loopback_addr, number, Error};

/// The longest the sessions may take to open, all together.
const OPEN_LIMIT: Duration = Duration::from_secs(180);

fn run(args: &[String]) -> Result<String, Error> {
    let (mut n, mut hold, mut addr) = (100usize, 120u64, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-n" => n = number("-n", it.next())?,
            "-T" => hold = number("-T", it.next())?,
            s if !s.starts_with('-') && addr.is_none() => addr = Some(loopback_addr(s)?),
            s => return Err(Error(format!("unknown argument {s}"))),
        }
    }
    let addr = addr.ok_or_else(|| Error("no HOST:PORT".into()))?;
    if n > 20000 || hold > 3600 {
        return Err(Error(
            "-n: at most 20000 sessions, -T: at most 3600 s".into(),
        ));
    }
    let client = Client::new()?;
    let start = Instant::now();
    let mut held = Vec::with_capacity(n);
    let mut failed = 0usize;
    for i in 0..n {
        if start.elapsed() > OPEN_LIMIT {
            eprintln!(
                "tls-hold: {} sessions not opened within {OPEN_LIMIT:?}",
                n - i
            );
            failed += n - i;
            break;
        }
        match Session::connect(addr).and_then(|s| s.starttls(&client, "hold.bench.test")) {
            Ok(s) => held.push(s),
            Err(e) => {
                failed += 1;
                eprintln!("tls-hold: session {i}: {e}");
            }
        }
    }
    println!(
        "READY {} {failed} {:.2}",
        held.len(),
        start.elapsed().as_secs_f64()
    );
    thread::sleep(Duration::from_secs(hold));
    for s in held {
        // the server may have ended an idle session by now: QUIT is a courtesy
        let _ = s.quit();
    }
    Ok(String::new())
}

fn main() -> ExitCode {
    tlsload::main("tls-hold", run)
}
