//! `free/`: message files done with, kept for new messages, and the spool's free space.
//!
//! A file kept here keeps its blocks (up to [`FREE_KEEP`]) so that a new message writes
//! over them instead of freeing and allocating them again. That space is the spool's
//! own: when the file system runs short (the free-space check fails, or a write fails
//! with ENOSPC or EDQUOT), the kept files are emptied, which gives their blocks back,
//! before the spool says it is full. Their inodes stay, to be reused. So an empty queue
//! never keeps mail out, whatever `free/` held when the disk filled up.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

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
