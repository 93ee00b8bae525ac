//! filter-milter: bridges smtpd's filter protocol to Sendmail milters (protocol v6).
//!
//! One process serves every SMTP session at once: a poll loop over standard input (the
//! daemon's frames) and one milter connection per SMTP session and milter, so that a
//! slow milter reply for one session never holds up another. See README.md.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use filter_milter::conn::Target;
use filter_milter::session;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use session::{Config, Ctx, DefaultAction, Phase, Session, TlsFacts};
use smtpd_filter::codec::{self, event, Decoder, Frame};
use smtpd_filter::sys::set_nonblocking;
use std::collections::HashMap;
use std::io;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

const STDIN: Token = Token(0);
const STDOUT: Token = Token(1);
const FIRST_MILTER: usize = 2;

const USAGE: &str = "usage: filter-milter [-v] [-t timeout] [-d tempfail|accept|reject] \
[-m macro=value ...] socket ...
  socket: unix:/path, local:/path, inet:port@host, inet6:port@host";

/// Reads a duration: seconds, or a number with `ms`, `s`, `m` or `h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("bad duration {s:?}")),
    };
    if d.is_zero() {
        return Err("the timeout must not be zero".into());
    }
    Ok(d)
}

fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length, which is what gethostname is given.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Reads the command line.
fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut o = getopts::Options::new();
    o.optopt("t", "", "reply timeout (default 30s)", "TIMEOUT");
    o.optopt(
        "d",
        "",
        "default action: tempfail, accept or reject",
        "ACTION",
    );
    o.optmulti("m", "", "macro value", "NAME=VALUE");
    o.optflag("v", "", "log every milter packet");
    o.optflag("h", "", "help");
    let m = o.parse(args).map_err(|e| e.to_string())?;
    if m.opt_present("h") {
        return Err("help".into());
    }
    let timeout = match m.opt_str("t") {
        Some(t) => parse_duration(&t)?,
        None => Duration::from_secs(30),
    };
    let default = match m.opt_str("d").as_deref() {
        None | Some("tempfail") => DefaultAction::Tempfail,
        Some("accept") => DefaultAction::Accept,
        Some("reject") => DefaultAction::Reject,
        Some(x) => return Err(format!("bad default action {x:?}")),
    };
    let mut macros = Vec::new();
    for kv in m.opt_strs("m") {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| format!("-m {kv}: want NAME=VALUE"))?;
        let bad = |c: char| c.is_whitespace() || c.is_control() || c == '=';
        if k.is_empty() || k.chars().any(bad) || v.chars().any(|c| c.is_control()) {
            return Err(format!("-m {kv}: bad macro"));
        }
        macros.push((k.to_string(), v.to_string()));
    }
    if m.free.is_empty() {
        return Err("no milter socket given".into());
    }
    let targets = m
        .free
        .iter()
        .map(|s| Target::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Config {
        targets,
        timeout,
        default,
        macros,
        hostname: host_name(),
        verbose: m.opt_present("v"),
    })
}

