//! The queue manager: a pure machine over the envelopes of the queue.
//!
//! Events come in as calls: envelopes read back at start ([`Manager::load`]) or
//! committed ([`Manager::committed`]), the time ([`Manager::run`], Unix seconds passed
//! in), delivery results (from the parent, from outgoing sessions), completions of the
//! spool I/O thread (envelopes written, notifications queued, forward files expanded)
//! and control commands. What must be done comes out as [`Effect`]s, taken with
//! [`Manager::take_actions`]: hand a local delivery to the parent, open an outgoing
//! session and give it jobs, write a message's envelopes, notify a sender, expand a
//! forward file, log. No file, socket or clock here; `event_loop/queue.rs` performs the
//! actions and feeds back their completions.
//!
//! ```text
//! loaded, committed -> Queued (the schedule: pending or held)
//! Queued --due--> Local (parent) | Session (a job of an outgoing session)
//!   delivered, failed for good, expired -> Removing --written--> forgotten
//!   failed for now -> Queued, due later (and written)
//!   forward file -> Expanding --destinations--> Removing, and new envelopes
//!                   Adding --written durably--> Queued
//! Queued --smtpctl remove--> Removing
//! ```
//! The envelopes are kept in memory: the manager knows each message's whole set, and
//! every write carries that set as it stands, or removes the message when none is left.
//! A message has at most one write in flight; changes made meanwhile mark it dirty and go
//! in the next one, so the spool sees a message's writes in order and one write covers
//! the results that came together. The I/O thread takes jobs in order, so a
//! notification, which reads the message, is made before the removal that follows it.

mod health;
mod mta;
mod notices;
mod outcomes;
mod stats;
pub use health::RouteState;
use stats::method_label;
pub use stats::Stats;
pub mod plan;
#[cfg(test)]
mod tests;
mod writes;

use crate::config::Config;
use crate::mail::params::notify;
use crate::mda::Outcome;
use crate::mta::client::{Job, Rcpt};
use crate::nexthop::Route;
use crate::privsep::DeliverReq;
use crate::queue::bounce::DsnKind;
use crate::queue::envelope::Envelope;
use crate::queue::scheduler::{backoff, AfterTempfail, Pick, RunState, Scheduled, Scheduler};
use log::Level;
use plan::Plan;
use std::collections::HashMap;
use std::sync::Arc;
use writes::{Msg, WriteRec};

/// Envelopes given to outgoing sessions (or waiting for one) at most.
pub const MAX_SESSION_ENVELOPES: usize = 1000;

/// A local delivery to hand to the parent.
#[derive(Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The message, to open and pass with the request.
    pub msgid: u32,
    /// The request; its `len` is the opener's to fill.
    pub req: DeliverReq,
}

/// A message's whole envelope set to write; none removes the message.
#[derive(Debug, PartialEq, Eq)]
pub struct EnvWrite {
    /// Given back in the completion ([`Manager::written`]).
    pub id: u64,
    /// The message.
    pub msgid: u32,
    /// Its envelopes.
    pub envs: Vec<Envelope>,
    /// The renaming must reach the disk before the completion.
    pub durable: bool,
    /// The envelopes it removes (their notices are committed before it).
    pub removed: Vec<u64>,
}

/// A notification to queue to the sender of an envelope.
#[derive(Debug, PartialEq, Eq)]
pub struct Notice {
    /// The envelope reported on, its last error set.
    pub env: Envelope,
    /// Failure, delay or success.
    pub kind: DsnKind,
    /// Commit it with the message's next write, which follows (else at once): a
    /// notice of failure or success before that write removes its envelope, a delay
    /// notice after that write records it (smtpd.8, Crash points).
    pub hold: bool,
    /// Other envelopes of the same message reported in the same notice (the relayed
    /// recipients of one job), removed by the same write.
    pub more: Vec<Envelope>,
    /// The server that took the message, for `Remote-MTA`, or empty.
    pub remote_mta: String,
}

/// A user's forward file, whose destinations are to be looked up.
#[derive(Debug, PartialEq, Eq)]
pub struct ForwardFile {
    /// The user's envelope.
    pub env: Envelope,
    /// The user.
    pub owner: String,
    /// The lines of the file.
    pub items: Vec<String>,
}

