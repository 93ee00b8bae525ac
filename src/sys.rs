//! Every direct libc call of the daemon, each behind a safe function.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::net::IpAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

pub mod crypt;
mod memfd;
mod net;
pub mod regex;
mod seqpacket;
mod setgid;
mod tty;
pub use memfd::memfd;
pub use net::{connect_from, listen_tcp};
pub use seqpacket::{recv_msg, recv_msg_nowait, send_msg, seqpacket_pair};
pub use setgid::{drop_setgid, fchdir, is_setgid, resume_setgid, suspend_setgid};
pub use tty::read_secret;

/// The host name from gethostname(2).
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates on success
    // when the name fits, and we search for the NUL within the buffer.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if r != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0)?;
    let s = std::str::from_utf8(&buf[..end]).ok()?;
    (!s.is_empty()).then(|| s.to_string())
}

/// The addresses of the network interface `name` (empty when there is none).
pub fn interface_addrs(name: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut p = ifap;
    while !p.is_null() {
        // SAFETY: p walks the list returned by getifaddrs; entries stay valid until
        // freeifaddrs. ifa_name is a NUL-terminated string; ifa_addr may be NULL.
        unsafe {
            let ifa = &*p;
            if !ifa.ifa_addr.is_null() && CStr::from_ptr(ifa.ifa_name).to_bytes() == name.as_bytes()
            {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(
                            u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                        ));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                        // Link-local addresses need a scope: not listened on.
                        if ip.segments()[0] & 0xffc0 != 0xfe80 {
                            out.push(IpAddr::V6(ip));
                        }
                    }
                    _ => {}
                }
            }
            p = ifa.ifa_next;
        }
    }
    // SAFETY: ifap came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    out
}

/// A user account from the password database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passwd {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub dir: String,
    /// Login shell.
    pub shell: String,
}

/// Looks a user up with getpwnam_r(3).
pub fn getpwnam(name: &str) -> Option<Passwd> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain data, zero is a valid bit pattern for it.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; the strings in pw point into buf,
    // which outlives their use below.
    let r = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name, pw_dir and pw_shell are NUL-terminated strings inside
    // buf (pw_shell may be null on some systems: checked).
    let (n, d) = unsafe { (CStr::from_ptr(pw.pw_name), CStr::from_ptr(pw.pw_dir)) };
    let shell = if pw.pw_shell.is_null() {
        String::new()
    } else {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(pw.pw_shell) }
            .to_string_lossy()
            .into_owned()
    };
    Some(Passwd {
        name: n.to_string_lossy().into_owned(),
        uid: pw.pw_uid,
        gid: pw.pw_gid,
        dir: d.to_string_lossy().into_owned(),
        shell,
    })
}

/// The name of the effective user, from the password database.
pub fn getpwuid_name() -> Option<String> {
    user_name(geteuid())
}

/// The login name of `uid`, from the password database (getpwuid_r(3): safe on any
/// thread, and it may block on NSS: call it off the loop).
pub fn user_name(uid: u32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain data, zero is a valid bit pattern for it.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; pw's strings point into buf.
    let r = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if r != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_name is a NUL-terminated string inside buf.
    Some(
        unsafe { CStr::from_ptr(pw.pw_name) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// The id of group `name`.
pub fn getgrnam(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: group is plain data; zero is a valid bit pattern.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call.
    let r = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut gr,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (r == 0 && !result.is_null()).then_some(gr.gr_gid)
}

/// The effective user id.
pub fn geteuid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Fills `buf` with random bytes from getrandom(2).
pub fn random_bytes(buf: &mut [u8]) {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of buf.
        let r = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if r > 0 {
            done += r as usize;
        } else if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // getrandom only fails on ancient kernels; fall back to the clock and pid.
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
                ^ u64::from(std::process::id()).rotate_left(32);
            for (i, b) in buf[done..].iter_mut().enumerate() {
                *b = (t >> ((i % 8) * 8)) as u8 ^ (i as u8).wrapping_mul(151);
            }
            return;
        }
    }
}

/// A random u64.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    random_bytes(&mut b);
    u64::from_ne_bytes(b)
}

/// Free bytes and the total size of the filesystem holding `path`, for unprivileged users.
pub fn disk_space(path: &Path) -> io::Result<(u64, u64)> {
    let c = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: statvfs is plain data; zero is a valid bit pattern.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and s a valid out pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let frsize = s.f_frsize as u64;
    Ok((s.f_bavail as u64 * frsize, s.f_blocks as u64 * frsize))
}

/// Raises the soft limit of open files to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: rlimit is plain data, and the calls get valid pointers.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 1024;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
        rl.rlim_cur as u64
    }
}

