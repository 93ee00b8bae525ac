//! One connection to a milter, for one SMTP session: a non-blocking socket and a queue
//! of commands sent in lockstep (the next command goes when the reply to the previous
//! one came, or at once when the milter said it sends none).

use crate::milter::{self, cmd, proto, Mod, Negotiated, Reply, Response};
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where a milter listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A unix socket.
    Unix(PathBuf),
    /// A TCP address.
    Inet(SocketAddr),
}

impl Target {
    /// Reads `unix:/path`, `local:/path`, `/path`, `inet:port@host`, `inet6:port@host`
    /// (host names are resolved now, once).
    pub fn parse(s: &str) -> Result<Target, String> {
        if let Some(p) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            if p.is_empty() {
                return Err(format!("{s}: empty socket path"));
            }
            return Ok(Target::Unix(PathBuf::from(p)));
        }
        if s.starts_with('/') {
            return Ok(Target::Unix(PathBuf::from(s)));
        }
        let (v6, rest) = if let Some(r) = s.strip_prefix("inet6:") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("inet:") {
            (false, r)
        } else {
            return Err(format!(
                "{s}: want unix:/path, local:/path, inet:port@host or inet6:port@host"
            ));
        };
        let (port, host) = match rest.split_once('@') {
            Some((p, h)) => (p, h),
            None => (rest, if v6 { "::1" } else { "127.0.0.1" }),
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s}: bad port {port:?}"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let addrs: Vec<SocketAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{s}: cannot resolve {host}: {e}"))?
            .collect();
        addrs
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .or_else(|| addrs.first())
            .map(|a| Target::Inet(*a))
            .ok_or_else(|| format!("{s}: {host} has no address"))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
            Target::Inet(a) => write!(f, "inet:{}@{}", a.port(), a.ip()),
        }
    }
}

enum Sock {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Sock {
    fn source(&mut self) -> &mut dyn mio::event::Source {
        match self {
            Sock::Tcp(s) => s,
            Sock::Unix(s) => s,
        }
    }
    fn connected(&self) -> io::Result<bool> {
        let err = match self {
            Sock::Tcp(s) => s.take_error(),
            Sock::Unix(s) => s.take_error(),
        };
        if let Some(e) = err? {
            return Err(e);
        }
        let peer = match self {
            Sock::Tcp(s) => s.peer_addr().map(|_| ()),
            Sock::Unix(s) => s.peer_addr().map(|_| ()),
        };
        match peer {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl Read for Sock {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.read(b),
            Sock::Unix(s) => s.read(b),
        }
    }
}

impl Write for Sock {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Sock::Tcp(s) => s.write(b),
            Sock::Unix(s) => s.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Macros to send before a command: the names the bridge sends by default at that
/// stage, and every value it knows (the milter's own list, if it gave one, picks from
/// these instead).
#[derive(Debug, Clone, Default)]
pub struct MacroSet {
    /// Names sent when the milter did not ask for a list of its own.
    pub defaults: Vec<String>,
    /// Known values by name (`j`, `{daemon_name}`...).
    pub values: Vec<(String, String)>,
}

fn bare(n: &str) -> &str {
    n.trim_start_matches('{').trim_end_matches('}')
}

impl MacroSet {
    /// The pairs to send for `names`, in their order; unknown names are left out.
    pub fn pick<'a>(&'a self, names: &'a [String]) -> Vec<(&'a str, &'a str)> {
        names
            .iter()
            .filter_map(|n| {
                self.values
                    .iter()
                    .find(|(k, _)| bare(k) == bare(n))
                    .map(|(_, v)| (n.as_str(), v.as_str()))
            })
            .collect()
    }
}

/// A command waiting to be sent.
#[derive(Debug, Clone)]
pub struct Step {
    /// The command byte.
    pub code: u8,
    /// Its data.
    pub data: Vec<u8>,
    /// Macros sent just before it.
    pub macros: Option<MacroSet>,
}

impl Step {
    /// A command without macros.
    pub fn plain(code: u8, data: Vec<u8>) -> Step {
        Step {
            code,
            data,
            macros: None,
        }
    }
}

/// What happened on the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A command is done: its reply (`Continue` for a command the milter skips or does
    /// not answer) and, for end of message, the modifications that came before it.
    Done {
        /// The command.
        code: u8,
        /// The final reply.
        reply: Reply,
        /// Modifications (end of message only).
        mods: Vec<Mod>,
    },
    /// The milter failed: refused, closed, timed out or spoke out of protocol.
    Failed(String),
}

/// Bytes buffered for the milter above which queued commands wait.
const OUT_HIGH: usize = 256 * 1024;

/// Commands whose completion the session waits for.
fn reported(code: u8) -> bool {
    matches!(
        code,
        cmd::CONNECT
            | cmd::HELO
            | cmd::MAIL
            | cmd::RCPT
            | cmd::DATA
            | cmd::HEADER
            | cmd::EOH
            | cmd::BODY
            | cmd::BODYEOB
    )
}

/// A milter connection for one SMTP session.
pub struct MilterConn {
    /// The poll token of its socket.
    pub token: Token,
    label: String,
    sock: Option<Sock>,
    connecting: bool,
    out: Vec<u8>,
    out_pos: usize,
    inbuf: Vec<u8>,
    steps: VecDeque<Step>,
    inflight: Option<u8>,
    deadline: Option<Instant>,
    neg: Option<Negotiated>,
    mods: Vec<Mod>,
    timeout: Duration,
    failed: bool,
    verbose: bool,
}

impl MilterConn {
    /// Starts connecting to `target` and queues the option negotiation.
    pub fn connect(
        target: &Target,
        label: String,
        token: Token,
        registry: &Registry,
        timeout: Duration,
        verbose: bool,
        now: Instant,
    ) -> Result<MilterConn, String> {
        let mut sock = match target {
            Target::Unix(p) => UnixStream::connect(p).map(Sock::Unix),
            Target::Inet(a) => TcpStream::connect(*a).map(Sock::Tcp),
        }
        .map_err(|e| format!("cannot connect to {target}: {e}"))?;
        registry
            .register(
                sock.source(),
                token,
                Interest::READABLE | Interest::WRITABLE,
            )
            .map_err(|e| format!("cannot poll the socket of {target}: {e}"))?;
        let mut c = MilterConn {
            token,
            label,
            sock: Some(sock),
            connecting: true,
            out: Vec::new(),
            out_pos: 0,
            inbuf: Vec::new(),
            steps: VecDeque::new(),
            inflight: None,
            deadline: Some(now + timeout),
            neg: None,
            mods: Vec::new(),
            timeout,
            failed: false,
            verbose,
        };
        c.steps.push_back(Step::plain(
            cmd::OPTNEG,
            milter::optneg(milter::VERSION, milter::act::ALL, proto::ALL),
        ));
        Ok(c)
    }

