//! The spool I/O thread: what the queue manager asks of the spool, done off the loop.
//!
//! It takes every job waiting as one round, in order: hands local deliveries to the
//! parent (opening each message), opens messages for outgoing sessions, looks up the
//! destinations of forward files, writes notifications into `incoming/`, reads and
//! writes the MTA-STS policies cached in `sts/` (small files); then the
//! envelope writes of the round, staged into temporaries, made durable together
//! (one syncfs(2) on Linux, as the commit thread does; fdatasync(2) each elsewhere),
//! renamed into place (and the renames made durable when one of them must be); then the
//! notifications are committed with the message's next write, which may come in a
//! later round: a notice of failure or success before the write that removes its
//! envelope (a crash in between delivers it again, never loses it; a notice that
//! cannot be committed keeps the envelope in the spool), a notice of delay after the
//! write that records it in the envelope (a crash in between loses it, never repeats
//! it). See smtpd.8, Crash points.
//! Each job gets one completion ([`IoDone`]), handed to the loop through the waker.

use super::bounce::DsnKind;
use super::commit::{commit_batch, copy_err, CommitJob};
use super::envelope::Envelope;
use super::forward::{destinations, NewDest};
use super::manager::{Delivery, EnvWrite, ForwardFile, Notice};
use super::spool::{fsync_dir, Spool};
use crate::config::Config;
use crate::mta::client::Content;
use crate::mta::sts::{self, CacheEntry};
use crate::privsep::DeliverReq;
use crate::worker::Worker;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

/// A job for the spool I/O thread.
#[derive(Debug)]
pub enum IoJob {
    /// Open the message and send the request (its `len` set here) with it to the
    /// parent.
    Deliver(Delivery),
    /// Open message `msgid` for `job` of outgoing session `session`.
    Open {
        /// The session.
        session: u64,
        /// The job.
        job: u64,
        /// The message.
        msgid: u32,
    },
    /// Replace a message's envelopes, or remove the message when there are none.
    Write(EnvWrite),
    /// Write and commit a notification, dated at the time given (Unix seconds).
    Bounce(Notice, u64),
    /// Look up the destinations of a forward file.
    Expand(ForwardFile),
    /// Read the MTA-STS policy cached for a domain (`sts/DOMAIN`).
    StsRead {
        /// The domain.
        domain: String,
    },
    /// Cache a domain's MTA-STS policy, replacing the one before.
    StsWrite {
        /// The domain.
        domain: String,
        /// The policy, its id and when it was fetched.
        entry: CacheEntry,
    },
    /// Serve the jobs that follow under this configuration (a reload).
    Config(Arc<Config>),
}

/// The completion of an [`IoJob`].
#[derive(Debug)]
pub enum IoDone {
    /// A local delivery was sent to the parent, or why not.
    Handed {
        /// The request.
        id: u64,
        /// What happened.
        result: Result<(), String>,
    },
    /// A message opened for a session: the file, the message's length in it, and
    /// where it holds octets above 127 (read here, off the loop, for a server without
    /// 8BITMIME or SMTPUTF8).
    Opened {
        /// The session.
        session: u64,
        /// The job.
        job: u64,
        /// The file, or why not.
        result: Result<(File, u64, Content), String>,
    },
    /// Envelopes written.
    Written {
        /// The write.
        id: u64,
        /// What happened.
        result: Result<(), String>,
    },
    /// A notification committed (its id and envelopes), or why not.
    Bounced {
        /// The envelope reported on.
        evpid: u64,
        /// Its kind.
        kind: DsnKind,
        /// The sender notified.
        to: String,
        /// The notification.
        result: Result<(u32, Vec<Envelope>), String>,
    },
    /// The destinations of a forward file.
    Expanded {
        /// The user's envelope.
        evpid: u64,
        /// Where it leads, or why that cannot be known now (a lookup failed for now).
        dests: Result<Vec<NewDest>, String>,
    },
    /// The MTA-STS policy cached for a domain: none, or why it cannot be read.
    StsRead {
        /// The domain.
        domain: String,
        /// What the cache holds.
        result: Result<Option<CacheEntry>, String>,
    },
    /// A domain's MTA-STS policy was cached, or why not.
    StsWritten {
        /// The domain.
        domain: String,
        /// What happened.
        result: Result<(), String>,
    },
    /// The configuration was taken.
    Configured,
}

