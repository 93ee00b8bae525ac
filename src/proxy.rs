//! The PROXY protocol header (haproxy's specification, versions 1 and 2) that a proxy
//! sends before the first byte of the client it relays, on a listener with
//! `proxy-v2`. A pure, strict parser: bytes in, a verdict out, no I/O. The engine
//! (`event_loop/proxy.rs`) reads the socket, never past the header, and feeds what it
//! has so far; the session starts once a header is whole and valid.
//!
//! ```text
//! v1: "PROXY" SP ("TCP4" | "TCP6") SP src SP dst SP sport SP dport CR LF   (<= 107 octets)
//!     "PROXY" SP "UNKNOWN" [anything but LF] CR LF
//! v2: 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A | ver<<4 | cmd | fam<<4 | proto | len (BE16)
//!     | address block of len octets: addresses, then TLVs (type, BE16 length, value)
//! ```
//!
//! Accepted: v2 LOCAL (any family: the block is skipped, as the specification
//! demands), v2 PROXY over TCP (`0x11` IPv4, `0x21` IPv6), v1 TCP4, TCP6 and UNKNOWN.
//! Everything else is refused: an unknown signature, version or command; PROXY for
//! UNSPEC, UDP or UNIX; a block longer than [`V2_MAX_BLOCK`], too short for its
//! addresses, or whose TLVs overrun it; a v1 line with no CR LF within [`V1_MAX`]
//! octets, extra or missing words, addresses that do not parse, or ports that are not
//! plain decimal numbers up to 65535.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The twelve octets a v2 header starts with.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// What a v1 header starts with.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 line, its CR LF included.
pub const V1_MAX: usize = 107;
/// The longest address block of a v2 header accepted (the octets after its fixed 16).
pub const V2_MAX_BLOCK: usize = 1536;
/// The longest header accepted: a v2 header with the longest block.
pub const MAX_HEADER: usize = 16 + V2_MAX_BLOCK;

/// The TLV of the TLS facts of the client's connection to the proxy.
const PP2_TYPE_SSL: u8 = 0x20;
/// Sub-TLV of [`PP2_TYPE_SSL`]: the TLS version, as text.
const PP2_SUBTYPE_SSL_VERSION: u8 = 0x21;
/// Sub-TLV of [`PP2_TYPE_SSL`]: the cipher, as text.
const PP2_SUBTYPE_SSL_CIPHER: u8 = 0x23;
/// Client bit: the client connected to the proxy over TLS.
const PP2_CLIENT_SSL: u8 = 0x01;
/// Client bits: it presented a certificate, on this connection or its TLS session.
const PP2_CLIENT_CERT: u8 = 0x02 | 0x04;

/// A whole, valid header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 1 or 2.
    pub version: u8,
    /// The client's end and the end it connected to, as the proxy saw them; `None`
    /// for v2 LOCAL and v1 UNKNOWN (a health check of the proxy's, or a client the
    /// proxy cannot name): the connection's own addresses stand.
    pub addrs: Option<Endpoints>,
    /// What a v2 header says of the client's TLS to the proxy, when it used TLS.
    pub tls: Option<ProxyTls>,
}

/// Both ends of the client's connection to the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoints {
    /// The client's address and port.
    pub src: SocketAddr,
    /// The address and port the client connected to.
    pub dst: SocketAddr,
}

/// The TLS the proxy terminated, from a v2 header's `PP2_TYPE_SSL` TLV with the
/// client-SSL bit. Facts for the log only: the session itself is not TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProxyTls {
    /// The version the proxy names (`TLSv1.3`), when it does.
    pub version: Option<String>,
    /// The cipher the proxy names, when it does.
    pub cipher: Option<String>,
    /// The client presented a certificate that the proxy verified.
    pub client_cert: bool,
}

