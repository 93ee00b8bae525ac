//! The loop's side of the DNS resolver (`crate::dns::resolver`): its sockets are
//! endpoints of the slab (a fresh connected UDP socket per try, a TCP connection after
//! a truncated answer), its deadlines are in the loop's heap, and its answers are handed
//! to their waiters at the loop turn, never inside [`Server::dns_ask`].
//!
//! /etc/resolv.conf and /etc/hosts are read at start and again when they changed (looked
//! at, at most every few seconds, when a question is asked).

use super::deadlines::Due;
use super::{Endpoint, Server, FIRST_SLOT};
use crate::dns::conf::{Hosts, ResolvConf};
use crate::dns::resolver::{Io, Resolver, Tx};
use crate::dns::{DnsResult, Qtype};
use mio::net::{TcpStream, UdpSocket};
use mio::{Interest, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

const RESOLV_CONF: &str = "/etc/resolv.conf";
const HOSTS: &str = "/etc/hosts";
/// The files are not looked at more often than this.
const RECHECK: Duration = Duration::from_secs(5);
/// The configuration files are read up to this size.
const MAX_FILE: u64 = 1 << 20;
/// Datagrams read from one socket per readiness event at most (the socket is connected:
/// only the server can send them).
const READS: usize = 64;
/// Rounds of answers handed out in one turn (each may ask more from the cache).
const ROUNDS: usize = 16;

/// Who waits for an answer; one variant per user, each answered by a method of its own
/// file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum DnsWaiter {
    /// The reverse DNS of an SMTP session's client (`rdns.rs`): the PTR query when
    /// `host` is `None`, else the forward confirmation of `host`.
    Rdns {
        /// Slab key of the session.
        key: usize,
        /// Its generation.
        gen: u64,
        /// The client's address.
        ip: IpAddr,
        /// The name found by the PTR query.
        host: Option<String>,
    },
    /// The host of an MTA-STS policy fetch (`sts.rs`).
    Sts {
        /// Slab key of the fetch.
        key: usize,
        /// Its generation.
        gen: u64,
    },
    /// An outgoing session's next hop (`mta.rs`).
    Mta {
        /// The queue manager's session id.
        session: u64,
        /// What the session asked it for.
        tag: u32,
    },
}

/// A socket of the resolver: an endpoint of the slab.
pub(super) struct DnsSock {
    tx: Tx,
    kind: SockKind,
}

enum SockKind {
    Udp(UdpSocket),
    Tcp {
        sock: TcpStream,
        out: Vec<u8>,
        sent: usize,
    },
}

/// Identifies a version of a file: device, inode, size, change time.
type Stamp = Option<(u64, u64, u64, i64, i64)>;

fn stamp(path: &str) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

fn read_small(path: &str) -> String {
    let mut s = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_FILE).read_to_string(&mut s);
    }
    s
}

/// The engine's resolver, its sockets and what it read.
pub(super) struct Dns {
    resolver: Resolver<DnsWaiter>,
    socks: HashMap<Tx, usize>,
    files: (Stamp, Stamp),
    checked: Instant,
    buf: Box<[u8]>,
}

impl Dns {
    /// Questions answered so far, by result.
    pub(super) fn counts(&self) -> crate::dns::resolver::DnsCounts {
        self.resolver.counts
    }

    /// The resolver for the files as they are now.
    pub(super) fn new(now: Instant) -> Dns {
        let files = (stamp(RESOLV_CONF), stamp(HOSTS));
        let conf = ResolvConf::parse(&read_small(RESOLV_CONF));
        let hosts = Hosts::parse(&read_small(HOSTS));
        log::debug!(
            "dns nameservers={:?} trusted={}",
            conf.servers,
            conf.trusted()
        );
        Dns {
            resolver: Resolver::new(conf, hosts, crate::sys::random_u64),
            socks: HashMap::new(),
            files,
            checked: now,
            buf: vec![0u8; 65_536].into_boxed_slice(),
        }
    }

