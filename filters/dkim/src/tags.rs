//! Tag lists (RFC 6376 §3.2): the value of a DKIM-Signature field and the text of a
//! key record, each read into what the verifier needs, with the checks of §6.1.1
//! that need nothing but the tags.

use crate::canon::{self, Canon};
use smtpd::mail::base64;

/// A tag list, in order: names as written, values without the white space around
/// them (white space inside a value is kept).
pub type Tags<'a> = Vec<(&'a str, &'a str)>;

/// Splits a tag list. An error names why it is not one: a part without `=`, a bad
/// tag name, or a tag given twice (§3.2: a signature with duplicate tags is invalid).
pub fn parse(text: &str) -> Result<Tags<'_>, String> {
    let mut tags: Tags<'_> = Vec::new();
    let parts: Vec<&str> = text.split(';').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.trim().is_empty() {
            // A final `;` is allowed (§3.2), an empty part elsewhere is not.
            if i + 1 == parts.len() {
                break;
            }
            return Err("empty tag".into());
        }
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("tag without '=': {:?}", part.trim()))?;
        let name = name.trim_matches(is_fws);
        let good = name.starts_with(|c: char| c.is_ascii_alphabetic())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !good {
            return Err(format!("bad tag name {name:?}"));
        }
        if tags.iter().any(|(n, _)| *n == name) {
            return Err(format!("tag {name}= given twice"));
        }
        tags.push((name, value.trim_matches(is_fws)));
    }
    Ok(tags)
}

fn is_fws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

fn get<'a>(tags: &Tags<'a>, name: &str) -> Option<&'a str> {
    tags.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// A base64 value (RFC 4648 §4, padded), with folding white space anywhere in it
/// (RFC 6376 §3.5).
pub fn decode64(value: &str) -> Option<Vec<u8>> {
    base64::decode(strip_fws(value).as_bytes())
}

/// `value` without any folding white space.
pub fn strip_fws(value: &str) -> String {
    value.chars().filter(|&c| !is_fws(c)).collect()
}

/// The signing algorithms this filter knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `rsa-sha256`: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 6376 §3.3.1).
    RsaSha256,
    /// `ed25519-sha256`: Ed25519 over the SHA-256 hash (RFC 8463).
    Ed25519Sha256,
}

impl Algorithm {
    /// The `a=` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The `k=` name of the key type it uses.
    pub fn key_type(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa",
            Algorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

/// A DKIM-Signature field's tags, checked as far as they go without the message or
/// the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// `a=`.
    pub algorithm: Algorithm,
    /// `b=`, decoded.
    pub signature: Vec<u8>,
    /// `b=` as written, without white space (for `header.b` in the results).
    pub b_text: String,
    /// `bh=`, decoded.
    pub body_hash: Vec<u8>,
    /// `c=` header algorithm.
    pub header_canon: Canon,
    /// `c=` body algorithm.
    pub body_canon: Canon,
    /// `d=`, lowercase.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// `h=`, lowercase names, in order.
    pub headers: Vec<String>,
    /// `i=`, if given.
    pub identity: Option<String>,
    /// `l=`, if given.
    pub length: Option<u64>,
    /// `t=`, if given.
    pub timestamp: Option<u64>,
    /// `x=`, if given.
    pub expiration: Option<u64>,
}

/// Why a signature cannot be verified at all (a `permerror`), with what is known of
/// it for the results: its `d=`, `s=`, `a=` and `b=` when they could be read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unusable {
    /// The reason.
    pub reason: String,
    /// `d=` if there was one.
    pub domain: Option<String>,
    /// `s=` if there was one.
    pub selector: Option<String>,
    /// `a=` as written, if any.
    pub algorithm: Option<String>,
    /// `b=` without white space, if any.
    pub b_text: Option<String>,
}

fn number(tags: &Tags<'_>, name: &str) -> Result<Option<u64>, String> {
    match get(tags, name) {
        None => Ok(None),
        // At most 12 digits (§3.5: t= and x= are 12 digits at most; l= 76 bits, but
        // no body is that long).
        Some(v) if !v.is_empty() && v.len() <= 12 && v.bytes().all(|b| b.is_ascii_digit()) => {
            Ok(v.parse().ok())
        }
        Some(v) => Err(format!("bad {name}= value {v:?}")),
    }
}

