//! Anonymous files in memory (memfd_create(2)), for data that must not reach a disk.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;

/// A new anonymous file held in memory, closed on exec, named `name` in
/// `/proc/PID/fd` listings. It behaves as a regular file (seek, pread, passing by
/// SCM_RIGHTS) and vanishes with its last descriptor.
pub fn memfd(name: &CStr) -> io::Result<File> {
    // SAFETY: `name` is a valid NUL-terminated string; the call creates a descriptor
    // and touches no memory of ours.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};

    #[test]
    fn reads_back_what_was_written() {
        let mut f = super::memfd(c"test").unwrap();
        f.write_all(b"hello").unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }
}