    /// Reads the files again if they changed (looked at every [`RECHECK`] at most).
    fn refresh(&mut self, now: Instant) {
        if now < self.checked + RECHECK {
            return;
        }
        self.checked = now;
        let files = (stamp(RESOLV_CONF), stamp(HOSTS));
        if files != self.files {
            self.files = files;
            let conf = ResolvConf::parse(&read_small(RESOLV_CONF));
            log::info!(
                "dns configuration read again: nameservers={:?} trusted={}",
                conf.servers,
                conf.trusted()
            );
            self.resolver
                .set_conf(conf, Hosts::parse(&read_small(HOSTS)));
        }
    }

    /// The addresses /etc/hosts gives `name`, IPv6 first.
    pub(super) fn hosts(&self, name: &str) -> Vec<IpAddr> {
        self.resolver.hosts(name)
    }

    /// The names to try for a host name of the configuration (search domains).
    pub(super) fn candidates(&self, name: &str) -> Vec<String> {
        self.resolver.conf().candidates(name)
    }

    /// Whether answers wait for the loop turn.
    pub(super) fn has_done(&self) -> bool {
        self.resolver.has_done()
    }
}

impl Server {
    /// Asks (`name`, `qtype`) as an absolute name for `waiter`; the answer comes in
    /// [`Server::dns_done`] at the loop turn, even from the cache.
    pub(super) fn dns_ask(&mut self, name: &str, qtype: Qtype, waiter: DnsWaiter, now: Instant) {
        self.dns.refresh(now);
        self.dns.resolver.ask(name, qtype, waiter, now);
        self.dns_io(now);
    }

    /// Hands out the answers ready (the loop turn).
    pub(super) fn dns_turn(&mut self, now: Instant) {
        for _ in 0..ROUNDS {
            let done = self.dns.resolver.take_done();
            if done.is_empty() {
                return;
            }
            for d in done {
                self.dns_done(d.waiter, &d.name, d.qtype, d.result, now);
            }
            // What outgoing sessions gave the queue manager.
            self.queue_actions(now);
        }
    }

    /// An answer for `waiter` to (`name`, `qtype`).
    pub(super) fn dns_done(
        &mut self,
        waiter: DnsWaiter,
        name: &str,
        qtype: Qtype,
        result: DnsResult,
        now: Instant,
    ) {
        match waiter {
            DnsWaiter::Rdns { key, gen, ip, host } => {
                self.rdns_answer(key, gen, ip, host, result, now)
            }
            DnsWaiter::Mta { session, tag } => self.mta_dns(session, tag, name, qtype, result, now),
            DnsWaiter::Sts { key, gen } => self.sts_fetch_dns(key, gen, qtype, result, now),
        }
    }

    /// The deadline of try `tx` came.
    pub(super) fn dns_due(&mut self, tx: Tx, now: Instant) {
        self.dns.resolver.timeout(tx, now);
        self.dns_io(now);
    }

    /// Carries out what the resolver asked for (a failure to open a socket is fed back,
    /// which may ask for more: the loop ends when a round asks nothing).
    fn dns_io(&mut self, now: Instant) {
        loop {
            let io = self.dns.resolver.take_io();
            if io.is_empty() {
                return;
            }
            for op in io {
                match op {
                    Io::Udp { tx, server, packet } => {
                        if let Err(e) = self.dns_open_udp(tx, server, &packet) {
                            self.dns.resolver.failed(tx, &e.to_string(), now);
                        }
                    }
                    Io::Tcp { tx, server, packet } => {
                        if let Err(e) = self.dns_open_tcp(tx, server, packet) {
                            self.dns.resolver.failed(tx, &e.to_string(), now);
                        }
                    }
                    Io::Close(tx) => {
                        if let Some(key) = self.dns.socks.remove(&tx) {
                            // Deregistered and removed between batches, by `reap`.
                            self.closing.push(key);
                        }
                    }
                    Io::Deadline { tx, at } => self.timers.add(at, Due::Dns(tx)),
                }
            }
        }
    }