/// What the glue must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Effect {
    /// Open the message and hand the request with it to the parent; answered by
    /// [`Manager::handed`], then [`Manager::local_result`].
    Deliver(Delivery),
    /// Start outgoing session `session` to `route`; it ends with
    /// [`Manager::session_closed`].
    Connect {
        /// The session's id.
        session: u64,
        /// Where to.
        route: Route,
    },
    /// Give `job` (of message `msgid`) to session `session`; answered by
    /// [`Manager::job_done`] (or [`Manager::session_closed`]).
    Send {
        /// The session.
        session: u64,
        /// The message to open for it.
        msgid: u32,
        /// The job.
        job: Job,
    },
    /// Session `session` has nothing more to do: QUIT once its jobs are over.
    Quit {
        /// The session.
        session: u64,
    },
    /// Write a message's envelopes; answered by [`Manager::written`].
    Write(EnvWrite),
    /// Queue a notification; answered by [`Manager::bounced`].
    Bounce(Notice),
    /// Look up where a forward file leads; answered by [`Manager::expanded`].
    Expand(ForwardFile),
    /// Log a line.
    Log(Level, String),
}

/// Where an envelope stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the schedule (pending or held).
    Queued,
    /// Handed to the parent under this request id.
    Local(u64),
    /// In this job of an outgoing session.
    Session(u64),
    /// Its forward file's destinations are being looked up.
    Expanding,
    /// Made from a forward file: waits for its durable write.
    Adding,
    /// Over: waits for its removal to be written.
    Removing,
}

#[derive(Debug)]
struct Slot {
    env: Envelope,
    state: State,
}

/// The due recipients of one message on one route: the jobs of a run.
struct Group {
    route: Route,
    /// What its jobs share: the message, its sender and parameters.
    head: Job,
    /// Envelope and recipient of each.
    rcpts: Vec<(u64, Rcpt)>,
}

/// The queue manager.
pub struct Manager {
    cfg: Arc<Config>,
    default_user: String,
    sched: Scheduler,
    envs: HashMap<u64, Slot>,
    msgs: HashMap<u32, Msg>,
    /// Messages to write once their write in flight is done.
    dirty: Vec<u32>,
    /// Local deliveries by request id.
    local: HashMap<u64, u64>,
    writes: HashMap<u64, WriteRec>,
    mta: mta::Sessions,
    next_id: u64,
    out: Vec<Effect>,
    /// Counters.
    pub stats: Stats,
    /// `pause mda`: LMTP and local deliveries wait.
    pub paused_mda: bool,
    /// `pause mta`: relaying waits.
    pub paused_mta: bool,
}

/// Whether the recipient's NOTIFY asks for this kind of report (FAILURE and DELAY are
/// the default when NOTIFY was not given).
fn notify_wants(env: &Envelope, bit: u8) -> bool {
    if env.dsn_notify == 0 {
        return bit != notify::SUCCESS;
    }
    env.dsn_notify & notify::NEVER == 0 && env.dsn_notify & bit != 0
}

impl Manager {
    /// Plans what comes due from now on with `cfg` (a reload): envelopes name their
    /// action, which the new configuration may have changed or removed.
    pub fn set_config(&mut self, cfg: Arc<Config>) {
        self.mta.config = cfg.mta.clone();
        self.cfg = cfg;
    }

    /// A manager for the actions of `cfg`; `default_user` runs file and pipe
    /// destinations when nothing else names a user.
    pub fn new(cfg: Arc<Config>, default_user: String) -> Manager {
        let mta = mta::Sessions::new(cfg.mta.clone());
        Manager {
            cfg,
            default_user,
            sched: Scheduler::new(),
            envs: HashMap::new(),
            msgs: HashMap::new(),
            dirty: Vec::new(),
            local: HashMap::new(),
            writes: HashMap::new(),
            mta,
            next_id: 1,
            out: Vec::new(),
            stats: Stats::default(),
            paused_mda: false,
            paused_mta: false,
        }
    }

    /// The actions to perform, in order.
    #[must_use]
    pub fn take_actions(&mut self) -> Vec<Effect> {
        self.flush_writes();
        std::mem::take(&mut self.out)
    }

