//! The commit thread: makes new message files durable and renames them into
//! `queue/BB/`, a whole batch per sync round (group commit; see `super::spool`).

use super::envelope::Envelope;
use super::spool::{fsync_dir, Spool};
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// The same error again (io::Error is not Clone), keeping its errno for [`super::spool::is_no_space`].
pub(super) fn copy_err(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(n) => io::Error::from_raw_os_error(n),
        None => io::Error::from(e.kind()),
    }
}

/// One message to make durable.
#[derive(Debug)]
pub struct CommitJob {
    /// The message.
    pub msgid: u32,
    pub(super) file: File,
    pub(super) from: PathBuf,
    pub(super) to: PathBuf,
    pub(super) envs: Vec<Envelope>,
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
    /// Starts the sync thread for `spool`; `wake` is called after each batch.
    pub fn start(spool: &Spool, wake: impl Fn() + Send + 'static) -> io::Result<Committer> {
        let (tx, rx) = mpsc::channel::<((usize, u64), CommitJob)>();
        let done = Arc::new(Mutex::new(Vec::new()));
        let out = done.clone();
        // The handle syncfs(2) runs on is opened before any message is written: a
        // write-back error is reported to a handle only if it happened after the handle
        // was opened (and since its last syncfs).
        let fs_handle = if crate::sys::HAVE_SYNCFS {
            Some(File::open(spool.root().join("incoming"))?)
        } else {
            None
        };
        std::thread::Builder::new()
            .name("commit".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    let results = commit_batch(batch, fs_handle.as_ref(), false);
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

/// Syncs a batch: all files, then renames, then the bucket directories. On Linux each of the two sync steps is one syncfs(2) of the spool's file
/// system: one device flush for the whole batch instead of one per file (a fifth to a
/// twentieth of the cost measured with 20 messages in flight). Elsewhere every file and
/// directory is fsynced. `notices`: the batch holds notifications (for the crash
/// points, `crate::crashpoint`).
pub(super) fn commit_batch(
    batch: Vec<((usize, u64), CommitJob)>,
    fs_handle: Option<&File>,
    notices: bool,
) -> Vec<CommitDone> {
    crate::crashpoint::hit(if notices {
        "bounce-written"
    } else {
        "commit-written"
    });
    let mut results: Vec<io::Result<()>> = match fs_handle {
        Some(h) => {
            let r = crate::sys::syncfs(h.as_raw_fd());
            batch
                .iter()
                .map(|_| r.as_ref().map(|_| ()).map_err(copy_err))
                .collect()
        }
        None => batch.iter().map(|(_, job)| job.file.sync_data()).collect(),
    };
    if !notices {
        crate::crashpoint::hit("commit-synced");
    }
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
    if !notices {
        crate::crashpoint::hit("commit-renamed");
    }
    let mut bucket_err: Vec<(PathBuf, io::Error)> = Vec::new();
    match fs_handle {
        Some(h) if !buckets.is_empty() => {
            if let Err(e) = crate::sys::syncfs(h.as_raw_fd()) {
                bucket_err.extend(buckets.iter().map(|b| (b.clone(), copy_err(&e))));
            }
        }
        _ => {
            for b in &buckets {
                if let Err(e) = fsync_dir(b) {
                    bucket_err.push((b.clone(), e));
                }
            }
        }
    }
    if !notices {
        crate::crashpoint::hit("commit-durable");
    }
    batch
        .into_iter()
        .zip(results)
        .map(|((key, job), mut result)| {
            if let Some((_, e)) = bucket_err
                .iter()
                .find(|(b, _)| Some(b.as_path()) == job.to.parent())
            {
                // The rename may not be durable: refuse the message and take it back.
                result = Err(copy_err(e));
                let _ = fs::remove_file(&job.to);
            }
            if result.is_err() {
                let _ = fs::remove_file(&job.from);
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
