//! The parent's delivery side: a child per delivery, or a long-lived worker per user
//! for maildirs, each running as the recipient's user; forward files.

use super::*;

/// Runs in the forked child: become the user, deliver, report.
pub(super) fn deliver_child(req: &DeliverReq, msg: OwnedFd) -> Outcome {
    match become_user(
        &req.user,
        req.account.as_deref(),
        req.kind == LocalKind::Mbox,
    ) {
        Ok(pw) => match deliver_as(req, &pw, msg, false) {
            Delivered::Done(o) => o,
            Delivered::Staged(s) => finish_staged(vec![s]).pop().unwrap_or(Outcome::Ok),
        },
        Err(o) => o,
    }
}

/// The account a `userbase` entry gives `user`: `UID:GID:HOME`, as OpenSMTPD's
/// tables write it. Root's ids are refused: a table never makes a delivery run as
/// root.
pub(super) fn table_account(user: &str, entry: &str) -> Result<sys::Passwd, Outcome> {
    let bad = || Outcome::TempFail(format!("userbase entry of {user} is not UID:GID:HOME"));
    let mut f = entry.splitn(3, ':');
    let uid: u32 = f
        .next()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(bad)?;
    let gid: u32 = f
        .next()
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(bad)?;
    let dir = f
        .next()
        .map(str::trim)
        .filter(|d| d.starts_with('/'))
        .ok_or_else(bad)?;
    if uid == 0 || gid == 0 {
        return Err(Outcome::PermFail(format!(
            "userbase gives {user} the ids of root: refused"
        )));
    }
    Ok(sys::Passwd {
        name: user.to_string(),
        uid,
        gid,
        dir: dir.to_string(),
        shell: String::new(),
    })
}

