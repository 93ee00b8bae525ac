//! Start-up: the spool as found, made into what the daemon expects.
//!
//! Nothing found in the spool keeps the daemon from starting. Each directory the daemon
//! walks is checked entry by entry, by the entry's own type (lstat(2): nothing is
//! followed) and by its name against the names the daemon makes there:
//!
//! ```text
//! QUEUE/       incoming/ queue/ corrupt/ offline/ free/, smtpd.sock (a socket),
//!              lost+found/ (left alone)
//! incoming/    MSGID, MSGID.tmp              (files; removed: never acknowledged)
//! queue/       00/ .. ff/                    (directories)
//! queue/BB/    MSGID, MSGID.env, MSGID.tmp   (files; MSGID's high byte is BB)
//! free/        16 hex digits                 (files)
//! ```
//! Anything else (a file where a directory is expected, a directory, symbolic link, FIFO
//! or socket where a file is, a name the daemon never makes) is moved to `corrupt/`
//! under a name of its own, with a warning that names it, and the daemon goes on without
//! it. An entry that cannot even be moved is left where it is, with a warning, and
//! skipped. One of these directories that cannot be read gets mode 0700 back when the
//! daemon owns it, else is set aside and made again. `offline/` is read by the parent, which checks
//! each file as it submits it (`submit.rs`).

use std::ffi::{OsStr, OsString};
use std::fs::{self, FileType};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The spool's subdirectories.
pub const DIRS: [&str; 6] = ["incoming", "queue", "corrupt", "offline", "free", "sts"];

/// Longest name given to an entry moved to `corrupt/` (before its unique suffix).
const MAX_CORRUPT_NAME: usize = 200;

/// A message id as the spool writes it: exactly 8 lowercase hex digits.
pub fn parse_msgid(name: &str) -> Option<u32> {
    parse_hex(name, 8).map(|n| n as u32)
}

/// A bucket directory's name: exactly 2 lowercase hex digits.
fn parse_bucket(name: &str) -> Option<u8> {
    parse_hex(name, 2).map(|n| n as u8)
}

/// Exactly `len` lowercase hex digits (`from_str_radix` alone also takes `+` and
/// uppercase, names the spool never writes).
fn parse_hex(name: &str, len: usize) -> Option<u64> {
    if name.len() != len || !name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u64::from_str_radix(name, 16).ok()
}

/// What a directory entry is, by its own type (a symbolic link is not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A FIFO.
    Fifo,
    /// A socket.
    Socket,
    /// A block or character device.
    Device,
}

impl Kind {
    /// The kind of a file type as read from a directory entry or lstat(2).
    pub fn of(ft: FileType) -> Kind {
        if ft.is_file() {
            Kind::File
        } else if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_fifo() {
            Kind::Fifo
        } else if ft.is_socket() {
            Kind::Socket
        } else {
            Kind::Device
        }
    }

    /// For log lines: "a file", "a directory"...
    pub fn article(self) -> &'static str {
        match self {
            Kind::File => "a file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symbolic link",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::Device => "a device",
        }
    }
}

/// An entry of a bucket directory `queue/BB/`.
#[derive(Debug, PartialEq, Eq)]
pub enum BucketEntry {
    /// `MSGID`: a message file.
    Message(u32),
    /// `MSGID.env`: a message's envelopes.
    Envelopes(u32),
    /// `MSGID.tmp`: an envelope rewrite cut short.
    Temporary,
    /// Anything else, and why it is not expected.
    Unexpected(String),
}

/// Why an entry of kind `kind` is not expected: a name the spool never gives
/// (`named` false), or a kind other than `wanted`.
fn why(kind: Kind, named: bool, wanted: Kind) -> String {
    if named {
        format!("{} where {} is expected", kind.article(), wanted.article())
    } else {
        format!("{} with a name the spool does not use", kind.article())
    }
}