fn fd_read(fd: i32, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for writes of its length.
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn fd_write(fd: i32, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: the buffer is valid for reads of its length.
    let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Every session and what they share.
struct Bridge {
    cfg: Config,
    registry: Registry,
    sessions: HashMap<u64, Session>,
    /// TLS facts of sessions not seen yet (smtps: the handshake may end before
    /// CONNECT); forgotten at their DISCONNECT.
    early_tls: HashMap<u64, TlsFacts>,
    tokens: HashMap<Token, (u64, usize)>,
    next_token: usize,
    out: Vec<u8>,
    out_pos: usize,
    daemon_timeout: Duration,
}

macro_rules! ctx {
    ($b:ident) => {
        Ctx {
            cfg: &$b.cfg,
            registry: &$b.registry,
            out: &mut $b.out,
            tokens: &mut $b.tokens,
            next_token: &mut $b.next_token,
            daemon_timeout: $b.daemon_timeout,
        }
    };
}

impl Bridge {
    /// Writes what can be written to the daemon.
    fn flush(&mut self) -> io::Result<()> {
        let r = loop {
            if self.out_pos >= self.out.len() {
                break Ok(());
            }
            match fd_write(1, &self.out[self.out_pos..]) {
                Ok(0) => break Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        } else if self.out_pos > 1 << 20 {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        r
    }

    fn ask(&mut self, sid: u64, phase: Phase, param: &[u8], now: Instant) {
        let b = self;
        let mut ctx = ctx!(b);
        let s = b.sessions.entry(sid).or_insert_with(|| {
            let mut s = Session::new(sid, "unknown", "unknown", "", false, &mut ctx, now);
            if let Some(t) = b.early_tls.remove(&sid) {
                s.set_tls(t);
            }
            s
        });
        s.ask(phase, param, &mut ctx, now);
    }

    /// One frame from the daemon.
    fn on_frame(&mut self, sid: u64, f: Frame, now: Instant) -> Result<(), String> {
        match f {
            Frame::Ready { timeout_ms, .. } => {
                self.daemon_timeout = Duration::from_millis(u64::from(timeout_ms.max(1000)));
                let cut = session::answer_within(self.daemon_timeout);
                if cut < self.cfg.timeout {
                    eprintln!(
                        "filter-milter: smtpd waits {:?} for an answer: a milter still silent \
                         after {:?} counts as failed (the filter's timeout is below -t {:?})",
                        self.daemon_timeout, cut, self.cfg.timeout
                    );
                }
            }
            Frame::Refused(why) => {
                return Err(format!("refused by the daemon: {}", why.escape_ascii()));
            }
            Frame::Connect {
                local,
                remote,
                hostname,
            } => {
                let b = self;
                let mut ctx = ctx!(b);
                if let Some(mut old) = b.sessions.remove(&sid) {
                    old.disconnect(&mut ctx);
                }
                let text = |x: &[u8]| String::from_utf8_lossy(x).into_owned();
                let mut s = Session::new(
                    sid,
                    &text(local),
                    &text(remote),
                    &text(hostname),
                    true,
                    &mut ctx,
                    now,
                );
                if let Some(t) = b.early_tls.remove(&sid) {
                    s.set_tls(t);
                }
                b.sessions
                    .entry(sid)
                    .or_insert(s)
                    .ask(Phase::Connect, &[], &mut ctx, now);
            }
            Frame::Helo(n) | Frame::Ehlo(n) => self.ask(sid, Phase::Helo, n, now),
            Frame::Mail(a) => self.ask(sid, Phase::Mail, a, now),
            Frame::Rcpt(a) => self.ask(sid, Phase::Rcpt, a, now),
            Frame::Data => self.ask(sid, Phase::Data, &[], now),
            Frame::Eom(_) => self.ask(sid, Phase::Eom, &[], now),
            Frame::DataLines(ref lines) => {
                // Every line goes back unchanged, whatever the milters do.
                codec::encode(sid, &f, &mut self.out);
                let b = self;
                let mut ctx = ctx!(b);
                if let Some(s) = b.sessions.get_mut(&sid) {
                    s.data_lines(lines, &mut ctx, now);
                }
            }
            Frame::DataEnd => {
                codec::encode(sid, &Frame::DataEnd, &mut self.out);
                let b = self;
                let mut ctx = ctx!(b);
                if let Some(s) = b.sessions.get_mut(&sid) {
                    s.data_end(&mut ctx, now);
                }
            }
            Frame::Commit(id) => {
                let b = self;
                let mut ctx = ctx!(b);
                if let Some(s) = b.sessions.get_mut(&sid) {
                    s.end_message(Some(id), &mut ctx, now);
                }
            }
            Frame::Rollback => {
                let b = self;
                let mut ctx = ctx!(b);
                if let Some(s) = b.sessions.get_mut(&sid) {
                    s.end_message(None, &mut ctx, now);
                }
            }
            Frame::Disconnect => {
                let b = self;
                let mut ctx = ctx!(b);
                b.early_tls.remove(&sid);
                if let Some(mut s) = b.sessions.remove(&sid) {
                    s.disconnect(&mut ctx);
                }
            }
            Frame::Tls {
                version,
                cipher,
                bits,
                subject,
                ..
            } => {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                let t = TlsFacts {
                    version: text(version),
                    cipher: text(cipher),
                    bits,
                    subject: text(subject),
                };
                match self.sessions.get_mut(&sid) {
                    Some(s) => s.set_tls(t),
                    // On an smtps listener it may come before CONNECT.
                    None => {
                        self.early_tls.insert(sid, t);
                    }
                }
            }
            Frame::AuthResult {
                mechanism,
                user,
                result,
            } => {
                if result == b"ok" {
                    if let Some(s) = self.sessions.get_mut(&sid) {
                        s.authenticated(mechanism, user);
                    }
                }
            }
            // Not registered for; answered all the same if they come.
            Frame::Starttls | Frame::Auth { .. } => {
                codec::encode(sid, &Frame::Proceed, &mut self.out)
            }
            Frame::Protocol { .. } => {}
            other => {
                eprintln!(
                    "filter-milter: unexpected frame kind 0x{:02x} ignored",
                    codec::kind_of(&other).0
                );
            }
        }
        Ok(())
    }

    fn milter_ready(&mut self, t: Token, now: Instant) {
        let Some(&(sid, i)) = self.tokens.get(&t) else {
            return;
        };
        let b = self;
        let mut ctx = ctx!(b);
        if let Some(s) = b.sessions.get_mut(&sid) {
            s.ready(i, &mut ctx, now);
        }
    }

    fn check(&mut self, now: Instant) {
        let late: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.deadline().is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        let b = self;
        let mut ctx = ctx!(b);
        for sid in late {
            if let Some(s) = b.sessions.get_mut(&sid) {
                s.check(&mut ctx, now);
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.sessions.values().filter_map(Session::deadline).min()
    }

    fn shutdown(&mut self) {
        let b = self;
        let mut ctx = ctx!(b);
        for (_, mut s) in b.sessions.drain() {
            s.disconnect(&mut ctx);
        }
    }
}

fn run(cfg: Config) -> Result<(), String> {
    fn e(what: &'static str) -> impl Fn(io::Error) -> String {
        move |err| format!("{what}: {err}")
    }
    set_nonblocking(io::stdin().as_fd()).map_err(e("standard input"))?;
    set_nonblocking(io::stdout().as_fd()).map_err(e("standard output"))?;
    let mut poll = Poll::new().map_err(e("poll"))?;
    let registry = poll.registry().try_clone().map_err(e("poll"))?;
    registry
        .register(&mut SourceFd(&0), STDIN, Interest::READABLE)
        .map_err(e("cannot poll standard input"))?;
    registry
        .register(&mut SourceFd(&1), STDOUT, Interest::WRITABLE)
        .map_err(e("cannot poll standard output"))?;
    let mut b = Bridge {
        cfg,
        registry,
        sessions: HashMap::new(),
        early_tls: HashMap::new(),
        tokens: HashMap::new(),
        next_token: FIRST_MILTER,
        out: Vec::new(),
        out_pos: 0,
        daemon_timeout: Duration::from_secs(30),
    };
    let hooks = event::CONNECT
        | event::HELO
        | event::EHLO
        | event::MAIL
        | event::RCPT
        | event::DATA
        | event::DATA_LINES
        | event::EOM;
    let reports =
        event::COMMIT | event::ROLLBACK | event::DISCONNECT | event::TLS | event::AUTH_RESULT;
    codec::encode(
        0,
        &Frame::Register {
            version: codec::VERSION,
            hooks,
            reports,
            name: b"milter",
        },
        &mut b.out,
    );
    b.flush().map_err(e("write"))?;
    let names: Vec<String> = b.cfg.targets.iter().map(|t| t.to_string()).collect();
    eprintln!(
        "filter-milter: bridging to {} (timeout {:?}, default action {})",
        names.join(", "),
        b.cfg.timeout,
        b.cfg.default.name()
    );
    let mut dec = Decoder::new();
    let mut pre = smtpd_filter::preamble::Preamble::default();
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let wait = b
            .next_deadline()
            .map(|d| d.saturating_duration_since(Instant::now()) + Duration::from_millis(1));
        if let Err(err) = poll.poll(&mut events, wait) {
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(format!("poll: {err}"));
            }
        }
        let now = Instant::now();
        let mut eof = false;
        for ev in events.iter() {
            match ev.token() {
                STDIN => loop {
                    match fd_read(0, &mut buf) {
                        Ok(0) => {
                            eof = true;
                            break;
                        }
                        Ok(n) => {
                            dec.feed(pre.filter(&buf[..n]));
                            loop {
                                match dec.next_frame() {
                                    Ok(Some((sid, f))) => b.on_frame(sid, f, now)?,
                                    Ok(None) => break,
                                    Err(err) => return Err(format!("from the daemon: {err}")),
                                }
                            }
                        }
                        Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                        Err(err) => return Err(format!("read: {err}")),
                    }
                },
                STDOUT => {}
                t => b.milter_ready(t, now),
            }
        }
        b.check(Instant::now());
        if let Err(err) = b.flush() {
            b.shutdown();
            return Err(format!("write: {err}"));
        }
        if eof {
            b.shutdown();
            return Ok(());
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match parse_args(&args) {
        Ok(c) => c,
        Err(e) => {
            if e != "help" {
                eprintln!("filter-milter: {e}");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e == "help" { 0 } else { 2 });
        }
    };
    if let Err(e) = run(cfg) {
        eprintln!("filter-milter: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn command_line() {
        let c = parse_args(&args(&[
            "-t",
            "5",
            "-d",
            "accept",
            "-m",
            "j=mx.example",
            "-m",
            "{daemon_name}=in",
            "unix:/tmp/m.sock",
            "inet:8891@127.0.0.1",
        ]))
        .unwrap();
        assert_eq!(c.timeout, Duration::from_secs(5));
        assert_eq!(c.default, DefaultAction::Accept);
        assert_eq!(c.macros.len(), 2);
        assert_eq!(c.targets.len(), 2);
        assert!(parse_args(&args(&[])).is_err());
        assert!(parse_args(&args(&["-d", "maybe", "unix:/x"])).is_err());
        assert!(parse_args(&args(&["-m", "novalue", "unix:/x"])).is_err());
        assert!(parse_args(&args(&["-t", "0", "unix:/x"])).is_err());
        assert!(parse_args(&args(&["bogus:/x"])).is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1d").is_err());
    }
}
