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

use crate::filter::supervisor::{self, Running};
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

/// Runs in the forked child: become the user, deliver, report.
fn deliver_child(req: &DeliverReq, msg: OwnedFd) -> Outcome {
    match become_user(&req.user, req.kind == LocalKind::Mbox) {
        Ok(pw) => match deliver_as(req, &pw, msg, false) {
            Delivered::Done(o) => o,
            Delivered::Staged(s) => finish_staged(vec![s]).pop().unwrap_or(Outcome::Ok),
        },
        Err(o) => o,
    }
}

/// Switches this process to `user` for good (creating the user's mbox first, as root,
/// when `mbox`), with umask 077 and the home directory as working directory.
fn become_user(user: &str, mbox: bool) -> Result<sys::Passwd, Outcome> {
    let Some(pw) = sys::getpwnam(user) else {
        return Err(Outcome::PermFail(format!("unknown user {user}")));
    };
    if sys::geteuid() == 0 && mbox {
        // /var/mail is not writable by users: create the mbox as root, owned by the user.
        let path = mbox_path(&pw.name);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(_) => {
                if let Err(e) = sys::lchown(Path::new(&path), pw.uid, pw.gid) {
                    return Err(Outcome::TempFail(format!("cannot chown {path}: {e}")));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Outcome::TempFail(format!("cannot create {path}: {e}"))),
        }
    }
    sys::set_umask(0o077);
    if let Err(e) = sys::drop_privileges(pw.uid, pw.gid) {
        return Err(Outcome::TempFail(format!(
            "cannot switch to user {}: {e}",
            pw.name
        )));
    }
    let _ = std::env::set_current_dir(&pw.dir);
    Ok(pw)
}

/// What [`deliver_as`] did.
enum Delivered {
    /// The delivery is over.
    Done(Outcome),
    /// (Batched maildir delivery) written into `tmp/`; the caller syncs and publishes.
    Staged(mda::maildir::Staged),
}

/// Delivers one message as `pw` (this process already runs as that user). With
/// `batch`, a maildir delivery stops once the message is in `tmp/`, unsynced: the
/// caller finishes a whole batch at once ([`finish_staged`]).
fn deliver_as(req: &DeliverReq, pw: &sys::Passwd, msg: OwnedFd, batch: bool) -> Delivered {
    use Delivered::Done;
    if req.forward || req.kind == LocalKind::ForwardOnly {
        match read_forward(pw) {
            Ok(Some(items)) => return Done(Outcome::Forward(items)),
            Ok(None) if req.kind == LocalKind::ForwardOnly => {
                return Done(Outcome::PermFail(
                    "no usable .forward file (forward-only)".into(),
                ))
            }
            Ok(None) => {}
            Err(e) => return Done(Outcome::TempFail(e)),
        }
    }
    let mut file = File::from(msg);
    if let Err(e) = file.rewind() {
        return Done(Outcome::TempFail(format!("message: {e}")));
    }
    let ctx = FormatCtx {
        sender: req.sender.clone(),
        rcpt: req.rcpt.clone(),
        dest: req.dest.clone(),
        user: pw.name.clone(),
        home: pw.dir.clone(),
        subaddr_delim: req.subaddr_delim,
    };
    // Local deliveries record the envelope in the message (RFC 5322 §3.6.7 trace):
    // the recipient as the client gave it, as Postfix and OpenSMTPD write it, whatever
    // alias, virtual table or forward file led to this mailbox.
    let trace = format!(
        "Return-Path: <{}>\nDelivered-To: {}\n",
        req.sender.replace(['\r', '\n'], ""),
        req.rcpt.replace(['\r', '\n'], "")
    );
    let mut chained = trace.as_bytes().chain((&mut file).take(req.len));
    let msg: &mut dyn Read = &mut chained;
    let outcome = match &req.kind {
        LocalKind::Maildir { path, junk } => {
            match expand_path(path.as_deref().unwrap_or("~/Maildir"), &ctx) {
                Ok(p) if batch => {
                    return match mda::maildir::stage(Path::new(&p), *junk, msg) {
                        Ok(staged) => Delivered::Staged(staged),
                        Err(e) => Done(Outcome::TempFail(e)),
                    }
                }
                Ok(p) => mda::maildir::deliver(Path::new(&p), *junk, msg),
                Err(e) => Outcome::PermFail(format!("maildir path: {e}")),
            }
        }
        LocalKind::Mbox => mda::mbox::deliver(Path::new(&mbox_path(&pw.name)), &req.sender, msg),
        LocalKind::File(p) => mda::mbox::deliver(Path::new(p), &req.sender, msg),
        LocalKind::Mda(fmt) => match expand_command(fmt, &ctx) {
            Ok((script, args)) => mda::command::run(
                &script,
                &args,
                &mda::command::mda_env(&ctx),
                msg,
                MDA_TIMEOUT,
            ),
            Err(e) => Outcome::PermFail(format!("mda command: {e}")),
        },
        LocalKind::ForwardOnly => Outcome::PermFail("no usable .forward file".into()),
        LocalKind::Pipe(cmd) => {
            mda::command::run(cmd, &[], &mda::command::mda_env(&ctx), msg, MDA_TIMEOUT)
        }
    };
    Done(outcome)
}

