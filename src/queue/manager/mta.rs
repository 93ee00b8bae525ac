//! Outgoing sessions as the queue manager sees them: which job goes on which
//! connection.
//!
//! The due recipients of one message on one route make jobs of at most
//! [`MAX_RCPT`] recipients, one transaction each. A job goes to an open session of its
//! route that has fewer than [`QUEUE_PER_SESSION`] jobs waiting (the least busy), else
//! to a new session while the route has fewer than its `max-conn-per-route` (one
//! until it proved itself: see `health.rs`) and the daemon fewer than
//! [`MAX_SESSIONS`], else to the least busy session of the route, or waits for a
//! session to end. A session carries at most `session-mail-max` jobs; one with no job
//! left and none waiting for its route is told to quit.

use super::health::Health;
use super::Effect;
use crate::config::relay::{MtaConfig, MtaLimits};
use crate::mta::client::{Job, Rcpt, MAX_RCPT};
use crate::nexthop::{Route, Target};
use std::collections::{HashMap, VecDeque};

/// Outgoing connections at once.
pub const MAX_SESSIONS: usize = 50;
/// Jobs waiting on a session before the next job of its route opens another one.
pub const QUEUE_PER_SESSION: usize = 10;

#[derive(Debug)]
pub(super) struct Session {
    pub(super) route: Route,
    /// Jobs given and not over.
    busy: usize,
    /// Jobs given in all.
    given: usize,
    /// Told to quit: takes no more jobs.
    closing: bool,
    /// Its server gave a verdict on a job.
    pub(super) worked: bool,
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
    pub(super) sessions: HashMap<u64, Session>,
    pub(super) jobs: HashMap<u64, JobRec>,
    /// Jobs waiting for a session, oldest first.
    pub(super) backlog: VecDeque<u64>,
    /// Envelopes in jobs.
    envelopes: usize,
    /// `mta` settings.
    pub(super) config: MtaConfig,
    /// The health of each route that has been used.
    pub(super) health: HashMap<Route, Health>,
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

    /// The limits of `route`'s destination.
    pub(super) fn limits(&self, route: &Route) -> MtaLimits {
        match &route.target {
            Target::Mx(d) => self.config.limits_for(Some(d)),
            _ => self.config.limits_for(None),
        }
    }

    /// Makes jobs of the due recipients `rcpts` (envelope, recipient) of the message
    /// of `head` (its id, sender and parameters) on `route`, and gives them to
    /// sessions. `next_id` numbers jobs and sessions.
    pub fn add(
        &mut self,
        route: &Route,
        head: &Job,
        rcpts: Vec<(u64, Rcpt)>,
        next_id: &mut u64,
        out: &mut Vec<Effect>,
    ) -> Vec<(u64, u64)> {
        let mut placed = Vec::new();
        for chunk in rcpts.chunks(MAX_RCPT) {
            let id = take_id(next_id);
            let (evpids, rcpts): (Vec<u64>, Vec<Rcpt>) = chunk.iter().cloned().unzip();
            placed.extend(evpids.iter().map(|&e| (e, id)));
            self.envelopes += evpids.len();
            self.jobs.insert(
                id,
                JobRec {
                    session: None,
                    msgid: head.msgid,
                    evpids,
                    route: route.clone(),
                    job: Job {
                        id,
                        rcpts,
                        ..head.clone()
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
        let retry = if verdict {
            self.delivered(id)
        } else {
            Vec::new()
        };
        let rec = self.job_over(id, next_id, out)?;
        Some((rec, retry))
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

    /// The route of session `k`.
    pub fn route_of(&self, k: u64) -> Option<Route> {
        self.sessions.get(&k).map(|s| s.route.clone())
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
            self.failed(&session.route, why, now);
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
#[path = "mta_tests.rs"]
mod tests;
