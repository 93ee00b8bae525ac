//! The spool on disk: the only code that creates, syncs and renames queue files.
//!
//! ```text
//! QUEUE/incoming/MSGID        being received (removed at start: never acknowledged)
//! QUEUE/queue/BB/MSGID        committed: BB is the high byte of MSGID in hex
//! QUEUE/queue/BB/MSGID.env    the message's envelopes, once they changed after commit
//! QUEUE/corrupt/              what could not be read back, and what start-up did not
//!                             expect to find (`super::tidy`)
//! QUEUE/offline/              local submissions made while the daemon was down
//! QUEUE/free/                 emptied message files, kept for new messages
//! ```
//! A message is one file: the message as received (LF line ends, our Received header
//! first), then its envelopes, one per recipient, then a fixed-size trailer that gives
//! both lengths:
//!
//! ```text
//! MESSAGE  ENVELOPE...  "smtpd-queue 1 " LEN(16 hex) " " ENVLEN(8 hex) "\n"
//! ```
//! One file per message means one inode to create and one to remove: on ext4 without a
//! journal, where a new inode is searched past every recently deleted one, that count
//! is what the cost of a message grows with. A commit is: write the envelopes and
//! trailer at the end of the file, make the file durable, rename it into `queue/BB/`,
//! make that durable. Only then is the message acknowledged. The syncing runs on one
//! thread that takes every commit waiting, so a loop turn's messages share their sync
//! round (group commit).
//!
//! The envelopes change after the commit (a retry, one recipient of several delivered,
//! a `.forward` expanded): the new set is written whole to `MSGID.env` (through a
//! temporary, synced, renamed), which from then on takes precedence over the copy in
//! the message file. The message goes with its last envelope: the message file is
//! removed first, then `MSGID.env`; a `.env` left without its message by a crash is
//! removed at the next start.
//!
//! A removed message file is not unlinked but moved to `free/`, and the next new message
//! takes it back and writes over it (up to [`MAX_FREE`] files wait there): at a steady
//! rate the spool then neither allocates nor frees an inode per message, nor its data
//! blocks, which on ext4 without a journal also keeps the maildirs' inode allocation
//! from searching past thousands of recently deleted inodes. A file over `FREE_KEEP`
//! is emptied after the move; a file found empty in `queue/` at start was caught in
//! between (a committed message file is never empty: it is synced with its trailer
//! before it is renamed there) and goes to `free/`. What the kept files hold is given
//! back as soon as space runs short (`super::free`): every write here that fails for
//! lack of space empties them and is tried once more.

pub use super::commit::{CommitDone, CommitJob, Committer};
use super::envelope::Envelope;
use super::free::FreeList;
pub use super::free::MAX_FREE;
pub use super::seal::MessageFile;
use super::seal::SpoolKey;
use super::tidy::{classify, corrupt_path, BucketEntry, Kind, Tidy};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
    /// The files in `free/`, ready to become new messages (`super::free`).
    pub(super) free: Arc<Mutex<FreeList>>,
    /// `queue encryption`: new message files are sealed with it (`super::seal`).
    key: Option<Arc<SpoolKey>>,
}

/// The start of a message file's trailer; with the two lengths and the newline it is
/// [`TRAILER_LEN`] bytes.
const TRAILER_MAGIC: &str = "smtpd-queue 1 ";
/// Length of the trailer: magic, 16 hex digits, a space, 8 hex digits, a newline.
pub const TRAILER_LEN: usize = TRAILER_MAGIC.len() + 16 + 1 + 8 + 1;
/// Largest envelope block read back (1000 recipients of a few hundred bytes each fit
/// many times over).
const MAX_ENVELOPES_LEN: usize = 64 * 1024 * 1024;

/// The control socket's name inside the spool.
pub const SOCKET_NAME: &str = "smtpd.sock";

/// Whether an error means the disk (or quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Creates (or truncates) `path` with mode 0600 and writes `data` to it, not synced;
/// the file is removed when the write fails, so that a failure (ENOSPC) keeps no space.
fn write_new(path: &Path, data: &[u8]) -> io::Result<File> {
    let write = || {
        let mut f = create_temporary(path)?;
        f.write_all(data)?;
        Ok(f)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(path);
    })
}

