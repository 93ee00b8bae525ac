//! The model of a `relay` action: where its mail goes (a smarthost, a table of them by
//! domain, or the recipient domain's mail exchangers) and how (TLS, DANE, MTA-STS,
//! credentials, source address, names).

use super::model::{CaId, Matcher, PkiId, TableId};
use super::tls::{Suite, TlsVersion};
use crate::nexthop::RelayUrl;

/// What TLS a relay action demands beyond its URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RelayTls {
    /// Nothing more: STARTTLS when offered (or as the URL's scheme says).
    #[default]
    Default,
    /// `tls`: TLS or no delivery, the certificate verified for the server's name.
    Verify,
    /// `tls no-verify`: TLS or no delivery, any certificate.
    NoVerify,
}

/// The options of a `relay` action.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Relay {
    /// `host URL`: every recipient goes to this smarthost.
    pub host: Option<RelayUrl>,
    /// `domain <t>`: the smarthost URL of each recipient domain; the domain's mail
    /// exchangers when it has none.
    pub domain: Option<TableId>,
    /// `backup`, `backup mx NAME`: this host is a backup MX named NAME (the host name
    /// when `None`); only exchangers preferred to it are tried.
    pub backup: Option<Option<String>>,
    /// `helo NAME`: the name given in EHLO/HELO.
    pub helo: Option<String>,
    /// `helo-src <t>`: the name given in EHLO/HELO for each source address.
    pub helo_src: Option<TableId>,
    /// `src ADDR|<t>`: the source address(es) of the connections.
    pub src: Option<Matcher>,
    /// `mail-from ADDR`: the MAIL FROM sent instead of the envelope's sender.
    pub mail_from: Option<String>,
    /// `tls`, `tls no-verify`.
    pub tls: RelayTls,
    /// `auth <t>`: credentials by the URL's label, `label user:password`.
    pub auth: Option<TableId>,
    /// `pki NAME`: the client certificate shown to servers that ask for one.
    pub pki: Option<PkiId>,
    /// `ca NAME`: the roots certificates are verified against; the system's when `None`.
    pub ca: Option<CaId>,
    /// `protocols`, default TLS 1.2 and 1.3.
    pub protocols: Vec<TlsVersion>,
    /// `ciphers`, default every suite.
    pub ciphers: Vec<Suite>,
    /// DANE (RFC 7672) for mail exchangers with authenticated TLSA records; `no-dane`
    /// turns it off.
    pub dane: bool,
    /// MTA-STS (RFC 8461) for recipient domains that publish a policy; `no-mta-sts`
    /// turns it off.
    pub mta_sts: bool,
    /// `srs`: the sender of forwarded mail is rewritten with the Sender Rewriting
    /// Scheme (`srs.rs`).
    pub srs: bool,
}

impl Relay {
    /// A relay action with OpenSMTPD's defaults: MX delivery, opportunistic STARTTLS,
    /// DANE and MTA-STS on.
    pub fn new() -> Relay {
        Relay {
            protocols: TlsVersion::ALL.to_vec(),
            ciphers: Suite::ALL.to_vec(),
            dane: true,
            mta_sts: true,
            ..Relay::default()
        }
    }
}

/// Limits of outgoing connections (`mta limit`), for every destination or for one
/// domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtaLimits {
    /// `max-conn-per-route`: connections at once to one destination (a domain's
    /// exchangers, a smarthost), default 10.
    pub max_conn_per_route: usize,
    /// `max-conn-per-host`: connections at once to one address, default 10.
    pub max_conn_per_host: usize,
    /// `session-mail-max`: messages one connection carries at most, default 100.
    pub session_mail_max: usize,
}

impl Default for MtaLimits {
    fn default() -> Self {
        MtaLimits {
            max_conn_per_route: 10,
            max_conn_per_host: 10,
            session_mail_max: 100,
        }
    }
}

/// The `mta` statements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MtaConfig {
    /// `mta max-deferred`: envelopes deferred for a destination that are tried again at
    /// once when a delivery there succeeds, default 100.
    pub max_deferred: usize,
    /// `mta limit ...`.
    pub limits: MtaLimits,
    /// `mta limit for domain D ...`: the limits of the destinations of one domain.
    pub domains: Vec<(String, MtaLimits)>,
    /// `mta timeout`: how long an outgoing session may go without a byte from or to
    /// its server, default 300 s.
    pub timeout: std::time::Duration,
}

impl Default for MtaConfig {
    fn default() -> Self {
        MtaConfig {
            max_deferred: 100,
            limits: MtaLimits::default(),
            domains: Vec::new(),
            timeout: std::time::Duration::from_secs(300),
        }
    }
}

impl MtaConfig {
    /// The limits for a destination domain (`None`: a smarthost's, the defaults).
    pub fn limits_for(&self, domain: Option<&str>) -> MtaLimits {
        domain
            .and_then(|d| {
                self.domains
                    .iter()
                    .find(|(n, _)| crate::mail::idna::same_domain(n, d))
                    .map(|(_, l)| *l)
            })
            .unwrap_or(self.limits)
    }
}
