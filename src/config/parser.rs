//! The smtpd.conf grammar (OpenSMTPD's `listen`/`table`/`action`/`match` form).
//!
//! Every keyword accepted here is listed in [`KEYWORDS`] and documented in
//! man/smtpd.conf.5; a test keeps the two in step.

use super::lexer::{expand, lex, Tok, Token};
use super::model::*;
use super::{relative_to, ConfigError};
use crate::table::Table;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod action;
mod auth;
mod compat;
mod filters;
mod global;
mod listen;
mod listen_opts;
mod relay;
mod rules;
mod settings;
mod tables;

pub use global::check_queue_key;
pub(super) use settings::queue_path_only;

/// Every keyword the parser accepts.
pub const KEYWORDS: &[&str] = &[
    "include",
    "table",
    "file",
    "db",
    "listen",
    "on",
    "inet4",
    "inet6",
    "port",
    "hostname",
    "tag",
    "action",
    "maildir",
    "junk",
    "mbox",
    "mda",
    "lmtp",
    "rcpt-to",
    "expand-only",
    "forward-only",
    "relay",
    "host",
    "alias",
    "virtual",
    "userbase",
    "user",
    "ttl",
    "match",
    "from",
    "for",
    "any",
    "local",
    "socket",
    "src",
    "mail-from",
    "domain",
    "helo",
    "reject",
    "queue",
    "path",
    "smtp",
    "max-message-size",
    "limit",
    "max-rcpt",
    "max-mails",
    "max-command-line",
    "max-text-line",
    "max-sessions",
    "max-sessions-per-address",
    "max-connection-rate",
    "max-errors",
    "max-hops",
    "timeout",
    "sub-addr-delim",
    "filter",
    "proc-exec",
    "proc",
    "group",
    "chroot",
    "chain",
    "phase",
    "connect",
    "ehlo",
    "data",
    "commit",
    "bypass",
    "disconnect",
    "rewrite",
    "rdns",
    "fcrdns",
    "bounce",
    "warn-interval",
    "control",
    "max-clients",
    "max-clients-per-user",
    "tls",
    "tls-require",
    "verify",
    "smtps",
    "pki",
    "ca",
    "cert",
    "key",
    "dhe",
    "none",
    "auto",
    "legacy",
    "protocols",
    "ciphers",
    "auth",
    "auth-optional",
    "senders",
    "masquerade",
    "received-auth",
    "max-auth-failures",
    "backup",
    "mx",
    "helo-src",
    "no-verify",
    "no-dane",
    "no-mta-sts",
    "mta",
    "max-deferred",
    "max-conn-per-route",
    "max-conn-per-host",
    "session-mail-max",
    "regex",
    "mask-src",
    "no-dsn",
    "hostnames",
    "srs",
    "encryption",
    "wrapper",
    "admd",
    "metrics",
    "max-session",
    "getpwnam",
    "static",
];

/// Phases a built-in filter may decide, with their protocol event bits.
const PHASES: &[(&str, u32)] = &[
    ("connect", smtpd_filter::codec::event::CONNECT),
    ("helo", smtpd_filter::codec::event::HELO),
    ("ehlo", smtpd_filter::codec::event::EHLO),
    ("mail-from", smtpd_filter::codec::event::MAIL),
    ("rcpt-to", smtpd_filter::codec::event::RCPT),
    ("data", smtpd_filter::codec::event::DATA),
    ("commit", smtpd_filter::codec::event::EOM),
];

const MAX_INCLUDE_DEPTH: usize = 8;

