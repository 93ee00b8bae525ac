//! What the resolver reads from /etc/resolv.conf and /etc/hosts (their texts; the loop
//! reads the files).
//!
//! resolv.conf as glibc reads it (resolv.conf(5)): up to three `nameserver` lines (port
//! 53; 127.0.0.1 when there is none), `search` and `domain` (the last one wins; six
//! domains at most), and `options` `timeout:n` (5 s, at most 30), `attempts:n` (2, at
//! most 5), `ndots:n` (1, at most 15), `edns0`, `trust-ad`, `rotate`, `use-vc`; other
//! words are ignored. /etc/hosts gives the addresses of host names (not PTR).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

/// Nameservers taken at most (glibc's MAXNS).
pub const MAX_SERVERS: usize = 3;
/// Search domains taken at most.
pub const MAX_SEARCH: usize = 6;

/// The resolver's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvConf {
    /// Nameservers, in order.
    pub servers: Vec<SocketAddr>,
    /// Search domains (for host names of the configuration, never for mail domains).
    pub search: Vec<String>,
    /// How long one try waits for its answer.
    pub timeout: Duration,
    /// Rounds over the nameservers.
    pub attempts: u32,
    /// A name with at least this many dots is tried as it is before the search list.
    pub ndots: u32,
    /// `options edns0` was given (queries carry EDNS0 anyway, see smtpd(8)).
    pub edns0: bool,
    /// `options trust-ad`: the AD bit of answers counts even from remote nameservers.
    pub trust_ad: bool,
    /// `options rotate`: each question starts with the next nameserver.
    pub rotate: bool,
    /// `options use-vc`: questions go over TCP.
    pub use_vc: bool,
}

impl Default for ResolvConf {
    fn default() -> Self {
        ResolvConf {
            servers: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 53)],
            search: Vec::new(),
            timeout: Duration::from_secs(5),
            attempts: 2,
            ndots: 1,
            edns0: false,
            trust_ad: false,
            rotate: false,
            use_vc: false,
        }
    }
}

/// `n` of `key:n`, at least `min`, at most `max`.
fn option_value(word: &str, key: &str, min: u32, max: u32) -> Option<u32> {
    let v = word.strip_prefix(key)?.strip_prefix(':')?;
    Some(v.parse::<u32>().ok()?.clamp(min, max))
}

