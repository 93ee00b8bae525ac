//! The DNS stub resolver: questions to the nameservers of /etc/resolv.conf, answers
//! parsed strictly, a cache, all without a thread or a runtime.
//!
//! `wire.rs` builds queries and parses answers (RFC 1035, RFC 6891 EDNS0),
//! `conf.rs` reads resolv.conf and /etc/hosts, `cache.rs` keeps answers for their TTL,
//! and `resolver.rs` is the machine that ties them together: questions, datagrams,
//! stream bytes and the time go in; packets to send, deadlines and answers come out.
//! The engine's loop (`event_loop/dns.rs`) owns the sockets and the deadlines.
//!
//! Names are given and returned without the final dot and compared case-insensitively;
//! returned names are lowercase, every byte outside `!`..`~` (and `.` or `\` inside a
//! label) written `\DDD` as in RFC 1035 §5.1.

use std::net::IpAddr;

pub mod cache;
pub mod conf;
pub mod resolver;
pub mod wire;

/// Record types the daemon asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qtype {
    /// IPv4 address.
    A = 1,
    /// Canonical name (asked for itself, its chain is not followed).
    Cname = 5,
    /// Reverse pointer.
    Ptr = 12,
    /// Mail exchanger.
    Mx = 15,
    /// Text strings.
    Txt = 16,
    /// IPv6 address.
    Aaaa = 28,
    /// DANE certificate association (RFC 6698).
    Tlsa = 52,
}

impl Qtype {
    /// The type's code on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The type's mnemonic, for the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Qtype::A => "A",
            Qtype::Cname => "CNAME",
            Qtype::Ptr => "PTR",
            Qtype::Mx => "MX",
            Qtype::Txt => "TXT",
            Qtype::Aaaa => "AAAA",
            Qtype::Tlsa => "TLSA",
        }
    }

    /// Every type, in code order (tests and fuzzing).
    pub const ALL: [Qtype; 7] = [
        Qtype::A,
        Qtype::Cname,
        Qtype::Ptr,
        Qtype::Mx,
        Qtype::Txt,
        Qtype::Aaaa,
        Qtype::Tlsa,
    ];
}

/// One record of the asked type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rdata {
    /// A or AAAA.
    Addr(IpAddr),
    /// MX: preference and host ("" for the root: a null MX, RFC 7505).
    Mx(u16, String),
    /// PTR or CNAME target.
    Name(String),
    /// One TXT record, its character-strings concatenated.
    Txt(Vec<u8>),
    /// TLSA (RFC 6698 §2.1).
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

/// A successful answer (rcode NOERROR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Owner name of the records after CNAMEs: lowercase, no final dot.
    pub name: String,
    /// Only records of the asked type; empty = NODATA.
    pub records: Vec<Rdata>,
    /// The AD bit was set and the resolver is trusted (every nameserver on loopback,
    /// or `options trust-ad`; RFC 4035 §4.9.3).
    pub secure: bool,
    /// Smallest TTL of the chain (the negative TTL for NODATA), in seconds.
    pub ttl: u32,
}

/// Why a question has no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The name does not exist (rcode NXDOMAIN).
    NxDomain {
        /// As [`Answer::secure`].
        secure: bool,
    },
    /// SERVFAIL, REFUSED, no answer after every server and attempt, garbage: try later.
    TempFail(String),
    /// A name that cannot be asked (bad label), NOTIMP.
    PermFail(String),
}

/// The outcome of a question.
pub type DnsResult = Result<Answer, DnsError>;

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::NxDomain { .. } => f.write_str("no such domain"),
            DnsError::TempFail(why) => write!(f, "temporary DNS failure: {why}"),
            DnsError::PermFail(why) => write!(f, "DNS failure: {why}"),
        }
    }
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

/// `name` as asked and compared: lowercase, without the final dot.
pub fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

/// A short form of a result for the log: `ok:N`, `nodata`, `nxdomain`, `tempfail`...
pub fn describe(r: &DnsResult) -> String {
    match r {
        Ok(a) if a.records.is_empty() => format!("nodata ttl={}", a.ttl),
        Ok(a) => format!(
            "ok records={} ttl={}{}",
            a.records.len(),
            a.ttl,
            if a.secure { " secure" } else { "" }
        ),
        Err(DnsError::NxDomain { .. }) => "nxdomain".into(),
        Err(DnsError::TempFail(why)) => format!("tempfail ({why})"),
        Err(DnsError::PermFail(why)) => format!("permfail ({why})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name(IpAddr::from([192, 0, 2, 7])),
            "7.2.0.192.in-addr.arpa"
        );
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let r = reverse_name(v6);
        assert!(r.starts_with("1.0.0.0.0.0.0.0."), "{r}");
        assert!(r.ends_with("8.b.d.0.1.0.0.2.ip6.arpa"), "{r}");
        assert_eq!(normalize("Mx.Example.ORG."), "mx.example.org");
        for t in Qtype::ALL {
            assert!(!t.as_str().is_empty() && t.code() > 0);
        }
    }
}
