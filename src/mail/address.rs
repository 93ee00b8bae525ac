//! Envelope addresses: the mailbox type and the syntax of local parts, domains, paths
//! and xtext (RFC 5321 §4.1.2, RFC 3461 §4), with the UTF-8 forms of RFC 6531 §3.3
//! (local parts of UTF-8 characters, U-labels in domains). Everything that checks an
//! address uses these, from the SMTP parser to the configuration.

/// An envelope address: `local@domain`, or empty for the null reverse-path `<>`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mailbox {
    /// The local part as sent (quoted strings keep their quotes).
    pub local: String,
    /// The domain, lower-cased (U-labels too); empty only for the null path.
    pub domain: String,
}

impl Mailbox {
    /// Whether this is the null reverse-path `<>`.
    pub fn is_null(&self) -> bool {
        self.local.is_empty() && self.domain.is_empty()
    }

    /// Whether the address is ASCII (else it needs SMTPUTF8, RFC 6531).
    pub fn is_ascii(&self) -> bool {
        self.local.is_ascii() && self.domain.is_ascii()
    }
}

impl std::fmt::Display for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_null() {
            Ok(())
        } else if self.domain.is_empty() {
            // <postmaster> without a domain (RFC 5321 §4.5.1).
            write!(f, "{}", self.local)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// RFC 5321 §4.5.3.1.1: octets in a local part.
pub const MAX_LOCAL: usize = 64;
/// RFC 5321 §4.5.3.1.2: octets in a domain.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: octets in a path, brackets included.
pub const MAX_PATH: usize = 256;

/// A HELO argument: a domain or an address literal, printable, no spaces.
pub fn valid_helo(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_DOMAIN
        && s.bytes().all(|b| b.is_ascii_graphic())
        && !s.contains(['<', '>', '(', ')', '\\', '"'])
}

/// Parses an address given without brackets (a filter's rewrite); `null_ok` allows
/// the empty address.
pub fn parse_address(addr: &str, null_ok: bool) -> Option<Mailbox> {
    let a = addr.trim().trim_start_matches('<').trim_end_matches('>');
    if a.contains(['<', '>', ' ']) {
        return None;
    }
    parse_path(&format!("<{a}>"), null_ok)
}

/// Parses `<...>`; `null_ok` allows `<>`. Source routes (`<@a,@b:x@y>`) are dropped
/// as RFC 5321 §C asks. `<postmaster>` alone is accepted for RCPT (§4.5.1). The local
/// part and the domain may be UTF-8 (RFC 6531 §3.3): whether that is allowed in a
/// transaction is the caller's business ([`Mailbox::is_ascii`]).
pub fn parse_path(path: &str, null_ok: bool) -> Option<Mailbox> {
    if path.len() > MAX_PATH {
        return None;
    }
    let inner = &path[1..path.len() - 1];
    if inner.is_empty() {
        return null_ok.then(Mailbox::default);
    }
    let inner = if inner.starts_with('@') {
        let colon = inner.find(':')?;
        let route = &inner[..colon];
        if !route
            .split(',')
            .all(|h| h.len() > 1 && h.starts_with('@') && valid_domain(&h[1..]))
        {
            return None;
        }
        &inner[colon + 1..]
    } else {
        inner
    };
    if !null_ok && inner.eq_ignore_ascii_case("postmaster") {
        return Some(Mailbox {
            local: "postmaster".into(),
            domain: String::new(),
        });
    }
    let at = inner.rfind('@')?;
    let (local, domain) = (&inner[..at], super::idna::lowercase(&inner[at + 1..]));
    if !valid_utf8_local(local) || !valid_utf8_domain(&domain) {
        return None;
    }
    Some(Mailbox {
        local: local.to_string(),
        domain,
    })
}

/// RFC 5321 §4.1.2 `atext` plus `.`.
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

/// A character of UTF-8 that RFC 6531 §3.3 adds to `atext` and `qtextSMTP`: any above
/// ASCII but the C1 controls, which no address needs.
fn utf8_char(c: char) -> bool {
    !c.is_ascii() && !c.is_control()
}

/// Dot-string or quoted-string of ASCII, at most 64 octets.
pub fn valid_local(s: &str) -> bool {
    s.is_ascii() && valid_utf8_local(s)
}

/// Dot-string or quoted-string in which UTF-8 characters may also stand (RFC 6531
/// §3.3), at most 64 octets.
pub fn valid_utf8_local(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_LOCAL {
        return false;
    }
    if !s.is_ascii() {
        return valid_local_chars(s);
    }
    let b = s.as_bytes();
    if b[0] == b'"' {
        if b.len() < 2 || b[b.len() - 1] != b'"' {
            return false;
        }
        let mut i = 1;
        while i < b.len() - 1 {
            match b[i] {
                b'\\' => {
                    if i + 1 >= b.len() - 1 || !(32..=126).contains(&b[i + 1]) {
                        return false;
                    }
                    i += 2;
                    continue;
                }
                b'"' => return false,
                32..=126 => {}
                _ => return false,
            }
            i += 1;
        }
        return true;
    }
    s.split('.')
        .all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// A local part with UTF-8 characters: each stands where ASCII `atext` or `qtext`
/// could, and the ASCII rest follows RFC 5321.
fn valid_local_chars(s: &str) -> bool {
    // Every UTF-8 character is replaced by an ASCII one of the same role: `a` is atext
    // and qtext alike.
    let ascii: String = s
        .chars()
        .map(|c| match c {
            c if c.is_ascii() => Some(c),
            c if utf8_char(c) => Some('a'),
            _ => None,
        })
        .collect::<Option<String>>()
        .unwrap_or_default();
    // The quoted-pair of RFC 6531 stays ASCII: a backslash before a UTF-8 character
    // is refused.
    !ascii.is_empty() && !backslash_before_utf8(s) && valid_local(&ascii)
}

/// Whether a backslash in `s` quotes a UTF-8 character.
fn backslash_before_utf8(s: &str) -> bool {
    let mut escaped = false;
    for c in s.chars() {
        if escaped && !c.is_ascii() {
            return true;
        }
        escaped = !escaped && c == '\\';
    }
    false
}

/// A domain name whose labels may be U-labels (RFC 6531 §3.3), or an address literal;
/// at most 255 octets, in either form.
pub fn valid_utf8_domain(s: &str) -> bool {
    if s.is_ascii() {
        return valid_domain(s);
    }
    if s.len() > MAX_DOMAIN || super::idna::to_ascii(s).is_none() {
        return false;
    }
    s.split('.').all(|label| match label.is_ascii() {
        true => valid_domain(label),
        false => super::idna::valid_u_label(label),
    })
}

/// A domain name (letters, digits, hyphens, dots) or an address literal, at most 255.
pub fn valid_domain(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_DOMAIN {
        return false;
    }
    if let Some(lit) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        // RFC 5321 §4.1.3: the tag is case-insensitive.
        if lit.len() > 5 && lit.as_bytes()[..5].eq_ignore_ascii_case(b"IPv6:") {
            return lit[5..].parse::<std::net::Ipv6Addr>().is_ok();
        }
        return lit.parse::<std::net::Ipv4Addr>().is_ok();
    }
    s.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// `xtext` (RFC 3461 §4): printable ASCII except `+` and `=`, or `+XX` hex escapes.
pub fn valid_xtext(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                let hex = |j: usize| {
                    b.get(j)
                        .is_some_and(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c))
                };
                if !(hex(i + 1) && hex(i + 2)) {
                    return false;
                }
                i += 3;
                continue;
            }
            b'=' => return false,
            33..=126 => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_addresses() {
        let m = parse_path("<jörg@Bücher.example>", false);
        assert_eq!(
            m.as_ref().map(|m| (m.local.as_str(), m.domain.as_str())),
            Some(("jörg", "bücher.example"))
        );
        assert!(m.is_some_and(|m| !m.is_ascii()));
        for ok in [
            "<θσερ@παράδειγμα.δοκιμή>",
            "<用户@例子.广告>",
            "<\"ü b\"@example.org>",
            "<a.ü.b@xn--bcher-kva.example>",
            "<user@bücher.example.org>",
        ] {
            assert!(parse_path(ok, false).is_some(), "{ok}");
        }
        for bad in [
            "<a\u{85}b@example.org>",
            "<\"\\ü\"@example.org>",
            "<ü..b@example.org>",
            "<a@bü cher.example>",
            "<a@b\u{3002}example>",
            "<a@bü_cher.example>",
            "<a@[1.2.3.ü]>",
        ] {
            assert!(parse_path(bad, false).is_none(), "{bad}");
        }
        // 64 octets at most, counted in UTF-8.
        assert!(valid_utf8_local(&"ü".repeat(32)));
        assert!(!valid_utf8_local(&"ü".repeat(33)));
        // The ASCII forms stay ASCII.
        assert!(!valid_local("jörg") && !valid_domain("bücher.example"));
        assert!(valid_utf8_domain("bücher.example") && valid_utf8_domain("[192.0.2.1]"));
    }
}
