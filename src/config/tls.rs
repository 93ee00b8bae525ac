//! The vocabulary of TLS settings in smtpd.conf: protocol versions (`protocols`) and
//! cipher suites (`ciphers`), by the names OpenSSL and OpenSMTPD use. Pure: the words
//! are turned into our own values, which `tls/` maps onto the TLS library.
//!
//! Only TLS 1.2 and 1.3 exist here, with the suites of the ring provider: ECDHE key
//! exchange with AES-GCM or ChaCha20-Poly1305 (TLS 1.2), and the three AEAD suites of
//! TLS 1.3.

/// A protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// TLS 1.2 (RFC 5246).
    V12,
    /// TLS 1.3 (RFC 8446).
    V13,
}

impl TlsVersion {
    /// Both versions, the default.
    pub const ALL: [TlsVersion; 2] = [TlsVersion::V12, TlsVersion::V13];

    /// The name OpenSSL gives the version (`TLSv1.3`).
    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::V12 => "TLSv1.2",
            TlsVersion::V13 => "TLSv1.3",
        }
    }
}

/// A cipher suite the server can negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suite {
    /// TLS_AES_256_GCM_SHA384 (TLS 1.3).
    Tls13Aes256Gcm,
    /// TLS_AES_128_GCM_SHA256 (TLS 1.3).
    Tls13Aes128Gcm,
    /// TLS_CHACHA20_POLY1305_SHA256 (TLS 1.3).
    Tls13Chacha20,
    /// ECDHE-ECDSA-AES256-GCM-SHA384.
    EcdheEcdsaAes256Gcm,
    /// ECDHE-ECDSA-AES128-GCM-SHA256.
    EcdheEcdsaAes128Gcm,
    /// ECDHE-ECDSA-CHACHA20-POLY1305.
    EcdheEcdsaChacha20,
    /// ECDHE-RSA-AES256-GCM-SHA384.
    EcdheRsaAes256Gcm,
    /// ECDHE-RSA-AES128-GCM-SHA256.
    EcdheRsaAes128Gcm,
    /// ECDHE-RSA-CHACHA20-POLY1305.
    EcdheRsaChacha20,
}

/// What a cipher-string class word can select on.
#[derive(Clone, Copy)]
enum Trait {
    Every,
    None,
    Ecdsa,
    Rsa,
    AesGcm,
    Aes128,
    Aes256,
    Chacha20,
    Sha256,
    Sha384,
}

/// Class words of OpenSSL cipher strings (and libtls's lower-case ones), with what
/// they select among the TLS 1.2 suites. Words for things this server never offers
/// (RC4, CBC with SHA-1, RSA or finite-field DH key exchange, no authentication...)
/// select nothing, so `!aNULL` and the like read as they always did.
const CLASSES: &[(&str, Trait)] = &[
    ("ALL", Trait::Every),
    ("DEFAULT", Trait::Every),
    ("HIGH", Trait::Every),
    ("COMPLEMENTOFDEFAULT", Trait::None),
    ("COMPLEMENTOFALL", Trait::None),
    ("secure", Trait::Every),
    ("default", Trait::Every),
    ("compat", Trait::Every),
    ("legacy", Trait::Every),
    ("all", Trait::Every),
    ("insecure", Trait::Every),
    ("ECDHE", Trait::Every),
    ("EECDH", Trait::Every),
    ("kECDHE", Trait::Every),
    ("kEECDH", Trait::Every),
    ("AEAD", Trait::Every),
    ("TLSv1.2", Trait::Every),
    ("ECDSA", Trait::Ecdsa),
    ("aECDSA", Trait::Ecdsa),
    ("aRSA", Trait::Rsa),
    ("AESGCM", Trait::AesGcm),
    ("AES", Trait::AesGcm),
    ("AES128", Trait::Aes128),
    ("AES256", Trait::Aes256),
    ("CHACHA20", Trait::Chacha20),
    ("SHA256", Trait::Sha256),
    ("SHA384", Trait::Sha384),
    ("MEDIUM", Trait::None),
    ("LOW", Trait::None),
    ("EXPORT", Trait::None),
    ("EXP", Trait::None),
    ("aNULL", Trait::None),
    ("eNULL", Trait::None),
    ("NULL", Trait::None),
    ("ADH", Trait::None),
    ("AECDH", Trait::None),
    ("MD5", Trait::None),
    ("SHA1", Trait::None),
    ("SHA", Trait::None),
    ("RC4", Trait::None),
    ("DES", Trait::None),
    ("3DES", Trait::None),
    ("IDEA", Trait::None),
    ("SEED", Trait::None),
    ("CAMELLIA", Trait::None),
    ("ARIA", Trait::None),
    ("PSK", Trait::None),
    ("SRP", Trait::None),
    ("DSS", Trait::None),
    ("aDSS", Trait::None),
    ("RSA", Trait::None),
    ("kRSA", Trait::None),
    ("DHE", Trait::None),
    ("EDH", Trait::None),
    ("kDHE", Trait::None),
    ("kEDH", Trait::None),
    ("DH", Trait::None),
    ("CBC", Trait::None),
    ("SSLv3", Trait::None),
    ("TLSv1", Trait::None),
    ("TLSv1.0", Trait::None),
];

