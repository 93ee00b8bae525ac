//! What a session tells the filters that observe it (the report events of
//! smtpd-filters(7)), owned until the loop frames them: protocol lines, with the
//! credentials of SMTP AUTH hidden, rollbacks, the facts of a TLS handshake and the end
//! of an AUTH exchange, commits and the end of the session; and the events only
//! OpenSMTPD's protocol reports ([`TextReport`], `filter/opensmtpd.rs` formats them).

use smtpd_filter::codec::Frame;

/// An event for observing filters, gathered while a session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// A command line (`<`), as the session shows it (the credentials of AUTH hidden),
    /// or a reply (`>`, its lines separated by CR LF).
    Protocol(u8, Vec<u8>),
    /// The transaction was abandoned; the id OpenSMTPD's filters know it by, when
    /// one was given.
    Rollback(Option<u32>),
    /// The session's TLS handshake completed.
    Tls(TlsFacts),
    /// An AUTH exchange ended.
    Auth {
        /// The SASL mechanism.
        mechanism: String,
        /// The authentication identity the client gave (empty when it gave none).
        user: String,
        /// How it ended.
        result: AuthResult,
    },
    /// The message was queued: its id, size and envelopes.
    Commit {
        /// The message id, as 8 hexadecimal digits.
        msgid: String,
        /// Its size in octets.
        size: u64,
        /// Its envelopes.
        evpids: Vec<u64>,
    },
    /// The session ended.
    Disconnect,
    /// An event only OpenSMTPD's protocol reports.
    Text(TextReport),
}

/// Events of OpenSMTPD's protocol that the binary one has no frame for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextReport {
    /// The client connected: its reverse DNS name (`None`: unknown), whether it
    /// resolves back, and both ends (`ADDR:PORT`, `[V6]:PORT`, or `local`).
    Connect {
        /// The client's reverse DNS name.
        rdns: Option<String>,
        /// It resolves back to the address.
        fcrdns: bool,
        /// The client's end.
        src: String,
        /// Ours.
        dest: String,
    },
    /// The greeting was sent, with our name.
    Greeting(String),
    /// HELO or EHLO was accepted.
    Identify {
        /// `HELO` or `EHLO`.
        method: &'static str,
        /// The name the client gave.
        name: String,
    },
    /// MAIL FROM opened a transaction.
    TxBegin(u32),
    /// The result of a MAIL FROM (`ok`, `permfail`, `tempfail`) and what followed
    /// `MAIL FROM:`.
    TxMail(u32, &'static str, String),
    /// The result of a RCPT TO and what followed `RCPT TO:`.
    TxRcpt(u32, &'static str, String),
    /// The result of DATA.
    TxData(u32, &'static str),
    /// The transaction was abandoned at the end of the session.
    TxRollback(u32),
    /// The client's final dot.
    DataEnd,
    /// What the filter chain decided about a phase: OpenSMTPD's phase name and the
    /// response (`proceed`, `junk`, `rewrite|VALUE`, `reject|REPLY`...).
    FilterResponse(&'static str, String),
    /// A report of a filter: its name and text.
    FilterReport(String, String),
    /// The session timed out.
    Timeout,
}

impl Report {
    /// The frame filters of the binary protocol get, if any.
    pub fn frame(&self) -> Option<Frame<'_>> {
        Some(match self {
            Report::Protocol(dir, line) => Frame::Protocol { dir: *dir, line },
            Report::Rollback(_) => Frame::Rollback,
            Report::Tls(t) => Frame::Tls {
                version: t.version.as_bytes(),
                cipher: t.cipher.as_bytes(),
                bits: t.bits,
                sni: t.sni.as_bytes(),
                subject: t.subject.as_bytes(),
            },
            Report::Auth {
                mechanism,
                user,
                result,
            } => Frame::AuthResult {
                mechanism: mechanism.as_bytes(),
                user: user.as_bytes(),
                result: result.as_str().as_bytes(),
            },
            Report::Commit { msgid, .. } => Frame::Commit(msgid.as_bytes()),
            Report::Disconnect => Frame::Disconnect,
            Report::Text(_) => return None,
        })
    }
}

/// What a session's TLS handshake established, as filters are told it (TLS event).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The cipher suite's IANA name, as `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The length of the cipher's key in bits (0 when the suite is not known).
    pub bits: u16,
    /// The server name the client asked for (SNI), or empty.
    pub sni: String,
    /// The subject of the client's certificate (RFC 4514) when it was verified, or empty.
    pub subject: String,
}

impl TlsFacts {
    /// The facts from the names a TLS library gives: the version as `TLSv1_3` or
    /// `TLSv1.3`, the suite by its IANA name or rustls's (`TLS13_AES_128_GCM_SHA256`),
    /// the SNI and the verified certificate's subject when there are.
    pub fn new(version: &str, suite: &str, sni: Option<&str>, subject: Option<&str>) -> TlsFacts {
        let cipher = match suite.strip_prefix("TLS13_") {
            Some(rest) => format!("TLS_{rest}"),
            None => suite.to_string(),
        };
        TlsFacts {
            version: version.replace('_', "."),
            bits: cipher_bits(&cipher),
            cipher,
            sni: sni.unwrap_or_default().to_string(),
            subject: subject.unwrap_or_default().to_string(),
        }
    }
}

/// The key length of a cipher suite, from its name (the `{cipher_bits}` of milters);
/// 0 for a suite the daemon does not offer.
pub fn cipher_bits(suite: &str) -> u16 {
    if suite.contains("_AES_128_") {
        128
    } else if suite.contains("_AES_256_") || suite.contains("_CHACHA20_") {
        256
    } else {
        0
    }
}

/// How an AUTH exchange ended, by the reply the client got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// 235: the session is authenticated.
    Ok,
    /// A 5xx reply: wrong credentials, or refused by a filter.
    Permfail,
    /// A 4xx reply: the credentials could not be checked, or a filter said TEMPFAIL.
    Tempfail,
}

