//! The configuration as the daemon uses it. Built by the parser, read-only afterwards.

use crate::table::Table;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    /// The server's name: greeting, Received headers, `for local`.
    pub hostname: String,
    /// The spool.
    pub queue: QueueConfig,
    /// Limits of the SMTP server.
    pub smtp: SmtpConfig,
    /// Limits of the control socket.
    pub control: ControlConfig,
    /// Outgoing connections (`mta ...`).
    pub mta: crate::config::relay::MtaConfig,
    /// Where to accept connections.
    pub listeners: Vec<Listener>,
    /// Tables, indexed by [`TableId`].
    pub tables: Vec<Table>,
    /// Actions, indexed by [`ActionId`].
    pub actions: Vec<ActionDef>,
    /// Rules, in order; the first that matches decides.
    pub rules: Vec<Rule>,
    /// Filters, indexed by [`FilterId`].
    pub filters: Vec<FilterDef>,
    /// The filter of local submissions (`listen on socket filter NAME`).
    pub socket_filter: Option<FilterId>,
    /// Filters of the configurations before a reload that this one no longer has,
    /// kept in `filters` for the sessions that started under them (see
    /// [`crate::config::reload::align_filters`]).
    pub superseded_filters: Vec<FilterId>,
    /// `pki` statements, indexed by [`PkiId`].
    pub pkis: Vec<Pki>,
    /// `ca` statements, indexed by [`CaId`].
    pub cas: Vec<Ca>,
    /// `listen on socket` options: `tag`, `mask-src`, `no-dsn`.
    pub socket: SocketListener,
    /// `admd NAME`: the authserv-id (RFC 8601) filters are told; the server name when
    /// `None`.
    pub admd: Option<String>,
    /// `metrics [on ADDRESS] [port PORT]`: where counters are served over HTTP.
    pub metrics: Option<MetricsConfig>,
    /// `srs key`, `srs key backup`, `srs ttl`.
    pub srs: SrsConfig,
    /// `mda limit`.
    pub mda: MdaConfig,
}

/// Default port of the metrics listener.
pub const METRICS_PORT: u16 = 9465;

/// The metrics listener (`metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// The addresses served.
    pub addrs: Vec<std::net::SocketAddr>,
}

/// The local socket's options (`listen on socket ...`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SocketListener {
    /// `tag TAG`.
    pub tag: Option<String>,
    /// `mask-src`, `no-dsn`.
    pub options: SessionOptions,
    /// `senders <t>`: the senders plain local users may give beyond their own.
    pub senders: Option<TableId>,
}

/// Listener options that shape its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SessionOptions {
    /// `mask-src`: the Received header does not name the client.
    pub mask_src: bool,
    /// `no-dsn`: the DSN extension (RFC 3461) is neither offered nor accepted.
    pub no_dsn: bool,
    /// `hostnames <t>`: the server's name for each local address connections arrive on.
    pub hostnames: Option<TableId>,
}

/// The Sender Rewriting Scheme's settings (`srs ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrsConfig {
    /// `srs key SECRET`: what addresses are signed with; SRS is off without it.
    pub key: Option<String>,
    /// `srs key backup SECRET`: also accepted when checking an address.
    pub backup: Option<String>,
    /// `srs ttl`: how many days an address is valid, default 4.
    pub ttl_days: u32,
}

impl Default for SrsConfig {
    fn default() -> Self {
        SrsConfig {
            key: None,
            backup: None,
            ttl_days: 4,
        }
    }
}

/// Local delivery limits (`mda limit ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MdaConfig {
    /// `max-session`: local deliveries at the same time, default 50.
    pub max_session: usize,
}

impl Default for MdaConfig {
    fn default() -> Self {
        MdaConfig { max_session: 50 }
    }
}

/// Index into [`Config::pkis`].
pub type PkiId = usize;
/// Index into [`Config::cas`].
pub type CaId = usize;

/// Where a statement is, for errors found after parsing (files of a `pki`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Place {
    /// The configuration file.
    pub file: String,
    /// The line.
    pub line: usize,
}

