//! The Sender Rewriting Scheme, as OpenSMTPD writes and reads it, so that addresses
//! made by either are understood by the other with the same `srs key`.
//!
//! A relay action with `srs` sends forwarded mail (a recipient expanded to an address
//! elsewhere) with the sender rewritten into the forwarding domain, so that the next
//! hop's SPF check sees a domain that allows this server:
//!
//! ```text
//! alice@origin.example        -> SRS0=HHHH=TT=origin.example=alice@forwarder.example
//! SRS0=HHHH=TT=d=u@hop.example -> SRS1=GGGG=hop.example==HHHH=TT=d=u@forwarder.example
//! SRS1=GGGG=hop==...@other     -> SRS1=NNNN=hop==...@forwarder.example
//! ```
//!
//! `TT` is the day of the rewriting (days since 1970 modulo 1024, two base32 letters);
//! `HHHH` the first four base64 characters of SHA-1 over the key followed by the rest
//! of the address. A bounce (null sender) to such an address is taken back to the
//! original sender, when the hash is the key's (or the backup key's) and the day not
//! older than `srs ttl`.

use crate::config::SrsConfig;
use crate::mail::address::Mailbox;

/// The base32 alphabet of the time stamp (RFC 4648).
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Days a time stamp may be ahead of the clock (clocks of two hosts differ).
const AHEAD: u16 = 1;

/// The first four characters of base64(SHA-1(key . text)).
fn hash(key: &str, text: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(key.as_bytes());
    ctx.update(text.as_bytes());
    let mut h = crate::mail::base64::encode(ctx.finish().as_ref());
    h.truncate(4);
    h
}

/// Seconds since 1970, for [`encode`] and [`decode`].
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Today's time stamp: days since 1970, modulo 1024.
fn today(now: u64) -> u16 {
    ((now / 86400) % 1024) as u16
}

fn stamp(day: u16) -> String {
    let hi = BASE32[usize::from((day >> 5) & 0x1f)];
    let lo = BASE32[usize::from(day & 0x1f)];
    String::from_utf8_lossy(&[hi, lo]).into_owned()
}

fn read_stamp(s: &str) -> Option<u16> {
    let b = s.as_bytes();
    let pos = |c: u8| BASE32.iter().position(|&x| x == c).map(|p| p as u16);
    Some((pos(*b.first()?)? << 5) | pos(*b.get(1)?)?)
}

/// Whether a time stamp made on `day` is still valid `today`, for a `ttl` in days.
fn fresh(today: u16, day: u16, ttl: u32) -> bool {
    let back = (today + 1024 - day) % 1024;
    let ahead = (day + 1024 - today) % 1024;
    u32::from(back) <= ttl || ahead <= AHEAD
}

/// `local@domain` split at the last `@`.
fn split(addr: &str) -> Option<(&str, &str)> {
    addr.rsplit_once('@')
        .filter(|(l, d)| !l.is_empty() && !d.is_empty())
}

/// Whether `local` starts with `prefix` (`SRS0=`, `SRS1=`) in any case.
fn strip_tag<'a>(local: &'a str, prefix: &str) -> Option<&'a str> {
    local
        .get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .map(|_| &local[prefix.len()..])
}

/// The sender `sender` rewritten into `domain` with `key`, at time `now` (seconds);
/// `None` when it has no domain to rewrite.
pub fn encode(key: &str, sender: &str, domain: &str, now: u64) -> Option<String> {
    let (local, sdomain) = split(sender)?;
    if let Some(rest) = strip_tag(local, "SRS0=") {
        // Another forwarder's SRS0 address: SRS1, naming the hop.
        let text = format!("{sdomain}=={rest}@{domain}");
        return Some(format!("SRS1={}={text}", hash(key, &text)));
    }
    if let Some(rest) = strip_tag(local, "SRS1=") {
        // Already SRS1: keep the first hop, re-sign for this domain.
        let tail = rest
            .get(5..)
            .filter(|_| matches!(rest.as_bytes().get(4), Some(b'=' | b'+' | b'-')))?;
        let text = format!("{tail}@{domain}");
        return Some(format!("SRS1={}={text}", hash(key, &text)));
    }
    let text = format!("{}={sdomain}={local}@{domain}", stamp(today(now)));
    Some(format!("SRS0={}={text}", hash(key, &text)))
}

/// Whether the hash at the start of `signed` (`HHHH=rest`) is the key's or the backup
/// key's; the rest when it is.
fn verify<'a>(cfg: &SrsConfig, signed: &'a str) -> Option<&'a str> {
    let (h, rest) = (signed.get(..4)?, signed.get(5..)?);
    if signed.as_bytes().get(4) != Some(&b'=') {
        return None;
    }
    let ok = |k: &Option<String>| k.as_deref().is_some_and(|k| hash(k, rest) == h);
    (ok(&cfg.key) || ok(&cfg.backup)).then_some(rest)
}

