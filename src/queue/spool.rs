//! The spool on disk: the only code that creates, syncs and renames queue files.
//!
//! ```text
//! QUEUE/incoming/MSGID/message     being received (removed at start: never acknowledged)
//! QUEUE/incoming/MSGID/EVPID       its envelopes, written at the final "."
//! QUEUE/queue/BB/MSGID/...         committed: BB is the high byte of MSGID in hex
//! QUEUE/corrupt/                   what could not be read back
//! QUEUE/offline/                   local submissions made while the daemon was down
//! QUEUE/purge/                     removed messages, deleted later
//! ```
//! A commit is: fdatasync every file of the message, fsync its directory, rename it
//! into `queue/BB/`, fsync `queue/BB`. Only then is the message acknowledged. The
//! syncing runs on one thread that takes every commit waiting, so a loop turn's
//! messages share their fsync round (group commit).

use super::envelope::Envelope;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// The spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    root: PathBuf,
}

/// Subdirectories created by [`Spool::open`].
const DIRS: [&str; 5] = ["incoming", "queue", "corrupt", "offline", "purge"];

/// Whether an error means the disk (or quota) is full.
pub fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

fn mkdir(p: &Path, mode: u32) -> io::Result<()> {
    match fs::DirBuilder::new().mode(mode).create(p) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// Writes `data` to `path` through a temporary file renamed over it (synced first when
/// `sync`); returns the new file, still open for writing.
fn replace_file(path: &Path, data: &[u8], sync: bool) -> io::Result<File> {
    let tmp = path.with_extension("tmp");
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    if sync {
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    Ok(f)
}

fn fsync_dir(p: &Path) -> io::Result<()> {
    File::open(p)?.sync_all()
}

impl Spool {
    /// Opens (creating as needed) the spool at `root` and removes half-received messages.
    /// Returns the spool and how many incomplete messages were removed.
    pub fn open(root: &Path) -> io::Result<(Spool, usize)> {
        fs::create_dir_all(root)?;
        // Traversable by all (the control socket lives here), listable by none.
        fs::set_permissions(root, std::os::unix::fs::PermissionsExt::from_mode(0o711))?;
        for d in DIRS {
            mkdir(&root.join(d), 0o700)?;
        }
        let queue = root.join("queue");
        for b in 0..=255u8 {
            mkdir(&queue.join(format!("{b:02x}")), 0o700)?;
        }
        fsync_dir(&queue)?;
        fsync_dir(root)?;
        let mut cleaned = 0;
        for ent in fs::read_dir(root.join("incoming"))? {
            let p = ent?.path();
            if p.is_dir() {
                fs::remove_dir_all(&p)?;
            } else {
                fs::remove_file(&p)?;
            }
            cleaned += 1;
        }
        for ent in fs::read_dir(root.join("purge"))? {
            let p = ent?.path();
            let _ = fs::remove_dir_all(&p).or_else(|_| fs::remove_file(&p));
        }
        Ok((
            Spool {
                root: root.to_path_buf(),
            },
            cleaned,
        ))
    }

    /// Gives the whole spool to `uid:gid` (the engine's user when started as root).
    pub fn chown_tree(&self, uid: u32, gid: u32) -> io::Result<()> {
        fn walk(p: &Path, uid: u32, gid: u32) -> io::Result<()> {
            use std::os::unix::fs::MetadataExt;
            let md = fs::symlink_metadata(p)?;
            if md.uid() != uid || md.gid() != gid {
                std::os::unix::fs::lchown(p, Some(uid), Some(gid))?;
            }
            // offline/ files keep their owners: each is submitted as the user who wrote it.
            if md.is_dir() && p.file_name().is_none_or(|n| n != "offline") {
                for ent in fs::read_dir(p)? {
                    walk(&ent?.path(), uid, gid)?;
                }
            }
            Ok(())
        }
        walk(&self.root, uid, gid)
    }

    /// A spool at `root` that is only read (smtpctl with the daemon down).
    pub fn at(root: &Path) -> Spool {
        Spool {
            root: root.to_path_buf(),
        }
    }

    /// The spool's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn incoming(&self, msgid: u32) -> PathBuf {
        self.root.join("incoming").join(format!("{msgid:08x}"))
    }

    /// Where a committed message lives.
    pub fn message_dir(&self, msgid: u32) -> PathBuf {
        self.root
            .join("queue")
            .join(format!("{:02x}", msgid >> 24))
            .join(format!("{msgid:08x}"))
    }

    /// Creates a new message with a fresh random id; returns the id and its data file.
    pub fn create_message(&self) -> io::Result<(u32, File)> {
        loop {
            let msgid = crate::sys::random_u64() as u32;
            if msgid == 0 || self.message_dir(msgid).exists() {
                continue;
            }
            let dir = self.incoming(msgid);
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join("message"));
            return match f {
                Ok(f) => Ok((msgid, f)),
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    Err(e)
                }
            };
        }
    }

    /// Writes the envelopes of an incoming message and returns the commit job.
    pub fn prepare_commit(
        &self,
        msgid: u32,
        data: File,
        envs: &[Envelope],
    ) -> io::Result<CommitJob> {
        let dir = self.incoming(msgid);
        let mut files = Vec::with_capacity(envs.len() + 1);
        files.push(data);
        for e in envs {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dir.join(format!("{:016x}", e.evpid)))?;
            f.write_all(e.encode().as_bytes())?;
            files.push(f);
        }
        Ok(CommitJob {
            msgid,
            files,
            from: dir,
            to: self.message_dir(msgid),
            envs: envs.to_vec(),
        })
    }

    /// Replaces an incoming message's data (end-of-message edits); returns the new file,
    /// open for writing, for the commit to sync.
    pub fn rewrite_incoming(&self, msgid: u32, data: &[u8]) -> io::Result<File> {
        // Not synced here: the commit syncs the returned file with the rest.
        replace_file(&self.incoming(msgid).join("message"), data, false)
    }

    /// Reads an incoming message's data.
    pub fn read_incoming(&self, msgid: u32) -> io::Result<Vec<u8>> {
        fs::read(self.incoming(msgid).join("message"))
    }

    /// Removes an incoming message (the transaction failed or the client left).
    pub fn discard(&self, msgid: u32) {
        let dir = self.incoming(msgid);
        if let Err(e) = fs::remove_dir_all(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("queue: cannot remove {}: {e}", dir.display());
            }
        }
    }

    fn envelope_path(&self, evpid: u64) -> PathBuf {
        self.message_dir((evpid >> 32) as u32)
            .join(format!("{evpid:016x}"))
    }

    /// Reads a committed envelope.
    pub fn load_envelope(&self, evpid: u64) -> io::Result<Envelope> {
        let data = fs::read(self.envelope_path(evpid))?;
        Envelope::decode(&data).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Rewrites a committed envelope (retry count, last error) atomically.
    pub fn update_envelope(&self, env: &Envelope) -> io::Result<()> {
        replace_file(
            &self.envelope_path(env.evpid),
            env.encode().as_bytes(),
            true,
        )
        .map(drop)
    }

    /// Adds envelopes to a committed message (expansion of a `.forward`), durably.
    pub fn add_envelopes(&self, msgid: u32, envs: &[Envelope]) -> io::Result<()> {
        for e in envs {
            replace_file(&self.envelope_path(e.evpid), e.encode().as_bytes(), true)?;
        }
        fsync_dir(&self.message_dir(msgid))
    }

    /// Opens a committed message for reading.
    pub fn open_message(&self, msgid: u32) -> io::Result<File> {
        File::open(self.message_dir(msgid).join("message"))
    }

    /// Removes a delivered (or bounced) envelope; the message goes with its last one.
    /// Returns whether the message went too.
    pub fn remove_envelope(&self, evpid: u64) -> io::Result<bool> {
        let path = self.envelope_path(evpid);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let dir = self.message_dir((evpid >> 32) as u32);
        let last = fs::read_dir(&dir)?.filter_map(Result::ok).all(|e| {
            e.file_name() == "message" || e.file_name().to_string_lossy().ends_with(".tmp")
        });
        if last {
            // Rename first, so a crash never leaves a message without its directory entry
            // half-removed in queue/.
            let purge = self
                .root
                .join("purge")
                .join(dir.file_name().unwrap_or_default());
            fs::rename(&dir, &purge)?;
            fs::remove_dir_all(&purge)?;
        }
        Ok(last)
    }

    /// Moves a message whose envelope cannot be read to corrupt/.
    pub fn quarantine_corrupt(&self, msgid: u32) -> io::Result<()> {
        let dir = self.message_dir(msgid);
        fs::rename(&dir, self.root.join("corrupt").join(format!("{msgid:08x}")))
    }

    /// Every committed envelope id with its message id, read from the directory tree
    /// (no file content is read).
    pub fn envelope_ids(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for msgid in self.committed()? {
            for ent in fs::read_dir(self.message_dir(msgid))? {
                let name = ent?.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.len() == 16 {
                    if let Ok(id) = u64::from_str_radix(name, 16) {
                        if (id >> 32) as u32 == msgid {
                            out.push(id);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Every committed message id, for start-up and tests.
    pub fn committed(&self) -> io::Result<Vec<u32>> {
        let mut out = Vec::new();
        for b in fs::read_dir(self.root.join("queue"))? {
            for m in fs::read_dir(b?.path())? {
                let name = m?.file_name();
                if let Some(id) = name.to_str().and_then(|n| u32::from_str_radix(n, 16).ok()) {
                    out.push(id);
                }
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

/// One message to make durable.
#[derive(Debug)]
pub struct CommitJob {
    /// The message.
    pub msgid: u32,
    files: Vec<File>,
    from: PathBuf,
    to: PathBuf,
    envs: Vec<Envelope>,
}

/// The outcome of a commit, returned to the loop with the caller's `key`.
#[derive(Debug)]
pub struct CommitDone {
    /// What the caller passed with the job.
    pub key: (usize, u64),
    /// The message.
    pub msgid: u32,
    /// Success, or the error (the message was removed).
    pub result: io::Result<()>,
    /// The envelopes committed, for the scheduler.
    pub envs: Vec<Envelope>,
}

/// The sync thread's handle.
pub struct Committer {
    tx: mpsc::Sender<((usize, u64), CommitJob)>,
    /// Finished commits, drained by the loop when the waker fires.
    pub done: Arc<Mutex<Vec<CommitDone>>>,
}

impl Committer {
    /// Starts the sync thread; `wake` is called after each batch.
    pub fn start(wake: impl Fn() + Send + 'static) -> io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<((usize, u64), CommitJob)>();
        let done = Arc::new(Mutex::new(Vec::new()));
        let out = done.clone();
        std::thread::Builder::new()
            .name("commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let results = commit_batch(batch);
                    if let Ok(mut d) = out.lock() {
                        d.extend(results);
                    }
                    wake();
                }
            })?;
        Ok(Committer { tx, done })
    }

    /// Queues a job; `key` comes back in its [`CommitDone`].
    pub fn submit(&self, key: (usize, u64), job: CommitJob) -> bool {
        self.tx.send((key, job)).is_ok()
    }

    /// Takes the finished commits.
    pub fn take_done(&self) -> Vec<CommitDone> {
        self.done
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default()
    }
}

/// Syncs a batch: all files, then all message directories, then renames, then each
/// bucket directory once.
fn commit_batch(batch: Vec<((usize, u64), CommitJob)>) -> Vec<CommitDone> {
    let mut results: Vec<io::Result<()>> = batch
        .iter()
        .map(|(_, job)| {
            for f in &job.files {
                f.sync_data()?;
            }
            fsync_dir(&job.from)
        })
        .collect();
    let mut buckets: Vec<PathBuf> = Vec::new();
    for ((_, job), r) in batch.iter().zip(results.iter_mut()) {
        if r.is_ok() {
            *r = fs::rename(&job.from, &job.to);
            if let (Ok(()), Some(parent)) = (&r, job.to.parent()) {
                if !buckets.iter().any(|b| b == parent) {
                    buckets.push(parent.to_path_buf());
                }
            }
        }
    }
    let mut bucket_err: Vec<(PathBuf, io::ErrorKind)> = Vec::new();
    for b in &buckets {
        if let Err(e) = fsync_dir(b) {
            bucket_err.push((b.clone(), e.kind()));
        }
    }
    batch
        .into_iter()
        .zip(results)
        .map(|((key, job), mut result)| {
            if let Some((_, kind)) = bucket_err
                .iter()
                .find(|(b, _)| Some(b.as_path()) == job.to.parent())
            {
                // The rename may not be durable: refuse the message and take it back.
                result = Err(io::Error::from(*kind));
                let _ = fs::remove_dir_all(&job.to);
            }
            if result.is_err() {
                let _ = fs::remove_dir_all(&job.from);
            }
            CommitDone {
                key,
                msgid: job.msgid,
                result,
                envs: job.envs,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_commit_and_clean() {
        let dir = std::env::temp_dir().join(format!("smtpd-spool-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (spool, cleaned) = Spool::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cleaned, 0);
        let (id, mut f) = spool.create_message().unwrap_or_else(|e| panic!("{e}"));
        f.write_all(b"Subject: x\n\nbody\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let env = Envelope {
            evpid: (u64::from(id) << 32) | 1,
            rcpt: "a@b".into(),
            ..Envelope::default()
        };
        let job = spool
            .prepare_commit(id, f, &[env])
            .unwrap_or_else(|e| panic!("{e}"));
        let done = commit_batch(vec![((1, 2), job)]);
        assert!(done[0].result.is_ok());
        assert_eq!(spool.committed().ok(), Some(vec![id]));
        assert!(spool.message_dir(id).join("message").exists());
        // A half-received message is removed at the next start.
        let (_id2, _f2) = spool.create_message().unwrap_or_else(|e| panic!("{e}"));
        let (_, cleaned) = Spool::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cleaned, 1);
        let _ = fs::remove_dir_all(&dir);
    }
}
