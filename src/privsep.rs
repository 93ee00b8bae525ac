//! Privilege separation: the parent process and its delivery children.
//!
//! ```text
//! smtpd (parent, keeps root when started as root)
//!   |-- engine (the mio loop, as _smtpd): network, queue, scheduler
//!   `-- one child per local delivery, switched to the recipient's user
//! ```
//! The engine asks the parent for a delivery with a [`DeliverReq`] and the message's
//! open descriptor (SCM_RIGHTS) over a `SOCK_SEQPACKET` pair; the parent forks a child
//! that becomes the user before it touches a mailbox, and answers with a [`DeliverRes`].
//! The engine never holds root, and a child never sees another user's data.

use crate::filter::supervisor::{self, Role, Running};
use crate::format::{expand_command, expand_path, FormatCtx};
use crate::mda::{self, Outcome};
use crate::sys;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

mod auth;
mod deliver;
pub mod reload;
use deliver::*;

/// Largest message on the parent channel.
pub const MAX_MSG: usize = 16 * 1024;
/// How long an mda command may run.
const MDA_TIMEOUT: Duration = Duration::from_secs(600);
/// Exit codes of a delivery child.
const EXIT_OK: i32 = 0;
const EXIT_TEMP: i32 = 75;
const EXIT_PERM: i32 = 69;

/// How a local delivery is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalKind {
    /// Into a maildir (the action's path format, or `~/Maildir`).
    Maildir {
        /// Path format.
        path: Option<String>,
        /// Junk folder for `X-Spam: Yes`.
        junk: bool,
    },
    /// Into the user's mbox under /var/mail.
    Mbox,
    /// Through the action's mda command format.
    Mda(String),
    /// Appended to a file named by an alias.
    File(String),
    /// Piped to a command named by an alias.
    Pipe(String),
    /// Only through the user's `.forward` (`forward-only` actions).
    ForwardOnly,
}

/// A delivery request from the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverReq {
    /// Request id, echoed in the result.
    pub id: u64,
    /// How.
    pub kind: LocalKind,
    /// The account the delivery runs as.
    pub user: String,
    /// MAIL FROM, empty for `<>`.
    pub sender: String,
    /// The original RCPT TO.
    pub rcpt: String,
    /// The address being delivered, after expansion.
    pub dest: String,
    /// `smtp sub-addr-delim`.
    pub subaddr_delim: char,
    /// Read the user's `~/.forward` first.
    pub forward: bool,
    /// Length of the message at the start of the passed descriptor (what follows is
    /// the spool's own data).
    pub len: u64,
    /// The action's `userbase`, whose `userinfo` entry for `user` the spool thread
    /// looks up before it sends the request (not sent to the parent).
    pub userbase: Option<crate::config::model::TableId>,
    /// That entry, `UID:GID:HOME`: the delivery runs with these ids in that
    /// directory instead of the system account of `user`.
    pub account: Option<String>,
}

/// A delivery result from the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverRes {
    /// The request's id.
    pub id: u64,
    /// What happened.
    pub outcome: Outcome,
}