/// How many descriptors the process has open: the entries of `/proc/self/fd` less the
/// one that reads them, else the numbers below `limit` (at most 65536) that are open.
pub fn open_fds(limit: u64) -> usize {
    if let Ok(rd) = std::fs::read_dir("/proc/self/fd") {
        return rd.count().saturating_sub(1);
    }
    (0..limit.min(65536) as RawFd)
        // SAFETY: F_GETFD only reads the descriptor's flags; a closed number gives EBADF.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1)
        .count()
}

/// Write end of the signal self-pipe (-1 until [`signal_pipe`] ran).
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; fd is our non-blocking pipe. A full pipe
        // drops the byte, which is fine: one pending byte per signal kind is enough.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// Installs handlers for SIGTERM, SIGINT, SIGHUP and SIGCHLD that write the signal
/// number to a pipe, and ignores SIGPIPE. Returns the pipe's non-blocking read end.
pub fn signal_pipe() -> io::Result<RawFd> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    SIGNAL_FD.store(fds[1], Ordering::Relaxed);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
        // SAFETY: sigaction is plain data; the handler only calls write(2).
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    // SAFETY: setting a signal to SIG_IGN is always safe.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(fds[0])
}

/// Reads pending signal numbers from the self-pipe.
pub fn read_signals(fd: RawFd, out: &mut Vec<i32>) {
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: buf is valid for its length; fd is our pipe's read end.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return;
        }
        out.extend(buf[..n as usize].iter().map(|&b| i32::from(b)));
    }
}

/// Detaches from the terminal: fork (the parent exits), setsid, stdio to /dev/null.
pub fn daemonize() -> io::Result<()> {
    // SAFETY: called before any thread is started; the parent exits at once.
    match unsafe { libc::fork() } {
        -1 => return Err(io::Error::last_os_error()),
        0 => {}
        _ => std::process::exit(0),
    }
    // SAFETY: setsid has no memory effects.
    if unsafe { libc::setsid() } < 0 {
        return Err(io::Error::last_os_error());
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    use std::os::fd::AsRawFd;
    for fd in 0..3 {
        // SAFETY: both descriptors are open; dup2 replaces stdio.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Opens the syslog connection with the mail facility.
pub fn openlog(ident: &'static CStr) {
    // SAFETY: ident is 'static, as openlog keeps the pointer.
    unsafe {
        libc::openlog(
            ident.as_ptr(),
            libc::LOG_PID | libc::LOG_NDELAY,
            libc::LOG_MAIL,
        )
    };
}

/// Sends one message to syslog at `priority`.
pub fn syslog(priority: libc::c_int, msg: &str) {
    let Ok(c) = CString::new(msg.replace('\0', "\\0")) else {
        return;
    };
    // SAFETY: the format is a constant "%s" and c a valid C string.
    unsafe { libc::syslog(priority, c"%s".as_ptr(), c.as_ptr()) };
}

/// Seconds and nanoseconds since the epoch, and the local offset, as for a Date header.
pub fn now_rfc5322() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    rfc5322_date(now)
}

/// Formats a Unix time as an RFC 5322 date in UTC.
pub fn rfc5322_date(t: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = t.div_euclid(86400);
    let secs = t.rem_euclid(86400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{}, {} {} {} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// fork(2). In the child, returns `Ok(None)`; in the parent the child's pid.
pub fn fork() -> io::Result<Option<i32>> {
    // SAFETY: callers fork only from a single-threaded process, or exec/exit in the
    // child without touching locks taken by other threads.
    match unsafe { libc::fork() } {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(None),
        pid => Ok(Some(pid)),
    }
}

/// Asks the kernel to SIGKILL this process when its parent dies (Linux).
pub fn die_with_parent() {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number and has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
}

/// Switches to `uid`/`gid` for good, with `gid` as the only group. No-op for the
/// current ids when not root.
pub fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: plain id-changing syscalls; results are checked.
    unsafe {
        if libc::geteuid() == 0 {
            if libc::setgroups(1, &gid) != 0
                || libc::setresgid(gid, gid, gid) != 0
                || libc::setresuid(uid, uid, uid) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // Paranoia: regaining root must fail.
            if uid != 0 && libc::setuid(0) == 0 {
                return Err(io::Error::other(
                    "could regain root after dropping privileges",
                ));
            }
        }
    }
    Ok(())
}

/// The status of a child that exited, without blocking: `(pid, status)`.
pub fn reap_child() -> Option<(i32, i32)> {
    let mut status = 0;
    // SAFETY: waitpid with a valid out pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then_some((pid, status))
}

/// Waits for child `pid`; returns its exit code (128+signal when killed).
pub fn wait_pid(pid: i32) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid with a valid out pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return Ok(exit_code(status));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Exit code of a wait status, or 128+signal when killed.
pub fn exit_code(status: i32) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

/// Sends `sig` to process `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(pid, sig) };
}

/// Ends the process at once without running destructors or atexit handlers (for
/// forked children).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and is safe in a forked child.
    unsafe { libc::_exit(code) }
}

/// The uid of the peer of a connected unix socket.
pub fn peer_uid(fd: RawFd) -> io::Result<u32> {
    // SAFETY: ucred is plain data; getsockopt writes at most len bytes into it.
    unsafe {
        let mut cred: libc::ucred = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(cred.uid)
    }
}

/// Changes the owner of a path (not following a final symlink).
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
}