/// Makes a batch of staged maildir deliveries durable and visible: sync the files,
/// move them into `new/`, sync the directories. On Linux each sync is one syncfs(2) per
/// file system for the whole batch, on the first file of the batch there (opened before
/// any of the batch's writes to that file system, so that a write-back error of any of
/// them is reported to it); elsewhere, an fsync per file and per directory. Returns the
/// outcome of each, in order.
fn finish_staged(mut staged: Vec<mda::maildir::Staged>) -> Vec<Outcome> {
    use std::os::unix::fs::MetadataExt;
    use std::path::PathBuf;
    let files: Vec<File> = staged.iter_mut().filter_map(|s| s.take_file()).collect();
    let mut handles: Vec<(u64, &File)> = Vec::new();
    let mut unknown = None;
    for f in &files {
        match f.metadata() {
            Ok(md) if handles.iter().any(|(dev, _)| *dev == md.dev()) => {}
            Ok(md) => handles.push((md.dev(), f)),
            Err(e) => unknown = Some(format!("maildir: fstat: {e}")),
        }
    }
    let syncfs_all = || -> Result<(), String> {
        for (_, h) in &handles {
            sys::syncfs(h.as_raw_fd()).map_err(|e| format!("maildir: syncfs: {e}"))?;
        }
        Ok(())
    };
    let written = if let Some(e) = unknown {
        Err(e)
    } else if sys::HAVE_SYNCFS {
        syncfs_all()
    } else {
        files
            .iter()
            .try_for_each(|f| f.sync_all())
            .map_err(|e| format!("maildir: fsync: {e}"))
    };
    if let Err(e) = written {
        let n = staged.len();
        staged.into_iter().for_each(mda::maildir::Staged::abandon);
        return (0..n).map(|_| Outcome::TempFail(e.clone())).collect();
    }
    let published: Vec<Result<PathBuf, String>> = staged
        .into_iter()
        .map(mda::maildir::Staged::publish)
        .collect();
    let mut new_dirs: Vec<PathBuf> = published.iter().filter_map(|r| r.clone().ok()).collect();
    new_dirs.sort();
    new_dirs.dedup();
    // A failure here leaves the messages visible but not durable: they count as not
    // delivered, and a retry may duplicate them rather than lose them.
    let synced = if sys::HAVE_SYNCFS {
        syncfs_all()
    } else {
        new_dirs.iter().try_for_each(|d| mda::maildir::sync_new(d))
    };
    published
        .into_iter()
        .map(|r| match (r, &synced) {
            (Ok(_), Ok(())) => Outcome::Ok,
            (Ok(_), Err(e)) => Outcome::TempFail(e.clone()),
            (Err(e), _) => Outcome::TempFail(e),
        })
        .collect()
}

