//! Certificates made for the tests (ECDSA P-256 keys), and a pair of rustls
//! connections that hand their records to each other in memory.

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use std::sync::Arc;

/// A certificate and its key.
pub(crate) struct Issued {
    pub cert: Certificate,
    pub key: KeyPair,
}

impl Issued {
    /// The certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// The key, PKCS#8.
    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }

    /// A store with this certificate as its one anchor.
    pub fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.der()).unwrap();
        Arc::new(roots)
    }
}

fn params(cn: &str, names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(names).unwrap();
    p.distinguished_name.push(DnType::CommonName, cn);
    p
}

/// A CA certificate, self-signed.
pub(crate) fn ca(cn: &str) -> Issued {
    let mut p = params(cn, &[]);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    Issued { cert, key }
}

/// A server certificate for `names`, issued by `by` (self-signed without), valid
/// now, or only in the year 2000 when `expired`.
pub(crate) fn leaf(names: &[&str], by: Option<&Issued>, expired: bool) -> Issued {
    let mut p = params(names.first().copied().unwrap_or("leaf"), names);
    if expired {
        p.not_before = date_time_ymd(2000, 1, 1);
        p.not_after = date_time_ymd(2000, 12, 31);
    }
    let key = KeyPair::generate().unwrap();
    let cert = match by {
        Some(ca) => p.signed_by(&key, &ca.cert, &ca.key).unwrap(),
        None => p.self_signed(&key).unwrap(),
    };
    Issued { cert, key }
}

/// A server configuration presenting `chain` (the leaf first) with `key`, speaking
/// `versions`.
pub(crate) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ServerConfig> {
    let provider = Arc::new(super::provider(&crate::config::tls::Suite::ALL));
    let cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    Arc::new(cfg)
}

/// Feeds `bytes` to `conn` and processes them.
fn feed(conn: &mut rustls::Connection, mut bytes: &[u8]) -> Result<(), rustls::Error> {
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes).unwrap();
        conn.process_new_packets()?;
    }
    Ok(())
}

/// The records `conn` wants to send.
fn drain(conn: &mut rustls::Connection) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Runs the handshake of `client` and `server` in memory. The error is the
/// client's, else the server's, with its side named.
pub(crate) fn handshake(
    client: ClientConnection,
    server: ServerConnection,
) -> (rustls::Connection, rustls::Connection, Result<(), String>) {
    let mut c = rustls::Connection::Client(client);
    let mut s = rustls::Connection::Server(server);
    for _ in 0..20 {
        let to_server = drain(&mut c);
        if let Err(e) = feed(&mut s, &to_server) {
            // The server's alert tells the client.
            let alert = drain(&mut s);
            let _ = feed(&mut c, &alert);
            return (c, s, Err(format!("server: {e}")));
        }
        let to_client = drain(&mut s);
        if let Err(e) = feed(&mut c, &to_client) {
            return (c, s, Err(format!("client: {e}")));
        }
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() {
            return (c, s, Ok(()));
        }
    }
    (c, s, Err("the handshake does not end".into()))
}
