//! What outgoing sessions know of the servers they connect to, by address: the
//! connections open to each (for `max-conn-per-host`), and the ones that failed, which
//! every route then skips for a while, so that one unreachable exchanger costs each
//! other domain nothing. Pure bookkeeping; time comes in as Unix seconds.

use std::collections::HashMap;
use std::net::IpAddr;

/// Addresses remembered at most; idle ones are forgotten first.
pub const MAX_HOSTS: usize = 10_000;
/// The first pause after a failure, in seconds; it doubles with each failure in a row.
const FIRST_PAUSE: u64 = 30;
/// The longest pause, in seconds.
const MAX_PAUSE: u64 = 1800;

/// One server address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// The name it was reached by, last.
    pub name: String,
    /// Connections open.
    pub conns: usize,
    /// Failures in a row (connection refused or lost, no greeting, a 4xx/5xx greeting).
    pub failures: u32,
    /// Skipped until then (Unix seconds); 0 when usable.
    pub until: u64,
    /// Why it last failed.
    pub why: String,
    /// When it was last used (Unix seconds).
    pub seen: u64,
}

/// Every server address outgoing sessions used.
#[derive(Debug, Default)]
pub struct Hosts {
    map: HashMap<IpAddr, Host>,
}

impl Hosts {
    /// Whether a new connection to `ip` may start at `now` with `limit` connections
    /// per host; `Err` says why not.
    pub fn may_connect(&self, ip: IpAddr, limit: usize, now: u64) -> Result<(), String> {
        let Some(h) = self.map.get(&ip) else {
            return Ok(());
        };
        if now < h.until {
            return Err(format!(
                "{} [{ip}] skipped for {}s after {} failures: {}",
                h.name,
                h.until - now,
                h.failures,
                h.why
            ));
        }
        if h.conns >= limit {
            return Err(format!("{} [{ip}]: {limit} connections already", h.name));
        }
        Ok(())
    }

    /// A connection to `ip` (known as `name`) starts.
    pub fn connecting(&mut self, ip: IpAddr, name: &str, now: u64) {
        if !self.map.contains_key(&ip) && self.map.len() >= MAX_HOSTS {
            self.forget_idle();
        }
        let h = self.map.entry(ip).or_default();
        h.conns += 1;
        h.seen = now;
        if h.name != name {
            h.name = name.to_string();
        }
    }

    /// A connection to `ip` ended: `Ok` when the server served it (greeted and
    /// answered), else why it failed.
    pub fn released(&mut self, ip: IpAddr, result: Result<(), &str>, now: u64) {
        let Some(h) = self.map.get_mut(&ip) else {
            return;
        };
        h.conns = h.conns.saturating_sub(1);
        h.seen = now;
        match result {
            Ok(()) => {
                h.failures = 0;
                h.until = 0;
                h.why.clear();
            }
            Err(why) => {
                h.failures = h.failures.saturating_add(1);
                let shift = (h.failures - 1).min(16);
                h.until = now + (FIRST_PAUSE << shift).min(MAX_PAUSE);
                h.why = why.to_string();
            }
        }
    }

    /// Clears the failures of the addresses known by `name` (`smtpctl schedule domain`).
    pub fn forgive(&mut self, name: &str) {
        for h in self.map.values_mut() {
            if h.name.eq_ignore_ascii_case(name) {
                h.failures = 0;
                h.until = 0;
            }
        }
    }

    /// Clears every pause (`smtpctl schedule`: try now means try now).
    pub fn forgive_all(&mut self) {
        for h in self.map.values_mut() {
            h.until = 0;
        }
    }

    /// Every address, sorted, for `smtpctl show hosts`.
    pub fn listing(&self) -> Vec<(IpAddr, &Host)> {
        let mut v: Vec<(IpAddr, &Host)> = self.map.iter().map(|(ip, h)| (*ip, h)).collect();
        v.sort_by_key(|(ip, _)| *ip);
        v
    }

    /// Forgets the idle half of the table, least recently used first.
    fn forget_idle(&mut self) {
        let mut idle: Vec<(u64, IpAddr)> = self
            .map
            .iter()
            .filter(|(_, h)| h.conns == 0)
            .map(|(ip, h)| (h.seen, *ip))
            .collect();
        idle.sort();
        for (_, ip) in idle.into_iter().take(MAX_HOSTS / 2) {
            self.map.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn failures_pause_a_host_and_a_success_clears_them() {
        let mut h = Hosts::default();
        assert!(h.may_connect(ip(1), 2, 100).is_ok());
        h.connecting(ip(1), "mx.example.org", 100);
        h.connecting(ip(1), "mx.example.org", 100);
        // The limit per host.
        assert!(h.may_connect(ip(1), 2, 100).is_err());
        assert!(h.may_connect(ip(2), 2, 100).is_ok());
        h.released(ip(1), Err("connection refused"), 100);
        let why = h.may_connect(ip(1), 2, 100).unwrap_err();
        assert!(
            why.contains("30s") && why.contains("connection refused"),
            "{why}"
        );
        assert!(h.may_connect(ip(1), 2, 130).is_ok());
        // Doubling pauses, bounded.
        h.connecting(ip(1), "mx.example.org", 130);
        h.released(ip(1), Err("timeout"), 130);
        assert!(h.may_connect(ip(1), 2, 189).is_err());
        assert!(h.may_connect(ip(1), 2, 190).is_ok());
        for _ in 0..40 {
            h.connecting(ip(1), "mx.example.org", 1000);
            h.released(ip(1), Err("timeout"), 1000);
        }
        assert!(h.may_connect(ip(1), 2, 1000 + MAX_PAUSE).is_ok());
        // The connection still open served its session.
        h.released(ip(1), Ok(()), 5000);
        assert_eq!(h.listing()[0].1.failures, 0);
        assert_eq!(h.listing()[0].1.conns, 0);
    }

    #[test]
    fn forgiving_and_forgetting() {
        let mut h = Hosts::default();
        h.connecting(ip(1), "MX.example.org", 1);
        h.released(ip(1), Err("refused"), 1);
        h.forgive("mx.example.org");
        assert!(h.may_connect(ip(1), 1, 2).is_ok());
        for n in 0..MAX_HOSTS as u32 + 1 {
            let a = IpAddr::from(n.to_be_bytes());
            h.connecting(a, "x", u64::from(n));
            h.released(a, Ok(()), u64::from(n));
        }
        assert!(h.listing().len() <= MAX_HOSTS);
    }
}
