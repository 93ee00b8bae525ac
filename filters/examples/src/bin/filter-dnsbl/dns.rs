//! The little DNS a blocklist lookup needs (RFC 1035): a query for one name and type,
//! and the answer's A addresses or TXT text. Bounded and total: a malformed answer is
//! `None`, never a panic.

/// Type A (RFC 1035 §3.2.2).
pub const A: u16 = 1;
/// Type TXT.
pub const TXT: u16 = 16;
const CLASS_IN: u16 = 1;
/// Longest name on the wire (RFC 1035 §2.3.4).
const MAX_NAME: usize = 255;

/// Appends a query (recursion desired) for `name` and `qtype` to `out`; `false` (and
/// nothing appended) if `name` is not a valid name.
pub fn query(id: u16, name: &str, qtype: u16, out: &mut Vec<u8>) -> bool {
    let start = out.len();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    let mut wire = 0;
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            out.truncate(start);
            return false;
        }
        wire += label.len() + 1;
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    if wire + 1 > MAX_NAME {
        out.truncate(start);
        return false;
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    true
}

/// What an answer says about the name asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The A records of the answer section.
    Addrs(Vec<[u8; 4]>),
    /// The TXT records' strings, put end to end (one record's, then a space, ...).
    Text(Vec<u8>),
    /// No record of that type (NXDOMAIN, NODATA).
    None,
    /// The server failed (SERVFAIL, REFUSED, ...) or the answer was truncated.
    Fail,
}

/// The id of a message, to find the question it answers.
pub fn id_of(msg: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.first()?, *msg.get(1)?]))
}

fn be16(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// Reads the name at `at`, following compression pointers (a bounded number of
/// them), into `name` (labels lowercased, dot-separated); returns the offset after the
/// name where it began.
fn read_name(msg: &[u8], mut at: usize, name: &mut Vec<u8>) -> Option<usize> {
    let mut end = None;
    for _ in 0..64 {
        let len = *msg.get(at)? as usize;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(end.unwrap_or(at + 1)),
            0x00 => {
                let label = msg.get(at + 1..at + 1 + len)?;
                if !name.is_empty() {
                    name.push(b'.');
                }
                name.extend(label.iter().map(|b| b.to_ascii_lowercase()));
                if name.len() > MAX_NAME {
                    return None;
                }
                at += 1 + len;
            }
            0xc0 => {
                let ptr = (be16(msg, at)? & 0x3fff) as usize;
                end.get_or_insert(at + 2);
                at = ptr;
            }
            _ => return None,
        }
    }
    None
}

/// The reply of `msg` if it answers the query `id` for `name` and `qtype`, else `None`
/// (not an answer to it, or malformed).
pub fn parse(msg: &[u8], id: u16, name: &str, qtype: u16) -> Option<Reply> {
    if id_of(msg)? != id || msg.len() < 12 {
        return None;
    }
    let flags = be16(msg, 2)?;
    if flags & 0x8000 == 0 || be16(msg, 4)? != 1 {
        return None; // not a response, or not one question
    }
    let mut q = Vec::new();
    let mut at = read_name(msg, 12, &mut q)?;
    let asked = name.trim_end_matches('.').to_ascii_lowercase();
    if q != asked.as_bytes() || be16(msg, at)? != qtype || be16(msg, at + 2)? != CLASS_IN {
        return None;
    }
    at += 4;
    if flags & 0x0200 != 0 {
        return Some(Reply::Fail); // truncated: a blocklist answer never needs TCP
    }
    match flags & 0x000f {
        0 => {}
        3 => return Some(Reply::None),
        _ => return Some(Reply::Fail),
    }
    let mut addrs = Vec::new();
    let mut text = Vec::new();
    let mut any_txt = false;
    for _ in 0..be16(msg, 6)? {
        let mut owner = Vec::new();
        at = read_name(msg, at, &mut owner)?;
        let rtype = be16(msg, at)?;
        let rdlen = be16(msg, at + 8)? as usize;
        let rdata = msg.get(at + 10..at + 10 + rdlen)?;
        at += 10 + rdlen;
        match rtype {
            A if qtype == A && rdlen == 4 => addrs.push([rdata[0], rdata[1], rdata[2], rdata[3]]),
            TXT if qtype == TXT => {
                if any_txt {
                    text.push(b' ');
                }
                any_txt = true;
                let mut i = 0;
                while i < rdata.len() {
                    let n = rdata[i] as usize;
                    text.extend_from_slice(rdata.get(i + 1..i + 1 + n)?);
                    i += 1 + n;
                }
            }
            _ => {}
        }
    }
    Some(match qtype {
        A if !addrs.is_empty() => Reply::Addrs(addrs),
        TXT if any_txt => Reply::Text(text),
        _ => Reply::None,
    })
}

