//! SMTP replies: a code, an RFC 3463 enhanced status code and text.
//!
//! Replies are data, rendered by [`Reply::render`] into the output buffer. Text sent to
//! clients stays generic; details go to the log.

use std::borrow::Cow;
use std::fmt::Write as _;

/// One SMTP reply, possibly multi-line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code (RFC 5321 §4.2).
    pub code: u16,
    /// The enhanced status code (RFC 3463), e.g. `"5.5.1"`, or empty for none.
    pub esc: &'static str,
    /// The text; several lines are separated by `\n` and rendered as continuation lines.
    pub text: Cow<'static, str>,
}

macro_rules! canned {
    ($($(#[$doc:meta])* $name:ident = $code:expr, $esc:expr, $text:expr;)*) => {
        $( $(#[$doc])* pub const $name: Reply = Reply { code: $code, esc: $esc, text: Cow::Borrowed($text) }; )*
    };
}

impl Reply {
    canned! {
        /// Generic success.
        OK = 250, "2.0.0", "Ok";
        /// MAIL accepted.
        MAIL_OK = 250, "2.1.0", "Ok";
        /// RCPT accepted.
        RCPT_OK = 250, "2.1.5", "Ok";
        /// DATA accepted, waiting for content.
        START_DATA = 354, "", "End data with <CR><LF>.<CR><LF>";
        /// QUIT.
        BYE = 221, "2.0.0", "Bye";
        /// HELO or EHLO missing its argument or with a bad one.
        HELO_SYNTAX = 501, "5.5.4", "Syntax: HELO/EHLO hostname";
        /// A command before HELO/EHLO.
        NEED_HELO = 503, "5.5.1", "Error: send HELO/EHLO first";
        /// MAIL inside a transaction.
        NESTED_MAIL = 503, "5.5.1", "Error: nested MAIL command";
        /// RCPT before MAIL.
        NEED_MAIL = 503, "5.5.1", "Error: need MAIL command";
        /// DATA before any accepted RCPT.
        NEED_RCPT = 503, "5.5.1", "Error: need RCPT command";
        /// BDAT without a valid size: where its chunk ends is unknown, so the
        /// connection is closed after this reply.
        BDAT_SYNTAX = 501, "5.5.4", "Syntax: BDAT octets [LAST], closing connection";
        /// DATA after BDAT in one transaction, or for a `BODY=BINARYMIME` message
        /// (RFC 3030 §3).
        DATA_NOT_BDAT = 503, "5.5.1", "Error: this transaction takes BDAT, not DATA";
        /// RCPT after the first BDAT chunk of the transaction.
        RCPT_AFTER_BDAT = 503, "5.5.1", "Error: RCPT after BDAT";
        /// BDAT in a session that said HELO: CHUNKING was not offered.
        BDAT_NEEDS_EHLO = 503, "5.5.1", "Error: BDAT needs EHLO";
        /// A BINARYMIME body that data-line filters cannot be given (not made of CR LF
        /// lines, or with a NUL or a line too long for their protocol).
        BINARY_UNFILTERED = 554, "5.6.1", "Binary content cannot be passed to the content filters";
        /// MAIL syntax.
        MAIL_SYNTAX = 501, "5.5.4", "Syntax: MAIL FROM:<address>";
        /// RCPT syntax.
        RCPT_SYNTAX = 501, "5.5.4", "Syntax: RCPT TO:<address>";
        /// A command that takes no argument got one.
        NO_ARGS = 501, "5.5.4", "Syntax error: no arguments allowed";
        /// The sender address does not parse.
        BAD_SENDER = 553, "5.1.7", "Sender address syntax error";
        /// The recipient address does not parse.
        BAD_RCPT = 553, "5.1.3", "Recipient address syntax error";
        /// A non-ASCII address in a transaction without SMTPUTF8 (RFC 6531 §3.5).
        NEED_SMTPUTF8 = 553, "5.6.7", "Non-ASCII addresses need SMTPUTF8";
        /// MAIL with REQUIRETLS on a session without TLS, where it is not offered.
        REQUIRETLS_WITHOUT_TLS = 555, "5.7.10", "REQUIRETLS needs a TLS session";
        /// MAIL with octets that are not UTF-8.
        SENDER_NOT_UTF8 = 553, "5.1.7", "Sender address is not valid UTF-8";
        /// RCPT with octets that are not UTF-8.
        RCPT_NOT_UTF8 = 553, "5.1.3", "Recipient address is not valid UTF-8";
        /// Unknown command.
        UNKNOWN_COMMAND = 500, "5.5.2", "Error: command not recognized";
        /// STARTTLS answered: the TLS handshake follows (RFC 3207 §4).
        TLS_READY = 220, "2.0.0", "Ready to start TLS";
        /// A command other than EHLO, HELO, STARTTLS, NOOP, RSET and QUIT before TLS
        /// on a `tls-require` listener (RFC 3207 §4).
        TLS_REQUIRED = 530, "5.7.0", "Must issue a STARTTLS command first";
        /// STARTTLS once TLS is up (RFC 3207 §4.2: not offered again).
        TLS_ACTIVE = 503, "5.5.1", "TLS already active";
        /// STARTTLS inside a mail transaction.
        TLS_IN_TX = 503, "5.5.1", "STARTTLS not allowed during a mail transaction";
        /// VRFY and EXPN: user lists are not disclosed.
        NOT_IMPLEMENTED = 502, "5.5.1", "Command not implemented";
        /// A command or text line over its limit.
        LINE_TOO_LONG = 500, "5.5.2", "Line too long";
        /// A bare CR or LF in a command.
        BARE_NEWLINE_COMMAND = 500, "5.5.2", "Bare CR or LF in command line not allowed";
        /// A NUL in a command.
        NUL_COMMAND = 500, "5.5.2", "NUL character in command line not allowed";
        /// A bare CR or LF in message content.
        BARE_NEWLINE_DATA = 550, "5.5.2", "Bare CR or LF in message content not allowed";
        /// A NUL in message content.
        NUL_DATA = 550, "5.6.0", "NUL character in message content not allowed";
        /// A text line over 1000 octets.
        DATA_LINE_TOO_LONG = 500, "5.5.2", "Line too long in message content";
        /// MAIL SIZE= or the content over `max-message-size`.
        TOO_BIG = 552, "5.3.4", "Message size exceeds fixed maximum message size";
        /// More recipients than `max-rcpt`.
        TOO_MANY_RCPT = 452, "4.5.3", "Too many recipients";
        /// More transactions than `max-mails` in one session.
        TOO_MANY_MAILS = 452, "4.5.3", "Too many messages in this session";
        /// Too many Received headers: a mail loop.
        LOOP = 554, "5.4.6", "Too many hops: mail loop detected";
        /// No rule accepts this recipient.
        NO_RULE = 550, "5.7.1", "Delivery not authorized, message refused";
        /// A `reject` rule matched.
        REJECTED = 550, "5.7.1", "Delivery not authorized, message refused";
        /// The recipient resolves to no user.
        UNKNOWN_USER = 550, "5.1.1", "Recipient address rejected: User unknown";
        /// The spool is short of space.
        NO_STORAGE = 452, "4.3.1", "Insufficient system storage";
        /// The spool failed for another reason.
        LOCAL_ERROR = 451, "4.3.0", "Temporary failure, please try again later";
        /// Too many errors in one session.
        TOO_MANY_ERRORS = 421, "4.7.0", "Too many errors, closing connection";
        /// No command within the session timeout.
        TIMEOUT = 421, "4.4.2", "Timeout, closing connection";
        /// The daemon is stopping.
        SHUTDOWN = 421, "4.3.2", "Service shutting down, closing connection";
        /// `max-sessions` reached.
        TOO_MANY_SESSIONS = 421, "4.3.2", "Too many connections, try again later";
        /// `max-sessions-per-address` reached.
        TOO_MANY_FROM_ADDRESS = 421, "4.7.0", "Too many connections from your address";
        /// `max-connection-rate` reached.
        CONNECTION_RATE = 421, "4.7.0", "Too many connections from your address this minute";
        /// Pipelined input where PIPELINING was not offered (HELO sessions).
        UNAUTH_PIPELINING = 554, "5.5.0", "Improper use of SMTP command pipelining";
        /// AUTH succeeded (RFC 4954 §6).
        AUTH_OK = 235, "2.7.0", "Authentication succeeded";
        /// AUTH with wrong credentials.
        AUTH_FAILED = 535, "5.7.8", "Authentication credentials invalid";
        /// The credentials could not be checked.
        AUTH_TEMPFAIL = 454, "4.7.0", "Temporary authentication failure";
        /// The client cancelled the exchange with `*`.
        AUTH_CANCELLED = 501, "5.7.0", "Authentication cancelled";
        /// An exchange line or initial response that is not base64.
        AUTH_BAD_BASE64 = 501, "5.5.2", "Invalid base64 data";
        /// A PLAIN message that is not `authzid NUL authcid NUL passwd`.
        AUTH_MALFORMED = 501, "5.5.2", "Invalid authentication data";
        /// AUTH without a mechanism, or with more than an initial response.
        AUTH_SYNTAX = 501, "5.5.4", "Syntax: AUTH mechanism [initial-response]";
        /// An exchange line over 12288 octets.
        AUTH_LINE_TOO_LONG = 500, "5.5.6", "Authentication exchange line is too long";
        /// AUTH before TLS: the mechanisms send the password in clear.
        AUTH_NEEDS_TLS = 538, "5.7.11", "Encryption required for requested authentication mechanism";
        /// A mechanism that is not offered.
        AUTH_UNKNOWN_MECHANISM = 504, "5.5.4", "Unrecognized authentication type";
        /// AUTH on a listener without it.
        AUTH_NOT_ENABLED = 503, "5.5.1", "Error: authentication not enabled";
        /// AUTH after a successful one.
        AUTH_ALREADY = 503, "5.5.1", "Error: already authenticated";
        /// AUTH inside a transaction.
        AUTH_IN_TRANSACTION = 503, "5.5.1", "Error: AUTH not permitted during a mail transaction";
        /// AUTH before EHLO (it is an extension of EHLO sessions).
        NEED_EHLO = 503, "5.5.1", "Error: send EHLO first";
        /// MAIL on a listener that requires AUTH, before it.
        AUTH_REQUIRED = 530, "5.7.0", "Authentication required";
        /// Too many failed AUTH in one session.
        AUTH_TOO_MANY_FAILURES = 421, "4.7.0", "Too many authentication failures, closing connection";
        /// MAIL FROM an address the authenticated user may not use (`senders`).
        SENDER_NOT_OWNED = 553, "5.7.1", "Sender address not owned by the authenticated user";
    }

    /// A reply with owned text.
    pub fn new(code: u16, esc: &'static str, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            esc,
            text: text.into(),
        }
    }

    /// Whether the code is 4xx or 5xx.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the wire form (CR LF terminated, continuation lines with `-`).
    pub fn render(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let sep = if lines.peek().is_some() { '-' } else { ' ' };
            let mut s = String::with_capacity(line.len() + 16);
            let _ = write!(s, "{}{}", self.code, sep);
            if !self.esc.is_empty() {
                s.push_str(self.esc);
                s.push(' ');
            }
            s.push_str(line);
            s.push_str("\r\n");
            out.extend_from_slice(s.as_bytes());
        }
    }

    /// The first line as text, for log lines.
    pub fn summary(&self) -> String {
        let first = self.text.split('\n').next().unwrap_or("");
        if self.esc.is_empty() {
            format!("{} {}", self.code, first)
        } else {
            format!("{} {} {}", self.code, self.esc, first)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_multiline() {
        let mut out = Vec::new();
        Reply::new(250, "", "a\nb\nc").render(&mut out);
        assert_eq!(out, b"250-a\r\n250-b\r\n250 c\r\n");
        out.clear();
        Reply::NEED_MAIL.render(&mut out);
        assert_eq!(out, b"503 5.5.1 Error: need MAIL command\r\n");
    }
}