fn domain_ok(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl Signature {
    /// Reads the value of a DKIM-Signature field; `now` (seconds since the epoch)
    /// checks `x=`.
    pub fn parse(value: &str, now: u64) -> Result<Signature, Box<Unusable>> {
        let tags = match parse(value) {
            Ok(t) => t,
            Err(reason) => {
                return Err(Box::new(Unusable {
                    reason,
                    ..Unusable::default()
                }))
            }
        };
        let mut u = Unusable {
            domain: get(&tags, "d").map(|d| strip_fws(d).to_ascii_lowercase()),
            selector: get(&tags, "s").map(strip_fws),
            algorithm: get(&tags, "a").map(strip_fws),
            b_text: get(&tags, "b").map(strip_fws),
            ..Unusable::default()
        };
        Self::from_tags(&tags, now).map_err(|reason| {
            u.reason = reason;
            Box::new(u)
        })
    }

    fn from_tags(tags: &Tags<'_>, now: u64) -> Result<Signature, String> {
        let need = |n: &str| get(tags, n).ok_or_else(|| format!("no {n}= tag"));
        if need("v")? != "1" {
            return Err("v= is not 1".into());
        }
        let algorithm = match strip_fws(need("a")?).to_ascii_lowercase().as_str() {
            "rsa-sha256" => Algorithm::RsaSha256,
            "ed25519-sha256" => Algorithm::Ed25519Sha256,
            "rsa-sha1" => return Err("rsa-sha1 is not accepted (RFC 8301)".into()),
            a => return Err(format!("unknown algorithm {a:?}")),
        };
        let b_text = strip_fws(need("b")?);
        let signature = decode64(&b_text).ok_or_else(|| "b= is not base64".to_string())?;
        let body_hash = decode64(need("bh")?).ok_or_else(|| "bh= is not base64".to_string())?;
        let (header_canon, body_canon) =
            canon::parse_pair(&strip_fws(get(tags, "c").unwrap_or("")))
                .ok_or_else(|| "unknown canonicalization".to_string())?;
        let domain = strip_fws(need("d")?).to_ascii_lowercase();
        if !domain_ok(&domain) {
            return Err(format!("bad d= domain {domain:?}"));
        }
        let selector = strip_fws(need("s")?);
        if !domain_ok(&selector) {
            return Err(format!("bad s= selector {selector:?}"));
        }
        let headers: Vec<String> = need("h")?
            .split(':')
            .map(|h| strip_fws(h).to_ascii_lowercase())
            .collect();
        if headers.iter().any(|h| h.is_empty()) {
            return Err("empty name in h=".into());
        }
        // §6.1.1: From must be signed.
        if !headers.iter().any(|h| h == "from") {
            return Err("h= does not include From".into());
        }
        if let Some(q) = get(tags, "q") {
            if !q
                .split(':')
                .any(|m| strip_fws(m).eq_ignore_ascii_case("dns/txt"))
            {
                return Err("no q= method this verifier knows".into());
            }
        }
        let identity = get(tags, "i").map(strip_fws);
        if let Some(i) = &identity {
            // §6.1.1: the domain of i= is d= or one of its subdomains.
            let idom = i
                .rsplit_once('@')
                .map_or(i.as_str(), |(_, d)| d)
                .to_ascii_lowercase();
            if idom != domain && !idom.ends_with(&format!(".{domain}")) {
                return Err("i= is not in the domain of d=".into());
            }
        }
        let length = number(tags, "l")?;
        let timestamp = number(tags, "t")?;
        let expiration = number(tags, "x")?;
        if let (Some(t), Some(x)) = (timestamp, expiration) {
            if x < t {
                return Err("x= is before t=".into());
            }
        }
        if let Some(x) = expiration {
            if x < now {
                return Err("signature expired".into());
            }
        }
        Ok(Signature {
            algorithm,
            signature,
            b_text,
            body_hash,
            header_canon,
            body_canon,
            domain,
            selector,
            headers,
            identity,
            length,
            timestamp,
            expiration,
        })
    }
}

/// A key record (RFC 6376 §3.6.1), as far as a verifier needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// `k=`: `rsa` (the default) or `ed25519`, lowercase.
    pub key_type: String,
    /// `p=`, decoded; empty for a revoked key.
    pub public_key: Vec<u8>,
    /// `t=s`: the `i=` domain must be `d=` itself.
    pub strict: bool,
}

