//! The lookup workers: what an SMTP session waits for that may block runs here, on
//! threads, never on the loop.
//!
//! ```text
//!  loop --submit(key, Job)--> queue --> worker threads (started as needed, up to MAX_THREADS)
//!   ^                                      | expand a recipient: ruleset, tables, getpwnam,
//!   |                                      |   :include: files
//!   |                                      | the spool's free space (statvfs)
//!   |                                      | an edited message rewritten (`queue::rewrite`)
//!   |                                      | a table read again (`smtpctl update table`)
//!   '-- take_done() <-- done list <-- wake '
//! ```
//!
//! OpenSMTPD asks its lookup process; here the jobs are typed values handed between
//! threads, so there is no codec. The password database may be LDAP or sssd behind
//! NSS and stall for seconds, a table process (SQL, Redis, LDAP: `table::Backend`)
//! for up to its timeout: a stalled job holds its thread only. A job that finds no
//! idle thread starts one more, so the next session's lookup is served at once; past
//! `MAX_THREADS` jobs wait their turn. The answer comes back with the caller's key
//! (slab key and generation, as with the commit thread) and the loop is woken through
//! the same `mio::Waker`; an answer whose session is gone is dropped by the loop.

use crate::config::{Config, TableId};
use crate::mail::auth::{AuthResult, Credentials};
use crate::mail::delivery::Delivery;
use crate::mail::{Mailbox, MatchCtx, Peer, Reply};
use crate::queue::edit::Edit;
use crate::queue::spool::Spool;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

/// A question for the lookup workers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Whether the spool can take a message of this many octets (SIZE= or 0).
    Space(u64),
    /// Match a recipient against the ruleset and expand it.
    Rcpt(Box<RcptQuery>),
    /// Whether an authenticated user may use a sender address (`senders <table>`).
    Sender(Box<SenderQuery>),
}

/// A sender address to check: an authenticated user's against the listener's
/// `senders` table, a local user's against its own addresses and the socket's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderQuery {
    /// The `senders` table (always one for an authenticated user; the local socket's
    /// may be none).
    pub table: Option<TableId>,
    /// Who gives the sender.
    pub user: SenderUser,
    /// MAIL FROM.
    pub sender: Mailbox,
}

/// The user whose sender is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderUser {
    /// A user who authenticated (SMTP AUTH) under this name.
    Auth(String),
    /// A plain user submitting through the local socket: the name comes from the
    /// password database on the lookup thread.
    Local {
        /// The client's user id, as the kernel told it (SO_PEERCRED).
        uid: u32,
        /// The server's name for the session, a domain of the user's own address.
        server_name: String,
    },
}

/// Credentials to check (SMTP AUTH): against a credentials table on a lookup thread,
/// or, with no table, against the system's accounts by the privileged parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthCheck {
    /// The credentials table; `None` for the system's accounts.
    pub table: Option<TableId>,
    /// What the client gave.
    pub credentials: Credentials,
}

/// A recipient to resolve, with the facts the ruleset matches on, owned so that the
/// question can go to another thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptQuery {
    /// The client.
    pub client: Peer,
    /// The HELO/EHLO name.
    pub helo: String,
    /// MAIL FROM.
    pub sender: Mailbox,
    /// The recipient.
    pub rcpt: Mailbox,
}

impl Lookup {
    /// The answer when no lookup thread can be asked: a temporary failure (for the
    /// spool's room, as when statvfs(2) fails: the writes will tell).
    pub fn unanswered(&self) -> LookupAnswer {
        match self {
            Lookup::Space(_) => LookupAnswer::Space(true),
            Lookup::Rcpt(_) => LookupAnswer::Rcpt(Err(Reply::LOCAL_ERROR)),
            Lookup::Sender(_) => LookupAnswer::Sender(Err(Reply::LOCAL_ERROR)),
        }
    }
}

impl RcptQuery {
    /// The context the ruleset matches the recipient in.
    pub fn ctx(&self) -> MatchCtx<'_> {
        MatchCtx {
            client: &self.client,
            helo: &self.helo,
            sender: &self.sender,
        }
    }
}

