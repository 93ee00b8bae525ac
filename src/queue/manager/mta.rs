//! Outgoing sessions as the queue manager sees them: which job goes on which
//! connection.
//!
//! The due recipients of one message on one route make jobs of at most
//! [`MAX_RCPT`] recipients, one transaction each. A job goes to an open session of its
//! route that has fewer than [`QUEUE_PER_SESSION`] jobs waiting (the least busy), else
//! to a new session while the route has fewer than its `max-conn-per-route` and the
//! daemon fewer than [`MAX_SESSIONS`], else to the least busy session of the route, or
//! waits for a session to end. A session carries at most `session-mail-max` jobs;
//! one with no job left and none waiting for its route is told to quit.
//!
//! Each route has a health. A route that never delivered, or whose last session failed
//! before any verdict of its server, opens one session at a time (slow start). Each
//! such failure in a row keeps it closed for 15 s × failures² (at most an hour): its
//! due envelopes are deferred without a connection. The envelopes deferred this way
//! (up to `mta max-deferred`) are tried again as soon as the route delivers.

use super::Effect;
use crate::config::relay::{MtaConfig, MtaLimits};
use crate::mta::client::{Job, MAX_RCPT};
use crate::nexthop::{Route, Target};
use std::collections::{HashMap, VecDeque};

/// Outgoing connections at once.
pub const MAX_SESSIONS: usize = 50;
/// Jobs waiting on a session before the next job of its route opens another one.
pub const QUEUE_PER_SESSION: usize = 10;
/// Longest a failing route stays closed, in seconds.
const MAX_BACKOFF: u64 = 3600;

/// How a route has fared.
#[derive(Debug, Default, Clone)]
pub struct Health {
    /// Sessions in a row that failed before any verdict of the server.
    pub failures: u32,
    /// Closed until then (Unix seconds).
    pub until: u64,
    /// Why the last session failed.
    pub why: String,
    /// Some session delivered once.
    pub proven: bool,
    /// Envelopes deferred by its failures, to try again when it delivers.
    deferred: VecDeque<u64>,
}

/// A route's state for `smtpctl show routes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteState {
    /// The route.
    pub route: Route,
    /// Sessions open.
    pub sessions: usize,
    /// Jobs waiting for a session.
    pub waiting: usize,
    /// Failures in a row.
    pub failures: u32,
    /// Closed until then (Unix seconds), 0 when open.
    pub until: u64,
    /// Why it last failed.
    pub why: String,
}

#[derive(Debug)]
struct Session {
    route: Route,
    /// Jobs given and not over.
    busy: usize,
    /// Jobs given in all.
    given: usize,
    /// Told to quit: takes no more jobs.
    closing: bool,
    /// Its server gave a verdict on a job.
    worked: bool,
}

/// A job and the envelopes of its recipients (in the job's order).
#[derive(Debug)]
pub(super) struct JobRec {
    /// The session carrying it, none while it waits for one.
    pub session: Option<u64>,
    /// The message.
    pub msgid: u32,
    /// The envelope of each recipient.
    pub evpids: Vec<u64>,
    /// Its route.
    pub route: Route,
    job: Job,
}

/// Every outgoing session and job.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    sessions: HashMap<u64, Session>,
    jobs: HashMap<u64, JobRec>,
    /// Jobs waiting for a session, oldest first.
    backlog: VecDeque<u64>,
    /// Envelopes in jobs.
    envelopes: usize,
    /// `mta` settings.
    config: MtaConfig,
    /// The health of each route that has been used.
    health: HashMap<Route, Health>,
}

impl Sessions {
    /// Envelopes given to sessions or waiting for one.
    pub fn envelopes(&self) -> usize {
        self.envelopes
    }

    /// Outgoing sessions open.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions with the `mta` settings of the configuration.
    pub fn new(config: MtaConfig) -> Sessions {
        Sessions {
            config,
            ..Sessions::default()
        }
    }

    fn limits(&self, route: &Route) -> MtaLimits {
        match &route.target {
            Target::Mx(d) => self.config.limits_for(Some(d)),
            _ => self.config.limits_for(None),
        }
    }

