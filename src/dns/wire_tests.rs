use super::*;
use crate::dns::DnsResult;

/// Builds answers the way a server would, with control over every part.
pub(crate) struct Msg {
    pub id: u16,
    pub flags: u16,
    pub question: Vec<u8>,
    pub qd: u16,
    pub answers: Vec<Vec<u8>>,
    pub authority: Vec<Vec<u8>>,
}

/// A name in wire form (no compression).
pub(crate) fn wname(name: &str) -> Vec<u8> {
    let mut v = Vec::new();
    encode_name(name, &mut v).unwrap();
    v
}

/// A record with owner `owner` (wire bytes), type, TTL and data.
pub(crate) fn rr(owner: &[u8], rtype: u16, ttl: u32, data: &[u8]) -> Vec<u8> {
    let mut v = owner.to_vec();
    v.extend_from_slice(&rtype.to_be_bytes());
    v.extend_from_slice(&1u16.to_be_bytes());
    v.extend_from_slice(&ttl.to_be_bytes());
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

/// A SOA record's data with `minimum`.
pub(crate) fn soa(minimum: u32) -> Vec<u8> {
    let mut d = wname("ns.example.org");
    d.extend(wname("hostmaster.example.org"));
    for v in [1u32, 3600, 600, 86400, minimum] {
        d.extend_from_slice(&v.to_be_bytes());
    }
    d
}

impl Msg {
    /// An answer (QR, RD, RA, rcode 0) to (`name`, `qtype`) with id `id`.
    pub(crate) fn to(id: u16, name: &str, qtype: Qtype) -> Msg {
        let mut question = wname(name);
        question.extend_from_slice(&qtype.code().to_be_bytes());
        question.extend_from_slice(&[0, 1]);
        Msg {
            id,
            flags: 0x8180,
            question,
            qd: 1,
            answers: Vec::new(),
            authority: Vec::new(),
        }
    }

    /// Adds an answer record.
    pub(crate) fn an(mut self, owner: &str, rtype: u16, ttl: u32, data: &[u8]) -> Msg {
        self.answers.push(rr(&wname(owner), rtype, ttl, data));
        self
    }

    /// Sets the rcode.
    pub(crate) fn rcode(mut self, rc: u8) -> Msg {
        self.flags = (self.flags & !0xf) | u16::from(rc);
        self
    }

    /// Adds a SOA of `zone` to the authority section.
    pub(crate) fn soa(mut self, zone: &str, ttl: u32, minimum: u32) -> Msg {
        self.authority.push(rr(&wname(zone), 6, ttl, &soa(minimum)));
        self
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&self.id.to_be_bytes());
        v.extend_from_slice(&self.flags.to_be_bytes());
        v.extend_from_slice(&self.qd.to_be_bytes());
        v.extend_from_slice(&(self.answers.len() as u16).to_be_bytes());
        v.extend_from_slice(&(self.authority.len() as u16).to_be_bytes());
        v.extend_from_slice(&[0, 0]);
        if self.qd > 0 {
            v.extend_from_slice(&self.question);
        }
        for r in self.answers.iter().chain(&self.authority) {
            v.extend_from_slice(r);
        }
        v
    }
}

fn result(msg: &[u8], name: &str, qtype: Qtype) -> Option<DnsResult> {
    parse(msg, 7, name, qtype)?
        .into_result(true)
        .map(|(r, _)| r)
}

fn records(msg: &Msg, name: &str, qtype: Qtype) -> Vec<Rdata> {
    match result(&msg.bytes(), name, qtype) {
        Some(Ok(a)) => a.records,
        other => panic!("not records: {other:?}"),
    }
}

fn ip(s: &str) -> Rdata {
    Rdata::Addr(s.parse().unwrap())
}