/// The lookup workers' answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupAnswer {
    /// The spool has room.
    Space(bool),
    /// The recipient's deliveries, or the reply refusing it.
    Rcpt(Result<Vec<Delivery>, Reply>),
    /// The sender is the user's, or the reply refusing it.
    Sender(Result<(), Reply>),
}

/// Threads at most: as many lookups may stall at once before the next one waits.
pub const MAX_THREADS: usize = 16;

/// Who asked: the slab key and generation of the session.
pub type Key = (usize, u64);

/// Work for a lookup thread.
#[derive(Debug)]
pub enum Job {
    /// A session's question.
    Session(Lookup),
    /// End-of-message edits to apply to an incoming message.
    Edit(EditJob),
    /// Credentials to check against a table (crypt(3) takes milliseconds).
    Auth(AuthCheck),
    /// A table to read again (`smtpctl update table`).
    Reload(TableId),
    /// The secret of a relay's label (`auth <table>` of a relay action) in a table
    /// process.
    Secret(TableId, String),
}

/// An incoming message to rewrite with its end-of-message edits.
#[derive(Debug)]
pub struct EditJob {
    /// The message.
    pub msgid: u32,
    /// Its length as written so far.
    pub len: u64,
    /// The header and body edits, in order.
    pub edits: Vec<Edit>,
    /// Add `X-Spam: Yes`.
    pub junk: bool,
    /// `senders <t> masquerade`: the address the From fields get.
    pub masquerade: Option<String>,
}

/// The outcome of a [`Job`].
#[derive(Debug)]
pub enum Answer {
    /// For the session that asked (`Session::on_lookup`).
    Session(LookupAnswer),
    /// The outcome of a credentials check.
    Auth(AuthResult),
    /// The outcome of a reload: a line for the administrator, or the error.
    Reloaded(Result<String, String>),
    /// A relay secret (`user:password`), none, or why the table could not answer.
    Secret(Result<Option<String>, String>),
    /// The rewritten message, open for writing at its end, or why it failed.
    Edited {
        /// The message.
        msgid: u32,
        /// The new file.
        result: io::Result<crate::queue::spool::MessageFile>,
    },
}

/// A finished job.
#[derive(Debug)]
pub struct Done {
    /// What the caller passed with the job.
    pub key: Key,
    /// Its outcome.
    pub answer: Answer,
}

impl Job {
    /// The answer when serving the job failed (a bug in it): a temporary failure.
    fn failed(&self) -> Answer {
        match self {
            Job::Session(l) => Answer::Session(l.unanswered()),
            Job::Auth(_) => Answer::Auth(AuthResult::TempFail),
            Job::Reload(_) => Answer::Reloaded(Err("the lookup worker failed".into())),
            Job::Secret(..) => Answer::Secret(Err("the lookup worker failed".into())),
            Job::Edit(e) => Answer::Edited {
                msgid: e.msgid,
                result: Err(io::Error::other("the lookup worker failed")),
            },
        }
    }
}

/// The deliveries of a recipient of a session: a bounce (null sender) to an SRS
/// address, when `srs key` is set, goes to the address it stands for, matched as mail
/// of this host's own; any other recipient as usual.
fn expand_rcpt(
    cfg: &Config,
    ctx: &crate::mail::peer::MatchCtx,
    rcpt: &crate::mail::address::Mailbox,
    now: u64,
) -> Result<Vec<crate::mail::delivery::Delivery>, crate::mail::reply::Reply> {
    use crate::srs::TakenBack;
    if !ctx.sender.is_null() {
        return crate::expand::expand(cfg, ctx, rcpt);
    }
    let to = match crate::srs::take_back(&cfg.srs, rcpt, now) {
        TakenBack::NotSrs => return crate::expand::expand(cfg, ctx, rcpt),
        TakenBack::Invalid => {
            log::warn!("srs: cannot take back {rcpt}: bad hash or expired");
            return crate::expand::expand(cfg, ctx, rcpt);
        }
        TakenBack::Unusable => return Err(crate::mail::reply::Reply::NO_RULE),
        TakenBack::To(to) => to,
    };
    log::info!("srs: {rcpt} taken back to {to}");
    let client = crate::queue::forward::local_client(&ctx.client.server_name);
    let own = crate::mail::peer::MatchCtx {
        client: &client,
        helo: ctx.helo,
        sender: ctx.sender,
    };
    crate::expand::expand(cfg, &own, &to)
}

