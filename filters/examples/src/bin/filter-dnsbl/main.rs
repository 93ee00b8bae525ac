//! filter-dnsbl [-s] [-t MS] [-r RESOLV.CONF] ZONE...: refuses clients listed in DNS
//! blocklists (RFC 5782) with 554 5.7.1 and the zone's reason (its TXT record).
//!
//! At connect, the client's address is looked up under each zone with non-blocking
//! UDP queries to the first name server of RESOLV.CONF (default /etc/resolv.conf); the
//! filter answers the session later, when the answers come, and serves the other
//! sessions meanwhile. An A record in 127.0.0.0/8 lists the client; its TXT record
//! gives the reason. A lookup that takes more than MS milliseconds (default 2000), or
//! fails, lets the client in (fail open) and is logged. `-s` makes every lookup
//! synchronous, as a filter without deferred answers would be (for comparison).

mod dns;

use smtpd_filter::{Connect, Ctx, Decision, Filter, Interest, TimerId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// The longest reason given to the client.
const MAX_REASON: usize = 200;

struct Query {
    session: u64,
    zone: usize,
    name: String,
    qtype: u16,
}

struct Lookup {
    zones_left: usize,
    /// The zone that listed the client, whose TXT was asked.
    listed: Option<usize>,
    timer: Option<TimerId>,
}

struct Dnsbl {
    sock: UdpSocket,
    server: SocketAddr,
    zones: Vec<String>,
    queries: HashMap<u16, Query>,
    lookups: HashMap<u64, Lookup>,
    seed: u64,
}

impl Dnsbl {
    /// A query id not in use (xorshift, seeded from the clock and the pid).
    fn next_id(&mut self) -> u16 {
        loop {
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            let id = (self.seed >> 24) as u16;
            if !self.queries.contains_key(&id) {
                return id;
            }
        }
    }

    fn ask(&mut self, session: u64, zone: usize, name: String, qtype: u16) -> bool {
        let id = self.next_id();
        let mut q = Vec::with_capacity(64);
        if !dns::query(id, &name, qtype, &mut q) || self.sock.send_to(&q, self.server).is_err() {
            return false;
        }
        self.queries.insert(
            id,
            Query {
                session,
                zone,
                name,
                qtype,
            },
        );
        true
    }

    /// Starts the lookups of a session; `Some` if it is decided at once.
    fn start(&mut self, session: u64, c: &Connect) -> Option<Decision> {
        let Some(ip) = client_ip(&c.remote) else {
            return Some(Decision::Proceed); // a local client
        };
        let mut sent = 0;
        for z in 0..self.zones.len() {
            let name = dns::reversed(ip, &self.zones[z]);
            if self.ask(session, z, name, dns::A) {
                sent += 1;
            }
        }
        if sent == 0 {
            eprintln!("{session:016x} dnsbl lookup failed for {ip}: accepted");
            return Some(Decision::Proceed);
        }
        self.lookups.insert(
            session,
            Lookup {
                zones_left: sent,
                listed: None,
                timer: None,
            },
        );
        None
    }

    /// Forgets a session's lookup and its queries; its timer, to cancel.
    fn end(&mut self, session: u64) -> Option<TimerId> {
        let l = self.lookups.remove(&session)?;
        self.queries.retain(|_, q| q.session != session);
        l.timer
    }

    /// Takes the datagrams waiting; the sessions decided, with their decisions.
    fn receive(&mut self, done: &mut Vec<(u64, Decision, Option<TimerId>)>) {
        let mut buf = [0u8; 4096];
        loop {
            let (n, from) = match self.sock.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return, // WouldBlock, or a refused port: the timeout decides
            };
            if from != self.server {
                continue;
            }
            self.answer(&buf[..n], done);
        }
    }

    fn answer(&mut self, msg: &[u8], done: &mut Vec<(u64, Decision, Option<TimerId>)>) {
        let Some(id) = dns::id_of(msg) else { return };
        let Some(q) = self.queries.get(&id) else {
            return;
        };
        let Some(reply) = dns::parse(msg, id, &q.name, q.qtype) else {
            return; // not its answer: keep waiting for it
        };
        let Some(q) = self.queries.remove(&id) else {
            return;
        };
        let Some(l) = self.lookups.get_mut(&q.session) else {
            return;
        };
        if q.qtype == dns::TXT {
            let reason = match reply {
                dns::Reply::Text(t) => clean(&t),
                _ => format!("Listed by {}", self.zones[q.zone]),
            };
            let timer = self.end(q.session);
            eprintln!(
                "{:016x} dnsbl listed by {}: {reason}",
                q.session, self.zones[q.zone]
            );
            done.push((
                q.session,
                Decision::Reject(554, format!("5.7.1 {reason}")),
                timer,
            ));
            return;
        }
        l.zones_left -= 1;
        let listed =
            matches!(&reply, dns::Reply::Addrs(a) if a.iter().any(|a| a[0] == 127 && a[1] != 255));
        if listed && l.listed.is_none() {
            l.listed = Some(q.zone);
            if self.ask(q.session, q.zone, q.name.clone(), dns::TXT) {
                return;
            }
            let timer = self.end(q.session);
            let reason = format!("Listed by {}", self.zones[q.zone]);
            done.push((
                q.session,
                Decision::Reject(554, format!("5.7.1 {reason}")),
                timer,
            ));
            return;
        }
        if reply == dns::Reply::Fail {
            eprintln!(
                "{:016x} dnsbl {} failed for {}",
                q.session, self.zones[q.zone], q.name
            );
        }
        if l.zones_left == 0 && l.listed.is_none() {
            let timer = self.end(q.session);
            done.push((q.session, Decision::Proceed, timer));
        }
    }

    /// `-s`: waits for the session's answers here, until `deadline`.
    fn wait(&mut self, session: u64, deadline: Instant) -> Decision {
        let mut done = Vec::new();
        loop {
            let now = Instant::now();
            if now >= deadline || self.sock.set_read_timeout(Some(deadline - now)).is_err() {
                break;
            }
            let _ = self.sock.set_nonblocking(false);
            let mut buf = [0u8; 4096];
            let got = self.sock.recv_from(&mut buf);
            let _ = self.sock.set_nonblocking(true);
            if let Ok((n, from)) = got {
                if from == self.server {
                    self.answer(&buf[..n], &mut done);
                }
            }
            if let Some(i) = done.iter().position(|d| d.0 == session) {
                return done.swap_remove(i).1;
            }
        }
        self.end(session);
        eprintln!("{session:016x} dnsbl lookup timed out: accepted");
        Decision::Proceed
    }
}