/// Classifies the entry `name` of kind `kind` in the bucket `bucket`.
pub fn classify(bucket: u8, name: &OsStr, kind: Kind) -> BucketEntry {
    let name = name.to_str().unwrap_or("");
    let (stem, ext) = match name.split_once('.') {
        Some((s, e)) => (s, Some(e)),
        None => (name, None),
    };
    let unused = || BucketEntry::Unexpected(why(kind, false, Kind::File));
    let Some(msgid) = parse_msgid(stem) else {
        return unused();
    };
    let entry = match ext {
        None => BucketEntry::Message(msgid),
        Some("env") => BucketEntry::Envelopes(msgid),
        Some("tmp") => BucketEntry::Temporary,
        Some(_) => return unused(),
    };
    if kind != Kind::File {
        return BucketEntry::Unexpected(why(kind, true, Kind::File));
    }
    if (msgid >> 24) as u8 != bucket {
        return BucketEntry::Unexpected("a message in another message's directory".into());
    }
    entry
}

/// A name under `corrupt/` for what was at `rel` (its path in the spool): `rel` with
/// `/` turned into `_`, shortened, made unique with a random suffix when taken.
pub fn corrupt_path(corrupt: &Path, rel: &Path) -> PathBuf {
    let mut base: Vec<u8> = Vec::new();
    for c in rel.iter() {
        if !base.is_empty() {
            base.push(b'_');
        }
        base.extend_from_slice(c.as_bytes());
    }
    base.truncate(MAX_CORRUPT_NAME);
    if base.is_empty() || base == b"." || base == b".." {
        base = b"entry".to_vec();
    }
    let first = corrupt.join(OsStr::from_bytes(&base));
    if fs::symlink_metadata(&first).is_err() {
        return first;
    }
    loop {
        let mut name = OsString::from_vec(base.clone());
        name.push(format!(".{:016x}", crate::sys::random_u64()));
        let p = corrupt.join(name);
        if fs::symlink_metadata(&p).is_err() {
            return p;
        }
    }
}

/// Moves `path`, an entry of the spool at `root`, to `corrupt/` under a name of its own,
/// with a warning that names it and says `why`; false (with a warning) when it cannot be
/// moved.
pub fn quarantine(root: &Path, path: &Path, why: &str) -> bool {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let to = corrupt_path(&root.join("corrupt"), rel);
    move_logged(path, path, &to, why)
}

/// Renames `from` (known to the log as `named`) to `to`, with a warning either way.
fn move_logged(from: &Path, named: &Path, to: &Path, why: &str) -> bool {
    match fs::rename(from, to) {
        Ok(()) => {
            log::warn!(
                "queue: {}: {why}; moved to {}",
                named.display(),
                to.display()
            );
            true
        }
        Err(e) => {
            log::warn!(
                "queue: {}: {why}; cannot move it to corrupt/ ({e}), skipped",
                named.display()
            );
            false
        }
    }
}

/// What the start-up walk found to keep.
#[derive(Debug, Default)]
pub struct Found {
    /// Half-received messages removed from `incoming/`.
    pub cleaned: usize,
    /// The files of `free/`, each with its size.
    pub free: Vec<(PathBuf, u64)>,
    /// Empty message files in `queue/` (caught between their move to `free/` and their
    /// emptying), for the caller to recycle.
    pub empty: Vec<PathBuf>,
    /// Entries moved to `corrupt/`.
    pub moved: usize,
}

/// The start-up walk of the spool at `root`.
pub struct Tidy<'a> {
    root: &'a Path,
    corrupt: PathBuf,
    found: Found,
}

fn mkdir(p: &Path, mode: u32) -> io::Result<()> {
    fs::DirBuilder::new().mode(mode).create(p)
}

impl<'a> Tidy<'a> {
    /// Walks the spool at `root` (which exists) and makes it what the daemon expects.
    /// Fails only when a subdirectory is missing and cannot be made (the spool is then
    /// unusable).
    pub fn run(root: &'a Path, max_free: usize) -> io::Result<Found> {
        let mut t = Tidy {
            root,
            corrupt: root.join("corrupt"),
            found: Found::default(),
        };
        t.corrupt_dir()?;
        for d in DIRS {
            t.ensure_dir(&root.join(d))?;
        }
        t.root_entries()?;
        t.incoming();
        t.queue()?;
        t.free(max_free);
        t.sts();
        Ok(t.found)
    }

