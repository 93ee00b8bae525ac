//! The engine's side of a table process: questions asked one at a time by the lookup
//! threads, never by the loop.
//!
//! ```text
//!  parent: fork, exec table-TYPE / proc-exec ----- socket ---> install() (the engine)
//!  lookup thread: lookup()/check()/update() --> the connection's lock
//!        socket? else wait for one (the timeout) --> handshake once --> request --> answer
//!        EOF, timeout, garbage --> drop the socket, ask the parent to kill the process
//!                                  (it restarts it and hands over a new socket)
//! ```
//!
//! Both protocols are one question, one answer; the lock keeps them in step. Every
//! question has one deadline ([`TIMEOUT`]) for the wait for a process, the handshake,
//! the request and the answer: a table that hangs costs the threads that ask it that
//! long, and each of them an error (a temporary failure), never an answer. A table's
//! own error (`-1`, `error|...`) fails the question and keeps the process.

use super::line::{self, Answer, Op, Register};
use super::{imsg, Service, TableError};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a question to a table process may take, the wait for a process included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// The longest line of the line protocol.
const MAX_LINE: usize = 64 * 1024;
/// Registration lines a table may send at most.
const MAX_REGISTER: usize = 64;

/// The protocol a table process speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OpenSMTPD 6's imsg frames (opensmtpd-extras 6.x, Debian 12).
    Imsg,
    /// OpenSMTPD 7.6's lines (smtpd-tables(7)).
    Line,
}

/// The client of one table process, shared by the lookup threads.
pub struct Backend {
    table: String,
    protocol: Protocol,
    timeout: Duration,
    conn: Mutex<Conn>,
    /// A socket handed over by the parent, waiting for the next question.
    handover: Mutex<Option<UnixStream>>,
    arrived: Condvar,
    /// Called when the process stopped answering: asks the parent to kill it.
    broken: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("table", &self.table)
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Conn {
    sock: Option<UnixStream>,
    /// The handshake was made on `sock`.
    open: bool,
    /// The services the table registered (line protocol).
    services: Vec<Service>,
    next_id: u32,
    /// Bytes read and not yet used.
    buf: Vec<u8>,
}

impl Backend {
    /// The client of table `table`'s process, which speaks `protocol`; each question
    /// takes at most `timeout`.
    pub fn new(table: &str, protocol: Protocol, timeout: Duration) -> Self {
        Backend {
            table: table.to_string(),
            protocol,
            timeout,
            conn: Mutex::new(Conn::default()),
            handover: Mutex::new(None),
            arrived: Condvar::new(),
            broken: OnceLock::new(),
        }
    }

    /// The protocol of the process.
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Takes the socket of a (re)started process; the next question uses it. Never
    /// waits for a question in progress: the loop calls it.
    pub fn install(&self, fd: OwnedFd) {
        let sock = UnixStream::from(fd);
        if let Err(e) = sock.set_nonblocking(false) {
            log::warn!("table {}: {e}", self.table);
        }
        *self.handover.lock().unwrap_or_else(PoisonError::into_inner) = Some(sock);
        self.arrived.notify_all();
    }

    /// Sets what is done when the process stops answering (once).
    pub fn on_broken(&self, f: impl Fn() + Send + Sync + 'static) {
        let _ = self.broken.set(Box::new(f));
    }

    /// Whether `key` is in the table for `service`.
    pub fn check(&self, service: Service, key: &str) -> Result<bool, TableError> {
        match self.ask(Op::Check(service, key))? {
            Answer::Found(_) => Ok(true),
            Answer::NotFound => Ok(false),
            Answer::Error(e) => Err(TableError(e)),
        }
    }

    /// The value of `key` for `service`.
    pub fn lookup(&self, service: Service, key: &str) -> Result<Option<String>, TableError> {
        match self.ask(Op::Lookup(service, key))? {
            Answer::Found(v) => Ok(v),
            Answer::NotFound => Ok(None),
            Answer::Error(e) => Err(TableError(e)),
        }
    }

