//! The socket glue of an outgoing SMTP/LMTP session: connects, moves replies into the
//! [`Client`], streams each job's spooled message with CR LF line ends and
//! dot-stuffing, collects the jobs' outcomes for the queue manager, and logs the `mta` lines (one
//! per transaction, one when the session ends; smtpd.8, LOG LINES).
//!
//! Nothing here waits: the connection is non-blocking, and the loop resolves the
//! destination (`mta/mx.rs`) before it connects a session to one address after the
//! other. An attempt that fails before its first MAIL command (connection, greeting,
//! EHLO, TLS, AUTH) does not settle the jobs when the loop has another address for them
//! ([`MtaConn::may_retry`]): the session asks for the next one ([`MtaConn::retry`]) and
//! starts over there with the same jobs. TLS is started as [`TlsPlan`] says: at once
//! for `smtps`, after STARTTLS otherwise, verified by DANE, PKIX or not at all.

use super::client::{Client, ClientOpts, Content, Job, JobDone, ReplyParser, Step, TlsMode};
use super::wire::{BinaryEncoder, Encoder, MAX_LINE};
use crate::linebuf::{Line, LineBuf};
use crate::nexthop::{Proto, Route, Target};
use crate::stream::Stream;
use crate::tls::client::{ClientTls, TlsClientFacts, Verified, Verify};
use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Instant;

/// Unsent bytes above which no more of the body is read.
const OUT_HIGH: usize = 64 * 1024;
/// Longest reply line accepted.
const MAX_REPLY_LINE: usize = super::client::reply::MAX_LINE;

/// Starts a non-blocking connection to `target`: to the socket path, the address
/// literal, or `resolved` (the address found for a host name; an error when there is
/// none).
pub fn connect(target: &Target, resolved: Option<SocketAddr>) -> io::Result<Stream> {
    match target {
        Target::Unix(p) => Ok(Stream::Unix(mio::net::UnixStream::connect(p)?)),
        Target::Mx(d) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{d}: mail exchangers not resolved"),
        )),
        Target::Tcp(h, port) => {
            let addr = match h.parse::<IpAddr>() {
                Ok(ip) => SocketAddr::new(ip, *port),
                Err(_) => resolved.ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, format!("{h}: not resolved"))
                })?,
            };
            Ok(Stream::Tcp(mio::net::TcpStream::connect(addr)?))
        }
    }
}

/// How an attempt protects its connection.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    /// The action's client configuration.
    pub config: Arc<ClientTls>,
    /// How the server's certificate is checked.
    pub verify: Verify,
    /// The name sent in SNI (the exchanger, or the TLSA base domain with DANE).
    pub sni: Option<String>,
    /// TLS or no delivery (DANE, MTA-STS enforce, `tls`, `smtp+tls://`, `smtps://`).
    pub required: bool,
    /// TLS from the first byte (`smtps://`).
    pub on_connect: bool,
    /// What the verification is called in the log (`dane`, `mta-sts`, `pkix`, ...).
    pub policy: &'static str,
    /// An MTA-STS policy in `testing` mode lists the exchanger: an attempt whose TLS
    /// would not have passed it (no TLS, a failed handshake, a certificate that does
    /// not pass PKIX for the exchanger's name) is logged (`mta sts-testing`).
    pub sts_report: bool,
}

/// What an outgoing session is given once for all its attempts.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// The name given in EHLO/LHLO.
    pub helo: String,
    /// Credentials for AUTH (user, password).
    pub auth: Option<(String, String)>,
    /// MAIL FROM instead of each job's sender (`mail-from`).
    pub mail_from: Option<String>,
    /// `srs` with the `srs key`: the sender of forwarded mail is rewritten.
    pub srs_key: Option<String>,
}

/// A job's message, open in the spool: the file, the length of the message in it,
/// and where it holds octets above 127.
struct Body {
    file: File,
    len: u64,
    content: Content,
}