fn put(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn bytes(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.bytes(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = u32::from_be_bytes(self.bytes(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.bytes(n)?.to_vec()).ok()
    }
}

impl DeliverReq {
    /// Wire form: `'D' id len kind arg junk user sender rcpt dest delim forward`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![b'D'];
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.len.to_be_bytes());
        let (kind, arg, junk) = match &self.kind {
            LocalKind::Maildir { path, junk } => ("maildir", path.as_deref().unwrap_or(""), *junk),
            LocalKind::Mbox => ("mbox", "", false),
            LocalKind::Mda(c) => ("mda", c.as_str(), false),
            LocalKind::File(p) => ("file", p.as_str(), false),
            LocalKind::Pipe(c) => ("pipe", c.as_str(), false),
            LocalKind::ForwardOnly => ("forward-only", "", false),
        };
        for s in [
            kind,
            arg,
            if junk { "1" } else { "0" },
            &self.user,
            &self.sender,
            &self.rcpt,
            &self.dest,
        ] {
            put(&mut out, s);
        }
        put(&mut out, &self.subaddr_delim.to_string());
        put(&mut out, if self.forward { "1" } else { "0" });
        put(&mut out, self.account.as_deref().unwrap_or(""));
        out
    }

    /// Parses the wire form.
    pub fn decode(b: &[u8]) -> Option<DeliverReq> {
        let (&t, rest) = b.split_first()?;
        if t != b'D' {
            return None;
        }
        let mut r = Reader(rest);
        let id = r.u64()?;
        let len = r.u64()?;
        let kind = r.string()?;
        let arg = r.string()?;
        let junk = r.string()? == "1";
        let user = r.string()?;
        let sender = r.string()?;
        let rcpt = r.string()?;
        let dest = r.string()?;
        let subaddr_delim = r.string()?.chars().next()?;
        let forward = r.string()? == "1";
        let account = r.string()?;
        if !r.0.is_empty() || user.is_empty() {
            return None;
        }
        let kind = match kind.as_str() {
            "maildir" => LocalKind::Maildir {
                path: (!arg.is_empty()).then_some(arg),
                junk,
            },
            "mbox" => LocalKind::Mbox,
            "mda" => LocalKind::Mda(arg),
            "file" => LocalKind::File(arg),
            "pipe" => LocalKind::Pipe(arg),
            "forward-only" => LocalKind::ForwardOnly,
            _ => return None,
        };
        Some(DeliverReq {
            id,
            kind,
            user,
            sender,
            rcpt,
            dest,
            subaddr_delim,
            forward,
            len,
            userbase: None,
            account: (!account.is_empty()).then_some(account),
        })
    }
}

impl DeliverRes {
    /// Wire form: `'R' id code text`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![b'R'];
        out.extend_from_slice(&self.id.to_be_bytes());
        let joined;
        let (code, text) = match &self.outcome {
            Outcome::Ok => ("ok", ""),
            Outcome::TempFail(t) => ("temp", t.as_str()),
            Outcome::PermFail(t) => ("perm", t.as_str()),
            Outcome::Forward(items) => {
                joined = items.join("\n");
                ("forward", joined.as_str())
            }
        };
        put(&mut out, code);
        put(&mut out, text);
        out
    }

    /// Parses the wire form.
    pub fn decode(b: &[u8]) -> Option<DeliverRes> {
        let (&t, rest) = b.split_first()?;
        if t != b'R' {
            return None;
        }
        let mut r = Reader(rest);
        let id = r.u64()?;
        let code = r.string()?;
        let text = r.string()?;
        let outcome = match code.as_str() {
            "ok" => Outcome::Ok,
            "temp" => Outcome::TempFail(text),
            "perm" => Outcome::PermFail(text),
            "forward" => Outcome::Forward(text.split('\n').map(str::to_string).collect()),
            _ => return None,
        };
        Some(DeliverRes { id, outcome })
    }
}

/// Where a user's mbox lives.
pub fn mbox_path(user: &str) -> String {
    format!("/var/mail/{user}")
}

/// Parent -> engine: a (re)started filter's socket follows. `'F' id`.
pub fn encode_filter_fd(id: usize) -> Vec<u8> {
    id_message(b'F', id)
}

/// Engine -> parent: kill this filter (it hung or spoke garbage). `'K' id`.
pub fn encode_filter_kill(id: usize) -> Vec<u8> {
    id_message(b'K', id)
}

/// The filter id of an `'F'`, `'f'` or `'K'` message, or the table id of a `'t'`
/// message.
pub fn decode_filter_id(b: &[u8]) -> Option<usize> {
    let id: [u8; 8] = b.get(1..9)?.try_into().ok()?;
    (b.len() == 9).then(|| u64::from_be_bytes(id) as usize)
}

/// Parent -> engine: a restarted table process's socket follows. `'T' name`: by
/// name, like [`encode_table_kill`].
pub fn encode_table_fd(name: &str) -> Vec<u8> {
    let mut v = vec![b'T'];
    v.extend_from_slice(name.as_bytes());
    v
}

/// Engine -> parent: kill the process of this table (it hung, died or spoke
/// garbage); it is restarted. `'U' name`: by name, which a reload does not change
/// for a process it keeps (its index it may).
pub fn encode_table_kill(name: &str) -> Vec<u8> {
    let mut v = vec![b'U'];
    v.extend_from_slice(name.as_bytes());
    v
}

