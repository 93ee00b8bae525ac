//! Keys: private keys read from PEM files (RSA in PKCS#8 or PKCS#1, Ed25519 in
//! PKCS#8 as `openssl genpkey -algorithm ed25519` writes it), their DNS records, and
//! the public keys of records checked against signatures (ring does the arithmetic).

use crate::tags::Algorithm;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;
use smtpd::mail::base64;
use smtpd::tls::subject::element;

/// A private key to sign with.
pub enum SigningKey {
    /// RSA, 1024 bits or more (RFC 8301 asks for 2048 at least).
    Rsa(RsaKeyPair),
    /// Ed25519 (RFC 8463).
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SigningKey::Rsa(k) => write!(f, "Rsa({} bits)", k.public().modulus_len() * 8),
            SigningKey::Ed25519(_) => f.write_str("Ed25519"),
        }
    }
}

/// rsaEncryption, 1.2.840.113549.1.1.1, as DER content octets.
const RSA_OID: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

impl SigningKey {
    /// Reads the first private key of a PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, String> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
        match der {
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der())
                .map(SigningKey::Rsa)
                .map_err(|e| format!("RSA key refused: {e}")),
            PrivateKeyDer::Pkcs8(k) => {
                let der = k.secret_pkcs8_der();
                match RsaKeyPair::from_pkcs8(der) {
                    Ok(k) => Ok(SigningKey::Rsa(k)),
                    Err(rsa) => Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                        .map(SigningKey::Ed25519)
                        .map_err(|_| format!("neither an RSA nor an Ed25519 key ({rsa})")),
                }
            }
            PrivateKeyDer::Sec1(_) => Err("an EC key: DKIM signs with RSA or Ed25519".into()),
            _ => Err("an unknown kind of key".into()),
        }
    }

    /// Reads the key of a PEM file.
    pub fn load(path: &str) -> Result<SigningKey, String> {
        let pem = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
        SigningKey::from_pem(&pem).map_err(|e| format!("{path}: {e}"))
    }

    /// The signing algorithm of the key.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Rsa(_) => Algorithm::RsaSha256,
            SigningKey::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }

    /// Signs `data` (the canonical header fields, RFC 6376 §3.7): RSASSA-PKCS1-v1_5
    /// over SHA-256, or Ed25519 over the SHA-256 hash of `data` (RFC 8463 §3).
    pub fn sign(&self, data: &[u8]) -> Result<Vec<u8>, String> {
        match self {
            SigningKey::Rsa(k) => {
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    data,
                    &mut sig,
                )
                .map_err(|_| "RSA signing failed".to_string())?;
                Ok(sig)
            }
            SigningKey::Ed25519(k) => {
                let hash = ring::digest::digest(&ring::digest::SHA256, data);
                Ok(k.sign(hash.as_ref()).as_ref().to_vec())
            }
        }
    }

    /// The TXT record that publishes the public key (RFC 6376 §3.6.1): for RSA the
    /// SubjectPublicKeyInfo, as opendkim-genkey writes it; for Ed25519 the 32 bytes.
    pub fn dns_record(&self) -> String {
        match self {
            SigningKey::Rsa(k) => {
                let spki = rsa_spki(k.public_key().as_ref());
                format!("v=DKIM1; k=rsa; p={}", base64::encode(&spki))
            }
            SigningKey::Ed25519(k) => {
                format!(
                    "v=DKIM1; k=ed25519; p={}",
                    base64::encode(k.public_key().as_ref())
                )
            }
        }
    }
}

