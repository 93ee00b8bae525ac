//! The command line: what is signed, with which keys, what is verified, and the
//! authserv-id of the results (see filter-dkim(8)).

use crate::canon::{self, Canon};
use crate::keys::SigningKey;
use crate::sign::{KeyEntry, SignConfig, DEFAULT_HEADERS, DEFAULT_OVERSIGN};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The usage line.
pub const USAGE: &str = "usage: filter-dkim [-av] [-c canon] [-h headers] [-i network] \
[-K keytable] [-k domain:selector:keyfile] [-m sign|verify|both] [-n max] [-o headers] \
[-r authserv-id] [-x seconds]
       filter-dkim -p [-K keytable] [-k domain:selector:keyfile]";

/// Signatures verified per message at most, by default.
pub const MAX_SIGNATURES: usize = 5;

/// A network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    bits: u8,
}

impl Network {
    /// Reads `addr/bits` or a lone address.
    pub fn parse(s: &str) -> Result<Network, String> {
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| format!("bad network {s:?}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            None => max,
            Some(b) => b
                .parse::<u8>()
                .ok()
                .filter(|&b| b <= max)
                .ok_or_else(|| format!("bad network {s:?}"))?,
        };
        Ok(Network { addr, bits })
    }

    /// Whether `ip` is in the network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (a, b, width) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                (u128::from(n.to_bits()), u128::from(i.to_bits()), 32)
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => (n.to_bits(), i.to_bits(), 128),
            _ => return false,
        };
        let shift = width - u32::from(self.bits);
        shift >= 128 || (a >> shift) == (b >> shift)
    }
}

/// What the filter does with the messages of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sign the messages of internal sessions; leave the others alone.
    Sign,
    /// Verify every message; sign none.
    Verify,
    /// Sign the messages of internal sessions, verify the others.
    Both,
}

/// The filter's configuration.
#[derive(Debug)]
pub struct Config {
    /// What it does.
    pub mode: Mode,
    /// Every session is internal (`-a`).
    pub sign_all: bool,
    /// Networks whose clients are internal (`-i`).
    pub internal: Vec<Network>,
    /// Keys by signing domain.
    pub keys: HashMap<String, Vec<KeyEntry>>,
    /// How to sign.
    pub sign: SignConfig,
    /// The authserv-id of the results.
    pub authserv_id: String,
    /// Signatures verified per message at most.
    pub max_signatures: usize,
    /// Log a line for each message.
    pub verbose: bool,
    /// Print the keys' DNS records and exit (`-p`).
    pub print_records: bool,
}

impl Config {
    /// Whether messages of internal sessions are signed.
    pub fn signs(&self) -> bool {
        self.mode != Mode::Verify
    }

    /// Whether messages of other sessions are verified.
    pub fn verifies(&self) -> bool {
        self.mode != Mode::Sign
    }

    /// The keys that sign a message from `domain`: those of the domain, or else of its
    /// nearest parent domain in the table.
    pub fn keys_for(&self, domain: &str) -> &[KeyEntry] {
        let mut d = domain;
        loop {
            if let Some(k) = self.keys.get(d) {
                return k;
            }
            match d.split_once('.') {
                Some((_, parent)) if parent.contains('.') => d = parent,
                _ => return &[],
            }
        }
    }
}

