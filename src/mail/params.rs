//! The ESMTP parameters of MAIL and RCPT kept with a transaction and its envelopes:
//! SIZE, BODY (RFC 6152, RFC 3030), SMTPUTF8 (RFC 6531), REQUIRETLS (RFC 8689), RET,
//! ENVID, NOTIFY and ORCPT (RFC 3461).

/// `BODY=` (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Body {
    /// No BODY parameter, or `BODY=7BIT`.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
    /// `BODY=BINARYMIME` (RFC 3030): the content comes in BDAT chunks, and its body is
    /// binary: any octet, lines of any length or none.
    BinaryMime,
}

/// `RET=` (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// Return the full message in a DSN.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// Parameters of MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=`.
    pub body: Body,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, still xtext-encoded.
    pub envid: Option<String>,
    /// `SMTPUTF8` (RFC 6531 §3.4): addresses and headers may be UTF-8.
    pub smtputf8: bool,
    /// `REQUIRETLS` (RFC 8689 §4): the message travels over verified TLS only.
    pub requiretls: bool,
}

/// `NOTIFY=` bits (RFC 3461 §4.1).
pub mod notify {
    /// `NOTIFY=SUCCESS`.
    pub const SUCCESS: u8 = 1;
    /// `NOTIFY=FAILURE`.
    pub const FAILURE: u8 = 2;
    /// `NOTIFY=DELAY`.
    pub const DELAY: u8 = 4;
    /// `NOTIFY=NEVER`.
    pub const NEVER: u8 = 8;
}

/// Parameters of RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptParams {
    /// `NOTIFY=` as [`notify`] bits; 0 when absent.
    pub notify: u8,
    /// `ORCPT=` as `addr-type;xtext`.
    pub orcpt: Option<String>,
}
