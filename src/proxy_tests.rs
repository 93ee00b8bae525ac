use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// The header haproxy 2.6 sent with `send-proxy-v2` (127.0.0.1:53280 to
/// 127.0.0.1:10025, no TLV).
const HAPROXY_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c\
    \x7f\x00\x00\x01\x7f\x00\x00\x01\xd0\x20\x27\x29";

/// A v2 header: version and command, family, then the block.
fn v2h(ver_cmd: u8, fam: u8, block: &[u8]) -> Vec<u8> {
    let mut h = V2_SIG.to_vec();
    h.push(ver_cmd);
    h.push(fam);
    h.extend_from_slice(&u16::try_from(block.len()).unwrap().to_be_bytes());
    h.extend_from_slice(block);
    h
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut t = vec![kind];
    t.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
    t.extend_from_slice(value);
    t
}

const TCP4_BLOCK: [u8; 12] = [192, 0, 2, 7, 198, 51, 100, 1, 0x9c, 0x40, 0, 25];

fn tcp(src: &str, dst: &str) -> Option<Endpoints> {
    Some(Endpoints {
        src: sa(src),
        dst: sa(dst),
    })
}

/// Every proper prefix of `h` asks for more; `h` with client bytes after it is read
/// as the header and no more.
fn whole(h: &[u8]) -> Header {
    for n in 0..h.len() {
        assert_eq!(parse(&h[..n]), Ok(None), "prefix of {n} octets of {h:?}");
    }
    let mut more = h.to_vec();
    more.extend_from_slice(b"EHLO client.example\r\n");
    let (n, header) = parse(&more).unwrap().unwrap();
    assert_eq!(n, h.len());
    assert_eq!(parse(h), Ok(Some((n, header.clone()))));
    header
}

fn refused(h: &[u8]) -> Error {
    parse(h).unwrap_err()
}

#[test]
fn v1_tcp4_tcp6_unknown() {
    let h = whole(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 25\r\n");
    assert_eq!(h.version, 1);
    assert_eq!(h.addrs, tcp("192.0.2.7:40000", "198.51.100.1:25"));
    assert_eq!(h.tls, None);
    let h = whole(b"PROXY TCP6 2001:db8::7 ::1 65535 0\r\n");
    assert_eq!(h.addrs, tcp("[2001:db8::7]:65535", "[::1]:0"));
    let h = whole(b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n");
    assert_eq!(h.addrs, tcp("[::ffff:192.0.2.7]:1", "[::1]:2"));
    for u in [
        &b"PROXY UNKNOWN\r\n"[..],
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    ] {
        let h = whole(u);
        assert_eq!((h.version, h.addrs, h.tls), (1, None, None));
    }
}

#[test]
fn v1_longest_line_and_limit() {
    let long = format!(
        "PROXY TCP6 {0} {0} 65535 65535\r\n",
        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    );
    assert_eq!(long.len(), 104);
    whole(long.as_bytes());
    // UNKNOWN may carry anything up to the limit.
    let mut u = b"PROXY UNKNOWN ".to_vec();
    u.resize(V1_MAX - 2, b'x');
    u.extend_from_slice(b"\r\n");
    whole(&u);
    // No LF within 107 octets: refused at once, not waited for.
    let mut over = b"PROXY UNKNOWN ".to_vec();
    over.resize(V1_MAX, b'x');
    assert_eq!(parse(&over[..V1_MAX - 1]), Ok(None));
    assert_eq!(refused(&over), Error::LineTooLong);
    over.extend_from_slice(b"\r\n");
    assert_eq!(refused(&over), Error::LineTooLong);
}

#[test]
fn v1_refusals() {
    let cases: &[(&[u8], Error)] = &[
        (b"EHLO client.example\r\n", Error::Signature),
        (b"PROXY\r\n", Error::Signature),
        (b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n", Error::Signature),
        (b"PROXY  TCP4 1.2.3.4 1.2.3.4 1 2\r\n", Error::Protocol),
        (b"PROXY TCP5 1.2.3.4 1.2.3.4 1 2\r\n", Error::Protocol),
        (b"PROXY tcp4 1.2.3.4 1.2.3.4 1 2\r\n", Error::Protocol),
        (b"PROXY UNKNOWNX\r\n", Error::Protocol),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1\r\n", Error::Words),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 3\r\n", Error::Words),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2 \r\n", Error::Words),
        (b"PROXY TCP4 1.2.3.4  1.2.3.4 1 2\r\n", Error::Words),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n", Error::BareLf),
        (b"PROXY TCP4 ::1 1.2.3.4 1 2\r\n", Error::Address),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", Error::Address),
        (b"PROXY TCP4 256.2.3.4 1.2.3.4 1 2\r\n", Error::Address),
        (b"PROXY TCP4 01.2.3.4 1.2.3.4 1 2\r\n", Error::Address),
        (b"PROXY TCP4 1.2.3 1.2.3.4 1 2\r\n", Error::Address),
        (b"PROXY TCP4 host 1.2.3.4 1 2\r\n", Error::Address),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", Error::Address),
        (b"PROXY TCP4 1.2.3.4 1.2.3.\xff 1 2\r\n", Error::Address),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 65536 2\r\n", Error::Port),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 99999 2\r\n", Error::Port),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 025 2\r\n", Error::Port),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 +25 2\r\n", Error::Port),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 -1 2\r\n", Error::Port),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 25 smtp\r\n", Error::Port),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 25 0x19\r\n", Error::Port),
        (b"PROXY TCP4 1.2.3.4 1.2.3.4 25 \r\n", Error::Port),
    ];
    for (h, e) in cases {
        assert_eq!(parse(h), Err(*e), "{}", h.escape_ascii());
    }
    // Refused as soon as the first octets show it, without waiting for a line end.
    assert_eq!(parse(b"E"), Err(Error::Signature));
    assert_eq!(parse(b"PROXX"), Err(Error::Signature));
    assert_eq!(parse(b"\r\n\r\n\0\r\nQUIX"), Err(Error::Signature));
    assert_eq!(parse(b"\r\n\r\nX"), Err(Error::Signature));
}