    /// Tells the table to read its configuration and data again.
    pub fn update(&self) -> Result<(), TableError> {
        match self.ask(Op::Update)? {
            Answer::Found(_) => Ok(()),
            Answer::Error(e) => Err(TableError(e)),
            Answer::NotFound => Err(TableError(format!("table {}: update failed", self.table))),
        }
    }

    fn ask(&self, op: Op<'_>) -> Result<Answer, TableError> {
        let deadline = Instant::now() + self.timeout;
        let mut c = self.conn.lock().unwrap_or_else(PoisonError::into_inner);
        if !self.connected(&mut c, deadline) {
            return Err(TableError(format!(
                "table {}: no process to ask (it is being restarted)",
                self.table
            )));
        }
        let r = match c.open {
            true => Ok(()),
            false => self.handshake(&mut c, deadline),
        }
        .and_then(|()| self.exchange(&mut c, op, deadline));
        match r {
            Ok(Answer::Error(msg)) => {
                let msg = format!("table {}: {}: {msg}", self.table, describe(op));
                log::warn!("{msg}");
                Ok(Answer::Error(msg))
            }
            Ok(a) => Ok(a),
            Err(why) => {
                *c = Conn::default();
                drop(c);
                log::warn!("table {}: {why}; the process is restarted", self.table);
                if let Some(f) = self.broken.get() {
                    f();
                }
                Err(TableError(format!("table {}: {why}", self.table)))
            }
        }
    }

    /// Whether there is a socket to ask, waiting for one until `deadline`.
    fn connected(&self, c: &mut Conn, deadline: Instant) -> bool {
        let mut h = self.handover.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(s) = h.take() {
                *c = Conn {
                    sock: Some(s),
                    ..Conn::default()
                };
            }
            if c.sock.is_some() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            h = self
                .arrived
                .wait_timeout(h, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn handshake(&self, c: &mut Conn, deadline: Instant) -> Result<(), String> {
        match self.protocol {
            Protocol::Imsg => {
                send(c, &imsg::open(&self.table), deadline)?;
                let (kind, payload) = read_frame(c, deadline, self.timeout)?;
                if kind != imsg::OK || !payload.is_empty() {
                    return Err(format!("bad answer to OPEN (type {kind})"));
                }
                c.services = Service::ALL.to_vec();
                log::info!("table {}: opened", self.table);
            }
            Protocol::Line => {
                send(c, line::handshake(&self.table).as_bytes(), deadline)?;
                let mut services = Vec::new();
                for _ in 0..MAX_REGISTER {
                    match line::register(&read_line(c, deadline, self.timeout)?)? {
                        Register::Service(s) => services.push(s),
                        Register::Other => {}
                        Register::Ready if services.is_empty() => {
                            return Err("it registered no service".into())
                        }
                        Register::Ready => {
                            log::info!(
                                "table {}: ready, services {}",
                                self.table,
                                services
                                    .iter()
                                    .map(|s| s.name())
                                    .collect::<Vec<_>>()
                                    .join(",")
                            );
                            c.services = services;
                            c.open = true;
                            return Ok(());
                        }
                    }
                }
                return Err("endless registration".into());
            }
        }
        c.open = true;
        Ok(())
    }

    /// One question and its answer; an `Err` when the process is out of step or gone.
    fn exchange(&self, c: &mut Conn, op: Op<'_>, deadline: Instant) -> Result<Answer, String> {
        if let Op::Check(s, _) | Op::Lookup(s, _) = op {
            if !c.services.contains(&s) {
                return Ok(Answer::Error(format!(
                    "it does not serve {} lookups",
                    s.name()
                )));
            }
        }
        match self.protocol {
            Protocol::Line => {
                c.next_id = c.next_id.wrapping_add(1);
                let id = format!("{:08x}", c.next_id);
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default();
                let Some(req) =
                    line::request(&self.table, op, &id, (now.as_secs(), now.subsec_micros()))
                else {
                    return Ok(Answer::Error("the key holds a line end".into()));
                };
                send(c, req.as_bytes(), deadline)?;
                line::answer(&read_line(c, deadline, self.timeout)?, op, &id)
            }
            Protocol::Imsg => {
                let req = match op {
                    Op::Check(s, k) => imsg::query(imsg::CHECK, s.bit(), k),
                    Op::Lookup(s, k) => imsg::query(imsg::LOOKUP, s.bit(), k),
                    Op::Update => Some(imsg::update()),
                };
                let Some(req) = req else {
                    return Ok(Answer::Error("the key cannot be sent".into()));
                };
                send(c, &req, deadline)?;
                let (kind, payload) = read_frame(c, deadline, self.timeout)?;
                if kind != imsg::OK {
                    return Err(format!("unexpected message type {kind}"));
                }
                imsg_answer(op, &payload)
            }
        }
    }
}

/// What a question was, for the log.
fn describe(op: Op<'_>) -> String {
    match op {
        Op::Check(s, k) | Op::Lookup(s, k) => format!("{} {} {k:?}", op.word(), s.name()),
        Op::Update => "update failed".to_string(),
    }
}

/// The answer in an imsg `OK` frame's payload.
fn imsg_answer(op: Op<'_>, payload: &[u8]) -> Result<Answer, String> {
    let failed = || Answer::Error("the table failed (-1)".into());
    match op {
        Op::Update => Ok(match imsg::int(payload)? {
            1 => Answer::Found(None),
            r => Answer::Error(format!("the program answered {r}")),
        }),
        Op::Check(..) => match imsg::int(payload)? {
            1 => Ok(Answer::Found(None)),
            0 => Ok(Answer::NotFound),
            -1 => Ok(failed()),
            r => Err(format!("answer {r} to CHECK")),
        },
        Op::Lookup(..) => match imsg::value(payload)? {
            (1, v) => Ok(Answer::Found(v)),
            (0, _) => Ok(Answer::NotFound),
            (-1, _) => Ok(failed()),
            (r, _) => Err(format!("answer {r} to LOOKUP")),
        },
    }
}

/// The time left before `deadline`, or an error when there is none.
fn left(deadline: Instant) -> Result<Duration, String> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() {
        return Err("no answer in time".into());
    }
    Ok(d)
}

fn send(c: &mut Conn, bytes: &[u8], deadline: Instant) -> Result<(), String> {
    let sock = c.sock.as_mut().ok_or("no socket")?;
    sock.set_write_timeout(Some(left(deadline)?))
        .map_err(|e| e.to_string())?;
    sock.write_all(bytes).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "it does not read".to_string(),
        _ => format!("write: {e}"),
    })
}

