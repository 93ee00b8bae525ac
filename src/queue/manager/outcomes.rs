//! What outgoing sessions' results do to the queue: outcomes per recipient, "relayed"
//! notices for servers without DSN (RFC 3461 §6.2.3), the health of routes, and the
//! control commands about them.

use super::health::RouteState;
use super::{Effect, Manager, Notice, State};
use crate::mail::params::notify;
use crate::mda::Outcome;
use crate::mta::client::{JobDone, SuccessNotice};
use crate::queue::bounce::DsnKind;
use log::Level;

impl Manager {
    /// A session's job is over, with one outcome per recipient. Recipients delivered
    /// that asked for NOTIFY=SUCCESS get their notice as the session says: one each
    /// for a final delivery (LMTP), none when the server took the NOTIFY parameter,
    /// and one "relayed" notice for all of them when it could not (RFC 3461 §6.2.3).
    pub fn job_done(&mut self, d: JobDone, now: u64) {
        self.job_finished(d, true, now);
    }

    /// A job is over; `verdict`: its server answered (else the session failed before,
    /// and its envelopes count as deferred by the route's failure).
    fn job_finished(&mut self, d: JobDone, verdict: bool, now: u64) {
        let Some((rec, retry)) = self
            .mta
            .done(d.id, verdict, &mut self.next_id, &mut self.out)
        else {
            return;
        };
        if !verdict {
            for &evpid in &rec.evpids {
                self.mta.deferred(&rec.route, evpid);
            }
        }
        self.retry_now(&retry, now);
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

    /// Envelopes a route had deferred are due again now that it delivers.
    fn retry_now(&mut self, evpids: &[u64], now: u64) {
        if evpids.is_empty() {
            return;
        }
        let n = self.schedule(evpids, now);
        self.log(
            Level::Info,
            format!("mta route delivers again: {n} deferred envelopes scheduled"),
        );
    }

    /// Session `session` ended: `done` are the jobs it finished last (with their
    /// outcomes); the others failed temporarily with `why`. `reached`: the server
    /// answered before the session ended (else the route failed).
    pub fn session_closed(
        &mut self,
        session: u64,
        done: Vec<JobDone>,
        why: &str,
        reached: bool,
        now: u64,
    ) {
        // No job goes to it any more.
        self.mta.closing(session);
        let route = self.mta.route_of(session);
        for d in done {
            self.job_finished(d, reached, now);
        }
        for rec in self
            .mta
            .closed(session, why, now, &mut self.next_id, &mut self.out)
        {
            for evpid in rec.evpids {
                if let (false, Some(r)) = (reached, &route) {
                    self.mta.deferred(r, evpid);
                }
                self.finish(evpid, Outcome::TempFail(why.to_string()), now);
            }
        }
    }

    /// Every route used, with its state (`smtpctl show routes`).
    pub fn routes(&self) -> Vec<RouteState> {
        self.mta.routes()
    }

    /// `smtpctl schedule domain D`: reopens the routes to `domain` and makes their
    /// queued envelopes due now. Returns how many.
    pub fn schedule_domain(&mut self, domain: &str, now: u64) -> usize {
        let _ = self.mta.reopen(domain);
        let d = domain.trim_end_matches('.').to_ascii_lowercase();
        let ids: Vec<u64> = self
            .envs
            .iter()
            .filter(|(_, s)| s.state == State::Queued)
            .filter(|(_, s)| {
                s.env
                    .rcpt
                    .rsplit_once('@')
                    .is_some_and(|(_, x)| x.eq_ignore_ascii_case(&d))
            })
            .map(|(&e, _)| e)
            .collect();
        self.schedule(&ids, now)
    }
}