/// The name to look `ip` up under `zone`: the address's octets (IPv4) or nibbles
/// (IPv6) in reverse order (RFC 5782 §2.1, §2.4).
pub fn reversed(ip: std::net::IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}", o[3], o[2], o[1], o[0])
        }
        std::net::IpAddr::V6(v6) => {
            let mut s = String::with_capacity(64 + zone.len());
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str(zone);
            s
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(q: &[u8], rcode: u8, records: &[(u16, &[u8])]) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[7] = records.len() as u8;
        for (t, rdata) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(rdata);
        }
        m
    }

    #[test]
    fn a_query_and_its_answers() {
        let name = "2.0.0.127.bl.test";
        let mut q = Vec::new();
        assert!(query(0x1234, name, A, &mut q));
        assert_eq!(&q[..4], &[0x12, 0x34, 1, 0]);
        let m = answer(&q, 0, &[(A, &[127, 0, 0, 2])]);
        assert_eq!(
            parse(&m, 0x1234, name, A),
            Some(Reply::Addrs(vec![[127, 0, 0, 2]]))
        );
        assert_eq!(parse(&m, 0x1235, name, A), None);
        assert_eq!(parse(&m, 0x1234, "other.test", A), None);
        assert_eq!(
            parse(&answer(&q, 3, &[]), 0x1234, name, A),
            Some(Reply::None)
        );
        assert_eq!(
            parse(&answer(&q, 2, &[]), 0x1234, name, A),
            Some(Reply::Fail)
        );
        let mut q = Vec::new();
        assert!(query(7, name, TXT, &mut q));
        let m = answer(&q, 0, &[(TXT, b"\x05Liste\x01d"), (TXT, b"\x03why")]);
        assert_eq!(
            parse(&m, 7, name, TXT),
            Some(Reply::Text(b"Listed why".to_vec()))
        );
    }

    #[test]
    fn bad_answers_are_none_at_every_length() {
        let name = "2.0.0.127.bl.test";
        let mut q = Vec::new();
        assert!(query(9, name, TXT, &mut q));
        let m = answer(&q, 0, &[(TXT, b"\x05Listed")]);
        for n in 0..m.len() {
            assert_eq!(parse(&m[..n], 9, name, TXT), None, "{n}");
        }
        let mut bad = m.clone();
        let last = bad.len() - 7;
        bad[last] = 200; // a string longer than its record
        assert_eq!(parse(&bad, 9, name, TXT), None);
        let mut looping = q.clone();
        looping.truncate(12);
        looping.extend_from_slice(&[0xc0, 12]);
        assert_eq!(parse(&looping, 9, name, TXT), None);
        assert!(!query(1, &"a".repeat(64), A, &mut Vec::new()));
        assert!(!query(1, "a..b", A, &mut Vec::new()));
    }

    #[test]
    fn names_to_look_up() {
        let v4 = "192.0.2.7".parse().unwrap();
        assert_eq!(reversed(v4, "bl.test."), "7.2.0.192.bl.test");
        let v6 = "2001:db8::1".parse().unwrap();
        assert_eq!(
            reversed(v6, "bl.test"),
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
        );
    }
}
