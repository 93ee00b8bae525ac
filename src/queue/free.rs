//! `free/`: message files done with, kept for new messages, and the spool's free space.
//!
//! A file kept here keeps its blocks (up to [`FREE_KEEP`]) so that a new message writes
//! over them instead of freeing and allocating them again. That space is the spool's
//! own: when the file system runs short (the free-space check fails, or a write fails
//! with ENOSPC or EDQUOT), the kept files are emptied, which gives their blocks back,
//! before the spool says it is full. Their inodes stay, to be reused. So an empty queue
//! never keeps mail out, whatever `free/` held when the disk filled up.

use super::seal::MessageFile;
use super::spool::{is_no_space, Spool};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Most message files kept in `free/`; more are unlinked.
pub const MAX_FREE: usize = 1024;
/// A file kept in `free/` keeps its blocks up to this size (a new message overwrites
/// them rather than freeing and allocating them again); a larger one is emptied.
pub const FREE_KEEP: u64 = 64 * 1024;
/// Fraction of the spool's file system kept free, as OpenSMTPD does.
pub const MIN_FREE_PERCENT: u64 = 5;

/// Whether a file system with `avail` of `total` bytes available can take a message of
/// `size` bytes and still keep [`MIN_FREE_PERCENT`] of itself free.
pub fn enough_space(avail: u64, total: u64, size: u64) -> bool {
    avail >= size.saturating_add(total / 100 * MIN_FREE_PERCENT)
}

/// The files of `free/`, each with the bytes it holds.
#[derive(Debug, Default)]
pub struct FreeList {
    files: Vec<(PathBuf, u64)>,
}

/// What [`FreeList::release`] gave back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Files emptied.
    pub files: usize,
    /// Bytes they held.
    pub bytes: u64,
}

impl FreeList {
    /// A list of the files found in `free/` at start, each with its size.
    pub fn new(files: Vec<(PathBuf, u64)>) -> FreeList {
        FreeList { files }
    }

    /// Whether [`MAX_FREE`] files wait already.
    pub fn is_full(&self) -> bool {
        self.files.len() >= MAX_FREE
    }

    /// How many files wait.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file waits.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Bytes the waiting files hold.
    pub fn held(&self) -> u64 {
        self.files.iter().map(|(_, n)| n).sum()
    }

    /// Adds a file of `len` bytes that was moved into `free/`.
    pub fn push(&mut self, path: PathBuf, len: u64) {
        self.files.push((path, len));
    }

    /// Takes a file to reuse.
    pub fn pop(&mut self) -> Option<PathBuf> {
        self.files.pop().map(|(p, _)| p)
    }

    /// Empties every file that holds blocks, giving them back to the file system. A file
    /// that cannot be opened (gone, replaced) is forgotten.
    pub fn release(&mut self) -> Released {
        let mut out = Released::default();
        self.files.retain_mut(|(path, len)| {
            if *len == 0 {
                return true;
            }
            // O_NONBLOCK and O_NOFOLLOW: whatever took the file's place, this never
            // blocks nor writes elsewhere.
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&*path);
            match f.and_then(|f| f.set_len(0)) {
                Ok(()) => {
                    out.files += 1;
                    out.bytes += *len;
                    *len = 0;
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => {
                    log::warn!("queue: cannot empty {}: {e}", path.display());
                    false
                }
            }
        });
        out
    }
}

impl Spool {
    /// Moves a message file that is done with to `free/` and empties it, or unlinks it
    /// when `free/` is full.
    pub(super) fn recycle(&self, path: &Path) -> io::Result<()> {
        let Ok(mut free) = self.free.lock() else {
            return fs::remove_file(path);
        };
        if free.is_full() {
            return fs::remove_file(path);
        }
        let to = self
            .root()
            .join("free")
            .join(format!("{:016x}", crate::sys::random_u64()));
        fs::rename(path, &to)?;
        let mut len = fs::metadata(&to)?.len();
        if len > FREE_KEEP {
            OpenOptions::new().write(true).open(&to)?.set_len(0)?;
            len = 0;
        }
        free.push(to, len);
        Ok(())
    }

    /// Empties the files of `free/`, giving their blocks back to the file system (their
    /// inodes stay for new messages); returns the bytes given back. Called when space
    /// runs short.
    pub fn release_free(&self) -> u64 {
        let Ok(mut free) = self.free.lock() else {
            return 0;
        };
        if free.held() == 0 {
            return 0;
        }
        let r = free.release();
        log::warn!(
            "queue: spool short of space: emptied {} file(s) of free/, {} bytes given back",
            r.files,
            r.bytes
        );
        r.bytes
    }