impl IoJob {
    /// The completion of this job when it cannot be done at all (the thread is gone).
    pub fn fail(self, why: &str) -> IoDone {
        let why = why.to_string();
        match self {
            IoJob::Deliver(Delivery { req, .. }) => IoDone::Handed {
                id: req.id,
                result: Err(why),
            },
            IoJob::Config(_) => IoDone::Configured,
            IoJob::Open { session, job, .. } => IoDone::Opened {
                session,
                job,
                result: Err(why),
            },
            IoJob::Write(EnvWrite { id, .. }) => IoDone::Written {
                id,
                result: Err(why),
            },
            IoJob::Bounce(Notice { env, kind, .. }, _) => IoDone::Bounced {
                evpid: env.evpid,
                kind,
                to: env.sender,
                result: Err(why),
            },
            IoJob::Expand(ForwardFile { env, .. }) => IoDone::Expanded {
                evpid: env.evpid,
                dests: Err(why),
            },
            IoJob::StsRead { domain } => IoDone::StsRead {
                domain,
                result: Err(why),
            },
            IoJob::StsWrite { domain, .. } => IoDone::StsWritten {
                domain,
                result: Err(why),
            },
        }
    }
}

/// What the thread works with.
struct Ctx {
    spool: Spool,
    cfg: Arc<Config>,
    parent: Option<Arc<OwnedFd>>,
    /// Opened before anything it covers is written (see `super::commit`).
    fs_handle: Option<File>,
    /// Notices written, waiting for their message's next write.
    held: Vec<Pending>,
}

/// A notice written into `incoming/`, to commit.
struct Pending {
    evpid: u64,
    kind: DsnKind,
    to: String,
    job: CommitJob,
}

/// Starts the spool I/O thread; `wake` is called after each round.
pub fn start(
    spool: &Spool,
    cfg: Arc<Config>,
    parent: Option<Arc<OwnedFd>>,
    wake: impl Fn() + Send + 'static,
) -> io::Result<Worker<IoJob, IoDone>> {
    let fs_handle = if crate::sys::HAVE_SYNCFS {
        Some(File::open(spool.root().join("queue"))?)
    } else {
        None
    };
    let mut ctx = Ctx {
        spool: spool.clone(),
        cfg,
        parent,
        fs_handle,
        held: Vec::new(),
    };
    Worker::start("spool", wake, move |batch| ctx.round(batch))
}

/// An envelope write of the round.
struct Staged {
    id: u64,
    msgid: u32,
    durable: bool,
    file: Option<File>,
    result: io::Result<()>,
}