    fn log(&mut self, level: Level, line: String) {
        self.out.push(Effect::Log(level, line));
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Envelopes known and not removed.
    pub fn len(&self) -> usize {
        self.envs
            .values()
            .filter(|s| s.state != State::Removing)
            .count()
    }

    /// The creation time (seconds since the epoch) of the oldest envelope known.
    pub fn oldest(&self) -> Option<u64> {
        self.envs
            .values()
            .filter(|s| s.state != State::Removing)
            .map(|s| s.env.ctime)
            .min()
    }

    /// Whether no envelope is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Envelopes handed out and not answered.
    pub fn inflight(&self) -> usize {
        self.sched.inflight()
    }

    /// Outgoing sessions open.
    pub fn sessions(&self) -> usize {
        self.mta.len()
    }

    /// Writes in flight or waiting: the spool is behind the manager until none is.
    pub fn writing(&self) -> bool {
        !self.writes.is_empty() || !self.dirty.is_empty()
    }

    /// An envelope in the queue.
    pub fn envelope(&self, evpid: u64) -> Option<&Envelope> {
        self.envs
            .get(&evpid)
            .filter(|s| s.state != State::Removing)
            .map(|s| &s.env)
    }

    /// Every envelope in the queue with its state (`pending`, `held` or `inflight`),
    /// in envelope id order.
    pub fn listing(&self) -> Vec<(&Envelope, &'static str)> {
        let mut v: Vec<(&Envelope, &'static str)> = self
            .envs
            .values()
            .filter_map(|s| {
                let state = match s.state {
                    State::Removing => return None,
                    State::Queued | State::Adding => match self.sched.get(s.env.evpid) {
                        Some(e) if e.state == RunState::Held => "held",
                        _ => "pending",
                    },
                    State::Local(_) | State::Session(_) | State::Expanding => "inflight",
                };
                Some((&s.env, state))
            })
            .collect();
        v.sort_unstable_by_key(|(e, _)| e.evpid);
        v
    }

    fn insert(&mut self, env: Envelope, state: State) {
        let msgid = env.msgid();
        let m = self.msgs.entry(msgid).or_default();
        if !m.evpids.contains(&env.evpid) {
            m.evpids.push(env.evpid);
        }
        self.envs.insert(env.evpid, Slot { env, state });
    }

    /// Puts an envelope in the schedule, due at `due`.
    fn schedule_at(&mut self, env: &Envelope, due: u64) {
        let local = plan::is_local(&self.cfg, &env.action);
        let ttl = plan::ttl(&self.cfg, &env.action);
        self.sched.insert(
            env.evpid,
            Scheduled {
                due,
                retry: env.retry,
                ctime: env.ctime,
                expire: env.ctime.saturating_add(ttl),
                local,
                state: if env.held {
                    RunState::Held
                } else {
                    RunState::Pending
                },
                warnings: env.warnings,
            },
        );
    }

    /// The envelopes of one message, read back from the spool at start: due at once
    /// when never tried, else after their retry delay (never after their expiry).
    pub fn load(&mut self, envs: Vec<Envelope>, now: u64) {
        for env in envs {
            let due = if env.retry == 0 {
                now
            } else {
                let local = plan::is_local(&self.cfg, &env.action);
                let ttl = plan::ttl(&self.cfg, &env.action);
                env.last_try
                    .saturating_add(backoff(local, env.retry))
                    .min(env.ctime.saturating_add(ttl))
            };
            self.schedule_at(&env, due);
            self.insert(env, State::Queued);
        }
    }

    /// Envelopes just committed (a message received, a notification queued): due now,
    /// or held when a filter held the message.
    pub fn committed(&mut self, envs: &[Envelope], now: u64) {
        for env in envs {
            self.schedule_at(env, now);
            if env.held {
                self.log(
                    Level::Info,
                    format!("{:016x} held in the queue: {}", env.evpid, env.errorline),
                );
            }
            self.insert(env.clone(), State::Queued);
        }
    }

    /// The next time the schedule wants to run, in Unix seconds.
    pub fn next_due(&mut self) -> Option<u64> {
        if self.paused_mda && self.paused_mta {
            return None;
        }
        self.sched.next_due()
    }

    /// Dispatches what is due at `now`, within the bounds: `mda limit max-session`
    /// local deliveries (50 by default) and [`MAX_SESSION_ENVELOPES`] envelopes in
    /// outgoing sessions.
    pub fn run(&mut self, now: u64) {
        let mut local_room = self.cfg.mda.max_session.saturating_sub(self.local.len());
        let mut mta_room = MAX_SESSION_ENVELOPES.saturating_sub(self.mta.envelopes());
        let (mda, mta) = (!self.paused_mda, !self.paused_mta);
        let (envs, cfg) = (&self.envs, &self.cfg);
        let taken = self.sched.take_due_by(now, |evpid, e| {
            if local_room == 0 && mta_room == 0 {
                return Pick::Stop;
            }
            if (e.local && !mda) || (!e.local && !mta) {
                return Pick::Skip;
            }
            let room = match envs.get(&evpid) {
                Some(s) if plan::via_session(cfg, &s.env.action) => &mut mta_room,
                _ => &mut local_room,
            };
            if *room == 0 {
                return Pick::Skip;
            }
            *room -= 1;
            Pick::Take
        });
        // Recipients for sessions, by route and message, in the order taken.
        let mut groups: Vec<Group> = Vec::new();
        for evpid in taken {
            let Some(slot) = self.envs.get(&evpid) else {
                self.sched.remove(evpid);
                continue;
            };
            match plan::plan(&self.cfg, &self.default_user, &slot.env) {
                Plan::Fail(o) => self.finish(evpid, o, now),
                Plan::Local(mut req) => {
                    let id = self.id();
                    req.id = id;
                    self.local.insert(id, evpid);
                    self.set_state(evpid, State::Local(id));
                    self.out.push(Effect::Deliver(Delivery {
                        msgid: (evpid >> 32) as u32,
                        req,
                    }));
                }
                Plan::Mta(route, addr) => {
                    if let Some(why) = self.mta.closed_route(&route, now) {
                        self.mta.deferred(&route, evpid);
                        self.finish(evpid, Outcome::TempFail(why), now);
                        continue;
                    }
                    let e = &slot.env;
                    let msgid = e.msgid();
                    let rcpt = Rcpt {
                        addr,
                        notify: e.dsn_notify,
                        orcpt: e.dsn_orcpt.clone(),
                        original: e.rcpt.clone(),
                    };
                    match groups
                        .iter_mut()
                        .find(|g| g.head.msgid == msgid && g.route == route)
                    {
                        Some(g) => g.rcpts.push((evpid, rcpt)),
                        None => groups.push(Group {
                            route,
                            head: Job {
                                msgid,
                                sender: e.sender.clone(),
                                body_8bit: e.body_8bit,
                                smtputf8: e.smtputf8,
                                requiretls: e.requiretls,
                                body_binary: e.body_binary,
                                ret: e.dsn_ret.clone(),
                                envid: e.dsn_envid.clone(),
                                ..Job::default()
                            },
                            rcpts: vec![(evpid, rcpt)],
                        }),
                    }
                }
            }
        }
        for mut g in groups {
            // In the order the client gave them.
            if let Some(m) = self.msgs.get(&g.head.msgid) {
                g.rcpts
                    .sort_by_key(|(e, _)| m.evpids.iter().position(|x| x == e));
            }
            let placed = self
                .mta
                .add(&g.route, &g.head, g.rcpts, &mut self.next_id, &mut self.out);
            for (evpid, job) in placed {
                self.set_state(evpid, State::Session(job));
            }
        }
    }

    fn set_state(&mut self, evpid: u64, state: State) {
        if let Some(s) = self.envs.get_mut(&evpid) {
            s.state = state;
        }
    }

    /// The parent got local delivery `id` (`Ok`), or it could not be handed over: a
    /// temporary failure.
    pub fn handed(&mut self, id: u64, r: Result<(), String>, now: u64) {
        if let Err(why) = r {
            if let Some(evpid) = self.local.remove(&id) {
                self.finish(evpid, Outcome::TempFail(why), now);
            }
        }
    }

    /// The parent's result of local delivery `id`.
    pub fn local_result(&mut self, id: u64, outcome: Outcome, now: u64) {
        if let Some(evpid) = self.local.remove(&id) {
            self.finish(evpid, outcome, now);
        }
    }

    /// Applies a delivery outcome to an envelope in flight.
    fn finish(&mut self, evpid: u64, outcome: Outcome, now: u64) {
        self.finish_as(evpid, outcome, true, now);
    }

    /// Applies a delivery outcome; a delivery sends the success notice the recipient
    /// asked for only with `notice` (else it is passed on, or reported with others).
    fn finish_as(&mut self, evpid: u64, outcome: Outcome, notice: bool, now: u64) {
        let Some(slot) = self.envs.get_mut(&evpid) else {
            return;
        };
        if matches!(slot.state, State::Removing | State::Adding) {
            return;
        }
        slot.state = State::Queued;
        let env = &mut slot.env;
        let (from, to) = (env.sender.clone(), env.rcpt.clone());
        let result = match outcome {
            Outcome::Forward(_) => None,
            Outcome::Ok => Some("ok"),
            Outcome::TempFail(_) => Some("tempfail"),
            Outcome::PermFail(_) => Some("permfail"),
        };
        if let Some(result) = result {
            let method = method_label(&self.cfg, env);
            *self.stats.by_method.entry((method, result)).or_default() += 1;
        }
        match outcome {
            Outcome::Forward(items) => self.forward(evpid, items, now),
            Outcome::Ok => {
                self.stats.delivered += 1;
                let line = format!(
                    "{evpid:016x} mda delivery evpid={evpid:016x} from=<{from}> to=<{to}> dest={} result=Ok",
                    env.dest
                );
                let success = notice && env.dsn_notify & notify::SUCCESS != 0;
                if success {
                    env.errorline = "250 2.0.0 delivered".into();
                }
                self.log(Level::Info, line);
                if success {
                    self.bounce(evpid, DsnKind::Delivered);
                }
                self.remove(evpid);
            }
            Outcome::TempFail(text) => {
                self.stats.tempfail += 1;
                env.retry += 1;
                env.last_try = now;
                env.errorline = text.clone();
                let msgid = env.msgid();
                match self.sched.tempfail(evpid, now) {
                    Some(AfterTempfail::RetryAt(at)) => {
                        self.log(Level::Info, format!(
                            "{evpid:016x} mda delivery evpid={evpid:016x} from=<{from}> to=<{to}> result=TempFail retry-in={}s stat={text:?}",
                            at.saturating_sub(now)
                        ));
                        self.dirty(msgid, false);
                        let intervals: Vec<u64> = self
                            .cfg
                            .queue
                            .warn_intervals
                            .iter()
                            .map(|d| d.as_secs())
                            .collect();
                        let wants = self
                            .envs
                            .get(&evpid)
                            .is_some_and(|s| notify_wants(&s.env, notify::DELAY));
                        if self.sched.needs_warning(evpid, now, &intervals) && wants {
                            // Recorded durably before the notice is queued: a restart
                            // does not send it again (smtpd.8, Crash points).
                            self.sched.warned(evpid);
                            if let Some(s) = self.envs.get_mut(&evpid) {
                                s.env.warnings += 1;
                            }
                            self.dirty(msgid, true);
                            self.bounce(evpid, DsnKind::Delayed);
                        }
                    }
                    Some(AfterTempfail::Expired) | None => {
                        self.stats.expired += 1;
                        env.errorline =
                            format!("554 5.4.7 expired after {} attempts: {text}", env.retry);
                        self.log(Level::Info, format!(
                            "{evpid:016x} mda delivery evpid={evpid:016x} from=<{from}> to=<{to}> result=Expired stat={text:?}"
                        ));
                        self.bounce(evpid, DsnKind::Failed);
                        self.remove(evpid);
                    }
                }
            }
            Outcome::PermFail(text) => {
                self.stats.permfail += 1;
                let line = format!(
                    "{evpid:016x} mda delivery evpid={evpid:016x} from=<{from}> to=<{to}> result=PermFail stat={text:?}"
                );
                env.errorline = text;
                self.log(Level::Info, line);
                self.bounce(evpid, DsnKind::Failed);
                self.remove(evpid);
            }
        }
    }

    /// The envelope is over: it leaves the schedule and its removal is written.
    fn remove(&mut self, evpid: u64) {
        self.sched.remove(evpid);
        self.set_state(evpid, State::Removing);
        self.dirty((evpid >> 32) as u32, false);
    }

    /// Every envelope id known (not removed), sorted: for control targets.
    pub fn ids(&self) -> Vec<u64> {
        self.listing().iter().map(|(e, _)| e.evpid).collect()
    }

    /// `smtpctl schedule`: makes envelopes due now; a held one is released for good (its
    /// release is written). Returns how many.
    pub fn schedule(&mut self, ids: &[u64], now: u64) -> usize {
        let mut released = Vec::new();
        for id in ids {
            if let Some(s) = self.envs.get_mut(id) {
                if s.state == State::Queued && s.env.held {
                    s.env.held = false;
                    released.push(s.env.msgid());
                }
            }
        }
        for msgid in released {
            self.dirty(msgid, false);
        }
        let ids: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| self.envs.get(id).is_some_and(|s| s.state == State::Queued))
            .collect();
        // Trying now means trying now: the routes of these envelopes are reopened.
        for id in &ids {
            if let Some(s) = self.envs.get(id) {
                if let Plan::Mta(route, _) = plan::plan(&self.cfg, &self.default_user, &s.env) {
                    self.mta.reopen_route(&route);
                }
            }
        }
        self.sched.schedule(&ids, now)
    }

    /// `smtpctl remove` (and a commit withdrawn): removes envelopes not in flight.
    /// Returns how many.
    pub fn remove_by_hand(&mut self, ids: &[u64]) -> usize {
        let mut n = 0;
        for &id in ids {
            let queued = self.envs.get(&id).is_some_and(|s| s.state == State::Queued);
            if queued && self.sched.get(id).is_some() {
                self.remove(id);
                self.stats.removed += 1;
                n += 1;
            }
        }
        n
    }
}