    /// What the milter agreed to, once it answered the option negotiation.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.neg.as_ref()
    }

    /// When the connection attempt or the reply awaited is late.
    pub fn deadline(&self) -> Option<Instant> {
        if self.failed {
            None
        } else {
            self.deadline
        }
    }

    /// Queues a command.
    pub fn push(&mut self, s: Step) {
        if !self.failed {
            self.steps.push_back(s);
        }
    }

    /// Drops queued (unsent) commands whose code is in `codes`, with their macros.
    pub fn drop_queued(&mut self, codes: &[u8]) {
        self.steps.retain(|s| !codes.contains(&s.code));
    }

    fn fail(&mut self, why: String, events: &mut Vec<Event>) {
        if !self.failed {
            self.failed = true;
            self.steps.clear();
            self.inflight = None;
            self.deadline = None;
            events.push(Event::Failed(why));
        }
    }

    fn send(&mut self, code: u8, data: &[u8]) {
        if self.verbose {
            eprintln!(
                "{} >>> {} {}",
                self.label,
                code as char,
                data.escape_ascii()
                    .to_string()
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
        milter::packet(code, data, &mut self.out);
    }

    /// Sends queued commands up to the next one that waits for a reply.
    pub fn pump(&mut self, now: Instant, events: &mut Vec<Event>) {
        if self.failed || self.connecting || self.sock.is_none() {
            return;
        }
        loop {
            self.send_queued(now, events);
            if let Err(e) = self.flush() {
                return self.fail(format!("write: {e}"), events);
            }
            // Go on while the socket takes everything (a full socket gives a writable
            // event later, and `ready` then pumps again).
            if self.failed
                || self.inflight.is_some()
                || self.steps.is_empty()
                || self.out.len() > self.out_pos
            {
                break;
            }
        }
        if self.inflight.is_none() {
            self.deadline = None;
        }
    }

    /// Moves queued commands to the output buffer, up to one that waits for a reply.
    /// Commands that need no reply (body chunks with NR_BODY) could fill it with a
    /// whole message: they stay queued while it is full.
    fn send_queued(&mut self, now: Instant, events: &mut Vec<Event>) {
        while self.inflight.is_none() && self.out.len() - self.out_pos < OUT_HIGH {
            let Some(step) = self.steps.pop_front() else {
                break;
            };
            match step.code {
                cmd::OPTNEG => {
                    self.send(cmd::OPTNEG, &step.data);
                    self.inflight = Some(cmd::OPTNEG);
                    self.deadline = Some(now + self.timeout);
                }
                cmd::ABORT | cmd::QUIT => self.send(step.code, &[]),
                code => {
                    let Some(neg) = self.neg.as_ref() else {
                        return self.fail("command before option negotiation".into(), events);
                    };
                    let (skip, noreply, min_version) = milter::step_bits(code);
                    let (version, protocol) = (neg.version, neg.protocol);
                    if version < min_version {
                        if reported(code) {
                            events.push(Event::Done {
                                code,
                                reply: Reply::Continue,
                                mods: Vec::new(),
                            });
                        }
                        continue;
                    }
                    // Macros go even for a step the milter skips, as Postfix does: a
                    // later step may want them.
                    let macros = step.macros.as_ref().and_then(|m| {
                        let names = neg.symlist(code).unwrap_or(&m.defaults);
                        let pairs = m.pick(names);
                        (!pairs.is_empty()).then(|| milter::macros(code, &pairs))
                    });
                    if let Some(data) = macros {
                        self.send(cmd::MACRO, &data);
                    }
                    if protocol & skip != 0 {
                        if reported(code) {
                            events.push(Event::Done {
                                code,
                                reply: Reply::Continue,
                                mods: Vec::new(),
                            });
                        }
                        continue;
                    }
                    self.send(code, &step.data);
                    if code == cmd::BODYEOB || protocol & noreply == 0 {
                        self.inflight = Some(code);
                        self.deadline = Some(now + self.timeout);
                    } else if reported(code) {
                        events.push(Event::Done {
                            code,
                            reply: Reply::Continue,
                            mods: Vec::new(),
                        });
                    }
                }
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(());
        };
        let r = loop {
            if self.out_pos >= self.out.len() {
                break Ok(());
            }
            match sock.write(&self.out[self.out_pos..]) {
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
        } else if self.out_pos > OUT_HIGH {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        r
    }

    /// The socket is ready: finishes connecting, writes, reads and decodes replies (call
    /// [`MilterConn::pump`] after handling the events).
    pub fn ready(&mut self, now: Instant, events: &mut Vec<Event>) {
        if self.failed {
            return;
        }
        let Some(sock) = self.sock.as_mut() else {
            return;
        };
        if self.connecting {
            match sock.connected() {
                Ok(true) => {
                    self.connecting = false;
                    self.deadline = None;
                }
                Ok(false) => return,
                Err(e) => return self.fail(format!("cannot connect: {e}"), events),
            }
        }
        if let Err(e) = self.flush() {
            return self.fail(format!("write: {e}"), events);
        }
        let mut buf = [0u8; 65536];
        let mut eof = false;
        if let Some(sock) = self.sock.as_mut() {
            loop {
                match sock.read(&mut buf) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        self.inbuf.extend_from_slice(&buf[..n]);
                        if self.inbuf.len() > milter::MAX_REPLY + 5 {
                            return self.fail("reply too large".into(), events);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return self.fail(format!("read: {e}"), events),
                }
            }
        }
        loop {
            match milter::next_packet(&mut self.inbuf) {
                Ok(Some((c, data))) => {
                    self.packet(c, &data, now, events);
                    if self.failed {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => return self.fail(e, events),
            }
        }
        if eof {
            self.fail("the milter closed the connection".into(), events);
        }
        // The caller handles the events, then sends what comes next with `pump`: what a
        // reply says may change what is queued (a rejected message gets no more content).
    }

    fn packet(&mut self, c: u8, data: &[u8], now: Instant, events: &mut Vec<Event>) {
        if self.verbose {
            eprintln!(
                "{} <<< {} {}",
                self.label,
                c as char,
                data.escape_ascii()
                    .to_string()
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
        let Some(waiting) = self.inflight else {
            return self.fail(format!("reply {:?} out of turn", c as char), events);
        };
        if waiting == cmd::OPTNEG {
            if c != cmd::OPTNEG {
                return self.fail(
                    format!("reply {:?} to option negotiation", c as char),
                    events,
                );
            }
            match milter::parse_optneg(data) {
                Ok(n) => {
                    self.neg = Some(n);
                    self.inflight = None;
                    self.deadline = None;
                }
                Err(e) => self.fail(e, events),
            }
            return;
        }
        let r = match milter::parse_response(c, data) {
            Ok(r) => r,
            Err(e) => return self.fail(e, events),
        };
        match r {
            Response::Progress => self.deadline = Some(now + self.timeout),
            Response::Mod(m) => {
                let allowed = self.neg.as_ref().map_or(0, |n| n.actions);
                if waiting != cmd::BODYEOB {
                    return self.fail(
                        format!("modification {:?} before end of message", c as char),
                        events,
                    );
                }
                if m.action() & !allowed != 0 {
                    return self.fail(
                        format!("modification {:?} without the action negotiated", c as char),
                        events,
                    );
                }
                self.mods.push(m);
                // Each modification shows the milter is alive.
                self.deadline = Some(now + self.timeout);
            }
            Response::Reply(Reply::Skip) if waiting != cmd::BODY => {
                self.fail("skip outside the body".into(), events)
            }
            Response::Reply(reply) => {
                if reply == Reply::Skip {
                    self.drop_queued(&[cmd::BODY]);
                }
                self.inflight = None;
                self.deadline = None;
                events.push(Event::Done {
                    code: waiting,
                    reply,
                    mods: std::mem::take(&mut self.mods),
                });
            }
        }
    }

    /// Checks the deadline.
    pub fn check(&mut self, now: Instant, events: &mut Vec<Event>) {
        if let Some(d) = self.deadline() {
            if d <= now {
                let what = if self.connecting {
                    "connecting".to_string()
                } else {
                    match self.inflight {
                        Some(c) => format!("the reply to {:?}", c as char),
                        None => "an answer".to_string(),
                    }
                };
                self.fail(format!("timed out waiting for {what}"), events);
            }
        }
    }

    /// Fails it now, for a reason found outside (the daemon's deadline).
    pub fn abandon(&mut self, why: &str, events: &mut Vec<Event>) {
        self.fail(why.to_string(), events);
    }

    /// Closes the connection, after a QUIT when `quit` and the milter is well.
    pub fn close(&mut self, registry: &Registry, quit: bool) {
        if quit && !self.failed && !self.connecting && self.neg.is_some() {
            self.steps.clear();
            self.send(cmd::QUIT, &[]);
            let _ = self.flush();
        }
        if let Some(mut s) = self.sock.take() {
            let _ = registry.deregister(s.source());
        }
        self.failed = true;
        self.deadline = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("unix:/run/m.sock"),
            Ok(Target::Unix("/run/m.sock".into()))
        );
        assert_eq!(
            Target::parse("local:/run/m.sock"),
            Ok(Target::Unix("/run/m.sock".into()))
        );
        assert_eq!(
            Target::parse("inet:8891@127.0.0.1"),
            Ok(Target::Inet("127.0.0.1:8891".parse().unwrap()))
        );
        assert_eq!(
            Target::parse("inet6:8891@[::1]"),
            Ok(Target::Inet("[::1]:8891".parse().unwrap()))
        );
        assert_eq!(
            Target::parse("inet6:25@::1"),
            Ok(Target::Inet("[::1]:25".parse().unwrap()))
        );
        assert!(Target::parse("inet:x@127.0.0.1").is_err());
        assert!(Target::parse("tcp:1").is_err());
        assert!(Target::parse("unix:").is_err());
        assert_eq!(
            Target::parse("inet:8891@127.0.0.1").unwrap().to_string(),
            "inet:8891@127.0.0.1"
        );
    }

    #[test]
    fn macro_picking() {
        let m = MacroSet {
            defaults: vec!["j".into(), "{daemon_name}".into()],
            values: vec![
                ("j".into(), "mx".into()),
                ("{daemon_name}".into(), "smtpd".into()),
                ("{client_addr}".into(), "192.0.2.1".into()),
            ],
        };
        assert_eq!(
            m.pick(&m.defaults),
            vec![("j", "mx"), ("{daemon_name}", "smtpd")]
        );
        // A milter's list may name them with or without braces; unknown ones are skipped.
        let asked = vec!["client_addr".to_string(), "{nope}".to_string()];
        assert_eq!(m.pick(&asked), vec![("client_addr", "192.0.2.1")]);
    }
}
