//! The DNS answer parser and the resolver machine against arbitrary bytes.
//!
//! Input: one byte choosing the type asked (of `Qtype::ALL`), then chunks of
//! `op:u8 len:u16be bytes`. Each chunk is first handed to `wire::parse` twice: as it is
//! (with its own id) and as the answer to our question (the chunk's first 12 bytes as
//! the header, with our id and one question, then the rest), so that the fuzzer reaches
//! the records. Answers must hold only records of the asked type.
//!
//! Then the chunks drive a resolver with two nameservers that was asked the question:
//! op % 5 = 0 a datagram shaped as our answer to the current try, 1 the raw datagram,
//! 2 raw stream bytes, 3 a length-prefixed answer on the stream, 4 the try's deadline.
//! Afterwards deadlines come until the question is over; it must be answered exactly
//! once, and ask no more of the loop after that.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::dns::conf::{Hosts, ResolvConf};
use smtpd::dns::resolver::{Io, Resolver, Tx};
use smtpd::dns::wire::{self, Reply};
use smtpd::dns::{Qtype, Rdata};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const NAME: &str = "mail.example.org";

fn counter() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0x5eed);
    N.fetch_add(0x9e37_79b9, Ordering::Relaxed)
}

/// `chunk` as an answer to (`NAME`, `qtype`) with id `id`.
fn shaped(chunk: &[u8], id: u16, qtype: Qtype) -> Vec<u8> {
    let mut m = Vec::with_capacity(chunk.len() + 40);
    m.extend_from_slice(&id.to_be_bytes());
    let head = chunk.get(..12).unwrap_or(chunk);
    m.extend(head.iter().skip(2).take(2));
    while m.len() < 4 {
        m.push(0x81);
    }
    m.extend_from_slice(&[0, 1]);
    m.extend(head.iter().skip(6).take(6));
    while m.len() < 12 {
        m.push(0);
    }
    let _ = wire::encode_name(NAME, &mut m);
    m.extend_from_slice(&qtype.code().to_be_bytes());
    m.extend_from_slice(&[0, 1]);
    m.extend_from_slice(chunk.get(12..).unwrap_or(&[]));
    m
}

fn check(reply: Option<Reply>, qtype: Qtype) {
    if let Some(Reply::Answer(a)) = reply {
        for r in &a.records {
            let ok = match (qtype, r) {
                (Qtype::A, Rdata::Addr(ip)) => ip.is_ipv4(),
                (Qtype::Aaaa, Rdata::Addr(ip)) => ip.is_ipv6(),
                (Qtype::Mx, Rdata::Mx(..)) => true,
                (Qtype::Ptr | Qtype::Cname, Rdata::Name(_)) => true,
                (Qtype::Txt, Rdata::Txt(_)) => true,
                (Qtype::Tlsa, Rdata::Tlsa { .. }) => true,
                _ => false,
            };
            assert!(ok, "{qtype:?} answered with {r:?}");
        }
        assert!(a.name.bytes().all(|b| (0x21..=0x7e).contains(&b) && !b.is_ascii_uppercase()));
    }
}

/// The current try, from what the resolver asked.
#[derive(Clone, Copy)]
struct Try {
    tx: Tx,
    server: SocketAddr,
    id: u16,
}

fn take(r: &mut Resolver<u8>, cur: &mut Option<Try>, closed: &mut Vec<Tx>) {
    for io in r.take_io() {
        match io {
            Io::Udp { tx, server, packet } => {
                *cur = Some(Try {
                    tx,
                    server,
                    id: u16::from_be_bytes([packet[0], packet[1]]),
                })
            }
            Io::Tcp { tx, server, packet } => {
                *cur = Some(Try {
                    tx,
                    server,
                    id: u16::from_be_bytes([packet[2], packet[3]]),
                })
            }
            Io::Close(tx) => closed.push(tx),
            Io::Deadline { .. } => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let qtype = Qtype::ALL[usize::from(sel) % Qtype::ALL.len()];
    let mut chunks = Vec::new();
    while let [op, a, b, tail @ ..] = rest {
        let n = usize::from(u16::from_be_bytes([*a, *b])).min(tail.len());
        chunks.push((*op, &tail[..n]));
        rest = &tail[n..];
    }
    for (_, c) in &chunks {
        let own = c.get(..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
        check(wire::parse(c, own, NAME, qtype), qtype);
        check(wire::parse(&shaped(c, 7, qtype), 7, NAME, qtype), qtype);
    }

    let conf = ResolvConf::parse("nameserver 127.0.0.153\nnameserver 127.0.0.154\n");
    let mut r: Resolver<u8> = Resolver::new(conf, Hosts::default(), counter);
    let mut now = Instant::now();
    r.ask(NAME, qtype, 0, now);
    let (mut cur, mut closed) = (None, Vec::new());
    take(&mut r, &mut cur, &mut closed);
    let mut answers = Vec::new();
    for (op, c) in chunks {
        let Some(t) = cur else { break };
        match op % 5 {
            0 => r.on_datagram(t.tx, t.server, &shaped(c, t.id, qtype), now),
            1 => r.on_datagram(t.tx, t.server, c, now),
            2 => r.on_stream(t.tx, c, now),
            3 => {
                let m = shaped(c, t.id, qtype);
                let mut framed = (m.len() as u16).to_be_bytes().to_vec();
                framed.extend(m);
                r.on_stream(t.tx, &framed, now);
            }
            _ => {
                now += Duration::from_secs(5);
                r.timeout(t.tx, now);
            }
        }
        take(&mut r, &mut cur, &mut closed);
        answers.extend(r.take_done());
        if !answers.is_empty() {
            break;
        }
    }
    for _ in 0..16 {
        if !answers.is_empty() {
            break;
        }
        if let Some(t) = cur {
            now += Duration::from_secs(5);
            r.timeout(t.tx, now);
            take(&mut r, &mut cur, &mut closed);
            answers.extend(r.take_done());
        }
    }
    assert_eq!(answers.len(), 1, "the question is answered once");
    assert_eq!(r.in_flight(), 0);
    if let Some(t) = cur {
        assert!(closed.contains(&t.tx), "the last try's socket is closed");
        assert!(!r.is_current(t.tx));
    }
    assert!(r.take_io().is_empty());
});
