//! TLS for the SMTP server (rustls with the ring provider; TLS 1.2 and 1.3 only).
//!
//! [`load`] reads every `pki` certificate and key and the CA bundles, and builds one
//! rustls `ServerConfig` per TLS listener. It runs in the privileged process before
//! the engine is forked (keys are often readable by root only): the engine receives
//! the parsed keys in memory and never opens a key file. `smtpd -n` runs it too, so
//! a missing file or a key that does not match its certificate is reported as
//! `FILE:LINE: message` before the daemon starts.
//!
//! `stream.rs` is the record layer under a session's line buffers, `sni.rs` the choice
//! of certificate by server name, `subject.rs` the peer certificate's subject.
//!
//! The client side, towards other mail servers, is `client.rs` (its configuration per
//! action, the certificate checks: opportunistic, PKIX, DANE) and `dane.rs` (TLSA
//! records against a chain, RFC 7672).

pub mod client;
pub mod dane;
pub mod sni;
pub mod stream;
pub mod subject;
#[cfg(test)]
pub(crate) mod testcerts;

use crate::config::model::{Config, ListenerTls, Pki, Place, SYSTEM_CA_BUNDLE};
use crate::config::tls::{Suite, TlsVersion};
use crate::config::ConfigError;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{CipherSuite, RootCertStore, ServerConfig, SupportedProtocolVersion};
use std::path::Path;
use std::sync::Arc;

/// The TLS configuration of each listener, by index in `Config::listeners`.
#[derive(Debug, Clone, Default)]
pub struct TlsSetup {
    /// `None` for a listener without TLS.
    pub listeners: Vec<Option<Arc<ServerConfig>>>,
    /// The client side of each relay action, by action name.
    pub relays: std::collections::HashMap<String, Arc<client::ClientTls>>,
}

impl TlsSetup {
    /// The configuration of listener `idx`, if it speaks TLS.
    pub fn listener(&self, idx: usize) -> Option<Arc<ServerConfig>> {
        self.listeners.get(idx).cloned().flatten()
    }
}

/// The rustls identifier of one of our suites.
pub fn suite_id(s: Suite) -> CipherSuite {
    match s {
        Suite::Tls13Aes256Gcm => CipherSuite::TLS13_AES_256_GCM_SHA384,
        Suite::Tls13Aes128Gcm => CipherSuite::TLS13_AES_128_GCM_SHA256,
        Suite::Tls13Chacha20 => CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        Suite::EcdheEcdsaAes256Gcm => CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        Suite::EcdheEcdsaAes128Gcm => CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        Suite::EcdheEcdsaChacha20 => CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        Suite::EcdheRsaAes256Gcm => CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        Suite::EcdheRsaAes128Gcm => CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        Suite::EcdheRsaChacha20 => CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    }
}

/// Our suite for a rustls identifier.
pub fn suite_of(id: CipherSuite) -> Option<Suite> {
    Suite::ALL.iter().copied().find(|s| suite_id(*s) == id)
}

/// The ring provider limited to `suites`, in that order of preference.
///
/// rustls marks ring's provider deprecated for its want of post-quantum key exchange;
/// ring is chosen all the same (a small build of C and assembly, no C++ or CMake), and
/// key exchange stays X25519, P-256 and P-384.
#[allow(deprecated)]
fn provider(suites: &[Suite]) -> CryptoProvider {
    let base = rustls::crypto::ring::default_provider();
    let cipher_suites = suites
        .iter()
        .filter_map(|s| {
            base.cipher_suites
                .iter()
                .find(|c| c.suite() == suite_id(*s))
                .copied()
        })
        .collect();
    CryptoProvider {
        cipher_suites,
        ..base
    }
}

/// A PEM file's certificates.
fn read_certs(
    path: &Path,
    place: &Place,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let fail = |m: String| place.err(format!("{what}: {}: {m}", path.display()));
    let pem = crate::files::read(path).map_err(|e| fail(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(pem_error(e)))?;
    if certs.is_empty() {
        return Err(fail("no certificate in the file".into()));
    }
    Ok(certs)
}

fn pem_error(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM section found".into(),
        e => e.to_string(),
    }
}