impl Ctx {
    fn round(&mut self, batch: Vec<IoJob>) -> Vec<IoDone> {
        let mut done = Vec::with_capacity(batch.len());
        let mut writes: Vec<EnvWrite> = Vec::new();
        // Committed before the writes (with the index of the write that releases them),
        // and after them.
        let mut before: Vec<(usize, Pending)> = Vec::new();
        let mut after: Vec<Pending> = Vec::new();
        for job in batch {
            match job {
                IoJob::Config(cfg) => {
                    self.cfg = cfg;
                    done.push(IoDone::Configured);
                }
                IoJob::Deliver(Delivery { msgid, req }) => done.push(IoDone::Handed {
                    id: req.id,
                    result: self.deliver(msgid, req),
                }),
                IoJob::Open {
                    session,
                    job,
                    msgid,
                } => done.push(IoDone::Opened {
                    session,
                    job,
                    result: self
                        .spool
                        .open_message(msgid)
                        .map_err(|e| format!("cannot open message: {e}"))
                        .and_then(|(f, len)| {
                            let content = scan(&f, len)?;
                            Ok((f, len, content))
                        }),
                }),
                IoJob::Expand(ForwardFile { env, owner, items }) => done.push(IoDone::Expanded {
                    evpid: env.evpid,
                    dests: destinations(&self.cfg, &env, &owner, &items),
                }),
                IoJob::StsRead { domain } => {
                    let result = sts::read_cache(self.spool.root(), &domain);
                    done.push(IoDone::StsRead {
                        domain,
                        result: result.map_err(|e| e.to_string()),
                    });
                }
                IoJob::StsWrite { domain, entry } => {
                    let result = sts::write_cache(self.spool.root(), &domain, &entry);
                    done.push(IoDone::StsWritten {
                        domain,
                        result: result.map_err(|e| e.to_string()),
                    });
                }
                IoJob::Bounce(n, now) => {
                    let (env, kind) = (&n.env, n.kind);
                    match super::notice::make(&self.cfg, &self.spool, &n, now) {
                        Ok(job) => {
                            let p = Pending {
                                evpid: env.evpid,
                                kind,
                                to: env.sender.clone(),
                                job,
                            };
                            if n.hold {
                                self.held.push(p);
                            } else {
                                after.push(p);
                            }
                        }
                        Err(e) => done.push(IoDone::Bounced {
                            evpid: env.evpid,
                            kind,
                            to: env.sender.clone(),
                            result: Err(e),
                        }),
                    }
                }
                IoJob::Write(w) => {
                    // The notices of its message: of failure or success before it
                    // (it removes their envelope), of delay after it (it records them).
                    let (mine, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.held)
                        .into_iter()
                        .partition(|p| (p.evpid >> 32) as u32 == w.msgid);
                    self.held = rest;
                    for p in mine {
                        if p.kind == DsnKind::Delayed {
                            after.push(p);
                        } else if w.removed.contains(&p.evpid) {
                            before.push((writes.len(), p));
                        } else {
                            // Its envelope stays: it waits for the write that removes it.
                            self.held.push(p);
                        }
                    }
                    writes.push(w);
                }
            }
        }
        // A write whose notice could not be committed is not made: the envelope it
        // would remove stays in the spool, to be delivered and reported again.
        let mut refused: Vec<Option<String>> = vec![None; writes.len()];
        let notified = !before.is_empty();
        if notified {
            let (at, notices): (Vec<usize>, Vec<Pending>) = before.into_iter().unzip();
            for (i, d) in at.into_iter().zip(self.commit_notices(notices)) {
                if let IoDone::Bounced {
                    result: Err(e),
                    evpid,
                    ..
                } = &d
                {
                    refused[i] = Some(format!(
                        "the notification about {evpid:016x} was not queued ({e}): kept"
                    ));
                }
                done.push(d);
            }
            crate::crashpoint::hit("bounce-committed");
        }
        let mut staged = Vec::with_capacity(writes.len());
        for (w, why) in writes.into_iter().zip(refused) {
            match why {
                Some(why) => done.push(IoDone::Written {
                    id: w.id,
                    result: Err(why),
                }),
                None => staged.push(self.stage(w.id, w.msgid, &w.envs, w.durable)),
            }
        }
        if notified {
            crate::crashpoint::hit("bounce-removed");
        }
        done.extend(self.install(staged));
        let delays = after.iter().any(|p| p.kind == DsnKind::Delayed);
        if delays {
            crate::crashpoint::hit("delay-recorded");
        }
        if !after.is_empty() {
            done.extend(self.commit_notices(after));
        }
        if delays {
            crate::crashpoint::hit("delay-committed");
        }
        done
    }