impl Place {
    /// An error at this place.
    pub fn err(&self, msg: impl Into<String>) -> crate::config::ConfigError {
        crate::config::ConfigError::at(&self.file, self.line, msg)
    }
}

/// A `pki NAME ...` certificate and its key. The files are read when the daemon
/// starts (by the privileged process), not by the parser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pki {
    /// Its name: the host name SNI selects it by.
    pub name: String,
    /// `pki NAME cert FILE`: the certificate chain (PEM), and where it was given.
    pub cert: Option<(std::path::PathBuf, Place)>,
    /// `pki NAME key FILE`: the private key (PEM), and where it was given.
    pub key: Option<(std::path::PathBuf, Place)>,
    /// `pki NAME dhe ...`: accepted for OpenSMTPD's sake; key exchange is ECDHE.
    pub dhe: Dhe,
    /// Where the pki was first named.
    pub place: Place,
}

/// `pki NAME dhe none|auto|legacy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dhe {
    /// `none`, the default.
    #[default]
    None,
    /// `auto`.
    Auto,
    /// `legacy`.
    Legacy,
}

/// A `ca NAME cert FILE` bundle, to verify client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ca {
    /// Its name.
    pub name: String,
    /// The bundle (PEM).
    pub cert: std::path::PathBuf,
    /// Where it was given.
    pub place: Place,
}

/// The CA bundle used by `verify` when a listener names no `ca`.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// How a listener speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `tls`: STARTTLS offered (RFC 3207).
    Starttls,
    /// `tls-require`: STARTTLS offered, and needed before MAIL.
    Require,
    /// `smtps`: TLS from the first byte (RFC 8314).
    Smtps,
}

/// The TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// How it speaks TLS.
    pub mode: TlsMode,
    /// `verify`: a client certificate that verifies against `ca` is required.
    pub verify: bool,
    /// `pki NAME`, in order: the first is served when SNI names no pki.
    pub pkis: Vec<PkiId>,
    /// `ca NAME`; the system bundle when `None`.
    pub ca: Option<CaId>,
    /// `protocols`, default TLS 1.2 and 1.3.
    pub protocols: Vec<crate::config::tls::TlsVersion>,
    /// `ciphers`, default every suite.
    pub ciphers: Vec<crate::config::tls::Suite>,
    /// Where the listener is.
    pub place: Place,
}

/// Index into [`Config::filters`].
pub type FilterId = usize;

/// A `filter` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterDef {
    /// Its name.
    pub name: String,
    /// What it is.
    pub kind: FilterKind,
}

/// The kinds of filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterKind {
    /// `proc-exec "COMMAND" [user U] [group G] [chroot DIR] [timeout D]`, or `proc
    /// PROC` naming a `proc PROC "COMMAND" ...` statement.
    Proc {
        /// The command line.
        command: String,
        /// Account to run as.
        user: Option<String>,
        /// Group to run as.
        group: Option<String>,
        /// Directory to chroot into.
        chroot: Option<PathBuf>,
        /// How long an answer may take.
        timeout: Duration,
        /// It speaks OpenSMTPD's protocol whatever it sends first (the `proc` form);
        /// else the daemon tells by its first bytes.
        opensmtpd: bool,
    },
    /// `chain { A, B }`: these filters in order.
    Chain(Vec<FilterId>),
    /// `phase PHASE match [!]CHECK ... DECISION`, run inside the daemon.
    Builtin(Builtin),
}

/// A filter run inside the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Builtin {
    /// The phase it decides (an event bit of the filter protocol).
    pub phase: u32,
    /// Checks, each possibly negated; all must hold for the decision to apply.
    pub checks: Vec<(bool, Check)>,
    /// What happens when they hold.
    pub decision: BuiltinDecision,
}

