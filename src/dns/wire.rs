//! DNS messages on the wire: queries built, answers parsed strictly (RFC 1035 §4,
//! RFC 2181, RFC 2308, RFC 6891).
//!
//! An answer is taken only when it is one: QR set, opcode QUERY, our id, and our
//! question echoed (name case-insensitively, type, class IN); anything else is not for
//! us and is ignored ([`parse`] returns `None`). Names are bounded (255 bytes, labels of
//! 63), compression pointers must point strictly backwards of the labels they follow
//! (so a name always ends), and the label types 0x40 and 0x80 are refused. A CNAME
//! chain is followed inside the answer from the question's name, each owner equal to
//! the previous target, 8 hops at most, without loops; records that are not on the
//! chain are ignored.

use super::{Answer, DnsError, Qtype, Rdata};
use std::net::IpAddr;

/// The UDP payload size announced in EDNS0 (DNS Flag Day 2020).
pub const UDP_SIZE: u16 = 1232;
/// Longest name on the wire, length bytes included (RFC 1035 §3.1).
const MAX_NAME: usize = 255;
/// Longest label.
const MAX_LABEL: usize = 63;
/// CNAME hops followed at most.
const MAX_HOPS: usize = 8;
/// Compression pointers followed in one name at most (they must go backwards anyway).
const MAX_POINTERS: usize = 64;
/// Negative answers are kept this long at most (RFC 2308 §5 suggests 1 to 3 hours).
pub const MAX_NEGATIVE_TTL: u32 = 3600;
/// The negative TTL when the answer carries no SOA.
pub const DEFAULT_NEGATIVE_TTL: u32 = 300;

/// The header's rcodes the resolver tells apart.
pub mod rcode {
    /// Format error: the server did not understand the query (EDNS?).
    pub const FORMERR: u8 = 1;
    /// Server failure.
    pub const SERVFAIL: u8 = 2;
    /// The name does not exist.
    pub const NXDOMAIN: u8 = 3;
    /// Not implemented.
    pub const NOTIMP: u8 = 4;
    /// Refused.
    pub const REFUSED: u8 = 5;
}

/// How a query is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryOpts {
    /// Add an EDNS0 OPT record (UDP size [`UDP_SIZE`]).
    pub edns: bool,
    /// Ask for the AD bit: AD=1 in the header (RFC 6840 §5.7) and DO=1 in the OPT
    /// record (when there is one).
    pub dnssec: bool,
}

/// What an answer to our question says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// TC=1: the answer did not fit; ask again over TCP.
    Truncated,
    /// An error rcode (FORMERR, SERVFAIL, NOTIMP, REFUSED or another).
    Rcode(u8),
    /// Our question, but the rest does not parse: the server is broken.
    Malformed(&'static str),
    /// NOERROR: records of the asked type, or none (NODATA, with the negative TTL).
    /// `secure` is the raw AD bit here.
    Answer(Answer),
    /// NXDOMAIN, with the raw AD bit and the negative TTL.
    NxDomain {
        /// The AD bit.
        ad: bool,
        /// How long it may be cached.
        ttl: u32,
    },
}