/// Serves a job the daemon's way: the ruleset and expansion over `cfg`, the spool.
pub fn serve(cfg: &Config, spool: &Spool, job: Job) -> Answer {
    match job {
        Job::Session(Lookup::Space(size)) => {
            Answer::Session(LookupAnswer::Space(spool.has_space(size)))
        }
        Job::Session(Lookup::Rcpt(q)) => Answer::Session(LookupAnswer::Rcpt(expand_rcpt(
            cfg,
            &q.ctx(),
            &q.rcpt,
            crate::srs::now(),
        ))),
        Job::Session(Lookup::Sender(q)) => {
            let owned = sender_owned(cfg, &q);
            Answer::Session(LookupAnswer::Sender(match owned {
                Ok(true) => Ok(()),
                Ok(false) => Err(Reply::SENDER_NOT_OWNED),
                Err(e) => {
                    log::warn!("senders: {e}");
                    Err(Reply::LOCAL_ERROR)
                }
            }))
        }
        Job::Auth(c) => Answer::Auth(match c.table.and_then(|t| cfg.tables.get(t)) {
            Some(t) => {
                crate::credentials::check_table(t, &c.credentials.user, &c.credentials.password)
            }
            None => AuthResult::TempFail,
        }),
        Job::Secret(t, label) => Answer::Secret(match cfg.tables.get(t) {
            Some(t) => t
                .lookup(crate::table::Service::Credentials, &label)
                .map_err(|e| e.to_string()),
            None => Ok(None),
        }),
        Job::Reload(t) => Answer::Reloaded(match cfg.tables.get(t) {
            Some(t) => t.reload().map_err(|e| e.to_string()),
            None => Err(format!("no table {t}")),
        }),
        Job::Edit(e) => Answer::Edited {
            msgid: e.msgid,
            result: spool.edit_incoming(e.msgid, e.len, &e.edits, e.junk, e.masquerade.as_deref()),
        },
    }
}

type Queued = (Key, Job, Option<Arc<Config>>);
/// How a job is served: under the configuration it was submitted under, if any.
type Serve = dyn Fn(Option<&Config>, Job) -> Answer + Send + Sync;

struct Shared {
    rx: Mutex<mpsc::Receiver<Queued>>,
    done: Mutex<Vec<Done>>,
    serve: Box<Serve>,
    wake: Box<dyn Fn() + Send + Sync>,
    /// Threads running.
    threads: AtomicUsize,
    /// Threads waiting for a job (from before they wait until they hold one).
    idle: AtomicUsize,
    /// Jobs submitted and not yet taken by a thread.
    queued: AtomicUsize,
    max: usize,
}

/// The lookup threads' handle, owned by the loop.
pub struct Lookups {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl Lookups {
    /// Starts the lookup threads of the daemon, serving jobs with [`serve`]; `wake` is
    /// called after each answer.
    pub fn start(
        cfg: Arc<Config>,
        spool: Spool,
        wake: impl Fn() + Send + Sync + 'static,
    ) -> io::Result<Lookups> {
        Lookups::with(
            move |under, job| serve(under.unwrap_or(&cfg), &spool, job),
            wake,
            MAX_THREADS,
        )
    }

