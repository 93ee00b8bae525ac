//! DANE for SMTP (RFC 7672): the TLSA records of an MX host against the certificate
//! chain its server presents.
//!
//! Only two certificate usages are usable in SMTP (RFC 7672 §3.1):
//!
//! - 3, DANE-EE: the record matches the server's own certificate (or its public key).
//!   Nothing else is checked: no name, no chain, no dates (§3.1.1). The handshake
//!   signature, checked by rustls, proves that the server holds the matching key.
//! - 2, DANE-TA: the record matches a certificate of the chain the server sent (the
//!   server must send its trust anchor, §3.1.2); the server's certificate must chain
//!   to it, be within its dates, and be valid for one of the reference names: the
//!   TLSA base domain or the next-hop domain (§3.2.3).
//!
//! Usages 0 and 1 (PKIX-TA, PKIX-EE), unknown selectors or matching types, and
//! digests of the wrong length make a record unusable. A TLSA RRset without a usable
//! record asks for encryption only (§2.2): the caller then accepts any certificate.
//!
//! Pure: certificates come in as DER, the time as a parameter.

use super::subject::spki;
use ring::digest;
use rustls::client::{verify_server_cert_signed_by_trust_anchor, verify_server_name};
use rustls::pki_types::{CertificateDer, ServerName, SignatureVerificationAlgorithm, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::RootCertStore;

/// Certificate usage DANE-TA: a trust anchor of the chain.
pub const DANE_TA: u8 = 2;
/// Certificate usage DANE-EE: the server's own certificate.
pub const DANE_EE: u8 = 3;

/// One TLSA record (RFC 6698 §2.1), as DNS gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// Certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA, 3 DANE-EE.
    pub usage: u8,
    /// Selector: 0 the whole certificate, 1 its SubjectPublicKeyInfo.
    pub selector: u8,
    /// Matching type: 0 the selected bytes themselves, 1 their SHA-256, 2 their
    /// SHA-512.
    pub mtype: u8,
    /// The certificate association data.
    pub data: Vec<u8>,
}

/// How a chain was authenticated by DANE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaneMatch {
    /// A DANE-EE record matched the server's certificate.
    Ee,
    /// A DANE-TA record matched a trust anchor the server's certificate chains to.
    Ta,
}

impl Tlsa {
    /// Whether SMTP can use the record: usage DANE-TA or DANE-EE, a known selector,
    /// a known matching type with data of its length.
    pub fn usable(&self) -> bool {
        let data = match self.mtype {
            0 => !self.data.is_empty(),
            1 => self.data.len() == digest::SHA256_OUTPUT_LEN,
            2 => self.data.len() == digest::SHA512_OUTPUT_LEN,
            _ => false,
        };
        matches!(self.usage, DANE_TA | DANE_EE) && matches!(self.selector, 0 | 1) && data
    }

    /// Whether the record's data is that of the DER certificate `cert`, under the
    /// record's selector and matching type. A certificate whose public key cannot be
    /// found matches no selector-1 record.
    pub fn matches(&self, cert: &[u8]) -> bool {
        let selected = match self.selector {
            0 => cert,
            1 => match spki(cert) {
                Some(s) => s,
                None => return false,
            },
            _ => return false,
        };
        match self.mtype {
            0 => selected == self.data.as_slice(),
            1 => digest::digest(&digest::SHA256, selected).as_ref() == self.data.as_slice(),
            2 => digest::digest(&digest::SHA512, selected).as_ref() == self.data.as_slice(),
            _ => false,
        }
    }
}

/// Whether any record of the RRset is usable. Without one, DANE asks for encryption
/// and no authentication.
pub fn any_usable(records: &[Tlsa]) -> bool {
    records.iter().any(Tlsa::usable)
}

