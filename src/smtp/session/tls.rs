//! STARTTLS (RFC 3207) as the session sees it: offered in EHLO on `tls` and
//! `tls-require` listeners until TLS is up, required before mail on `tls-require` ones.
//!
//! ```text
//!  Connected/Ready --STARTTLS--> 220, [Tls] --on_tls--> Connected (EHLO again)
//! ```
//!
//! The session answers 220 and asks the glue to start TLS ([`Action::StartTls`]); it
//! takes no input until [`Session::on_tls`] says the handshake is done. The glue
//! discards what the client sent after its STARTTLS line (CVE-2011-0411: plaintext
//! injected before the handshake must never pass for protected commands), and RFC 3207
//! §4.2 has the session forget what it learnt from the client: its HELO/EHLO name and
//! any transaction.

use super::{Action, Pending, Session, State};
use crate::mail::reply::Reply;
use crate::mail::TlsFacts;
use crate::smtp::command::Command;

/// What a listener offers of STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// No STARTTLS (no TLS, or TLS from the first byte).
    None,
    /// `tls`: offered.
    Optional,
    /// `tls-require`: offered, and needed before mail.
    Required,
}

impl Session {
    /// Makes the session offer STARTTLS (`required`: `tls-require`). Called before the
    /// first line.
    pub fn offer_starttls(&mut self, required: bool) {
        self.starttls = if required {
            Offer::Required
        } else {
            Offer::Optional
        };
    }

    /// The established TLS session, if any: from the first byte (`smtps`) or since
    /// STARTTLS. AUTH is offered only when this is `Some`.
    pub fn tls(&self) -> Option<&TlsFacts> {
        self.tls.as_ref()
    }

    /// Whether EHLO lists STARTTLS: the listener offers it and TLS is not up yet
    /// (RFC 3207 §4.2).
    pub(super) fn offers_starttls(&self) -> bool {
        self.starttls != Offer::None && self.tls.is_none()
    }

    /// Whether `cmd` is refused for want of TLS: on a `tls-require` listener before TLS,
    /// anything but EHLO, HELO, STARTTLS, NOOP, RSET and QUIT.
    pub(super) fn needs_tls_first(&self, cmd: &Command) -> bool {
        self.starttls == Offer::Required
            && self.tls.is_none()
            && !matches!(
                cmd,
                Command::Ehlo(_)
                    | Command::Helo(_)
                    | Command::Starttls
                    | Command::Noop
                    | Command::Rset
                    | Command::Quit
            )
    }

    /// STARTTLS, its arguments already refused by the parser.
    pub(super) fn starttls(&mut self, out: &mut Vec<Action>) {
        if self.tls.is_some() {
            return self.fail(Reply::TLS_ACTIVE, out);
        }
        if self.starttls == Offer::None {
            return self.fail(Reply::TLS_UNAVAILABLE, out);
        }
        match self.state {
            State::Connected => return self.fail(Reply::NEED_HELO, out),
            State::Mail => return self.fail(Reply::TLS_IN_TX, out),
            State::Ready | State::Data | State::Commit | State::Quit => {}
        }
        out.push(Action::Reply(Reply::TLS_READY));
        out.push(Action::StartTls);
        self.pending = Some(Pending::Tls);
    }

    /// The TLS handshake is done: from the first byte of an `smtps` connection, or
    /// after STARTTLS, in which case the session starts over (RFC 3207 §4.2): the
    /// client must say EHLO again, and no HELO name or transaction is kept.
    pub fn on_tls(&mut self, facts: TlsFacts) {
        self.tls = Some(facts);
        self.client.tls = true;
        if matches!(self.pending, Some(Pending::Tls)) {
            self.pending = None;
            self.tx = None;
            self.helo.clear();
            self.esmtp = false;
            self.enter(State::Connected);
        }
    }
}