    /// Starts lookup threads that serve jobs with `serve` (told the configuration a
    /// job was submitted under, if not the default), at most `max` of them (at least
    /// one).
    pub fn with(
        serve: impl Fn(Option<&Config>, Job) -> Answer + Send + Sync + 'static,
        wake: impl Fn() + Send + Sync + 'static,
        max: usize,
    ) -> io::Result<Lookups> {
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            rx: Mutex::new(rx),
            done: Mutex::new(Vec::new()),
            serve: Box::new(serve),
            wake: Box::new(wake),
            threads: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            max: max.max(1),
        });
        // One thread from the start: a daemon that cannot start it does not start.
        spawn(&shared)?;
        Ok(Lookups { tx, shared })
    }

    /// Queues a job; `key` comes back in its [`Done`]. A thread is started when every
    /// thread is busy (a stalled lookup holds its thread only). False when the job
    /// cannot be served.
    pub fn submit(&self, key: Key, job: Job) -> bool {
        self.queue(key, job, None)
    }

    /// [`Lookups::submit`], served under `cfg` (the configuration the session that
    /// asks started under, which a reload may have replaced since).
    pub fn submit_under(&self, key: Key, job: Job, cfg: &Arc<Config>) -> bool {
        self.queue(key, job, Some(cfg.clone()))
    }

    fn queue(&self, key: Key, job: Job, cfg: Option<Arc<Config>>) -> bool {
        let s = &self.shared;
        let queued = s.queued.fetch_add(1, SeqCst) + 1;
        if self.tx.send((key, job, cfg)).is_err() {
            s.queued.fetch_sub(1, SeqCst);
            return false;
        }
        if queued > s.idle.load(SeqCst) && s.threads.load(SeqCst) < s.max {
            if let Err(e) = spawn(s) {
                // The threads there are serve it, later.
                log::warn!("lookup: cannot start a thread: {e}");
            }
        }
        s.threads.load(SeqCst) > 0
    }

    /// Takes the finished jobs.
    pub fn take_done(&self) -> Vec<Done> {
        let mut d = self
            .shared
            .done
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut *d)
    }

    /// Threads running.
    pub fn threads(&self) -> usize {
        self.shared.threads.load(SeqCst)
    }
}

fn spawn(shared: &Arc<Shared>) -> io::Result<()> {
    let s = shared.clone();
    s.threads.fetch_add(1, SeqCst);
    std::thread::Builder::new()
        .name("lookup".into())
        .spawn(move || work(&s))
        .map(drop)
        .inspect_err(|_| {
            shared.threads.fetch_sub(1, SeqCst);
        })
}

fn work(s: &Shared) {
    loop {
        s.idle.fetch_add(1, SeqCst);
        let next = s.rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
        // Busy before the job leaves the count of queued ones: a submit in between
        // starts a thread too many rather than one too few.
        s.idle.fetch_sub(1, SeqCst);
        let Ok((key, job, cfg)) = next else {
            // The loop is gone.
            s.threads.fetch_sub(1, SeqCst);
            return;
        };
        s.queued.fetch_sub(1, SeqCst);
        let fallback = job.failed();
        let answer = catch_unwind(AssertUnwindSafe(|| (s.serve)(cfg.as_deref(), job)))
            .unwrap_or_else(|_| {
                log::error!("lookup: a job panicked");
                fallback
            });
        s.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Done { key, answer });
        (s.wake)();
    }
}

