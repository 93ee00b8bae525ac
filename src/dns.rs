//! A small DNS stub resolver: queries built and answers parsed here (RFC 1035), sent
//! over UDP by the loop to the nameservers of /etc/resolv.conf.
//!
//! Only what the daemon needs: PTR (the client's host name), A/AAAA (forward-confirmed
//! reverse DNS, mail exchangers' addresses) and MX.

use std::net::{IpAddr, SocketAddr};

/// Record types the daemon asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qtype {
    /// IPv4 address.
    A = 1,
    /// Mail exchanger.
    Mx = 15,
    /// Reverse pointer.
    Ptr = 12,
    /// IPv6 address.
    Aaaa = 28,
    /// Text.
    Txt = 16,
    /// TLSA (RFC 6698).
    Tlsa = 52,
}

/// One useful answer record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// An address.
    Addr(IpAddr),
    /// A host name (PTR target).
    Name(String),
    /// A mail exchanger: preference and host.
    Mx(u16, String),
}

/// The outcome of a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Records of the asked type (possibly after CNAMEs).
    Records(Vec<Record>),
    /// The name does not exist, or has no record of that type.
    NotFound,
    /// The server failed or answered nonsense: try later.
    TempFail,
}

/// The nameservers of a resolv.conf text (port 53), at most three; loopback when none.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = resolv_conf
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.parse::<IpAddr>().ok())
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .take(3)
        .collect();
    if out.is_empty() {
        out.push(SocketAddr::new(IpAddr::from([127, 0, 0, 1]), 53));
    }
    out
}

/// The PTR name of an address (`4.3.2.1.in-addr.arpa`, nibbles for IPv6).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// Encodes a query for `name` with id `id` (recursion desired).
pub fn query(id: u16, name: &str, t: Qtype) -> Option<Vec<u8>> {
    let mut q = Vec::with_capacity(32 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        if label.is_empty() || label.len() > 63 {
            return None;
        }
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&(t as u16).to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    (q.len() <= 512).then_some(q)
}

/// Reads a possibly compressed name at `pos`; returns it and the position after it.
fn read_name(msg: &[u8], mut pos: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    let mut end = None;
    for _ in 0..64 {
        let len = *msg.get(pos)? as usize;
        match len {
            0 => {
                return Some((name, end.unwrap_or(pos + 1)));
            }
            l if l & 0xc0 == 0xc0 => {
                let ptr = ((l & 0x3f) << 8) | *msg.get(pos + 1)? as usize;
                end.get_or_insert(pos + 2);
                if ptr >= msg.len() {
                    return None;
                }
                pos = ptr;
            }
            l if l < 64 => {
                let label = msg.get(pos + 1..pos + 1 + l)?;
                if !name.is_empty() {
                    name.push('.');
                }
                name.push_str(&String::from_utf8_lossy(label));
                pos += 1 + l;
            }
            _ => return None,
        }
    }
    None
}

/// Parses an answer to a query of type `t` with id `id`. `None`: not the answer
/// awaited (wrong id or garbage): ignore it.
pub fn parse(msg: &[u8], id: u16, t: Qtype) -> Option<Answer> {
    if msg.len() < 12 || u16::from_be_bytes([msg[0], msg[1]]) != id || msg[2] & 0x80 == 0 {
        return None;
    }
    let rcode = msg[3] & 0x0f;
    let qd = u16::from_be_bytes([msg[4], msg[5]]) as usize;
    let an = u16::from_be_bytes([msg[6], msg[7]]) as usize;
    match rcode {
        0 => {}
        3 => return Some(Answer::NotFound),
        _ => return Some(Answer::TempFail),
    }
    if msg[2] & 0x02 != 0 {
        // Truncated: no TCP fallback here.
        return Some(Answer::TempFail);
    }
    let mut pos = 12;
    for _ in 0..qd {
        let (_, p) = read_name(msg, pos)?;
        pos = p + 4;
    }
    let mut out = Vec::new();
    for _ in 0..an {
        let (_, p) = read_name(msg, pos)?;
        let h = msg.get(p..p + 10)?;
        let rtype = u16::from_be_bytes([h[0], h[1]]);
        let rdlen = u16::from_be_bytes([h[8], h[9]]) as usize;
        let rd = p + 10;
        let data = msg.get(rd..rd + rdlen)?;
        match (rtype, t) {
            (1, Qtype::A) if rdlen == 4 => out.push(Record::Addr(IpAddr::from([
                data[0], data[1], data[2], data[3],
            ]))),
            (28, Qtype::Aaaa) if rdlen == 16 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(data);
                out.push(Record::Addr(IpAddr::from(a)));
            }
            (12, Qtype::Ptr) => out.push(Record::Name(read_name(msg, rd)?.0)),
            (15, Qtype::Mx) if rdlen > 2 => {
                let pref = u16::from_be_bytes([data[0], data[1]]);
                out.push(Record::Mx(pref, read_name(msg, rd + 2)?.0));
            }
            _ => {}
        }
        pos = rd + rdlen;
    }
    Some(if out.is_empty() {
        Answer::NotFound
    } else {
        Answer::Records(out)
    })
}