/// The address of a client given as `ip:port` or `[ip]:port`.
fn client_ip(remote: &str) -> Option<IpAddr> {
    remote.parse::<SocketAddr>().ok().map(|a| a.ip())
}

/// A reason as the client may read it: printable ASCII, bounded.
fn clean(t: &[u8]) -> String {
    let s: String = t
        .iter()
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                ' '
            }
        })
        .take(MAX_REASON)
        .collect();
    let s = s.trim().to_string();
    if s.is_empty() {
        "Listed".into()
    } else {
        s
    }
}

/// The first name server of a resolv.conf.
fn name_server(path: &str) -> io::Result<SocketAddr> {
    let text = std::fs::read_to_string(path)?;
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() == Some("nameserver") {
            if let Some(ip) = w.next().and_then(|a| a.parse::<IpAddr>().ok()) {
                return Ok(SocketAddr::new(ip, 53));
            }
        }
    }
    Err(io::Error::other(format!("{path}: no nameserver")))
}

fn usage() -> ! {
    eprintln!("usage: filter-dnsbl [-s] [-t MS] [-r RESOLV.CONF] ZONE...");
    std::process::exit(2)
}

fn main() {
    let mut sync = false;
    let mut timeout_ms = 2000u64;
    let mut resolv = "/etc/resolv.conf".to_string();
    let mut args = std::env::args().skip(1);
    let mut zones = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "-s" => sync = true,
            "-t" => match args.next().and_then(|v| v.parse().ok()) {
                Some(ms) if ms > 0 => timeout_ms = ms,
                _ => usage(),
            },
            "-r" => resolv = args.next().unwrap_or_else(|| usage()),
            z if z.starts_with('-') => usage(),
            z => zones.push(z.trim_end_matches('.').to_ascii_lowercase()),
        }
    }
    if zones.is_empty() {
        usage();
    }
    let server = name_server(&resolv).unwrap_or_else(|e| {
        eprintln!("filter-dnsbl: {e}");
        std::process::exit(1)
    });
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse()
    } else {
        "[::]:0".parse()
    }
    .unwrap_or_else(|_| usage());
    let sock = UdpSocket::bind(bind)
        .and_then(|s| s.set_nonblocking(true).map(|()| s))
        .unwrap_or_else(|e| {
            eprintln!("filter-dnsbl: udp socket: {e}");
            std::process::exit(1)
        });
    let fd = sock.as_raw_fd();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32)
        | 1;
    let state = Rc::new(RefCell::new(Dnsbl {
        sock,
        server,
        zones,
        queries: HashMap::new(),
        lookups: HashMap::new(),
        seed,
    }));
    let timeout = Duration::from_millis(timeout_ms);
    let (on_conn, on_ready, on_gone) = (state.clone(), state.clone(), state);
    let filter = Filter::new("dnsbl")
        .on_connect(move |ctx: &mut Ctx, c: &Connect| {
            let session = ctx.session;
            let mut st = on_conn.borrow_mut();
            if let Some(d) = st.start(session, c) {
                return d.into();
            }
            if sync {
                return st.wait(session, Instant::now() + timeout).into();
            }
            let gone = on_conn.clone();
            let timer = ctx.timer(timeout, move |ctx| {
                if gone.borrow_mut().end(session).is_some() {
                    eprintln!("{session:016x} dnsbl lookup timed out: accepted");
                    ctx.answer(session, Decision::Proceed);
                }
            });
            if let Some(l) = st.lookups.get_mut(&session) {
                l.timer = Some(timer);
            }
            ctx.later()
        })
        .on_disconnect(move |ctx| {
            if let Some(t) = on_gone.borrow_mut().end(ctx.session) {
                ctx.cancel_timer(t);
            }
        })
        .watch(fd, Interest::READ, move |ctx, _| {
            let mut done = Vec::new();
            on_ready.borrow_mut().receive(&mut done);
            for (session, d, timer) in done {
                if let Some(t) = timer {
                    ctx.cancel_timer(t);
                }
                ctx.answer(session, d);
            }
        });
    if let Err(e) = filter.run() {
        eprintln!("filter-dnsbl: {e}");
        std::process::exit(1);
    }
}
