//! The files the configuration is read from, read directly, recorded, or replayed.
//!
//! Reading a configuration reads more than smtpd.conf: its includes, `file:` and
//! `db:` tables, certificates and keys that only root may read. At a reload the
//! privileged parent reads them while recording every read ([`record`]), and hands the
//! engine the [`Bundle`]; the engine parses the same configuration replaying those
//! reads ([`replay`]), so it never opens a file it could not read, and both processes
//! see the same bytes. Outside of both, reads go to the file system.

use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};

/// The largest bundle accepted (the encoded form).
pub const MAX_BUNDLE: usize = 256 << 20;
/// The first octets of an encoded bundle.
const MAGIC: &[u8; 8] = b"SMTPDFB1";

/// The outcome of each read of a configuration, in the order they were made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    /// Each file read: its contents, or the error the read failed with.
    pub files: Vec<(PathBuf, Result<Vec<u8>, String>)>,
}

enum Mode {
    Direct,
    Record(Bundle),
    Replay(Bundle),
}

thread_local! {
    static MODE: RefCell<Mode> = const { RefCell::new(Mode::Direct) };
}

/// Reads the whole file at `path`: from the file system, recording the outcome while
/// [`record`] runs, or from the bundle while [`replay`] runs (a path the bundle
/// does not hold is an error there).
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    MODE.with(|m| match &mut *m.borrow_mut() {
        Mode::Direct => std::fs::read(path),
        Mode::Record(b) => {
            let r = std::fs::read(path);
            let kept = match &r {
                Ok(v) => Ok(v.clone()),
                Err(e) => Err(e.to_string()),
            };
            b.files.push((path.to_path_buf(), kept));
            r
        }
        Mode::Replay(b) => match b.files.iter().find(|(p, _)| p == path) {
            Some((_, Ok(v))) => Ok(v.clone()),
            Some((_, Err(e))) => Err(io::Error::other(e.clone())),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                "not read by the privileged process",
            )),
        },
    })
}

/// [`read`], as UTF-8 text.
pub fn read_to_string(path: &Path) -> io::Result<String> {
    String::from_utf8(read(path)?).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "stream did not contain valid UTF-8",
        )
    })
}

/// Runs `f` recording every [`read`] it makes on this thread.
pub fn record<R>(f: impl FnOnce() -> R) -> (R, Bundle) {
    let outer = MODE.with(|m| m.replace(Mode::Record(Bundle::default())));
    let r = f();
    let mode = MODE.with(|m| m.replace(outer));
    let bundle = match mode {
        Mode::Record(b) => b,
        Mode::Direct | Mode::Replay(_) => Bundle::default(),
    };
    (r, bundle)
}

/// Runs `f` with every [`read`] it makes on this thread answered from `bundle`.
pub fn replay<R>(bundle: Bundle, f: impl FnOnce() -> R) -> R {
    let outer = MODE.with(|m| m.replace(Mode::Replay(bundle)));
    let r = f();
    MODE.with(|m| m.replace(outer));
    r
}

impl Bundle {
    /// The wire form: magic, count, then per file its path, a status octet (1 read,
    /// 0 failed) and the contents or the error, each with a big-endian length.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(self.files.len() as u64).to_be_bytes());
        for (path, r) in &self.files {
            put(&mut out, path.as_os_str().as_encoded_bytes());
            match r {
                Ok(v) => {
                    out.push(1);
                    put(&mut out, v);
                }
                Err(e) => {
                    out.push(0);
                    put(&mut out, e.as_bytes());
                }
            }
        }
        out
    }

    /// Parses the wire form; `None` when it is malformed or larger than [`MAX_BUNDLE`].
    pub fn decode(mut b: &[u8]) -> Option<Bundle> {
        if b.len() > MAX_BUNDLE || !b.starts_with(MAGIC) {
            return None;
        }
        b = &b[MAGIC.len()..];
        let n = take_len(&mut b)?;
        let mut files = Vec::new();
        for _ in 0..n {
            let path = take(&mut b)?;
            let path = PathBuf::from(String::from_utf8(path.to_vec()).ok()?);
            let (&status, rest) = b.split_first()?;
            b = rest;
            let body = take(&mut b)?;
            let r = match status {
                1 => Ok(body.to_vec()),
                0 => Err(String::from_utf8_lossy(body).into_owned()),
                _ => return None,
            };
            files.push((path, r));
        }
        b.is_empty().then_some(Bundle { files })
    }
}

fn put(out: &mut Vec<u8>, v: &[u8]) {
    out.extend_from_slice(&(v.len() as u64).to_be_bytes());
    out.extend_from_slice(v);
}

fn take_len(b: &mut &[u8]) -> Option<usize> {
    let (n, rest) = b.split_first_chunk::<8>()?;
    *b = rest;
    usize::try_from(u64::from_be_bytes(*n)).ok()
}

fn take<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = take_len(b)?;
    if b.len() < n {
        return None;
    }
    let (v, rest) = b.split_at(n);
    *b = rest;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replays_what_was_recorded() {
        let dir = crate::testutil::TempDir::new("files");
        let p = dir.0.join("a.conf");
        std::fs::write(&p, "listen on lo\n").unwrap();
        let missing = dir.0.join("missing");
        let ((a, b), bundle) = record(|| (read(&p).unwrap(), read(&missing).is_err()));
        assert_eq!(a, b"listen on lo\n");
        assert!(b);
        assert_eq!(bundle.files.len(), 2);
        // The file changes on disk: the replay still gives what was recorded.
        std::fs::write(&p, "changed").unwrap();
        let decoded = Bundle::decode(&bundle.encode()).unwrap();
        assert_eq!(decoded, bundle);
        replay(decoded, || {
            assert_eq!(read_to_string(&p).unwrap(), "listen on lo\n");
            assert!(read(&missing).is_err());
            // Not recorded: never read from the disk.
            assert!(read(Path::new("/etc/hostname")).is_err());
        });
        // Outside a replay, the disk again.
        assert_eq!(read(&p).unwrap(), b"changed");
    }

    #[test]
    fn refuses_malformed_bundles() {
        let b = Bundle {
            files: vec![(PathBuf::from("/x"), Ok(b"abc".to_vec()))],
        };
        let enc = b.encode();
        for n in 0..enc.len() {
            assert!(Bundle::decode(&enc[..n]).is_none(), "prefix {n}");
        }
        let mut long = enc.clone();
        long.push(0);
        assert!(Bundle::decode(&long).is_none());
        let mut bad = enc;
        bad[MAGIC.len() + 8 + 8 + 2] = 7;
        assert!(Bundle::decode(&bad).is_none());
    }
}