    /// Commits notifications written into `incoming/`: their completions, in order.
    fn commit_notices(&self, notices: Vec<Pending>) -> Vec<IoDone> {
        let (meta, jobs): (Vec<_>, Vec<_>) = notices
            .into_iter()
            .map(|p| ((p.evpid, p.kind, p.to), ((0, 0), p.job)))
            .unzip();
        meta.into_iter()
            .zip(commit_batch(jobs, self.fs_handle.as_ref(), true))
            .map(|((evpid, kind, to), c)| IoDone::Bounced {
                evpid,
                kind,
                to,
                result: c
                    .result
                    .map(|()| (c.msgid, c.envs))
                    .map_err(|e| e.to_string()),
            })
            .collect()
    }

    /// Opens the message and sends the request with its descriptor to the parent.
    fn deliver(&self, msgid: u32, mut req: DeliverReq) -> Result<(), String> {
        if let Some(t) = req.userbase.and_then(|t| self.cfg.tables.get(t)) {
            // The account of a user of a `userbase` table: its ids and home.
            match t.lookup(crate::table::Service::UserInfo, &req.user) {
                // A list names users that keep their system accounts.
                Ok(Some(v)) if v.trim().is_empty() => {}
                Ok(Some(v)) => req.account = Some(v),
                Ok(None) => return Err(format!("user {} is no longer in its userbase", req.user)),
                Err(e) => return Err(format!("userbase lookup of {}: {e}", req.user)),
            }
        }
        let (file, len) = self
            .spool
            .open_message(msgid)
            .map_err(|e| format!("cannot open message: {e}"))?;
        let Some(parent) = self.parent.as_ref() else {
            return Err("no delivery process".into());
        };
        req.len = len;
        crate::sys::send_msg(parent.as_raw_fd(), &req.encode(), Some(file.as_raw_fd()))
            .map_err(|e| format!("cannot reach the delivery process: {e}"))
    }

    /// First step of an envelope write: a removal is done at once, a new set is written
    /// to its temporary.
    fn stage(&self, id: u64, msgid: u32, envs: &[Envelope], durable: bool) -> Staged {
        let (file, result) = if envs.is_empty() {
            crate::crashpoint::hit("remove-before");
            let r = self.spool.remove_message(msgid, true);
            crate::crashpoint::hit("remove-after");
            (None, r)
        } else {
            match self.spool.stage_envelopes(msgid, envs) {
                Ok(f) => (Some(f), Ok(())),
                Err(e) => (None, Err(e)),
            }
        };
        Staged {
            id,
            msgid,
            durable,
            file,
            result,
        }
    }

    /// The rest of the round's envelope writes: one sync of the temporaries, the renames,
    /// and one sync of the renames when one must be durable.
    fn install(&self, mut writes: Vec<Staged>) -> Vec<IoDone> {
        let staged = writes.iter().any(|w| w.file.is_some());
        if let (Some(h), true) = (self.fs_handle.as_ref(), staged) {
            if let Err(e) = crate::sys::syncfs(h.as_raw_fd()) {
                for w in writes.iter_mut().filter(|w| w.file.is_some()) {
                    w.result = Err(copy_err(&e));
                }
            }
        } else {
            for w in writes.iter_mut() {
                if let Some(f) = &w.file {
                    w.result = f.sync_data();
                }
            }
        }
        if staged {
            crate::crashpoint::hit("envelope-staged");
        }
        let mut buckets: Vec<PathBuf> = Vec::new();
        for w in writes.iter_mut().filter(|w| w.file.is_some()) {
            w.result = match std::mem::replace(&mut w.result, Ok(())) {
                Ok(()) => self.spool.install_envelopes(w.msgid),
                Err(e) => {
                    self.spool.unstage_envelopes(w.msgid);
                    Err(e)
                }
            };
            let bucket = self.spool.bucket(w.msgid);
            if w.durable && w.result.is_ok() && !buckets.contains(&bucket) {
                buckets.push(bucket);
            }
        }
        if staged {
            crate::crashpoint::hit("envelope-installed");
        }
        if !buckets.is_empty() {
            let r = match self.fs_handle.as_ref() {
                Some(h) => crate::sys::syncfs(h.as_raw_fd()),
                None => buckets.iter().try_for_each(|b| fsync_dir(b)),
            };
            if let Err(e) = r {
                for w in writes.iter_mut().filter(|w| w.durable && w.file.is_some()) {
                    w.result = Err(copy_err(&e));
                }
            }
        }
        writes
            .into_iter()
            .map(|w| IoDone::Written {
                id: w.id,
                result: w.result.map_err(|e| e.to_string()),
            })
            .collect()
    }
}

