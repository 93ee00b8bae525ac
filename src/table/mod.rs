//! Tables: lists and mappings, from smtpd.conf (`{ ... }`), from a file (`file:PATH`),
//! from a Berkeley DB made by makemap (`db:PATH`), or served by a table process
//! (OpenSMTPD's `table-TYPE` programs, or any program speaking the line protocol).
//!
//! A table is asked as OpenSMTPD asks it: for a service (an alias, a domain,
//! credentials...) and a key. The entries of a file, db or inline table are in memory
//! and matched here (domains with `*.` wildcards, addresses, networks); a table
//! process is asked by a lookup thread (`backend.rs`), and its failure is an error
//! the caller turns into a temporary failure, never into an answer.
//!
//! File format, one entry per line, `#` comments: `key` (a list), `key value` or the
//! aliases form `key: value, value`. Keys are matched without regard to case.

mod backend;
mod bdb;
mod entries;
mod imsg;
mod line;

pub use backend::{Backend, Protocol, TIMEOUT};
pub use entries::Entries;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

/// What a table is asked for: OpenSMTPD's table services, which say what the key is
/// and what form the value takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    /// A name or address to expand (`alias`, `virtual`): a list of recipients.
    Alias,
    /// A domain (`for domain`, `helo`).
    Domain,
    /// A user's password hash (`auth <t>`), or a relay label's `user:password`.
    Credentials,
    /// A client's address (`from src`).
    NetAddr,
    /// A user of a `userbase`: `uid:gid:home`.
    UserInfo,
    /// A source address of a relay (`src`).
    Source,
    /// A sender or recipient address (`mail-from`, `rcpt-to`).
    MailAddr,
    /// The name an address is known by (`helo-src`).
    AddrName,
    /// The addresses a user may send as (`senders`).
    MailAddrMap,
    /// A relay URL per domain (a relay's `domain` table).
    RelayHost,
    /// A plain string (`tag`, a user name of `auth` without `@`).
    String,
}

impl Service {
    /// The bit of OpenSMTPD's `enum table_service` (the imsg protocol's service).
    pub fn bit(self) -> u32 {
        match self {
            Service::Alias => 0x001,
            Service::Domain => 0x002,
            Service::Credentials => 0x004,
            Service::NetAddr => 0x008,
            Service::UserInfo => 0x010,
            Service::Source => 0x020,
            Service::MailAddr => 0x040,
            Service::AddrName => 0x080,
            Service::MailAddrMap => 0x100,
            Service::RelayHost => 0x200,
            Service::String => 0x400,
        }
    }

    /// The name of the service in the line protocol.
    pub fn name(self) -> &'static str {
        match self {
            Service::Alias => "alias",
            Service::Domain => "domain",
            Service::Credentials => "credentials",
            Service::NetAddr => "netaddr",
            Service::UserInfo => "userinfo",
            Service::Source => "source",
            Service::MailAddr => "mailaddr",
            Service::AddrName => "addrname",
            Service::MailAddrMap => "mailaddrmap",
            Service::RelayHost => "relayhost",
            Service::String => "string",
        }
    }

    /// Every service.
    pub const ALL: [Service; 11] = [
        Service::Alias,
        Service::Domain,
        Service::Credentials,
        Service::NetAddr,
        Service::UserInfo,
        Service::Source,
        Service::MailAddr,
        Service::AddrName,
        Service::MailAddrMap,
        Service::RelayHost,
        Service::String,
    ];
}

/// Why a table could not answer. A lookup that gets one is a temporary failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableError(pub String);

impl std::fmt::Display for TableError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The directory OpenSMTPD 6's table programs are run from (`table-TYPE`), where
/// Debian's opensmtpd-extras installs them.
pub const EXTRAS_DIR: &str = "/usr/libexec/opensmtpd";

/// Where a table's entries come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `{ ... }` in smtpd.conf.
    Inline,
    /// `file:PATH`, or a bare path: the text format.
    File(PathBuf),
    /// `db:PATH`: a Berkeley DB file made by makemap.
    Db(PathBuf),
    /// A table process answers.
    Proc(Proc),
}

/// How a table process is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// The program.
    pub program: Program,
    /// The account it runs as (when smtpd is started as root); default: the
    /// unprivileged user.
    pub user: Option<String>,
    /// Its group; default: the user's primary group.
    pub group: Option<String>,
}

/// The program of a table process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `TYPE:ARG`: OpenSMTPD 6's `table-TYPE` from [`EXTRAS_DIR`], run with the table's
    /// name as `argv[0]` and ARG as `argv[1]`; it speaks the imsg protocol.
    Extras {
        /// TYPE: `sqlite`, `postgres`, `mysql`, `redis`, `ldap`, `socketmap`, `passwd`...
        kind: String,
        /// ARG: its configuration file (or socket).
        arg: String,
    },
    /// `proc-exec "COMMAND"`: run by `/bin/sh -c "exec COMMAND"`; it speaks the line
    /// protocol of OpenSMTPD 7.6 and later (smtpd-tables(7)).
    Exec(String),
}