/// A pki's certificate chain and key, checked to belong together.
fn load_pki(p: &Pki, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, ConfigError> {
    let what = format!("pki {}", p.name);
    let (Some((cert, cert_at)), Some((key, key_at))) = (&p.cert, &p.key) else {
        return Err(p.place.err(format!("{what}: needs a cert and a key")));
    };
    let chain = read_certs(cert, cert_at, &what)?;
    let key_err = |m: String| key_at.err(format!("{what}: {}: {m}", key.display()));
    let pem = crate::files::read(key).map_err(|e| key_err(e.to_string()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| key_err(pem_error(e)))?;
    CertifiedKey::from_der(chain, key_der, provider)
        .map(Arc::new)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => key_at.err(format!(
                "{what}: the key in {} does not match the certificate in {}",
                key.display(),
                cert.display()
            )),
            e => key_at.err(format!("{what}: {}: {e}", key.display())),
        })
}

/// The trust anchors of a CA bundle.
fn load_roots(path: &Path, place: &Place, what: &str) -> Result<Arc<RootCertStore>, ConfigError> {
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(read_certs(path, place, what)?);
    if added == 0 {
        return Err(place.err(format!(
            "{what}: {}: no usable CA certificate",
            path.display()
        )));
    }
    Ok(Arc::new(roots))
}

/// Reads every pki and CA bundle of `cfg` and builds each TLS listener's
/// configuration. Errors name the statement (`FILE:LINE`) that gave the file.
pub fn load(cfg: &Config) -> Result<TlsSetup, ConfigError> {
    let all = provider(&Suite::ALL);
    let keys = cfg
        .pkis
        .iter()
        .map(|p| load_pki(p, &all))
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<String> = cfg.pkis.iter().map(|p| p.name.clone()).collect();
    let mut out = TlsSetup::default();
    for l in &cfg.listeners {
        let Some(t) = &l.tls else {
            out.listeners.push(None);
            continue;
        };
        out.listeners
            .push(Some(listener_config(cfg, t, &names, &keys)?));
    }
    for a in &cfg.actions {
        if let crate::config::Method::Relay(r) = &a.method {
            out.relays
                .insert(a.name.clone(), Arc::new(relay_config(cfg, &a.name, r)?));
        }
    }
    Ok(out)
}

/// The client TLS of relay action `name`. Without a `ca`, the system bundle is used
/// when there is one; a machine without it still relays (opportunistic TLS records
/// every certificate as unverified), and says so.
fn relay_config(
    cfg: &Config,
    name: &str,
    r: &crate::config::relay::Relay,
) -> Result<client::ClientTls, ConfigError> {
    let place = Place {
        file: cfg.path.display().to_string(),
        line: 0,
    };
    match client::load(cfg, &r.protocols, &r.ciphers, r.ca, r.pki, &place) {
        Ok(c) => Ok(c),
        Err(e) if r.ca.is_none() && !Path::new(SYSTEM_CA_BUNDLE).exists() => {
            log::warn!("action {name:?}: no CA bundle at {SYSTEM_CA_BUNDLE}: no server certificate can be verified ({e})");
            let roots = Arc::new(RootCertStore::empty());
            let cert = match r.pki.and_then(|i| cfg.pkis.get(i)) {
                Some(p) => Some(load_pki(p, &provider(&Suite::ALL))?),
                None => None,
            };
            client::ClientTls::new(&r.protocols, &r.ciphers, roots, cert).map_err(|e| place.err(e))
        }
        Err(e) => Err(e),
    }
}

fn listener_config(
    cfg: &Config,
    t: &ListenerTls,
    names: &[String],
    keys: &[Arc<CertifiedKey>],
) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = Arc::new(provider(&t.ciphers));
    let versions: Vec<&'static SupportedProtocolVersion> = t
        .protocols
        .iter()
        .map(|v| match v {
            TlsVersion::V12 => &rustls::version::TLS12,
            TlsVersion::V13 => &rustls::version::TLS13,
        })
        .collect();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| t.place.err(format!("TLS settings: {e}")))?;
    let builder = if t.verify {
        let roots = match t.ca.and_then(|i| cfg.cas.get(i)) {
            Some(ca) => load_roots(&ca.cert, &ca.place, &format!("ca {}", ca.name))?,
            None => load_roots(Path::new(SYSTEM_CA_BUNDLE), &t.place, "verify")?,
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|e| t.place.err(format!("verify: {e}")))?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let default = t.pkis.first().copied().unwrap_or(0);
    let resolver = sni::SniResolver::new(names.to_vec(), keys.to_vec(), default);
    let mut sc = builder.with_cert_resolver(Arc::new(resolver));
    // The server's order of preference decides, as OpenSMTPD's does.
    sc.ignore_client_order = true;
    Ok(Arc::new(sc))
}
