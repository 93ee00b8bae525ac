//! Reverse DNS of clients, when the configuration checks it (`rdns`, `fcrdns` in a
//! built-in filter): a PTR query at connect, then the addresses of the name it gives,
//! before the session starts. The questions go through the engine's resolver
//! (`dns.rs`); /etc/hosts is not consulted.

use super::dns::DnsWaiter;
use super::Server;
use crate::dns::{self, DnsResult, Qtype, Rdata};
use std::net::IpAddr;
use std::time::Instant;

impl Server {
    /// Starts the reverse lookup of a new session's client; the session is held until
    /// it ends.
    pub(super) fn start_rdns(&mut self, key: usize, gen: u64, ip: IpAddr, now: Instant) {
        let waiter = DnsWaiter::Rdns {
            key,
            gen,
            ip,
            host: None,
        };
        self.dns_ask(&dns::reverse_name(ip), Qtype::Ptr, waiter, now);
    }

    /// An answer for the reverse lookup of session `key`: the PTR's (when `host` is
    /// `None`), then the forward confirmation's of `host`.
    pub(super) fn rdns_answer(
        &mut self,
        key: usize,
        gen: u64,
        ip: IpAddr,
        host: Option<String>,
        result: DnsResult,
        now: Instant,
    ) {
        let Some(host) = host else {
            let name = match result {
                Ok(a) => a.records.into_iter().find_map(|r| match r {
                    Rdata::Name(n) if !n.is_empty() => Some(n),
                    _ => None,
                }),
                Err(_) => None,
            };
            let Some(name) = name else {
                return self.rdns_done(key, gen, None, false, now);
            };
            if !self.session_alive(key, gen) {
                return;
            }
            // Forward-confirm the name: its addresses must hold the client's.
            let qtype = if ip.is_ipv4() { Qtype::A } else { Qtype::Aaaa };
            let waiter = DnsWaiter::Rdns {
                key,
                gen,
                ip,
                host: Some(name.clone()),
            };
            return self.dns_ask(&name, qtype, waiter, now);
        };
        let confirmed = match &result {
            Ok(a) => a.records.contains(&Rdata::Addr(ip)),
            Err(_) => false,
        };
        self.rdns_done(key, gen, Some(host), confirmed, now);
    }

    /// Whether SMTP session `key` of generation `gen` is still there.
    fn session_alive(&self, key: usize, gen: u64) -> bool {
        matches!(self.slab.get(key), Some(super::Endpoint::Smtp(c)) if c.gen == gen)
    }

    /// The lookup ended: the session learns its client's name and starts.
    fn rdns_done(
        &mut self,
        key: usize,
        gen: u64,
        host: Option<String>,
        fcrdns: bool,
        now: Instant,
    ) {
        self.with_conn(key, Some(gen), |conn, ctx| {
            log::info!(
                "{:016x} smtp rdns host={} fcrdns={}",
                conn.id(),
                host.as_deref().unwrap_or("unknown"),
                if fcrdns { "pass" } else { "fail" }
            );
            conn.set_rdns(host, fcrdns);
            conn.release_hold(ctx, now);
        });
        self.after_conn(key, now);
    }
}