    /// `corrupt/` first, since everything else may go there. Whatever stands in its place
    /// is set aside, and moved into the new directory.
    fn corrupt_dir(&mut self) -> io::Result<()> {
        let kind = match fs::symlink_metadata(&self.corrupt) {
            Ok(md) if md.is_dir() => return Ok(()),
            Ok(md) => Kind::of(md.file_type()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return mkdir(&self.corrupt, 0o700),
            Err(e) => return Err(e),
        };
        let aside = self
            .root
            .join(format!("corrupt.{:016x}", crate::sys::random_u64()));
        fs::rename(&self.corrupt, &aside)?;
        mkdir(&self.corrupt, 0o700)?;
        let why = why(kind, true, Kind::Dir);
        let to = self.corrupt.join("corrupt");
        if move_logged(&aside, &self.corrupt, &to, &why) {
            self.found.moved += 1;
        }
        Ok(())
    }

    fn quarantine(&mut self, path: &Path, why: &str) -> bool {
        let moved = quarantine(self.root, path, why);
        self.found.moved += usize::from(moved);
        moved
    }

    /// Makes `path` a directory: creates it when missing; what stands in its place goes
    /// to `corrupt/` first.
    fn ensure_dir(&mut self, path: &Path) -> io::Result<()> {
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() => return Ok(()),
            Ok(md) => {
                let why = why(Kind::of(md.file_type()), true, Kind::Dir);
                if !self.quarantine(path, &why) {
                    return Err(io::Error::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: not a directory", path.display()),
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        mkdir(path, 0o700)
    }

    /// The entries of `dir` with their names and kinds; an entry that cannot be read is
    /// skipped with a warning.
    fn entries(dir: &Path) -> io::Result<Vec<(PathBuf, OsString, Kind)>> {
        let mut out = Vec::new();
        for ent in fs::read_dir(dir)? {
            match ent.and_then(|e| Ok((e.path(), e.file_name(), Kind::of(e.file_type()?)))) {
                Ok(e) => out.push(e),
                Err(e) => log::warn!("queue: {}: unreadable entry: {e}", dir.display()),
            }
        }
        Ok(out)
    }

    /// The entries of `dir`, one of the spool's directories. One that cannot be read gets
    /// its mode back (0700) when the daemon owns it; else it is set aside and made again,
    /// empty, so that the daemon can work.
    fn entries_or_renew(&mut self, dir: &Path) -> Vec<(PathBuf, OsString, Kind)> {
        let e = match Self::entries(dir) {
            Ok(entries) => return entries,
            Err(e) => e,
        };
        if fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).is_ok() {
            if let Ok(entries) = Self::entries(dir) {
                log::warn!(
                    "queue: {}: could not be read ({e}); mode set to 0700",
                    dir.display()
                );
                return entries;
            }
        }
        let why = format!("a directory that cannot be read ({e})");
        if self.quarantine(dir, &why) {
            if let Err(e) = mkdir(dir, 0o700) {
                log::warn!("queue: {}: {e}", dir.display());
            }
        }
        Vec::new()
    }

    fn root_entries(&mut self) -> io::Result<()> {
        for (path, name, kind) in Self::entries(self.root)? {
            let wanted = match name.to_str().unwrap_or("") {
                d if DIRS.contains(&d) => continue, // made directories above
                "lost+found" => Some(Kind::Dir),
                // The control socket; bound again at start.
                super::spool::SOCKET_NAME => Some(Kind::Socket),
                _ => None,
            };
            if wanted != Some(kind) {
                let why = why(kind, wanted.is_some(), wanted.unwrap_or(Kind::File));
                self.quarantine(&path, &why);
            }
        }
        Ok(())
    }

    fn incoming(&mut self) {
        for (path, name, kind) in self.entries_or_renew(&self.root.join("incoming")) {
            let name = name.to_str().unwrap_or("");
            let tmp = name.strip_suffix(".tmp");
            let named = parse_msgid(tmp.unwrap_or(name)).is_some();
            if kind != Kind::File || !named {
                self.quarantine(&path, &why(kind, named, Kind::File));
                continue;
            }
            match fs::remove_file(&path) {
                Ok(()) if tmp.is_none() => self.found.cleaned += 1,
                Ok(()) => {}
                Err(e) => log::warn!("queue: cannot remove {}: {e}", path.display()),
            }
        }
    }

    fn queue(&mut self) -> io::Result<()> {
        let queue = self.root.join("queue");
        for (path, name, kind) in self.entries_or_renew(&queue) {
            let named = name.to_str().and_then(parse_bucket).is_some();
            if !named || kind != Kind::Dir {
                self.quarantine(&path, &why(kind, named, Kind::Dir));
            }
        }
        for b in 0..=255u8 {
            let dir = queue.join(format!("{b:02x}"));
            if let Err(e) = self.ensure_dir(&dir) {
                log::warn!("queue: {}: {e}", dir.display());
            }
        }
        super::spool::fsync_dir(&queue)?;
        super::spool::fsync_dir(self.root)?;
        for b in 0..=255u8 {
            self.bucket(&queue, b);
        }
        Ok(())
    }

    fn bucket(&mut self, queue: &Path, b: u8) {
        let dir = queue.join(format!("{b:02x}"));
        let entries = self.entries_or_renew(&dir);
        let mut messages = Vec::new();
        let mut envelopes = Vec::new();
        for (path, name, kind) in entries {
            match classify(b, &name, kind) {
                BucketEntry::Message(id) => messages.push((id, path)),
                BucketEntry::Envelopes(id) => envelopes.push((id, path)),
                BucketEntry::Temporary => {
                    if let Err(e) = fs::remove_file(&path) {
                        log::warn!("queue: cannot remove {}: {e}", path.display());
                    }
                }
                BucketEntry::Unexpected(why) => {
                    self.quarantine(&path, &why);
                }
            }
        }
        // A `.env` left without its message by a crash between their removals.
        messages.sort_unstable_by_key(|(id, _)| *id);
        for (id, path) in envelopes {
            if messages.binary_search_by_key(&id, |(m, _)| *m).is_err() {
                if let Err(e) = fs::remove_file(&path) {
                    log::warn!("queue: cannot remove {}: {e}", path.display());
                }
            }
        }
        for (_, path) in messages {
            if fs::symlink_metadata(&path).is_ok_and(|m| m.len() == 0) {
                self.found.empty.push(path);
            }
        }
    }

    fn free(&mut self, max_free: usize) {
        for (path, name, kind) in self.entries_or_renew(&self.root.join("free")) {
            let named = name.to_str().and_then(|n| parse_hex(n, 16)).is_some();
            if kind != Kind::File || !named {
                self.quarantine(&path, &why(kind, named, Kind::File));
                continue;
            }
            if self.found.free.len() >= max_free {
                if let Err(e) = fs::remove_file(&path) {
                    log::warn!("queue: cannot remove {}: {e}", path.display());
                }
                continue;
            }
            match fs::symlink_metadata(&path) {
                Ok(md) => self.found.free.push((path, md.len())),
                Err(e) => log::warn!("queue: {}: {e}", path.display()),
            }
        }
    }
}

impl Tidy<'_> {
    /// `sts/`: the MTA-STS policies cached, one file named by its domain; a
    /// temporary left by a write that did not finish is removed.
    fn sts(&mut self) {
        for (path, name, kind) in self.entries_or_renew(&self.root.join("sts")) {
            let name = name.to_str().unwrap_or("");
            let tmp = name.strip_suffix(".tmp");
            let domain = tmp.unwrap_or(name);
            let named =
                crate::mta::sts::valid_domain(domain) && domain == domain.to_ascii_lowercase();
            if kind != Kind::File || !named {
                self.quarantine(&path, &why(kind, named, Kind::File));
            } else if tmp.is_some() {
                if let Err(e) = fs::remove_file(&path) {
                    log::warn!("queue: cannot remove {}: {e}", path.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::spool::tests::{env, plant_junk, spool_with_message};
    use super::super::spool::Spool;
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_msgid("0a0b0c0d"), Some(0x0a0b0c0d));
        for bad in [
            "0A0B0C0D",
            "+a0b0c0d",
            "0a0b0c0",
            "0a0b0c0d0",
            "0a0b0c0g",
            "",
        ] {
            assert_eq!(parse_msgid(bad), None, "{bad}");
        }
        assert_eq!(parse_bucket("ff"), Some(255));
        assert_eq!(parse_bucket("+f"), None);
    }

    const UNUSED_FILE: &str = "a file with a name the spool does not use";

    #[test]
    fn bucket_entries() {
        let c = |name: &str, kind| classify(0x0a, OsStr::new(name), kind);
        assert_eq!(c("0a0b0c0d", Kind::File), BucketEntry::Message(0x0a0b0c0d));
        assert_eq!(
            c("0a0b0c0d.env", Kind::File),
            BucketEntry::Envelopes(0x0a0b0c0d)
        );
        assert_eq!(c("0a0b0c0d.tmp", Kind::File), BucketEntry::Temporary);
        for (name, kind, why) in [
            (
                "0a0b0c0d",
                Kind::Dir,
                "a directory where a file is expected",
            ),
            (
                "0a0b0c0d",
                Kind::Symlink,
                "a symbolic link where a file is expected",
            ),
            (
                "0a0b0c0d.env",
                Kind::Fifo,
                "a FIFO where a file is expected",
            ),
            (
                "0b0b0c0d",
                Kind::File,
                "a message in another message's directory",
            ),
            ("0A0B0C0D", Kind::File, UNUSED_FILE),
            ("0a0b0c0d.old", Kind::File, UNUSED_FILE),
            ("0a0b0c0d.env.tmp", Kind::File, UNUSED_FILE),
            (
                "junk",
                Kind::Dir,
                "a directory with a name the spool does not use",
            ),
        ] {
            assert_eq!(c(name, kind), BucketEntry::Unexpected(why.into()), "{name}");
        }
        // A name that is not UTF-8.
        assert!(matches!(
            classify(0, OsStr::from_bytes(b"\xff0000000"), Kind::File),
            BucketEntry::Unexpected(_)
        ));
    }

    #[test]
    fn corrupt_names_are_unique() {
        let tmp = crate::testutil::TempDir::new("tidy-names");
        let first = corrupt_path(&tmp.0, Path::new("queue/00/junk"));
        assert_eq!(first, tmp.0.join("queue_00_junk"));
        fs::write(&first, b"").unwrap_or_else(|e| panic!("{e}"));
        let second = corrupt_path(&tmp.0, Path::new("queue/00/junk"));
        assert_ne!(second, first);
        assert!(second
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("queue_00_junk.") && n.len() == 14 + 16));
        let long = "x".repeat(300);
        let p = corrupt_path(&tmp.0, Path::new(&long));
        assert_eq!(p.file_name().map(|n| n.len()), Some(MAX_CORRUPT_NAME));
    }

    #[test]
    fn open_sets_aside_what_it_does_not_expect() {
        let (tmp, spool, id) = spool_with_message("spool-untidy");
        let dir = tmp.0.join("spool");
        drop(spool);
        let outside = tmp.0.join("outside");
        fs::write(&outside, b"not spool data").unwrap_or_else(|e| panic!("{e}"));
        let junk = plant_junk(&dir, &outside);
        fs::write(dir.join("incoming/0000000a"), b"half").unwrap_or_else(|e| panic!("{e}"));
        // A cached MTA-STS policy stays; a write that did not finish goes.
        fs::write(dir.join("sts/example.org"), b"policy").unwrap_or_else(|e| panic!("{e}"));
        fs::write(dir.join("sts/example.org.tmp"), b"half").unwrap_or_else(|e| panic!("{e}"));
        // corrupt/ itself replaced by a file.
        fs::remove_dir(dir.join("corrupt")).unwrap_or_else(|e| panic!("{e}"));
        fs::write(dir.join("corrupt"), b"x").unwrap_or_else(|e| panic!("{e}"));

        let (spool, cleaned) = Spool::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cleaned, 1);
        assert_eq!(spool.committed().ok(), Some(vec![id]));
        assert_eq!(spool.load_envelopes(id).ok(), Some(vec![env(id, 1, "a@b")]));
        let mut names: Vec<String> = fs::read_dir(dir.join("corrupt"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        let mut want: Vec<String> = junk.iter().map(|j| j.replace('/', "_")).collect();
        want.push("corrupt".into());
        want.sort();
        assert_eq!(names, want);
        assert!(dir.join("queue/7f").is_dir());
        assert!(dir.join("corrupt").is_dir());
        assert!(dir.join("sts/example.org").is_file());
        assert!(!dir.join("sts/example.org.tmp").exists());
        assert_eq!(fs::read(&outside).ok(), Some(b"not spool data".to_vec()));
        // Nothing is left to set aside: a second start moves nothing.
        let (_, _) = Spool::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            fs::read_dir(dir.join("corrupt")).map_or(0, |d| d.count()),
            want.len()
        );
    }
}