impl AuthResult {
    /// The result of an exchange that ended with a reply of `code`.
    pub fn of_reply(code: u16) -> AuthResult {
        match code {
            200..=299 => AuthResult::Ok,
            400..=499 => AuthResult::Tempfail,
            _ => AuthResult::Permfail,
        }
    }

    /// Its name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::Permfail => "permfail",
            AuthResult::Tempfail => "tempfail",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_facts_from_the_names_of_the_tls_library() {
        let t = TlsFacts::new(
            "TLSv1_3",
            "TLS13_AES_256_GCM_SHA384",
            Some("mx.example.org"),
            None,
        );
        assert_eq!(
            t,
            TlsFacts {
                version: "TLSv1.3".into(),
                cipher: "TLS_AES_256_GCM_SHA384".into(),
                bits: 256,
                sni: "mx.example.org".into(),
                subject: String::new(),
            }
        );
        let t = TlsFacts::new(
            "TLSv1.2",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            None,
            Some("CN=client.example.org"),
        );
        assert_eq!((t.version.as_str(), t.bits), ("TLSv1.2", 128));
        assert_eq!(t.subject, "CN=client.example.org");
        assert_eq!(cipher_bits("TLS_CHACHA20_POLY1305_SHA256"), 256);
        assert_eq!(
            cipher_bits("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"),
            256
        );
        assert_eq!(cipher_bits("TLS_NULL_WITH_NULL_NULL"), 0);
    }

    #[test]
    fn reports_become_their_frames() {
        let tls = Report::Tls(TlsFacts::new(
            "TLSv1.3",
            "TLS_AES_128_GCM_SHA256",
            None,
            None,
        ));
        assert_eq!(
            tls.frame().unwrap(),
            Frame::Tls {
                version: b"TLSv1.3",
                cipher: b"TLS_AES_128_GCM_SHA256",
                bits: 128,
                sni: b"",
                subject: b"",
            }
        );
        let auth = |code| Report::Auth {
            mechanism: "LOGIN".into(),
            user: "alice".into(),
            result: AuthResult::of_reply(code),
        };
        for (code, result) in [(235, &b"ok"[..]), (535, b"permfail"), (454, b"tempfail")] {
            assert_eq!(
                auth(code).frame().unwrap(),
                Frame::AuthResult {
                    mechanism: b"LOGIN",
                    user: b"alice",
                    result,
                }
            );
        }
        assert_eq!(Report::Rollback(None).frame(), Some(Frame::Rollback));
        assert_eq!(Report::Disconnect.frame(), Some(Frame::Disconnect));
        assert_eq!(Report::Text(TextReport::Timeout).frame(), None);
    }
}
