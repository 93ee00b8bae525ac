//! The health of each route, as the queue manager keeps it.
//!
//! A route that never delivered, or whose last session failed before any verdict of
//! its server, opens one session at a time (slow start). Each such failure in a row
//! keeps it closed for 15 s × failures² (at most an hour): its due envelopes are
//! deferred without a connection. The envelopes deferred this way (up to `mta
//! max-deferred`) are tried again as soon as the route delivers; `smtpctl schedule`
//! reopens a route at once.

use super::mta::Sessions;
use crate::nexthop::{Route, Target};
use std::collections::VecDeque;

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

impl Sessions {
    /// Job `id`'s server gave a verdict: its route works. Returns what the route had
    /// deferred.
    pub(super) fn delivered(&mut self, id: u64) -> Vec<u64> {
        let Some(rec) = self.jobs.get(&id) else {
            return Vec::new();
        };
        if let Some(s) = rec.session.and_then(|k| self.sessions.get_mut(&k)) {
            s.worked = true;
        }
        let h = self.health.entry(rec.route.clone()).or_default();
        h.failures = 0;
        h.until = 0;
        h.proven = true;
        h.deferred.drain(..).collect()
    }

    /// A session of `route` failed before any verdict of its server.
    pub(super) fn failed(&mut self, route: &Route, why: &str, now: u64) {
        let h = self.health.entry(route.clone()).or_default();
        h.failures = h.failures.saturating_add(1);
        let f = u64::from(h.failures);
        h.until = now + (15 * f * f).min(MAX_BACKOFF);
        h.why = why.to_string();
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
}