pub(super) struct Parser {
    path: PathBuf,
    macros: HashMap<String, String>,
    /// Macros given with -D: the file may not redefine them.
    fixed: Vec<String>,
    cfg: Config,
    table_names: HashMap<String, TableId>,
    action_names: HashMap<String, ActionId>,
    filter_names: HashMap<String, FilterId>,
    /// `proc` statements, for `filter NAME proc PROC`.
    procs: HashMap<String, filters::ProcDef>,
    pki_names: HashMap<String, PkiId>,
    ca_names: HashMap<String, CaId>,
    /// The pki and ca names of TLS listeners, resolved after the last statement.
    tls_names: Vec<listen::TlsNames>,
    /// The pki and ca names of relay actions, resolved after the last statement.
    relay_names: Vec<relay::RelayNames>,
    /// Tables of type `getpwnam`: the system's accounts, for `userbase` only.
    passwd_tables: Vec<String>,
    /// `mda wrapper NAME "COMMAND"` statements read so far.
    wrappers: HashMap<String, String>,
    /// Relay actions with `srs`, checked for an `srs key` after the last statement.
    srs_actions: Vec<Place>,
    /// TLS listeners that give no `ciphers`: they take `smtp ciphers`.
    default_cipher_listeners: Vec<usize>,
    /// Relay actions that give no `ciphers`: they take `smtp ciphers`.
    default_cipher_relays: Vec<ActionId>,
    /// The relay action being read gave `ciphers`.
    relay_ciphers_given: bool,
    queue_path: Option<PathBuf>,
    depth: usize,
    /// The file being read (relative paths in it are resolved against its directory).
    current: PathBuf,
}

/// A cursor over one statement's tokens.
struct Stmt<'a> {
    toks: &'a [Token],
    pos: usize,
}

