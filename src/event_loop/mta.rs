//! The next hop of an outgoing session given by name (`relay host NAME`, `lmtp
//! NAME:port`): /etc/hosts first, then AAAA and A through the engine's resolver, with the
//! search domains of resolv.conf (a name of the configuration, not a mail domain); the
//! session connects to the first address found, IPv6 first.

use super::dns::DnsWaiter;
use super::Server;
use crate::dns::{DnsError, DnsResult, Qtype, Rdata};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// A host name being resolved for an outgoing session.
#[derive(Debug)]
pub(super) struct HostLookup {
    /// The slab key of the session.
    key: usize,
    /// The name as configured, for the log.
    host: String,
    port: u16,
    /// The names to try (search domains), and the one asked now.
    candidates: Vec<String>,
    current: usize,
    /// Answers still to come for the current name.
    pending: u8,
    v6: Vec<IpAddr>,
    v4: Vec<IpAddr>,
    /// A failure seen on the way (not NXDOMAIN or NODATA).
    failure: Option<String>,
}

impl Server {
    /// Resolves `host` for outgoing session `session` (slab key `key`), then connects.
    pub(super) fn mta_resolve(
        &mut self,
        key: usize,
        session: u64,
        host: &str,
        port: u16,
        now: Instant,
    ) {
        if let Some(ip) = self.dns.hosts(host).first() {
            log::debug!("mta host {host} from /etc/hosts: {ip}");
            return self.mta_connect(key, Some(SocketAddr::new(*ip, port)), now);
        }
        let lookup = HostLookup {
            key,
            host: host.to_string(),
            port,
            candidates: self.dns.candidates(host),
            current: 0,
            pending: 0,
            v6: Vec::new(),
            v4: Vec::new(),
            failure: None,
        };
        self.mta_lookups.insert(session, lookup);
        self.mta_ask(session, now);
    }

    /// Asks AAAA and A of the current candidate name.
    fn mta_ask(&mut self, session: u64, now: Instant) {
        let Some(l) = self.mta_lookups.get_mut(&session) else {
            return;
        };
        let Some(name) = l.candidates.get(l.current).cloned() else {
            return;
        };
        l.pending = 2;
        let tag = l.current as u32;
        for qtype in [Qtype::Aaaa, Qtype::A] {
            self.dns_ask(&name, qtype, DnsWaiter::Mta { session, tag }, now);
        }
    }

    /// An answer for outgoing session `session`: `tag` is the index of the candidate
    /// name asked.
    pub(super) fn mta_dns(
        &mut self,
        session: u64,
        tag: u32,
        name: &str,
        qtype: Qtype,
        result: DnsResult,
        now: Instant,
    ) {
        let Some(l) = self.mta_lookups.get_mut(&session) else {
            return; // the session ended meanwhile
        };
        if tag as usize != l.current || l.pending == 0 {
            return;
        }
        l.pending -= 1;
        match result {
            Ok(a) => {
                for r in a.records {
                    match r {
                        Rdata::Addr(ip @ IpAddr::V6(_)) => l.v6.push(ip),
                        Rdata::Addr(ip @ IpAddr::V4(_)) => l.v4.push(ip),
                        _ => {}
                    }
                }
            }
            Err(DnsError::NxDomain { .. }) => {}
            Err(e @ (DnsError::TempFail(_) | DnsError::PermFail(_))) => {
                log::debug!("mta host {name} {}: {e}", qtype.as_str());
                l.failure = Some(e.to_string());
            }
        }
        if l.pending > 0 {
            return;
        }
        let first = l.v6.first().or(l.v4.first()).copied();
        if let Some(ip) = first {
            let (key, port) = (l.key, l.port);
            log::debug!("mta host {} resolved: {ip}", l.host);
            self.mta_lookups.remove(&session);
            return self.mta_connect(key, Some(SocketAddr::new(ip, port)), now);
        }
        l.current += 1;
        if l.current < l.candidates.len() {
            return self.mta_ask(session, now);
        }
        let why = match &l.failure {
            Some(e) => format!("cannot resolve {}: {e}", l.host),
            None => format!("cannot resolve {}: no address", l.host),
        };
        let key = l.key;
        self.mta_lookups.remove(&session);
        self.mta_abort(key, &why);
    }
}