/// The address an SRS address stands for, checked with `cfg`'s keys and `srs ttl` at
/// time `now`; `None` when it is no valid SRS address.
pub fn decode(cfg: &SrsConfig, addr: &str, now: u64) -> Option<String> {
    let (tag, signed) = (addr.get(..5)?, addr.get(5..)?);
    // The hash covers the rest of the address, domain included.
    let (local, _) = split(verify(cfg, signed)?)?;
    if tag.eq_ignore_ascii_case("SRS0=") {
        // TT=domain=user
        let day = read_stamp(local)?;
        if local.as_bytes().get(2) != Some(&b'=') || !fresh(today(now), day, cfg.ttl_days) {
            return None;
        }
        let (odomain, ouser) = local.get(3..)?.split_once('=')?;
        if odomain.is_empty() || ouser.is_empty() {
            return None;
        }
        Some(format!("{ouser}@{odomain}"))
    } else if tag.eq_ignore_ascii_case("SRS1=") {
        // hop==HHHH=TT=domain=user: back to the hop's SRS0 address.
        let (hop, srs0) = local.split_once('=')?;
        let inner = srs0.strip_prefix('=')?;
        let day = read_stamp(inner.get(5..)?)?;
        if hop.is_empty() || !fresh(today(now), day, cfg.ttl_days) {
            return None;
        }
        Some(format!("SRS0={inner}@{hop}"))
    } else {
        None
    }
}

/// What a recipient stands for under SRS.
#[derive(Debug, PartialEq, Eq)]
pub enum TakenBack {
    /// No SRS address (or no `srs key`): the recipient itself.
    NotSrs,
    /// An SRS address whose hash does not verify, or that expired.
    Invalid,
    /// An SRS address of an address that cannot be a recipient.
    Unusable,
    /// The original sender the SRS address stands for.
    To(Mailbox),
}

/// The address a bounce to `rcpt` goes back to, when `rcpt` is an SRS address of
/// this host (`srs key`).
pub fn take_back(cfg: &SrsConfig, rcpt: &Mailbox, now: u64) -> TakenBack {
    let tagged = strip_tag(&rcpt.local, "SRS0=").or(strip_tag(&rcpt.local, "SRS1="));
    if cfg.key.is_none() || tagged.is_none() {
        return TakenBack::NotSrs;
    }
    let Some(original) = decode(cfg, &rcpt.to_string(), now) else {
        return TakenBack::Invalid;
    };
    match split(&original) {
        Some((local, domain)) => TakenBack::To(Mailbox {
            local: local.to_string(),
            domain: domain.to_ascii_lowercase(),
        }),
        None => TakenBack::Unusable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(key: &str, backup: Option<&str>) -> SrsConfig {
        SrsConfig {
            key: Some(key.into()),
            backup: backup.map(str::to_string),
            ttl_days: 4,
        }
    }

    const NOW: u64 = 1_700_000_000;

    #[test]
    fn round_trips() {
        let c = cfg("secret", None);
        let a = encode("secret", "alice@origin.example", "fwd.example", NOW).unwrap();
        assert!(a.starts_with("SRS0="), "{a}");
        assert!(a.ends_with("=origin.example=alice@fwd.example"), "{a}");
        assert_eq!(decode(&c, &a, NOW).as_deref(), Some("alice@origin.example"));
        // Case of the tag does not matter; the hash does.
        assert!(decode(&c, &a.replacen("SRS0", "srs0", 1), NOW).is_some());
        assert!(decode(&cfg("other", None), &a, NOW).is_none());
        assert!(decode(&cfg("other", Some("secret")), &a, NOW).is_some());
        // Four days of life, one day ahead.
        assert!(decode(&c, &a, NOW + 4 * 86400).is_some());
        assert!(decode(&c, &a, NOW + 5 * 86400).is_none());
        assert!(decode(&c, &a, NOW - 86400).is_some());
        assert!(decode(&c, &a, NOW - 2 * 86400).is_none());
        // A forwarded SRS0 becomes SRS1 and goes back to the first hop.
        let b = encode("secret", &a, "second.example", NOW).unwrap();
        assert!(b.starts_with("SRS1="), "{b}");
        assert!(b.contains("=fwd.example=="), "{b}");
        assert_eq!(decode(&c, &b, NOW).as_deref(), Some(a.as_str()));
        // An SRS1 forwarded again keeps its first hop.
        let d = encode("secret", &b, "third.example", NOW).unwrap();
        assert!(
            d.ends_with("@third.example") && d.contains("=fwd.example=="),
            "{d}"
        );
        assert_eq!(decode(&c, &d, NOW).as_deref(), Some(a.as_str()));
        assert!(encode("secret", "nodomain", "fwd.example", NOW).is_none());
        for bad in [
            "SRS0=@x",
            "SRS0=abcd@x",
            "SRS0=abcd=ZZ=x@y",
            "SRS1=abcd=x@y",
            "a@b",
        ] {
            assert!(decode(&c, bad, NOW).is_none(), "{bad}");
        }
    }

    #[test]
    fn time_stamps_wrap() {
        assert_eq!(read_stamp(&stamp(1023)), Some(1023));
        assert_eq!(read_stamp(&stamp(0)), Some(0));
        assert!(fresh(2, 1020, 6));
        assert!(!fresh(2, 1020, 5));
        assert!(fresh(1023, 0, 4));
    }
}
