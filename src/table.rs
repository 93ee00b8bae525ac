//! Tables: lists and mappings from files (`file:PATH`) or inline (`{ ... }`).
//!
//! File format, one entry per line, `#` comments: `key` (a list), `key value` or the
//! aliases form `key: value, value`. Keys are matched without regard to case.

use std::collections::HashMap;
use std::net::IpAddr;

/// A loaded table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// The table's name in smtpd.conf.
    pub name: String,
    /// Entries in file order: key (lower-cased) and value, empty for list entries.
    entries: Vec<(String, String)>,
    index: HashMap<String, usize>,
    /// The keys of `entries` as written, for regular expressions.
    written: Vec<String>,
}

impl Table {
    /// Builds a table from `(key, value)` pairs; a later duplicate key is ignored.
    pub fn new(name: &str, pairs: Vec<(String, String)>) -> Self {
        let mut t = Table {
            name: name.to_string(),
            ..Table::default()
        };
        for (k, v) in pairs {
            let lower = k.to_ascii_lowercase();
            if !t.index.contains_key(&lower) {
                t.index.insert(lower.clone(), t.entries.len());
                t.entries.push((lower, v));
                t.written.push(k);
            }
        }
        t
    }

    /// Parses the file format; errors name the 1-based line.
    pub fn parse(name: &str, text: &str) -> Result<Self, (usize, String)> {
        let mut pairs = Vec::new();
        let mut cont: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("");
            // An aliases entry continues on lines that start with white space.
            if let (Some(idx), true) = (cont, raw.starts_with([' ', '\t'])) {
                let entry: &mut (String, String) = &mut pairs[idx];
                let rest = line.trim();
                if !rest.is_empty() {
                    if !entry.1.is_empty() {
                        entry.1.push_str(", ");
                    }
                    entry.1.push_str(rest.trim_start_matches(',').trim());
                }
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            // `key value`, `key: value`, or `key:value` unless the key is an address or
            // network (IPv6 holds colons).
            let (key, value) = match line.find([' ', '\t']) {
                Some(at) => (line[..at].trim_end_matches(':'), line[at..].trim_start()),
                None if is_net(line) => (line, ""),
                None => match line.split_once(':') {
                    Some((k, v)) => (k, v.trim_start()),
                    None => (line, ""),
                },
            };
            if key.is_empty() {
                return Err((i + 1, "empty key".into()));
            }
            cont = Some(pairs.len());
            pairs.push((key.to_string(), value.trim().to_string()));
        }
        Ok(Table::new(name, pairs))
    }

    /// Whether `key` is in the table.
    pub fn contains(&self, key: &str) -> bool {
        self.index.contains_key(&key.to_ascii_lowercase())
    }

    /// The value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.index
            .get(&key.to_ascii_lowercase())
            .map(|&i| self.entries[i].1.as_str())
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// The keys as written (not lower-cased), in order: the patterns of `regex <t>`.
    pub fn keys_as_written(&self) -> impl Iterator<Item = &str> {
        self.written.iter().map(String::as_str)
    }

    /// Whether a domain is listed, also through `*.parent` entries.
    pub fn matches_domain(&self, domain: &str) -> bool {
        self.keys().any(|k| domain_matches(k, domain))
    }

    /// Whether an address is listed as `user@domain`, `@domain` or `user`.
    pub fn matches_address(&self, local: &str, domain: &str) -> bool {
        self.keys().any(|k| address_matches(k, local, domain))
    }

    /// Whether an IP is listed, as an address or a network `a.b.c.d/n`.
    pub fn matches_ip(&self, ip: IpAddr) -> bool {
        self.keys().any(|k| ip_matches(k, ip))
    }
}

/// Whether `s` is an IP address or `address/prefix`.
fn is_net(s: &str) -> bool {
    s.split('/')
        .next()
        .is_some_and(|a| a.parse::<IpAddr>().is_ok())
}

/// `pattern` is a domain or `*.domain`; case-insensitive.
pub fn domain_matches(pattern: &str, domain: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix("*.") {
        let d = domain.to_ascii_lowercase();
        return d.len() > suffix.len() + 1
            && d.ends_with(&suffix.to_ascii_lowercase())
            && d.as_bytes()[d.len() - suffix.len() - 1] == b'.';
    }
    pattern.eq_ignore_ascii_case(domain)
}

/// `pattern` is `user@domain`, `@domain` or `user` (any domain).
pub fn address_matches(pattern: &str, local: &str, domain: &str) -> bool {
    match pattern.rfind('@') {
        Some(0) => domain_matches(&pattern[1..], domain),
        Some(at) => {
            pattern[..at].eq_ignore_ascii_case(local) && domain_matches(&pattern[at + 1..], domain)
        }
        None => pattern.eq_ignore_ascii_case(local),
    }
}

/// `pattern` is an address or `addr/prefix`.
pub fn ip_matches(pattern: &str, ip: IpAddr) -> bool {
    let (addr, bits) = match pattern.split_once('/') {
        Some((a, b)) => match b.parse::<u32>() {
            Ok(b) => (a, Some(b)),
            Err(_) => return false,
        },
        None => (pattern, None),
    };
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    let ip = match (net, ip) {
        (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        _ => ip,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let b = bits.unwrap_or(32).min(32);
            let mask = if b == 0 { 0 } else { u32::MAX << (32 - b) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let b = bits.unwrap_or(128).min(128);
            let mask = if b == 0 { 0 } else { u128::MAX << (128 - b) };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_formats() {
        let t = Table::parse(
            "t",
            "# c\nroot: admin, ops\n  more\nUser bob\nlisted\n\npostmaster:root\n::1\n2001:db8::/32\n",
        )
        .unwrap_or_default();
        assert_eq!(t.get("root"), Some("admin, ops, more"));
        assert_eq!(t.get("USER"), Some("bob"));
        assert_eq!(t.get("listed"), Some(""));
        assert_eq!(t.get("postmaster"), Some("root"));
        assert!(!t.contains("nobody"));
        assert!(t.contains("::1") && t.contains("2001:db8::/32"));
    }

    #[test]
    fn matchers() {
        assert!(domain_matches("*.example.org", "mx.Example.org"));
        assert!(!domain_matches("*.example.org", "example.org"));
        assert!(!domain_matches("*.example.org", "badexample.org"));
        assert!(address_matches("@example.org", "x", "example.org"));
        assert!(address_matches("Bob@example.org", "bob", "example.org"));
        assert!(address_matches("bob", "bob", "any.where"));
        assert!(!address_matches("bob@a.b", "bob", "c.d"));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert!(ip_matches("127.0.0.0/8", ip("127.1.2.3")));
        assert!(!ip_matches("10.0.0.0/8", ip("11.0.0.1")));
        assert!(ip_matches("::1", ip("::1")));
        assert!(ip_matches("192.0.2.0/24", ip("::ffff:192.0.2.9")));
        assert!(ip_matches("0.0.0.0/0", ip("203.0.113.1")));
    }
}