/// Whether the first `len` octets of `file` hold one above 127.
/// Where the message has octets above 127: anywhere, and in its header section (up
/// to the first empty line).
fn scan(file: &File, len: u64) -> Result<Content, String> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = 0u64;
    let mut found = Content::default();
    // In the header section, and whether the last octet seen there ended a line.
    let (mut head, mut at_line_start) = (true, true);
    while pos < len {
        let want = (len - pos).min(buf.len() as u64) as usize;
        let n = match file.read_at(&mut buf[..want], pos) {
            Ok(0) => return Err("reading the message: file shorter than its length".into()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("reading the message: {e}")),
        };
        let chunk = &buf[..n];
        let body_at = match head {
            true => header_end(chunk, &mut at_line_start),
            false => Some(0),
        };
        let (h, b) = chunk.split_at(body_at.unwrap_or(n));
        found.utf8_header |= !h.is_ascii();
        found.eight_bit |= found.utf8_header || !b.is_ascii();
        head &= body_at.is_none();
        if found.eight_bit && (found.utf8_header || !head) {
            break;
        }
        pos += n as u64;
    }
    Ok(found)
}

/// Where the body starts in `chunk` (after the empty line that ends the header
/// section), if it does; `at_line_start` carries whether the chunk before ended a line.
fn header_end(chunk: &[u8], at_line_start: &mut bool) -> Option<usize> {
    for (i, &b) in chunk.iter().enumerate() {
        if b == b'\n' {
            if *at_line_start {
                return Some(i + 1);
            }
            *at_line_start = true;
        } else {
            *at_line_start = false;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::spool::tests::spool_with_message;
    use std::collections::HashMap;
    use std::path::Path;

    #[test]
    fn scan_tells_header_from_body() {
        let path = std::env::temp_dir().join(format!("smtpd-scan-{}", std::process::id()));
        let scan_of = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{e}"));
            let f = File::open(&path).unwrap_or_else(|e| panic!("{e}"));
            let c = scan(&f, bytes.len() as u64).unwrap_or_else(|e| panic!("{e}"));
            (c.eight_bit, c.utf8_header)
        };
        assert_eq!(scan_of(b"Subject: a\n\nb\n"), (false, false));
        assert_eq!(scan_of("Subject: a\n\nü\n".as_bytes()), (true, false));
        assert_eq!(scan_of("Subject: ü\n\nb\n".as_bytes()), (true, true));
        // No body: all of it is header.
        assert_eq!(scan_of("Subject: a\nX: ü".as_bytes()), (true, true));
        // An empty line first: no header at all.
        assert_eq!(scan_of("\nSubject: ü\n".as_bytes()), (true, false));
        // The header goes on past the first read (64 KiB).
        let mut long = b"X: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 70_000));
        long.extend_from_slice("\nY: ü\n\nbody\n".as_bytes());
        assert_eq!(scan_of(&long), (true, true));
        // The empty line that ends it straddles two reads.
        let mut split = vec![b'a'; 65_535];
        split.extend_from_slice("\n\nü".as_bytes());
        split[0] = b'X';
        split[1] = b':';
        assert_eq!(scan_of(&split), (true, false));
        let _ = std::fs::remove_file(&path);
    }

    fn ctx(spool: &Spool) -> Ctx {
        let conf = "listen on 127.0.0.1 port 2525\n\
                    action \"mb\" maildir user nobody\n\
                    match from any for domain \"example.org\" action \"mb\"\n";
        let cfg = crate::config::parse(conf, Path::new("t"), &HashMap::new())
            .unwrap_or_else(|e| panic!("{e}"));
        Ctx {
            spool: spool.clone(),
            cfg: Arc::new(cfg),
            parent: None,
            fs_handle: None,
            held: Vec::new(),
        }
    }

    #[test]
    fn a_notice_is_committed_before_the_removal_of_its_envelope() {
        let (_tmp, spool, id) = spool_with_message("io-round");
        let mut c = ctx(&spool);
        let mut env = spool.load_envelopes(id).unwrap_or_default().remove(0);
        env.sender = "s@example.org".into();
        env.errorline = "550 5.1.1 no such user".into();
        let deliver = DeliverReq {
            id: 9,
            kind: crate::privsep::LocalKind::Mbox,
            user: "nobody".into(),
            sender: String::new(),
            rcpt: "a@b".into(),
            dest: "a@b".into(),
            subaddr_delim: '+',
            forward: false,
            len: 0,
            userbase: None,
            account: None,
        };
        // The notice is written (it reads the message) but waits for the removal.
        let done = c.round(vec![
            IoJob::Open {
                session: 1,
                job: 2,
                msgid: id,
            },
            IoJob::Bounce(
                Notice {
                    env: env.clone(),
                    kind: DsnKind::Failed,
                    hold: true,
                    more: Vec::new(),
                    remote_mta: String::new(),
                },
                1_000_000,
            ),
            IoJob::Deliver(Delivery {
                msgid: id,
                req: deliver,
            }),
        ]);
        assert_eq!(done.len(), 2);
        for d in done {
            match d {
                IoDone::Opened { job, result, .. } => {
                    assert_eq!(job, 2);
                    assert_eq!(
                        result.map(|(_, len, c)| (len, c)).ok(),
                        Some((2, Content::default()))
                    );
                }
                IoDone::Handed { id, result } => {
                    assert_eq!(id, 9);
                    assert_eq!(result, Err("no delivery process".to_string()));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(spool.committed().ok(), Some(vec![id]));
        // The notice, then the removal.
        let done = c.round(vec![IoJob::Write(EnvWrite {
            id: 7,
            msgid: id,
            envs: Vec::new(),
            durable: false,
            removed: vec![env.evpid],
        })]);
        let notice = match &done[..] {
            [IoDone::Bounced {
                evpid,
                result: Ok((m, envs)),
                ..
            }, IoDone::Written {
                id: 7,
                result: Ok(()),
            }] if *evpid == env.evpid && envs[0].rcpt == "s@example.org" => *m,
            other => panic!("unexpected {other:?}"),
        };
        // The original is gone; the notification is queued and reports the failure.
        assert_eq!(spool.committed().ok(), Some(vec![notice]));
        let (f, len) = spool.open_message(notice).unwrap_or_else(|e| panic!("{e}"));
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::Read::take(f, len), &mut text)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains("550 5.1.1 no such user"), "{text}");
    }

    #[test]
    fn envelope_sets_are_installed_whole() {
        let (_tmp, spool, id) = spool_with_message("io-write");
        let mut c = ctx(&spool);
        let mut envs = spool.load_envelopes(id).unwrap_or_default();
        envs[0].retry = 2;
        envs[0].errorline = "451 later".into();
        let done = c.round(vec![IoJob::Write(EnvWrite {
            id: 1,
            msgid: id,
            envs: envs.clone(),
            durable: true,
            removed: Vec::new(),
        })]);
        assert!(matches!(
            done[..],
            [IoDone::Written {
                id: 1,
                result: Ok(())
            }]
        ));
        assert_eq!(spool.load_envelopes(id).ok(), Some(envs));
        let tmp = spool.message_path(id).with_extension("tmp");
        assert!(!tmp.exists());
        // A job the thread cannot take fails with its own completion.
        let failed = IoJob::Expand(ForwardFile {
            env: Envelope::default(),
            owner: "x".into(),
            items: Vec::new(),
        })
        .fail("gone");
        assert!(matches!(failed, IoDone::Expanded { dests: Err(why), .. } if why.contains("gone")));
    }
}