impl ResolvConf {
    /// Reads a resolv.conf text; what it does not understand is ignored, as glibc does.
    pub fn parse(text: &str) -> ResolvConf {
        let mut c = ResolvConf {
            servers: Vec::new(),
            ..ResolvConf::default()
        };
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    // A scope (`fe80::1%eth0`) is not kept: link-local servers are not
                    // supported.
                    let ip = words.next().and_then(|a| a.parse::<IpAddr>().ok());
                    if let (Some(ip), true) = (ip, c.servers.len() < MAX_SERVERS) {
                        c.servers.push(SocketAddr::new(ip, 53));
                    }
                }
                Some("domain") => {
                    c.search = words.next().and_then(domain).into_iter().collect();
                }
                Some("search") => {
                    c.search = words.filter_map(domain).take(MAX_SEARCH).collect();
                }
                Some("options") => {
                    for w in words {
                        if let Some(n) = option_value(w, "timeout", 1, 30) {
                            c.timeout = Duration::from_secs(u64::from(n));
                        } else if let Some(n) = option_value(w, "attempts", 1, 5) {
                            c.attempts = n;
                        } else if let Some(n) = option_value(w, "ndots", 0, 15) {
                            c.ndots = n;
                        } else {
                            match w {
                                "edns0" => c.edns0 = true,
                                "trust-ad" => c.trust_ad = true,
                                "rotate" => c.rotate = true,
                                "use-vc" => c.use_vc = true,
                                _ => {}
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if c.servers.is_empty() {
            c.servers = ResolvConf::default().servers;
        }
        c
    }

    /// Whether the AD bit of answers counts: every nameserver is on loopback, or
    /// `options trust-ad` was given (RFC 4035 §4.9.3; OpenBSD's and glibc's rule).
    pub fn trusted(&self) -> bool {
        self.trust_ad || self.servers.iter().all(|s| s.ip().is_loopback())
    }

    /// The names to try, in order, for a host name of the configuration: with the
    /// search domains (after the name as it is when it has `ndots` dots or more, else
    /// before it); a final dot means the name alone.
    pub fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(abs) = name.strip_suffix('.') {
            return vec![abs.to_string()];
        }
        let searched = self.search.iter().map(|d| format!("{name}.{d}"));
        let dots = name.bytes().filter(|&b| b == b'.').count();
        if dots >= self.ndots as usize {
            std::iter::once(name.to_string()).chain(searched).collect()
        } else {
            searched.chain(std::iter::once(name.to_string())).collect()
        }
    }
}

/// A search domain as written, without its final dot; none for the root.
fn domain(w: &str) -> Option<String> {
    let d = w.trim_end_matches('.');
    (!d.is_empty()).then(|| d.to_ascii_lowercase())
}

/// The host names of /etc/hosts and their addresses, in the file's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hosts {
    names: HashMap<String, Vec<IpAddr>>,
}

impl Hosts {
    /// Reads an /etc/hosts text: `ADDRESS NAME [ALIAS...]` lines, `#` comments.
    pub fn parse(text: &str) -> Hosts {
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
                continue;
            };
            for name in words {
                let list = names.entry(super::normalize(name)).or_default();
                if !list.contains(&ip) {
                    list.push(ip);
                }
            }
        }
        Hosts { names }
    }

    /// The addresses of `name` (case-insensitive, final dot or not), IPv6 first.
    pub fn lookup(&self, name: &str) -> Vec<IpAddr> {
        let mut v = self
            .names
            .get(&super::normalize(name))
            .cloned()
            .unwrap_or_default();
        v.sort_by_key(|ip| ip.is_ipv4());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_as_glibc_reads_it() {
        let c = ResolvConf::parse(
            "# comment\n; also\nnameserver 127.0.0.53\nnameserver ::1\n\
             nameserver 192.0.2.1\nnameserver 192.0.2.2\nnameserver bogus\n\
             domain one.example\nsearch Two.example three.example. .\n\
             options timeout:0 attempts:9 ndots:20 edns0 trust-ad rotate use-vc single-request\n\
             options timeout:x\n",
        );
        let ips: Vec<String> = c.servers.iter().map(|s| s.to_string()).collect();
        assert_eq!(ips, ["127.0.0.53:53", "[::1]:53", "192.0.2.1:53"]);
        assert_eq!(c.search, ["two.example", "three.example"]);
        assert_eq!(c.timeout, Duration::from_secs(1));
        assert_eq!((c.attempts, c.ndots), (5, 15));
        assert!(c.edns0 && c.trust_ad && c.rotate && c.use_vc);
        let c = ResolvConf::parse("search a.example\ndomain b.example\noptions timeout:99\n");
        assert_eq!(c.search, ["b.example"], "the last one wins");
        assert_eq!(c.timeout, Duration::from_secs(30));
        let d = ResolvConf::parse("");
        assert_eq!(d, ResolvConf::default());
        assert_eq!(d.servers[0].to_string(), "127.0.0.1:53");
        assert_eq!((d.attempts, d.ndots, d.timeout.as_secs()), (2, 1, 5));
    }

    #[test]
    fn trust_follows_the_servers() {
        assert!(ResolvConf::parse("nameserver 127.0.0.1\nnameserver ::1\n").trusted());
        assert!(!ResolvConf::parse("nameserver 127.0.0.1\nnameserver 192.0.2.1\n").trusted());
        assert!(ResolvConf::parse("nameserver 192.0.2.1\noptions trust-ad\n").trusted());
    }

    #[test]
    fn search_candidates() {
        let c = ResolvConf::parse("search a.example b.example\noptions ndots:1\n");
        assert_eq!(
            c.candidates("mailhub"),
            ["mailhub.a.example", "mailhub.b.example", "mailhub"]
        );
        assert_eq!(
            c.candidates("mx.other"),
            ["mx.other", "mx.other.a.example", "mx.other.b.example"]
        );
        assert_eq!(c.candidates("mx.other."), ["mx.other"]);
        assert_eq!(ResolvConf::default().candidates("mailhub"), ["mailhub"]);
    }

    #[test]
    fn hosts_file() {
        let h = Hosts::parse(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost # v6\n\
             192.0.2.9 Relay.Example relay\n# 192.0.2.8 relay\nbad line\n",
        );
        let ips = |n| -> Vec<String> { h.lookup(n).iter().map(|i| i.to_string()).collect() };
        assert_eq!(ips("localhost"), ["::1", "127.0.0.1"]);
        assert_eq!(ips("relay.example."), ["192.0.2.9"]);
        assert_eq!(ips("RELAY"), ["192.0.2.9"]);
        assert!(ips("nothere").is_empty());
    }
}