/// A record of an answer, as the resolver gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdata {
    /// A, AAAA.
    Addr(IpAddr),
    /// Preference and host ("" for the root: null MX).
    Mx(u16, String),
    /// PTR, CNAME target.
    Name(String),
    /// One TXT record, its character-strings concatenated.
    Txt(Vec<u8>),
    /// A TLSA record.
    Tlsa {
        /// Certificate usage.
        usage: u8,
        /// Selector.
        selector: u8,
        /// Matching type.
        mtype: u8,
        /// Certificate association data.
        data: Vec<u8>,
    },
}

/// A resolver's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedAnswer {
    /// Owner of the records after CNAMEs.
    pub name: String,
    /// Records of the asked type; empty: NODATA.
    pub records: Vec<Rdata>,
    /// Authenticated by a trusted resolver.
    pub secure: bool,
    /// Smallest TTL.
    pub ttl: u32,
}

/// Why a question has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist.
    NxDomain {
        /// Authenticated.
        secure: bool,
    },
    /// Try later.
    TempFail(String),
    /// Cannot be asked.
    PermFail(String),
}

/// What a question gives.
pub type DnsResult = Result<ResolvedAnswer, DnsError>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an answer to `q` with the given records (type, rdata).
    fn answer(q: &[u8], rcode: u8, records: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut m = q.to_vec();
        m[2] = 0x81;
        m[3] = 0x80 | rcode;
        m[6..8].copy_from_slice(&(records.len() as u16).to_be_bytes());
        for (t, rd) in records {
            m.extend_from_slice(&[0xc0, 12]);
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 1, 0]);
            m.extend_from_slice(&(rd.len() as u16).to_be_bytes());
            m.extend_from_slice(rd);
        }
        m
    }

    #[test]
    fn names_and_queries() {
        assert_eq!(
            reverse_name(IpAddr::from([192, 0, 2, 7])),
            "7.2.0.192.in-addr.arpa"
        );
        assert!(
            reverse_name("2001:db8::1".parse().unwrap_or(IpAddr::from([0; 4])))
                .ends_with("8.b.d.0.1.0.0.2.ip6.arpa")
        );
        assert_eq!(
            nameservers("# x\nnameserver 127.0.0.1\nnameserver ::1\n").len(),
            2
        );
        assert_eq!(nameservers("").len(), 1);
        assert!(query(1, "a..b", Qtype::A).is_none());
    }

    #[test]
    fn answers() {
        let q = query(7, "7.2.0.192.in-addr.arpa", Qtype::Ptr).unwrap_or_default();
        let mut rd = vec![2, b'm', b'x', 7];
        rd.extend_from_slice(b"example");
        rd.push(0);
        assert_eq!(
            parse(&answer(&q, 0, &[(12, rd)]), 7, Qtype::Ptr),
            Some(Answer::Records(vec![Record::Name("mx.example".into())]))
        );
        assert_eq!(
            parse(&answer(&q, 3, &[]), 7, Qtype::Ptr),
            Some(Answer::NotFound)
        );
        assert_eq!(
            parse(&answer(&q, 2, &[]), 7, Qtype::Ptr),
            Some(Answer::TempFail)
        );
        assert_eq!(parse(&answer(&q, 0, &[]), 8, Qtype::Ptr), None);
        let q = query(9, "example.org", Qtype::Mx).unwrap_or_default();
        // MX 10 pointing to the question's name by compression.
        let a = answer(&q, 0, &[(15, vec![0, 10, 0xc0, 12]), (1, vec![1, 2, 3, 4])]);
        assert_eq!(
            parse(&a, 9, Qtype::Mx),
            Some(Answer::Records(vec![Record::Mx(10, "example.org".into())]))
        );
        // Garbage never panics.
        for cut in 0..a.len() {
            let _ = parse(&a[..cut], 9, Qtype::Mx);
        }
        let mut loopy = a.clone();
        let n = loopy.len();
        loopy[n - 4] = 0xc0;
        loopy[n - 3] = (n - 4) as u8;
        let _ = parse(&loopy, 9, Qtype::Mx);
    }
}