/// Why a header is refused; the connection is then closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Neither signature.
    Signature,
    /// A v2 version other than 2.
    Version(u8),
    /// A v2 command other than LOCAL (0) and PROXY (1).
    Command(u8),
    /// A v2 PROXY command for another family or transport than TCP over IPv4 or IPv6.
    Family(u8),
    /// A v2 address block longer than [`V2_MAX_BLOCK`].
    BlockTooLong(usize),
    /// A v2 address block shorter than its family's addresses.
    BlockTooShort(usize),
    /// A v2 TLV that overruns the block, or a TLS TLV too short for its fields.
    Tlv,
    /// No CR LF within the first [`V1_MAX`] octets of a v1 header.
    LineTooLong,
    /// A v1 line ended by LF alone.
    BareLf,
    /// A v1 protocol other than TCP4, TCP6 and UNKNOWN.
    Protocol,
    /// A v1 line with too few or too many words.
    Words,
    /// A v1 address that is not one of its protocol's family.
    Address,
    /// A v1 port that is not a decimal number from 0 to 65535 without leading zeros.
    Port,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Signature => f.write_str("no PROXY protocol signature"),
            Error::Version(v) => write!(f, "PROXY v2: unknown version {v}"),
            Error::Command(c) => write!(f, "PROXY v2: unknown command {c}"),
            Error::Family(x) => write!(f, "PROXY v2: family and transport 0x{x:02x} refused"),
            Error::BlockTooLong(n) => write!(
                f,
                "PROXY v2: address block of {n} octets, more than {V2_MAX_BLOCK}"
            ),
            Error::BlockTooShort(n) => write!(
                f,
                "PROXY v2: address block of {n} octets, too short for its family"
            ),
            Error::Tlv => f.write_str("PROXY v2: malformed TLV"),
            Error::LineTooLong => write!(f, "PROXY v1: no CR LF within {V1_MAX} octets"),
            Error::BareLf => f.write_str("PROXY v1: line ended by LF without CR"),
            Error::Protocol => f.write_str("PROXY v1: unknown protocol"),
            Error::Words => f.write_str("PROXY v1: wrong number of fields"),
            Error::Address => f.write_str("PROXY v1: invalid address"),
            Error::Port => f.write_str("PROXY v1: invalid port"),
        }
    }
}

/// Reads a header at the start of `buf`, which holds what the connection sent so
/// far. `Ok(None)`: no verdict yet, more octets are needed (never once `buf` holds
/// [`MAX_HEADER`] octets); `Ok(Some((n, header)))`: the header is the first `n`
/// octets, and what follows is the client's; `Err`: the connection must be closed.
pub fn parse(buf: &[u8]) -> Result<Option<(usize, Header)>, Error> {
    match buf.first() {
        None => Ok(None),
        Some(b'\r') => v2(buf),
        Some(_) => v1(buf),
    }
}

/// Whether `buf` starts as `sig` does, for as many octets as either has.
fn starts_as(buf: &[u8], sig: &[u8]) -> bool {
    let n = buf.len().min(sig.len());
    buf[..n] == sig[..n]
}

fn v2(buf: &[u8]) -> Result<Option<(usize, Header)>, Error> {
    if !starts_as(buf, &V2_SIG) {
        return Err(Error::Signature);
    }
    let Some(fixed) = buf.get(..16) else {
        return Ok(None);
    };
    let (ver_cmd, fam) = (fixed[12], fixed[13]);
    if ver_cmd >> 4 != 2 {
        return Err(Error::Version(ver_cmd >> 4));
    }
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        c => return Err(Error::Command(c)),
    };
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX_BLOCK {
        return Err(Error::BlockTooLong(len));
    }
    let Some(block) = buf.get(16..16 + len) else {
        return Ok(None);
    };
    let header = |addrs, tls| {
        Ok(Some((
            16 + len,
            Header {
                version: 2,
                addrs,
                tls,
            },
        )))
    };
    if local {
        // LOCAL: the block, its family included, is skipped whatever it holds.
        return header(None, None);
    }
    let (ip_len, v4) = match fam {
        0x11 => (4, true),
        0x21 => (16, false),
        other => return Err(Error::Family(other)),
    };
    let addr_len = 2 * ip_len + 4;
    let (Some(addrs), Some(tlvs)) = (block.get(..addr_len), block.get(addr_len..)) else {
        return Err(Error::BlockTooShort(len));
    };
    let ip = |b: &[u8]| -> IpAddr {
        if v4 {
            let mut o = [0u8; 4];
            o.copy_from_slice(b);
            IpAddr::V4(Ipv4Addr::from(o))
        } else {
            let mut o = [0u8; 16];
            o.copy_from_slice(b);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    };
    let ports = &addrs[2 * ip_len..];
    let endpoints = Endpoints {
        src: SocketAddr::new(
            ip(&addrs[..ip_len]),
            u16::from_be_bytes([ports[0], ports[1]]),
        ),
        dst: SocketAddr::new(
            ip(&addrs[ip_len..2 * ip_len]),
            u16::from_be_bytes([ports[2], ports[3]]),
        ),
    };
    let mut tls = None;
    for (kind, value) in Tlvs(tlvs) {
        if kind? == PP2_TYPE_SSL {
            tls = ssl(value)?;
        }
    }
    header(Some(endpoints), tls)
}