/// Switches this process to `user` for good (creating the user's mbox first, as root,
/// when `mbox`), with umask 077 and the home directory as working directory. The
/// account is `account` (a `userbase` entry) when given, else the system's.
pub(super) fn become_user(
    user: &str,
    account: Option<&str>,
    mbox: bool,
) -> Result<sys::Passwd, Outcome> {
    let pw = match account {
        Some(entry) => table_account(user, entry)?,
        None => match sys::getpwnam(user) {
            Some(pw) => pw,
            None => return Err(Outcome::PermFail(format!("unknown user {user}"))),
        },
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
pub(super) enum Delivered {
    /// The delivery is over.
    Done(Outcome),
    /// (Batched maildir delivery) written into `tmp/`; the caller syncs and publishes.
    Staged(mda::maildir::Staged),
}

/// Delivers one message as `pw` (this process already runs as that user). With
/// `batch`, a maildir delivery stops once the message is in `tmp/`, unsynced: the
/// caller finishes a whole batch at once ([`finish_staged`]).
pub(super) fn deliver_as(
    req: &DeliverReq,
    pw: &sys::Passwd,
    msg: OwnedFd,
    batch: bool,
) -> Delivered {
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
pub(super) fn finish_staged(mut staged: Vec<mda::maildir::Staged>) -> Vec<Outcome> {
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
/// could have written is ignored, as mail.local and OpenSMTPD do: a symbolic link
/// (not followed), anything but a regular file, a file or home directory owned by
/// another user than the recipient or root, or writable by its group or others.
pub(super) fn read_forward(pw: &sys::Passwd) -> Result<Option<Vec<String>>, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = Path::new(&pw.dir).join(".forward");
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            log::warn!("{}: a symbolic link, ignored", path.display());
            return Ok(None);
        }
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let md = f.metadata().map_err(|e| e.to_string())?;
    let safe =
        |md: &std::fs::Metadata| (md.uid() == pw.uid || md.uid() == 0) && md.mode() & 0o022 == 0;
    if !md.is_file() || !safe(&md) {
        log::warn!("{}: unsafe owner or mode, ignored", path.display());
        return Ok(None);
    }
    // Whoever may write the home directory may put a .forward there.
    match std::fs::metadata(&pw.dir) {
        Ok(home) if safe(&home) => {}
        _ => {
            log::warn!(
                "{}: the home directory has an unsafe owner or mode, ignored",
                path.display()
            );
            return Ok(None);
        }
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
pub(super) fn valid_shell(shell: &str, etc_shells: Option<&str>) -> bool {
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
pub(super) fn split_forward_line(l: &str) -> Vec<String> {
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
pub(super) fn spawn_delivery(req: &DeliverReq, msg: OwnedFd) -> io::Result<(i32, File)> {
    let (rd, wr) = std::io::pipe()?;
    match sys::fork()? {
        None => {
            drop(rd);
            sys::reset_signals();
            let outcome = deliver_child(req, msg);
            crate::crashpoint::hit("deliver-done");
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
pub(super) fn child_result(id: u64, mut pipe: File, status: i32) -> DeliverRes {
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
pub(super) const WORKER_IDLE: Duration = Duration::from_secs(10);
/// How many requests a worker takes before it syncs and answers.
pub(super) const WORKER_BATCH: usize = 64;

/// A long-lived delivery process for one user's maildir deliveries: forked once,
/// switched to the user, then fed requests and message descriptors over its own
/// `SOCK_SEQPACKET` pair. It takes every request waiting, delivers them, fsyncs each
/// `new/` directory once for the batch, and answers; a burst of mail for one user costs
/// one fork instead of one per message.
pub(super) struct Worker {
    pub(super) user: String,
    /// The `userbase` entry it runs under, if any.
    pub(super) account: Option<String>,
    pub(super) pid: i32,
    pub(super) sock: OwnedFd,
    /// Requests sent and not yet answered.
    pub(super) pending: Vec<u64>,
    pub(super) last: Instant,
}

/// Whether a request goes to a worker: maildir deliveries do (they run no command and
/// need nothing of root); everything else gets a child of its own.
pub(super) fn worker_eligible(req: &DeliverReq) -> bool {
    matches!(req.kind, LocalKind::Maildir { .. })
}

/// Forks a worker for `user`. The child closes `others`: the parent's end of the
/// engine's channel and of the other workers' channels, so that a channel the parent
/// closes is seen as end of file by the one process on its other side.
pub(super) fn spawn_worker(
    user: &str,
    account: Option<&str>,
    others: &[RawFd],
) -> io::Result<Worker> {
    let (ours, theirs) = sys::seqpacket_pair()?;
    match sys::fork()? {
        None => {
            drop(ours);
            for &fd in others {
                sys::close(fd);
            }
            run_worker(user, account, theirs)
        }
        Some(pid) => {
            log::info!("parent: delivery worker for {user} started, pid {pid}");
            Ok(Worker {
                user: user.to_string(),
                account: account.map(str::to_string),
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
pub(super) fn run_worker(user: &str, account: Option<&str>, sock: OwnedFd) -> ! {
    sys::reset_signals();
    sys::die_with_parent();
    let fd = sock.as_raw_fd();
    if sys::set_blocking(fd).is_err() {
        sys::exit_now(EXIT_TEMP);
    }
    let pw = become_user(user, account, false);
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
                    Some(req)
                        if req.user == user
                            && req.account.as_deref() == account
                            && worker_eligible(&req) =>
                    {
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
        crate::crashpoint::hit("deliver-done");
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
pub(super) fn drain_worker(w: &mut Worker, chan: RawFd, buf: &mut [u8]) -> io::Result<()> {
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
                crate::crashpoint::hit("deliver-relayed");
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
pub(super) fn drop_worker(w: Worker, chan: RawFd, why: &str) {
    for id in w.pending {
        let res = DeliverRes {
            id,
            outcome: Outcome::TempFail(format!("delivery process {why}")),
        };
        let _ = sys::send_msg(chan, &res.encode(), None);
    }
}