/// A check of a built-in filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `rdns`: the client has a reverse DNS name; `rdns NAME|<t>`: it matches.
    Rdns(Option<Matcher>),
    /// `fcrdns`: the reverse name resolves back to the client's address.
    Fcrdns,
    /// `src ADDR|<t>`: the client address.
    Src(Matcher),
    /// `helo NAME|<t>`: the HELO/EHLO name.
    Helo(Matcher),
    /// `mail-from ADDR|<t>`: the sender.
    MailFrom(Matcher),
    /// `rcpt-to ADDR|<t>`: the recipient.
    RcptTo(Matcher),
    /// `auth [USER|<t>]`: the client authenticated (as one of these users).
    Auth(Option<Matcher>),
}

/// The decision of a built-in filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuiltinDecision {
    /// Skip the rest of the chain for this phase.
    Bypass,
    /// Mark as spam.
    Junk,
    /// Refuse with this reply text ("550 5.7.1 text").
    Reject(String),
    /// Reply and close.
    Disconnect(String),
    /// Replace the parameter.
    Rewrite(String),
}

impl Config {
    /// Whether a built-in filter or a rule checks the client's reverse DNS (the daemon
    /// then looks it up when a client connects).
    pub fn needs_rdns(&self) -> bool {
        let filters = self.filters.iter().any(|f| match &f.kind {
            FilterKind::Builtin(b) => b
                .checks
                .iter()
                .any(|(_, c)| matches!(c, Check::Rdns(_) | Check::Fcrdns)),
            _ => false,
        });
        let rules = self
            .rules
            .iter()
            .any(|r| r.conds.iter().any(|(_, c)| matches!(c, Cond::FromRdns(_))));
        filters || rules
    }

    /// The filters a chain head stands for, in order (chains flattened).
    pub fn filter_chain(&self, head: FilterId) -> Vec<FilterId> {
        match self.filters.get(head).map(|f| &f.kind) {
            Some(FilterKind::Chain(ids)) => ids.clone(),
            Some(_) => vec![head],
            None => Vec::new(),
        }
    }
}

/// The spool settings.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Root of the spool (`queue path`).
    pub path: PathBuf,
    /// How long a message may stay (`queue ttl`), default 4 days.
    pub ttl: Duration,
    /// After how long in the queue delay warnings are sent (`bounce warn-interval`),
    /// default one at 4 hours; empty for none.
    pub warn_intervals: Vec<Duration>,
    /// `queue encryption [KEY|stdin|-]`: where the key of the spool's message files
    /// comes from; no encryption when `None`.
    pub encryption: Option<QueueKey>,
}

/// Where the key of `queue encryption` comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum QueueKey {
    /// `queue encryption KEY`: given in the file.
    Given(String),
    /// `queue encryption stdin` or `-`: the first line of the standard input at start.
    Stdin,
    /// `queue encryption`: asked on the terminal at start.
    Prompt,
}

impl std::fmt::Debug for QueueKey {
    /// Never shows a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            QueueKey::Given(_) => "Given(..)",
            QueueKey::Stdin => "Stdin",
            QueueKey::Prompt => "Prompt",
        })
    }
}

/// SMTP server limits (`smtp ...`).
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    /// `smtp max-message-size`, default 35 MiB.
    pub max_message_size: u64,
    /// `smtp limit max-rcpt`: recipients per transaction, default 1000.
    pub max_rcpt: usize,
    /// `smtp limit max-mails`: transactions per session, default 100.
    pub max_mails: usize,
    /// `smtp limit max-command-line`: octets of a command line with CR LF, default 512.
    pub max_command_line: usize,
    /// `smtp limit max-text-line`: octets of a text line with CR LF; 0 (the default)
    /// for no limit but the message size.
    pub max_text_line: usize,
    /// `smtp limit max-sessions`: sessions at once; 0 means derived from the fd limit.
    pub max_sessions: usize,
    /// `smtp limit max-sessions-per-address`: sessions at once from one address, default
    /// 50; 0 is none.
    pub max_sessions_per_address: usize,
    /// `smtp limit max-connection-rate`: connections a minute from one address; 0 (the
    /// default) is none.
    pub max_connection_rate: usize,
    /// `smtp limit max-errors`: failed commands before the session is closed, default 20.
    pub max_errors: usize,
    /// `smtp limit max-hops`: Received headers refused from this count on, default 50.
    pub max_hops: usize,
    /// `smtp timeout`: idle time before a session is closed, default 300 s.
    pub timeout: Duration,
    /// `smtp sub-addr-delim`, default `+`.
    pub sub_addr_delim: char,
    /// `smtp limit max-auth-failures`: failed AUTH exchanges before the session is
    /// closed, default 3.
    pub max_auth_failures: usize,
    /// `smtp ciphers`: the cipher suites of listeners and relay actions that give
    /// none; every suite when `None`.
    pub ciphers: Option<Vec<crate::config::tls::Suite>>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            max_message_size: 35 * 1024 * 1024,
            max_rcpt: 1000,
            max_mails: 100,
            max_command_line: 512,
            max_text_line: 0,
            max_sessions: 0,
            max_sessions_per_address: 50,
            max_connection_rate: 0,
            max_errors: 20,
            max_hops: 50,
            timeout: Duration::from_secs(300),
            sub_addr_delim: '+',
            max_auth_failures: 3,
            ciphers: None,
        }
    }
}

