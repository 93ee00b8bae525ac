//! The resolver machine: questions, datagrams, stream bytes and the time go in; packets
//! to send, deadlines and answers come out. No socket, file or clock here: the loop
//! (`event_loop/dns.rs`) carries the [`Io`] out and feeds back what came of it.
//!
//! LIFECYCLE of a question (one per (name, type); those asked again while it is in
//! flight wait for the same one):
//!
//! ```text
//! ask --cache hit--------------------------------------------> done
//!   \--> try (server s, round r): UDP with EDNS0, a fresh socket, id and deadline
//!          TC=1 ---------------------> the same over TCP (length-prefixed)
//!          FORMERR/NOTIMP with EDNS -> the same again without OPT, once
//!          SERVFAIL, REFUSED, garbage,
//!          timeout, socket error -----> next server; after the last, next round
//!          NOERROR, NXDOMAIN ---------> cached, done (every waiter)
//!          NOTIMP without EDNS -------> PermFail, done
//!        every server, every round failed -> TempFail, done
//! ```
//!
//! Each try has a transmission id ([`Tx`]): what comes for another one (an earlier try,
//! a socket closed meanwhile) is ignored, as is a datagram from another address than
//! the server's, or one that does not answer our question (id, name, type, class).

use super::cache::Cache;
use super::conf::{Hosts, ResolvConf};
use super::wire::{self, rcode, QueryOpts, Reply};
use super::{describe, normalize, DnsError, DnsResult, Qtype};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// A transmission: one try's socket.
pub type Tx = u64;

/// Questions in flight at most; more fail at once (TempFail).
pub const MAX_QUESTIONS: usize = 1024;
/// Waiters of one question at most.
pub const MAX_WAITERS: usize = 4096;
/// Cache bounds.
const CACHE_ENTRIES: usize = 20_000;
const CACHE_BYTES: usize = 8 << 20;
/// A TCP answer's length prefix and the longest message.
const MAX_STREAM: usize = 2 + 65_535;

/// What the loop must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Io {
    /// Open a UDP socket connected to `server` and send `packet` on it; datagrams that
    /// come on it go to [`Resolver::on_datagram`].
    Udp {
        /// The transmission.
        tx: Tx,
        /// The nameserver.
        server: SocketAddr,
        /// The query.
        packet: Vec<u8>,
    },
    /// Open a TCP connection to `server` and write `packet` (length prefix included);
    /// bytes that come go to [`Resolver::on_stream`], its end to [`Resolver::failed`].
    Tcp {
        /// The transmission.
        tx: Tx,
        /// The nameserver.
        server: SocketAddr,
        /// The query with its 2-byte length.
        packet: Vec<u8>,
    },
    /// Close the socket of `tx`.
    Close(Tx),
    /// Call [`Resolver::timeout`] with `tx` at `at`.
    Deadline {
        /// The transmission.
        tx: Tx,
        /// When.
        at: Instant,
    },
}

/// An answered question: for whom, what was asked, the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done<W> {
    /// The waiter given to [`Resolver::ask`].
    pub waiter: W,
    /// The name as asked (normalized).
    pub name: String,
    /// The type.
    pub qtype: Qtype,
    /// The result.
    pub result: DnsResult,
}

type Key = (String, Qtype);

/// A question in flight.
#[derive(Debug)]
struct Question<W> {
    waiters: Vec<W>,
    conf: Arc<ResolvConf>,
    /// The current try's transmission, id, server and transport.
    tx: Tx,
    id: u16,
    server: SocketAddr,
    tcp: bool,
    /// Tries that failed so far (servers × rounds).
    failed: usize,
    /// The first server's index (`rotate`).
    first: usize,
    edns: bool,
    /// Bytes of a TCP answer so far.
    stream: Vec<u8>,
}

/// Questions answered, by how.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DnsCounts {
    /// From the cache.
    pub cached: u64,
    /// By a server, with records or none.
    pub answered: u64,
    /// By a server: no such name.
    pub nxdomain: u64,
    /// Failed for now (SERVFAIL, timeouts, garbage, limits).
    pub tempfail: u64,
    /// Failed for good (a name that cannot be asked, NOTIMP).
    pub permfail: u64,
}