/// One outgoing connection carrying jobs.
pub struct MtaConn {
    /// The socket, once the connection was started.
    pub sock: Option<Stream>,
    /// Generation, as for SMTP sessions.
    pub gen: u64,
    /// The queue manager's id of this session.
    pub session: u64,
    /// When the session times out.
    pub deadline: Instant,
    /// The server.
    pub target: Target,
    /// The protocol.
    proto: Proto,
    setup: Setup,
    /// Jobs given and not over, in order, to give again to a new attempt.
    jobs: Vec<Job>,
    /// The TLS of the current attempt; `None` in plain text.
    plan: Option<TlsPlan>,
    /// The handshake was started and its end not yet told to the client.
    handshaking: bool,
    /// TLS handshakes of this connection's attempts: completed, failed.
    pub tls_counts: [u64; 2],
    /// The established TLS session's facts.
    tls_facts: Option<TlsClientFacts>,
    /// The attempt was logged as one MTA-STS `testing` would have refused.
    sts_reported: bool,
    /// The current attempt's server name, for the log.
    host: Option<String>,
    /// The loop has another attempt for the jobs if this one fails before MAIL.
    pub may_retry: bool,
    /// This attempt failed before MAIL and the jobs wait for the next: why.
    retry: Option<String>,
    /// The attempt failed in an opportunistic TLS handshake: the next attempt may be
    /// the same server in plain text.
    tls_failed: bool,
    client: Client,
    parser: ReplyParser,
    inbuf: LineBuf,
    out: Vec<u8>,
    bodies: HashMap<u64, Body>,
    /// The job whose message is being sent, and how far.
    sending: Option<(u64, u64)>,
    encoder: Encoder,
    /// The encoder of a BINARYMIME message's chunks.
    binary: BinaryEncoder,
    /// Read buffer for message content.
    chunk: Vec<u8>,
    error: Option<String>,
    closed: bool,
    done: Vec<JobDone>,
    /// The server's address, once connected.
    address: Option<String>,
}

impl MtaConn {
    /// A session to `route`'s server, not connected yet.
    pub fn new(session: u64, gen: u64, route: Route, deadline: Instant, setup: Setup) -> MtaConn {
        MtaConn {
            sock: None,
            gen,
            session,
            deadline,
            client: Client::new(route.proto, &setup.helo, ClientOpts::default()),
            proto: route.proto,
            setup,
            jobs: Vec::new(),
            plan: None,
            handshaking: false,
            tls_counts: [0; 2],
            tls_facts: None,
            sts_reported: false,
            host: None,
            may_retry: false,
            retry: None,
            tls_failed: false,
            target: route.target,
            parser: ReplyParser::default(),
            inbuf: LineBuf::new(MAX_REPLY_LINE * 2),
            out: Vec::new(),
            bodies: HashMap::new(),
            sending: None,
            encoder: Encoder::new(None),
            binary: BinaryEncoder::new(),
            chunk: Vec::new(),
            error: None,
            closed: false,
            done: Vec::new(),
            address: None,
        }
    }

    /// Whether the session is over: its jobs' outcomes are all in [`MtaConn::take_done`].
    pub fn finished(&self) -> bool {
        self.closed
    }