/// Limits of the control socket (`control ...`).
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// `control limit max-clients`: clients at once, local SMTP sessions included,
    /// default 128.
    pub max_clients: usize,
    /// `control limit max-clients-per-user`: clients at once with one user id, default 32.
    pub max_clients_per_user: usize,
    /// `control timeout`: how long a client may take to send its command line, default
    /// 10 s.
    pub timeout: Duration,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            max_clients: 128,
            max_clients_per_user: 32,
            timeout: Duration::from_secs(10),
        }
    }
}

/// One `listen on` statement, resolved to socket addresses.
#[derive(Debug, Clone)]
pub struct Listener {
    /// The addresses to bind.
    pub addrs: Vec<SocketAddr>,
    /// Name in greeting and Received headers, else [`Config::hostname`].
    pub hostname: Option<String>,
    /// `tag`, matched by `match tag`.
    pub tag: Option<String>,
    /// `filter NAME`: the chain its sessions go through.
    pub filter: Option<FilterId>,
    /// `tls`, `tls-require` or `smtps` and their settings.
    pub tls: Option<ListenerTls>,
    /// SMTP AUTH: `auth`, `auth-optional`, `senders`, `received-auth`.
    pub auth: ListenerAuth,
    /// `mask-src`, `no-dsn`, `hostnames`.
    pub options: SessionOptions,
    /// `proxy-v2`: every connection starts with a PROXY protocol header (haproxy's,
    /// version 1 or 2), whose source becomes the session's client.
    pub proxy_v2: bool,
}

/// Whether a listener offers SMTP AUTH (RFC 4954), and whether it requires it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// No AUTH.
    #[default]
    Off,
    /// `auth-optional`: offered; MAIL needs none.
    Optional,
    /// `auth`: offered; MAIL needs it.
    Required,
}

/// The SMTP AUTH settings of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenerAuth {
    /// Offered, required, or neither.
    pub mode: AuthMode,
    /// `auth <table>`: a credentials table (`user hash`); `None` for the system's
    /// accounts, checked by the privileged parent.
    pub table: Option<TableId>,
    /// `senders <table>`: the sender addresses each user may use.
    pub senders: Option<TableId>,
    /// `senders <table> masquerade`: the From header shows the sender.
    pub masquerade: bool,
    /// `received-auth`: the Received header names the user.
    pub received_auth: bool,
}

/// Index into [`Config::tables`].
pub type TableId = usize;
/// Index into [`Config::actions`].
pub use crate::mail::delivery::ActionId;

/// An `action` statement.
#[derive(Debug, Clone)]
pub struct ActionDef {
    /// Its name.
    pub name: String,
    /// How mail is delivered.
    pub method: Method,
    /// `alias <table>`.
    pub alias: Option<TableId>,
    /// `virtual <table>`.
    pub virtual_: Option<TableId>,
    /// `userbase <table>`.
    pub userbase: Option<TableId>,
    /// `user NAME`: deliver as this user.
    pub user: Option<String>,
    /// `ttl`: expiry of this action's envelopes.
    pub ttl: Option<Duration>,
    /// `wrapper NAME`: the `mda wrapper` the command runs under (already folded into
    /// the command of [`Method::Mda`]; kept for logs).
    pub wrapper: Option<String>,
}