/// A message of one kind byte and an id (big-endian u64).
fn id_message(kind: u8, id: usize) -> Vec<u8> {
    let mut v = vec![kind];
    v.extend_from_slice(&(id as u64).to_be_bytes());
    v
}

/// How the process of filter `id` is run, if it has one.
pub fn filter_spec(id: usize, f: &crate::config::FilterDef) -> Option<supervisor::ProcSpec> {
    let crate::config::FilterKind::Proc {
        command,
        user,
        group,
        chroot,
        ..
    } = &f.kind
    else {
        return None;
    };
    Some(supervisor::ProcSpec {
        id,
        name: f.name.clone(),
        role: Role::Filter,
        command: command.clone(),
        user: user.clone(),
        group: group.clone(),
        chroot: chroot.clone(),
    })
}

/// How the process of table `id` is run, if it has one.
pub fn table_spec(id: usize, t: &crate::table::Table) -> Option<supervisor::ProcSpec> {
    let crate::table::Source::Proc(p) = &t.source else {
        return None;
    };
    let (role, command) = match &p.program {
        crate::table::Program::Extras { kind, arg } => (
            Role::TableProgram(arg.clone()),
            crate::table::Program::extras_path(kind)
                .display()
                .to_string(),
        ),
        crate::table::Program::Exec(c) => (Role::TableExec, c.clone()),
    };
    Some(supervisor::ProcSpec {
        id,
        name: t.name.clone(),
        role,
        command,
        user: p.user.clone(),
        group: p.group.clone(),
        chroot: None,
    })
}

/// The message that hands the engine the socket of `spec`'s process.
fn handover(spec: &supervisor::ProcSpec) -> Vec<u8> {
    match spec.role {
        Role::Filter => encode_filter_fd(spec.id),
        Role::TableExec | Role::TableProgram(_) => encode_table_fd(&spec.name),
    }
}