fn names(list: &str) -> Vec<String> {
    list.split(':')
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Adds one key to the table; keys already read are shared (`loaded`).
fn add_key(
    keys: &mut HashMap<String, Vec<KeyEntry>>,
    loaded: &mut HashMap<String, Arc<SigningKey>>,
    domain: &str,
    selector: &str,
    path: &str,
) -> Result<(), String> {
    let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    let good = |s: &str| {
        !s.is_empty()
            && s.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    if !good(&domain) || !good(selector) {
        return Err(format!("bad domain or selector: {domain:?} {selector:?}"));
    }
    let key = match loaded.get(path) {
        Some(k) => k.clone(),
        None => {
            let k = Arc::new(SigningKey::load(path)?);
            loaded.insert(path.to_string(), k.clone());
            k
        }
    };
    keys.entry(domain.clone()).or_default().push(KeyEntry {
        domain,
        selector: selector.to_string(),
        key,
    });
    Ok(())
}

/// Reads a key table: lines of `domain selector keyfile`, `#` comments.
fn read_key_table(
    path: &str,
    keys: &mut HashMap<String, Vec<KeyEntry>>,
    loaded: &mut HashMap<String, Arc<SigningKey>>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        let [domain, selector, file] = w[..] else {
            return Err(format!("{path}:{}: want: domain selector keyfile", n + 1));
        };
        add_key(keys, loaded, domain, selector, file)
            .map_err(|e| format!("{path}:{}: {e}", n + 1))?;
    }
    Ok(())
}

/// Reads the command line (without the program's name).
pub fn parse_args(args: &[String]) -> Result<Config, String> {
    let mut o = getopts::Options::new();
    o.optflag("a", "", "sign the messages of every session");
    o.optopt("c", "", "canonicalization", "HEADER/BODY");
    o.optopt("h", "", "header fields signed", "NAME:NAME...");
    o.optmulti("i", "", "internal network", "NETWORK");
    o.optmulti("K", "", "key table", "FILE");
    o.optmulti("k", "", "signing key", "DOMAIN:SELECTOR:FILE");
    o.optopt("m", "", "sign, verify or both", "MODE");
    o.optopt("n", "", "signatures verified per message at most", "MAX");
    o.optopt("o", "", "header fields oversigned", "NAME:NAME...");
    o.optflag("p", "", "print the DNS records of the keys");
    o.optopt("r", "", "authserv-id of the results", "ID");
    o.optflag("v", "", "log every message");
    o.optopt("x", "", "signature lifetime", "SECONDS");
    let m = o.parse(args).map_err(|e| e.to_string())?;
    if !m.free.is_empty() {
        return Err(format!("unexpected argument {:?}", m.free[0]));
    }
    let mode = match m.opt_str("m").as_deref() {
        None | Some("both") => Mode::Both,
        Some("sign") => Mode::Sign,
        Some("verify") => Mode::Verify,
        Some(x) => return Err(format!("bad mode {x:?}")),
    };
    let (header_canon, body_canon) = match m.opt_str("c") {
        None => (Canon::Relaxed, Canon::Relaxed),
        Some(c) => canon::parse_pair(&c).ok_or_else(|| format!("bad canonicalization {c:?}"))?,
    };
    let headers = match m.opt_str("h") {
        None => DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect(),
        Some(h) => names(&h),
    };
    if !headers.iter().any(|h| h == "from") {
        return Err("-h must include from (RFC 6376 §5.4)".into());
    }
    let oversign = match m.opt_str("o") {
        None => DEFAULT_OVERSIGN.iter().map(|s| s.to_string()).collect(),
        Some(o) => names(&o),
    };
    let expire = match m.opt_str("x") {
        None => None,
        Some(x) => Some(
            x.parse::<u64>()
                .ok()
                .filter(|&x| x > 0 && x < 10 * 365 * 86400)
                .ok_or_else(|| format!("bad lifetime {x:?}"))?,
        ),
    };
    let max_signatures = match m.opt_str("n") {
        None => MAX_SIGNATURES,
        Some(n) => n
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=50).contains(&n))
            .ok_or_else(|| format!("bad maximum {n:?}"))?,
    };
    let internal = m
        .opt_strs("i")
        .iter()
        .map(|n| Network::parse(n))
        .collect::<Result<Vec<_>, _>>()?;
    let mut keys = HashMap::new();
    let mut loaded = HashMap::new();
    for t in m.opt_strs("K") {
        read_key_table(&t, &mut keys, &mut loaded)?;
    }
    for k in m.opt_strs("k") {
        let mut parts = k.splitn(3, ':');
        let (Some(d), Some(s), Some(f)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!("-k {k}: want domain:selector:keyfile"));
        };
        add_key(&mut keys, &mut loaded, d, s, f)?;
    }
    let print_records = m.opt_present("p");
    if mode != Mode::Verify && keys.is_empty() {
        return Err("no signing key (-k or -K), and -m verify not given".into());
    }
    let authserv_id = m.opt_str("r").unwrap_or_else(host_name);
    if authserv_id.is_empty()
        || authserv_id.contains(|c: char| c.is_whitespace() || c == ';' || c.is_control())
    {
        return Err(format!("bad authserv-id {authserv_id:?}"));
    }
    Ok(Config {
        mode,
        sign_all: m.opt_present("a"),
        internal,
        keys,
        sign: SignConfig {
            header_canon,
            body_canon,
            headers,
            oversign,
            expire,
        },
        authserv_id,
        max_signatures,
        verbose: m.opt_present("v"),
        print_records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn key_file() -> String {
        format!("{}/tests/keys/ed25519.pem", env!("CARGO_MANIFEST_DIR"))
    }

    #[test]
    fn networks() {
        let n = Network::parse("192.0.2.0/24").unwrap();
        assert!(n.contains("192.0.2.77".parse().unwrap()));
        assert!(!n.contains("192.0.3.1".parse().unwrap()));
        assert!(n.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!n.contains("2001:db8::1".parse().unwrap()));
        let all = Network::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        let one = Network::parse("2001:db8::1").unwrap();
        assert!(one.contains("2001:db8::1".parse().unwrap()));
        assert!(!one.contains("2001:db8::2".parse().unwrap()));
        assert!(Network::parse("192.0.2.0/33").is_err());
        assert!(Network::parse("host/8").is_err());
    }

    #[test]
    fn command_lines() {
        let k = key_file();
        let c = parse_args(&args(&format!("-k Example.ORG:ed:{k} -r mx.example.org"))).unwrap();
        assert_eq!(c.mode, Mode::Both);
        assert_eq!(c.authserv_id, "mx.example.org");
        assert_eq!(
            (c.sign.header_canon, c.sign.body_canon),
            (Canon::Relaxed, Canon::Relaxed)
        );
        assert_eq!(c.keys_for("example.org").len(), 1);
        assert_eq!(c.keys_for("mail.example.org")[0].domain, "example.org");
        assert!(c.keys_for("org").is_empty());
        assert!(c.keys_for("example.net").is_empty());
        let c = parse_args(&args(&format!(
            "-m sign -c simple -h From:Subject -o from:to -x 86400 -i 10.0.0.0/8 -k a.example:s1:{k} -k a.example:s2:{k}"
        )))
        .unwrap();
        assert_eq!(
            (c.sign.header_canon, c.sign.body_canon),
            (Canon::Simple, Canon::Simple)
        );
        assert_eq!(c.sign.headers, ["from", "subject"]);
        assert_eq!(c.sign.oversign, ["from", "to"]);
        assert_eq!(c.sign.expire, Some(86400));
        assert_eq!(c.keys_for("a.example").len(), 2);
        assert!(Arc::ptr_eq(
            &c.keys_for("a.example")[0].key,
            &c.keys_for("a.example")[1].key
        ));
        assert!(parse_args(&args("-m verify")).is_ok());
        for bad in [
            "",
            "-m verify -m x",
            "-m verify -c odd/simple",
            "-m verify -h to:subject",
            "-m verify -x 0",
            "-m verify -n 0",
            "-m verify -i 10.0.0.0/40",
            "-m verify -r a;b",
            "-k example.org:sel",
            "-k example.org:sel:/nonexistent",
            "-m verify extra",
        ] {
            assert!(parse_args(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_tables() {
        let dir = std::env::temp_dir().join(format!("filter-dkim-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = dir.join("keytable");
        std::fs::write(&t, format!("# comment\nexample.org  ed {}\n\n", key_file())).unwrap();
        let c = parse_args(&args(&format!("-K {}", t.display()))).unwrap();
        assert_eq!(c.keys_for("example.org")[0].selector, "ed");
        std::fs::write(&t, "example.org ed\n").unwrap();
        let e = parse_args(&args(&format!("-K {}", t.display()))).unwrap_err();
        assert!(e.ends_with(":1: want: domain selector keyfile"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
