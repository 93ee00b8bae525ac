//! What `tls-source` and `chunk-source` share: smtp-source's options, and the sessions
//! that send the messages of a run, in threads.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use crate::{loopback_addr, number, Error};

/// smtp-source's options: `-d -s SESSIONS -m MESSAGES -l SIZE -M HELO -f FROM -t TO
/// HOST:PORT`.
pub struct Options {
    /// `-d`: a session carries message after message (else a connection a message).
    pub reuse: bool,
    /// `-s`: sessions in parallel, 1 to 1000.
    pub sessions: usize,
    /// `-m`: messages in all.
    pub messages: usize,
    /// `-l`: octets of body of each message.
    pub size: usize,
    /// `-M`: the EHLO name.
    pub helo: String,
    /// `-f`: the sender.
    pub from: String,
    /// `-t`: the recipient.
    pub to: String,
    /// The server (a loopback address).
    pub addr: SocketAddr,
}

impl Options {
    /// Parses smtp-source's options; `extra` is offered every other option with the
    /// arguments after it, and says whether it took it.
    pub fn parse(
        args: &[String],
        mut extra: impl FnMut(&str, &mut std::slice::Iter<'_, String>) -> Result<bool, Error>,
    ) -> Result<Options, Error> {
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
                s if extra(s, &mut it)? => {}
                s => return Err(Error(format!("unknown argument {s}"))),
            }
        }
        o.addr = addr.ok_or_else(|| Error("no HOST:PORT".into()))?;
        if o.sessions == 0 || o.sessions > 1000 {
            return Err(Error("-s: 1 to 1000 sessions".into()));
        }
        Ok(o)
    }
}

/// How a tool opens a session, sends one message in it and ends it.
pub trait Source: Send + Sync + 'static {
    /// A session.
    type Session;
    /// Connects and greets (everything up to the first MAIL).
    fn open(&self) -> Result<Self::Session, Error>;
    /// Sends message number `i`, each reply checked.
    fn send(&self, s: &mut Self::Session, i: usize) -> Result<(), Error>;
    /// QUIT.
    fn quit(&self, s: Self::Session) -> Result<(), Error>;
}

/// A session's share: takes message numbers until none is left or another session
/// failed.
fn worker<T: Source>(
    o: &Options,
    src: &T,
    next: &AtomicUsize,
    failed: &AtomicBool,
) -> Result<(), Error> {
    let mut session = None;
    while !failed.load(Ordering::Relaxed) {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= o.messages {
            break;
        }
        let mut s = match session.take() {
            Some(s) => s,
            None => src.open()?,
        };
        src.send(&mut s, i)
            .map_err(|e| Error(format!("message {i}: {e}")))?;
        if o.reuse {
            session = Some(s);
        } else {
            src.quit(s)?;
        }
    }
    if let Some(s) = session {
        src.quit(s)?;
    }
    Ok(())
}

/// Sends the run's messages over `o.sessions` sessions in threads; the first failure
/// stops every session and is printed after `tool`'s name.
pub fn run<T: Source>(tool: &'static str, o: Arc<Options>, src: Arc<T>) -> Result<String, Error> {
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(o.sessions);
    for n in 0..o.sessions {
        let (o, src, next, failed) = (o.clone(), src.clone(), next.clone(), failed.clone());
        threads.push(thread::spawn(move || {
            let r = worker(&o, &*src, &next, &failed);
            if let Err(e) = &r {
                failed.store(true, Ordering::Relaxed);
                eprintln!("{tool}: session {n}: {e}");
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