/// The TLVs of a block, in order; an item is `Err` (and the last) when one overruns.
struct Tlvs<'a>(&'a [u8]);

impl<'a> Iterator for Tlvs<'a> {
    type Item = (Result<u8, Error>, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.0;
        if rest.is_empty() {
            return None;
        }
        let parsed = match rest {
            [kind, hi, lo, tail @ ..] => {
                let n = usize::from(u16::from_be_bytes([*hi, *lo]));
                tail.get(..n).map(|v| (*kind, v, &tail[n..]))
            }
            _ => None,
        };
        match parsed {
            Some((kind, value, next)) => {
                self.0 = next;
                Some((Ok(kind), value))
            }
            None => {
                self.0 = &[];
                Some((Err(Error::Tlv), &[]))
            }
        }
    }
}

/// The value of a `PP2_TYPE_SSL` TLV: client bits, verify result, sub-TLVs.
fn ssl(value: &[u8]) -> Result<Option<ProxyTls>, Error> {
    let [client, a, b, c, d, subs @ ..] = value else {
        return Err(Error::Tlv);
    };
    // The verify field is 0 when the client's certificate verified.
    let verified = u32::from_be_bytes([*a, *b, *c, *d]) == 0;
    let mut tls = ProxyTls {
        client_cert: client & PP2_CLIENT_CERT != 0 && verified,
        ..ProxyTls::default()
    };
    for (kind, v) in Tlvs(subs) {
        let text = || Some(String::from_utf8_lossy(v).into_owned());
        match kind? {
            PP2_SUBTYPE_SSL_VERSION => tls.version = text(),
            PP2_SUBTYPE_SSL_CIPHER => tls.cipher = text(),
            _ => {}
        }
    }
    Ok((client & PP2_CLIENT_SSL != 0).then_some(tls))
}

fn v1(buf: &[u8]) -> Result<Option<(usize, Header)>, Error> {
    if !starts_as(buf, V1_PREFIX) {
        return Err(Error::Signature);
    }
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(lf) = memchr::memchr(b'\n', window) else {
        return match buf.len() >= V1_MAX {
            true => Err(Error::LineTooLong),
            false => Ok(None),
        };
    };
    let Some(line) = window[..lf].strip_suffix(b"\r") else {
        return Err(Error::BareLf);
    };
    // The prefix matched and no LF is in it: the line holds it whole.
    let rest = line.get(V1_PREFIX.len()..).unwrap_or_default();
    let mut words = rest.split(|&b| b == b' ');
    let v4 = match words.next() {
        // The specification has the receiver ignore what follows UNKNOWN.
        Some(b"UNKNOWN") => {
            let h = Header {
                version: 1,
                addrs: None,
                tls: None,
            };
            return Ok(Some((lf + 1, h)));
        }
        Some(b"TCP4") => true,
        Some(b"TCP6") => false,
        _ => return Err(Error::Protocol),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return Err(Error::Words);
    };
    let ip = |w: &[u8]| -> Result<IpAddr, Error> {
        let s = std::str::from_utf8(w).map_err(|_| Error::Address)?;
        match v4 {
            true => s.parse::<Ipv4Addr>().map(IpAddr::V4),
            false => s.parse::<Ipv6Addr>().map(IpAddr::V6),
        }
        .map_err(|_| Error::Address)
    };
    let endpoints = Endpoints {
        src: SocketAddr::new(ip(src)?, port(sport)?),
        dst: SocketAddr::new(ip(dst)?, port(dport)?),
    };
    let h = Header {
        version: 1,
        addrs: Some(endpoints),
        tls: None,
    };
    Ok(Some((lf + 1, h)))
}

/// A v1 port: decimal, 0 to 65535, no sign and no leading zero.
fn port(w: &[u8]) -> Result<u16, Error> {
    let plain = matches!(w, [b'0'] | [b'1'..=b'9', ..]) && w.iter().all(u8::is_ascii_digit);
    if !plain || w.len() > 5 {
        return Err(Error::Port);
    }
    std::str::from_utf8(w)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Error::Port)
}

#[cfg(test)]
#[path = "proxy_tests.rs"]
mod tests;
