//! Maildir delivery: write into `tmp/`, fsync, rename into `new/`, fsync `new/`.
//!
//! The file name is `SECS.MUSECSPPIDQCOUNTER.HOST`: the time with microseconds, the pid
//! and a per-process counter make it unique on this host, and the host name (with `/`
//! and `:` written as `\057` and `\072`, as the maildir convention asks) across hosts
//! sharing the directory.
//!
//! # Errors
//!
//! Every failure is a [`Outcome::TempFail`]: a full disk or quota (ENOSPC, EDQUOT), an
//! I/O error, but also permission denied or a path that is not a directory. Those are
//! configuration problems the administrator fixes; the queue keeps retrying until then,
//! and bounces only when the message expires, as OpenSMTPD does. A failure to read the
//! message is a TempFail too. The temporary file is removed on failure.
//!
//! Once the message has been renamed into `new/` it is visible to the user. If the
//! fsync of `new/` fails after that, the delivery still counts as failed: a retry may
//! duplicate the message, which is better than losing it after a crash.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Outcome;

/// How much of the header section is looked at for `X-Spam:`.
const HEADER_SCAN_LIMIT: usize = 256 * 1024;

/// Size of the copy buffer.
const CHUNK: usize = 64 * 1024;

/// The Maildir++ folder spam goes to with `junk`.
const JUNK_FOLDER: &str = ".Junk";

/// Makes file names unique within this process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Delivers `msg` into the maildir at `maildir`.
///
/// When `tmp` or `new` is missing, the maildir is made whole (`maildir` itself, its
/// parents, `tmp`, `new`, `cur`, with mode 0700) and the step tried again; the message file gets mode 0600. With `junk`, a message whose header
/// section carries `X-Spam: yes` (name and value compared without regard to case) goes
/// to the Maildir++ folder `.Junk` instead, created as needed. See the module
/// documentation for how failures map to outcomes.
pub fn deliver(maildir: &Path, junk: bool, msg: &mut dyn Read) -> Outcome {
    match deliver_inner(maildir, junk, msg) {
        Ok(_) => Outcome::Ok,
        Err(e) => Outcome::TempFail(e.to_string()),
    }
}

/// A message written into a maildir's `tmp/`, not yet moved into `new/`: the first
/// step of a delivery split up so that a batch of deliveries shares its syncs. The
/// caller makes the file durable (fsync, or one syncfs(2) for the batch), then calls
/// [`Staged::publish`], then makes `new/` durable with [`sync_new`] (or syncfs).
#[derive(Debug)]
pub struct Staged {
    tmp: PathBuf,
    new_dir: PathBuf,
    /// The temporary file, still open: opened before it was written, it is the handle
    /// on which syncfs(2) reports a write-back error of the batch.
    file: Option<File>,
}

impl Staged {
    /// The temporary file, open for writing, for the caller to sync (once).
    pub fn take_file(&mut self) -> Option<File> {
        self.file.take()
    }

    /// Renames the message into `new/`; returns that directory, to be synced. The
    /// temporary file is removed on failure.
    pub fn publish(self) -> Result<PathBuf, String> {
        self.rename_into_new().map_err(|e| e.to_string())?;
        Ok(self.new_dir)
    }

    /// Renames the message into `new/`; returns its final path.
    fn rename_into_new(&self) -> Result<PathBuf, Failure> {
        let name = self
            .tmp
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let dest = self.new_dir.join(name);
        let mut renamed = fs::rename(&self.tmp, &dest);
        if matches!(&renamed, Err(e) if e.kind() == io::ErrorKind::NotFound) {
            // `new/` is missing (`tmp/` is there): make the maildir whole, once.
            if let Some(folder) = self.new_dir.parent() {
                create_maildir(folder)?;
            }
            renamed = fs::rename(&self.tmp, &dest);
        }
        if let Err(e) = renamed {
            let _ = fs::remove_file(&self.tmp);
            return Err(fail("rename into", &self.new_dir)(e));
        }
        log::debug!("maildir delivered path={}", dest.display());
        Ok(dest)
    }

