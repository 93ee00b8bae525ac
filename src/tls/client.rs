//! TLS towards other mail servers: the client side of STARTTLS (RFC 3207) and of
//! implicit TLS (RFC 8314), and of the HTTPS fetch of MTA-STS policies.
//!
//! [`ClientTls`] is an action's configuration, built before the fork like the
//! server's ([`load`]): protocol versions and cipher suites (the `protocols` and
//! `ciphers` words of smtpd.conf), the trust anchors (a `ca` bundle or the system
//! one), and the certificate of a `pki` to show when a server asks for one.
//!
//! [`client_conn`] starts one connection and says how the server is to be
//! authenticated ([`Verify`]):
//!
//! - opportunistic: any certificate is accepted, since the alternative is plain
//!   text; whether it would have passed the PKIX check (a chain to the roots, one of
//!   the names) is recorded for the log (`verified=yes|no`);
//! - PKIX: the chain must reach the roots and the certificate be valid for one of
//!   the names (the MX host; for MTA-STS, RFC 8461 §4.2 and §3.3, the MX host or
//!   the policy host, under the action's roots: the system's unless it has a `ca`);
//! - DANE (RFC 7672): the TLSA records of the MX host (see `dane.rs`); a set without
//!   a usable record asks for encryption only.
//!
//! In every mode the handshake's signature is checked against the server's key with
//! the ring provider's algorithms, so a server must hold the key of the certificate
//! it shows. A refused certificate fails the handshake with a reason for the log.
//!
//! Sessions are never resumed: a resumed session skips the certificate check, so a
//! session made under one policy could stand in for the check of a stricter one, and
//! the log could not tell whether it verified.
//!
//! After the handshake, [`TlsClientFacts`] says what was negotiated and how the
//! server was authenticated.

use super::dane::{self, DaneMatch, Tlsa};
use super::subject::subject_line;
use super::{load_pki, load_roots, provider, suite_of};
use crate::config::model::{CaId, Config, PkiId, Place, SYSTEM_CA_BUNDLE};
use crate::config::tls::{Suite, TlsVersion};
use crate::config::ConfigError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, ResolvesClientCert, Resumption};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, CommonState, DigitallySignedStruct,
    OtherError, ProtocolVersion, RootCertStore, SignatureScheme, SupportedProtocolVersion,
};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// How the server of one connection is to be authenticated.
#[derive(Debug, Clone)]
pub enum Verify {
    /// Opportunistic TLS: any certificate is accepted; whether it passes the PKIX
    /// check against the configuration's roots for one of `names` is recorded.
    Opportunistic {
        /// The names the certificate would be checked for (the MX host).
        names: Vec<String>,
    },
    /// The certificate must chain to `roots` (the configuration's when `None`) and be
    /// valid for one of `names`.
    Pkix {
        /// The trust anchors; `None` for those of the [`ClientTls`].
        roots: Option<Arc<RootCertStore>>,
        /// The acceptable names (the MX host).
        names: Vec<String>,
    },
    /// DANE (RFC 7672): the certificate must match one of the usable records of
    /// `tlsa`; without a usable record, any certificate is accepted (encryption
    /// only, §2.2).
    Dane {
        /// The TLSA RRset of the MX host, as DNS gave it.
        tlsa: Vec<Tlsa>,
        /// The reference names of DANE-TA: the TLSA base domain and the next-hop
        /// domain.
        names: Vec<String>,
    },
}

/// How the server of an established session was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// Not at all: opportunistic TLS whose PKIX check failed, or DANE without a
    /// usable record.
    No,
    /// By PKIX: a chain to the roots, the name.
    Pkix,
    /// By a DANE-EE record.
    DaneEe,
    /// By a DANE-TA record, the chain and the name.
    DaneTa,
}

impl Verified {
    /// The word of the log: `no`, `pkix`, `dane-ee`, `dane-ta`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verified::No => "no",
            Verified::Pkix => "pkix",
            Verified::DaneEe => "dane-ee",
            Verified::DaneTa => "dane-ta",
        }
    }

    /// Whether the server was authenticated at all.
    pub fn is_verified(self) -> bool {
        self != Verified::No
    }

    fn from_u8(v: u8) -> Verified {
        match v {
            1 => Verified::Pkix,
            2 => Verified::DaneEe,
            3 => Verified::DaneTa,
            _ => Verified::No,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Verified::No => 0,
            Verified::Pkix => 1,
            Verified::DaneEe => 2,
            Verified::DaneTa => 3,
        }
    }
}