    /// Runs `op`; when it fails for lack of space and `free/` gave blocks back, runs it
    /// once more.
    pub(super) fn retry_short<T>(&self, mut op: impl FnMut() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if is_no_space(&e) && self.release_free() > 0 => op(),
            r => r,
        }
    }

    /// Whether the spool's file system can take a message of `size` bytes (SIZE= or 0)
    /// and keep its reserve; when it cannot, but could with what `free/` holds, `free/`
    /// gives its blocks back first. A failed statvfs(2) answers yes: the writes will
    /// tell.
    pub fn has_space(&self, size: u64) -> bool {
        let space = || {
            crate::sys::disk_space(self.root())
                .inspect_err(|e| log::warn!("queue: statvfs failed: {e}"))
        };
        let Ok((avail, total)) = space() else {
            return true;
        };
        if enough_space(avail, total, size) {
            return true;
        }
        let held = self.free.lock().map_or(0, |f| f.held());
        held > 0
            && enough_space(avail.saturating_add(held), total, size)
            && self.release_free() > 0
            && space().is_ok_and(|(avail, total)| enough_space(avail, total, size))
    }

    /// Appends `data` to a message being written (sealed when the spool has a key).
    /// When it fails for lack of space and `free/` gave blocks back, it is written again
    /// at the same place.
    pub fn write_data(&self, f: &mut MessageFile, data: &[u8]) -> io::Result<()> {
        let bytes = f.encode(data)?.into_owned();
        self.write_raw(f, &bytes)
    }

    /// Ends the message of `f`: its last sealed segment, when it is sealed and that was
    /// not written yet.
    pub fn finish_data(&self, f: &mut MessageFile) -> io::Result<()> {
        if !f.open_seal() {
            return Ok(());
        }
        let last = f.finish()?;
        self.write_raw(f, &last)?;
        // What a reused file held beyond goes: a sealed message ends with the file.
        f.file.set_len(f.end())
    }

    /// Writes `bytes` as they are after what `f` holds, once more after a failure for
    /// lack of space when `free/` gave blocks back.
    pub(super) fn write_raw(&self, f: &mut MessageFile, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.retry_short(|| f.write_raw(bytes))
    }

    /// A file from `free/`, renamed to `to` and opened for writing at its start. What it
    /// held is overwritten, and cut off at the commit ([`Spool::prepare_commit`]).
    pub(super) fn reuse(&self, to: &Path) -> Option<File> {
        let from = self.free.lock().ok()?.pop()?;
        fs::rename(&from, to).ok()?;
        match OpenOptions::new().write(true).open(to) {
            Ok(f) => Some(f),
            Err(_) => {
                let _ = fs::remove_file(to);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn reserve_is_kept() {
        // 5% of 2000 is 100.
        assert!(enough_space(100, 2000, 0));
        assert!(!enough_space(99, 2000, 0));
        assert!(enough_space(150, 2000, 50));
        assert!(!enough_space(150, 2000, 51));
        assert!(!enough_space(u64::MAX - 1, 2000, u64::MAX));
    }

    #[test]
    fn release_empties_what_holds_blocks() {
        let tmp = crate::testutil::TempDir::new("free-release");
        let mut list = FreeList::default();
        for (name, len) in [("a", 3000u64), ("b", 0), ("c", 10)] {
            let p = tmp.0.join(name);
            fs::write(&p, vec![b'x'; len as usize]).unwrap_or_else(|e| panic!("{e}"));
            list.push(p, len);
        }
        list.push(tmp.0.join("gone"), 7);
        assert_eq!(list.held(), 3017);
        assert_eq!(
            list.release(),
            Released {
                files: 2,
                bytes: 3010
            }
        );
        // The vanished file is forgotten; the others stay, empty, for reuse.
        assert_eq!(list.len(), 3);
        assert_eq!(list.held(), 0);
        for name in ["a", "b", "c"] {
            assert_eq!(
                fs::metadata(tmp.0.join(name)).map(|m| m.len()).ok(),
                Some(0)
            );
        }
        assert_eq!(list.release(), Released::default());
        assert!(list.pop().is_some());
    }
}
