//! The engine's side of delivery: the scheduler's index, dispatch of due envelopes to
//! the parent (local) or the LMTP client, results, retries, expiry and bounces.
//!
//! Delivery is at least once: an envelope is removed from the spool only after its
//! delivery succeeded. A crash between the two delivers it again after restart.

use crate::config::{Action, Config, Method};
use crate::expand::{expand, Dest};
use crate::mda::Outcome;
use crate::mta::client::Proto;
use crate::mta::conn::Target;
use crate::privsep::{DeliverReq, DeliverRes, LocalKind, MAX_MSG};
use crate::queue::bounce::{self, Dsn, DsnKind, RcptReport};
use crate::queue::envelope::{new_evpid, Envelope};
use crate::queue::scheduler::{backoff, AfterTempfail, Entry, RunState, Scheduler};
use crate::queue::spool::{CommitJob, Spool};
use crate::smtp::command::Mailbox;
use crate::smtp::session::{Client, MatchCtx};
use std::collections::HashMap;
use std::io::BufReader;
use std::os::fd::{AsRawFd, OwnedFd};

/// Local deliveries in flight at most.
const MAX_INFLIGHT: usize = 50;
/// Bytes of the original message returned in a bounce (RET=FULL).
const BOUNCE_MAX_BODY: usize = 1024 * 1024;

/// Counters for `smtpctl show stats` and `monitor`.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Envelopes delivered.
    pub delivered: u64,
    /// Temporary failures.
    pub tempfail: u64,
    /// Permanent failures.
    pub permfail: u64,
    /// Envelopes expired.
    pub expired: u64,
    /// Bounces generated.
    pub bounces: u64,
    /// Envelopes removed by hand.
    pub removed: u64,
}

/// The engine's queue manager.
pub struct Queue {
    /// The schedule.
    pub sched: Scheduler,
    /// Counters.
    pub stats: Stats,
    /// `pause mda`.
    pub paused_mda: bool,
    /// `pause mta`.
    pub paused_mta: bool,
    spool: Spool,
    parent: Option<OwnedFd>,
    inflight: HashMap<u64, Envelope>,
    next_req: u64,
    /// Messages made by the daemon (bounces), waiting to be committed.
    pub jobs: Vec<CommitJob>,
    /// Deliveries for an SMTP/LMTP client, waiting to be connected by the loop.
    pub mta_jobs: Vec<MtaJob>,
}

/// An envelope to hand to an outgoing SMTP or LMTP session.
#[derive(Debug)]
pub struct MtaJob {
    /// Where to connect.
    pub target: Target,
    /// SMTP or LMTP.
    pub proto: Proto,
    /// The address given in RCPT TO.
    pub rcpt: String,
    /// The name given in EHLO/LHLO.
    pub helo: String,
    /// The envelope.
    pub env: Envelope,
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether an action's envelopes go through the parent (else a client in the loop).
fn is_local(action: Option<&Action>) -> bool {
    action.is_none_or(|a| a.method.is_local())
}

impl Queue {
    /// A queue over `spool`, delivering through the parent channel `parent`.
    pub fn new(spool: Spool, parent: Option<OwnedFd>) -> Queue {
        Queue {
            sched: Scheduler::new(),
            stats: Stats::default(),
            paused_mda: false,
            paused_mta: false,
            spool,
            parent,
            inflight: HashMap::new(),
            next_req: 1,
            jobs: Vec::new(),
            mta_jobs: Vec::new(),
        }
    }

    /// The parent channel's descriptor, to register with the poller.
    pub fn parent_fd(&self) -> Option<i32> {
        self.parent.as_ref().map(|f| f.as_raw_fd())
    }

    /// Rebuilds the schedule from the spool at start.
    pub fn load(&mut self, cfg: &Config) -> std::io::Result<usize> {
        let now = now_secs();
        let mut n = 0;
        for (msgid, envs) in self.spool.load_all()? {
            let envs = match envs {
                Ok(envs) => envs,
                Err(e) => {
                    log::warn!("queue: message {msgid:08x} unreadable ({e}): moved to corrupt/");
                    let _ = self.spool.quarantine_corrupt(msgid);
                    continue;
                }
            };
            for env in envs {
                let action = cfg.actions.iter().find(|a| a.name == env.action);
                let local = is_local(action);
                let ttl = action
                    .and_then(|a| a.ttl)
                    .unwrap_or(cfg.queue.ttl)
                    .as_secs();
                let due = if env.retry == 0 {
                    now
                } else {
                    env.last_try
                        .saturating_add(backoff(local, env.retry))
                        .min(env.ctime.saturating_add(ttl))
                };
                self.sched.insert(
                    env.evpid,
                    Entry {
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
                        warnings: 0,
                    },
                );
                n += 1;
            }
        }
        Ok(n)
    }