/// Whether the user of `q` may give its sender: an authenticated user by the
/// `senders` table; a local user when it is its own address (or `<>`), else by the
/// socket's `senders` table. A uid the password database does not know owns nothing.
fn sender_owned(cfg: &Config, q: &SenderQuery) -> Result<bool, crate::table::TableError> {
    let delim = cfg.smtp.sub_addr_delim;
    let table = q.table.and_then(|t| cfg.tables.get(t));
    let user = match &q.user {
        SenderUser::Auth(name) => name.clone(),
        SenderUser::Local { uid, server_name } => {
            let Some(name) = crate::sys::user_name(*uid) else {
                log::warn!("smtp local sender refused uid={uid}: no such user");
                return Ok(false);
            };
            let host = crate::config::default_hostname();
            let domains = [server_name.as_str(), host.as_str(), "localhost"];
            if crate::credentials::is_own_sender(&name, &q.sender, &domains, delim) {
                return Ok(true);
            }
            name
        }
    };
    match table {
        Some(t) => crate::credentials::may_send_as(t, &user, &q.sender, delim),
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::address::Mailbox;
    use crate::mail::peer::Peer;
    use crate::mail::reply::Reply;
    use std::sync::mpsc::Receiver;
    use std::time::Duration;

    fn rcpt(local: &str) -> Job {
        Job::Session(Lookup::Rcpt(Box::new(RcptQuery {
            client: Peer {
                addr: None,
                local: true,
                server_name: "mx.example.org".into(),
                tag: None,
                hostname: None,
                tls: false,
                auth: None,
            },
            helo: "c".into(),
            sender: Mailbox::default(),
            rcpt: Mailbox {
                local: local.into(),
                domain: "example.org".into(),
            },
        })))
    }

    /// Lookups whose jobs for "stall" wait until `release` is sent to; every other
    /// recipient is unknown. Wakes are counted on the returned receiver.
    fn stalling(max: usize) -> (Lookups, mpsc::Sender<()>, Receiver<()>) {
        let (release, held) = mpsc::channel::<()>();
        let held = Mutex::new(held);
        let (woke, wakes) = mpsc::channel::<()>();
        let woke = Mutex::new(woke);
        let l = Lookups::with(
            move |_, job| {
                if let Job::Session(Lookup::Rcpt(q)) = &job {
                    if q.rcpt.local == "stall" {
                        let _ = held.lock().map(|h| h.recv_timeout(Duration::from_secs(10)));
                    }
                    if q.rcpt.local == "panic" {
                        panic!("a bug");
                    }
                }
                Answer::Session(LookupAnswer::Rcpt(Err(Reply::UNKNOWN_USER)))
            },
            move || {
                let _ = woke.lock().map(|w| w.send(()));
            },
            max,
        )
        .unwrap();
        (l, release, wakes)
    }

    /// The keys answered after the next wake (bounded wait).
    fn next_done(l: &Lookups, wakes: &Receiver<()>) -> Vec<Key> {
        wakes.recv_timeout(Duration::from_secs(10)).unwrap();
        l.take_done().into_iter().map(|d| d.key).collect()
    }

    #[test]
    fn a_stalled_job_holds_only_its_thread() {
        let (l, release, wakes) = stalling(4);
        assert!(l.submit((1, 1), rcpt("stall")));
        assert!(l.submit((2, 1), rcpt("quick")));
        assert_eq!(next_done(&l, &wakes), [(2, 1)]);
        assert!(l.submit((3, 1), rcpt("quick")));
        assert_eq!(next_done(&l, &wakes), [(3, 1)]);
        release.send(()).unwrap();
        assert_eq!(next_done(&l, &wakes), [(1, 1)]);
        assert!(l.threads() <= 4);
    }

    #[test]
    fn threads_are_bounded_and_jobs_wait_for_one() {
        let (l, release, wakes) = stalling(2);
        assert!(l.submit((1, 1), rcpt("stall")));
        assert!(l.submit((2, 1), rcpt("stall")));
        assert!(l.submit((3, 1), rcpt("quick")));
        assert_eq!(l.threads(), 2);
        assert_eq!(wakes.recv_timeout(Duration::from_millis(100)).ok(), None);
        release.send(()).unwrap();
        let mut keys = next_done(&l, &wakes);
        while keys.len() < 2 {
            keys.extend(next_done(&l, &wakes));
        }
        assert!(keys.contains(&(3, 1)), "{keys:?}");
        release.send(()).unwrap();
        while keys.len() < 3 {
            keys.extend(next_done(&l, &wakes));
        }
        keys.sort();
        assert_eq!(keys, [(1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn a_panicking_job_is_answered_with_a_temporary_failure() {
        let (l, _release, wakes) = stalling(1);
        assert!(l.submit((5, 2), rcpt("panic")));
        wakes.recv_timeout(Duration::from_secs(10)).unwrap();
        let done = l.take_done();
        assert!(matches!(
            done.as_slice(),
            [Done { key: (5, 2), answer: Answer::Session(LookupAnswer::Rcpt(Err(r))) }]
                if r.code == 451
        ));
        // The thread goes on.
        assert!(l.submit((6, 2), rcpt("quick")));
        assert_eq!(next_done(&l, &wakes), [(6, 2)]);
    }
}
