//! The resolver as dialogs: questions in, packets and deadlines checked, answers fed
//! back, results checked.

use super::*;
use crate::dns::wire::tests::Msg;
use crate::dns::{Answer, Rdata};
use std::time::Duration;

const S1: &str = "127.0.0.153:53";
const S2: &str = "127.0.0.154:53";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn random() -> u64 {
    crate::sys::random_u64()
}

/// One try as the resolver asked for it.
#[derive(Debug)]
struct Try {
    tx: Tx,
    server: SocketAddr,
    tcp: bool,
    /// The query (without the TCP length prefix).
    packet: Vec<u8>,
    deadline: Instant,
}

impl Try {
    fn id(&self) -> u16 {
        u16::from_be_bytes([self.packet[0], self.packet[1]])
    }

    fn edns(&self) -> bool {
        self.packet[11] == 1
    }

    fn ad(&self) -> bool {
        self.packet[3] & 0x20 != 0
    }
}

struct Dialog {
    r: Resolver<u32>,
    now: Instant,
    closed: Vec<Tx>,
}

impl Dialog {
    fn new(resolv_conf: &str) -> Dialog {
        Dialog {
            r: Resolver::new(ResolvConf::parse(resolv_conf), Hosts::default(), random),
            now: Instant::now(),
            closed: Vec::new(),
        }
    }

    fn ask(&mut self, name: &str, qtype: Qtype, w: u32) -> &mut Self {
        self.r.ask(name, qtype, w, self.now);
        self
    }

    /// The one new try asked for (with its deadline); closes noted.
    fn sent(&mut self) -> Try {
        let mut tries = self.tries();
        assert_eq!(tries.len(), 1, "{tries:?}");
        tries.remove(0)
    }

    fn tries(&mut self) -> Vec<Try> {
        let mut out: Vec<Try> = Vec::new();
        for io in self.r.take_io() {
            match io {
                Io::Udp { tx, server, packet } => out.push(Try {
                    tx,
                    server,
                    tcp: false,
                    packet,
                    deadline: self.now,
                }),
                Io::Tcp { tx, server, packet } => {
                    let len = usize::from(u16::from_be_bytes([packet[0], packet[1]]));
                    assert_eq!(len + 2, packet.len());
                    out.push(Try {
                        tx,
                        server,
                        tcp: true,
                        packet: packet[2..].to_vec(),
                        deadline: self.now,
                    })
                }
                Io::Deadline { tx, at } => {
                    let t = out
                        .iter_mut()
                        .find(|t| t.tx == tx)
                        .expect("deadline of a try");
                    t.deadline = at;
                }
                Io::Close(tx) => self.closed.push(tx),
            }
        }
        out
    }

    fn nothing_sent(&mut self) {
        let t = self.tries();
        assert!(t.is_empty(), "{t:?}");
    }

    fn reply(&mut self, t: &Try, m: Msg) {
        self.r.on_datagram(t.tx, t.server, &m.bytes(), self.now);
    }

    fn done(&mut self) -> Vec<(u32, DnsResult)> {
        self.r
            .take_done()
            .into_iter()
            .map(|d| (d.waiter, d.result))
            .collect()
    }

    fn one(&mut self) -> DnsResult {
        let mut d = self.done();
        assert_eq!(d.len(), 1, "{d:?}");
        d.remove(0).1
    }

    fn later(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
    }
}

fn a_record(id: u16, name: &str, ip: [u8; 4]) -> Msg {
    Msg::to(id, name, Qtype::A).an(name, 1, 60, &ip)
}

fn addrs(r: &DnsResult) -> Vec<Rdata> {
    match r {
        Ok(a) => a.records.clone(),
        Err(e) => panic!("{e:?}"),
    }
}