impl Suite {
    /// Every suite, in the server's order of preference.
    pub const ALL: [Suite; 9] = [
        Suite::Tls13Aes256Gcm,
        Suite::Tls13Chacha20,
        Suite::Tls13Aes128Gcm,
        Suite::EcdheEcdsaAes256Gcm,
        Suite::EcdheRsaAes256Gcm,
        Suite::EcdheEcdsaChacha20,
        Suite::EcdheRsaChacha20,
        Suite::EcdheEcdsaAes128Gcm,
        Suite::EcdheRsaAes128Gcm,
    ];

    /// The OpenSSL name (the RFC 8446 name for TLS 1.3 suites).
    pub fn name(self) -> &'static str {
        match self {
            Suite::Tls13Aes256Gcm => "TLS_AES_256_GCM_SHA384",
            Suite::Tls13Aes128Gcm => "TLS_AES_128_GCM_SHA256",
            Suite::Tls13Chacha20 => "TLS_CHACHA20_POLY1305_SHA256",
            Suite::EcdheEcdsaAes256Gcm => "ECDHE-ECDSA-AES256-GCM-SHA384",
            Suite::EcdheEcdsaAes128Gcm => "ECDHE-ECDSA-AES128-GCM-SHA256",
            Suite::EcdheEcdsaChacha20 => "ECDHE-ECDSA-CHACHA20-POLY1305",
            Suite::EcdheRsaAes256Gcm => "ECDHE-RSA-AES256-GCM-SHA384",
            Suite::EcdheRsaAes128Gcm => "ECDHE-RSA-AES128-GCM-SHA256",
            Suite::EcdheRsaChacha20 => "ECDHE-RSA-CHACHA20-POLY1305",
        }
    }

    /// The IANA name (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`), also accepted in
    /// `ciphers`.
    pub fn iana_name(self) -> &'static str {
        match self {
            Suite::Tls13Aes256Gcm => "TLS_AES_256_GCM_SHA384",
            Suite::Tls13Aes128Gcm => "TLS_AES_128_GCM_SHA256",
            Suite::Tls13Chacha20 => "TLS_CHACHA20_POLY1305_SHA256",
            Suite::EcdheEcdsaAes256Gcm => "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            Suite::EcdheEcdsaAes128Gcm => "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            Suite::EcdheEcdsaChacha20 => "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            Suite::EcdheRsaAes256Gcm => "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            Suite::EcdheRsaAes128Gcm => "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            Suite::EcdheRsaChacha20 => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        }
    }

    /// The protocol version the suite belongs to.
    pub fn version(self) -> TlsVersion {
        match self {
            Suite::Tls13Aes256Gcm | Suite::Tls13Aes128Gcm | Suite::Tls13Chacha20 => TlsVersion::V13,
            _ => TlsVersion::V12,
        }
    }

    /// The strength of the bulk cipher in bits, as OpenSSL reports it.
    pub fn bits(self) -> u16 {
        match self {
            Suite::Tls13Aes128Gcm | Suite::EcdheEcdsaAes128Gcm | Suite::EcdheRsaAes128Gcm => 128,
            _ => 256,
        }
    }

    fn has(self, t: Trait) -> bool {
        use Suite::*;
        if self.version() == TlsVersion::V13 {
            // Class words are TLS 1.2 cipher-string words, as in OpenSSL.
            return false;
        }
        match t {
            Trait::Every => true,
            Trait::None => false,
            Trait::Ecdsa => matches!(
                self,
                EcdheEcdsaAes256Gcm | EcdheEcdsaAes128Gcm | EcdheEcdsaChacha20
            ),
            Trait::Rsa => matches!(
                self,
                EcdheRsaAes256Gcm | EcdheRsaAes128Gcm | EcdheRsaChacha20
            ),
            Trait::AesGcm => !matches!(self, EcdheEcdsaChacha20 | EcdheRsaChacha20),
            Trait::Aes128 => self.bits() == 128,
            Trait::Aes256 => matches!(self, EcdheEcdsaAes256Gcm | EcdheRsaAes256Gcm),
            Trait::Chacha20 => matches!(self, EcdheEcdsaChacha20 | EcdheRsaChacha20),
            Trait::Sha384 => matches!(self, EcdheEcdsaAes256Gcm | EcdheRsaAes256Gcm),
            Trait::Sha256 => !matches!(self, EcdheEcdsaAes256Gcm | EcdheRsaAes256Gcm),
        }
    }

    /// The suites one word of a cipher string selects (`ECDHE+AESGCM` is the suites
    /// both select); `None` for a word that is no name nor class.
    fn select(word: &str) -> Option<Vec<Suite>> {
        let mut picked: Vec<Suite> = Suite::ALL.to_vec();
        for part in word.split('+') {
            let one: Vec<Suite> = match Suite::ALL
                .iter()
                .find(|s| s.name() == part || s.iana_name() == part)
            {
                Some(&s) => vec![s],
                None => {
                    let (_, t) = CLASSES.iter().find(|(n, _)| *n == part)?;
                    Suite::ALL.iter().copied().filter(|s| s.has(*t)).collect()
                }
            };
            picked.retain(|s| one.contains(s));
        }
        Some(picked)
    }
}

