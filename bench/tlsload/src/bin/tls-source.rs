//! tls-source: smtp-source over STARTTLS (see the crate documentation).
//!
//! Usage: tls-source [-d] [-s SESSIONS] [-m MESSAGES] [-l SIZE] [-M HELO] [-f FROM]
//! [-t TO] HOST:PORT
//!
//! SESSIONS threads send MESSAGES messages in all, each of SIZE bytes of body; every
//! session makes STARTTLS first. With -d a session carries message after message,
//! otherwise each message has its own connection. Each reply is checked (220 greeting,
//! 250 to EHLO, 220 to STARTTLS, 250 to EHLO, MAIL and RCPT, 354 to DATA, 250 after
//! the message, 221 to QUIT); the first failure stops every session, is printed, and
//! the exit status is 1. Nothing is printed otherwise.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use tlsload::message::Template;
use tlsload::smtp::Session;
use tlsload::tls::Client;
use tlsload::{loopback_addr, number, Error};

struct Options {
    reuse: bool,
    sessions: usize,
    messages: usize,
    size: usize,
    helo: String,
    from: String,
    to: String,
    addr: SocketAddr,
}

fn options(args: &[String]) -> Result<Options, Error> {
    let mut o = Options {
        reuse: false,
        sessions: 1,
        messages: 1,
        size: 1024,
        helo: "client.bench.test".into(),
        from: "a@bench.test".into(),
        to: "u@bench.test".into(),
        addr: loopback_addr("127.0.0.1:25")?,
    };
    let mut addr = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "-d" => o.reuse = true,
            "-s" => o.sessions = number("-s", it.next())?,
            "-m" => o.messages = number("-m", it.next())?,
            "-l" => o.size = number("-l", it.next())?,
            "-M" | "-f" | "-t" => {
                let v = it
                    .next()
                    .ok_or_else(|| Error(format!("{a}: a value is needed")))?
                    .clone();
                match a.as_str() {
                    "-M" => o.helo = v,
                    "-f" => o.from = v,
                    _ => o.to = v,
                }
            }
            s if !s.starts_with('-') && addr.is_none() => addr = Some(loopback_addr(s)?),
            s => return Err(Error(format!("unknown argument {s}"))),
        }
    }
    o.addr = addr.ok_or_else(|| Error("no HOST:PORT".into()))?;
    if o.sessions == 0 || o.sessions > 1000 {
        return Err(Error("-s: 1 to 1000 sessions".into()));
    }
    Ok(o)
}

/// One message in an open session: MAIL, RCPT, DATA, the message, each reply checked.
fn send_one(s: &mut Session, o: &Options, t: &Template, i: usize) -> Result<(), Error> {
    s.command(&format!("MAIL FROM:<{}>", o.from), 250)?;
    s.command(&format!("RCPT TO:<{}>", o.to), 250)?;
    s.command("DATA", 354)?;
    s.send(&t.message(i))?;
    s.expect(250, "end of DATA")?;
    Ok(())
}

/// A session's share: takes message numbers until none is left or another session failed.
fn worker(
    o: &Options,
    t: &Template,
    client: &Client,
    next: &AtomicUsize,
    failed: &AtomicBool,
) -> Result<(), Error> {
    let mut session: Option<Session> = None;
    while !failed.load(Ordering::Relaxed) {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= o.messages {
            break;
        }
        let mut s = match session.take() {
            Some(s) => s,
            None => Session::connect(o.addr)?.starttls(client, &o.helo)?,
        };
        send_one(&mut s, o, t, i).map_err(|e| Error(format!("message {i}: {e}")))?;
        if o.reuse {
            session = Some(s);
        } else {
            s.quit()?;
        }
    }
    if let Some(s) = session {
        s.quit()?;
    }
    Ok(())
}

fn run(args: &[String]) -> Result<String, Error> {
    let o = Arc::new(options(args)?);
    let t = Arc::new(Template::new(o.size, &o.from, &o.to, &o.helo));
    let client = Client::new()?;
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(o.sessions);
    for n in 0..o.sessions {
        let (o, t, client, next, failed) = (
            o.clone(),
            t.clone(),
            client.clone(),
            next.clone(),
            failed.clone(),
        );
        threads.push(thread::spawn(move || {
            let r = worker(&o, &t, &client, &next, &failed);
            if let Err(e) = &r {
                failed.store(true, Ordering::Relaxed);
                eprintln!("tls-source: session {n}: {e}");
            }
            r.is_ok()
        }));
    }
    let mut ok = true;
    for th in threads {
        ok &= th.join().unwrap_or(false);
    }
    if ok {
        Ok(String::new())
    } else {
        Err(Error("failed (see above)".into()))
    }
}

fn main() -> ExitCode {
    tlsload::main("tls-source", run)
}
