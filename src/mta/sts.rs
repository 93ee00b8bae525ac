//! MTA-STS (RFC 8461): whether a recipient domain asks that mail to it go only to
//! the MX hosts it lists, over TLS with a certificate that passes the PKIX check.
//!
//! The pieces, all pure but the cache's two file functions:
//!
//! - [`txt_id`]: the `_mta-sts.DOMAIN` TXT RRset (`v=STSv1; id=...;`, §3.1), whose id
//!   tells when the policy changed. Anything but exactly one STSv1 record is no
//!   record.
//! - [`Policy::parse`]: the policy file fetched from
//!   `https://mta-sts.DOMAIN/.well-known/mta-sts.txt` (§3.2, `https.rs`), read
//!   strictly: a policy that does not follow the grammar is no policy.
//! - [`mx_matches`]: an MX host name against an `mx` pattern (§4.1).
//! - [`CacheEntry`], [`read_cache`], [`write_cache`]: the policy as last fetched, a
//!   small text file per domain under the spool (`QUEUE/sts/DOMAIN`); [`refresh`]
//!   says whether the cached one serves or a fetch is due (§5.1).
//! - [`decide`]: given the policy and the MX hosts, which hosts may be used and what
//!   TLS must be towards them (§5): `enforce` requires it, `testing` only reports,
//!   `none` asks nothing.
//!
//! MTA-STS never overrides DANE: when a host has usable TLSA records, DANE decides.

use std::io;
use std::path::{Path, PathBuf};

/// The longest `max_age` a policy may give: about a year (§3.2).
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What a policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to listed MX hosts, over TLS that passes the PKIX check.
    Enforce,
    /// Deliver as usual; report what would have failed.
    Testing,
    /// No policy (a domain retiring its policy).
    None,
}

impl Mode {
    /// The policy's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// An MTA-STS policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `mode`.
    pub mode: Mode,
    /// The `mx` patterns, lowercase, without a final dot: a host name, or `*.`
    /// and a domain.
    pub mx: Vec<String>,
    /// `max_age`: how long the policy may be cached, in seconds.
    pub max_age: u64,
}

/// Whether `s` is a domain as RFC 5321 writes one: labels of letters, digits and
/// hyphens, neither starting nor ending with a hyphen, joined by dots.
pub fn valid_domain(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// The id of a `_mta-sts` TXT record: `v=STSv1` first, then `;`-separated fields,
/// one of them `id=` with 1 to 32 letters and digits (§3.1).
pub fn parse_txt(record: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(record).map_err(|_| "not ASCII".to_string())?;
    let mut fields = text.split(';').map(|f| f.trim_matches([' ', '\t']));
    if fields.next() != Some("v=STSv1") {
        return Err("does not start with v=STSv1".into());
    }
    let mut id = None;
    let mut count = 0;
    let mut fields = fields.peekable();
    while let Some(field) = fields.next() {
        // One final `;` is allowed.
        if field.is_empty() && fields.peek().is_none() && count > 0 {
            break;
        }
        count += 1;
        let (name, value) = field
            .split_once('=')
            .ok_or_else(|| format!("field without '=': {field:?}"))?;
        let name_ok = name.len() <= 32
            && name.bytes().enumerate().all(|(i, b)| {
                b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'_' | b'-' | b'.'))
            });
        let value_ok = !value.is_empty()
            && value
                .bytes()
                .all(|b| matches!(b, 0x21..=0x3a | 0x3c | 0x3e..=0x7e));
        if name.is_empty() || !name_ok || !value_ok {
            return Err(format!("bad field {field:?}"));
        }
        if name == "id" {
            let good = value.len() <= 32 && value.bytes().all(|b| b.is_ascii_alphanumeric());
            if !good {
                return Err(format!("bad id {value:?}"));
            }
            if id.replace(value.to_string()).is_some() {
                return Err("two ids".into());
            }
        }
    }
    id.ok_or_else(|| "no id".into())
}

/// The policy id the `_mta-sts` TXT RRset gives, if it announces a policy: records
/// not starting with `v=STSv1` are ignored, and anything but exactly one valid
/// STSv1 record means no policy (§3.1).
pub fn txt_id(records: &[Vec<u8>]) -> Option<String> {
    let mut sts = records.iter().filter(|r| {
        r.strip_prefix(b"v=STSv1")
            .is_some_and(|rest| matches!(rest.first(), None | Some(b';' | b' ' | b'\t')))
    });
    let one = sts.next()?;
    if sts.next().is_some() {
        return None;
    }
    parse_txt(one).ok()
}

/// An `mx` pattern checked and made lowercase.
fn mx_pattern(value: &str) -> Result<String, String> {
    let v = value.to_ascii_lowercase();
    let v = v.strip_suffix('.').unwrap_or(&v).to_string();
    let domain = v.strip_prefix("*.").unwrap_or(&v);
    if valid_domain(domain) {
        Ok(v)
    } else {
        Err(format!("bad mx pattern {value:?}"))
    }
}