/// The parent's loop: serves delivery requests and keeps the filter and table processes
/// running until the engine exits; returns the engine's exit code.
pub fn parent_loop(
    chan: OwnedFd,
    engine: i32,
    mut filters: Vec<Running>,
    mut reloader: reload::Reloader,
) -> io::Result<i32> {
    let sig = sys::signal_pipe()?;
    let fd = chan.as_raw_fd();
    let mut children: HashMap<i32, (u64, File)> = HashMap::new();
    let mut auth = auth::AuthChecks::default();
    let mut workers: Vec<Worker> = Vec::new();
    let mut buf = vec![0u8; MAX_MSG];
    let mut signals = Vec::new();
    let mut engine_status = None;
    let mut chan_open = true;
    loop {
        if let Some(code) = engine_status {
            // Let deliveries in flight finish; their results have nowhere to go.
            for (pid, _) in children.drain() {
                log::debug!("parent: delivery child {pid} left running at exit");
            }
            // Closing the channels ends the workers.
            workers.clear();
            for f in &filters {
                if let Some(pid) = f.pid {
                    sys::kill(pid, libc::SIGTERM);
                }
            }
            reloader.stop_all();
            return Ok(code);
        }
        let mut fds = vec![
            libc::pollfd {
                fd: if chan_open { fd } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: sig,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        for f in &filters {
            let efd = f.stderr.as_ref().map_or(-1, |e| e.as_raw_fd());
            fds.push(libc::pollfd {
                fd: efd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let wbase = fds.len();
        for w in &workers {
            fds.push(libc::pollfd {
                fd: w.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let now = Instant::now();
        let retire = reloader.tick(now);
        let timeout = filters
            .iter()
            .filter_map(|f| f.restart_at)
            .chain(retire)
            .map(|t| t.saturating_duration_since(now).as_millis().min(60_000) as i32)
            .min()
            .unwrap_or(1000)
            .min(1000);
        sys::poll(&mut fds, timeout)?;
        for (i, f) in filters.iter_mut().enumerate() {
            if fds[2 + i].revents != 0 {
                supervisor::drain_stderr(f);
            }
        }
        // Answers first, then the idle ones go; a worker that failed is dropped.
        let ready: Vec<i32> = workers
            .iter()
            .zip(&fds[wbase..])
            .filter(|(_, p)| p.revents != 0)
            .map(|(w, _)| w.pid)
            .collect();
        let mut i = 0;
        while i < workers.len() {
            let r = if ready.contains(&workers[i].pid) {
                drain_worker(&mut workers[i], fd, &mut buf)
            } else {
                Ok(())
            };
            let idle = workers[i].pending.is_empty() && workers[i].last.elapsed() > WORKER_IDLE;
            match r {
                Err(e) => {
                    let w = workers.swap_remove(i);
                    log::warn!("parent: delivery worker {} for {}: {e}", w.pid, w.user);
                    drop_worker(w, fd, "failed");
                }
                Ok(()) if idle => {
                    let w = workers.swap_remove(i);
                    log::debug!(
                        "parent: delivery worker {} for {} idle, closed",
                        w.pid,
                        w.user
                    );
                }
                Ok(()) => i += 1,
            }
        }
        if fds[1].revents != 0 {
            sys::read_signals(sig, &mut signals);
            for s in signals.drain(..) {
                match s {
                    libc::SIGTERM | libc::SIGINT => sys::kill(engine, s),
                    libc::SIGHUP if chan_open && engine_status.is_none() => {
                        reloader.start(fd, &filters)
                    }
                    _ => {}
                }
            }
        }
        // Reaped every turn, not only on SIGCHLD: a child may exit before the handler
        // was installed.
        while let Some((pid, status)) = sys::reap_child() {
            if pid == engine {
                engine_status = Some(sys::exit_code(status));
            } else if auth.reaped(pid, status, fd) || reloader.reaped(pid) {
            } else if let Some((id, pipe)) = children.remove(&pid) {
                let res = child_result(id, pipe, status);
                crate::crashpoint::hit("deliver-relayed");
                if let Err(e) = sys::send_msg(fd, &res.encode(), None) {
                    log::warn!("parent: cannot report delivery {id}: {e}");
                }
            } else if let Some(i) = workers.iter().position(|w| w.pid == pid) {
                let mut w = workers.swap_remove(i);
                // What it answered before it died still counts.
                let _ = drain_worker(&mut w, fd, &mut buf);
                if !w.pending.is_empty() {
                    log::warn!(
                        "parent: delivery worker {pid} for {} ended with status {}",
                        w.user,
                        sys::exit_code(status)
                    );
                }
                let why = format!("ended with status {}", sys::exit_code(status));
                drop_worker(w, fd, &why);
            } else if let Some(f) = filters.iter_mut().find(|f| f.pid == Some(pid)) {
                supervisor::drain_stderr(f);
                supervisor::report_dropped(f);
                if engine_status.is_some() || !chan_open {
                    // Stopping: the process saw its pipe close.
                    log::info!("{} {} exited", f.spec.what(), f.spec.name);
                    f.pid = None;
                    continue;
                }
                // A process that ran for a while starts its back-off again from 1 s.
                if f.started.elapsed() > Duration::from_secs(60) {
                    f.restarts = 0;
                }
                let delay = supervisor::backoff(f.restarts);
                log::warn!(
                    "{} {} exited with status {}, restarting in {}s",
                    f.spec.what(),
                    f.spec.name,
                    sys::exit_code(status),
                    delay.as_secs()
                );
                f.pid = None;
                f.restarts += 1;
                f.restart_at = Some(Instant::now() + delay);
            }
        }
        let now = Instant::now();
        for f in filters.iter_mut() {
            if f.restart_at.is_some_and(|t| t <= now) && engine_status.is_none() {
                match supervisor::spawn(&f.spec) {
                    Ok((pid, engine_end, err)) => {
                        f.pid = Some(pid);
                        f.started = Instant::now();
                        f.stderr = Some(File::from(err));
                        f.restart_at = None;
                        log::info!("{} {} restarted, pid {pid}", f.spec.what(), f.spec.name);
                        if let Err(e) =
                            sys::send_msg(fd, &handover(&f.spec), Some(engine_end.as_raw_fd()))
                        {
                            log::warn!(
                                "parent: cannot hand {} {} to the engine: {e}",
                                f.spec.what(),
                                f.spec.name
                            );
                        }
                    }
                    Err(e) => {
                        log::warn!("{} {}: cannot restart: {e}", f.spec.what(), f.spec.name);
                        f.restarts += 1;
                        f.restart_at = Some(now + supervisor::backoff(f.restarts));
                    }
                }
            }
        }
        if chan_open && fds[0].revents != 0 {
            loop {
                match sys::recv_msg(fd, &mut buf) {
                    Ok((0, _)) => {
                        // The engine is gone; its exit status follows with SIGCHLD.
                        chan_open = false;
                        break;
                    }
                    Ok((n, _)) if buf.first() == Some(&b'A') => {
                        auth.request(&buf[..n], fd);
                        // The password does not stay in the parent's memory.
                        sys::crypt::wipe(&mut buf[..n]);
                    }
                    Ok((_, _)) if buf.first() == Some(&reload::REQUEST) => {
                        reloader.start(fd, &filters);
                    }
                    Ok((n, _)) if buf.first() == Some(&reload::APPLIED) => {
                        reloader.applied(&buf[..n], &mut filters, fd);
                    }
                    Ok((n, msgfd)) => {
                        if let Some(&kind @ (b'K' | b'U')) = buf.first() {
                            let name = std::str::from_utf8(&buf[1..n]).ok();
                            if let Some(f) = filters.iter().find(|f| match kind {
                                b'K' => {
                                    f.spec.role == Role::Filter
                                        && decode_filter_id(&buf[..n]) == Some(f.spec.id)
                                }
                                _ => f.spec.role != Role::Filter && name == Some(&f.spec.name),
                            }) {
                                if let Some(pid) = f.pid {
                                    log::warn!(
                                        "{} {}: killed at the engine's request",
                                        f.spec.what(),
                                        f.spec.name
                                    );
                                    sys::kill(pid, libc::SIGKILL);
                                }
                            }
                        } else {
                            handle_request(&buf[..n], msgfd, fd, &mut children, &mut workers)
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        log::warn!("parent: engine channel: {e}");
                        chan_open = false;
                        break;
                    }
                }
            }
        }
    }
}

fn handle_request(
    msg: &[u8],
    msgfd: Option<OwnedFd>,
    chan: RawFd,
    children: &mut HashMap<i32, (u64, File)>,
    workers: &mut Vec<Worker>,
) {
    let (Some(req), Some(msgfd)) = (DeliverReq::decode(msg), msgfd) else {
        log::warn!("parent: malformed request from the engine ignored");
        return;
    };
    if worker_eligible(&req) {
        let i = match workers
            .iter()
            .position(|w| w.user == req.user && w.account == req.account)
        {
            Some(i) => Some(i),
            None => match spawn_worker(&req.user, req.account.as_deref(), &{
                let mut others: Vec<RawFd> = workers.iter().map(|w| w.sock.as_raw_fd()).collect();
                others.push(chan);
                others
            }) {
                Ok(w) => {
                    workers.push(w);
                    Some(workers.len() - 1)
                }
                Err(e) => {
                    log::warn!("parent: cannot start a delivery worker: {e}");
                    None
                }
            },
        };
        if let Some(i) = i {
            let w = &mut workers[i];
            match sys::send_msg(w.sock.as_raw_fd(), &req.encode(), Some(msgfd.as_raw_fd())) {
                Ok(()) => {
                    w.pending.push(req.id);
                    w.last = Instant::now();
                    return;
                }
                // Its queue is full: this one gets a child of its own.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    let w = workers.swap_remove(i);
                    log::warn!("parent: delivery worker {} for {}: {e}", w.pid, w.user);
                    drop_worker(w, chan, "failed");
                }
            }
        }
    }
    match spawn_delivery(&req, msgfd) {
        Ok((pid, pipe)) => {
            children.insert(pid, (req.id, pipe));
        }
        Err(e) => {
            let res = DeliverRes {
                id: req.id,
                outcome: Outcome::TempFail(format!("cannot fork: {e}")),
            };
            let _ = sys::send_msg(chan, &res.encode(), None);
        }
    }
}

#[cfg(test)]
#[path = "privsep_tests.rs"]
mod tests;