/// Parses `protocols`: versions separated by `:` or `,`, as libtls reads them
/// (`tlsv1.2:tlsv1.3`, `all`, `secure`, `default`, `legacy`, `!tlsv1.2`). Versions
/// before TLS 1.2 are refused: this server does not speak them.
pub fn parse_protocols(s: &str) -> Result<Vec<TlsVersion>, String> {
    let mut on: Vec<TlsVersion> = Vec::new();
    for word in s.split([':', ',']).map(str::trim).filter(|w| !w.is_empty()) {
        let (neg, name) = match word.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, word),
        };
        let versions: &[TlsVersion] = match name.to_ascii_lowercase().as_str() {
            "tlsv1.2" => &[TlsVersion::V12],
            "tlsv1.3" => &[TlsVersion::V13],
            "all" | "secure" | "default" | "legacy" => &TlsVersion::ALL,
            "tlsv1.0" | "tlsv1.1" | "tlsv1" if neg => &[],
            "tlsv1.0" | "tlsv1.1" | "tlsv1" => {
                return Err(format!(
                    "protocol '{name}' is not supported: TLS 1.2 and 1.3 only"
                ))
            }
            _ => return Err(format!("unknown protocol '{name}'")),
        };
        for v in versions {
            if neg {
                on.retain(|x| x != v);
            } else if !on.contains(v) {
                on.push(*v);
            }
        }
    }
    if on.is_empty() {
        return Err(format!("protocols '{s}' enable no protocol"));
    }
    on.sort();
    Ok(on)
}

/// Parses `ciphers`, an OpenSSL cipher string: words separated by `:`, `,` or spaces;
/// a word is a suite's name (OpenSSL or IANA) or a class (`HIGH`, `ECDHE`, `AESGCM`,
/// `aRSA`...), several joined by `+` select what they have in common; `!WORD` removes
/// for good, `-WORD` removes, `+WORD` moves to the end, `@STRENGTH` and `@SECLEVEL=n`
/// are accepted. As with OpenSSL the string chooses the TLS 1.2 suites; TLS 1.3
/// suites are chosen only by their own names and are all kept when none is named.
/// The result is in order of preference.
pub fn parse_ciphers(s: &str) -> Result<Vec<Suite>, String> {
    let mut list: Vec<Suite> = Vec::new();
    let mut banned: Vec<Suite> = Vec::new();
    let mut named13 = false;
    for word in s
        .split([':', ',', ' '])
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        if word.starts_with('@') {
            continue;
        }
        let (op, name) = match word.as_bytes()[0] {
            b'!' | b'-' | b'+' => (word.as_bytes()[0], &word[1..]),
            _ => (b' ', word),
        };
        let picked = Suite::select(name).ok_or_else(|| format!("unknown cipher '{name}'"))?;
        match op {
            b'!' => {
                list.retain(|s| !picked.contains(s));
                banned.extend(&picked);
            }
            b'-' => list.retain(|s| !picked.contains(s)),
            b'+' => {
                let (moved, kept): (Vec<Suite>, Vec<Suite>) =
                    list.iter().partition(|s| picked.contains(s));
                list = kept;
                list.extend(moved);
            }
            _ => {
                named13 |= picked.iter().any(|s| s.version() == TlsVersion::V13);
                for s in picked {
                    if !list.contains(&s) && !banned.contains(&s) {
                        list.push(s);
                    }
                }
            }
        }
    }
    if !named13 {
        let tls13 = Suite::ALL
            .iter()
            .filter(|s| s.version() == TlsVersion::V13 && !banned.contains(s));
        let mut all: Vec<Suite> = tls13.copied().collect();
        all.extend(list);
        list = all;
    }
    if list.is_empty() {
        return Err(format!("ciphers '{s}' leave no cipher suite"));
    }
    Ok(list)
}

