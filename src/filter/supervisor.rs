//! Starting filter and table processes, once each, in the parent (which may still be
//! root).
//!
//! A filter gets one end of a `SOCK_STREAM` socketpair as its standard input and output
//! and a pipe as its standard error (read by the parent and logged with the filter's
//! name). The child becomes its user and group, enters its chroot, then runs the command
//! with `/bin/sh -c "exec COMMAND"`. The other end goes to the engine. When a filter
//! exits the parent starts it again after a growing delay, and hands the engine the new
//! descriptor. A table process is started the same way (`proc-exec`), or, for
//! OpenSMTPD 6's `table-TYPE` programs, run directly as OpenSMTPD 6 runs them: the
//! table's name as `argv[0]`, its argument as `argv[1]`, the socket on standard input
//! only.

use super::limit::LogLimit;
use super::pipe::{LOG_MAX, LOG_WINDOW};
use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How to run one filter or table process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSpec {
    /// Index of the filter (or table) in the configuration.
    pub id: usize,
    /// Its name.
    pub name: String,
    /// What it is, and how it is run.
    pub role: Role,
    /// The command, run by `/bin/sh -c "exec COMMAND"`; for [`Role::TableProgram`],
    /// the program file.
    pub command: String,
    /// Account to run as (root only); default: the unprivileged user.
    pub user: Option<String>,
    /// Group to run as; default: the user's primary group.
    pub group: Option<String>,
    /// Directory to chroot into before the command runs.
    pub chroot: Option<PathBuf>,
}

/// What a supervised process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A filter: the command through the shell, the socket on standard input and
    /// output.
    Filter,
    /// A table process of the line protocol (`proc-exec`): like a filter.
    TableExec,
    /// OpenSMTPD 6's table program: run directly with `argv[0]` the table's name and
    /// `argv[1]` this argument, the socket on standard input only (standard output
    /// goes where standard error goes), as OpenSMTPD 6 runs it.
    TableProgram(String),
}

impl ProcSpec {
    /// "filter" or "table", for the log.
    pub fn what(&self) -> &'static str {
        match self.role {
            Role::Filter => "filter",
            Role::TableExec | Role::TableProgram(_) => "table",
        }
    }
}

/// A running (or waiting to restart) filter or table process.
#[derive(Debug)]
pub struct Running {
    /// What it runs.
    pub spec: ProcSpec,
    /// Its pid, when running.
    pub pid: Option<i32>,
    /// Read end of its standard error (non-blocking).
    pub stderr: Option<std::fs::File>,
    /// Restarts so far (for the back-off).
    pub restarts: u32,
    /// When it may be started again.
    pub restart_at: Option<Instant>,
    /// Partial stderr line.
    pub errbuf: Vec<u8>,
    /// When it was last started.
    pub started: Instant,
    /// Lines of its standard error logged per window.
    pub logs: LogLimit,
}

impl Running {
    /// A filter process just started.
    pub fn new(spec: ProcSpec, pid: i32, stderr: OwnedFd) -> Running {
        Running {
            spec,
            pid: Some(pid),
            stderr: Some(std::fs::File::from(stderr)),
            restarts: 0,
            restart_at: None,
            errbuf: Vec::new(),
            started: Instant::now(),
            logs: LogLimit::new(LOG_MAX, LOG_WINDOW),
        }
    }
}

/// Bytes of a filter's standard error read per call of [`drain_stderr`]: the parent's
/// poll(2) is level-triggered and comes back for the rest.
pub const STDERR_PER_CALL: usize = 64 * 1024;

/// The delay before restart number `n`: 1 s, 2 s, 4 s ... at most 60 s.
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60))
}

/// Starts `spec`; returns the child's pid, the engine's end of the socket and the read
/// end of the child's standard error.
pub fn spawn(spec: &ProcSpec) -> io::Result<(i32, OwnedFd, OwnedFd)> {
    let (engine_end, filter_end) = sys::stream_pair()?;
    let (err_rd, err_wr) = std::io::pipe()?;
    let (uid, gid) = ids(spec)?;
    match sys::fork()? {
        None => {
            drop(engine_end);
            drop(err_rd);
            sys::reset_signals();
            let code = match child(spec, filter_end, OwnedFd::from(err_wr), uid, gid) {
                Ok(never) => match never {},
                Err(e) => {
                    eprintln!("{} {}: {e}", spec.what(), spec.name);
                    127
                }
            };
            sys::exit_now(code);
        }
        Some(pid) => {
            drop(filter_end);
            drop(err_wr);
            sys::set_nonblocking(err_rd.as_raw_fd())?;
            Ok((pid, engine_end, OwnedFd::from(err_rd)))
        }
    }
}