    /// Why the session ended early, if it did.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref().or(self.client.failure())
    }

    /// Whether the session failed before any MAIL was sent (connection, greeting,
    /// EHLO, STARTTLS, AUTH): its jobs never reached the server, and another server of
    /// the destination may take them.
    pub fn failed_before_mail(&self) -> bool {
        self.client.failed_before_mail()
    }

    /// The jobs over since the last call, with one outcome per recipient.
    pub fn take_done(&mut self) -> Vec<JobDone> {
        std::mem::take(&mut self.done)
    }

    /// Adds a job; its message comes with [`MtaConn::body`].
    pub fn push(&mut self, mut job: Job) {
        if let Some(from) = &self.setup.mail_from {
            job.sender = from.clone();
        } else if let Some(key) = &self.setup.srs_key {
            // Forwarded mail (a recipient that expanded to another address) leaves
            // with a sender of the domain it was forwarded from.
            let forwarded = job
                .rcpts
                .iter()
                .find(|r| !r.original.is_empty() && !r.original.eq_ignore_ascii_case(&r.addr));
            let domain = forwarded
                .and_then(|r| r.original.rsplit_once('@'))
                .map(|(_, d)| d);
            if let Some(srs) =
                domain.and_then(|d| crate::srs::encode(key, &job.sender, d, crate::srs::now()))
            {
                job.sender = srs;
            }
        }
        self.jobs.push(job.clone());
        let steps = self.client.push(job);
        self.apply(steps);
    }

    /// The message of job `id`, opened (file and message length), or why it cannot be.
    pub fn body(&mut self, id: u64, r: Result<(File, u64, Content), String>) {
        let r = r.map(|(file, len, content)| {
            self.bodies.insert(id, Body { file, len, content });
            len
        });
        let steps = self.client.ready(id, r);
        self.apply(steps);
    }

    /// Starts an attempt on `sock`, connected (or connecting) to `host` at `address`,
    /// protected as `plan` says (`None`: plain text). The jobs not over are given to a
    /// new client.
    pub fn attempt(&mut self, sock: Stream, host: &str, address: String, plan: Option<TlsPlan>) {
        let opts = ClientOpts {
            tls: match (&plan, self.proto) {
                (None, _) | (_, Proto::Lmtp) => TlsMode::Off,
                (Some(p), _) if p.required => TlsMode::Required,
                (Some(_), _) => TlsMode::Opportunistic,
            },
            auth: self.setup.auth.clone(),
            tls_on_connect: plan.as_ref().is_some_and(|p| p.on_connect),
        };
        self.client = Client::new(self.proto, &self.setup.helo, opts);
        self.parser = ReplyParser::default();
        self.inbuf = LineBuf::new(MAX_REPLY_LINE * 2);
        self.out.clear();
        self.sending = None;
        self.retry = None;
        self.tls_failed = false;
        self.tls_facts = None;
        self.sts_reported = false;
        self.handshaking = false;
        self.host = Some(host.to_string());
        self.address = Some(address);
        self.sock = Some(sock);
        self.plan = plan;
        let mut steps = Vec::new();
        for job in self.jobs.clone() {
            let id = job.id;
            steps.extend(self.client.push(job));
            if let Some(b) = self.bodies.get(&id) {
                steps.extend(self.client.ready(id, Ok(b.len)));
            }
        }
        self.apply(steps);
        if self.plan.as_ref().is_some_and(|p| p.on_connect) {
            self.start_tls();
        }
    }

    /// The attempt failed before MAIL and the jobs wait for another: why, and whether
    /// it failed in an opportunistic TLS handshake (the same server may take the mail
    /// in plain text). Takes the socket away.
    pub fn retry(&mut self) -> Option<(String, bool, Option<Stream>)> {
        let why = self.retry.take()?;
        Some((why, self.tls_failed, self.sock.take()))
    }

    /// The credentials the next attempt gives in AUTH (a relay secret that a table
    /// process had to be asked for).
    pub fn set_auth(&mut self, auth: Option<(String, String)>) {
        self.setup.auth = auth;
    }

    /// The name the next attempt gives in EHLO/LHLO (`helo-src` picks it by source
    /// address).
    pub fn set_helo(&mut self, helo: &str) {
        self.setup.helo = helo.to_string();
    }

    /// Whether the current attempt's server took the session past its greeting and
    /// EHLO, for the hosts' bookkeeping.
    pub fn served(&self) -> bool {
        self.client.mail_sent() || !self.client.failed_before_mail()
    }

    /// Starts the handshake of the current attempt's plan.
    fn start_tls(&mut self) {
        let Some(plan) = self.plan.clone() else {
            let steps = self.client.tls_done(Err("no TLS for this attempt".into()));
            return self.apply(steps);
        };
        let r = crate::tls::client::client_conn(&plan.config, plan.sni.as_deref(), plan.verify)
            .and_then(|(conn, outcome)| {
                let sock = self.sock.as_mut().ok_or("no connection")?;
                sock.start_client_tls(conn, outcome)
                    .and_then(|()| sock.flush_records())
                    .map_err(|e| e.to_string())
            });
        match r {
            Ok(()) => self.handshaking = true,
            Err(e) => {
                self.tls_counts[1] += 1;
                let why = format!("TLS: {e}");
                self.sts_testing(&why);
                let steps = self.client.tls_done(Err(why));
                self.apply(steps);
            }
        }
    }

    /// Under an MTA-STS policy in `testing` mode, logs once per attempt that this one
    /// would not have passed it, and why (RFC 8461 §5: reported, delivered all the
    /// same).
    fn sts_testing(&mut self, why: &str) {
        if self.sts_reported || !self.plan.as_ref().is_some_and(|p| p.sts_report) {
            return;
        }
        self.sts_reported = true;
        let line = format!("{} reason={why:?}", self.facts());
        self.log("sts-testing", &line);
    }

    /// After a read: tells the client when the handshake is over.
    fn check_handshake(&mut self) {
        if !self.handshaking {
            return;
        }
        let Some(sock) = self.sock.as_ref() else {
            return;
        };
        if sock.handshaking() {
            return;
        }
        self.handshaking = false;
        let Some(f) = sock.tls_client_facts() else {
            self.tls_counts[1] += 1;
            let steps = self.client.tls_done(Err("TLS: no session".into()));
            return self.apply(steps);
        };
        let facts = crate::mail::TlsFacts {
            version: f.version,
            cipher: f.cipher,
            bits: f.bits,
            sni: self.plan.as_ref().and_then(|p| p.sni.clone()),
            subject: None,
        };
        let verified = f.verified;
        self.tls_counts[0] += 1;
        let policy = self.plan.as_ref().map_or("", |p| p.policy);
        self.client.tls_verified(match verified {
            Verified::DaneEe | Verified::DaneTa => true,
            Verified::Pkix => matches!(policy, "mta-sts" | "pkix"),
            Verified::No => false,
        });
        self.tls_facts = Some(f);
        if verified != Verified::Pkix {
            let host = self.host.clone().unwrap_or_default();
            self.sts_testing(&format!("the certificate does not pass PKIX for {host}"));
        }
        let steps = self.client.tls_done(Ok(facts));
        self.apply(steps);
    }

    /// No more jobs will come: the session ends once those given are over.
    pub fn quit(&mut self) {
        let steps = self.client.quit();
        self.apply(steps);
    }

    /// Gives up (connection failed, timeout): every recipient without a verdict is
    /// deferred with `why`, unless no MAIL was sent yet and another attempt may take
    /// them.
    pub fn abort(&mut self, why: &str) {
        if self.handshaking {
            self.tls_counts[1] += 1;
            self.sts_testing(why);
        }
        if self.may_retry && !self.client.mail_sent() && !self.closed {
            self.tls_failed = self.handshaking && !self.plan.as_ref().is_some_and(|p| p.required);
            let line = format!("{} reason={why:?}", self.facts());
            self.log("attempt-failed", &line);
            self.retry = Some(why.to_string());
            return;
        }
        self.give_up(why);
    }

    /// Settles every job with `outcome` without a connection (the destination cannot
    /// be resolved, accepts no mail, or loops); the session ends.
    pub fn fail_all(&mut self, outcome: crate::mda::Outcome) {
        let why = match &outcome {
            crate::mda::Outcome::TempFail(t) | crate::mda::Outcome::PermFail(t) => t.clone(),
            _ => String::new(),
        };
        for job in std::mem::take(&mut self.jobs) {
            let n = job.rcpts.len();
            self.bodies.remove(&job.id);
            self.done.push(JobDone {
                id: job.id,
                outcomes: vec![outcome.clone(); n],
                replies: vec![String::new(); n],
                notice: super::client::SuccessNotice::PassedOn,
                server: String::new(),
            });
        }
        self.retry = None;
        self.error.get_or_insert(why.clone());
        self.end(&why);
    }

    /// Every recipient without a verdict is deferred with `why`; the session ends.
    pub fn give_up(&mut self, why: &str) {
        self.retry = None;
        let why = self.error.get_or_insert_with(|| why.to_string()).clone();
        let steps = self.client.lost(&why);
        self.apply(steps);
        self.end(&why);
    }

    /// The session is over: logs it once.
    fn end(&mut self, why: &str) {
        if self.closed {
            return;
        }
        self.closed = true;
        let line = format!(
            "{} transactions={} reason={why:?}",
            self.facts(),
            self.client.transactions()
        );
        self.log("disconnected", &line);
    }

    /// `host=.. address=.. tls=..` for a log line: the TLS version, cipher and bits,
    /// and how the server was authenticated (`verified=dane-ee`, `pkix`, `no`) under
    /// which policy.
    fn facts(&mut self) -> String {
        let address = self.address();
        let host = match (&self.host, &self.target) {
            (Some(h), _) => h.as_str(),
            (None, Target::Tcp(h, _) | Target::Mx(h)) => h.as_str(),
            (None, Target::Unix(p)) => p.as_str(),
        };
        let tls = match &self.tls_facts {
            Some(t) => format!(
                "{}:{}:{} verified={} policy={}",
                t.version,
                t.cipher,
                t.bits,
                t.verified.as_str(),
                self.plan.as_ref().map_or("none", |p| p.policy)
            ),
            None => "none".into(),
        };
        format!("host={host} address={address} tls={tls}")
    }

    /// The server's address: the socket's peer once connected, else the target.
    fn address(&mut self) -> String {
        if self.address.is_none() {
            let peer = self
                .sock
                .as_ref()
                .and_then(Stream::tcp)
                .map(|s| s.peer_addr());
            if let Some(Ok(a)) = peer {
                self.address = Some(a.to_string());
            }
        }
        match (&self.address, &self.target) {
            (Some(a), _) => a.clone(),
            (None, Target::Tcp(h, port)) if h.contains(':') => format!("[{h}]:{port}"),
            (None, Target::Tcp(h, port)) => format!("{h}:{port}"),
            (None, Target::Unix(p) | Target::Mx(p)) => p.clone(),
        }
    }

    fn log(&self, event: &str, rest: &str) {
        log::info!("{:016x} mta {event} {rest}", self.session);
    }

    fn apply(&mut self, steps: Vec<Step>) {
        let mut steps = VecDeque::from(steps);
        while let Some(step) = steps.pop_front() {
            match step {
                Step::Send(cmd) => {
                    log::trace!("{:016x} mta >>> {cmd}", self.session);
                    self.out.extend_from_slice(cmd.as_bytes());
                    self.out.extend_from_slice(b"\r\n");
                }
                Step::SendSecret { line, shown } => {
                    // The credentials never reach a log (RFC 4954 §14).
                    log::trace!("{:016x} mta >>> {shown}", self.session);
                    self.out.extend_from_slice(line.expose());
                    self.out.extend_from_slice(b"\r\n");
                }
                Step::SendBody(id) => {
                    // Lines are folded for an SMTP server, kept intact for local LMTP.
                    self.encoder = Encoder::new(match self.client.proto() {
                        Proto::Smtp => Some(MAX_LINE),
                        Proto::Lmtp => None,
                    });
                    self.sending = Some((id, 0));
                }
                Step::SendChunks(id) => {
                    self.binary = BinaryEncoder::new();
                    self.sending = Some((id, 0));
                }
                Step::Scan(id) => {
                    let r = self.scan(id);
                    steps.extend(self.client.scanned(id, r));
                }
                Step::StartTls => {
                    // What a server sends after its 220 before the handshake is
                    // injected plain text (the client side of CVE-2011-0411).
                    if self.inbuf.pending() > 0 {
                        let r = Err("the server sent data after its 220 to STARTTLS".into());
                        steps.extend(self.client.tls_done(r));
                    } else {
                        self.start_tls();
                    }
                }
                Step::Log { event, fields } => {
                    if self.tls_facts.is_none() {
                        self.sts_testing("no TLS");
                    }
                    let line = format!("{} {fields}", self.facts());
                    self.log(event, &line);
                }
                Step::Done(_) if self.may_retry && self.client.failed_before_mail() => {
                    // The jobs wait for the next attempt.
                    let why = self.client.failure().unwrap_or("failed").to_string();
                    if self.retry.is_none() {
                        let line = format!("{} reason={why:?}", self.facts());
                        self.log("attempt-failed", &line);
                    }
                    self.retry = Some(why);
                }
                Step::Done(d) => {
                    self.bodies.remove(&d.id);
                    self.jobs.retain(|j| j.id != d.id);
                    self.done.push(d);
                }
                Step::Close if self.retry.is_some() => {}
                Step::Close => {
                    let _ = self.flush();
                    let why = self.client.failure().unwrap_or("quit").to_string();
                    self.end(&why);
                }
            }
        }
    }

    /// Where job `id`'s message has octets above 127 (RFC 6152, RFC 6532), as the
    /// spool I/O thread found when it opened it.
    fn scan(&self, id: u64) -> Result<Content, String> {
        self.bodies
            .get(&id)
            .map(|b| b.content)
            .ok_or_else(|| "the message is not open".into())
    }

    /// Moves bytes until the socket would block.
    pub fn pump(&mut self, now: Instant, timeout: std::time::Duration) {
        loop {
            if self.closed || self.sock.is_none() || self.retry.is_some() {
                return;
            }
            let mut progress = false;
            // Replies.
            loop {
                let reply = match self.inbuf.next_line(MAX_REPLY_LINE) {
                    Line::Partial => break,
                    Line::TooLong => return self.abort("reply line too long"),
                    Line::Complete { bytes, .. } => self.parser.feed(bytes),
                };
                progress = true;
                match reply {
                    Err(e) => return self.abort(&e),
                    Ok(None) => {}
                    Ok(Some(reply)) => {
                        log::trace!("{:016x} mta <<< {}", self.session, reply.line());
                        let steps = self.client.on_reply(&reply);
                        self.apply(steps);
                        if self.closed {
                            return;
                        }
                    }
                }
            }
            // Body.
            if self.client.in_body() {
                progress |= self.fill_body();
                if self.closed {
                    return;
                }
            }
            if self.client.in_chunks() {
                progress |= self.fill_chunks();
                if self.closed {
                    return;
                }
            }
            match self.flush() {
                Ok(true) => {
                    // A server that takes what is sent is alive too (a long DATA).
                    self.deadline = now + timeout;
                    progress = true;
                }
                Ok(false) => {}
                Err(e) => return self.abort(&format!("write: {e}")),
            }
            // Read.
            let Some(sock) = self.sock.as_mut() else {
                return;
            };
            let r = sock.read(self.inbuf.space());
            if self.handshaking && !sock.handshaking() {
                self.check_handshake();
                progress = true;
            }
            match r {
                Ok(0) if self.handshaking => {
                    return self.abort("TLS: connection closed in the handshake")
                }
                Ok(0) => return self.abort("connection closed by the server"),
                Ok(n) => {
                    self.inbuf.filled(n);
                    self.deadline = now + timeout;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) if self.handshaking => return self.abort(&format!("TLS: {e}")),
                Err(e) => return self.abort(&format!("connection: {e}")),
            }
            if let Some(sock) = self.sock.as_mut() {
                if sock.wants_write() {
                    if let Err(e) = sock.flush_records() {
                        if e.kind() != io::ErrorKind::WouldBlock {
                            return self.abort(&format!("write: {e}"));
                        }
                    }
                }
            }
            if !progress {
                return;
            }
        }
    }

    /// Adds message content to the output while it is below the high-water mark.
    fn fill_body(&mut self) -> bool {
        let Some((id, mut pos)) = self.sending else {
            return false;
        };
        let Some(body) = self.bodies.get(&id) else {
            self.abort("the message is not open");
            return false;
        };
        self.chunk.resize(64 * 1024, 0);
        let mut progress = false;
        while self.out.len() < OUT_HIGH {
            let want = (body.len - pos).min(self.chunk.len() as u64) as usize;
            if want == 0 {
                self.encoder.finish(&mut self.out);
                self.sending = None;
                self.client.body_sent();
                return true;
            }
            match body.file.read_at(&mut self.chunk[..want], pos) {
                Ok(0) => {
                    self.abort("reading the message: file shorter than its length");
                    return false;
                }
                Ok(n) => {
                    self.encoder.push(&self.chunk[..n], &mut self.out);
                    pos += n as u64;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.abort(&format!("reading the message: {e}"));
                    return false;
                }
            }
        }
        self.sending = Some((id, pos));
        progress
    }

    fn flush(&mut self) -> io::Result<bool> {
        let mut progress = false;
        let Some(sock) = self.sock.as_mut() else {
            return Ok(false);
        };
        while !self.out.is_empty() {
            match sock.write(&self.out) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.drain(..n);
                    progress = true;
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::NotConnected =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }
}