    /// Why `route` takes no session at `now`, when it is closed after failures.
    pub fn closed_route(&self, route: &Route, now: u64) -> Option<String> {
        let h = self.health.get(route)?;
        (now < h.until).then(|| {
            format!(
                "delivery suspended for {}s after {} failed connections: {}",
                h.until - now,
                h.failures,
                h.why
            )
        })
    }

    /// Keeps `evpid`, deferred for `route`'s failure, to try again when it delivers.
    pub fn deferred(&mut self, route: &Route, evpid: u64) {
        let max = self.config.max_deferred;
        let h = self.health.entry(route.clone()).or_default();
        if h.deferred.len() < max && !h.deferred.contains(&evpid) {
            h.deferred.push_back(evpid);
        }
    }

    /// Every route used, with its state, sorted by action and target.
    pub fn routes(&self) -> Vec<RouteState> {
        let mut out: Vec<RouteState> = self
            .health
            .iter()
            .map(|(r, h)| RouteState {
                route: r.clone(),
                sessions: self.sessions.values().filter(|s| s.route == *r).count(),
                waiting: self
                    .backlog
                    .iter()
                    .filter(|j| self.jobs.get(j).is_some_and(|x| x.route == *r))
                    .count(),
                failures: h.failures,
                until: h.until,
                why: h.why.clone(),
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.route.action, format!("{:?}", a.route.target))
                .cmp(&(&b.route.action, format!("{:?}", b.route.target)))
        });
        out
    }

    /// Opens `route` if it was suspended (`smtpctl schedule`).
    pub fn reopen_route(&mut self, route: &Route) {
        if let Some(h) = self.health.get_mut(route) {
            h.until = 0;
        }
    }

    /// Opens the routes whose target names `domain` (`smtpctl schedule domain`); returns
    /// the envelopes they had deferred.
    pub fn reopen(&mut self, domain: &str) -> Vec<u64> {
        let mut out = Vec::new();
        for (r, h) in self.health.iter_mut() {
            let name = match &r.target {
                Target::Mx(d) | Target::Tcp(d, _) => d,
                Target::Unix(p) => p,
            };
            if name.eq_ignore_ascii_case(domain) {
                h.until = 0;
                out.extend(h.deferred.drain(..));
            }
        }
        out
    }

    /// Makes jobs of the due recipients `rcpts` (envelope, address) of message `msgid`
    /// on `route`, and gives them to sessions. `next_id` numbers jobs and sessions.
    pub fn add(
        &mut self,
        route: &Route,
        msgid: u32,
        sender: &str,
        rcpts: Vec<(u64, String)>,
        next_id: &mut u64,
        out: &mut Vec<Effect>,
    ) -> Vec<(u64, u64)> {
        let mut placed = Vec::new();
        for chunk in rcpts.chunks(MAX_RCPT) {
            let id = take_id(next_id);
            let (evpids, addrs): (Vec<u64>, Vec<String>) = chunk.iter().cloned().unzip();
            placed.extend(evpids.iter().map(|&e| (e, id)));
            self.envelopes += evpids.len();
            self.jobs.insert(
                id,
                JobRec {
                    session: None,
                    msgid,
                    evpids,
                    route: route.clone(),
                    job: Job {
                        id,
                        sender: sender.to_string(),
                        rcpts: addrs,
                    },
                },
            );
            self.assign(id, next_id, out);
        }
        placed
    }

    /// Puts job `id` on a session, or in the backlog.
    fn assign(&mut self, id: u64, next_id: &mut u64, out: &mut Vec<Effect>) {
        let Some(rec) = self.jobs.get(&id) else {
            return;
        };
        let limits = self.limits(&rec.route);
        let per_session = limits.session_mail_max;
        // Slow start: one session until the route has delivered, or after a failure.
        let per_route = match self.health.get(&rec.route) {
            Some(h) if h.proven && h.failures == 0 => limits.max_conn_per_route,
            _ => 1,
        };
        let open = |s: &Session| !s.closing && s.given < per_session;
        let least = self
            .sessions
            .iter()
            .filter(|(_, s)| s.route == rec.route && open(s))
            .min_by_key(|(k, s)| (s.busy, **k))
            .map(|(&k, s)| (k, s.busy));
        let on_route = self
            .sessions
            .values()
            .filter(|s| s.route == rec.route)
            .count();
        let may_open = on_route < per_route && self.sessions.len() < MAX_SESSIONS;
        let session = match least {
            Some((k, busy)) if busy < QUEUE_PER_SESSION || !may_open => k,
            _ if may_open => {
                let k = take_id(next_id);
                self.sessions.insert(
                    k,
                    Session {
                        route: rec.route.clone(),
                        busy: 0,
                        given: 0,
                        closing: false,
                        worked: false,
                    },
                );
                self.health.entry(rec.route.clone()).or_default();
                out.push(Effect::Connect {
                    session: k,
                    route: rec.route.clone(),
                });
                k
            }
            _ => {
                self.backlog.push_back(id);
                return;
            }
        };
        if let (Some(s), Some(rec)) = (self.sessions.get_mut(&session), self.jobs.get_mut(&id)) {
            s.busy += 1;
            s.given += 1;
            rec.session = Some(session);
            out.push(Effect::Send {
                session,
                msgid: rec.msgid,
                job: rec.job.clone(),
            });
        }
    }

    /// Job `id` is over (`verdict`: its server answered it); returns it, with the
    /// envelopes its route had deferred when this is the route's first verdict after
    /// failures. Its session gets a waiting job of its route, or is told to quit when
    /// it has nothing left.
    pub fn done(
        &mut self,
        id: u64,
        verdict: bool,
        next_id: &mut u64,
        out: &mut Vec<Effect>,
    ) -> Option<(JobRec, Vec<u64>)> {
        let rec = self.jobs.get(&id)?;
        let mut retry = Vec::new();
        if verdict {
            let h = self.health.entry(rec.route.clone()).or_default();
            h.failures = 0;
            h.until = 0;
            h.proven = true;
            retry = h.deferred.drain(..).collect();
            if let Some(s) = rec.session.and_then(|k| self.sessions.get_mut(&k)) {
                s.worked = true;
            }
        }
        let rec = self.job_over(id, next_id, out)?;
        Some((rec, retry))
    }

    /// The route of session `k`.
    pub fn route_of(&self, k: u64) -> Option<Route> {
        self.sessions.get(&k).map(|s| s.route.clone())
    }

    /// Job `id` is over; returns it. Its session gets a waiting job of its route, or is
    /// told to quit when it has nothing left.
    fn job_over(&mut self, id: u64, next_id: &mut u64, out: &mut Vec<Effect>) -> Option<JobRec> {
        let rec = self.jobs.remove(&id)?;
        self.backlog.retain(|&j| j != id);
        self.envelopes = self.envelopes.saturating_sub(rec.evpids.len());
        let Some(k) = rec.session else {
            return Some(rec);
        };
        let Some(s) = self.sessions.get_mut(&k) else {
            return Some(rec);
        };
        s.busy = s.busy.saturating_sub(1);
        if s.busy > 0 || s.closing {
            return Some(rec);
        }
        let route = s.route.clone();
        let waiting = self
            .backlog
            .iter()
            .position(|j| self.jobs.get(j).is_some_and(|r| r.route == route));
        let per_session = self.limits(&route).session_mail_max;
        let Some(s) = self.sessions.get_mut(&k) else {
            return Some(rec);
        };
        match waiting {
            Some(at) if s.given < per_session => {
                if let Some(j) = self.backlog.remove(at) {
                    self.assign(j, next_id, out);
                }
            }
            _ => {
                s.closing = true;
                out.push(Effect::Quit { session: k });
            }
        }
        Some(rec)
    }

    /// Session `k` is ending: it takes no more jobs.
    pub fn closing(&mut self, k: u64) {
        if let Some(s) = self.sessions.get_mut(&k) {
            s.closing = true;
        }
    }

    /// Session `k` ended (`why` when it failed): returns the jobs it had not finished
    /// (to fail), and gives the backlog the room it left. A session that was given jobs
    /// and ended before any verdict of its server counts against its route.
    pub fn closed(
        &mut self,
        k: u64,
        why: &str,
        now: u64,
        next_id: &mut u64,
        out: &mut Vec<Effect>,
    ) -> Vec<JobRec> {
        let Some(session) = self.sessions.remove(&k) else {
            return Vec::new();
        };
        if !session.worked && session.given > 0 {
            let h = self.health.entry(session.route.clone()).or_default();
            h.failures = h.failures.saturating_add(1);
            let f = u64::from(h.failures);
            h.until = now + (15 * f * f).min(MAX_BACKOFF);
            h.why = why.to_string();
        }
        let ids: Vec<u64> = self
            .jobs
            .iter()
            .filter(|(_, r)| r.session == Some(k))
            .map(|(&j, _)| j)
            .collect();
        let mut lost = Vec::new();
        for j in ids {
            if let Some(rec) = self.jobs.remove(&j) {
                self.envelopes = self.envelopes.saturating_sub(rec.evpids.len());
                lost.push(rec);
            }
        }
        for _ in 0..self.backlog.len() {
            let Some(j) = self.backlog.pop_front() else {
                break;
            };
            self.assign(j, next_id, out);
        }
        lost
    }
}