/// The ids a filter runs as: its `user` (else the unprivileged user) when root; the
/// current ids otherwise.
fn ids(spec: &ProcSpec) -> io::Result<(u32, u32)> {
    if sys::geteuid() != 0 {
        return Ok((sys::geteuid(), sys::getegid()));
    }
    let uname = spec
        .user
        .as_deref()
        .unwrap_or(crate::config::UNPRIVILEGED_USER);
    let what = spec.what();
    let pw = sys::getpwnam(uname)
        .ok_or_else(|| io::Error::other(format!("{what} {}: no user {uname}", spec.name)))?;
    let gid = match &spec.group {
        Some(g) => sys::getgrnam(g)
            .ok_or_else(|| io::Error::other(format!("{what} {}: no group {g}", spec.name)))?,
        None => pw.gid,
    };
    Ok((pw.uid, gid))
}

enum Never {}

fn child(spec: &ProcSpec, sock: OwnedFd, err: OwnedFd, uid: u32, gid: u32) -> io::Result<Never> {
    sys::dup_onto(sock.as_raw_fd(), 0)?;
    let out = match spec.role {
        Role::TableProgram(_) => err.as_raw_fd(),
        Role::Filter | Role::TableExec => sock.as_raw_fd(),
    };
    sys::dup_onto(out, 1)?;
    sys::dup_onto(err.as_raw_fd(), 2)?;
    drop(sock);
    drop(err);
    sys::setsid();
    if let Some(dir) = &spec.chroot {
        sys::chroot(dir)?;
    }
    sys::drop_privileges(uid, gid)?;
    if let Role::TableProgram(arg) = &spec.role {
        use std::os::unix::process::CommandExt;
        return Err(std::process::Command::new(&spec.command)
            .arg0(&spec.name)
            .arg(arg)
            .exec());
    }
    let script = format!("exec {}", spec.command);
    Err(sys::exec_shell(&script))
}

/// Reads what a filter wrote to its standard error, at most [`STDERR_PER_CALL`] bytes,
/// and logs each full line (a line longer than 4096 bytes in pieces), at most
/// [`LOG_MAX`] per [`LOG_WINDOW`]; the others are counted.
pub fn drain_stderr(r: &mut Running) {
    let Some(f) = r.stderr.as_ref() else { return };
    let mut buf = [0u8; 4096];
    let mut read = 0;
    while read < STDERR_PER_CALL {
        match io::Read::read(&mut &*f, &mut buf) {
            Ok(0) => {
                r.stderr = None;
                break;
            }
            Ok(n) => {
                read += n;
                r.errbuf.extend_from_slice(&buf[..n]);
                let who = format!("{} {}", r.spec.what(), r.spec.name);
                log_lines(&who, &mut r.logs, &mut r.errbuf, Instant::now());
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Logs how many lines of a filter that exited were dropped, if any.
pub fn report_dropped(r: &mut Running) {
    let dropped = r.logs.take_dropped();
    if dropped > 0 {
        log::info!(
            "{} {}: {dropped} log lines dropped",
            r.spec.what(),
            r.spec.name
        );
    }
}

/// Logs the full lines of `buf` (taken off it), and a piece of a line that grew too
/// long.
fn log_lines(who: &str, logs: &mut LogLimit, buf: &mut Vec<u8>, now: Instant) {
    let mut start = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[start..]) {
        log_line(who, logs, &buf[start..start + i], now);
        start += i + 1;
    }
    buf.drain(..start);
    if buf.len() > 4096 {
        log_line(who, logs, buf, now);
        buf.clear();
    }
}

fn log_line(who: &str, logs: &mut LogLimit, line: &[u8], now: Instant) {
    let (admit, dropped) = logs.admit(now);
    if dropped > 0 {
        log::info!("{who}: {dropped} log lines dropped");
    }
    if admit {
        log::warn!("{who}: {}", line.escape_ascii());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_is_read_a_bounded_amount_at_a_time() {
        let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let spec = ProcSpec {
            id: 0,
            name: "t".into(),
            role: Role::Filter,
            command: String::new(),
            user: None,
            group: None,
            chroot: None,
        };
        let mut r = Running::new(spec, 1, OwnedFd::from(ours));
        // More than one call takes, then a line without end longer than a piece.
        let mut text = b"a line of the filter\n".repeat(5000);
        text.extend_from_slice(&[b'x'; 10_000]);
        io::Write::write_all(&mut theirs, &text).unwrap();
        drain_stderr(&mut r);
        assert!(r.errbuf.len() <= 4096);
        let mut left = 0;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = io::Read::read(&mut r.stderr.as_ref().unwrap(), &mut buf) {
            left += n;
        }
        assert!(left >= text.len() - STDERR_PER_CALL - 4096, "{left}");
        drop(theirs);
        drain_stderr(&mut r);
        assert!(r.stderr.is_none());
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(20), Duration::from_secs(60));
    }
}