/// Appends `name` (without escapes, an optional final dot) in wire form; an error
/// names why it cannot be asked.
pub fn encode_name(name: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let start = out.len();
    if !name.is_empty() {
        for label in name.split('.') {
            if label.is_empty() {
                return Err(format!("empty label in {:?}", name.escape_debug()));
            }
            if label.len() > MAX_LABEL {
                return Err("label longer than 63 bytes".into());
            }
            if label
                .bytes()
                .any(|b| !(0x21..=0x7e).contains(&b) || b == b'\\')
            {
                return Err(format!("bad character in {:?}", name.escape_debug()));
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    if out.len() - start > MAX_NAME {
        return Err("name longer than 255 bytes".into());
    }
    Ok(())
}

/// A query with id `id` for (`name`, `qtype`, IN), recursion desired.
pub fn query(id: u16, name: &str, qtype: Qtype, opts: QueryOpts) -> Result<Vec<u8>, String> {
    let mut q = Vec::with_capacity(40 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    // RD=1; AD=1 asks a validating resolver for the AD bit (RFC 6840 §5.7).
    q.push(0x01);
    q.push(if opts.dnssec { 0x20 } else { 0 });
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, u8::from(opts.edns)]);
    encode_name(name, &mut q)?;
    q.extend_from_slice(&qtype.code().to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    if opts.edns {
        // OPT (RFC 6891 §6.1.2): root owner, type 41, class = UDP size, TTL = extended
        // rcode, version 0, flags (DO = 0x8000), no options.
        q.push(0);
        q.extend_from_slice(&41u16.to_be_bytes());
        q.extend_from_slice(&UDP_SIZE.to_be_bytes());
        q.extend_from_slice(&[0, 0, if opts.dnssec { 0x80 } else { 0 }, 0, 0, 0]);
    }
    Ok(q)
}

fn u16_at(m: &[u8], pos: usize) -> Option<u16> {
    let b = m.get(pos..pos.checked_add(2)?)?;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

fn u32_at(m: &[u8], pos: usize) -> Option<u32> {
    let b = m.get(pos..pos.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Appends a label's bytes in presentation form: lowercase, `\DDD` for bytes outside
/// `!`..`~` and for `.` and `\`.
fn push_label(out: &mut String, label: &[u8]) {
    for &b in label {
        match b {
            b'.' | b'\\' => out.push_str(&format!("\\{b:03}")),
            0x21..=0x7e => out.push(b.to_ascii_lowercase() as char),
            _ => out.push_str(&format!("\\{b:03}")),
        }
    }
}

/// Reads the name at `pos`: its presentation form and the position after it in the
/// message. `None` for a malformed name.
pub fn read_name(msg: &[u8], pos: usize) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut wire = 0usize;
    let mut p = pos;
    // Pointers must go before the start of the labels they follow: each jump lands
    // strictly earlier than the last, so the walk ends.
    let mut limit = pos;
    let mut end = None;
    let mut jumps = 0;
    loop {
        let b = *msg.get(p)?;
        match b & 0xc0 {
            0x00 => {
                let len = usize::from(b);
                wire += 1 + len;
                if wire > MAX_NAME {
                    return None;
                }
                if len == 0 {
                    return Some((out, end.unwrap_or(p + 1)));
                }
                let label = msg.get(p + 1..p + 1 + len)?;
                if !out.is_empty() {
                    out.push('.');
                }
                push_label(&mut out, label);
                p += 1 + len;
            }
            0xc0 => {
                let target = usize::from(u16_at(msg, p)? & 0x3fff);
                jumps += 1;
                if target >= limit || jumps > MAX_POINTERS {
                    return None;
                }
                end.get_or_insert(p + 2);
                limit = target;
                p = target;
            }
            // 0x40 (extended label types, RFC 6891 §5) and 0x80 (reserved).
            _ => return None,
        }
    }
}

/// A resource record, its data still on the wire.
struct Rr<'a> {
    name: String,
    rtype: u16,
    class: u16,
    ttl: u32,
    /// Where its data starts in the message (names in it may point back).
    at: usize,
    data: &'a [u8],
}

fn read_rr(msg: &[u8], pos: usize) -> Option<(Rr<'_>, usize)> {
    let (name, p) = read_name(msg, pos)?;
    let rtype = u16_at(msg, p)?;
    let class = u16_at(msg, p + 2)?;
    // RFC 2181 §8: a TTL with the top bit set is taken as zero.
    let ttl = u32_at(msg, p + 4)?;
    let ttl = if ttl & 0x8000_0000 != 0 { 0 } else { ttl };
    let len = usize::from(u16_at(msg, p + 8)?);
    let at = p + 10;
    let data = msg.get(at..at + len)?;
    Some((
        Rr {
            name,
            rtype,
            class,
            ttl,
            at,
            data,
        },
        at + len,
    ))
}

/// A name that fills exactly the record data from `from` to its end.
fn rdata_name(msg: &[u8], rr: &Rr<'_>, from: usize) -> Option<String> {
    let (name, end) = read_name(msg, from)?;
    (end == rr.at + rr.data.len()).then_some(name)
}

/// The record data of an `rtype` record, decoded.
fn rdata(msg: &[u8], rr: &Rr<'_>, qtype: Qtype) -> Option<Rdata> {
    let d = rr.data;
    Some(match qtype {
        Qtype::A => Rdata::Addr(IpAddr::from(<[u8; 4]>::try_from(d).ok()?)),
        Qtype::Aaaa => Rdata::Addr(IpAddr::from(<[u8; 16]>::try_from(d).ok()?)),
        Qtype::Mx => Rdata::Mx(u16_at(d, 0)?, rdata_name(msg, rr, rr.at + 2)?),
        Qtype::Ptr | Qtype::Cname => Rdata::Name(rdata_name(msg, rr, rr.at)?),
        Qtype::Txt => {
            let mut txt = Vec::with_capacity(d.len());
            let mut i = 0;
            while i < d.len() {
                let n = usize::from(d[i]);
                txt.extend_from_slice(d.get(i + 1..i + 1 + n)?);
                i += 1 + n;
            }
            Rdata::Txt(txt)
        }
        Qtype::Tlsa => match d {
            [usage, selector, mtype, data @ ..] => Rdata::Tlsa {
                usage: *usage,
                selector: *selector,
                mtype: *mtype,
                data: data.to_vec(),
            },
            _ => return None,
        },
    })
}

/// Whether `name` is `zone` or below it.
fn in_zone(name: &str, zone: &str) -> bool {
    zone.is_empty()
        || name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

/// The negative TTL of an answer's authority section (RFC 2308 §5: the smaller of the
/// SOA record's TTL and its MINIMUM), for a SOA whose owner holds `name`.
fn negative_ttl(msg: &[u8], authority: &[Rr<'_>], name: &str) -> Option<u32> {
    let soa = authority
        .iter()
        .find(|r| r.rtype == 6 && r.class == 1 && in_zone(name, &r.name))?;
    let (_, p) = read_name(msg, soa.at)?;
    let (_, p) = read_name(msg, p)?;
    // serial refresh retry expire minimum
    if p + 20 != soa.at + soa.data.len() {
        return None;
    }
    let minimum = u32_at(msg, p + 16)?;
    Some(soa.ttl.min(minimum))
}

/// Parses `msg` as the answer to query `id` for (`name`, `qtype`). `None`: it is not
/// (wrong id, not a response, another question, too short): ignore it.
pub fn parse(msg: &[u8], id: u16, name: &str, qtype: Qtype) -> Option<Reply> {
    let flags = u16_at(msg, 2)?;
    if u16_at(msg, 0)? != id || flags & 0x8000 == 0 || (flags >> 11) & 0xf != 0 {
        return None;
    }
    let rc = (flags & 0xf) as u8;
    let (qd, an, ns) = (u16_at(msg, 4)?, u16_at(msg, 6)?, u16_at(msg, 8)?);
    let mut pos = 12;
    match qd {
        1 => {
            let (qname, p) = read_name(msg, pos)?;
            if qname != super::normalize(name) || u16_at(msg, p)? != qtype.code() {
                return None;
            }
            if u16_at(msg, p + 2)? != 1 {
                return None;
            }
            pos = p + 4;
        }
        // Some servers answer FORMERR (and other errors) to an EDNS query without the
        // question (RFC 6891 §7): an error can only make us ask elsewhere.
        0 if !matches!(rc, 0 | rcode::NXDOMAIN) => return Some(Reply::Rcode(rc)),
        _ => return None,
    }
    if flags & 0x0200 != 0 {
        return Some(Reply::Truncated);
    }
    if !matches!(rc, 0 | rcode::NXDOMAIN) {
        return Some(Reply::Rcode(rc));
    }
    let ad = flags & 0x0020 != 0;
    let mut answers = Vec::new();
    for _ in 0..an {
        let Some((rr, p)) = read_rr(msg, pos) else {
            return Some(Reply::Malformed("bad answer record"));
        };
        if rr.class == 1 {
            answers.push(rr);
        }
        pos = p;
    }
    let mut authority = Vec::new();
    for _ in 0..ns {
        let Some((rr, p)) = read_rr(msg, pos) else {
            return Some(Reply::Malformed("bad authority record"));
        };
        authority.push(rr);
        pos = p;
    }
    // The CNAME chain from the question's name (RFC 1034 §3.6.2).
    let mut target = super::normalize(name);
    let mut chain = vec![target.clone()];
    let mut ttl = u32::MAX;
    let is_cname = |r: &&Rr<'_>, owner: &str| r.rtype == Qtype::Cname.code() && r.name == owner;
    if qtype != Qtype::Cname {
        while let Some(cname) = answers.iter().find(|r| is_cname(r, &target)) {
            if chain.len() > MAX_HOPS {
                return Some(Reply::Malformed("CNAME chain too long"));
            }
            let Some(next) = rdata_name(msg, cname, cname.at) else {
                return Some(Reply::Malformed("bad CNAME record"));
            };
            if chain.contains(&next) {
                return Some(Reply::Malformed("CNAME loop"));
            }
            ttl = ttl.min(cname.ttl);
            chain.push(next.clone());
            target = next;
        }
    }
    let mut records = Vec::new();
    for rr in answers
        .iter()
        .filter(|r| r.rtype == qtype.code() && r.name == target)
    {
        match rdata(msg, rr, qtype) {
            Some(d) => records.push(d),
            None => return Some(Reply::Malformed("bad record data")),
        }
        ttl = ttl.min(rr.ttl);
    }
    if records.is_empty() || rc == rcode::NXDOMAIN {
        let neg = negative_ttl(msg, &authority, &target)
            .unwrap_or(DEFAULT_NEGATIVE_TTL)
            .min(MAX_NEGATIVE_TTL)
            .min(ttl);
        if rc == rcode::NXDOMAIN {
            return Some(Reply::NxDomain { ad, ttl: neg });
        }
        ttl = neg;
    }
    Some(Reply::Answer(Answer {
        name: target,
        records,
        secure: ad,
        ttl,
    }))
}

impl Reply {
    /// A final reply as a result and how long it may be cached (`trusted`: whether the
    /// AD bit counts); `None` for the replies that call for another try.
    pub fn into_result(self, trusted: bool) -> Option<(super::DnsResult, u32)> {
        match self {
            Reply::Answer(mut a) => {
                a.secure &= trusted;
                let ttl = a.ttl;
                Some((Ok(a), ttl))
            }
            Reply::NxDomain { ad, ttl } => Some((
                Err(DnsError::NxDomain {
                    secure: ad && trusted,
                }),
                ttl,
            )),
            Reply::Truncated | Reply::Rcode(_) | Reply::Malformed(_) => None,
        }
    }
}

#[cfg(test)]
#[path = "wire_tests.rs"]
pub(crate) mod tests;