impl KeyRecord {
    /// Reads the text of a TXT record (its strings joined); an error says why it is
    /// not a usable key record for mail.
    pub fn parse(text: &str) -> Result<KeyRecord, String> {
        let tags = parse(text)?;
        if let Some(v) = get(&tags, "v") {
            // §3.6.1: if present, v= is first and DKIM1.
            if v != "DKIM1" || tags.first().map(|(n, _)| *n) != Some("v") {
                return Err("the key record's v= is not DKIM1".into());
            }
        }
        if let Some(h) = get(&tags, "h") {
            if !h
                .split(':')
                .any(|a| strip_fws(a).eq_ignore_ascii_case("sha256"))
            {
                return Err("the key does not allow sha256".into());
            }
        }
        if let Some(s) = get(&tags, "s") {
            if !s
                .split(':')
                .any(|t| matches!(strip_fws(t).as_str(), "*" | "email"))
            {
                return Err("the key is not for email".into());
            }
        }
        let key_type = strip_fws(get(&tags, "k").unwrap_or("rsa")).to_ascii_lowercase();
        let p = get(&tags, "p").ok_or_else(|| "the key record has no p=".to_string())?;
        let public_key = decode64(p).ok_or_else(|| "p= is not base64".to_string())?;
        let strict = get(&tags, "t")
            .is_some_and(|t| t.split(':').any(|f| strip_fws(f).eq_ignore_ascii_case("s")));
        Ok(KeyRecord {
            key_type,
            public_key,
            strict,
        })
    }
}

