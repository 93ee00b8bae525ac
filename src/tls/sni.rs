//! The choice of certificate by the server name a client asks for (SNI, RFC 6066 §3).
//!
//! As OpenSMTPD does, the requested name is matched against the name of every `pki`
//! declared, not only the listener's: exactly, ignoring case. No match, or no SNI at
//! all (most MTAs send none), gives the listener's first pki.

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::Arc;

/// Which of `names` (the pki names, in declaration order) serves a client that asked
/// for `sni`: the one named so, else `default`.
pub fn choose(names: &[String], default: usize, sni: Option<&str>) -> usize {
    sni.and_then(|want| {
        let want = want.strip_suffix('.').unwrap_or(want);
        names.iter().position(|n| n.eq_ignore_ascii_case(want))
    })
    .unwrap_or(default)
}

/// The certificate resolver of one listener.
#[derive(Debug)]
pub struct SniResolver {
    /// Every pki's name, in declaration order.
    names: Vec<String>,
    /// Every pki's certificate and key, in the same order.
    keys: Vec<Arc<CertifiedKey>>,
    /// The listener's first pki.
    default: usize,
}

impl SniResolver {
    /// A resolver over every pki (`names` and `keys` in the same order) that falls back
    /// to `default`.
    pub fn new(names: Vec<String>, keys: Vec<Arc<CertifiedKey>>, default: usize) -> Self {
        SniResolver {
            names,
            keys,
            default,
        }
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let i = choose(&self.names, self.default, hello.server_name());
        self.keys.get(i).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::choose;

    #[test]
    fn pki_by_server_name() {
        let names: Vec<String> = ["mx.example.org", "mail.example.net", "other.example"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // The listener's first pki is the second declared.
        assert_eq!(choose(&names, 1, None), 1);
        assert_eq!(choose(&names, 1, Some("mx.example.org")), 0);
        assert_eq!(choose(&names, 1, Some("MX.Example.ORG")), 0);
        assert_eq!(choose(&names, 1, Some("other.example.")), 2);
        // Exact names only: no suffix or wildcard matching.
        assert_eq!(choose(&names, 1, Some("example.org")), 1);
        assert_eq!(choose(&names, 1, Some("a.mx.example.org")), 1);
        assert_eq!(choose(&names, 0, Some("unknown.test")), 0);
    }
}
