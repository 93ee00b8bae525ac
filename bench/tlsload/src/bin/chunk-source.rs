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

use std::process::ExitCode;
use std::sync::Arc;

use tlsload::message::Template;
use tlsload::smtp::Session;
use tlsload::source::{self, Options, Source};
use tlsload::{number, Error};

struct ChunkSource {
    o: Arc<Options>,
    /// BDAT: 0 for one chunk a message, else the largest chunk; None for DATA.
    bdat: Option<usize>,
    t: Template,
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

impl Source for ChunkSource {
    type Session = Session;

    /// The greeting and EHLO; BDAT needs CHUNKING.
    fn open(&self) -> Result<Session, Error> {
        let mut s = Session::connect(self.o.addr)?;
        s.expect(220, "greeting")?;
        let ehlo = s.command(&format!("EHLO {}", self.o.helo), 250)?;
        let chunking = ehlo.lines().any(|l| {
            l.get(4..)
                .is_some_and(|k| k.trim_end().eq_ignore_ascii_case("CHUNKING"))
        });
        if self.bdat.is_some() && !chunking {
            return Err(Error(format!("CHUNKING not offered: {}", ehlo.trim_end())));
        }
        Ok(s)
    }

    /// MAIL, RCPT, then DATA and the message, or its BDAT chunks; each reply checked.
    fn send(&self, s: &mut Session, i: usize) -> Result<(), Error> {
        s.command(&format!("MAIL FROM:<{}>", self.o.from), 250)?;
        s.command(&format!("RCPT TO:<{}>", self.o.to), 250)?;
        match self.bdat {
            None => {
                s.command("DATA", 354)?;
                s.send(&self.t.message(i))?;
                s.expect(250, "end of DATA")?;
            }
            Some(max) => {
                let (wire, n) = chunks(&self.t.content(i), max);
                s.send(&wire)?;
                for k in 1..=n {
                    s.expect(250, &format!("BDAT chunk {k} of {n}"))?;
                }
            }
        }
        Ok(())
    }

    fn quit(&self, s: Session) -> Result<(), Error> {
        s.quit()
    }
}

fn run(args: &[String]) -> Result<String, Error> {
    let mut bdat = match std::env::var("BENCH_CHUNKS") {
        Ok(v) => mode(&v)?,
        Err(_) => None,
    };
    let o = Arc::new(Options::parse(args, |a, it| match a {
        "-B" => {
            bdat = Some(bdat.unwrap_or(0));
            Ok(true)
        }
        "-C" => {
            bdat = Some(number("-C", it.next())?);
            Ok(true)
        }
        _ => Ok(false),
    })?);
    let src = ChunkSource {
        t: Template::new(o.size, &o.from, &o.to, &o.helo),
        bdat,
        o: o.clone(),
    };
    source::run("chunk-source", o, Arc::new(src))
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