    /// Registers a resolver socket as an endpoint.
    fn dns_insert(&mut self, tx: Tx, mut kind: SockKind, interest: Interest) -> io::Result<()> {
        let entry = self.slab.vacant_entry();
        let key = entry.key();
        let token = Token(key + FIRST_SLOT);
        match &mut kind {
            SockKind::Udp(s) => self.poll.registry().register(s, token, interest)?,
            SockKind::Tcp { sock, .. } => self.poll.registry().register(sock, token, interest)?,
        }
        entry.insert(Endpoint::Dns(Box::new(DnsSock { tx, kind })));
        self.dns.socks.insert(tx, key);
        Ok(())
    }

    /// A fresh UDP socket connected to `server` (the kernel picks a random source port
    /// and drops datagrams from anyone else), the query sent.
    fn dns_open_udp(&mut self, tx: Tx, server: SocketAddr, packet: &[u8]) -> io::Result<()> {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let sock = UdpSocket::bind(local)?;
        sock.connect(server)?;
        sock.send(packet)?;
        self.dns_insert(tx, SockKind::Udp(sock), Interest::READABLE)
    }

    /// A TCP connection to `server`; the query goes when it is writable.
    fn dns_open_tcp(&mut self, tx: Tx, server: SocketAddr, packet: Vec<u8>) -> io::Result<()> {
        let sock = TcpStream::connect(server)?;
        let kind = SockKind::Tcp {
            sock,
            out: packet,
            sent: 0,
        };
        self.dns_insert(tx, kind, Interest::READABLE | Interest::WRITABLE)
    }

    /// Events on resolver socket `key`.
    pub(super) fn dns_sock_io(&mut self, key: usize, now: Instant) {
        let Some(Endpoint::Dns(s)) = self.slab.get_mut(key) else {
            return;
        };
        let tx = s.tx;
        if self.dns.socks.get(&tx) != Some(&key) {
            return; // closed already: its removal waits for the reap
        }
        let buf = &mut self.dns.buf;
        let r = &mut self.dns.resolver;
        match &mut s.kind {
            SockKind::Udp(sock) => {
                for _ in 0..READS {
                    match sock.recv_from(buf) {
                        Ok((n, from)) => r.on_datagram(tx, from, &buf[..n], now),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // ECONNREFUSED: the port is closed (ICMP).
                        Err(e) => {
                            r.failed(tx, &e.to_string(), now);
                            break;
                        }
                    }
                    if !r.is_current(tx) {
                        break;
                    }
                }
            }
            SockKind::Tcp { sock, out, sent } => {
                if let Err(e) = dns_tcp(sock, out, sent, buf, |bytes| r.on_stream(tx, bytes, now)) {
                    r.failed(tx, &e, now);
                }
            }
        }
        self.dns_io(now);
    }

    /// A bug in the handling of resolver socket `key`: its try fails.
    pub(super) fn dns_bug(&mut self, key: usize, now: Instant) {
        if let Some(Endpoint::Dns(s)) = self.slab.get(key) {
            let tx = s.tx;
            self.dns.resolver.failed(tx, "internal error", now);
            self.dns_io(now);
        }
    }

    /// Removes resolver socket `key` (between batches).
    pub(super) fn dns_reap(&mut self, key: usize) {
        if let Some(Endpoint::Dns(mut s)) = self.slab.try_remove(key) {
            let _ = match &mut s.kind {
                SockKind::Udp(sock) => self.poll.registry().deregister(sock),
                SockKind::Tcp { sock, .. } => self.poll.registry().deregister(sock),
            };
            if self.dns.socks.get(&s.tx) == Some(&key) {
                self.dns.socks.remove(&s.tx);
            }
        }
    }
}

/// Moves the bytes of a TCP try: the query out, the answer in (to `got`) until the
/// socket would block; an error or the end of the connection is `Err`.
fn dns_tcp(
    sock: &mut TcpStream,
    out: &[u8],
    sent: &mut usize,
    buf: &mut [u8],
    mut got: impl FnMut(&[u8]),
) -> Result<(), String> {
    if let Ok(Some(e)) | Err(e) = sock.take_error() {
        return Err(e.to_string());
    }
    while *sent < out.len() {
        match sock.write(&out[*sent..]) {
            Ok(n) => *sent += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    // An answer is 65,537 bytes at most: a few reads.
    for _ in 0..READS {
        match sock.read(buf) {
            Ok(0) => return Err("connection closed".into()),
            Ok(n) => got(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}
