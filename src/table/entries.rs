//! The entries of a table held in memory, and the text format of `file:` tables.

use crate::mail::idna::other_form;
use std::collections::HashMap;
use std::net::IpAddr;

/// Keys (lower-cased) and values, in order; values are empty in a list. A key whose
/// domain (after its last `@`, or all of it) has U-labels or A-labels is also found
/// by the domain in the other form (`bücher.example`, `xn--bcher-kva.example`).
#[derive(Debug, Clone, Default)]
pub struct Entries {
    list: Vec<(String, String)>,
    /// Each key, and the other form of one with an internationalized domain.
    index: HashMap<String, usize>,
    /// The keys of `list` as written, for regular expressions.
    written: Vec<String>,
}

impl Entries {
    /// Entries from `(key, value)` pairs; a later duplicate key is ignored.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        let mut e = Entries::default();
        for (k, v) in pairs {
            let lower = k.to_ascii_lowercase();
            if !e.index.contains_key(&lower) {
                e.index.insert(lower.clone(), e.list.len());
                if let Some(other) = other_form(&k) {
                    e.index.entry(other).or_insert(e.list.len());
                }
                e.list.push((lower, v));
                e.written.push(k);
            }
        }
        e
    }

    /// Parses the file format; errors name the 1-based line.
    pub fn parse(text: &str) -> Result<Self, (usize, String)> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut cont: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("");
            // An aliases entry continues on lines that start with white space.
            if let (Some(idx), true) = (cont, raw.starts_with([' ', '\t'])) {
                let entry = &mut pairs[idx];
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
        Ok(Entries::new(pairs))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether `key` is there.
    pub fn contains(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).map(|i| self.list[i].1.as_str())
    }

    /// Where `key` is: as it is (case aside), else with its domain in the other form.
    fn position(&self, key: &str) -> Option<usize> {
        match self.index.get(&key.to_ascii_lowercase()) {
            Some(&i) => Some(i),
            None => other_form(key).and_then(|k| self.index.get(&k).copied()),
        }
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|(k, _)| k.as_str())
    }

    /// The keys as written (not lower-cased), in order: the patterns of `regex <t>`.
    pub fn keys_as_written(&self) -> Vec<String> {
        self.written.clone()
    }
}

/// Whether `s` is an IP address or `address/prefix`.
fn is_net(s: &str) -> bool {
    s.split('/')
        .next()
        .is_some_and(|a| a.parse::<IpAddr>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_formats() {
        let t = Entries::parse(
            "# c\nroot: admin, ops\n  more\nUser bob\nlisted\n\npostmaster:root\n::1\n2001:db8::/32\n",
        )
        .unwrap_or_default();
        assert_eq!(t.get("root"), Some("admin, ops, more"));
        assert_eq!(t.get("USER"), Some("bob"));
        assert_eq!(t.get("listed"), Some(""));
        assert_eq!(t.get("postmaster"), Some("root"));
        assert!(!t.contains("nobody"));
        assert!(t.contains("::1") && t.contains("2001:db8::/32"));
        assert_eq!(t.len(), 6);
        // Internationalized domains, either way.
        let t = Entries::parse("jörg@bücher.example a\n@xn--mnchen-3ya.example b\nä.example\n")
            .unwrap_or_default();
        assert_eq!(t.get("jörg@xn--bcher-kva.example"), Some("a"));
        assert_eq!(t.get("JÖRG@BÜCHER.example"), None);
        assert_eq!(t.get("jörg@BÜCHER.example"), Some("a"));
        assert_eq!(t.get("@münchen.example"), Some("b"));
        assert!(t.contains("xn--4ca.example") && t.contains("Ä.example"));
        assert_eq!(t.len(), 3);
        assert_eq!(
            Entries::parse("ok\n: x\n").err(),
            Some((2, "empty key".into()))
        );
    }
}