/// The `port` of a service in an /etc/services text (`NAME PORT/tcp ALIASES...`), by
/// name or alias.
pub fn service_port(services: &str, name: &str) -> Option<u16> {
    services.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_ascii_whitespace();
        let first = words.next()?;
        let (port, proto) = words.next()?.split_once('/')?;
        let named = first == name || words.any(|w| w == name);
        (named && proto == "tcp").then(|| port.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols() {
        use TlsVersion::*;
        assert_eq!(parse_protocols("tlsv1.2:tlsv1.3"), Ok(vec![V12, V13]));
        assert_eq!(parse_protocols("TLSv1.3"), Ok(vec![V13]));
        assert_eq!(parse_protocols("all:!tlsv1.2"), Ok(vec![V13]));
        assert_eq!(parse_protocols("secure,!tlsv1.1"), Ok(vec![V12, V13]));
        assert!(parse_protocols("tlsv1.1")
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_protocols("tlsv1.2:!tlsv1.2").is_err());
        assert!(parse_protocols("sslv3")
            .unwrap_err()
            .contains("unknown protocol"));
        assert!(parse_protocols("").is_err());
    }

    #[test]
    fn cipher_strings() {
        use Suite::*;
        // The OpenSMTPD default: every suite.
        assert_eq!(parse_ciphers("HIGH:!aNULL:!MD5").unwrap().len(), 9);
        // A TLS 1.2 name leaves TLS 1.3 alone.
        assert_eq!(
            parse_ciphers("ECDHE-RSA-AES128-GCM-SHA256"),
            Ok(vec![
                Tls13Aes256Gcm,
                Tls13Chacha20,
                Tls13Aes128Gcm,
                EcdheRsaAes128Gcm
            ])
        );
        // Naming a TLS 1.3 suite chooses among them too; IANA names work.
        assert_eq!(
            parse_ciphers("TLS_AES_128_GCM_SHA256:TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"),
            Ok(vec![Tls13Aes128Gcm, EcdheEcdsaAes256Gcm])
        );
        assert_eq!(
            parse_ciphers("ECDHE+AESGCM+aRSA:!AES128"),
            Ok(vec![
                Tls13Aes256Gcm,
                Tls13Chacha20,
                Tls13Aes128Gcm,
                EcdheRsaAes256Gcm
            ])
        );
        // `!` is for good, `-` is not.
        let s = parse_ciphers("ALL:!CHACHA20:CHACHA20").unwrap();
        assert!(!s.contains(&EcdheRsaChacha20));
        let s = parse_ciphers("ALL:-CHACHA20:CHACHA20").unwrap();
        assert_eq!(s.last(), Some(&EcdheRsaChacha20));
        // `+` moves to the end.
        let s = parse_ciphers("ALL:+AES256").unwrap();
        assert_eq!(s.last(), Some(&EcdheRsaAes256Gcm));
        assert!(parse_ciphers("HIGH:@STRENGTH").is_ok());
        assert_eq!(
            parse_ciphers("RC4-SHA:FOO"),
            Err("unknown cipher 'RC4-SHA'".into())
        );
        assert!(parse_ciphers(
            "!TLS_AES_128_GCM_SHA256:!TLS_AES_256_GCM_SHA384:!TLS_CHACHA20_POLY1305_SHA256:!ALL"
        )
        .is_err());
    }

    #[test]
    fn services() {
        let text = "# comment\nsmtp\t\t25/tcp\t\tmail\nsubmission\t587/tcp\nsubmissions\t465/tcp\t\tssmtp smtps\nfoo 99/udp\n";
        assert_eq!(service_port(text, "submission"), Some(587));
        assert_eq!(service_port(text, "smtps"), Some(465));
        assert_eq!(service_port(text, "mail"), Some(25));
        assert_eq!(service_port(text, "foo"), None);
        assert_eq!(service_port(text, "nope"), None);
    }
}
