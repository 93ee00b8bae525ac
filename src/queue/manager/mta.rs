//! Outgoing sessions as the queue manager sees them: which job goes on which
//! connection.
//!
//! The due recipients of one message on one route make jobs of at most
//! [`MAX_RCPT`] recipients, one transaction each. A job goes to an open session of its
//! route that has fewer than [`QUEUE_PER_SESSION`] jobs waiting (the least busy), else
//! to a new session while the route has fewer than [`MAX_ROUTE_SESSIONS`] and the
//! daemon fewer than [`MAX_SESSIONS`], else to the least busy session of the route, or
//! waits for a session to end. A session carries at most [`MAX_JOBS_PER_SESSION`] jobs;
//! one with no job left and none waiting for its route is told to quit.

use super::{Effect, Manager, Notice, State};
use crate::mail::params::notify;
use crate::mda::Outcome;
use crate::mta::client::{Job, JobDone, Rcpt, SuccessNotice, MAX_RCPT};
use crate::nexthop::Route;
use crate::queue::bounce::DsnKind;
use log::Level;
use std::collections::{HashMap, VecDeque};

/// Outgoing connections at once.
pub const MAX_SESSIONS: usize = 50;
/// Outgoing connections to one route at once.
pub const MAX_ROUTE_SESSIONS: usize = 10;
/// Jobs waiting on a session before the next job of its route opens another one.
pub const QUEUE_PER_SESSION: usize = 10;
/// Jobs (messages) one connection carries at most.
pub const MAX_JOBS_PER_SESSION: usize = 100;