/// Where the verifier of one connection records how the server was authenticated;
/// read it once the handshake is done.
#[derive(Debug, Clone, Default)]
pub struct Outcome(Arc<AtomicU8>);

impl Outcome {
    /// How the server was authenticated; [`Verified::No`] before the handshake.
    pub fn verified(&self) -> Verified {
        Verified::from_u8(self.0.load(Ordering::Relaxed))
    }

    fn set(&self, v: Verified) {
        self.0.store(v.to_u8(), Ordering::Relaxed);
    }
}

/// The client TLS configuration of an action.
#[derive(Debug, Clone)]
pub struct ClientTls {
    /// Versions, suites and client certificate; the verifier is replaced for each
    /// connection.
    base: ClientConfig,
    /// The trust anchors of PKIX checks.
    roots: Arc<RootCertStore>,
    /// The ring provider's signature algorithms.
    algs: WebPkiSupportedAlgorithms,
}

impl ClientTls {
    /// A configuration offering `versions` and `suites` (in that order of
    /// preference), trusting `roots`, and showing `cert` to a server that asks for a
    /// client certificate. Fails when no suite fits the versions.
    pub fn new(
        versions: &[TlsVersion],
        suites: &[Suite],
        roots: Arc<RootCertStore>,
        cert: Option<Arc<CertifiedKey>>,
    ) -> Result<ClientTls, String> {
        let provider = Arc::new(provider(suites));
        let algs = provider.signature_verification_algorithms;
        let versions: Vec<&'static SupportedProtocolVersion> = versions
            .iter()
            .map(|v| match v {
                TlsVersion::V12 => &rustls::version::TLS12,
                TlsVersion::V13 => &rustls::version::TLS13,
            })
            .collect();
        let verifier = Arc::new(Verifier {
            mode: Mode::Opportunistic { names: Vec::new() },
            roots: roots.clone(),
            algs,
            outcome: Outcome::default(),
        });
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&versions)
            .map_err(|e| format!("TLS settings: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut base = match cert {
            Some(key) => builder.with_client_cert_resolver(Arc::new(ClientCert(key))),
            None => builder.with_no_client_auth(),
        };
        base.resumption = Resumption::disabled();
        Ok(ClientTls { base, roots, algs })
    }

    /// The trust anchors of PKIX checks.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }
}

/// Reads the files of an action's client TLS: the `ca` bundle (the system bundle
/// when `None`) and the `pki` whose certificate is shown to servers that ask for
/// one. Runs before the fork, as root, like [`super::load`]; errors name `place`
/// (the action) or the statement that gave the file.
pub fn load(
    cfg: &Config,
    protocols: &[TlsVersion],
    ciphers: &[Suite],
    ca: Option<CaId>,
    pki: Option<PkiId>,
    place: &Place,
) -> Result<ClientTls, ConfigError> {
    let roots = match ca.and_then(|i| cfg.cas.get(i)) {
        Some(ca) => load_roots(&ca.cert, &ca.place, &format!("ca {}", ca.name))?,
        None => system_roots(place)?,
    };
    let cert = match pki.and_then(|i| cfg.pkis.get(i)) {
        Some(p) => Some(load_pki(p, &provider(&Suite::ALL))?),
        None => None,
    };
    ClientTls::new(protocols, ciphers, roots, cert).map_err(|e| place.err(e))
}

/// The trust anchors of the system bundle: those of an action without a `ca`, which
/// MTA-STS checks against too (RFC 8461 §4.2, §3.3).
pub fn system_roots(place: &Place) -> Result<Arc<RootCertStore>, ConfigError> {
    load_roots(Path::new(SYSTEM_CA_BUNDLE), place, "CA bundle")
}

/// Starts the client side of a handshake: the ClientHello is queued at once, the
/// caller writes it. `sni` is the name sent in the server name extension (the MX
/// host, or the TLSA base domain with DANE, RFC 7672 §8.1); `None` sends none.
pub fn client_conn(
    cfg: &ClientTls,
    sni: Option<&str>,
    verify: Verify,
) -> Result<(ClientConnection, Outcome), String> {
    let outcome = Outcome::default();
    let mode = match verify {
        Verify::Opportunistic { names } => Mode::Opportunistic { names },
        Verify::Pkix { roots, names } => Mode::Pkix {
            roots: roots.unwrap_or_else(|| cfg.roots.clone()),
            names,
        },
        Verify::Dane { tlsa, names } if dane::any_usable(&tlsa) => Mode::Dane { tlsa, names },
        Verify::Dane { .. } => Mode::EncryptOnly,
    };
    let verifier = Verifier {
        mode,
        roots: cfg.roots.clone(),
        algs: cfg.algs,
        outcome: outcome.clone(),
    };
    let mut config = cfg.base.clone();
    config
        .dangerous()
        .set_certificate_verifier(Arc::new(verifier));
    let name = match sni {
        Some(n) => ServerName::try_from(n.trim_end_matches('.').to_string())
            .map_err(|e| format!("server name {n}: {e}"))?,
        None => {
            config.enable_sni = false;
            ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into())
        }
    };
    let conn = ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    Ok((conn, outcome))
}