/// Creates (or empties) a temporary spool file, mode 0600, for writing.
pub(super) fn create_temporary(tmp: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
}

/// Writes `data` to `path` through a temporary file renamed over it (synced first when
/// `sync`); returns the new file, still open for writing. The temporary is removed when
/// a step fails.
fn replace_file(path: &Path, data: &[u8], sync: bool) -> io::Result<File> {
    let tmp = path.with_extension("tmp");
    let f = write_new(&tmp, data)?;
    let install = || {
        if sync {
            f.sync_data()?;
        }
        fs::rename(&tmp, path)
    };
    match install() {
        Ok(()) => Ok(f),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Opens a spool file for reading: a plain file only (a symbolic link is not followed,
/// and a FIFO neither blocks the caller nor is read).
pub(super) fn open_plain(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(invalid(format!("{}: not a plain file", path.display())));
    }
    Ok(f)
}

/// Makes a directory's entries durable.
pub(super) fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

/// The envelopes of a message, one after the other, as stored.
pub fn encode_envelopes(envs: &[Envelope]) -> Vec<u8> {
    let mut out = Vec::with_capacity(envs.len() * 512);
    for e in envs {
        out.extend_from_slice(e.encode().as_bytes());
    }
    out
}

/// Splits a block of envelopes at each envelope's header line and parses each.
pub fn decode_envelopes(block: &[u8]) -> io::Result<Vec<Envelope>> {
    let header = Envelope::default().encode();
    let header = header.split('\n').next().unwrap_or_default().as_bytes();
    let mut starts: Vec<usize> = Vec::new();
    let mut at = 0;
    while at < block.len() {
        let line_end = memchr::memchr(b'\n', &block[at..]).map_or(block.len(), |i| at + i + 1);
        let line = &block[at..line_end];
        if line.strip_suffix(b"\n").unwrap_or(line) == header {
            starts.push(at);
        }
        at = line_end;
    }
    if starts.first() != Some(&0) {
        return Err(invalid("envelopes: bad header".into()));
    }
    let mut out = Vec::with_capacity(starts.len());
    for (i, &s) in starts.iter().enumerate() {
        let e = starts.get(i + 1).copied().unwrap_or(block.len());
        out.push(Envelope::decode(&block[s..e]).map_err(invalid)?);
    }
    Ok(out)
}

/// The trailer for a message of `len` bytes followed by `env_len` bytes of envelopes.
fn trailer(len: u64, env_len: usize) -> String {
    format!("{TRAILER_MAGIC}{len:016x} {env_len:08x}\n")
}

/// Reads a committed message file's trailer: (message length, envelope block length).
fn read_trailer(f: &File) -> io::Result<(u64, usize)> {
    let size = f.metadata()?.len();
    if size < TRAILER_LEN as u64 {
        return Err(invalid("message file: no trailer".into()));
    }
    let mut t = [0u8; TRAILER_LEN];
    f.read_exact_at(&mut t, size - TRAILER_LEN as u64)?;
    parse_trailer(&t, size)
}

/// Parses the trailer `t` (the last [`TRAILER_LEN`] bytes) of a message file of `size`
/// bytes: (message length, envelope block length), checked against the size.
pub fn parse_trailer(t: &[u8], size: u64) -> io::Result<(u64, usize)> {
    let parsed = std::str::from_utf8(t)
        .ok()
        .and_then(|t| t.strip_prefix(TRAILER_MAGIC))
        .and_then(|t| t.strip_suffix('\n'))
        .and_then(|t| t.split_once(' '))
        .and_then(|(a, b)| {
            Some((
                u64::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            ))
        });
    match parsed {
        Some((len, env_len))
            if env_len <= MAX_ENVELOPES_LEN
                && len.checked_add(env_len as u64 + TRAILER_LEN as u64) == Some(size) =>
        {
            Ok((len, env_len))
        }
        _ => Err(invalid("message file: bad trailer".into())),
    }
}

impl Spool {
    /// Opens (creating as needed) the spool at `root`, removes half-received messages
    /// (and envelope files left without their message) and moves whatever the daemon
    /// does not expect to `corrupt/` (`super::tidy`). Returns the spool and how many
    /// incomplete messages were removed.
    pub fn open(root: &Path) -> io::Result<(Spool, usize)> {
        fs::create_dir_all(root)?;
        // Traversable by all (the control socket lives here), listable by none.
        fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        let found = Tidy::run(root, MAX_FREE)?;
        let spool = Spool {
            root: root.to_path_buf(),
            free: Arc::new(Mutex::new(FreeList::new(found.free))),
            key: None,
        };
        for p in &found.empty {
            // Caught between its move to free/ and its emptying.
            if let Err(e) = spool.recycle(p) {
                log::warn!("queue: cannot move {} to free/: {e}", p.display());
            }
        }
        Ok((spool, found.cleaned))
    }

    /// Gives the whole spool to `uid:gid` (the engine's user when started as root), but
    /// for what `offline/` and `corrupt/` hold: an offline file keeps its owner, as it is
    /// submitted as the user who wrote it, and the engine never reads what was set aside.
    /// The root may be a symbolic link to the spool's place; nothing below it is followed.
    pub fn chown_tree(&self, uid: u32, gid: u32) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        fn walk(p: &Path, md: &fs::Metadata, uid: u32, gid: u32) -> io::Result<()> {
            if md.uid() != uid || md.gid() != gid {
                std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
            }
            let leaf = p
                .file_name()
                .is_some_and(|n| n == "offline" || n == "corrupt");
            if md.is_dir() && !leaf {
                for ent in fs::read_dir(p)? {
                    let p = ent?.path();
                    walk(&p, &fs::symlink_metadata(&p)?, uid, gid)?;
                }
            }
            Ok(())
        }
        walk(&self.root, &fs::metadata(&self.root)?, uid, gid)
    }

    /// A spool at `root` that is only read (smtpctl with the daemon down).
    pub fn at(root: &Path) -> Spool {
        Spool {
            root: root.to_path_buf(),
            free: Arc::default(),
            key: None,
        }
    }

    /// The spool with `queue encryption`'s key: new message files are sealed, sealed
    /// ones are read.
    pub fn with_key(mut self, key: Option<SpoolKey>) -> Spool {
        self.key = key.map(Arc::new);
        self
    }

    /// The key of `queue encryption`, if any.
    pub(super) fn key(&self) -> Option<&SpoolKey> {
        self.key.as_deref()
    }

    /// The spool's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub(super) fn incoming(&self, msgid: u32) -> PathBuf {
        self.root.join("incoming").join(format!("{msgid:08x}"))
    }

    /// Where a committed message lives.
    pub fn message_path(&self, msgid: u32) -> PathBuf {
        self.root
            .join("queue")
            .join(format!("{:02x}", msgid >> 24))
            .join(format!("{msgid:08x}"))
    }

    fn envelopes_path(&self, msgid: u32) -> PathBuf {
        self.message_path(msgid).with_extension("env")
    }

    /// Creates a new message with a fresh random id; returns the id and its data file.
    pub fn create_message(&self) -> io::Result<(u32, MessageFile)> {
        self.create_message_as(None)
    }

    /// Creates a new message with the id `wanted` when it is free (the id the filters
    /// were told), else a fresh random one; returns the id and its data file.
    pub fn create_message_as(&self, wanted: Option<u32>) -> io::Result<(u32, MessageFile)> {
        let (msgid, file) = self.create_file(wanted)?;
        let (mut m, header) = MessageFile::new(file, self.key())?;
        if let Err(e) = self.write_raw(&mut m, &header) {
            self.discard(msgid);
            return Err(e);
        }
        Ok((msgid, m))
    }

    /// A new message file in `incoming/` with the id `wanted` when it is free, empty or
    /// reused from `free/`.
    fn create_file(&self, wanted: Option<u32>) -> io::Result<(u32, File)> {
        let mut wanted = wanted;
        loop {
            let msgid = wanted
                .take()
                .unwrap_or_else(|| crate::sys::random_u64() as u32);
            if msgid == 0 || self.message_path(msgid).exists() {
                continue;
            }
            let path = self.incoming(msgid);
            if path.exists() {
                continue;
            }
            if let Some(f) = self.reuse(&path) {
                return Ok((msgid, f));
            }
            let f = self.retry_short(|| {
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
            });
            match f {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
                Ok(f) => return Ok((msgid, f)),
            }
        }
    }

    /// Writes the envelopes of an incoming message after it and returns the commit job.
    /// The message ends where `data` stands: what a reused file held beyond is cut off.
    pub fn prepare_commit(
        &self,
        msgid: u32,
        mut data: MessageFile,
        envs: &[Envelope],
    ) -> io::Result<CommitJob> {
        self.finish_data(&mut data)?;
        let len = data.end();
        let mut tail = encode_envelopes(envs);
        let env_len = tail.len();
        tail.extend_from_slice(trailer(len, env_len).as_bytes());
        self.write_raw(&mut data, &tail)?;
        data.file.set_len(len + tail.len() as u64)?;
        Ok(CommitJob {
            msgid,
            file: data.file,
            from: self.incoming(msgid),
            to: self.message_path(msgid),
            envs: envs.to_vec(),
        })
    }

    /// Removes an incoming message (the transaction failed or the client left).
    pub fn discard(&self, msgid: u32) {
        let path = self.incoming(msgid);
        if let Err(e) = fs::remove_file(&path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("queue: cannot remove {}: {e}", path.display());
            }
        }
    }

    /// Every envelope of a committed message: from `MSGID.env` when there is one, else
    /// from the message file.
    pub fn load_envelopes(&self, msgid: u32) -> io::Result<Vec<Envelope>> {
        self.load_envelopes_from(msgid).map(|(envs, _)| envs)
    }

    /// [`Spool::load_envelopes`], and whether they came from `MSGID.env`.
    fn load_envelopes_from(&self, msgid: u32) -> io::Result<(Vec<Envelope>, bool)> {
        let mut from_env = true;
        let block = match open_plain(&self.envelopes_path(msgid)) {
            Ok(mut f) => {
                let mut b = Vec::new();
                f.read_to_end(&mut b)?;
                b
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                from_env = false;
                let f = open_plain(&self.message_path(msgid))?;
                let (len, env_len) = read_trailer(&f)?;
                let mut b = vec![0u8; env_len];
                f.read_exact_at(&mut b, len)?;
                b
            }
            Err(e) => return Err(e),
        };
        let envs = decode_envelopes(&block)?;
        if let Some(e) = envs.iter().find(|e| e.msgid() != msgid) {
            return Err(invalid(format!(
                "envelope {:016x} in message {msgid:08x}",
                e.evpid
            )));
        }
        Ok((envs, from_env))
    }

    /// Reads a committed envelope.
    pub fn load_envelope(&self, evpid: u64) -> io::Result<Envelope> {
        self.load_envelopes((evpid >> 32) as u32)?
            .into_iter()
            .find(|e| e.evpid == evpid)
            .ok_or_else(|| io::ErrorKind::NotFound.into())
    }

    /// Replaces a message's envelopes, durably.
    fn store_envelopes(&self, msgid: u32, envs: &[Envelope]) -> io::Result<()> {
        let data = encode_envelopes(envs);
        self.retry_short(|| replace_file(&self.envelopes_path(msgid), &data, true))
            .map(drop)
    }

    /// Opens a committed message for reading: the file, at its start, and the length of
    /// the message in it (what follows are the envelopes). A sealed message comes
    /// decrypted, in a file in memory (`super::seal`).
    pub fn open_message(&self, msgid: u32) -> io::Result<(File, u64)> {
        let f = open_plain(&self.message_path(msgid))?;
        let (len, _) = read_trailer(&f)?;
        super::seal::plaintext(self.key(), f, len)
    }

    /// Removes a delivered (or bounced) envelope; the message goes with its last one.
    /// Returns whether the message went too.
    pub fn remove_envelope(&self, evpid: u64) -> io::Result<bool> {
        let msgid = (evpid >> 32) as u32;
        let (mut envs, from_env) = match self.load_envelopes_from(msgid) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            r => r?,
        };
        envs.retain(|e| e.evpid != evpid);
        if !envs.is_empty() {
            self.store_envelopes(msgid, &envs)?;
            return Ok(false);
        }
        self.remove_message(msgid, from_env).map(|()| true)
    }

    /// Removes a message whose last envelope is gone: the message file (to `free/`),
    /// then `MSGID.env` when `env_file` says there may be one. The message goes first:
    /// a crash in between leaves only a `.env`, removed at start. Not synced: a removal
    /// lost in a crash delivers the message again.
    pub fn remove_message(&self, msgid: u32, env_file: bool) -> io::Result<()> {
        match self.recycle(&self.message_path(msgid)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if !env_file {
            return Ok(());
        }
        match fs::remove_file(self.envelopes_path(msgid)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Writes a message's whole envelope set to a temporary beside `MSGID.env`, not
    /// synced: the caller syncs it (with others), then calls
    /// [`Spool::install_envelopes`]. The temporary is removed when the write fails.
    pub fn stage_envelopes(&self, msgid: u32, envs: &[Envelope]) -> io::Result<File> {
        let data = encode_envelopes(envs);
        let tmp = self.envelopes_path(msgid).with_extension("tmp");
        self.retry_short(|| write_new(&tmp, &data))
    }

    /// Renames the envelopes staged by [`Spool::stage_envelopes`] over `MSGID.env`
    /// (the temporary is removed when that fails).
    pub fn install_envelopes(&self, msgid: u32) -> io::Result<()> {
        let path = self.envelopes_path(msgid);
        let tmp = path.with_extension("tmp");
        fs::rename(&tmp, &path).inspect_err(|_| {
            let _ = fs::remove_file(&tmp);
        })
    }

    /// Removes the envelopes staged by [`Spool::stage_envelopes`] (their write failed).
    pub fn unstage_envelopes(&self, msgid: u32) {
        let _ = fs::remove_file(self.envelopes_path(msgid).with_extension("tmp"));
    }

    /// The directory of a message's files.
    pub fn bucket(&self, msgid: u32) -> PathBuf {
        self.root.join("queue").join(format!("{:02x}", msgid >> 24))
    }

    /// Moves a message whose envelopes cannot be read to corrupt/ (as `MSGID` and
    /// `MSGID.env`, or under a name of their own when taken).
    pub fn quarantine_corrupt(&self, msgid: u32) -> io::Result<()> {
        let corrupt = self.root.join("corrupt");
        let env = self.envelopes_path(msgid);
        if fs::symlink_metadata(&env).is_ok() {
            let name = format!("{msgid:08x}.env");
            fs::rename(&env, corrupt_path(&corrupt, Path::new(&name)))?;
        }
        let name = format!("{msgid:08x}");
        fs::rename(
            self.message_path(msgid),
            corrupt_path(&corrupt, Path::new(&name)),
        )
    }

    /// Moves `path`, an entry of the spool the daemon does not expect, to corrupt/ under
    /// a name of its own, with a warning that names it and says `why`; false (with a
    /// warning) when it cannot be moved.
    pub fn quarantine(&self, path: &Path, why: &str) -> bool {
        super::tidy::quarantine(&self.root, path, why)
    }

    /// Every committed message with its envelopes (or why they cannot be read), in
    /// message id order: for start-up and `show queue` with the daemon down.
    pub fn load_all(&self) -> io::Result<Vec<(u32, io::Result<Vec<Envelope>>)>> {
        Ok(self
            .committed()?
            .into_iter()
            .map(|m| (m, self.load_envelopes(m)))
            .collect())
    }

    /// Every committed message id, for start-up, `show queue` with the daemon down and
    /// tests: the plain files named as message files in the bucket of their id. Whatever
    /// else is there is skipped (at start it went to corrupt/ already), and so is a
    /// bucket that cannot be read, with a warning.
    pub fn committed(&self) -> io::Result<Vec<u32>> {
        let queue = self.root.join("queue");
        // Not readable at all (a user's `show queue`): say so.
        fs::read_dir(&queue)?;
        let mut out = Vec::new();
        for b in 0..=255u8 {
            let dir = queue.join(format!("{b:02x}"));
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    log::warn!("queue: {}: {e}", dir.display());
                    continue;
                }
            };
            for ent in entries.flatten() {
                let Ok(ft) = ent.file_type() else { continue };
                if let BucketEntry::Message(id) = classify(b, &ent.file_name(), Kind::of(ft)) {
                    out.push(id);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

#[cfg(test)]
pub(super) mod tests;