fn der_len(n: usize, out: &mut Vec<u8>) {
    if n < 128 {
        out.push(n as u8);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn der(tag: u8, content: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    der_len(content.len(), out);
    out.extend_from_slice(content);
}

/// SubjectPublicKeyInfo { rsaEncryption NULL, BIT STRING RSAPublicKey }.
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    let mut alg = Vec::new();
    der(0x06, RSA_OID, &mut alg);
    alg.extend_from_slice(&[0x05, 0x00]);
    let mut bits = vec![0u8];
    bits.extend_from_slice(rsa_public_key);
    let mut body = Vec::new();
    der(0x30, &alg, &mut body);
    der(0x03, &bits, &mut body);
    let mut out = Vec::new();
    der(0x30, &body, &mut out);
    out
}

/// The RSAPublicKey of a `p=` value: inside a SubjectPublicKeyInfo (what everyone
/// publishes), or given bare (RFC 6376 §3.6.1 says RSAPublicKey; some do that).
fn rsa_public_key(p: &[u8]) -> Option<&[u8]> {
    let (tag, seq, rest) = element(p)?;
    if tag != 0x30 || !rest.is_empty() {
        return None;
    }
    let (t1, first, after) = element(seq)?;
    match t1 {
        // RSAPublicKey: INTEGER modulus, INTEGER exponent.
        0x02 => Some(p),
        // AlgorithmIdentifier, then the BIT STRING.
        0x30 => {
            let (oid_tag, oid, _) = element(first)?;
            if oid_tag != 0x06 || oid != RSA_OID {
                return None;
            }
            let (bt, bits, end) = element(after)?;
            if bt != 0x03 || !end.is_empty() {
                return None;
            }
            let (&unused, key) = bits.split_first()?;
            (unused == 0).then_some(key)
        }
        _ => None,
    }
}

/// Checks `sig` over `data` with the public key of a key record, for `alg`; an error
/// says why the key is unusable (`Err`) — a signature that does not match is
/// `Ok(false)`.
pub fn verify(alg: Algorithm, public_key: &[u8], data: &[u8], sig: &[u8]) -> Result<bool, String> {
    match alg {
        Algorithm::RsaSha256 => {
            let key = rsa_public_key(public_key).ok_or("the key is not an RSA public key")?;
            // RFC 8301 §3.2: keys of 1024 bits or more are accepted.
            let k = UnparsedPublicKey::new(
                &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
                key,
            );
            Ok(k.verify(data, sig).is_ok())
        }
        Algorithm::Ed25519Sha256 => {
            if public_key.len() != 32 {
                return Err("the key is not an Ed25519 public key".into());
            }
            let hash = ring::digest::digest(&ring::digest::SHA256, data);
            let k = UnparsedPublicKey::new(&signature::ED25519, public_key);
            Ok(k.verify(hash.as_ref(), sig).is_ok())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 2048-bit RSA key in PKCS#8 (made with `openssl genpkey`, for tests only).
    pub(crate) const RSA_PKCS8: &str = include_str!("../tests/keys/rsa2048.pem");
    /// The same key in PKCS#1 (`openssl rsa -traditional`).
    pub(crate) const RSA_PKCS1: &str = include_str!("../tests/keys/rsa2048-pkcs1.pem");
    /// An Ed25519 key (`openssl genpkey -algorithm ed25519`).
    pub(crate) const ED25519: &str = include_str!("../tests/keys/ed25519.pem");
    /// Its TXT record, from `openssl pkey -pubout` (the last 32 bytes of the DER).
    pub(crate) const ED25519_RECORD: &str = include_str!("../tests/keys/ed25519.txt");
    /// The RSA key's TXT record, from `openssl rsa -pubout` (SubjectPublicKeyInfo).
    pub(crate) const RSA_RECORD: &str = include_str!("../tests/keys/rsa2048.txt");

    #[test]
    fn keys_load_and_publish_what_openssl_publishes() {
        let k8 = SigningKey::from_pem(RSA_PKCS8.as_bytes()).unwrap();
        let k1 = SigningKey::from_pem(RSA_PKCS1.as_bytes()).unwrap();
        assert_eq!(k8.algorithm(), Algorithm::RsaSha256);
        assert_eq!(k8.dns_record(), k1.dns_record());
        assert_eq!(k8.dns_record(), RSA_RECORD.trim());
        let ed = SigningKey::from_pem(ED25519.as_bytes()).unwrap();
        assert_eq!(ed.algorithm(), Algorithm::Ed25519Sha256);
        assert_eq!(ed.dns_record(), ED25519_RECORD.trim());
        assert!(SigningKey::from_pem(b"not a key").is_err());
        let cert_only = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(SigningKey::from_pem(cert_only.as_bytes()).is_err());
    }

    #[test]
    fn signatures_verify_with_the_published_keys() {
        for (pem, record) in [(RSA_PKCS8, RSA_RECORD), (ED25519, ED25519_RECORD)] {
            let k = SigningKey::from_pem(pem.as_bytes()).unwrap();
            let sig = k.sign(b"data").unwrap();
            let rec = crate::tags::KeyRecord::parse(record.trim()).unwrap();
            let alg = k.algorithm();
            assert_eq!(verify(alg, &rec.public_key, b"data", &sig), Ok(true));
            assert_eq!(verify(alg, &rec.public_key, b"other", &sig), Ok(false));
        }
        // The bare RSAPublicKey is taken too; garbage is not a key.
        let k = SigningKey::from_pem(RSA_PKCS8.as_bytes()).unwrap();
        let SigningKey::Rsa(pair) = &k else {
            unreachable!()
        };
        let sig = k.sign(b"x").unwrap();
        assert_eq!(
            verify(Algorithm::RsaSha256, pair.public_key().as_ref(), b"x", &sig),
            Ok(true)
        );
        assert!(verify(Algorithm::RsaSha256, b"\x30\x03\x01\x01\x00", b"x", &sig).is_err());
        assert!(verify(Algorithm::Ed25519Sha256, &[0; 31], b"x", &sig).is_err());
    }
}
