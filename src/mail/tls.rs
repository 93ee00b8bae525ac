//! What a session knows of its TLS layer once the handshake is done: for the
//! Received header, the logs, the ruleset's `match tls`, and filters.

/// The facts of an established TLS session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFacts {
    /// The protocol version, as OpenSSL names it (`TLSv1.3`).
    pub version: &'static str,
    /// The cipher suite, as OpenSSL names it (`TLS_AES_256_GCM_SHA384`,
    /// `ECDHE-RSA-AES256-GCM-SHA384`).
    pub cipher: &'static str,
    /// The strength of the bulk cipher in bits.
    pub bits: u16,
    /// The server name the client asked for (SNI), if it sent one.
    pub sni: Option<String>,
    /// The subject of the client's certificate, when one was required and verified
    /// (`/C=XX/O=Org/CN=name`).
    pub subject: Option<String>,
}

impl TlsFacts {
    /// The comment of the Received header, as OpenSMTPD writes it:
    /// `(TLSv1.3:TLS_AES_256_GCM_SHA384:256:NO)`, the last field telling whether a
    /// client certificate was verified.
    pub fn received_comment(&self) -> String {
        let verified = if self.subject.is_some() { "YES" } else { "NO" };
        format!(
            "({}:{}:{}:{verified})",
            self.version, self.cipher, self.bits
        )
    }
}

/// The `with` protocol of the Received header (RFC 3848): `ESMTP`, then `S` over TLS
/// and `A` once authenticated. A HELO session is plain `SMTP`: RFC 3848 names no
/// other kind, and neither STARTTLS nor AUTH is offered without EHLO. A transaction
/// with SMTPUTF8 (`utf8`, which needs EHLO) is `UTF8SMTP` with the same letters, as
/// RFC 6531 §4.3 registers them.
pub fn received_protocol(esmtp: bool, tls: bool, authenticated: bool, utf8: bool) -> &'static str {
    match (esmtp, tls, authenticated, utf8) {
        (false, _, _, _) => "SMTP",
        (true, false, false, false) => "ESMTP",
        (true, true, false, false) => "ESMTPS",
        (true, false, true, false) => "ESMTPA",
        (true, true, true, false) => "ESMTPSA",
        (true, false, false, true) => "UTF8SMTP",
        (true, true, false, true) => "UTF8SMTPS",
        (true, false, true, true) => "UTF8SMTPA",
        (true, true, true, true) => "UTF8SMTPSA",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_words() {
        let f = TlsFacts {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
            bits: 256,
            sni: None,
            subject: None,
        };
        assert_eq!(
            f.received_comment(),
            "(TLSv1.3:TLS_AES_256_GCM_SHA384:256:NO)"
        );
        let f = TlsFacts {
            subject: Some("/CN=client".into()),
            ..f
        };
        assert!(f.received_comment().ends_with(":YES)"));
        assert_eq!(received_protocol(true, false, false, false), "ESMTP");
        assert_eq!(received_protocol(true, true, false, false), "ESMTPS");
        assert_eq!(received_protocol(true, true, true, false), "ESMTPSA");
        assert_eq!(received_protocol(true, false, true, false), "ESMTPA");
        assert_eq!(received_protocol(false, true, false, false), "SMTP");
        assert_eq!(received_protocol(true, false, false, true), "UTF8SMTP");
        assert_eq!(received_protocol(true, true, false, true), "UTF8SMTPS");
        assert_eq!(received_protocol(true, true, true, true), "UTF8SMTPSA");
    }
}