/// The value of a DKIM-Signature field as the hash sees it: the value of its `b=` tag
/// removed, white space around it included, the rest as it was (§3.5, `b=`).
pub fn without_b_value(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let colon = field.iter().position(|&b| b == b':').map_or(0, |i| i + 1);
    out.extend_from_slice(&field[..colon]);
    let rest = &field[colon..];
    let mut first = true;
    for part in rest.split(|&b| b == b';') {
        if !first {
            out.push(b';');
        }
        first = false;
        match part.iter().position(|&b| b == b'=') {
            Some(eq)
                if part[..eq]
                    .iter()
                    .filter(|b| !b.is_ascii_whitespace())
                    .eq(b"b") =>
            {
                out.extend_from_slice(&part[..=eq]);
            }
            _ => out.extend_from_slice(part),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "v=1; a=rsa-sha256; c=relaxed/simple; d=Example.NET; s=brisbane;\r\n\t\
        t=1117574938; x=1118006938; h=from:to:subject:date;\r\n\t\
        bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n\t\
        b=dzdVyOfAKCdLXdJOc9G2q8LoXSlEniSbav+yuU4zGeeruD00lszZ\r\n\t VoG4ZHRNiYzR";

    #[test]
    fn tag_lists() {
        assert_eq!(
            parse(" v = 1 ;a=x y; ").unwrap(),
            vec![("v", "1"), ("a", "x y")]
        );
        assert!(parse("v=1; v=1").unwrap_err().contains("twice"));
        assert!(parse("v=1;; a=b").is_err());
        assert!(parse("v").is_err());
        assert!(parse("1v=2").is_err());
        assert!(parse("a-b=2").is_err());
        assert_eq!(parse("a_b=").unwrap(), vec![("a_b", "")]);
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn the_rfc_example_signature() {
        let s = Signature::parse(SIG, 1117574938).unwrap();
        assert_eq!(s.algorithm, Algorithm::RsaSha256);
        assert_eq!(
            (s.header_canon, s.body_canon),
            (Canon::Relaxed, Canon::Simple)
        );
        assert_eq!(s.domain, "example.net");
        assert_eq!(s.selector, "brisbane");
        assert_eq!(s.headers, ["from", "to", "subject", "date"]);
        assert_eq!(s.body_hash.len(), 32);
        assert!(s.b_text.starts_with("dzdVyOfAKCdLX") && s.b_text.ends_with("VoG4ZHRNiYzR"));
        assert_eq!(
            (s.timestamp, s.expiration),
            (Some(1117574938), Some(1118006938))
        );
        // Expired later.
        let e = Signature::parse(SIG, 1118006939).unwrap_err();
        assert_eq!(e.reason, "signature expired");
        assert_eq!(e.domain.as_deref(), Some("example.net"));
        assert_eq!(e.selector.as_deref(), Some("brisbane"));
    }

    #[test]
    fn signatures_that_cannot_be_used() {
        let base = "v=1; a=rsa-sha256; d=example.org; s=s; h=from; bh=AAAA; b=AAAA";
        assert!(Signature::parse(base, 0).is_ok());
        let cases = [
            ("v=2", "v= is not 1"),
            ("a=rsa-sha1", "rsa-sha1 is not accepted (RFC 8301)"),
            ("a=hmac", "unknown algorithm \"hmac\""),
            ("h=to:subject", "h= does not include From"),
            ("i=@other.org", "i= is not in the domain of d="),
            ("c=odd", "unknown canonicalization"),
            ("l=12x", "bad l= value \"12x\""),
            ("b=!!", "b= is not base64"),
            ("q=dns/other", "no q= method this verifier knows"),
            ("d=exa!mple", "bad d= domain \"exa!mple\""),
        ];
        for (tag, why) in cases {
            let name = tag.split('=').next().unwrap();
            let text: Vec<String> = base
                .split("; ")
                .filter(|t| !t.starts_with(&format!("{name}=")))
                .map(String::from)
                .chain([tag.to_string()])
                .collect();
            let e = Signature::parse(&text.join("; "), 0).unwrap_err();
            assert_eq!(e.reason, why, "{tag}");
        }
        let e = Signature::parse("v=1; a=rsa-sha256; b=AAAA", 0).unwrap_err();
        assert_eq!(e.reason, "no bh= tag");
        assert_eq!(e.b_text.as_deref(), Some("AAAA"));
        // The i= domain may be a subdomain of d=.
        let s = Signature::parse(&format!("{base}; i=user@mail.example.org"), 0).unwrap();
        assert_eq!(s.identity.as_deref(), Some("user@mail.example.org"));
        // Defaults: simple/simple, no l=.
        let s = Signature::parse(base, 0).unwrap();
        assert_eq!(
            (s.header_canon, s.body_canon, s.length),
            (Canon::Simple, Canon::Simple, None)
        );
    }

    #[test]
    fn key_records() {
        let k = KeyRecord::parse("v=DKIM1; k=ed25519; p=AAAA; t=y:s").unwrap();
        assert_eq!(
            (k.key_type.as_str(), k.public_key.len(), k.strict),
            ("ed25519", 3, true)
        );
        let k = KeyRecord::parse("p=AA\r\n\tAA").unwrap();
        assert_eq!((k.key_type.as_str(), k.strict), ("rsa", false));
        let revoked = KeyRecord::parse("v=DKIM1; p=").unwrap();
        assert!(revoked.public_key.is_empty());
        assert!(KeyRecord::parse("k=rsa; v=DKIM1; p=AAAA").is_err());
        assert!(KeyRecord::parse("v=DKIM2; p=AAAA").is_err());
        assert!(KeyRecord::parse("v=DKIM1; h=sha1; p=AAAA").is_err());
        assert!(KeyRecord::parse("v=DKIM1; s=tlsrpt; p=AAAA").is_err());
        assert!(KeyRecord::parse("v=DKIM1; k=rsa").is_err());
        assert!(KeyRecord::parse("v=DKIM1; h=sha1:sha256; s=*; p=AAAA").is_ok());
    }

    #[test]
    fn the_b_value_is_removed_and_nothing_else() {
        let f = b"DKIM-Signature: v=1; bh=abc=; b= ab\r\n cd ; d=x";
        assert_eq!(without_b_value(f), b"DKIM-Signature: v=1; bh=abc=; b=; d=x");
        let f = b"DKIM-Signature: a=1;\r\n\tb=xyz";
        assert_eq!(without_b_value(f), b"DKIM-Signature: a=1;\r\n\tb=");
        let f = b"DKIM-Signature: b =xyz;bh=1";
        assert_eq!(without_b_value(f), b"DKIM-Signature: b =;bh=1");
    }
}