#[test]
fn queries() {
    let q = query(
        0xbeef,
        "Mx.Example.org.",
        Qtype::Mx,
        QueryOpts {
            edns: true,
            dnssec: true,
        },
    )
    .unwrap();
    assert_eq!(&q[..4], &[0xbe, 0xef, 0x01, 0x20], "RD and AD");
    assert_eq!(&q[4..12], &[0, 1, 0, 0, 0, 0, 0, 1]);
    let mut want = wname("Mx.Example.org");
    want.extend_from_slice(&[0, 15, 0, 1]);
    assert_eq!(&q[12..12 + want.len()], &want[..]);
    let opt = &q[12 + want.len()..];
    assert_eq!(opt, &[0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]);
    let plain = query(
        1,
        "a.b",
        Qtype::A,
        QueryOpts {
            edns: false,
            dnssec: false,
        },
    )
    .unwrap();
    assert_eq!(&plain[2..12], &[0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    assert_eq!(plain.len(), 12 + 5 + 4);
    let opts = QueryOpts {
        edns: true,
        dnssec: false,
    };
    let no_do = query(1, "a.b", Qtype::A, opts).unwrap();
    assert_eq!(no_do[no_do.len() - 4], 0, "no DO bit");
    assert_eq!(no_do[3], 0, "no AD bit");
    // The root can be asked.
    assert_eq!(query(1, "", Qtype::Mx, opts).unwrap()[12], 0);
    let bad = [
        "a..b".to_string(),
        ".a".into(),
        "a b.example".into(),
        "a\\.b".into(),
        "caf\u{e9}.example".into(),
        "x".repeat(64),
        vec!["y".repeat(63); 4].join("."),
    ];
    for name in &bad {
        assert!(query(1, name, Qtype::A, opts).is_err(), "{name:?}");
    }
    // 253 characters are the longest name.
    let long = [
        "y".repeat(63),
        "y".repeat(63),
        "y".repeat(63),
        "y".repeat(61),
    ]
    .join(".");
    assert!(query(1, &long, Qtype::A, opts).is_ok());
    assert!(query(1, &format!("{long}y"), Qtype::A, opts).is_err());
}

#[test]
fn addresses_and_the_question_echoed() {
    let m = Msg::to(7, "Host.Example.org", Qtype::A)
        .an("host.example.org", 1, 60, &[192, 0, 2, 1])
        .an("HOST.example.ORG", 1, 30, &[192, 0, 2, 2])
        .an("other.example.org", 1, 30, &[192, 0, 2, 3]);
    let Some(Ok(a)) = result(&m.bytes(), "host.EXAMPLE.org", Qtype::A) else {
        panic!()
    };
    assert_eq!(a.records, vec![ip("192.0.2.1"), ip("192.0.2.2")]);
    assert_eq!(
        (a.name.as_str(), a.ttl, a.secure),
        ("host.example.org", 30, false)
    );
    // Not ours: id, QR, opcode, name, type, class, counts.
    let b = m.bytes();
    assert!(parse(&b, 8, "host.example.org", Qtype::A).is_none());
    assert!(parse(&b, 7, "host.example.com", Qtype::A).is_none());
    assert!(parse(&b, 7, "host.example.org", Qtype::Aaaa).is_none());
    let mut q = m.bytes();
    q[2] &= 0x7f;
    assert!(parse(&q, 7, "host.example.org", Qtype::A).is_none(), "QR=0");
    let mut q = m.bytes();
    q[2] |= 0x10;
    assert!(
        parse(&q, 7, "host.example.org", Qtype::A).is_none(),
        "opcode 2"
    );
    let mut q = m.bytes();
    let class = 12 + wname("host.example.org").len() + 3;
    q[class] = 3;
    assert!(
        parse(&q, 7, "host.example.org", Qtype::A).is_none(),
        "class CH"
    );
    let mut two = Msg::to(7, "host.example.org", Qtype::A);
    two.qd = 2;
    assert!(parse(&two.bytes(), 7, "host.example.org", Qtype::A).is_none());
    for cut in 0..12 {
        assert!(parse(&b[..cut], 7, "host.example.org", Qtype::A).is_none());
    }
    // AAAA; a wrong length is a broken answer.
    let v6 = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let m = Msg::to(7, "h.example", Qtype::Aaaa).an("h.example", 28, 5, &v6);
    assert_eq!(
        records(&m, "h.example", Qtype::Aaaa),
        vec![ip("2001:db8::1")]
    );
    let m = Msg::to(7, "h.example", Qtype::A).an("h.example", 1, 5, &[1, 2, 3]);
    assert_eq!(
        parse(&m.bytes(), 7, "h.example", Qtype::A),
        Some(Reply::Malformed("bad record data"))
    );
    // A TTL with the top bit set counts as zero (RFC 2181 §8).
    let m = Msg::to(7, "h.example", Qtype::A).an("h.example", 1, 0x8000_0001, &[1, 2, 3, 4]);
    assert!(matches!(result(&m.bytes(), "h.example", Qtype::A), Some(Ok(a)) if a.ttl == 0));
}

#[test]
fn rcodes_truncation_and_the_ad_bit() {
    let m = Msg::to(7, "x.example", Qtype::A).rcode(rcode::SERVFAIL);
    assert_eq!(
        parse(&m.bytes(), 7, "x.example", Qtype::A),
        Some(Reply::Rcode(2))
    );
    // An error without the question (RFC 6891 §7) still counts; an answer does not.
    let mut m = Msg::to(7, "x.example", Qtype::A).rcode(rcode::FORMERR);
    m.qd = 0;
    assert_eq!(
        parse(&m.bytes(), 7, "x.example", Qtype::A),
        Some(Reply::Rcode(1))
    );
    let mut m = Msg::to(7, "x.example", Qtype::A);
    m.qd = 0;
    assert_eq!(parse(&m.bytes(), 7, "x.example", Qtype::A), None);
    let mut m = Msg::to(7, "x.example", Qtype::A).an("x.example", 1, 5, &[1, 2, 3, 4]);
    m.flags |= 0x0200;
    assert_eq!(
        parse(&m.bytes(), 7, "x.example", Qtype::A),
        Some(Reply::Truncated)
    );
    // AD counts only for a trusted resolver.
    m.flags = 0x81a0;
    let r = parse(&m.bytes(), 7, "x.example", Qtype::A).unwrap();
    assert!(matches!(r.clone().into_result(true), Some((Ok(a), 5)) if a.secure));
    assert!(matches!(r.into_result(false), Some((Ok(a), 5)) if !a.secure));
    let mut nx = Msg::to(7, "x.example", Qtype::A).rcode(rcode::NXDOMAIN);
    nx.flags |= 0x20;
    let r = parse(&nx.bytes(), 7, "x.example", Qtype::A).unwrap();
    assert_eq!(
        r.into_result(true),
        Some((
            Err(DnsError::NxDomain { secure: true }),
            DEFAULT_NEGATIVE_TTL
        ))
    );
}

#[test]
fn negative_answers_and_their_ttl() {
    // NXDOMAIN: min(SOA TTL, MINIMUM), capped.
    let nx = Msg::to(7, "no.example.org", Qtype::A)
        .rcode(rcode::NXDOMAIN)
        .soa("example.org", 900, 120);
    assert_eq!(
        parse(&nx.bytes(), 7, "no.example.org", Qtype::A),
        Some(Reply::NxDomain {
            ad: false,
            ttl: 120
        })
    );
    let nx = Msg::to(7, "no.example.org", Qtype::A)
        .rcode(rcode::NXDOMAIN)
        .soa("example.org", 90_000, 90_000);
    assert_eq!(
        parse(&nx.bytes(), 7, "no.example.org", Qtype::A),
        Some(Reply::NxDomain {
            ad: false,
            ttl: MAX_NEGATIVE_TTL
        })
    );
    // A SOA of another zone does not count.
    let nx = Msg::to(7, "no.example.org", Qtype::A)
        .rcode(rcode::NXDOMAIN)
        .soa("ample.org", 10, 10);
    assert_eq!(
        parse(&nx.bytes(), 7, "no.example.org", Qtype::A),
        Some(Reply::NxDomain {
            ad: false,
            ttl: DEFAULT_NEGATIVE_TTL
        })
    );
    // NODATA: NOERROR without records of the type (other types are ignored).
    let nodata = Msg::to(7, "h.example.org", Qtype::Aaaa)
        .an("h.example.org", 1, 60, &[1, 2, 3, 4])
        .soa("example.org", 60, 30);
    let Some(Ok(a)) = result(&nodata.bytes(), "h.example.org", Qtype::Aaaa) else {
        panic!()
    };
    assert_eq!((a.records.len(), a.ttl), (0, 30));
}

#[test]
fn cname_chains() {
    let t = wname;
    // www -> a -> b, then b's address; a record of a, off the chain's end, is ignored.
    let m = Msg::to(7, "www.example.org", Qtype::A)
        .an("www.example.org", 5, 300, &t("a.example.net"))
        .an("a.example.net", 5, 100, &t("b.example.net"))
        .an("a.example.net", 1, 100, &[9, 9, 9, 9])
        .an("b.example.net", 1, 200, &[192, 0, 2, 5]);
    let Some(Ok(a)) = result(&m.bytes(), "www.example.org", Qtype::A) else {
        panic!()
    };
    assert_eq!((a.name.as_str(), a.ttl), ("b.example.net", 100));
    assert_eq!(a.records, vec![ip("192.0.2.5")]);
    // A CNAME whose owner is not on the chain is not followed.
    let m = Msg::to(7, "www.example.org", Qtype::A)
        .an("other.example.org", 5, 300, &t("evil.example"))
        .an("evil.example", 1, 300, &[6, 6, 6, 6])
        .an("www.example.org", 1, 300, &[1, 1, 1, 1]);
    assert_eq!(
        records(&m, "www.example.org", Qtype::A),
        vec![ip("1.1.1.1")]
    );
    // Loops and chains longer than 8 hops are broken answers.
    let m = Msg::to(7, "a.example", Qtype::A)
        .an("a.example", 5, 300, &t("b.example"))
        .an("b.example", 5, 300, &t("A.example"));
    assert_eq!(
        parse(&m.bytes(), 7, "a.example", Qtype::A),
        Some(Reply::Malformed("CNAME loop"))
    );
    let chain = |hops: usize| {
        let mut m = Msg::to(7, "h0.example", Qtype::A);
        for i in 0..hops {
            m = m.an(
                &format!("h{i}.example"),
                5,
                60,
                &t(&format!("h{}.example", i + 1)),
            );
        }
        m.an(&format!("h{hops}.example"), 1, 60, &[1, 2, 3, 4])
    };
    assert_eq!(
        records(&chain(8), "h0.example", Qtype::A),
        vec![ip("1.2.3.4")]
    );
    assert_eq!(
        parse(&chain(9).bytes(), 7, "h0.example", Qtype::A),
        Some(Reply::Malformed("CNAME chain too long"))
    );
    // Asked for the CNAME itself: not followed.
    let m = Msg::to(7, "www.example.org", Qtype::Cname)
        .an("www.example.org", 5, 300, &t("a.example.net"))
        .an("a.example.net", 5, 100, &t("b.example.net"));
    assert_eq!(
        records(&m, "www.example.org", Qtype::Cname),
        vec![Rdata::Name("a.example.net".into())]
    );
    // NXDOMAIN at the end of a chain.
    let m = Msg::to(7, "www.example.org", Qtype::A)
        .rcode(rcode::NXDOMAIN)
        .an("www.example.org", 5, 300, &t("gone.example.net"));
    assert!(matches!(
        result(&m.bytes(), "www.example.org", Qtype::A),
        Some(Err(DnsError::NxDomain { .. }))
    ));
}

#[test]
fn mx_txt_tlsa_ptr() {
    // MX whose host points back into the question by compression; a null MX.
    let m = Msg::to(7, "example.org", Qtype::Mx)
        .an("example.org", 15, 60, &[0, 10, 2, b'm', b'x', 0xc0, 12])
        .an("example.org", 15, 60, &[0, 0, 0]);
    assert_eq!(
        records(&m, "example.org", Qtype::Mx),
        vec![
            Rdata::Mx(10, "mx.example.org".into()),
            Rdata::Mx(0, String::new())
        ]
    );
    // A name that does not fill the record's data is broken.
    let m = Msg::to(7, "example.org", Qtype::Mx).an("example.org", 15, 60, &[0, 10, 0, 0]);
    assert_eq!(
        parse(&m.bytes(), 7, "example.org", Qtype::Mx),
        Some(Reply::Malformed("bad record data"))
    );
    let m = Msg::to(7, "_mta-sts.example.org", Qtype::Txt).an(
        "_mta-sts.example.org",
        16,
        60,
        b"\x08v=STSv1;\x04 id=\x011",
    );
    assert_eq!(
        records(&m, "_mta-sts.example.org", Qtype::Txt),
        vec![Rdata::Txt(b"v=STSv1; id=1".to_vec())]
    );
    let m = Msg::to(7, "t.example", Qtype::Txt).an("t.example", 16, 60, b"\x05abc");
    assert!(matches!(
        parse(&m.bytes(), 7, "t.example", Qtype::Txt),
        Some(Reply::Malformed(_))
    ));
    let m = Msg::to(7, "_25._tcp.mx.example", Qtype::Tlsa).an(
        "_25._tcp.mx.example",
        52,
        60,
        &[3, 1, 1, 0xaa, 0xbb],
    );
    assert_eq!(
        records(&m, "_25._tcp.mx.example", Qtype::Tlsa),
        vec![Rdata::Tlsa {
            usage: 3,
            selector: 1,
            mtype: 1,
            data: vec![0xaa, 0xbb]
        }]
    );
    // PTR targets come lowercase, odd bytes escaped.
    let m = Msg::to(7, "7.2.0.192.in-addr.arpa", Qtype::Ptr).an(
        "7.2.0.192.in-addr.arpa",
        12,
        60,
        b"\x05Mx a.\x07Example\x00",
    );
    assert_eq!(
        records(&m, "7.2.0.192.in-addr.arpa", Qtype::Ptr),
        vec![Rdata::Name("mx\\032a\\046.example".into())]
    );
}

#[test]
fn names_are_bounded() {
    let q = Msg::to(7, "a.example", Qtype::A).bytes();
    let base = q.len();
    // Pointers: forward, to itself, and a loop between two; label types 0x40, 0x80.
    let at = base as u8;
    let bad_owners: [Vec<u8>; 5] = [
        vec![0xc0, 0xff],
        vec![0xc0, at],
        vec![0x01, b'x', 0xc0, at],
        vec![0x40, 0x00],
        vec![0x80, 0x00],
    ];
    for owner in bad_owners {
        let mut m = q.clone();
        m[7] = 1;
        m.extend(rr(&owner, 1, 5, &[1, 2, 3, 4]));
        assert_eq!(
            parse(&m, 7, "a.example", Qtype::A),
            Some(Reply::Malformed("bad answer record")),
            "{owner:?}"
        );
    }
    // A pointer back to a pointer back to the question is fine.
    let mut m = q.clone();
    m[7] = 2;
    m.extend(rr(&[0xc0, 12], 5, 5, &[0xc0, 12]));
    let second = m.len();
    m.extend(rr(&[0x01, b'z', 0xc0, 12], 1, 5, &[1, 2, 3, 4]));
    let mut looped = m.clone();
    assert!(matches!(
        parse(&m, 7, "a.example", Qtype::A),
        Some(Reply::Malformed("CNAME loop"))
    ));
    // A pointer into its own labels (a loop through labels) is refused.
    looped[second + 2] = 0xc0;
    looped[second + 3] = second as u8;
    assert!(matches!(
        parse(&looped, 7, "a.example", Qtype::A),
        Some(Reply::Malformed(_))
    ));
    // 127 labels of one byte: 255 bytes on the wire is the most.
    let mut long = Vec::new();
    for _ in 0..127 {
        long.extend_from_slice(&[1, b'a']);
    }
    long.push(0);
    assert_eq!(long.len(), 255);
    assert!(read_name(&long, 0).is_some());
    let mut longer = vec![1, b'a'];
    longer.extend(&long);
    assert!(read_name(&longer, 0).is_none());
}

#[test]
fn no_panic_on_any_prefix_or_bit_flip() {
    let m = Msg::to(7, "example.org", Qtype::Mx)
        .an("example.org", 5, 60, &wname("mail.example.org"))
        .an(
            "mail.example.org",
            15,
            60,
            &[0, 10, 2, b'm', b'x', 0xc0, 12],
        )
        .soa("example.org", 60, 60)
        .bytes();
    for qtype in Qtype::ALL {
        for cut in 0..=m.len() {
            let _ = parse(&m[..cut], 7, "example.org", qtype);
        }
        for i in 0..m.len() {
            for bit in 0..8 {
                let mut f = m.clone();
                f[i] ^= 1 << bit;
                let _ = parse(&f, 7, "example.org", qtype);
            }
        }
    }
}