#[test]
fn v2_as_haproxy_sends_it() {
    let h = whole(HAPROXY_V2);
    assert_eq!(h.version, 2);
    assert_eq!(h.addrs, tcp("127.0.0.1:53280", "127.0.0.1:10025"));
    assert_eq!(h.tls, None);
}

#[test]
fn v2_tcp4_tcp6_local() {
    let h = whole(&v2h(0x21, 0x11, &TCP4_BLOCK));
    assert_eq!(h.addrs, tcp("192.0.2.7:40000", "198.51.100.1:25"));
    let mut b6 = Vec::new();
    let src: Ipv6Addr = "2001:db8::7".parse().unwrap();
    let dst: Ipv6Addr = "::ffff:192.0.2.1".parse().unwrap();
    b6.extend_from_slice(&src.octets());
    b6.extend_from_slice(&dst.octets());
    b6.extend_from_slice(&[0, 1, 0, 25]);
    let h = whole(&v2h(0x21, 0x21, &b6));
    assert_eq!(h.addrs, tcp("[2001:db8::7]:1", "[::ffff:192.0.2.1]:25"));
    // LOCAL: whatever the family and the block, nothing is taken from it.
    for (fam, block) in [
        (0x00, &[][..]),
        (0x11, &TCP4_BLOCK[..]),
        (0x11, &[1, 2, 3][..]),
        (0x31, &[0xff; 216][..]),
        (0xff, &[][..]),
    ] {
        let h = whole(&v2h(0x20, fam, block));
        assert_eq!((h.version, h.addrs, h.tls), (2, None, None));
    }
}

#[test]
fn v2_tlvs() {
    // Skipped TLVs, the longest block accepted.
    let mut block = TCP4_BLOCK.to_vec();
    block.extend(tlv(0x01, b"smtp"));
    block.extend(tlv(0x05, b"unique"));
    let pad = V2_MAX_BLOCK - block.len() - 3;
    block.extend(tlv(0x04, &vec![0; pad]));
    assert_eq!(block.len(), V2_MAX_BLOCK);
    let h = whole(&v2h(0x21, 0x11, &block));
    assert_eq!(h.addrs, tcp("192.0.2.7:40000", "198.51.100.1:25"));
    assert_eq!(h.tls, None);
    // The TLS the proxy terminated.
    let mut ssl = vec![0x01 | 0x02, 0, 0, 0, 0];
    ssl.extend(tlv(0x21, b"TLSv1.3"));
    ssl.extend(tlv(0x22, b"client.example"));
    ssl.extend(tlv(0x23, b"TLS_AES_256_GCM_SHA384"));
    let mut block = TCP4_BLOCK.to_vec();
    block.extend(tlv(0x20, &ssl));
    let h = whole(&v2h(0x21, 0x11, &block));
    let want = ProxyTls {
        version: Some("TLSv1.3".into()),
        cipher: Some("TLS_AES_256_GCM_SHA384".into()),
        client_cert: true,
    };
    assert_eq!(h.tls, Some(want));
    // A certificate that did not verify; no sub-TLV.
    let mut block = TCP4_BLOCK.to_vec();
    block.extend(tlv(0x20, &[0x01 | 0x04, 0, 0, 0, 1]));
    let h = whole(&v2h(0x21, 0x11, &block));
    assert_eq!(h.tls, Some(ProxyTls::default()));
    // Without the client-SSL bit, no TLS.
    let mut block = TCP4_BLOCK.to_vec();
    block.extend(tlv(0x20, &[0, 0, 0, 0, 0]));
    assert_eq!(whole(&v2h(0x21, 0x11, &block)).tls, None);
}