    /// Gives up: removes the temporary file.
    pub fn abandon(self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Writes `msg` into the maildir's `tmp/` (creating directories as [`deliver`] does),
/// without syncing it.
pub fn stage(maildir: &Path, junk: bool, msg: &mut dyn Read) -> Result<Staged, String> {
    stage_inner(maildir, junk, msg, false).map_err(|e| e.to_string())
}

/// Makes the deliveries into a `new/` directory durable (see [`Staged`]).
pub fn sync_new(dir: &Path) -> Result<(), String> {
    sync_dir(dir).map_err(|e| e.to_string())
}

/// A failed step, with what it was doing and where.
#[derive(Debug)]
struct Failure {
    what: &'static str,
    path: PathBuf,
    err: io::Error,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "maildir: {} {}: {}",
            self.what,
            self.path.display(),
            self.err
        )
    }
}

fn fail<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Failure + 'a {
    move |err| Failure {
        what,
        path: path.to_path_buf(),
        err,
    }
}

fn deliver_inner(maildir: &Path, junk: bool, msg: &mut dyn Read) -> Result<PathBuf, Failure> {
    let staged = stage_inner(maildir, junk, msg, true)?;
    let dest = staged.rename_into_new()?;
    sync_dir(&staged.new_dir)?;
    Ok(dest)
}

fn stage_inner(
    maildir: &Path,
    junk: bool,
    msg: &mut dyn Read,
    sync: bool,
) -> Result<Staged, Failure> {
    let head = read_head(msg).map_err(fail("reading message for", maildir))?;
    let folder = if junk && is_spam(&head) {
        let folder = maildir.join(JUNK_FOLDER);
        create_maildir(maildir)?;
        create_maildir(&folder)?;
        mark_folder(&folder)?;
        folder
    } else {
        maildir.to_path_buf()
    };

    // The directories are made when they are missing, not checked at every delivery.
    let (tmp, mut file) = match create_tmp(&folder) {
        Err(f) if f.err.kind() == io::ErrorKind::NotFound => {
            create_maildir(&folder)?;
            create_tmp(&folder)?
        }
        r => r?,
    };
    let mut written = write_message(&mut file, &head, msg, &tmp);
    if sync {
        written = written.and_then(|()| file.sync_all().map_err(fail("fsync", &tmp)));
    }
    if let Err(e) = written {
        drop(file);
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(Staged {
        tmp,
        new_dir: folder.join("new"),
        file: (!sync).then_some(file),
    })
}

/// Reads the start of the message, through the end of the header section when it fits
/// in [`HEADER_SCAN_LIMIT`] bytes. The bytes are written out before the rest.
fn read_head(msg: &mut dyn Read) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(CHUNK);
    let mut chunk = vec![0u8; CHUNK];
    loop {
        if head.first() == Some(&b'\n') || memchr::memmem::find(&head, b"\n\n").is_some() {
            return Ok(head);
        }
        if head.len() >= HEADER_SCAN_LIMIT {
            return Ok(head);
        }
        match msg.read(&mut chunk) {
            Ok(0) => return Ok(head),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Whether the header section in `head` has an `X-Spam` field saying yes.
fn is_spam(head: &[u8]) -> bool {
    let mut lines = head.split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            break;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        if !line[..colon]
            .trim_ascii_end()
            .eq_ignore_ascii_case(b"x-spam")
        {
            continue;
        }
        // Unfold: continuation lines start with white space.
        let mut value = line[colon + 1..].to_vec();
        while let Some(next) = lines.peek() {
            if !next.starts_with(b" ") && !next.starts_with(b"\t") {
                break;
            }
            value.extend_from_slice(next);
            lines.next();
        }
        if value.trim_ascii().eq_ignore_ascii_case(b"yes") {
            return true;
        }
    }
    false
}

/// Creates `dir` and its `tmp`, `new` and `cur` subdirectories, mode 0700, as needed.
fn create_maildir(dir: &Path) -> Result<(), Failure> {
    let mut builder = DirBuilder::new();
    builder.recursive(true).mode(0o700);
    for sub in ["tmp", "new", "cur"] {
        let path = dir.join(sub);
        builder.create(&path).map_err(fail("create", &path))?;
    }
    Ok(())
}

/// Drops the empty `maildirfolder` file that tells Maildir++ readers `folder` is a
/// subfolder.
fn mark_folder(folder: &Path) -> Result<(), Failure> {
    let path = folder.join("maildirfolder");
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(fail("create", &path)(e)),
    }
}

/// A new file name, unique as the module documentation explains.
fn unique_name() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let host = crate::sys::hostname().unwrap_or_else(|| "localhost".to_string());
    let host = host.replace('/', "\\057").replace(':', "\\072");
    format!(
        "{}.M{}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        n,
        host
    )
}