/// Checks the chain a server sent (its certificate `leaf`, then `intermediates` in
/// the order sent) against the usable `records`. `names` are the reference names of
/// DANE-TA: the TLSA base domain and the next-hop domain. `algs` checks the chain's
/// signatures.
///
/// DANE-EE records are tried first, then each certificate after the leaf as a
/// DANE-TA anchor. The error says why nothing matched, for the log.
pub fn check(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    records: &[Tlsa],
    names: &[String],
    now: UnixTime,
    algs: &[&dyn SignatureVerificationAlgorithm],
) -> Result<DaneMatch, String> {
    let usable = || records.iter().filter(|r| r.usable());
    if usable().any(|r| r.usage == DANE_EE && r.matches(leaf)) {
        return Ok(DaneMatch::Ee);
    }
    let mut why = "no TLSA record matches the certificate chain".to_string();
    for ta in intermediates {
        if !usable().any(|r| r.usage == DANE_TA && r.matches(ta)) {
            continue;
        }
        match chains_to(leaf, ta, intermediates, names, now, algs) {
            Ok(()) => return Ok(DaneMatch::Ta),
            Err(e) => why = format!("DANE-TA: {e}"),
        }
    }
    Err(why)
}

/// Whether `leaf` chains to the anchor `ta` through `intermediates`, within its
/// dates, and is valid for one of `names`.
fn chains_to(
    leaf: &CertificateDer<'_>,
    ta: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    names: &[String],
    now: UnixTime,
    algs: &[&dyn SignatureVerificationAlgorithm],
) -> Result<(), String> {
    let mut anchor = RootCertStore::empty();
    anchor
        .add(ta.clone())
        .map_err(|e| format!("trust anchor: {e}"))?;
    let parsed = ParsedCertificate::try_from(leaf).map_err(|e| e.to_string())?;
    verify_server_cert_signed_by_trust_anchor(&parsed, &anchor, intermediates, now, algs)
        .map_err(|e| e.to_string())?;
    valid_for_any(&parsed, names)
}

/// Whether the parsed certificate is valid for one of `names` (RFC 6125 rules, with
/// `*.` wildcards in the certificate as webpki reads them).
pub(crate) fn valid_for_any(cert: &ParsedCertificate<'_>, names: &[String]) -> Result<(), String> {
    let ok = names
        .iter()
        .filter_map(|n| ServerName::try_from(n.as_str()).ok())
        .any(|n| verify_server_name(cert, &n).is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the certificate is valid for none of: {}",
            names.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(usage: u8, selector: u8, mtype: u8, data: &[u8]) -> Tlsa {
        Tlsa {
            usage,
            selector,
            mtype,
            data: data.to_vec(),
        }
    }

    #[test]
    fn usable_records() {
        assert!(rec(3, 1, 1, &[0; 32]).usable());
        assert!(rec(2, 0, 2, &[0; 64]).usable());
        assert!(rec(3, 0, 0, b"x").usable());
        // PKIX usages are unusable in SMTP (RFC 7672 §3.1.3).
        assert!(!rec(0, 0, 1, &[0; 32]).usable());
        assert!(!rec(1, 1, 1, &[0; 32]).usable());
        assert!(!rec(4, 1, 1, &[0; 32]).usable());
        assert!(!rec(3, 2, 1, &[0; 32]).usable());
        assert!(!rec(3, 1, 3, &[0; 32]).usable());
        // A digest of the wrong length, or empty data.
        assert!(!rec(3, 1, 1, &[0; 31]).usable());
        assert!(!rec(3, 1, 2, &[0; 32]).usable());
        assert!(!rec(3, 0, 0, b"").usable());
        assert!(!any_usable(&[
            rec(1, 1, 1, &[0; 32]),
            rec(3, 1, 1, &[0; 5])
        ]));
        assert!(any_usable(&[
            rec(1, 1, 1, &[0; 32]),
            rec(3, 1, 1, &[0; 32])
        ]));
    }

    #[test]
    fn matching_of_garbage() {
        // A certificate that does not parse matches no selector-1 record, and the
        // whole bytes still match selector 0.
        let junk = b"\x30\x03\x02\x01\x01";
        let sha = digest::digest(&digest::SHA256, junk);
        assert!(rec(3, 0, 1, sha.as_ref()).matches(junk));
        assert!(rec(3, 0, 0, junk).matches(junk));
        assert!(!rec(3, 1, 1, sha.as_ref()).matches(junk));
        assert!(!rec(3, 1, 0, junk).matches(junk));
        let sha512 = digest::digest(&digest::SHA512, junk);
        assert!(rec(3, 0, 2, sha512.as_ref()).matches(junk));
        assert!(!rec(3, 0, 2, sha512.as_ref()).matches(b"other"));
    }
}