#[test]
fn v2_refusals() {
    let mut overrun = TCP4_BLOCK.to_vec();
    overrun.extend_from_slice(&[0x04, 0, 5, 1, 2]);
    let mut short_tlv = TCP4_BLOCK.to_vec();
    short_tlv.extend_from_slice(&[0x04, 0]);
    let mut short_ssl = TCP4_BLOCK.to_vec();
    short_ssl.extend(tlv(0x20, &[1, 0, 0, 0]));
    let mut bad_sub = TCP4_BLOCK.to_vec();
    bad_sub.extend(tlv(0x20, &[1, 0, 0, 0, 0, 0x21, 0, 9, b'x']));
    let cases: Vec<(Vec<u8>, Error)> = vec![
        (v2h(0x11, 0x11, &TCP4_BLOCK), Error::Version(1)),
        (v2h(0x31, 0x11, &TCP4_BLOCK), Error::Version(3)),
        (v2h(0x22, 0x11, &TCP4_BLOCK), Error::Command(2)),
        (v2h(0x2f, 0x11, &TCP4_BLOCK), Error::Command(15)),
        (v2h(0x21, 0x00, &[]), Error::Family(0x00)),
        (v2h(0x21, 0x12, &TCP4_BLOCK), Error::Family(0x12)),
        (v2h(0x21, 0x10, &TCP4_BLOCK), Error::Family(0x10)),
        (v2h(0x21, 0x22, &[0; 36]), Error::Family(0x22)),
        (v2h(0x21, 0x31, &[0; 216]), Error::Family(0x31)),
        (v2h(0x21, 0x11, &TCP4_BLOCK[..11]), Error::BlockTooShort(11)),
        (v2h(0x21, 0x21, &[0; 35]), Error::BlockTooShort(35)),
        (v2h(0x21, 0x11, &overrun), Error::Tlv),
        (v2h(0x21, 0x11, &short_tlv), Error::Tlv),
        (v2h(0x21, 0x11, &short_ssl), Error::Tlv),
        (v2h(0x21, 0x11, &bad_sub), Error::Tlv),
    ];
    for (h, e) in cases {
        assert_eq!(parse(&h), Err(e), "{}", h.escape_ascii());
    }
    // A block over the bound is refused from the fixed part alone, LOCAL too.
    for cmd in [0x20, 0x21] {
        let mut h = v2h(cmd, 0x11, &[]);
        h[14..16].copy_from_slice(&1537u16.to_be_bytes());
        assert_eq!(parse(&h), Err(Error::BlockTooLong(1537)));
        h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(parse(&h), Err(Error::BlockTooLong(65535)));
    }
}

#[test]
fn errors_read_as_log_reasons() {
    assert_eq!(
        Error::BlockTooLong(2000).to_string(),
        "PROXY v2: address block of 2000 octets, more than 1536"
    );
    assert_eq!(
        Error::LineTooLong.to_string(),
        "PROXY v1: no CR LF within 107 octets"
    );
    assert_eq!(
        Error::Family(0x31).to_string(),
        "PROXY v2: family and transport 0x31 refused"
    );
}

#[test]
fn verdict_within_bounds_on_any_input() {
    // A verdict always comes by MAX_HEADER octets, and a header never claims more
    // than it was given; arbitrary bytes after a valid prefix never panic.
    let mut x: u32 = 0x2545_f491;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let starts: [&[u8]; 4] = [
        &V2_SIG,
        b"PROXY ",
        b"PROXY TCP4 ",
        b"\r\n\r\n\0\r\nQUIT\n\x21",
    ];
    for round in 0..2000 {
        let mut buf = starts[round % starts.len()].to_vec();
        let n = (next() % 1700) as usize;
        buf.extend((0..n).map(|_| next().to_le_bytes()[0]));
        match parse(&buf) {
            Ok(Some((used, _))) => assert!(used <= buf.len() && used <= MAX_HEADER),
            Ok(None) => assert!(buf.len() < MAX_HEADER),
            Err(_) => {}
        }
    }
}