/// What an established client session is, for the log, the Received header and the
/// filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientFacts {
    /// The protocol version, as OpenSSL names it (`TLSv1.3`).
    pub version: &'static str,
    /// The cipher suite's IANA name (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`).
    pub cipher: &'static str,
    /// The cipher suite as OpenSSL names it (`ECDHE-RSA-AES128-GCM-SHA256`), as the
    /// server side logs it.
    pub openssl_cipher: &'static str,
    /// The strength of the bulk cipher in bits.
    pub bits: u16,
    /// How the server was authenticated.
    pub verified: Verified,
    /// The subject of the server's certificate (`/CN=mx.example.org`).
    pub peer_subject: Option<String>,
}

impl TlsClientFacts {
    /// The facts of the session `tls` whose verifier recorded in `outcome`; `None`
    /// during the handshake.
    pub fn of(tls: &CommonState, outcome: &Outcome) -> Option<TlsClientFacts> {
        if tls.is_handshaking() {
            return None;
        }
        let version = match tls.protocol_version()? {
            ProtocolVersion::TLSv1_3 => "TLSv1.3",
            ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "unknown",
        };
        let suite = tls
            .negotiated_cipher_suite()
            .and_then(|s| suite_of(s.suite()));
        Some(TlsClientFacts {
            version,
            cipher: suite.map_or("unknown", |s| s.iana_name()),
            openssl_cipher: suite.map_or("unknown", |s| s.name()),
            bits: suite.map_or(0, |s| s.bits()),
            verified: outcome.verified(),
            peer_subject: tls
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| subject_line(c).unwrap_or_default()),
        })
    }
}

/// The certificate of the action's `pki`, shown whenever a server asks.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The check of one connection, [`Verify`] with its roots resolved.
#[derive(Debug)]
enum Mode {
    Opportunistic {
        names: Vec<String>,
    },
    Pkix {
        roots: Arc<RootCertStore>,
        names: Vec<String>,
    },
    Dane {
        tlsa: Vec<Tlsa>,
        names: Vec<String>,
    },
    /// DANE without a usable record.
    EncryptOnly,
}

/// The certificate verifier of one connection.
#[derive(Debug)]
struct Verifier {
    mode: Mode,
    /// The configuration's roots, for the opportunistic check.
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    outcome: Outcome,
}

/// A refusal, told to rustls and so to the log.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused(why: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(why)))))
}

/// The PKIX check: a chain from `leaf` through `intermediates` to `roots`, within
/// the dates, for server authentication, and valid for one of `names`.
fn pkix(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &RootCertStore,
    names: &[String],
    now: UnixTime,
    algs: &WebPkiSupportedAlgorithms,
) -> Result<(), rustls::Error> {
    let parsed = ParsedCertificate::try_from(leaf)?;
    verify_server_cert_signed_by_trust_anchor(&parsed, roots, intermediates, now, algs.all)?;
    dane::valid_for_any(&parsed, names).map_err(refused)
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = match &self.mode {
            Mode::Opportunistic { names } => {
                match pkix(leaf, intermediates, &self.roots, names, now, &self.algs) {
                    Ok(()) => Verified::Pkix,
                    Err(_) => Verified::No,
                }
            }
            Mode::Pkix { roots, names } => {
                pkix(leaf, intermediates, roots, names, now, &self.algs)?;
                Verified::Pkix
            }
            Mode::Dane { tlsa, names } => {
                match dane::check(leaf, intermediates, tlsa, names, now, self.algs.all) {
                    Ok(DaneMatch::Ee) => Verified::DaneEe,
                    Ok(DaneMatch::Ta) => Verified::DaneTa,
                    Err(e) => return Err(refused(format!("DANE: {e}"))),
                }
            }
            Mode::EncryptOnly => Verified::No,
        };
        self.outcome.set(verified);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