    /// Adds envelopes that were just committed.
    pub fn add_committed(&mut self, cfg: &Config, envs: &[Envelope]) {
        let now = now_secs();
        for env in envs {
            let action = cfg.actions.iter().find(|a| a.name == env.action);
            let ttl = action
                .and_then(|a| a.ttl)
                .unwrap_or(cfg.queue.ttl)
                .as_secs();
            self.sched
                .add_new(env.evpid, env.ctime, ttl, is_local(action), now);
            if env.held {
                log::info!("{:016x} held in the queue: {}", env.evpid, env.errorline);
                self.sched.hold(env.evpid);
            }
        }
    }

    /// The next time the schedule wants to run, in Unix seconds.
    pub fn next_due(&mut self) -> Option<u64> {
        if self.paused_mda && self.paused_mta {
            return None;
        }
        self.sched.next_due()
    }

    /// Dispatches the envelopes that are due.
    pub fn run(&mut self, cfg: &Config) {
        let now = now_secs();
        let room = MAX_INFLIGHT.saturating_sub(self.sched.inflight());
        if room == 0 {
            return;
        }
        for evpid in self
            .sched
            .take_due(now, room, !self.paused_mda, !self.paused_mta)
        {
            self.dispatch(cfg, evpid, now);
        }
    }

