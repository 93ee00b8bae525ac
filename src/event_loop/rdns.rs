//! Reverse DNS of clients, when the configuration checks it (`rdns`, `fcrdns` in a
//! built-in filter): a PTR query at connect, then the name's addresses, before the
//! session starts. Queries go over UDP to the nameservers of /etc/resolv.conf.

use super::Server;
use crate::dns::{self, Answer, Qtype, Record};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long one query waits for its answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// Sends of a query (to each nameserver in turn).
const TRIES: u32 = 2;

/// What a pending query is for.
#[derive(Debug)]
struct Pending {
    key: usize,
    gen: u64,
    ip: IpAddr,
    name: String,
    qtype: Qtype,
    /// The PTR name, once known (forward queries).
    host: Option<String>,
    deadline: Instant,
    tries: u32,
}

/// The engine's resolver socket and its queries.
pub(super) struct Resolver {
    pub(super) sock: mio::net::UdpSocket,
    servers: Vec<SocketAddr>,
    pending: HashMap<u16, Pending>,
}

impl Resolver {
    /// A resolver for the nameservers of /etc/resolv.conf.
    pub(super) fn new() -> std::io::Result<Resolver> {
        let conf = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let servers = dns::nameservers(&conf);
        let bind: SocketAddr = if servers.iter().all(|s| s.is_ipv6()) {
            "[::]:0"
                .parse()
                .map_err(|_| std::io::Error::other("address"))?
        } else {
            "0.0.0.0:0"
                .parse()
                .map_err(|_| std::io::Error::other("address"))?
        };
        Ok(Resolver {
            sock: mio::net::UdpSocket::bind(bind)?,
            servers,
            pending: HashMap::new(),
        })
    }

    fn send(&mut self, p: Pending) {
        let mut id = crate::sys::random_u64() as u16;
        while self.pending.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        let server = self.servers[(p.tries as usize) % self.servers.len()];
        match dns::query(id, &p.name, p.qtype) {
            Some(q) => {
                if let Err(e) = self.sock.send_to(&q, server) {
                    log::debug!("dns: send to {server}: {e}");
                }
                self.pending.insert(id, p);
            }
            None => log::debug!("dns: cannot ask for {:?}", p.name),
        }
    }
}

impl Server {
    /// Starts the reverse lookup of a new session's client; the session is held until
    /// it ends.
    pub(super) fn start_rdns(&mut self, key: usize, gen: u64, ip: IpAddr, now: Instant) {
        let Some(r) = self.resolver.as_mut() else {
            return;
        };
        r.send(Pending {
            key,
            gen,
            ip,
            name: dns::reverse_name(ip),
            qtype: Qtype::Ptr,
            host: None,
            deadline: now + QUERY_TIMEOUT,
            tries: 0,
        });
    }

    /// Answers on the resolver socket.
    pub(super) fn on_dns(&mut self, now: Instant) {
        let mut buf = [0u8; 1500];
        loop {
            let Some(r) = self.resolver.as_mut() else {
                return;
            };
            let (n, from) = match r.sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(_) => return,
            };
            if !r.servers.contains(&from) {
                continue;
            }
            let id = if n >= 2 {
                u16::from_be_bytes([buf[0], buf[1]])
            } else {
                continue;
            };
            let Some(p) = r.pending.get(&id) else {
                continue;
            };
            let Some(answer) = dns::parse(&buf[..n], id, p.qtype) else {
                continue;
            };
            if let Some(p) = r.pending.remove(&id) {
                self.on_dns_answer(p, answer, now);
            }
        }
    }

    fn on_dns_answer(&mut self, p: Pending, answer: Answer, now: Instant) {
        match (p.qtype, answer) {
            (Qtype::Ptr, Answer::Records(rs)) => {
                let Some(Record::Name(host)) = rs.into_iter().next() else {
                    return self.rdns_done(p.key, p.gen, None, false, now);
                };
                // Forward-confirm the name: its addresses must hold the client's.
                let qtype = if p.ip.is_ipv4() {
                    Qtype::A
                } else {
                    Qtype::Aaaa
                };
                if let Some(r) = self.resolver.as_mut() {
                    r.send(Pending {
                        name: host.clone(),
                        qtype,
                        host: Some(host),
                        deadline: now + QUERY_TIMEOUT,
                        tries: 0,
                        ..p
                    });
                }
            }
            (Qtype::Ptr, _) => self.rdns_done(p.key, p.gen, None, false, now),
            (_, Answer::Records(rs)) => {
                let confirmed = rs.iter().any(|r| r == &Record::Addr(p.ip));
                self.rdns_done(p.key, p.gen, p.host, confirmed, now);
            }
            (_, _) => self.rdns_done(p.key, p.gen, p.host, false, now),
        }
    }

    /// The earliest deadline of the queries in flight.
    pub(super) fn next_dns_deadline(&self) -> Option<Instant> {
        let r = self.resolver.as_ref()?;
        r.pending.values().map(|p| p.deadline).min()
    }

    /// Queries past their deadline are sent again, or given up.
    pub(super) fn dns_deadlines(&mut self, now: Instant) {
        let Some(r) = self.resolver.as_mut() else {
            return;
        };
        let late: Vec<u16> = r
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut done = Vec::new();
        for id in late {
            let Some(mut p) = r.pending.remove(&id) else {
                continue;
            };
            p.tries += 1;
            if p.tries < TRIES * r.servers.len() as u32 {
                p.deadline = now + QUERY_TIMEOUT;
                r.send(p);
            } else {
                log::info!("dns: no answer for {}", p.name);
                done.push(p);
            }
        }
        for p in done {
            self.rdns_done(p.key, p.gen, p.host, false, now);
        }
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