impl Policy {
    /// Parses a policy file (§3.2): `name: value` lines ended by LF or CRLF;
    /// `version: STSv1`, `mode` and `max_age` exactly once, `mx` once or more (none
    /// needed with mode `none`); other field names are ignored. Blank lines may only
    /// end the file; a bare CR, a line that is no field, a repeated field, a
    /// `max_age` over [`MAX_AGE_LIMIT`] are errors.
    pub fn parse(text: &[u8]) -> Result<Policy, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_string())?;
        let mut lines: Vec<&str> = text
            .split('\n')
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
            .collect();
        while lines.last() == Some(&"") {
            lines.pop();
        }
        let (mut version, mut mode, mut max_age) = (None, None, None);
        let mut mx = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("not a field: {line:?}"))?;
            let name_ok = (1..=32).contains(&name.len())
                && name.bytes().enumerate().all(|(i, b)| {
                    b.is_ascii_alphanumeric() || (i > 0 && matches!(b, b'_' | b'-' | b'.'))
                });
            let value = value.trim_matches([' ', '\t']);
            if !name_ok || value.is_empty() || value.chars().any(|c| c.is_control()) {
                return Err(format!("bad field: {line:?}"));
            }
            let dup = |what: &str| format!("{what} given twice");
            match name {
                "version" => {
                    if value != "STSv1" {
                        return Err(format!("unknown version {value:?}"));
                    }
                    if version.replace(()).is_some() {
                        return Err(dup("version"));
                    }
                }
                "mode" => {
                    let m = match value {
                        "enforce" => Mode::Enforce,
                        "testing" => Mode::Testing,
                        "none" => Mode::None,
                        _ => return Err(format!("unknown mode {value:?}")),
                    };
                    if mode.replace(m).is_some() {
                        return Err(dup("mode"));
                    }
                }
                "max_age" => {
                    let good = (1..=10).contains(&value.len())
                        && value.bytes().all(|b| b.is_ascii_digit());
                    let secs: u64 = match value.parse() {
                        Ok(n) if good && n <= MAX_AGE_LIMIT => n,
                        _ => return Err(format!("bad max_age {value:?}")),
                    };
                    if max_age.replace(secs).is_some() {
                        return Err(dup("max_age"));
                    }
                }
                "mx" => mx.push(mx_pattern(value)?),
                _ => {}
            }
        }
        version.ok_or("no version")?;
        let mode = mode.ok_or("no mode")?;
        let max_age = max_age.ok_or("no max_age")?;
        if mx.is_empty() && mode != Mode::None {
            return Err("no mx".into());
        }
        Ok(Policy { mode, mx, max_age })
    }

    /// The policy as a file, LF-ended lines, as [`Policy::parse`] reads it.
    pub fn to_text(&self) -> String {
        let mut out = format!("version: STSv1\nmode: {}\n", self.mode.as_str());
        for m in &self.mx {
            out.push_str(&format!("mx: {m}\n"));
        }
        out.push_str(&format!("max_age: {}\n", self.max_age));
        out
    }

    /// Whether `host` matches one of the `mx` patterns.
    pub fn lists(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_matches(p, host))
    }
}

/// Whether the MX host name `host` matches the pattern `pattern` (§4.1): the same
/// name, ignoring case and a final dot, or for `*.DOMAIN` a name of exactly one more
/// label on the left of DOMAIN.
pub fn mx_matches(pattern: &str, host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let pattern = pattern.strip_suffix('.').unwrap_or(pattern);
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .split_once('.')
            .is_some_and(|(first, rest)| !first.is_empty() && rest.eq_ignore_ascii_case(domain)),
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// What TLS towards an MX host must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Nothing asked: no policy, or mode `none`.
    Nothing,
    /// Mode `testing`: check PKIX against the action's roots for the MX name, report
    /// a failure, deliver all the same.
    Report,
    /// Mode `enforce`: TLS whose certificate passes PKIX for the MX name, else the
    /// host is not used.
    Require,
}

/// Which MX hosts a policy lets a sender use, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The hosts that may be used, in the order given.
    pub allowed: Vec<String>,
    /// The hosts the policy does not list: not used under `enforce` (none allowed
    /// means the mail waits), only reported under `testing`.
    pub unlisted: Vec<String>,
    /// What TLS towards an allowed host must be.
    pub tls: Requirement,
}

