//! The group of a setgid binary: set aside at entry, taken back for one file, given
//! up for good; and the working directory taken from a checked descriptor.

use std::io;
use std::os::fd::AsRawFd;

/// Whether the process runs with a group it was given by a setgid bit.
pub fn is_setgid() -> bool {
    // SAFETY: getgid/getegid cannot fail.
    unsafe { libc::getgid() != libc::getegid() }
}

/// Sets the effective group back to the real one, keeping the setgid group in the
/// saved set; returns it when the process was setgid.
pub fn suspend_setgid() -> Option<u32> {
    if !is_setgid() {
        return None;
    }
    // SAFETY: plain id syscalls.
    unsafe {
        let egid = libc::getegid();
        if libc::setegid(libc::getgid()) != 0 {
            return None;
        }
        Some(egid)
    }
}

/// Takes the setgid group back after [`suspend_setgid`].
pub fn resume_setgid(gid: u32) {
    // SAFETY: plain id syscall; it only succeeds for the saved group.
    unsafe { libc::setegid(gid) };
}

/// Makes the directory open as `dir` (an `O_PATH` descriptor will do) the working
/// directory, so that names opened next are taken in it, whatever its path becomes.
pub fn fchdir(dir: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fchdir takes a descriptor the caller keeps open for the call.
    if unsafe { libc::fchdir(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives up the setgid group for good.
pub fn drop_setgid() -> io::Result<()> {
    // SAFETY: plain id-changing syscalls; results are checked.
    unsafe {
        let gid = libc::getgid();
        if libc::setresgid(gid, gid, gid) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
