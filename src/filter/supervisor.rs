//! Starting filter processes, once each, in the parent (which may still be root).
//!
//! A filter gets one end of a `SOCK_STREAM` socketpair as its standard input and output
//! and a pipe as its standard error (read by the parent and logged with the filter's
//! name). The child becomes its user and group, enters its chroot, then runs the command
//! with `/bin/sh -c "exec COMMAND"`. The other end goes to the engine. When a filter
//! exits the parent starts it again after a growing delay, and hands the engine the new
//! descriptor.

use crate::sys;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How to run one filter process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSpec {
    /// Index of the filter in the configuration.
    pub id: usize,
    /// Its name.
    pub name: String,
    /// The command, run by `/bin/sh -c "exec COMMAND"`.
    pub command: String,
    /// Account to run as (root only); default: the unprivileged user.
    pub user: Option<String>,
    /// Group to run as; default: the user's primary group.
    pub group: Option<String>,
    /// Directory to chroot into before the command runs.
    pub chroot: Option<PathBuf>,
}

/// A running (or waiting to restart) filter process.
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
}

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
                    eprintln!("filter {}: {e}", spec.name);
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
    let pw = sys::getpwnam(uname)
        .ok_or_else(|| io::Error::other(format!("filter {}: no user {uname}", spec.name)))?;
    let gid = match &spec.group {
        Some(g) => sys::getgrnam(g)
            .ok_or_else(|| io::Error::other(format!("filter {}: no group {g}", spec.name)))?,
        None => pw.gid,
    };
    Ok((pw.uid, gid))
}

enum Never {}

fn child(spec: &ProcSpec, sock: OwnedFd, err: OwnedFd, uid: u32, gid: u32) -> io::Result<Never> {
    sys::dup_onto(sock.as_raw_fd(), 0)?;
    sys::dup_onto(sock.as_raw_fd(), 1)?;
    sys::dup_onto(err.as_raw_fd(), 2)?;
    drop(sock);
    drop(err);
    sys::setsid();
    if let Some(dir) = &spec.chroot {
        sys::chroot(dir)?;
    }
    sys::drop_privileges(uid, gid)?;
    let script = format!("exec {}", spec.command);
    Err(sys::exec_shell(&script))
}

/// Reads what a filter wrote to its standard error and logs each full line.
pub fn drain_stderr(r: &mut Running) {
    let Some(f) = r.stderr.as_ref() else { return };
    let mut buf = [0u8; 4096];
    loop {
        match io::Read::read(&mut &*f, &mut buf) {
            Ok(0) => {
                r.stderr = None;
                break;
            }
            Ok(n) => r.errbuf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    while let Some(i) = memchr::memchr(b'\n', &r.errbuf) {
        let line: Vec<u8> = r.errbuf.drain(..=i).collect();
        log::warn!(
            "filter {}: {}",
            r.spec.name,
            line[..line.len() - 1].escape_ascii()
        );
    }
    if r.errbuf.len() > 4096 {
        log::warn!("filter {}: {}", r.spec.name, r.errbuf.escape_ascii());
        r.errbuf.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(20), Duration::from_secs(60));
    }
}