    fn dispatch(&mut self, cfg: &Config, evpid: u64, now: u64) {
        let env = match self.spool.load_envelope(evpid) {
            Ok(e) => e,
            Err(e) => {
                log::warn!("queue: envelope {evpid:016x} unreadable: {e}");
                self.sched.remove(evpid);
                let _ = self.spool.quarantine_corrupt((evpid >> 32) as u32);
                return;
            }
        };
        let Some(action) = cfg.actions.iter().find(|a| a.name == env.action) else {
            let why = format!("no action named {:?} in the configuration", env.action);
            return self.finish(cfg, env, Outcome::TempFail(why), now);
        };
        let Some(dest) = Dest::decode(&env.dest) else {
            let why = format!("bad destination {:?}", env.dest);
            return self.finish(cfg, env, Outcome::PermFail(why), now);
        };
        let override_user = (!env.user.is_empty()).then(|| env.user.clone());
        let default_user = || {
            override_user
                .clone()
                .or_else(|| action.user.clone())
                .unwrap_or_else(|| {
                    if crate::sys::geteuid() == 0 {
                        crate::config::UNPRIVILEGED_USER.to_string()
                    } else {
                        crate::sys::getpwuid_name().unwrap_or_default()
                    }
                })
        };
        let (kind, user) = match (&dest, &action.method) {
            (Dest::User(u), Method::Maildir { path, junk }) => (
                LocalKind::Maildir {
                    path: path.clone(),
                    junk: *junk,
                },
                action.user.clone().unwrap_or_else(|| u.clone()),
            ),
            (Dest::User(u), Method::Mbox) => (
                LocalKind::Mbox,
                action.user.clone().unwrap_or_else(|| u.clone()),
            ),
            (Dest::User(u), Method::Mda(cmd)) => (
                LocalKind::Mda(cmd.clone()),
                action.user.clone().unwrap_or_else(|| u.clone()),
            ),
            (Dest::File(p), _) => (LocalKind::File(p.clone()), default_user()),
            (Dest::Pipe(c), _) => (LocalKind::Pipe(c.clone()), default_user()),
            (Dest::User(_), Method::ForwardOnly) if env.no_forward => {
                return self.finish(
                    cfg,
                    env,
                    Outcome::PermFail(
                        "forwarding loop: the .forward leads back to its user".into(),
                    ),
                    now,
                );
            }
            (Dest::User(u), Method::ForwardOnly) => (LocalKind::ForwardOnly, u.clone()),
            (Dest::User(_), Method::ExpandOnly) => {
                return self.finish(
                    cfg,
                    env,
                    Outcome::PermFail(
                        "no mailbox delivery for this action (expand-only or forward-only)".into(),
                    ),
                    now,
                );
            }
            (Dest::User(u), Method::Lmtp { dest, rcpt_to }) => {
                let rcpt = if *rcpt_to {
                    env.rcpt.clone()
                } else {
                    u.clone()
                };
                let dest = dest.clone();
                let helo = cfg.hostname.clone();
                return self.mta_job(cfg, env, &dest, 24, Proto::Lmtp, rcpt, helo, now);
            }
            (
                Dest::Relay(addr),
                Method::Relay {
                    host: Some(h),
                    helo,
                },
            ) => {
                let (rcpt, h) = (addr.clone(), h.clone());
                let helo = helo.clone().unwrap_or_else(|| cfg.hostname.clone());
                return self.mta_job(cfg, env, &h, 25, Proto::Smtp, rcpt, helo, now);
            }
            (Dest::Relay(_), _) | (Dest::User(_), Method::Relay { .. }) => {
                return self.finish(
                    cfg,
                    env,
                    Outcome::TempFail(
                        "relaying needs 'relay host': MX lookups are not available".into(),
                    ),
                    now,
                );
            }
        };
        let (file, len) = match self.spool.open_message(env.msgid()) {
            Ok(f) => f,
            Err(e) => {
                return self.finish(
                    cfg,
                    env,
                    Outcome::TempFail(format!("cannot open message: {e}")),
                    now,
                )
            }
        };
        let Some(chan) = self.parent.as_ref().map(|p| p.as_raw_fd()) else {
            return self.finish(
                cfg,
                env,
                Outcome::TempFail("no delivery process".into()),
                now,
            );
        };
        let id = self.next_req;
        self.next_req += 1;
        // The address delivered, for the `%{dest}` formats: the recipient itself when
        // it names this user (so a sub-address survives), else the user at the
        // recipient's domain.
        let dest_addr = match (&dest, env.rcpt.rsplit_once('@')) {
            (Dest::User(u), Some((l, d))) => {
                let base = crate::ruleset::strip_subaddress(l, cfg.smtp.sub_addr_delim);
                if base.eq_ignore_ascii_case(u) {
                    env.rcpt.clone()
                } else {
                    format!("{u}@{d}")
                }
            }
            (Dest::User(u), None) => u.clone(),
            _ => env.rcpt.clone(),
        };
        let forward = matches!(dest, Dest::User(_)) && !env.no_forward;
        let req = DeliverReq {
            id,
            kind,
            user,
            sender: env.sender.clone(),
            rcpt: env.rcpt.clone(),
            dest: dest_addr,
            subaddr_delim: cfg.smtp.sub_addr_delim,
            forward,
            len,
        };
        if let Err(e) = crate::sys::send_msg(chan, &req.encode(), Some(file.as_raw_fd())) {
            return self.finish(
                cfg,
                env,
                Outcome::TempFail(format!("cannot reach the delivery process: {e}")),
                now,
            );
        }
        self.inflight.insert(id, env);
    }

    #[allow(clippy::too_many_arguments)]
    fn mta_job(
        &mut self,
        cfg: &Config,
        env: Envelope,
        dest: &str,
        port: u16,
        proto: Proto,
        rcpt: String,
        helo: String,
        now: u64,
    ) {
        match Target::parse(dest, port) {
            Ok((target, p)) => self.mta_jobs.push(MtaJob {
                target,
                proto: p.unwrap_or(proto),
                rcpt,
                helo,
                env,
            }),
            Err(e) => self.finish(
                cfg,
                env,
                Outcome::PermFail(format!("destination {dest:?}: {e}")),
                now,
            ),
        }
    }

    /// Sends a message to the parent (filter kill requests).
    pub fn ask_parent(&self, msg: &[u8]) {
        if let Some(fd) = self.parent.as_ref().map(|p| p.as_raw_fd()) {
            if let Err(e) = crate::sys::send_msg(fd, msg, None) {
                log::warn!("queue: cannot reach the parent: {e}");
            }
        }
    }