impl Program {
    /// The program file of an `Extras` table.
    pub fn extras_path(kind: &str) -> PathBuf {
        Path::new(EXTRAS_DIR).join(format!("table-{kind}"))
    }

    /// The protocol it speaks.
    pub fn protocol(&self) -> Protocol {
        match self {
            Program::Extras { .. } => Protocol::Imsg,
            Program::Exec(_) => Protocol::Line,
        }
    }
}

/// A table. Its clones share its entries and its process.
#[derive(Debug, Clone)]
pub struct Table {
    /// The table's name in smtpd.conf.
    pub name: String,
    /// Where its entries come from.
    pub source: Source,
    /// The entries of a table held in memory (replaced whole by a reload).
    entries: Arc<RwLock<Arc<Entries>>>,
    /// The client of its process, for a table process.
    backend: Option<Arc<Backend>>,
}

impl Default for Table {
    fn default() -> Self {
        Table::new("", Vec::new())
    }
}

impl Table {
    /// An inline table of `(key, value)` pairs; a later duplicate key is ignored.
    pub fn new(name: &str, pairs: Vec<(String, String)>) -> Self {
        Table::with(name, Source::Inline, Entries::new(pairs))
    }

    fn with(name: &str, source: Source, entries: Entries) -> Self {
        Table {
            name: name.to_string(),
            source,
            entries: Arc::new(RwLock::new(Arc::new(entries))),
            backend: None,
        }
    }

    /// Parses the file format (an inline table of its entries); errors name the
    /// 1-based line.
    pub fn parse(name: &str, text: &str) -> Result<Self, (usize, String)> {
        Ok(Table::new(name, Vec::new()).replaced(Entries::parse(text)?))
    }

    fn replaced(self, entries: Entries) -> Self {
        *self.entries.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(entries);
        self
    }

    /// A table read from `path`, in the text format or, for `db`, a Berkeley DB.
    pub fn load(name: &str, source: Source) -> Result<Self, String> {
        let entries = read(&source)?;
        Ok(Table::with(name, source, entries))
    }

    /// A table served by a process (not started here: the parent starts it and hands
    /// the engine its socket, [`Backend::install`]).
    pub fn process(name: &str, proc: Proc) -> Self {
        let backend = Backend::new(name, proc.program.protocol(), TIMEOUT);
        let mut t = Table::with(name, Source::Proc(proc), Entries::default());
        t.backend = Some(Arc::new(backend));
        t
    }

    /// The client of the table's process, if it has one.
    pub fn backend(&self) -> Option<&Arc<Backend>> {
        self.backend.as_ref()
    }

    /// Takes `other`'s process client: one process serves both (a reload that kept
    /// the table as it was).
    pub fn share_backend(&mut self, other: &Table) {
        if let Some(b) = &other.backend {
            self.backend = Some(b.clone());
        }
    }

    /// Whether the entries are in memory (inline, file and db tables), so that the
    /// loop may read them without waiting.
    pub fn in_memory(&self) -> bool {
        self.backend.is_none()
    }

    /// The entries in memory now (none for a table process).
    pub fn entries(&self) -> Arc<Entries> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The value of `key` for `service`: exact (without regard to case) in memory, the
    /// process's answer otherwise. `Ok(None)` when there is none; an error when the
    /// process could not answer. May block (a table process): lookup threads only.
    pub fn lookup(&self, service: Service, key: &str) -> Result<Option<String>, TableError> {
        let Some(b) = &self.backend else {
            return Ok(self.entries().get(key).map(str::to_string));
        };
        match b.lookup(service, &backend_key(key)?)? {
            None => match other_key(service, key) {
                Some(k) => b.lookup(service, &backend_key(&k)?),
                None => Ok(None),
            },
            found => Ok(found),
        }
    }

    /// Whether `key` matches the table for `service`: for entries in memory, whether
    /// `test` holds for one of the keys (the caller's matching of domains, addresses,
    /// networks); for a table process, its answer to a check of `key`. May block: lookup
    /// threads only.
    pub fn matches(
        &self,
        service: Service,
        key: &str,
        test: impl Fn(&str) -> bool,
    ) -> Result<bool, TableError> {
        let Some(b) = &self.backend else {
            return Ok(self.entries().keys().any(test));
        };
        if b.check(service, &backend_key(key)?)? {
            return Ok(true);
        }
        match other_key(service, key) {
            Some(k) => b.check(service, &backend_key(&k)?),
            None => Ok(false),
        }
    }

    /// Reads the table again (`smtpctl update table`): a file or db table from its
    /// file, whose entries replace the old ones only when the whole file is read; a
    /// table process is told to reload. Returns a line for the administrator.
    pub fn reload(&self) -> Result<String, TableError> {
        match &self.source {
            Source::Inline => Ok(format!("table {}: inline, nothing to read", self.name)),
            Source::Proc(_) => match &self.backend {
                Some(b) => b.update().map(|()| format!("table {}: updated", self.name)),
                None => Err(TableError(format!("table {}: no process", self.name))),
            },
            source => {
                let entries = read(source).map_err(TableError)?;
                let n = entries.len();
                *self.entries.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(entries);
                Ok(format!("table {}: updated, {n} entries", self.name))
            }
        }
    }
}