#[derive(Debug)]
struct Session {
    route: Route,
    /// Jobs given and not over.
    busy: usize,
    /// Jobs given in all.
    given: usize,
    /// Told to quit: takes no more jobs.
    closing: bool,
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
    route: Route,
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
        let open = |s: &Session| !s.closing && s.given < MAX_JOBS_PER_SESSION;
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
        let may_open = on_route < MAX_ROUTE_SESSIONS && self.sessions.len() < MAX_SESSIONS;
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
                    },
                );
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

    /// Job `id` is over; returns it. Its session gets a waiting job of its route, or is
    /// told to quit when it has nothing left.
    pub fn done(&mut self, id: u64, next_id: &mut u64, out: &mut Vec<Effect>) -> Option<JobRec> {
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
        match waiting {
            Some(at) if s.given < MAX_JOBS_PER_SESSION => {
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

    /// Session `k` ended: returns the jobs it had not finished (to fail), and gives the
    /// backlog the room it left.
    pub fn closed(&mut self, k: u64, next_id: &mut u64, out: &mut Vec<Effect>) -> Vec<JobRec> {
        if self.sessions.remove(&k).is_none() {
            return Vec::new();
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

impl Manager {
    /// A session's job is over, with one outcome per recipient. Recipients delivered
    /// that asked for NOTIFY=SUCCESS get their notice as the session says: one each
    /// for a final delivery (LMTP), none when the server took the NOTIFY parameter,
    /// and one "relayed" notice for all of them when it could not (RFC 3461 §6.2.3).
    pub fn job_done(&mut self, d: JobDone, now: u64) {
        let Some(rec) = self.mta.done(d.id, &mut self.next_id, &mut self.out) else {
            return;
        };
        let lost = Outcome::TempFail("no verdict from the server".into());
        let mut relayed = Vec::new();
        for (i, evpid) in rec.evpids.into_iter().enumerate() {
            let o = d.outcomes.get(i).cloned().unwrap_or_else(|| lost.clone());
            if o != Outcome::Ok || d.notice == SuccessNotice::Delivered {
                self.finish(evpid, o, now);
                continue;
            }
            let wants = self.envs.get_mut(&evpid).is_some_and(|s| {
                let n = s.env.dsn_notify;
                let wants = s.state == State::Session(d.id)
                    && d.notice == SuccessNotice::Relayed
                    && n & notify::SUCCESS != 0
                    && n & notify::NEVER == 0;
                if wants {
                    s.env.errorline = match d.replies.get(i) {
                        Some(r) if !r.is_empty() => r.clone(),
                        _ => "250 2.0.0 relayed".into(),
                    };
                }
                wants
            });
            if wants {
                relayed.push(evpid);
            }
            self.finish_as(evpid, o, false, now);
        }
        self.relayed(&relayed, &d.server);
    }

    /// One notice for the recipients of `evpids` (of one message), relayed to
    /// `server`, which does not do DSN.
    fn relayed(&mut self, evpids: &[u64], server: &str) {
        let mut envs = evpids
            .iter()
            .filter_map(|e| self.envs.get(e).map(|s| s.env.clone()));
        let Some(env) = envs.next() else {
            return;
        };
        if env.sender.is_empty() {
            let line = format!("{:016x} bounce not sent: the sender is <>", env.evpid);
            return self.log(Level::Info, line);
        }
        // Committed after the write that removes these envelopes, which follows.
        self.out.push(Effect::Bounce(Notice {
            env,
            kind: DsnKind::Relayed,
            hold: true,
            more: envs.collect(),
            remote_mta: server.to_string(),
        }));
    }

    /// Session `session` ended: `done` are the jobs it finished last (with their
    /// outcomes); the others failed temporarily with `why`.
    pub fn session_closed(&mut self, session: u64, done: Vec<JobDone>, why: &str, now: u64) {
        // No job goes to it any more.
        self.mta.closing(session);
        for d in done {
            self.job_done(d, now);
        }
        for rec in self.mta.closed(session, &mut self.next_id, &mut self.out) {
            for evpid in rec.evpids {
                self.finish(evpid, Outcome::TempFail(why.to_string()), now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nexthop::Proto;
    use crate::nexthop::Target;

    fn route(port: u16) -> Route {
        Route {
            action: "out".into(),
            target: Target::Tcp("127.0.0.1".into(), port),
            proto: Proto::Smtp,
            helo: "me.example".into(),
        }
    }

    fn head(msgid: u32) -> Job {
        Job {
            msgid,
            ..Job::default()
        }
    }

    fn rcpt(addr: &str) -> Rcpt {
        Rcpt {
            addr: addr.into(),
            ..Rcpt::default()
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

    #[test]
    fn a_busy_route_opens_more_sessions_up_to_its_bound() {
        let (mut s, mut id, mut out) = (Sessions::default(), 1, Vec::new());
        for m in 0..(QUEUE_PER_SESSION * MAX_ROUTE_SESSIONS + 5) as u32 {
            s.add(
                &route(25),
                &head(m),
                vec![(u64::from(m) << 32, rcpt("a@b"))],
                &mut id,
                &mut out,
            );
        }
        assert_eq!(connects(&out).len(), MAX_ROUTE_SESSIONS);
        // Beyond, jobs go to the least busy session rather than wait.
        assert_eq!(
            sends(&out).len(),
            QUEUE_PER_SESSION * MAX_ROUTE_SESSIONS + 5
        );
        assert!(s.backlog.is_empty());
    }

    #[test]
    fn jobs_wait_for_a_session_and_an_ending_one_takes_none() {
        let (mut s, mut id, mut out) = (Sessions::default(), 1, Vec::new());
        for p in 0..MAX_SESSIONS as u16 {
            s.add(
                &route(1000 + p),
                &head(1),
                vec![(1, rcpt("a@b"))],
                &mut id,
                &mut out,
            );
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        out.clear();
        // No room for a session of a new route: the job waits.
        s.add(
            &route(25),
            &head(2),
            vec![(2 << 32, rcpt("a@b"))],
            &mut id,
            &mut out,
        );
        assert!(out.is_empty());
        // A session ends: the waiting job gets a new one.
        let first = session_of(&s, 1000);
        s.closing(first);
        assert_eq!(s.closed(first, &mut id, &mut out).len(), 1);
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
            &head(1),
            vec![(1, rcpt("a@b"))],
            &mut id,
            &mut out,
        );
        s.add(
            &route(25),
            &head(2),
            vec![(2, rcpt("c@d"))],
            &mut id,
            &mut out,
        );
        let jobs = sends(&out);
        assert_eq!(connects(&out).len(), 1);
        out.clear();
        assert!(s.done(jobs[0].1, &mut id, &mut out).is_some());
        assert!(out.is_empty());
        assert!(s.done(jobs[1].1, &mut id, &mut out).is_some());
        assert!(matches!(out[..], [Effect::Quit { session }] if session == jobs[0].0));
        assert_eq!(s.envelopes(), 0);
    }
}