    /// Reads results from the parent; filter sockets it hands over go to `handed`.
    pub fn on_parent(&mut self, cfg: &Config, handed: &mut Vec<(usize, OwnedFd)>) -> bool {
        let Some(fd) = self.parent.as_ref().map(|p| p.as_raw_fd()) else {
            return false;
        };
        let mut buf = vec![0u8; MAX_MSG];
        loop {
            match crate::sys::recv_msg(fd, &mut buf) {
                Ok((0, _)) => {
                    log::error!("queue: the parent process is gone");
                    self.parent = None;
                    return false;
                }
                Ok((n, Some(fd))) if buf.first() == Some(&b'F') => {
                    match crate::privsep::decode_filter_id(&buf[..n]) {
                        Some(id) => handed.push((id, fd)),
                        None => log::warn!("queue: malformed filter handover ignored"),
                    }
                }
                Ok((n, _)) => match DeliverRes::decode(&buf[..n]) {
                    Some(res) => {
                        if let Some(env) = self.inflight.remove(&res.id) {
                            self.finish(cfg, env, res.outcome, now_secs());
                        }
                    }
                    None => log::warn!("queue: malformed result from the parent ignored"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("queue: parent channel: {e}");
                    return false;
                }
            }
        }
    }

    /// Applies a delivery outcome to an envelope.
    pub fn finish(&mut self, cfg: &Config, mut env: Envelope, outcome: Outcome, now: u64) {
        let evpid = env.evpid;
        match outcome {
            Outcome::Forward(items) => self.forward(cfg, env, items, now),
            Outcome::Ok => {
                self.stats.delivered += 1;
                log::info!(
                    "{evpid:016x} mda delivery evpid={evpid:016x} from=<{}> to=<{}> dest={} result=Ok",
                    env.sender,
                    env.rcpt,
                    env.dest
                );
                if env.dsn_notify & crate::smtp::command::notify::SUCCESS != 0 {
                    env.errorline = "250 2.0.0 delivered".into();
                    self.bounce(cfg, &env, DsnKind::Delivered, now);
                }
                self.remove(evpid);
            }
            Outcome::TempFail(text) => {
                self.stats.tempfail += 1;
                env.retry += 1;
                env.last_try = now;
                env.errorline = text.clone();
                match self.sched.tempfail(evpid, now) {
                    Some(AfterTempfail::RetryAt(at)) => {
                        log::info!(
                            "{evpid:016x} mda delivery evpid={evpid:016x} from=<{}> to=<{}> result=TempFail retry-in={}s stat={text:?}",
                            env.sender,
                            env.rcpt,
                            at.saturating_sub(now)
                        );
                        if let Err(e) = self.spool.update_envelope(&env) {
                            log::warn!("queue: cannot update {evpid:016x}: {e}");
                        }
                        let intervals: Vec<u64> = cfg
                            .queue
                            .warn_intervals
                            .iter()
                            .map(|d| d.as_secs())
                            .collect();
                        if self.sched.needs_warning(evpid, now, &intervals)
                            && notify_wants(&env, crate::smtp::command::notify::DELAY)
                        {
                            self.sched.warned(evpid);
                            self.bounce(cfg, &env, DsnKind::Delayed, now);
                        }
                    }
                    Some(AfterTempfail::Expired) | None => {
                        self.stats.expired += 1;
                        log::info!(
                            "{evpid:016x} mda delivery evpid={evpid:016x} from=<{}> to=<{}> result=Expired stat={text:?}",
                            env.sender,
                            env.rcpt
                        );
                        env.errorline =
                            format!("554 5.4.7 expired after {} attempts: {text}", env.retry);
                        self.bounce(cfg, &env, DsnKind::Failed, now);
                        self.remove(evpid);
                    }
                }
            }
            Outcome::PermFail(text) => {
                self.stats.permfail += 1;
                log::info!(
                    "{evpid:016x} mda delivery evpid={evpid:016x} from=<{}> to=<{}> result=PermFail stat={text:?}",
                    env.sender,
                    env.rcpt
                );
                env.errorline = text;
                self.bounce(cfg, &env, DsnKind::Failed, now);
                self.remove(evpid);
            }
        }
    }

    /// Replaces an envelope by the destinations of its user's `.forward`.
    fn forward(&mut self, cfg: &Config, env: Envelope, items: Vec<String>, now: u64) {
        let owner = match Dest::decode(&env.dest) {
            Some(Dest::User(u)) => u,
            _ => {
                return self.finish(
                    cfg,
                    env,
                    Outcome::PermFail("forward from a non-user destination".into()),
                    now,
                )
            }
        };
        let client = Client {
            addr: None,
            local: true,
            server_name: env.hostname.clone(),
            tag: None,
            hostname: None,
        };
        let sender = match env.sender.rsplit_once('@') {
            Some((l, d)) => Mailbox {
                local: l.into(),
                domain: d.into(),
            },
            None => Mailbox::default(),
        };
        let ctx = MatchCtx {
            client: &client,
            helo: &env.helo,
            sender: &sender,
        };
        let Some(action_id) = cfg.actions.iter().position(|a| a.name == env.action) else {
            return self.finish(cfg, env, Outcome::TempFail("action gone".into()), now);
        };
        let mut new: Vec<Envelope> = Vec::new();
        let push =
            |dest: Dest, action: usize, user: &str, no_forward: bool, new: &mut Vec<Envelope>| {
                let taken: Vec<u64> = new
                    .iter()
                    .map(|e| e.evpid)
                    .chain(std::iter::once(env.evpid))
                    .collect();
                new.push(Envelope {
                    evpid: new_evpid(env.msgid(), &taken),
                    dest: dest.encode(),
                    action: cfg.actions[action].name.clone(),
                    user: user.to_string(),
                    no_forward,
                    retry: 0,
                    last_try: 0,
                    errorline: String::new(),
                    ..env.clone()
                });
            };
        for item in &items {
            if let Some(name) = item.strip_prefix('\\') {
                push(
                    Dest::User(name.to_ascii_lowercase()),
                    action_id,
                    "",
                    true,
                    &mut new,
                );
            } else if let Some(cmd) = item.strip_prefix('|') {
                push(
                    Dest::Pipe(cmd.trim().to_string()),
                    action_id,
                    &owner,
                    false,
                    &mut new,
                );
            } else if item.starts_with('/') {
                push(Dest::File(item.clone()), action_id, &owner, false, &mut new);
            } else {
                let m = match item.rsplit_once('@') {
                    Some((l, d)) => Mailbox {
                        local: l.into(),
                        domain: d.to_ascii_lowercase(),
                    },
                    None if item.eq_ignore_ascii_case(&owner) => {
                        push(Dest::User(owner.clone()), action_id, "", true, &mut new);
                        continue;
                    }
                    None => Mailbox {
                        local: item.clone(),
                        domain: "localhost".into(),
                    },
                };
                match expand(cfg, &ctx, &m) {
                    Ok(ds) => {
                        for d in ds {
                            let loops = d.dest == Dest::User(owner.clone());
                            push(d.dest, d.action, "", loops, &mut new);
                        }
                    }
                    Err(r) => log::warn!(
                        "{:016x} .forward of {owner}: {item}: {}",
                        env.evpid,
                        r.summary()
                    ),
                }
            }
        }
        if new.is_empty() {
            return self.finish(
                cfg,
                env,
                Outcome::PermFail(format!(
                    "the .forward of {owner} names no usable destination"
                )),
                now,
            );
        }
        if let Err(e) = self.spool.add_envelopes(env.msgid(), &new) {
            return self.finish(
                cfg,
                env,
                Outcome::TempFail(format!("cannot expand .forward: {e}")),
                now,
            );
        }
        log::info!(
            "{:016x} forward of {owner} to {} destination(s)",
            env.evpid,
            new.len()
        );
        self.remove(env.evpid);
        self.add_committed(cfg, &new);
    }

    fn remove(&mut self, evpid: u64) {
        self.sched.remove(evpid);
        if let Err(e) = self.spool.remove_envelope(evpid) {
            log::warn!("queue: cannot remove {evpid:016x}: {e}");
        }
    }

    /// Removes envelopes by hand (`smtpctl remove`); returns how many.
    pub fn remove_by_hand(&mut self, ids: &[u64]) -> usize {
        let mut n = 0;
        for &id in ids {
            if self
                .sched
                .get(id)
                .is_some_and(|e| e.state != RunState::Inflight)
            {
                self.remove(id);
                self.stats.removed += 1;
                n += 1;
            }
        }
        n
    }

    /// Queues a delivery status notification about `env` to its sender.
    fn bounce(&mut self, cfg: &Config, env: &Envelope, kind: DsnKind, now: u64) {
        let wanted = match kind {
            DsnKind::Failed => crate::smtp::command::notify::FAILURE,
            DsnKind::Delayed => crate::smtp::command::notify::DELAY,
            DsnKind::Delivered => crate::smtp::command::notify::SUCCESS,
        };
        if env.sender.is_empty() {
            log::info!("{:016x} bounce not sent: the sender is <>", env.evpid);
            return;
        }
        if !notify_wants(env, wanted) {
            log::info!("{:016x} bounce not sent: NOTIFY excludes it", env.evpid);
            return;
        }
        match self.make_bounce(cfg, env, kind, now) {
            Ok(job) => {
                self.stats.bounces += 1;
                log::info!(
                    "{:016x} bounce msgid={:08x} kind={} to=<{}>",
                    env.evpid,
                    job.msgid,
                    kind.action(),
                    env.sender
                );
                self.jobs.push(job);
            }
            Err(e) => log::warn!(
                "{:016x} bounce to <{}> not queued: {e}",
                env.evpid,
                env.sender
            ),
        }
    }

    fn make_bounce(
        &self,
        cfg: &Config,
        env: &Envelope,
        kind: DsnKind,
        now: u64,
    ) -> Result<CommitJob, String> {
        let (local, domain) = env.sender.rsplit_once('@').ok_or("sender has no domain")?;
        let to = Mailbox {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        };
        let client = Client {
            addr: None,
            local: true,
            server_name: env.hostname.clone(),
            tag: None,
            hostname: None,
        };
        let null = Mailbox::default();
        let ctx = MatchCtx {
            client: &client,
            helo: &cfg.hostname,
            sender: &null,
        };
        let deliveries = expand(cfg, &ctx, &to).map_err(|r| r.summary())?;
        let original = self
            .spool
            .open_message(env.msgid())
            .map_err(|e| e.to_string())?;
        let date = crate::sys::rfc5322_date(now as i64);
        let arrival = crate::sys::rfc5322_date(env.ctime as i64);
        let retry_until =
            crate::sys::rfc5322_date(env.ctime.saturating_add(cfg.queue.ttl.as_secs()) as i64);
        let report = RcptReport::from_envelope(env, kind, &date, Some(&retry_until));
        let (msgid, mut file) = self.spool.create_message().map_err(|e| e.to_string())?;
        let token = crate::sys::random_u64();
        let message_id = format!("{token:016x}.{msgid:08x}@{}", cfg.hostname);
        let boundary = format!("{token:016x}/{}", cfg.hostname);
        let dsn = Dsn {
            kind,
            reporting_mta: &cfg.hostname,
            from_host: &cfg.hostname,
            to: &env.sender,
            date: &date,
            message_id: &message_id,
            boundary: &boundary,
            envid: &env.dsn_envid,
            arrival_date: &arrival,
            ret_full: bounce::return_full(kind, &env.dsn_ret),
            rcpts: std::slice::from_ref(&report),
        };
        let (original, len) = original;
        let result = bounce::render(
            &dsn,
            &mut BufReader::new(std::io::Read::take(original, len)),
            BOUNCE_MAX_BODY,
        )
        .and_then(|bytes| self.spool.write_data(&mut file, 0, &bytes));
        if let Err(e) = result {
            self.spool.discard(msgid);
            return Err(e.to_string());
        }
        let mut envs: Vec<Envelope> = Vec::with_capacity(deliveries.len());
        for d in &deliveries {
            let taken: Vec<u64> = envs.iter().map(|e| e.evpid).collect();
            envs.push(Envelope {
                evpid: new_evpid(msgid, &taken),
                ctime: now,
                sender: String::new(),
                rcpt: env.sender.clone(),
                dest: d.dest.encode(),
                action: cfg.actions[d.action].name.clone(),
                helo: cfg.hostname.clone(),
                client: "local".into(),
                hostname: cfg.hostname.clone(),
                ..Envelope::default()
            });
        }
        match self.spool.prepare_commit(msgid, file, &envs) {
            Ok(job) => Ok(job),
            Err(e) => {
                self.spool.discard(msgid);
                Err(e.to_string())
            }
        }
    }
}

/// Whether the recipient's NOTIFY asks for this kind of report (FAILURE and DELAY are
/// the default when NOTIFY was not given).
fn notify_wants(env: &Envelope, bit: u8) -> bool {
    use crate::smtp::command::notify;
    if env.dsn_notify == 0 {
        return bit != notify::SUCCESS;
    }
    env.dsn_notify & notify::NEVER == 0 && env.dsn_notify & bit != 0
}