/// Reads `~/.forward` as the user: `None` when absent or empty. A file that others
/// could have written is ignored, as mail.local and OpenSMTPD do.
fn read_forward(pw: &sys::Passwd) -> Result<Option<Vec<String>>, String> {
    use std::os::unix::fs::MetadataExt;
    let path = Path::new(&pw.dir).join(".forward");
    let f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let md = f.metadata().map_err(|e| e.to_string())?;
    if !md.is_file() || (md.uid() != pw.uid && md.uid() != 0) || md.mode() & 0o022 != 0 {
        log::warn!("{}: unsafe owner or mode, ignored", path.display());
        return Ok(None);
    }
    let mut text = String::new();
    f.take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let items: Vec<String> = text
        .lines()
        .map(|l| l.trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .flat_map(split_forward_line)
        .collect();
    // As Sendmail does: an account whose shell is not a login shell (a system account,
    // /usr/sbin/nologin) runs no command and writes no file through its .forward.
    let runs = |i: &String| i.starts_with('|') || i.starts_with('/');
    if items.iter().any(runs) {
        let shells = std::fs::read_to_string("/etc/shells").ok();
        if !valid_shell(&pw.shell, shells.as_deref()) {
            log::warn!(
                "{}: a command or file for {}, whose shell {:?} is not in /etc/shells: ignored",
                path.display(),
                pw.name,
                pw.shell
            );
            return Ok(None);
        }
    }
    Ok((!items.is_empty()).then_some(items))
}

/// Whether `shell` is a login shell: listed in the text of /etc/shells, or, without
/// that file, one of getusershell(3)'s defaults. An empty shell is /bin/sh.
fn valid_shell(shell: &str, etc_shells: Option<&str>) -> bool {
    let shell = if shell.is_empty() { "/bin/sh" } else { shell };
    match etc_shells {
        Some(text) => text
            .lines()
            .map(str::trim)
            .any(|l| !l.starts_with('#') && l == shell),
        None => shell == "/bin/sh" || shell == "/bin/csh",
    }
}

/// The items of a `.forward` line: comma-separated, where a double-quoted item (a
/// command with commas or spaces) keeps its commas and loses its quotes. An unquoted
/// line that starts with `|` is one command.
fn split_forward_line(l: &str) -> Vec<String> {
    if l.starts_with('|') {
        return vec![l.to_string()];
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in l.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(std::mem::take(&mut cur));
            }
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter()
        .map(|i| i.trim().to_string())
        .filter(|i| !i.is_empty())
        .collect()
}

/// Forks a delivery child; returns its pid and the read end of its result pipe.
fn spawn_delivery(req: &DeliverReq, msg: OwnedFd) -> io::Result<(i32, File)> {
    let (rd, wr) = std::io::pipe()?;
    match sys::fork()? {
        None => {
            drop(rd);
            sys::reset_signals();
            let outcome = deliver_child(req, msg);
            let res = DeliverRes {
                id: req.id,
                outcome,
            };
            let code = match res.outcome {
                Outcome::Ok | Outcome::Forward(_) => EXIT_OK,
                Outcome::TempFail(_) => EXIT_TEMP,
                Outcome::PermFail(_) => EXIT_PERM,
            };
            let mut wr = wr;
            let _ = std::io::Write::write_all(&mut wr, &res.encode());
            drop(wr);
            sys::exit_now(code);
        }
        Some(pid) => {
            drop(wr);
            Ok((pid, File::from(OwnedFd::from(rd))))
        }
    }
}

/// Reads a finished child's result, or makes one from its exit status.
fn child_result(id: u64, mut pipe: File, status: i32) -> DeliverRes {
    let mut buf = Vec::new();
    let _ = (&mut pipe).take(MAX_MSG as u64).read_to_end(&mut buf);
    if let Some(res) = DeliverRes::decode(&buf).filter(|r| r.id == id) {
        return res;
    }
    let code = sys::exit_code(status);
    DeliverRes {
        id,
        outcome: Outcome::TempFail(format!("delivery process ended with status {code}")),
    }
}

/// How long a delivery worker may sit idle before the parent lets it go.
const WORKER_IDLE: Duration = Duration::from_secs(10);
/// How many requests a worker takes before it syncs and answers.
const WORKER_BATCH: usize = 64;

/// A long-lived delivery process for one user's maildir deliveries: forked once,
/// switched to the user, then fed requests and message descriptors over its own
/// `SOCK_SEQPACKET` pair. It takes every request waiting, delivers them, fsyncs each
/// `new/` directory once for the batch, and answers; a burst of mail for one user costs
/// one fork instead of one per message.
struct Worker {
    user: String,
    pid: i32,
    sock: OwnedFd,
    /// Requests sent and not yet answered.
    pending: Vec<u64>,
    last: Instant,
}

/// Whether a request goes to a worker: maildir deliveries do (they run no command and
/// need nothing of root); everything else gets a child of its own.
fn worker_eligible(req: &DeliverReq) -> bool {
    matches!(req.kind, LocalKind::Maildir { .. })
}

/// Forks a worker for `user`. The child closes `others`: the parent's end of the
/// engine's channel and of the other workers' channels, so that a channel the parent
/// closes is seen as end of file by the one process on its other side.
fn spawn_worker(user: &str, others: &[RawFd]) -> io::Result<Worker> {
    let (ours, theirs) = sys::seqpacket_pair()?;
    match sys::fork()? {
        None => {
            drop(ours);
            for &fd in others {
                sys::close(fd);
            }
            run_worker(user, theirs)
        }
        Some(pid) => {
            log::info!("parent: delivery worker for {user} started, pid {pid}");
            Ok(Worker {
                user: user.to_string(),
                pid,
                sock: ours,
                pending: Vec::new(),
                last: Instant::now(),
            })
        }
    }
}

/// The worker's life: become the user, then serve batches until the parent closes the
/// channel.
fn run_worker(user: &str, sock: OwnedFd) -> ! {
    sys::reset_signals();
    sys::die_with_parent();
    let fd = sock.as_raw_fd();
    if sys::set_blocking(fd).is_err() {
        sys::exit_now(EXIT_TEMP);
    }
    let pw = become_user(user, false);
    let mut buf = vec![0u8; MAX_MSG];
    loop {
        let mut batch: Vec<(DeliverReq, OwnedFd)> = Vec::new();
        let mut bad: Vec<u64> = Vec::new();
        let mut wait = true;
        while batch.len() < WORKER_BATCH {
            let got = if wait {
                sys::recv_msg(fd, &mut buf)
            } else {
                sys::recv_msg_nowait(fd, &mut buf)
            };
            match got {
                Ok((0, _)) if wait => sys::exit_now(EXIT_OK),
                Ok((n, Some(msgfd))) if n > 0 => match DeliverReq::decode(&buf[..n]) {
                    Some(req) if req.user == user && worker_eligible(&req) => {
                        batch.push((req, msgfd))
                    }
                    Some(req) => bad.push(req.id),
                    None => {}
                },
                Ok((n, None)) if n > 0 => {
                    if let Some(req) = DeliverReq::decode(&buf[..n]) {
                        bad.push(req.id);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if wait && e.kind() != io::ErrorKind::WouldBlock => sys::exit_now(EXIT_TEMP),
                _ => break,
            }
            wait = false;
        }
        let mut results: Vec<(u64, Option<Outcome>)> = bad
            .into_iter()
            .map(|id| {
                let o = Outcome::TempFail("malformed request to the delivery worker".into());
                (id, Some(o))
            })
            .collect();
        let mut staged = Vec::new();
        for (req, msgfd) in batch {
            match &pw {
                Ok(pw) => match deliver_as(&req, pw, msgfd, true) {
                    Delivered::Done(o) => results.push((req.id, Some(o))),
                    Delivered::Staged(s) => {
                        staged.push(s);
                        results.push((req.id, None));
                    }
                },
                Err(o) => results.push((req.id, Some(o.clone()))),
            }
        }
        let mut finished = finish_staged(staged).into_iter();
        for (_, slot) in results.iter_mut().filter(|(_, o)| o.is_none()) {
            *slot = finished.next();
        }
        for (id, outcome) in results {
            let outcome =
                outcome.unwrap_or_else(|| Outcome::TempFail("delivery lost in the batch".into()));
            let res = DeliverRes { id, outcome };
            if sys::send_msg(fd, &res.encode(), None).is_err() {
                sys::exit_now(EXIT_TEMP);
            }
        }
    }
}

/// Reads a worker's answers and passes them to the engine.
fn drain_worker(w: &mut Worker, chan: RawFd, buf: &mut [u8]) -> io::Result<()> {
    loop {
        match sys::recv_msg(w.sock.as_raw_fd(), buf) {
            Ok((0, _)) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok((n, _)) => {
                let Some(res) = DeliverRes::decode(&buf[..n]) else {
                    return Err(io::ErrorKind::InvalidData.into());
                };
                let Some(i) = w.pending.iter().position(|&id| id == res.id) else {
                    return Err(io::ErrorKind::InvalidData.into());
                };
                w.pending.swap_remove(i);
                w.last = Instant::now();
                if let Err(e) = sys::send_msg(chan, &res.encode(), None) {
                    log::warn!("parent: cannot report delivery {}: {e}", res.id);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Gives up on a worker: its unanswered requests fail for now (the queue retries them),
/// and closing its channel makes it exit.
fn drop_worker(w: Worker, chan: RawFd, why: &str) {
    for id in w.pending {
        let res = DeliverRes {
            id,
            outcome: Outcome::TempFail(format!("delivery process {why}")),
        };
        let _ = sys::send_msg(chan, &res.encode(), None);
    }
}

/// Parent -> engine: a (re)started filter's socket follows. `'F' id`.
pub fn encode_filter_fd(id: usize) -> Vec<u8> {
    let mut v = vec![b'F'];
    v.extend_from_slice(&(id as u64).to_be_bytes());
    v
}

/// Engine -> parent: kill this filter (it hung or spoke garbage). `'K' id`.
pub fn encode_filter_kill(id: usize) -> Vec<u8> {
    let mut v = vec![b'K'];
    v.extend_from_slice(&(id as u64).to_be_bytes());
    v
}

/// The filter id of an `'F'` or `'K'` message.
pub fn decode_filter_id(b: &[u8]) -> Option<usize> {
    let id: [u8; 8] = b.get(1..9)?.try_into().ok()?;
    (b.len() == 9).then(|| u64::from_be_bytes(id) as usize)
}

/// The parent's loop: serves delivery requests and keeps the filters running until the
/// engine exits; returns the engine's exit code.
pub fn parent_loop(chan: OwnedFd, engine: i32, mut filters: Vec<Running>) -> io::Result<i32> {
    let sig = sys::signal_pipe()?;
    let fd = chan.as_raw_fd();
    let mut children: HashMap<i32, (u64, File)> = HashMap::new();
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
        let timeout = filters
            .iter()
            .filter_map(|f| f.restart_at)
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
                    libc::SIGTERM | libc::SIGINT | libc::SIGHUP => sys::kill(engine, s),
                    _ => {}
                }
            }
        }
        // Reaped every turn, not only on SIGCHLD: a child may exit before the handler
        // was installed.
        while let Some((pid, status)) = sys::reap_child() {
            if pid == engine {
                engine_status = Some(sys::exit_code(status));
            } else if let Some((id, pipe)) = children.remove(&pid) {
                let res = child_result(id, pipe, status);
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
                    // Stopping: the filter saw its pipe close.
                    log::info!("filter {} exited", f.spec.name);
                    f.pid = None;
                    continue;
                }
                // A filter that ran for a while starts its back-off again from 1 s.
                if f.started.elapsed() > Duration::from_secs(60) {
                    f.restarts = 0;
                }
                let delay = supervisor::backoff(f.restarts);
                log::warn!(
                    "filter {} exited with status {}, restarting in {}s",
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
                        log::info!("filter {} restarted, pid {pid}", f.spec.name);
                        if let Err(e) = sys::send_msg(
                            fd,
                            &encode_filter_fd(f.spec.id),
                            Some(engine_end.as_raw_fd()),
                        ) {
                            log::warn!(
                                "parent: cannot hand filter {} to the engine: {e}",
                                f.spec.name
                            );
                        }
                    }
                    Err(e) => {
                        log::warn!("filter {}: cannot restart: {e}", f.spec.name);
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
                    Ok((n, msgfd)) => {
                        if buf.first() == Some(&b'K') {
                            if let Some(f) = decode_filter_id(&buf[..n])
                                .and_then(|id| filters.iter().find(|f| f.spec.id == id))
                            {
                                if let Some(pid) = f.pid {
                                    log::warn!(
                                        "filter {}: killed at the engine's request",
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
        let i = match workers.iter().position(|w| w.user == req.user) {
            Some(i) => Some(i),
            None => match spawn_worker(&req.user, &{
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
mod tests {
    use super::*;

    #[test]
    fn login_shells() {
        let etc = "# /etc/shells\n/bin/sh\n/usr/bin/bash\n";
        assert!(valid_shell("/usr/bin/bash", Some(etc)));
        assert!(valid_shell("", Some(etc)));
        assert!(!valid_shell("/usr/sbin/nologin", Some(etc)));
        assert!(!valid_shell("# /etc/shells", Some(etc)));
        assert!(valid_shell("/bin/csh", None));
        assert!(!valid_shell("/bin/false", None));
    }

    #[test]
    fn forward_lines() {
        assert_eq!(
            split_forward_line("\\bob, \"|cat > /tmp/x, y\""),
            ["\\bob", "|cat > /tmp/x, y"]
        );
        assert_eq!(split_forward_line("|procmail -a x"), ["|procmail -a x"]);
        assert_eq!(split_forward_line("a@b, c@d,"), ["a@b", "c@d"]);
    }

    #[test]
    fn request_and_result_round_trip() {
        for kind in [
            LocalKind::Maildir {
                path: Some("~/Mail/%{rcpt.user}".into()),
                junk: true,
            },
            LocalKind::Maildir {
                path: None,
                junk: false,
            },
            LocalKind::Mbox,
            LocalKind::Mda("procmail -f %{sender}".into()),
            LocalKind::File("/tmp/x".into()),
            LocalKind::Pipe("cat".into()),
        ] {
            let r = DeliverReq {
                id: 42,
                kind,
                user: "bob".into(),
                sender: "a@b.c".into(),
                rcpt: "bob+x@b.c".into(),
                dest: "bob".into(),
                subaddr_delim: '+',
                forward: true,
                len: 12345,
            };
            assert_eq!(DeliverReq::decode(&r.encode()), Some(r));
        }
        let enc = DeliverReq {
            id: 1,
            kind: LocalKind::Mbox,
            user: "u".into(),
            sender: String::new(),
            rcpt: String::new(),
            dest: String::new(),
            subaddr_delim: '+',
            forward: false,
            len: 0,
        }
        .encode();
        assert_eq!(DeliverReq::decode(&enc[..enc.len() - 1]), None);
        for o in [
            Outcome::Ok,
            Outcome::TempFail("t".into()),
            Outcome::PermFail("p".into()),
        ] {
            let r = DeliverRes { id: 9, outcome: o };
            assert_eq!(DeliverRes::decode(&r.encode()), Some(r));
        }
    }
}
