//! Key lookups: TXT questions to the nameservers of /etc/resolv.conf, asked from the
//! verifying threads with blocking sockets and a deadline, answers kept for their
//! TTL. Queries are built and answers parsed by the daemon's own DNS code
//! (`smtpd::dns`); this module only carries them (UDP, TCP when truncated).

use crate::verify::{KeySource, Txt};
use ring::rand::{SecureRandom, SystemRandom};
use smtpd::dns::conf::ResolvConf;
use smtpd::dns::wire::{self, QueryOpts, Reply};
use smtpd::dns::{Qtype, Rdata};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Answers kept at most; past that, expired ones go, then all.
const CACHE_MAX: usize = 10_000;
/// The longest time an answer is kept.
const TTL_MAX: u32 = 3600;

/// The resolver shared by the verifying threads.
#[derive(Debug)]
pub struct Resolver {
    conf: ResolvConf,
    cache: Mutex<HashMap<String, (Instant, Txt)>>,
    rng: SystemRandom,
}

/// A resolver whose lookups end by a deadline.
#[derive(Debug)]
pub struct Bounded<'a> {
    resolver: &'a Resolver,
    deadline: Instant,
}

impl Resolver {
    /// A resolver for the nameservers of `conf`.
    pub fn new(conf: ResolvConf) -> Resolver {
        Resolver {
            conf,
            cache: Mutex::new(HashMap::new()),
            rng: SystemRandom::new(),
        }
    }

    /// A resolver for /etc/resolv.conf (127.0.0.1 when there is none, as glibc does).
    pub fn system() -> Resolver {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        Resolver::new(ResolvConf::parse(&text))
    }

    /// The nameservers asked.
    pub fn servers(&self) -> &[SocketAddr] {
        &self.conf.servers
    }

    /// This resolver, with lookups that give up at `deadline`.
    pub fn until(&self, deadline: Instant) -> Bounded<'_> {
        Bounded {
            resolver: self,
            deadline,
        }
    }

    fn cached(&self, name: &str) -> Option<Txt> {
        let cache = self.cache.lock().ok()?;
        let (until, txt) = cache.get(name)?;
        (*until > Instant::now()).then(|| txt.clone())
    }

    fn keep(&self, name: &str, txt: &Txt, ttl: u32) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        if cache.len() >= CACHE_MAX {
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        let until = now + Duration::from_secs(u64::from(ttl.min(TTL_MAX)));
        cache.insert(name.to_string(), (until, txt.clone()));
    }

    fn lookup(&self, name: &str, deadline: Instant) -> Txt {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(t) = self.cached(&name) {
            return t;
        }
        let mut id = [0u8; 2];
        if self.rng.fill(&mut id).is_err() {
            return Txt::TempFail("no random numbers".into());
        }
        let id = u16::from_be_bytes(id);
        let query = |edns| {
            let opts = QueryOpts {
                edns,
                dnssec: false,
            };
            wire::query(id, &name, Qtype::Txt, opts)
        };
        let (Ok(with_edns), Ok(plain)) = (query(true), query(false)) else {
            // A name that cannot be asked has no key.
            return Txt::None;
        };
        let mut last = "no nameserver answered".to_string();
        for _ in 0..self.conf.attempts.max(1) {
            for &server in &self.conf.servers {
                let mut reply = None;
                // A server that does not know EDNS0 may answer FORMERR (RFC 6891
                // §7): it is asked again without.
                for q in [&with_edns, &plain] {
                    let now = Instant::now();
                    if now >= deadline {
                        return Txt::TempFail("timed out".into());
                    }
                    let wait = self.conf.timeout.min(deadline - now);
                    reply = if self.conf.use_vc {
                        tcp(server, q, id, &name, wait)
                    } else {
                        udp(server, q, id, &name, wait)
                    };
                    if reply == Some(Reply::Truncated) {
                        let left = deadline.saturating_duration_since(Instant::now());
                        reply = tcp(server, q, id, &name, self.conf.timeout.min(left));
                    }
                    if reply != Some(Reply::Rcode(wire::rcode::FORMERR)) {
                        break;
                    }
                }
                match reply {
                    Some(Reply::Answer(a)) => {
                        let records: Vec<Vec<u8>> = a
                            .records
                            .into_iter()
                            .filter_map(|r| match r {
                                Rdata::Txt(t) => Some(t),
                                _ => None,
                            })
                            .collect();
                        let txt = if records.is_empty() {
                            Txt::None
                        } else {
                            Txt::Records(records)
                        };
                        self.keep(&name, &txt, a.ttl);
                        return txt;
                    }
                    Some(Reply::NxDomain { ttl, .. }) => {
                        self.keep(&name, &Txt::None, ttl);
                        return Txt::None;
                    }
                    Some(Reply::Rcode(rc)) => last = format!("rcode {rc} from {server}"),
                    Some(Reply::Malformed(why)) => last = format!("{why} from {server}"),
                    Some(Reply::Truncated) => last = format!("truncated answer from {server}"),
                    None => last = format!("no answer from {server}"),
                }
            }
        }
        Txt::TempFail(last)
    }
}