/// Sets the process umask; returns the previous one.
#[allow(clippy::useless_conversion)] // mode_t is narrower than u32 on some systems
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask has no memory effects.
    u32::from(unsafe { libc::umask(mask as libc::mode_t) })
}

/// Restores default dispositions for the signals the daemon handles (in children).
pub fn reset_signals() {
    for sig in [
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGCHLD,
        libc::SIGPIPE,
    ] {
        // SAFETY: setting SIG_DFL is always safe.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
}

/// poll(2) on `fds` for up to `timeout_ms` (-1: no limit); EINTR counts as a timeout.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: fds is a valid slice of pollfd for its length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            for f in fds.iter_mut() {
                f.revents = 0;
            }
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// A connected pair of close-on-exec `SOCK_STREAM` unix sockets (blocking).
pub fn stream_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sets O_NONBLOCK on a descriptor.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    set_o_nonblock(fd, true)
}

/// Clears O_NONBLOCK on a descriptor.
pub fn set_blocking(fd: RawFd) -> io::Result<()> {
    set_o_nonblock(fd, false)
}

fn set_o_nonblock(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; flags are read then written back.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        let want = if on {
            fl | libc::O_NONBLOCK
        } else {
            fl & !libc::O_NONBLOCK
        };
        if fl < 0 || libc::fcntl(fd, libc::F_SETFL, want) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// syncfs(2): writes out and flushes everything of the file system holding `fd`, in one
/// call and one device flush (Linux only: elsewhere the callers keep their per-file
/// fsyncs, see [`HAVE_SYNCFS`]).
#[cfg(target_os = "linux")]
pub fn syncfs(fd: RawFd) -> io::Result<()> {
    // SAFETY: syncfs takes a descriptor and has no memory effects.
    if unsafe { libc::syncfs(fd) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether [`syncfs`] makes data durable on this system.
pub const HAVE_SYNCFS: bool = cfg!(target_os = "linux");

/// syncfs(2) stand-in where there is none: never called, as [`HAVE_SYNCFS`] is false.
#[cfg(not(target_os = "linux"))]
pub fn syncfs(_fd: RawFd) -> io::Result<()> {
    Err(io::ErrorKind::Unsupported.into())
}

/// close(2) of a descriptor this process will not use again (in a forked child, the
/// parent's ends of other channels).
pub fn close(fd: RawFd) {
    // SAFETY: closing a descriptor number; the caller owns no Rust handle that is used
    // on this descriptor afterwards in this process.
    unsafe { libc::close(fd) };
}

/// dup2(2): makes `target` a copy of `fd` (without close-on-exec).
pub fn dup_onto(fd: RawFd, target: RawFd) -> io::Result<()> {
    // SAFETY: both are descriptor numbers; dup2 has no memory effects.
    if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts a new session (detaches from the controlling terminal's signals).
pub fn setsid() {
    // SAFETY: setsid has no memory effects; failure (already a leader) is harmless.
    unsafe { libc::setsid() };
}

/// chroot(2) into `dir`, then chdir("/").
pub fn chroot(dir: &Path) -> io::Result<()> {
    let c = CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: c is a valid C string; chdir gets a static one.
    unsafe {
        if libc::chroot(c.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Replaces the process with `/bin/sh -c SCRIPT`; returns only on failure.
pub fn exec_shell(script: &str) -> io::Error {
    let Ok(s) = CString::new(script) else {
        return io::Error::from(io::ErrorKind::InvalidInput);
    };
    let argv = [c"sh".as_ptr(), c"-c".as_ptr(), s.as_ptr(), std::ptr::null()];
    // SAFETY: argv is a NULL-terminated array of valid C strings that outlive the call.
    unsafe { libc::execv(c"/bin/sh".as_ptr(), argv.as_ptr()) };
    io::Error::last_os_error()
}

/// The effective group id.
pub fn getegid() -> u32 {
    // SAFETY: getegid cannot fail.
    unsafe { libc::getegid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_693_180),
            "Thu, 26 Nov 2026 11:39:40 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn loopback_interface_and_root_user() {
        assert!(interface_addrs("lo").contains(&IpAddr::from([127, 0, 0, 1])));
        assert_eq!(getpwnam("root").map(|p| p.uid), Some(0));
        assert_eq!(getpwnam("no-such-user-here"), None);
    }
}