/// Delivery method of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// `maildir [PATH] [junk]`.
    Maildir {
        /// The maildir, `~/Maildir` when absent.
        path: Option<String>,
        /// Move junk mail to the `.Junk` folder.
        junk: bool,
    },
    /// `mbox`.
    Mbox,
    /// `mda "COMMAND"`.
    Mda(String),
    /// `lmtp DEST [rcpt-to]`.
    Lmtp {
        /// `host:port` or a socket path.
        dest: String,
        /// Use the recipient address, not the user name, in RCPT TO.
        rcpt_to: bool,
    },
    /// `expand-only`: aliases only, no mailbox.
    ExpandOnly,
    /// `forward-only`: `.forward` files only.
    ForwardOnly,
    /// `relay [options]`.
    Relay(Box<crate::config::relay::Relay>),
}

impl Method {
    /// Whether this method delivers on this host (needs a known local user).
    pub fn is_local(&self) -> bool {
        !matches!(self, Method::Relay(_))
    }
}

/// A value or a table, as in `src 127.0.0.1` or `src <trusted>`, or regular expressions
/// (`regex PATTERN`, `regex <t>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Matcher {
    /// A literal.
    Value(String),
    /// A table.
    Table(TableId),
    /// POSIX extended regular expressions, any of which may match: the pattern given, or
    /// every key of a table as written.
    Regex(std::sync::Arc<Vec<crate::sys::regex::Regex>>),
}

impl Matcher {
    /// Whether `subject` matches: a literal or any key of a table by `test` (which
    /// compares a pattern with the subject as the condition's kind wants), regular
    /// expressions by a search in `subject` itself.
    pub fn holds(&self, tables: &[Table], subject: &str, test: impl Fn(&str) -> bool) -> bool {
        match self {
            Matcher::Value(v) => test(v),
            Matcher::Table(t) => tables.get(*t).is_some_and(|t| t.entries().keys().any(test)),
            Matcher::Regex(res) => res.iter().any(|re| re.is_match(subject)),
        }
    }
}

/// One condition of a `match` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    /// `from any`.
    FromAny,
    /// `from local`: loopback or local socket.
    FromLocal,
    /// `from socket`: the local socket only.
    FromSocket,
    /// `from src ADDR|<t>` (addresses or networks).
    FromSrc(Matcher),
    /// `from mail-from ADDR|<t>`.
    FromMailFrom(Matcher),
    /// `from rdns [NAME|<t>]`: the client has a reverse DNS name (that matches).
    FromRdns(Option<Matcher>),
    /// `for any`.
    ForAny,
    /// `for local`: the server's own names.
    ForLocal,
    /// `for domain DOMAIN|<t>`.
    ForDomain(Matcher),
    /// `for rcpt-to ADDR|<t>`.
    ForRcptTo(Matcher),
    /// `mail-from ADDR|<t>`.
    MailFrom(Matcher),
    /// `rcpt-to ADDR|<t>`.
    RcptTo(Matcher),
    /// `helo NAME|<t>`.
    Helo(Matcher),
    /// `tag TAG|<t>`.
    Tag(Matcher),
    /// `tls`: the session uses TLS.
    Tls,
    /// `from auth [USER|<t>]`: an authenticated session (as one of these users).
    FromAuth(Option<Matcher>),
    /// `auth [USER|<t>]`: likewise, beside another `from`.
    Auth(Option<Matcher>),
}

/// What a rule decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Deliver with this action.
    Action(ActionId),
    /// Refuse the recipient.
    Reject,
}

/// A `match` statement.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Conditions, each possibly negated; all must hold.
    pub conds: Vec<(bool, Cond)>,
    /// The decision when they do.
    pub decision: Decision,
    /// Line in the configuration, for logs.
    pub line: usize,
}