fn take_id(next_id: &mut u64) -> u64 {
    let id = *next_id;
    *next_id += 1;
    id
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexthop::Proto;

    fn route(port: u16) -> Route {
        Route {
            action: "out".into(),
            target: Target::Tcp("127.0.0.1".into(), port),
            proto: Proto::Smtp,
            helo: "me.example".into(),
            security: crate::nexthop::Security::Plain,
            label: None,
        }
    }

    fn connects(out: &[Effect]) -> Vec<u64> {
        out.iter()
            .filter_map(|a| match a {
                Effect::Connect { session, .. } => Some(*session),
                _ => None,
            })
            .collect()
    }

    fn sends(out: &[Effect]) -> Vec<(u64, u64)> {
        out.iter()
            .filter_map(|a| match a {
                Effect::Send { session, job, .. } => Some((*session, job.id)),
                _ => None,
            })
            .collect()
    }

    fn add_one(s: &mut Sessions, port: u16, m: u32, id: &mut u64, out: &mut Vec<Effect>) {
        s.add(
            &route(port),
            m,
            "",
            vec![(u64::from(m) << 32, "a@b".into())],
            id,
            out,
        );
    }

    /// A route that delivered once: its first job answered by the server.
    fn proven(s: &mut Sessions, port: u16, id: &mut u64) {
        let mut out = Vec::new();
        add_one(s, port, 9999, id, &mut out);
        let (_, job) = sends(&out)[0];
        assert!(s.done(job, true, id, &mut out).is_some());
    }

    #[test]
    fn a_busy_route_opens_more_sessions_up_to_its_bound() {
        let (mut s, mut id, mut out) = (Sessions::default(), 1, Vec::new());
        let max = MtaLimits::default().max_conn_per_route;
        // A new route: one session, whatever waits (slow start).
        for m in 0..30 {
            add_one(&mut s, 25, m, &mut id, &mut out);
        }
        assert_eq!(connects(&out).len(), 1);
        proven(&mut s, 25, &mut id);
        out.clear();
        for m in 0..(QUEUE_PER_SESSION * max + 5) as u32 {
            add_one(&mut s, 25, 100 + m, &mut id, &mut out);
        }
        assert_eq!(connects(&out).len(), max - 1);
        // Beyond, jobs go to the least busy session rather than wait.
        assert_eq!(sends(&out).len(), QUEUE_PER_SESSION * max + 5);
        assert!(s.backlog.is_empty());
    }

    #[test]
    fn limits_per_domain() {
        let mut cfg = MtaConfig::default();
        let mut l = cfg.limits;
        l.max_conn_per_route = 2;
        l.session_mail_max = 3;
        cfg.domains.push(("example.org".into(), l));
        let mut s = Sessions::new(cfg);
        let mx = Route {
            target: Target::Mx("example.org".into()),
            ..route(25)
        };
        assert_eq!(s.limits(&mx).max_conn_per_route, 2);
        assert_eq!(s.limits(&route(25)).max_conn_per_route, 10);
        let (mut id, mut out) = (1, Vec::new());
        s.health.entry(mx.clone()).or_default().proven = true;
        for m in 0..40u32 {
            s.add(
                &mx,
                m,
                "",
                vec![(u64::from(m) << 32, "a@example.org".into())],
                &mut id,
                &mut out,
            );
        }
        assert_eq!(connects(&out).len(), 2);
        // A session takes at most session-mail-max jobs.
        let per: Vec<usize> = s.sessions.values().map(|x| x.given).collect();
        assert!(per.iter().all(|&g| g <= 3), "{per:?}");
    }

    #[test]
    fn a_failing_route_is_suspended_and_its_deferred_mail_comes_back() {
        let (mut s, mut id, mut out) = (Sessions::default(), 1, Vec::new());
        add_one(&mut s, 25, 1, &mut id, &mut out);
        let (k, job) = sends(&out)[0];
        // The connection failed: the client settles the job without a verdict.
        let (rec, retry) = s
            .done(job, false, &mut id, &mut out)
            .unwrap_or_else(|| panic!());
        assert!(retry.is_empty());
        s.deferred(&rec.route, rec.evpids[0]);
        s.closing(k);
        assert!(s.closed(k, "refused", 1000, &mut id, &mut out).is_empty());
        let why = s.closed_route(&route(25), 1000).unwrap_or_default();
        assert!(why.contains("15s") && why.contains("refused"), "{why}");
        assert!(s.closed_route(&route(25), 1015).is_none());
        assert!(
            s.closed_route(&route(26), 1000).is_none(),
            "other routes go on"
        );
        // A second failure in a row: 60 s.
        out.clear();
        add_one(&mut s, 25, 2, &mut id, &mut out);
        let (k, job) = sends(&out)[0];
        let _ = s.done(job, false, &mut id, &mut out);
        s.deferred(&route(25), 2 << 32);
        s.closing(k);
        let _ = s.closed(k, "timeout", 2000, &mut id, &mut out);
        assert!(s.closed_route(&route(25), 2059).is_some());
        assert_eq!(s.routes()[0].failures, 2);
        // The route delivers again: what it deferred is returned, once.
        out.clear();
        add_one(&mut s, 25, 3, &mut id, &mut out);
        let (_, job) = sends(&out)[0];
        let (_, retry) = s
            .done(job, true, &mut id, &mut out)
            .unwrap_or_else(|| panic!());
        assert_eq!(retry, [1 << 32, 2 << 32]);
        assert_eq!(s.routes()[0].failures, 0);
        // Bounded by max-deferred.
        let mut s = Sessions::new(MtaConfig {
            max_deferred: 2,
            ..MtaConfig::default()
        });
        for e in 0..5 {
            s.deferred(&route(25), e);
        }
        assert_eq!(s.reopen("127.0.0.1"), [0, 1]);
    }

    #[test]
    fn jobs_wait_for_a_session_and_an_ending_one_takes_none() {
        let (mut s, mut id, mut out) = (Sessions::default(), 1, Vec::new());
        for p in 0..MAX_SESSIONS as u16 {
            s.add(
                &route(1000 + p),
                1,
                "",
                vec![(1, "a@b".into())],
                &mut id,
                &mut out,
            );
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        out.clear();
        // No room for a session of a new route: the job waits.
        s.add(
            &route(25),
            2,
            "",
            vec![(2 << 32, "a@b".into())],
            &mut id,
            &mut out,
        );
        assert!(out.is_empty());
        // A session ends: the waiting job gets a new one.
        let first = session_of(&s, 1000);
        s.closing(first);
        assert_eq!(s.closed(first, "done", 0, &mut id, &mut out).len(), 1);
        assert_eq!(connects(&out).len(), 1);
        assert_eq!(sends(&out).len(), 1);
    }

    fn session_of(s: &Sessions, port: u16) -> u64 {
        s.sessions
            .iter()
            .find(|(_, x)| x.route == route(port))
            .map(|(&k, _)| k)
            .unwrap_or_default()
    }

    #[test]
    fn a_session_is_told_to_quit_when_its_route_has_nothing_left() {
        let (mut s, mut id, mut out) = (Sessions::default(), 1, Vec::new());
        s.add(
            &route(25),
            1,
            "",
            vec![(1, "a@b".into())],
            &mut id,
            &mut out,
        );
        s.add(
            &route(25),
            2,
            "",
            vec![(2, "c@d".into())],
            &mut id,
            &mut out,
        );
        let jobs = sends(&out);
        assert_eq!(connects(&out).len(), 1);
        out.clear();
        assert!(s.done(jobs[0].1, true, &mut id, &mut out).is_some());
        assert!(out.is_empty());
        assert!(s.done(jobs[1].1, true, &mut id, &mut out).is_some());
        assert!(matches!(out[..], [Effect::Quit { session }] if session == jobs[0].0));
        assert_eq!(s.envelopes(), 0);
    }
}