#[test]
fn answer_cache_and_coalescing() {
    let mut d = Dialog::new("nameserver 127.0.0.153\noptions timeout:3\n");
    d.ask("Mail.Example.org.", Qtype::A, 1)
        .ask("mail.example.org", Qtype::A, 2);
    let t = d.sent();
    assert_eq!((t.server, t.tcp), (addr(S1), false));
    assert_eq!(t.deadline, d.now + Duration::from_secs(3));
    assert!(
        t.edns() && t.ad(),
        "loopback nameservers are trusted: AD and DO asked"
    );
    assert!(d.done().is_empty());
    let mut m = a_record(t.id(), "mail.example.org", [192, 0, 2, 1]);
    m.flags |= 0x20;
    d.reply(&t, m);
    let done = d.done();
    d.nothing_sent();
    assert_eq!(done.len(), 2, "both waiters answered by one query");
    let Ok(Answer { secure, .. }) = &done[0].1 else {
        panic!()
    };
    assert!(*secure);
    assert_eq!(d.closed, vec![t.tx]);
    // The cache answers, but only through take_done.
    d.later(30);
    d.ask("MAIL.example.org", Qtype::A, 3);
    d.nothing_sent();
    let r = d.one();
    assert!(matches!(&r, Ok(a) if a.ttl == 30), "{r:?}");
    // After the TTL, a new query.
    d.later(31);
    d.ask("mail.example.org", Qtype::A, 4);
    let t = d.sent();
    d.reply(&t, a_record(t.id(), "mail.example.org", [192, 0, 2, 2]));
    assert_eq!(addrs(&d.one()), vec![Rdata::Addr([192, 0, 2, 2].into())]);
    // A late duplicate answer to the closed try is ignored.
    d.reply(&t, a_record(t.id(), "mail.example.org", [192, 0, 2, 3]));
    assert!(d.done().is_empty());
}

#[test]
fn strangers_are_ignored() {
    let mut d = Dialog::new("nameserver 127.0.0.153\n");
    d.ask("h.example", Qtype::A, 1);
    let t = d.sent();
    // Wrong id, wrong question, wrong source, garbage: still waiting.
    d.reply(
        &t,
        a_record(t.id().wrapping_add(1), "h.example", [6, 6, 6, 6]),
    );
    d.reply(&t, a_record(t.id(), "other.example", [6, 6, 6, 6]));
    let m = a_record(t.id(), "h.example", [6, 6, 6, 6]);
    d.r.on_datagram(t.tx, addr("127.0.0.1:53"), &m.bytes(), d.now);
    d.r.on_datagram(t.tx, t.server, b"\x00", d.now);
    d.r.on_stream(t.tx, &[0, 1, 2], d.now);
    d.r.on_datagram(t.tx + 100, t.server, &m.bytes(), d.now);
    assert!(d.done().is_empty());
    d.nothing_sent();
    d.reply(&t, a_record(t.id(), "h.example", [192, 0, 2, 9]));
    assert_eq!(addrs(&d.one()), vec![Rdata::Addr([192, 0, 2, 9].into())]);
}

#[test]
fn servfail_and_refused_move_to_the_next_server() {
    let mut d = Dialog::new("nameserver 127.0.0.153\nnameserver 127.0.0.154\n");
    d.ask("h.example", Qtype::Aaaa, 1);
    let t = d.sent();
    d.reply(&t, Msg::to(t.id(), "h.example", Qtype::Aaaa).rcode(2));
    let t2 = d.sent();
    assert_eq!(t2.server, addr(S2));
    assert_ne!(t2.tx, t.tx);
    assert!(d.closed.contains(&t.tx));
    d.reply(&t2, Msg::to(t2.id(), "h.example", Qtype::Aaaa).rcode(5));
    // The second round starts again with the first server.
    let t3 = d.sent();
    assert_eq!(t3.server, addr(S1));
    let v6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    d.reply(
        &t3,
        Msg::to(t3.id(), "h.example", Qtype::Aaaa).an("h.example", 28, 60, &v6),
    );
    assert_eq!(addrs(&d.one()), vec![Rdata::Addr(v6.into())]);
}

