//! The client's TLS configuration: rustls with ring, no session resumption, and a
//! certificate verifier for the benchmark's self-signed certificate.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::ring::kx_group;
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

use crate::Error;

/// The server name the client asks for (SNI); the benchmark's certificate and every
/// server's certificate name are this name.
pub const SERVER_NAME: &str = "mx.bench.local";

/// Accepts any certificate (the benchmark's is self-signed), but checks the handshake
/// signature with the certificate's key: the server must hold the key it presents.
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// What every connection of the load generators uses: the TLS configuration and the
/// server name.
#[derive(Clone)]
pub struct Client {
    /// rustls client configuration (TLS 1.3 and 1.2, resumption disabled).
    pub config: Arc<ClientConfig>,
    /// The server name sent in the ClientHello.
    pub name: ServerName<'static>,
}

impl Client {
    /// A configuration that makes a full handshake on every connection: no session
    /// tickets or session IDs are kept or offered. rustls marks ring's provider
    /// deprecated for want of post-quantum key exchange; smtpd uses it too, and the
    /// servers compared offer X25519 first.
    #[allow(deprecated)]
    pub fn new() -> Result<Client, Error> {
        // ring's provider prefers P-384; clients (OpenSSL's, browsers) offer X25519
        // first, then P-256: so does this one
        let provider = Arc::new(CryptoProvider {
            kx_groups: vec![kx_group::X25519, kx_group::SECP256R1, kx_group::SECP384R1],
            ..ring::default_provider()
        });
        let verifier = AnyCertificate {
            algorithms: provider.signature_verification_algorithms,
        };
        let mut config = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        config.resumption = Resumption::disabled();
        let name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| Error(format!("server name {SERVER_NAME}: {e}")))?;
        Ok(Client {
            config: Arc::new(config),
            name,
        })
    }
}
