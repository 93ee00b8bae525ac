//! chunk-source: smtp-source in plain text, each message sent with DATA or with BDAT
//! (RFC 3030), for bench/run's `bdat` phase (see the crate documentation).
//!
//! Usage: chunk-source [-B] [-C OCTETS] [-d] [-s SESSIONS] [-m MESSAGES] [-l SIZE]
//! [-M HELO] [-f FROM] [-t TO] HOST:PORT
//!
//! SESSIONS threads send MESSAGES messages in all, each of SIZE bytes of body, with DATA
//! (`354`, the content, the dot), or with -B in BDAT chunks: the whole message in one
//! `BDAT n LAST`, or with -C chunks of at most OCTETS, written together (pipelined)
//! and their replies read after. The environment variable BENCH_CHUNKS (`data`,
//! `bdat` or `bdat:OCTETS`) sets the same from outside, for bench/run, which passes
//! smtp-source's options only; options on the command line come after it. With -d a
//! session carries message after message, otherwise each message has its own
//! connection. MAIL and RCPT wait for their replies in both modes. Each reply is checked
//! (220 greeting, 250 to EHLO, which must offer CHUNKING for -B, 250 to MAIL and RCPT,
//! 354 to DATA, 250 after the message and after each chunk, 221 to QUIT); the first
//! failure stops every session, is printed, and the exit status is 1. Nothing is
//! printed otherwise.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use tlsload::message::Template;
use tlsload::smtp::Session;
use tlsload::{loopback_addr, number, Error};

struct Options {
    /// BDAT: 0 for one chunk a message, else the largest chunk; None for DATA.
    bdat: Option<usize>,
    reuse: bool,
    sessions: usize,
    messages: usize,
    size: usize,
    helo: String,
    from: String,
    to: String,
    addr: SocketAddr,
}

/// BENCH_CHUNKS: `data`, `bdat` or `bdat:OCTETS`.
fn mode(v: &str) -> Result<Option<usize>, Error> {
    match v.split_once(':') {
        None if v == "data" => Ok(None),
        None if v == "bdat" => Ok(Some(0)),
        Some(("bdat", n)) => n
            .parse()
            .map(Some)
            .map_err(|_| Error(format!("BENCH_CHUNKS={v}: bdat:OCTETS"))),
        _ => Err(Error(format!(
            "BENCH_CHUNKS={v}: data, bdat or bdat:OCTETS"
        ))),
    }
}

fn options(args: &[String]) -> Result<Options, Error> {
    let mut o = Options {
        bdat: match std::env::var("BENCH_CHUNKS") {
            Ok(v) => mode(&v)?,
            Err(_) => None,
        },
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
            "-B" => o.bdat = Some(o.bdat.unwrap_or(0)),
            "-C" => o.bdat = Some(number("-C", it.next())?),
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

/// The BDAT chunks of `content`: the command lines and octets, in one buffer, and how
/// many there are (at least one, the last one LAST).
fn chunks(content: &[u8], max: usize) -> (Vec<u8>, usize) {
    let size = if max == 0 { content.len().max(1) } else { max };
    let mut wire = Vec::with_capacity(content.len() + 64);
    let mut pieces: Vec<&[u8]> = content.chunks(size).collect();
    if pieces.is_empty() {
        pieces.push(b"");
    }
    let n = pieces.len();
    for (i, p) in pieces.into_iter().enumerate() {
        let last = if i + 1 == n { " LAST" } else { "" };
        wire.extend_from_slice(format!("BDAT {}{last}\r\n", p.len()).as_bytes());
        wire.extend_from_slice(p);
    }
    (wire, n)
}

/// A new session: the greeting and EHLO; BDAT needs CHUNKING.
fn open(o: &Options) -> Result<Session, Error> {
    let mut s = Session::connect(o.addr)?;
    s.expect(220, "greeting")?;
    let ehlo = s.command(&format!("EHLO {}", o.helo), 250)?;
    let chunking = ehlo.lines().any(|l| {
        l.get(4..)
            .is_some_and(|k| k.trim_end().eq_ignore_ascii_case("CHUNKING"))
    });
    if o.bdat.is_some() && !chunking {
        return Err(Error(format!("CHUNKING not offered: {}", ehlo.trim_end())));
    }
    Ok(s)
}

/// One message in an open session: MAIL, RCPT, then DATA and the message, or its BDAT
/// chunks; each reply checked.
fn send_one(s: &mut Session, o: &Options, t: &Template, i: usize) -> Result<(), Error> {
    s.command(&format!("MAIL FROM:<{}>", o.from), 250)?;
    s.command(&format!("RCPT TO:<{}>", o.to), 250)?;
    match o.bdat {
        None => {
            s.command("DATA", 354)?;
            s.send(&t.message(i))?;
            s.expect(250, "end of DATA")?;
        }
        Some(max) => {
            let (wire, n) = chunks(&t.content(i), max);
            s.send(&wire)?;
            for k in 1..=n {
                s.expect(250, &format!("BDAT chunk {k} of {n}"))?;
            }
        }
    }
    Ok(())
}

/// A session's share: takes message numbers until none is left or another session failed.
fn worker(o: &Options, t: &Template, next: &AtomicUsize, failed: &AtomicBool) -> Result<(), Error> {
    let mut session: Option<Session> = None;
    while !failed.load(Ordering::Relaxed) {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= o.messages {
            break;
        }
        let mut s = match session.take() {
            Some(s) => s,
            None => open(o)?,
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
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(o.sessions);
    for n in 0..o.sessions {
        let (o, t, next, failed) = (o.clone(), t.clone(), next.clone(), failed.clone());
        threads.push(thread::spawn(move || {
            let r = worker(&o, &t, &next, &failed);
            if let Err(e) = &r {
                failed.store(true, Ordering::Relaxed);
                eprintln!("chunk-source: session {n}: {e}");
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
    tlsload::main("chunk-source", run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_framing() {
        let (w, n) = chunks(b"abcdefg", 0);
        assert_eq!((w.as_slice(), n), (&b"BDAT 7 LAST\r\nabcdefg"[..], 1));
        let (w, n) = chunks(b"abcdefg", 3);
        assert_eq!(n, 3);
        assert_eq!(w, b"BDAT 3\r\nabcBDAT 3\r\ndefBDAT 1 LAST\r\ng");
        assert_eq!(chunks(b"", 0), (b"BDAT 0 LAST\r\n".to_vec(), 1));
        assert_eq!(chunks(b"", 5), (b"BDAT 0 LAST\r\n".to_vec(), 1));
    }

    #[test]
    fn modes() {
        assert_eq!(mode("data").ok(), Some(None));
        assert_eq!(mode("bdat").ok(), Some(Some(0)));
        assert_eq!(mode("bdat:16384").ok(), Some(Some(16384)));
        assert!(mode("bdat:x").is_err() && mode("chunks").is_err());
    }
}