#[test]
fn timeouts_then_tempfail_not_cached() {
    let mut d = Dialog::new("nameserver 127.0.0.153\nnameserver 127.0.0.154\noptions timeout:2\n");
    d.ask("slow.example", Qtype::A, 1);
    let mut servers = Vec::new();
    let mut old = Vec::new();
    for _ in 0..4 {
        let t = d.sent();
        servers.push(t.server);
        // A stale deadline (an earlier try's) does nothing.
        for tx in &old {
            d.r.timeout(*tx, d.now);
        }
        d.nothing_sent();
        d.later(2);
        d.r.timeout(t.tx, d.now);
        old.push(t.tx);
    }
    assert_eq!(servers, [addr(S1), addr(S2), addr(S1), addr(S2)]);
    let r = d.one();
    assert!(
        matches!(&r, Err(DnsError::TempFail(why)) if why.contains("timeout")),
        "{r:?}"
    );
    d.nothing_sent();
    // A temporary failure is not cached: the next question is asked anew.
    d.ask("slow.example", Qtype::A, 2);
    d.sent();
}

#[test]
fn truncated_goes_over_tcp() {
    let mut d = Dialog::new("nameserver 127.0.0.153\n");
    d.ask("big.example", Qtype::Txt, 1);
    let t = d.sent();
    let mut tc = Msg::to(t.id(), "big.example", Qtype::Txt);
    tc.flags |= 0x0200;
    d.reply(&t, tc);
    let tcp = d.sent();
    assert!(tcp.tcp && tcp.server == t.server);
    assert!(d.closed.contains(&t.tx));
    let big = vec![b'x'; 255];
    let mut data = vec![255u8];
    data.extend(&big);
    let msg = Msg::to(tcp.id(), "big.example", Qtype::Txt)
        .an("big.example", 16, 60, &data)
        .bytes();
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend(msg);
    // A datagram on a TCP try is not taken; bytes come one at a time.
    d.r.on_datagram(tcp.tx, tcp.server, &framed[2..], d.now);
    for b in &framed[..framed.len() - 1] {
        d.r.on_stream(tcp.tx, std::slice::from_ref(b), d.now);
    }
    assert!(d.done().is_empty());
    d.r.on_stream(tcp.tx, &framed[framed.len() - 1..], d.now);
    assert_eq!(addrs(&d.one()), vec![Rdata::Txt(big)]);
}

#[test]
fn tcp_failures_move_on() {
    let mut d =
        Dialog::new("nameserver 127.0.0.153\nnameserver 127.0.0.154\noptions use-vc attempts:1\n");
    d.ask("h.example", Qtype::A, 1);
    let t = d.sent();
    assert!(t.tcp, "use-vc: TCP from the start");
    d.r.failed(t.tx, "connection refused", d.now);
    let t2 = d.sent();
    assert!(t2.tcp && t2.server == addr(S2));
    // An answer to another question over TCP is a broken server.
    let msg = a_record(t2.id(), "other.example", [1, 2, 3, 4]).bytes();
    let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
    framed.extend(msg);
    d.r.on_stream(t2.tx, &framed, d.now);
    let r = d.one();
    assert!(
        matches!(&r, Err(DnsError::TempFail(why)) if why.contains("another question")),
        "{r:?}"
    );
}

#[test]
fn formerr_to_edns_then_without() {
    let mut d = Dialog::new("nameserver 127.0.0.153\nnameserver 127.0.0.154\n");
    d.ask("old.example", Qtype::Mx, 1);
    let t = d.sent();
    assert!(t.edns());
    let mut formerr = Msg::to(t.id(), "old.example", Qtype::Mx).rcode(1);
    formerr.qd = 0;
    d.reply(&t, formerr);
    let t2 = d.sent();
    assert!(
        !t2.edns() && t2.server == t.server,
        "same server without OPT"
    );
    // FORMERR again: not EDNS then; the next server (still without OPT).
    d.reply(&t2, Msg::to(t2.id(), "old.example", Qtype::Mx).rcode(1));
    let t3 = d.sent();
    assert!(!t3.edns() && t3.server == addr(S2));
    // NOTIMP without EDNS is final.
    d.reply(&t3, Msg::to(t3.id(), "old.example", Qtype::Mx).rcode(4));
    assert!(matches!(d.one(), Err(DnsError::PermFail(_))));
}