impl DnsCounts {
    fn count(&mut self, r: &DnsResult) {
        match r {
            Ok(_) => self.answered += 1,
            Err(DnsError::NxDomain { .. }) => self.nxdomain += 1,
            Err(DnsError::TempFail(_)) => self.tempfail += 1,
            Err(DnsError::PermFail(_)) => self.permfail += 1,
        }
    }
}

/// The resolver.
#[derive(Debug)]
pub struct Resolver<W> {
    /// Questions answered so far.
    pub counts: DnsCounts,
    conf: Arc<ResolvConf>,
    hosts: Hosts,
    cache: Cache,
    questions: HashMap<Key, Question<W>>,
    txs: HashMap<Tx, Key>,
    next_tx: Tx,
    rotation: usize,
    io: Vec<Io>,
    done: VecDeque<Done<W>>,
    random: fn() -> u64,
}

impl<W: Clone> Resolver<W> {
    /// A resolver for `conf` and `hosts`; `random` gives query ids.
    pub fn new(conf: ResolvConf, hosts: Hosts, random: fn() -> u64) -> Resolver<W> {
        Resolver {
            counts: DnsCounts::default(),
            conf: Arc::new(conf),
            hosts,
            cache: Cache::new(CACHE_ENTRIES, CACHE_BYTES),
            questions: HashMap::new(),
            txs: HashMap::new(),
            next_tx: 1,
            rotation: 0,
            io: Vec::new(),
            done: VecDeque::new(),
            random,
        }
    }

    /// New configuration files: questions from now on use them; questions in flight
    /// go on with the old ones. The cache is emptied when the nameservers changed.
    pub fn set_conf(&mut self, conf: ResolvConf, hosts: Hosts) {
        if conf.servers != self.conf.servers || conf.trusted() != self.conf.trusted() {
            self.cache.clear();
        }
        self.conf = Arc::new(conf);
        self.hosts = hosts;
    }

    /// The configuration in force.
    pub fn conf(&self) -> &ResolvConf {
        &self.conf
    }

    /// The addresses /etc/hosts gives `name`, IPv6 first.
    pub fn hosts(&self, name: &str) -> Vec<IpAddr> {
        self.hosts.lookup(name)
    }

    /// Whether `tx` is the current try of a question (its socket still wanted).
    pub fn is_current(&self, tx: Tx) -> bool {
        self.txs.contains_key(&tx)
    }

    /// Questions in flight.
    pub fn in_flight(&self) -> usize {
        self.questions.len()
    }