/// Creates a new file in `folder/tmp`, never reusing an existing name.
fn create_tmp(folder: &Path) -> Result<(PathBuf, File), Failure> {
    let mut attempts = 0;
    loop {
        let path = folder.join("tmp").join(unique_name());
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(file) => return Ok((path, file)),
            // Only a clock stepping back with a reused pid gets here; a new counter
            // value fixes it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 5 => {
                attempts += 1;
            }
            Err(e) => return Err(fail("create", &path)(e)),
        }
    }
}

/// Writes `head` then the rest of `msg` to `file`.
fn write_message(
    file: &mut File,
    head: &[u8],
    msg: &mut dyn Read,
    path: &Path,
) -> Result<(), Failure> {
    file.write_all(head).map_err(fail("write", path))?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match msg.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail("reading message for", path)(e)),
        };
        file.write_all(&buf[..n]).map_err(fail("write", path))?;
    }
}

/// Makes the entries of `dir` durable. A file system that cannot fsync a directory
/// (EINVAL) is taken at its word that there is nothing to do.
fn sync_dir(dir: &Path) -> Result<(), Failure> {
    let d = File::open(dir).map_err(fail("open", dir))?;
    match d.sync_all() {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        Err(e) => Err(fail("fsync", dir)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use crate::testutil::TempDir;

    fn entries(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    }

    /// A reader that fails after handing out some bytes.
    struct Broken(usize);

    impl Read for Broken {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0 == 0 {
                return Err(io::Error::other("spool went away"));
            }
            let n = self.0.min(buf.len());
            buf[..n].fill(b'x');
            self.0 -= n;
            Ok(n)
        }
    }

    const MSG: &[u8] = b"Received: from x\nSubject: hi\n\nbody\n";

    #[test]
    fn delivers_into_new_and_creates_dirs() {
        let t = TempDir::new("basic");
        let md = t.0.join("deep/Maildir");
        assert_eq!(deliver(&md, false, &mut &MSG[..]), Outcome::Ok);
        assert_eq!(deliver(&md, false, &mut &MSG[..]), Outcome::Ok);
        let new = entries(&md.join("new"));
        assert_eq!(new.len(), 2);
        assert_ne!(new[0], new[1]);
        for f in &new {
            assert_eq!(fs::read(f).unwrap(), MSG);
            assert_eq!(fs::metadata(f).unwrap().permissions().mode() & 0o777, 0o600);
            let name = f.file_name().unwrap().to_str().unwrap();
            let parts: Vec<&str> = name.splitn(3, '.').collect();
            assert!(parts[0].bytes().all(|b| b.is_ascii_digit()), "{name}");
            assert!(
                parts[1].starts_with('M') && parts[1].contains('P'),
                "{name}"
            );
            assert!(parts[1].contains('Q'), "{name}");
            assert!(!name.contains('/') && !name.contains(':'), "{name}");
        }
        assert!(entries(&md.join("tmp")).is_empty());
        assert!(entries(&md.join("cur")).is_empty());
        for sub in ["tmp", "new", "cur"] {
            let mode = fs::metadata(md.join(sub)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{sub}");
        }
    }

    #[test]
    fn a_half_made_maildir_is_completed() {
        let t = TempDir::new("half");
        let md = t.0.join("Maildir");
        fs::create_dir_all(md.join("tmp")).unwrap();
        assert_eq!(deliver(&md, false, &mut &MSG[..]), Outcome::Ok);
        assert_eq!(entries(&md.join("new")).len(), 1);
        assert!(md.join("cur").is_dir());
        // A batch delivery does the same when new/ went missing.
        fs::remove_dir_all(md.join("new")).unwrap();
        let staged = stage(&md, false, &mut &MSG[..]).unwrap();
        assert_eq!(staged.publish().unwrap(), md.join("new"));
        assert_eq!(entries(&md.join("new")).len(), 1);
    }

    #[test]
    fn large_message_is_intact() {
        let t = TempDir::new("large");
        let mut msg = b"Subject: big\n\n".to_vec();
        for i in 0..50_000 {
            msg.extend_from_slice(format!("line {i}\n").as_bytes());
        }
        assert_eq!(deliver(&t.0, false, &mut &msg[..]), Outcome::Ok);
        let new = entries(&t.0.join("new"));
        assert_eq!(fs::read(&new[0]).unwrap(), msg);
    }

    #[test]
    fn junk_goes_to_the_junk_folder() {
        let t = TempDir::new("junk");
        let spam = b"Received: x\nx-spam:  YES\nSubject: buy\n\nbody\n";
        assert_eq!(deliver(&t.0, true, &mut &spam[..]), Outcome::Ok);
        assert_eq!(entries(&t.0.join(".Junk/new")).len(), 1);
        assert!(t.0.join(".Junk/maildirfolder").is_file());
        assert!(t.0.join(".Junk/cur").is_dir() && t.0.join(".Junk/tmp").is_dir());
        assert!(entries(&t.0.join("new")).is_empty());

        // Without `junk`, the header is ignored.
        assert_eq!(deliver(&t.0, false, &mut &spam[..]), Outcome::Ok);
        assert_eq!(entries(&t.0.join("new")).len(), 1);

        // Folded value.
        let folded = b"X-Spam:\n yes\n\nbody\n";
        assert_eq!(deliver(&t.0, true, &mut &folded[..]), Outcome::Ok);
        assert_eq!(entries(&t.0.join(".Junk/new")).len(), 2);

        for ham in [
            &b"X-Spam: no\n\nbody\n"[..],
            b"Subject: x\n\nX-Spam: yes\n",
            b"X-Spam-Score: yes\n\n",
            b"\nX-Spam: yes\n",
        ] {
            assert_eq!(deliver(&t.0, true, &mut &ham[..]), Outcome::Ok);
        }
        assert_eq!(entries(&t.0.join("new")).len(), 5);
        assert_eq!(entries(&t.0.join(".Junk/new")).len(), 2);
    }

    #[test]
    fn not_a_directory_is_tempfail() {
        let t = TempDir::new("notdir");
        let file = t.0.join("Maildir");
        fs::write(&file, b"").unwrap();
        match deliver(&file, false, &mut &MSG[..]) {
            Outcome::TempFail(text) => assert!(text.contains("Maildir"), "{text}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permission_denied_is_tempfail() {
        if crate::sys::geteuid() == 0 {
            return; // root ignores the mode bits
        }
        let t = TempDir::new("perm");
        fs::set_permissions(&t.0, fs::Permissions::from_mode(0o500)).unwrap();
        let out = deliver(&t.0.join("Maildir"), false, &mut &MSG[..]);
        assert!(matches!(out, Outcome::TempFail(_)), "{out:?}");
    }

    #[test]
    fn read_failure_leaves_nothing_behind() {
        let t = TempDir::new("broken");
        // Fails after the header scan, while copying the body.
        let out = deliver(&t.0, false, &mut Broken(HEADER_SCAN_LIMIT + 10));
        assert!(matches!(out, Outcome::TempFail(_)), "{out:?}");
        assert!(entries(&t.0.join("tmp")).is_empty());
        assert!(entries(&t.0.join("new")).is_empty());
        // Fails at once.
        let out = deliver(&t.0, true, &mut Broken(0));
        assert!(matches!(out, Outcome::TempFail(_)), "{out:?}");
        assert!(entries(&t.0.join("new")).is_empty());
    }

    #[test]
    fn spam_detection() {
        assert!(is_spam(b"X-Spam: Yes\n\n"));
        assert!(is_spam(b"A: b\nX-SPAM : yes\r\n\n"));
        assert!(is_spam(b"X-Spam: yes"));
        assert!(!is_spam(b"X-Spam: yes please\n\n"));
        assert!(!is_spam(b""));
    }
}