/// What `policy` (if the domain has one) makes of the MX `hosts` (§5).
pub fn decide(policy: Option<&Policy>, hosts: &[String]) -> Decision {
    let mode = policy.map_or(Mode::None, |p| p.mode);
    let (listed, unlisted): (Vec<String>, Vec<String>) = match (policy, mode) {
        (Some(p), Mode::Enforce | Mode::Testing) => hosts.iter().cloned().partition(|h| p.lists(h)),
        _ => (hosts.to_vec(), Vec::new()),
    };
    match mode {
        Mode::Enforce => Decision {
            allowed: listed,
            unlisted,
            tls: Requirement::Require,
        },
        Mode::Testing => Decision {
            allowed: hosts.to_vec(),
            unlisted,
            tls: Requirement::Report,
        },
        Mode::None => Decision {
            allowed: listed,
            unlisted,
            tls: Requirement::Nothing,
        },
    }
}

/// A domain's policy as last fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    /// When it was fetched, in seconds since the epoch.
    pub fetched: u64,
    /// The TXT record's id at the time.
    pub id: String,
    /// The policy.
    pub policy: Policy,
}

/// What to do about a domain's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// The domain has no policy.
    NoPolicy,
    /// The cached policy serves.
    UseCached,
    /// Fetch the policy; if that fails, the cached one serves while it has not
    /// expired (§5.1).
    Fetch,
}

impl CacheEntry {
    /// Whether the policy is past its `max_age` at `now`.
    pub fn expired(&self, now: u64) -> bool {
        now >= self.fetched.saturating_add(self.policy.max_age)
    }

    /// The entry as a file: `fetched SECONDS`, `id ID`, a blank line, the policy.
    pub fn to_text(&self) -> String {
        format!(
            "fetched {}\nid {}\n\n{}",
            self.fetched,
            self.id,
            self.policy.to_text()
        )
    }

    /// Reads what [`CacheEntry::to_text`] wrote; anything else is an error.
    pub fn parse(text: &[u8]) -> Result<CacheEntry, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_string())?;
        let (head, policy) = text.split_once("\n\n").ok_or("no blank line")?;
        let mut lines = head.split('\n');
        let fetched = lines
            .next()
            .and_then(|l| l.strip_prefix("fetched "))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
            .ok_or("bad fetched line")?;
        let id = lines
            .next()
            .and_then(|l| l.strip_prefix("id "))
            .filter(|v| (1..=32).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric()))
            .ok_or("bad id line")?;
        if lines.next().is_some() {
            return Err("extra lines".into());
        }
        let policy = Policy::parse(policy.as_bytes())?;
        Ok(CacheEntry {
            fetched,
            id: id.to_string(),
            policy,
        })
    }
}

/// What to do given the cached entry, the id the TXT record gives now (`None`:
/// no record, or not a valid one) and the time (§5.1). A new id or an expired entry
/// calls for a fetch; a vanished record leaves an unexpired entry in force.
pub fn refresh(cached: Option<&CacheEntry>, txt_id: Option<&str>, now: u64) -> Refresh {
    match (cached, txt_id) {
        (None, None) => Refresh::NoPolicy,
        (None, Some(_)) => Refresh::Fetch,
        (Some(c), None) if c.expired(now) => Refresh::NoPolicy,
        (Some(_), None) => Refresh::UseCached,
        (Some(c), Some(id)) if c.expired(now) || c.id != id => Refresh::Fetch,
        (Some(_), Some(_)) => Refresh::UseCached,
    }
}

/// The cache file of `domain` under the spool `queue`; `None` for a name that is no
/// domain (it never becomes a path).
pub fn cache_path(queue: &Path, domain: &str) -> Option<PathBuf> {
    let d = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    valid_domain(&d).then(|| queue.join("sts").join(d))
}

fn bad_name(domain: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a domain: {domain:?}"),
    )
}

/// The most bytes of a cache file read: a policy is at most 64 KiB.
const MAX_CACHE_FILE: u64 = 128 * 1024;

/// The cached policy of `domain`: `None` when there is none; an `InvalidData` error
/// for a file that does not parse. Only a plain file is read (a symbolic link is not
/// followed, a FIFO not waited on), and only its first 128 KiB.
pub fn read_cache(queue: &Path, domain: &str) -> io::Result<Option<CacheEntry>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = cache_path(queue, domain).ok_or_else(|| bad_name(domain))?;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path);
    let file = match file {
        Ok(f) if f.metadata()?.is_file() => f,
        Ok(_) => {
            let why = format!("{}: not a plain file", path.display());
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(MAX_CACHE_FILE).read_to_end(&mut bytes)?;
    CacheEntry::parse(&bytes).map(Some).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// Stores the policy of `domain`, replacing the old one at once (a temporary file
/// renamed over it); makes `QUEUE/sts` if needed.
pub fn write_cache(queue: &Path, domain: &str, entry: &CacheEntry) -> io::Result<()> {
    let path = cache_path(queue, domain).ok_or_else(|| bad_name(domain))?;
    let dir = queue.join("sts");
    std::fs::create_dir_all(&dir)?;
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, entry.to_text())?;
    std::fs::rename(&tmp, &path)
}

#[cfg(test)]
#[path = "sts_tests.rs"]
mod tests;