#[test]
fn negative_answers_are_cached() {
    let mut d = Dialog::new("nameserver 127.0.0.153\n");
    d.ask("gone.example", Qtype::A, 1);
    let t = d.sent();
    d.reply(
        &t,
        Msg::to(t.id(), "gone.example", Qtype::A)
            .rcode(3)
            .soa("example", 60, 20),
    );
    assert_eq!(d.one(), Err(DnsError::NxDomain { secure: false }));
    d.ask("gone.example", Qtype::A, 2);
    d.nothing_sent();
    assert_eq!(d.one(), Err(DnsError::NxDomain { secure: false }));
    d.ask("h.example", Qtype::Aaaa, 3);
    let t = d.sent();
    d.reply(&t, Msg::to(t.id(), "h.example", Qtype::Aaaa));
    assert!(matches!(d.one(), Ok(a) if a.records.is_empty() && a.ttl == 300));
    d.later(19);
    d.ask("gone.example", Qtype::A, 4)
        .ask("h.example", Qtype::Aaaa, 5);
    d.nothing_sent();
    assert_eq!(d.done().len(), 2);
    d.later(1);
    d.ask("gone.example", Qtype::A, 6);
    d.sent();
}

#[test]
fn ad_counts_only_from_trusted_servers() {
    let mut d = Dialog::new("nameserver 192.0.2.53\n");
    d.ask("h.example", Qtype::A, 1);
    let t = d.sent();
    assert!(
        !t.ad() && t.packet[t.packet.len() - 4] == 0,
        "neither AD nor DO asked"
    );
    let mut m = a_record(t.id(), "h.example", [1, 2, 3, 4]);
    m.flags |= 0x20;
    d.r.on_datagram(t.tx, addr("192.0.2.53:53"), &m.bytes(), d.now);
    assert!(matches!(d.one(), Ok(a) if !a.secure));
    let mut d = Dialog::new("nameserver 192.0.2.53\noptions trust-ad\n");
    d.ask("h.example", Qtype::A, 1);
    let t = d.sent();
    assert!(t.ad());
    let mut m = a_record(t.id(), "h.example", [1, 2, 3, 4]);
    m.flags |= 0x20;
    d.r.on_datagram(t.tx, addr("192.0.2.53:53"), &m.bytes(), d.now);
    assert!(matches!(d.one(), Ok(a) if a.secure));
}

#[test]
fn rotate_bad_names_and_bounds() {
    let mut d = Dialog::new("nameserver 127.0.0.153\nnameserver 127.0.0.154\noptions rotate\n");
    d.ask("a.example", Qtype::A, 1)
        .ask("b.example", Qtype::A, 2);
    let t = d.tries();
    assert_eq!(t.len(), 2);
    assert_ne!(
        t[0].server, t[1].server,
        "rotate: each question starts elsewhere"
    );
    d.ask("bad..example", Qtype::A, 3);
    d.nothing_sent();
    assert!(matches!(d.one(), Err(DnsError::PermFail(_))));
    let mut d = Dialog::new("nameserver 127.0.0.153\n");
    for i in 0..MAX_QUESTIONS {
        d.ask(&format!("h{i}.example"), Qtype::A, 0);
    }
    assert_eq!(d.r.in_flight(), MAX_QUESTIONS);
    assert!(d.done().is_empty());
    d.ask("one-more.example", Qtype::A, 1);
    assert!(matches!(d.one(), Err(DnsError::TempFail(_))));
}

#[test]
fn new_configuration() {
    let mut d = Dialog::new("nameserver 127.0.0.153\n");
    d.ask("h.example", Qtype::A, 1);
    let t = d.sent();
    d.reply(&t, a_record(t.id(), "h.example", [1, 2, 3, 4]));
    assert!(d.one().is_ok());
    let hosts = Hosts::parse("192.0.2.7 relay.example\n");
    // The same servers: the cache stays; others: it goes.
    d.r.set_conf(ResolvConf::parse("nameserver 127.0.0.153\n"), hosts.clone());
    d.ask("h.example", Qtype::A, 2);
    d.nothing_sent();
    assert!(d.one().is_ok(), "from the cache");
    assert_eq!(
        d.r.hosts("Relay.Example"),
        vec![IpAddr::from([192, 0, 2, 7])]
    );
    d.r.set_conf(ResolvConf::parse("nameserver 127.0.0.154\n"), hosts);
    d.ask("h.example", Qtype::A, 3);
    assert_eq!(d.sent().server, addr(S2));
    assert_eq!(d.r.conf().servers, vec![addr(S2)]);
}