impl<'a> Stmt<'a> {
    fn line(&self) -> usize {
        self.toks
            .get(self.pos.min(self.toks.len().saturating_sub(1)))
            .map_or(0, |t| t.line)
    }
    fn file(&self) -> &str {
        self.toks.first().map_or("", |t| &t.file)
    }
    fn err(&self, msg: impl Into<String>) -> ConfigError {
        ConfigError::at(self.file(), self.line(), msg)
    }
    fn peek(&self) -> Option<&'a Tok> {
        self.toks.get(self.pos).map(|t| &t.tok)
    }
    fn peek_word(&self) -> Option<&'a str> {
        match self.peek() {
            Some(Tok::Word {
                text,
                quoted: false,
            }) => Some(text),
            _ => None,
        }
    }
    fn at_end(&self) -> bool {
        self.pos >= self.toks.len()
    }
    /// Takes the next token if it is the unquoted keyword `kw`.
    fn eat(&mut self, kw: &str) -> bool {
        if self.peek_word() == Some(kw) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn eat_punct(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Punct(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect_punct(&mut self, c: char) -> Result<(), ConfigError> {
        if self.eat_punct(c) {
            Ok(())
        } else {
            Err(self.err(format!("expected '{c}'")))
        }
    }
    fn expect(&mut self, kw: &str) -> Result<(), ConfigError> {
        if self.eat(kw) {
            Ok(())
        } else {
            Err(self.err(format!("expected '{kw}'")))
        }
    }
    /// Any word or string.
    fn value(&mut self, what: &str) -> Result<String, ConfigError> {
        match self.peek() {
            Some(Tok::Word { text, .. }) => {
                self.pos += 1;
                Ok(text.clone())
            }
            _ => Err(self.err(format!("{what} expected"))),
        }
    }
    fn done(&self) -> Result<(), ConfigError> {
        match self.peek() {
            None => Ok(()),
            Some(Tok::Word { text, .. }) => Err(self.err(format!("unexpected '{text}'"))),
            Some(Tok::Punct(c)) => Err(self.err(format!("unexpected '{c}'"))),
            Some(Tok::Newline) => Ok(()),
        }
    }
}

/// The options a statement gave so far, of those it may give once.
#[derive(Default)]
struct Given(Vec<&'static str>);

impl Given {
    /// Notes the next word of `st` when it is one of `once`: an error when the
    /// statement gave it before. `whose` ends the message (" in one rule").
    fn note(&mut self, st: &Stmt, once: &[&'static str], whose: &str) -> Result<(), ConfigError> {
        match st.peek_word().and_then(|w| once.iter().find(|&&o| o == w)) {
            Some(&w) => self.mark(st, w, whose),
            None => Ok(()),
        }
    }

    /// Notes `word`: an error when the statement gave it before.
    fn mark(&mut self, st: &Stmt, word: &'static str, whose: &str) -> Result<(), ConfigError> {
        if self.0.contains(&word) {
            return Err(st.err(format!("'{word}' given twice{whose}")));
        }
        self.0.push(word);
        Ok(())
    }
}

fn parse_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.as_bytes().last()? {
        b'k' | b'K' => (&s[..s.len() - 1], 1u64 << 10),
        b'm' | b'M' => (&s[..s.len() - 1], 1 << 20),
        b'g' | b'G' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mult)
}

/// A number and its unit (`s`, `m`, `h` or `d`), as OpenSMTPD writes durations.
fn parse_duration(s: &str) -> Option<Duration> {
    let (num, mult) = match s.as_bytes().last()? {
        b's' => (&s[..s.len() - 1], 1),
        b'm' => (&s[..s.len() - 1], 60),
        b'h' => (&s[..s.len() - 1], 3600),
        b'd' => (&s[..s.len() - 1], 86400),
        _ => return None,
    };
    if !num.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(
        num.parse::<u64>().ok()?.checked_mul(mult)?,
    ))
}

/// The error for a duration [`parse_duration`] refuses.
fn invalid_duration(v: &str) -> String {
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        format!("invalid duration '{v}': give its unit, as in {v}s, {v}m, {v}h or {v}d")
    } else {
        format!("invalid duration '{v}'")
    }
}

impl Parser {
    pub(super) fn new(path: &Path, macros: HashMap<String, String>) -> Self {
        let fixed = macros.keys().cloned().collect();
        Parser {
            path: path.to_path_buf(),
            macros,
            fixed,
            cfg: Config {
                path: path.to_path_buf(),
                hostname: super::default_hostname(),
                queue: QueueConfig {
                    path: PathBuf::from("/var/spool/smtpd"),
                    ttl: Duration::from_secs(4 * 86400),
                    warn_intervals: vec![Duration::from_secs(4 * 3600)],
                    encryption: None,
                },
                smtp: SmtpConfig::default(),
                control: ControlConfig::default(),
                mta: crate::config::relay::MtaConfig::default(),
                listeners: Vec::new(),
                tables: Vec::new(),
                actions: Vec::new(),
                rules: Vec::new(),
                filters: Vec::new(),
                socket_filter: None,
                superseded_filters: Vec::new(),
                pkis: Vec::new(),
                cas: Vec::new(),
                socket: SocketListener::default(),
                admd: None,
                metrics: None,
                srs: SrsConfig::default(),
                mda: MdaConfig::default(),
            },
            table_names: HashMap::new(),
            action_names: HashMap::new(),
            filter_names: HashMap::new(),
            procs: HashMap::new(),
            pki_names: HashMap::new(),
            ca_names: HashMap::new(),
            tls_names: Vec::new(),
            relay_names: Vec::new(),
            passwd_tables: Vec::new(),
            wrappers: HashMap::new(),
            srs_actions: Vec::new(),
            default_cipher_listeners: Vec::new(),
            default_cipher_relays: Vec::new(),
            relay_ciphers_given: false,
            queue_path: None,
            depth: 0,
            current: path.to_path_buf(),
        }
    }

    pub(super) fn run(mut self, text: &str) -> Result<Config, ConfigError> {
        let path = self.path.clone();
        self.file(text, &path)?;
        if let Some(p) = self.queue_path.take() {
            self.cfg.queue.path = p;
        }
        self.check_pkis()?;
        self.check_relay_names()?;
        self.finish_globals()?;
        if self.cfg.listeners.is_empty() {
            return Err(ConfigError::at(
                &path.display().to_string(),
                0,
                "no listener: add a 'listen on' line",
            ));
        }
        Ok(self.cfg)
    }

    fn file(&mut self, text: &str, path: &Path) -> Result<(), ConfigError> {
        let toks = lex(text, path)?;
        let mut start = 0;
        for (i, t) in toks.iter().enumerate() {
            if t.tok == Tok::Newline {
                if i > start {
                    self.statement(&toks[start..i])?;
                }
                start = i + 1;
            }
        }
        Ok(())
    }

    fn statement(&mut self, toks: &[Token]) -> Result<(), ConfigError> {
        let expanded = expand(toks, &self.macros)?;
        if expanded.is_empty() {
            // Macros that expand to nothing leave an empty line, as in OpenSMTPD.
            return Ok(());
        }
        let toks = &expanded[..];
        let mut st = Stmt { toks, pos: 0 };
        // A macro definition: NAME = VALUE.
        if toks.len() >= 2 && toks[1].tok == Tok::Punct('=') {
            let name = match &toks[0].tok {
                Tok::Word {
                    text,
                    quoted: false,
                } => text.clone(),
                _ => return Err(st.err("macro name expected")),
            };
            if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(st.err(format!("invalid macro name '{name}'")));
            }
            st.pos = 2;
            let value = st.value("macro value")?;
            st.done()?;
            if !self.fixed.contains(&name) {
                self.macros.insert(name, value);
            }
            return Ok(());
        }
        let kw = st.value("keyword")?;
        match kw.as_str() {
            "include" => self.include(&mut st),
            "table" => self.table(&mut st),
            "listen" => self.listen(&mut st),
            "action" => self.action(&mut st),
            "match" => self.rule(&mut st),
            "queue" => self.queue(&mut st),
            "smtp" => self.smtp(&mut st),
            "control" => self.control(&mut st),
            "mta" => self.mta(&mut st),
            "filter" => self.filter(&mut st),
            "proc" => self.proc(&mut st),
            "bounce" => self.bounce(&mut st),
            "pki" => self.pki(&mut st),
            "ca" => self.ca(&mut st),
            "srs" => self.srs(&mut st),
            "admd" => self.admd(&mut st),
            "metrics" => self.metrics(&mut st),
            "mda" => self.mda(&mut st),
            other => Err(st.err(compat::unknown_statement(other))),
        }
    }

    fn include(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let p = st.value("file name")?;
        st.done()?;
        if self.depth >= MAX_INCLUDE_DEPTH {
            return Err(st.err("includes nested too deeply"));
        }
        let path = relative_to(&self.current, &p);
        let text = crate::files::read_to_string(&path)
            .map_err(|e| st.err(format!("{}: {e}", path.display())))?;
        self.depth += 1;
        let outer = std::mem::replace(&mut self.current, path.clone());
        let r = self.file(&text, &path);
        self.current = outer;
        self.depth -= 1;
        r
    }

    /// `{ a, b = c }` after the `{`: the entries of an inline table.
    fn inline_entries(st: &mut Stmt) -> Result<Vec<(String, String)>, ConfigError> {
        let mut pairs = Vec::new();
        loop {
            if st.eat_punct('}') {
                break;
            }
            let key = st.value("table entry")?;
            let value = if st.eat_punct('=') {
                st.value("table value")?
            } else {
                String::new()
            };
            pairs.push((key, value));
            if !st.eat_punct(',') {
                st.expect_punct('}')?;
                break;
            }
        }
        Ok(pairs)
    }

    /// `<name>` or an anonymous inline table `{ ... }`.
    fn table_ref(&mut self, st: &mut Stmt) -> Result<TableId, ConfigError> {
        if st.eat_punct('{') {
            let pairs = Self::inline_entries(st)?;
            self.cfg.tables.push(Table::new("(inline)", pairs));
            return Ok(self.cfg.tables.len() - 1);
        }
        st.expect_punct('<')?;
        let name = st.value("table name")?;
        st.expect_punct('>')?;
        self.table_names.get(&name).copied().ok_or_else(|| {
            if self.passwd_tables.contains(&name) {
                st.err(format!(
                    "table '{name}' (getpwnam) holds the system's accounts: it can \
                     be given to 'userbase' only"
                ))
            } else {
                st.err(format!("undefined table '{name}'"))
            }
        })
    }
}

fn valid_net(v: &str) -> bool {
    let (addr, bits) = match v.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (v, None),
    };
    match addr.parse::<IpAddr>() {
        Ok(ip) => bits.is_none_or(|b| {
            b.parse::<u32>()
                .is_ok_and(|b| b <= if ip.is_ipv4() { 32 } else { 128 })
        }),
        Err(_) => false,
    }
}

#[cfg(test)]
#[path = "parser_tests.rs"]
mod tests;