mod chunks;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("127.0.0.1:24", 24),
            Ok((Target::Tcp("127.0.0.1".into(), 24), None))
        );
        assert_eq!(
            Target::parse("/run/lmtp", 24),
            Ok((Target::Unix("/run/lmtp".into()), None))
        );
        assert_eq!(
            Target::parse("smtp://[::1]:2525", 25),
            Ok((Target::Tcp("::1".into(), 2525), Some(Proto::Smtp)))
        );
        assert_eq!(
            Target::parse("lmtp://mx.example.org", 24),
            Ok((Target::Tcp("mx.example.org".into(), 24), Some(Proto::Lmtp)))
        );
        assert!(Target::parse("smtp+ssl://x", 25).is_err());
        assert!(
            Target::parse("smtp://label@x", 25).is_err(),
            "a label is for relay URLs"
        );
        // Only a host name needs the resolver thread; an address or a path connects
        // at once, with no lookup.
        let name = |s: &str| Target::parse(s, 25).ok().map(|(t, _)| t);
        assert_eq!(
            name("lmtp://mx.example.org")
                .as_ref()
                .and_then(Target::host_to_resolve),
            Some(("mx.example.org", 24))
        );
        for s in ["127.0.0.1:24", "[::1]:2525", "/run/lmtp"] {
            assert_eq!(
                name(s).as_ref().and_then(Target::host_to_resolve),
                None,
                "{s}"
            );
        }
        assert!(Target::parse(":25", 25).is_err());
    }
}