    /// Asks (`name`, `qtype`) for `waiter`, as an absolute name. The answer comes out
    /// of [`Resolver::take_done`], never before this returns, even from the cache.
    pub fn ask(&mut self, name: &str, qtype: Qtype, waiter: W, now: Instant) {
        let name = normalize(name);
        if let Err(why) = wire::encode_name(&name, &mut Vec::new()) {
            return self.fail(waiter, name, qtype, DnsError::PermFail(why));
        }
        if let Some(result) = self.cache.get(&name, qtype, now) {
            log::debug!(
                "dns query name={name} type={} result={} cached",
                qtype.as_str(),
                describe(&result)
            );
            self.counts.cached += 1;
            return self.answer(waiter, name, qtype, result);
        }
        let key = (name, qtype);
        if let Some(q) = self.questions.get_mut(&key) {
            if q.waiters.len() < MAX_WAITERS {
                q.waiters.push(waiter);
                return;
            }
            let why = "too many waiters for one DNS question".to_string();
            return self.fail(waiter, key.0, qtype, DnsError::TempFail(why));
        }
        if self.questions.len() >= MAX_QUESTIONS {
            let why = "too many DNS questions in flight".to_string();
            return self.fail(waiter, key.0, qtype, DnsError::TempFail(why));
        }
        let conf = self.conf.clone();
        let first = if conf.rotate {
            self.rotation = self.rotation.wrapping_add(1);
            self.rotation % conf.servers.len().max(1)
        } else {
            0
        };
        let q = Question {
            waiters: vec![waiter],
            tcp: conf.use_vc,
            // ResolvConf::parse always names one server.
            server: conf
                .servers
                .get(first)
                .copied()
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 53))),
            conf,
            tx: 0,
            id: 0,
            failed: 0,
            first,
            edns: true,
            stream: Vec::new(),
        };
        self.questions.insert(key.clone(), q);
        self.start_try(key, now);
    }

    /// A question that fails before it is sent.
    fn fail(&mut self, waiter: W, name: String, qtype: Qtype, e: DnsError) {
        let result = Err(e);
        self.counts.count(&result);
        self.answer(waiter, name, qtype, result);
    }

    fn answer(&mut self, waiter: W, name: String, qtype: Qtype, result: DnsResult) {
        self.done.push_back(Done {
            waiter,
            name,
            qtype,
            result,
        });
    }

    /// What the loop must do, in order.
    pub fn take_io(&mut self) -> Vec<Io> {
        std::mem::take(&mut self.io)
    }

    /// Answers ready, oldest first.
    pub fn take_done(&mut self) -> Vec<Done<W>> {
        self.done.drain(..).collect()
    }

    /// Whether answers wait in [`Resolver::take_done`].
    pub fn has_done(&self) -> bool {
        !self.done.is_empty()
    }

    /// Sends the current try of question `key` (its server and transport set).
    fn start_try(&mut self, key: Key, now: Instant) {
        let Some(q) = self.questions.get_mut(&key) else {
            return;
        };
        let tx = self.next_tx;
        self.next_tx += 1;
        q.tx = tx;
        q.id = (self.random)() as u16;
        q.stream.clear();
        let opts = QueryOpts {
            edns: q.edns,
            dnssec: q.conf.trusted(),
        };
        let packet = match wire::query(q.id, &key.0, key.1, opts) {
            Ok(p) => p,
            Err(why) => return self.finish(&key, Err(DnsError::PermFail(why)), 0, now),
        };
        let server = q.server;
        self.io.push(if q.tcp {
            let mut framed = Vec::with_capacity(packet.len() + 2);
            framed.extend_from_slice(&(packet.len() as u16).to_be_bytes());
            framed.extend_from_slice(&packet);
            Io::Tcp {
                tx,
                server,
                packet: framed,
            }
        } else {
            Io::Udp { tx, server, packet }
        });
        self.io.push(Io::Deadline {
            tx,
            at: now + q.conf.timeout,
        });
        self.txs.insert(tx, key);
    }

    /// The question whose current try is `tx`.
    fn current(&self, tx: Tx) -> Option<Key> {
        let key = self.txs.get(&tx)?;
        let q = self.questions.get(key)?;
        (q.tx == tx).then(|| key.clone())
    }

    /// Ends try `tx` (its socket closed, its deadline stale).
    fn end_try(&mut self, tx: Tx) {
        self.txs.remove(&tx);
        self.io.push(Io::Close(tx));
    }

    /// The current try of `key` failed (`why`): the next server, the next round, or
    /// TempFail after the last.
    fn next_server(&mut self, key: Key, why: String, now: Instant) {
        let Some(q) = self.questions.get_mut(&key) else {
            return;
        };
        log::debug!(
            "dns query name={} type={} server={} failed: {why}",
            key.0,
            key.1.as_str(),
            q.server
        );
        let tx = q.tx;
        q.failed += 1;
        let n = q.conf.servers.len();
        let tries = n * q.conf.attempts as usize;
        let next = q.conf.servers.get((q.first + q.failed) % n.max(1)).copied();
        let more = match next {
            Some(server) if q.failed < tries => {
                q.server = server;
                q.tcp = q.conf.use_vc;
                true
            }
            _ => false,
        };
        self.end_try(tx);
        if more {
            self.start_try(key, now);
        } else {
            let why = format!("no answer from the nameservers (last: {why})");
            self.finish(&key, Err(DnsError::TempFail(why)), 0, now);
        }
    }

    /// The question is answered: cached, logged, handed to every waiter.
    fn finish(&mut self, key: &Key, result: DnsResult, ttl: u32, now: Instant) {
        let Some(q) = self.questions.remove(key) else {
            return;
        };
        if self.txs.get(&q.tx) == Some(key) {
            self.end_try(q.tx);
        }
        log::debug!(
            "dns query name={} type={} result={}",
            key.0,
            key.1.as_str(),
            describe(&result)
        );
        self.counts.count(&result);
        self.cache.put(&key.0, key.1, &result, ttl, now);
        for w in q.waiters {
            self.answer(w, key.0.clone(), key.1, result.clone());
        }
    }

    /// A datagram from `from` on the socket of `tx`.
    pub fn on_datagram(&mut self, tx: Tx, from: SocketAddr, data: &[u8], now: Instant) {
        let Some(key) = self.current(tx) else {
            return;
        };
        let Some(q) = self.questions.get(&key) else {
            return;
        };
        if q.tcp || from != q.server {
            return;
        }
        match wire::parse(data, q.id, &key.0, key.1) {
            Some(reply) => self.on_reply(key, reply, now),
            None => log::debug!(
                "dns query name={} type={}: a datagram that is not the answer ignored",
                key.0,
                key.1.as_str()
            ),
        }
    }

    /// Bytes from the TCP connection of `tx`.
    pub fn on_stream(&mut self, tx: Tx, data: &[u8], now: Instant) {
        let Some(key) = self.current(tx) else {
            return;
        };
        let Some(q) = self.questions.get_mut(&key) else {
            return;
        };
        if !q.tcp {
            return;
        }
        let room = MAX_STREAM - q.stream.len();
        q.stream.extend_from_slice(&data[..data.len().min(room)]);
        if q.stream.len() < 2 {
            return;
        }
        let len = usize::from(u16::from_be_bytes([q.stream[0], q.stream[1]]));
        if q.stream.len() < 2 + len {
            return;
        }
        let parsed = wire::parse(&q.stream[2..2 + len], q.id, &key.0, key.1);
        match parsed {
            // Over TCP a truncated answer cannot be completed.
            Some(Reply::Truncated) => self.next_server(key, "truncated over TCP".into(), now),
            Some(reply) => self.on_reply(key, reply, now),
            None => self.next_server(key, "an answer to another question".into(), now),
        }
    }

    /// The socket of `tx` failed or its connection ended (`why`).
    pub fn failed(&mut self, tx: Tx, why: &str, now: Instant) {
        if let Some(key) = self.current(tx) {
            self.next_server(key, why.to_string(), now);
        }
    }

    /// The deadline of `tx` came.
    pub fn timeout(&mut self, tx: Tx, now: Instant) {
        if let Some(key) = self.current(tx) {
            self.next_server(key, "timeout".into(), now);
        }
    }

    fn on_reply(&mut self, key: Key, reply: Reply, now: Instant) {
        let Some(q) = self.questions.get_mut(&key) else {
            return;
        };
        let server = q.server;
        match reply {
            Reply::Truncated => {
                q.tcp = true;
                let tx = q.tx;
                self.end_try(tx);
                self.start_try(key, now);
            }
            // RFC 6891 §7: a server that does not know EDNS; once more without it.
            Reply::Rcode(rcode::FORMERR | rcode::NOTIMP) if q.edns => {
                q.edns = false;
                let tx = q.tx;
                self.end_try(tx);
                self.start_try(key, now);
            }
            Reply::Rcode(rcode::NOTIMP) => {
                let why = format!("{server} does not implement the query");
                self.finish(&key, Err(DnsError::PermFail(why)), 0, now);
            }
            Reply::Rcode(rc) => {
                let name = match rc {
                    rcode::FORMERR => "FORMERR".to_string(),
                    rcode::SERVFAIL => "SERVFAIL".to_string(),
                    rcode::REFUSED => "REFUSED".to_string(),
                    other => format!("rcode {other}"),
                };
                self.next_server(key, format!("{name} from {server}"), now);
            }
            Reply::Malformed(why) => self.next_server(key, format!("{why} from {server}"), now),
            final_reply => {
                let trusted = q.conf.trusted();
                if let Some((result, ttl)) = final_reply.into_result(trusted) {
                    self.finish(&key, result, ttl, now);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "resolver_tests.rs"]
mod tests;