/// For a key of a domain or an address, the key with its domain in the other form
/// (U-labels or A-labels), which a table process is asked for when it does not know
/// the first.
fn other_key(service: Service, key: &str) -> Option<String> {
    match service {
        Service::Alias | Service::Domain | Service::MailAddr | Service::RelayHost => {
            crate::mail::idna::other_form(key)
        }
        _ => None,
    }
}

/// OpenSMTPD lower-cases a key before a table process sees it, and refuses one that
/// does not fit its buffer.
fn backend_key(key: &str) -> Result<String, TableError> {
    if key.len() > 1023 {
        return Err(TableError(format!(
            "lookup key too long ({} bytes)",
            key.len()
        )));
    }
    Ok(key.to_ascii_lowercase())
}

/// The entries of a file or db table, read from its file.
fn read(source: &Source) -> Result<Entries, String> {
    match source {
        Source::File(path) => {
            let text = crate::files::read_to_string(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Entries::parse(&text).map_err(|(line, msg)| format!("{}:{line}: {msg}", path.display()))
        }
        Source::Db(path) => {
            let bytes = crate::files::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let pairs = bdb::read(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Entries::new(pairs))
        }
        Source::Inline | Source::Proc(_) => Ok(Entries::default()),
    }
}

/// `pattern` is a domain or `*.domain`; case-insensitive, U-labels and A-labels
/// alike (a caller that matches one domain against many patterns converts it first,
/// [`crate::mail::idna::ascii_form`]).
pub fn domain_matches(pattern: &str, domain: &str) -> bool {
    if !pattern.is_ascii() || !domain.is_ascii() {
        use crate::mail::idna::ascii_form;
        let (p, d) = (ascii_form(pattern), ascii_form(domain));
        return p.is_ascii() && d.is_ascii() && ascii_domain_matches(&p, &d);
    }
    ascii_domain_matches(pattern, domain)
}

fn ascii_domain_matches(pattern: &str, domain: &str) -> bool {
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
    fn matchers() {
        assert!(domain_matches("*.example.org", "mx.Example.org"));
        assert!(!domain_matches("*.example.org", "example.org"));
        assert!(!domain_matches("*.example.org", "badexample.org"));
        assert!(address_matches("@example.org", "x", "example.org"));
        assert!(address_matches("Bob@example.org", "bob", "example.org"));
        assert!(address_matches("bob", "bob", "any.where"));
        assert!(!address_matches("bob@a.b", "bob", "c.d"));
        assert!(domain_matches("bücher.example", "xn--bcher-kva.example"));
        assert!(domain_matches("xn--bcher-kva.example", "BÜCHER.example"));
        assert!(domain_matches(
            "*.bücher.example",
            "mx.xn--bcher-kva.example"
        ));
        assert!(domain_matches(
            "*.xn--bcher-kva.example",
            "mx.bücher.example"
        ));
        assert!(!domain_matches("bücher.example", "bucher.example"));
        assert!(address_matches(
            "@bücher.example",
            "x",
            "xn--bcher-kva.example"
        ));
        assert!(address_matches(
            "jörg@xn--bcher-kva.example",
            "jörg",
            "bücher.example"
        ));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0]));
        assert!(ip_matches("127.0.0.0/8", ip("127.1.2.3")));
        assert!(!ip_matches("10.0.0.0/8", ip("11.0.0.1")));
        assert!(ip_matches("::1", ip("::1")));
        assert!(ip_matches("192.0.2.0/24", ip("::ffff:192.0.2.9")));
        assert!(ip_matches("0.0.0.0/0", ip("203.0.113.1")));
    }

    #[test]
    fn a_file_table_is_read_again_whole_or_not_at_all() {
        let dir = std::env::temp_dir().join(format!("smtpd-table-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("aliases");
        std::fs::write(&path, "root: alice\n").unwrap();
        let t = Table::load("aliases", Source::File(path.clone())).unwrap();
        let copy = t.clone();
        assert_eq!(t.lookup(Service::Alias, "ROOT"), Ok(Some("alice".into())));
        std::fs::write(&path, "root: bob\nops: carol\n").unwrap();
        assert!(t.reload().is_ok_and(|m| m.contains("2 entries")));
        assert_eq!(t.lookup(Service::Alias, "root"), Ok(Some("bob".into())));
        // A clone shares the entries.
        assert_eq!(copy.lookup(Service::Alias, "root"), Ok(Some("bob".into())));
        std::fs::write(&path, ": broken\n").unwrap();
        assert!(t.reload().is_err());
        assert_eq!(t.lookup(Service::Alias, "ops"), Ok(Some("carol".into())));
        std::fs::remove_file(&path).unwrap();
        assert!(t.reload().is_err());
        assert!(t
            .matches(Service::Domain, "x", |k| k == "ops")
            .unwrap_or(false));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
