//! What the SMTP session asks its filter chain, and what the chain answers: the
//! phase and its parameter, then the verdict.

use crate::mail::Reply;

/// An SMTP phase a filter chain may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// The connection, before the greeting.
    Connect,
    /// HELO.
    Helo,
    /// EHLO.
    Ehlo,
    /// AUTH: the client's credentials were accepted, the 235 not sent yet; the
    /// parameter is the user (the authentication identity). The password never
    /// reaches a filter.
    Auth {
        /// The SASL mechanism, as `PLAIN`.
        mechanism: &'static str,
    },
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA, before the 354.
    Data,
    /// The final ".", before the commit.
    Eom,
}

impl Phase {
    /// The event bit of this phase in the filter protocol.
    pub fn event(self) -> u32 {
        use smtpd_filter::codec::event;
        match self {
            Phase::Connect => event::CONNECT,
            Phase::Helo => event::HELO,
            Phase::Ehlo => event::EHLO,
            Phase::Auth { .. } => event::AUTH,
            Phase::Mail => event::MAIL,
            Phase::Rcpt => event::RCPT,
            Phase::Data => event::DATA,
            Phase::Eom => event::EOM,
        }
    }
}

/// What a filter chain is asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterQuery {
    /// The phase.
    pub phase: Phase,
    /// Its parameter: the HELO name, the AUTH user, the address, or empty.
    pub param: String,
}

/// What a filter chain decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterVerdict {
    /// Go on, maybe with a rewritten parameter, maybe marking the message as junk.
    Proceed {
        /// The new parameter (HELO name or address), if rewritten.
        rewrite: Option<String>,
        /// Mark the transaction as spam.
        junk: bool,
    },
    /// Refuse the command with this reply.
    Reject(Reply),
    /// Reply and close the connection.
    Disconnect(Reply),
    /// At end of message: accept the message towards the client, and drop it.
    Discard,
}