impl KeySource for Bounded<'_> {
    fn txt(&self, name: &str) -> Txt {
        self.resolver.lookup(name, self.deadline)
    }
}

/// One question over UDP: answers that are not ours are skipped until `wait` is over.
fn udp(server: SocketAddr, query: &[u8], id: u16, name: &str, wait: Duration) -> Option<Reply> {
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let sock = UdpSocket::bind(local).ok()?;
    sock.connect(server).ok()?;
    sock.send(query).ok()?;
    let end = Instant::now() + wait;
    let mut buf = vec![0u8; 65535];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).ok()?;
        let n = sock.recv(&mut buf).ok()?;
        if let Some(r) = wire::parse(&buf[..n], id, name, Qtype::Txt) {
            return Some(r);
        }
    }
}

/// One question over TCP (RFC 1035 §4.2.2: each message after its two-byte length).
fn tcp(server: SocketAddr, query: &[u8], id: u16, name: &str, wait: Duration) -> Option<Reply> {
    if wait.is_zero() {
        return None;
    }
    let end = Instant::now() + wait;
    let mut s = TcpStream::connect_timeout(&server, wait).ok()?;
    let left = end
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    s.set_read_timeout(Some(left)).ok()?;
    s.set_write_timeout(Some(left)).ok()?;
    let len = u16::try_from(query.len()).ok()?;
    let mut msg = len.to_be_bytes().to_vec();
    msg.extend_from_slice(query);
    s.write_all(&msg).ok()?;
    let mut head = [0u8; 2];
    s.read_exact(&mut head).ok()?;
    let mut answer = vec![0u8; usize::from(u16::from_be_bytes(head))];
    s.read_exact(&mut answer).ok()?;
    wire::parse(&answer, id, name, Qtype::Txt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    /// A one-shot server on 127.0.0.1 answering one UDP question with `answer(query)`.
    fn server(answer: impl Fn(&[u8]) -> Vec<Vec<u8>> + Send + 'static) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            if let Ok((n, peer)) = s.recv_from(&mut buf) {
                for a in answer(&buf[..n]) {
                    let _ = s.send_to(&a, peer);
                }
            }
        });
        addr
    }

    /// The answer to `q` with one TXT record of two strings.
    fn txt_answer(q: &[u8], id_delta: u16) -> Vec<u8> {
        let mut a = q.to_vec();
        let id = u16::from_be_bytes([q[0], q[1]]).wrapping_add(id_delta);
        a[..2].copy_from_slice(&id.to_be_bytes());
        a[2] = 0x81; // QR, RD
        a[3] = 0x80; // RA
        a[6..8].copy_from_slice(&[0, 1]); // one answer
        a[10..12].copy_from_slice(&[0, 0]); // no OPT record back
        let question_end = 12 + q[12..].iter().position(|&b| b == 0).unwrap() + 1 + 4;
        a.truncate(question_end);
        a.extend_from_slice(&[0xc0, 12, 0, 16, 0, 1, 0, 0, 0, 60]);
        let rdata = b"\x05v=DKI\x07M1; p=x";
        a.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        a.extend_from_slice(rdata);
        a
    }

    fn resolver(servers: &[SocketAddr]) -> Resolver {
        let mut conf = ResolvConf::parse("options timeout:1 attempts:1\n");
        conf.servers = servers.to_vec();
        Resolver::new(conf)
    }

    #[test]
    fn an_answer_after_a_stray_one_is_taken_and_kept() {
        let addr = server(|q| vec![txt_answer(q, 1), txt_answer(q, 0)]);
        let r = resolver(&[addr]);
        let deadline = Instant::now() + Duration::from_secs(5);
        let want = Txt::Records(vec![b"v=DKIM1; p=x".to_vec()]);
        assert_eq!(r.until(deadline).txt("S._DomainKey.Example.ORG."), want);
        // The server is gone: the second answer comes from the cache.
        assert_eq!(r.until(deadline).txt("s._domainkey.example.org"), want);
    }

    #[test]
    fn a_server_without_edns_is_asked_again_without() {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = s.local_addr().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        thread::spawn(move || {
            let mut buf = [0u8; 1500];
            for _ in 0..2 {
                let Ok((n, peer)) = s.recv_from(&mut buf) else {
                    return;
                };
                let q = &buf[..n];
                let answer = if q[11] == 1 {
                    // An OPT record: FORMERR.
                    let mut a = q.to_vec();
                    a[2] = 0x81;
                    a[3] = 0x81;
                    a
                } else {
                    txt_answer(q, 0)
                };
                let _ = s.send_to(&answer, peer);
            }
        });
        let r = resolver(&[addr]);
        let got = r
            .until(Instant::now() + Duration::from_secs(5))
            .txt("a._domainkey.b.example");
        assert_eq!(got, Txt::Records(vec![b"v=DKIM1; p=x".to_vec()]));
    }

    #[test]
    fn silence_is_a_temporary_failure_within_the_deadline() {
        let addr = server(|_| vec![]);
        let r = resolver(&[addr]);
        let start = Instant::now();
        let got = r
            .until(start + Duration::from_millis(300))
            .txt("x._domainkey.example.org");
        assert!(matches!(got, Txt::TempFail(_)), "{got:?}");
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