/// Reads more bytes into the buffer.
fn fill(c: &mut Conn, deadline: Instant, timeout: Duration) -> Result<(), String> {
    let sock = c.sock.as_mut().ok_or("no socket")?;
    let mut chunk = [0u8; 8192];
    loop {
        sock.set_read_timeout(Some(left(deadline)?))
            .map_err(|e| e.to_string())?;
        match sock.read(&mut chunk) {
            Ok(0) => return Err("the process closed its socket".into()),
            Ok(n) => {
                c.buf.extend_from_slice(&chunk[..n]);
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(format!("no answer within {}s", timeout.as_secs_f32()))
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn read_frame(
    c: &mut Conn,
    deadline: Instant,
    timeout: Duration,
) -> Result<(u32, Vec<u8>), String> {
    loop {
        if let Some(f) = imsg::take(&mut c.buf)? {
            return Ok(f);
        }
        fill(c, deadline, timeout)?;
    }
}

fn read_line(c: &mut Conn, deadline: Instant, timeout: Duration) -> Result<String, String> {
    loop {
        if let Some(i) = memchr::memchr(b'\n', &c.buf) {
            let line: Vec<u8> = c.buf.drain(..=i).take(i).collect();
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            return String::from_utf8(line.to_vec()).map_err(|_| "a line is not UTF-8".into());
        }
        if c.buf.len() > MAX_LINE {
            return Err("a line too long".into());
        }
        fill(c, deadline, timeout)?;
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
