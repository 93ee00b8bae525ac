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
            // A listener without TLS does not know the command.
            return self.fail(Reply::UNKNOWN_COMMAND, out);
        }
        match self.state {
            State::Connected => return self.fail(Reply::NEED_HELO, out),
            State::Mail => return self.fail(Reply::TLS_IN_TX, out),
            State::Ready | State::Data | State::Chunk | State::Commit | State::Quit => {}
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

#[cfg(test)]
mod tests {
    use super::super::tests::Dialog;
    use super::*;

    fn facts() -> TlsFacts {
        TlsFacts {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
            bits: 256,
            sni: Some("mx.example.org".into()),
            subject: None,
        }
    }

    /// The text of the first reply pending.
    fn first_reply(d: &Dialog) -> String {
        let mut wire = Vec::new();
        if let Some(Action::Reply(r)) = d.out.iter().find(|a| matches!(a, Action::Reply(_))) {
            r.render(&mut wire);
        }
        String::from_utf8_lossy(&wire).into_owned()
    }

    fn offering(required: bool) -> Dialog {
        let mut d = Dialog::new();
        d.s.offer_starttls(required);
        d
    }

    /// The glue's part after STARTTLS: it finds the action, drops what the client sent
    /// after the STARTTLS line, and reports the handshake.
    fn handshake(d: &mut Dialog) {
        let at = d.out.iter().position(|a| *a == Action::StartTls);
        assert!(at.is_some(), "no StartTls action: {:?}", d.out);
        d.out.retain(|a| *a != Action::StartTls);
        assert!(!d.s.wants_input(), "input is taken before the handshake");
        d.input.clear();
        d.s.on_tls(facts());
        d.client("NOOP").expect("250 2.0.0");
    }

    #[test]
    fn starttls_offered_then_reset() {
        let mut d = offering(false);
        d.client("EHLO client.example");
        assert!(first_reply(&d).contains("250-STARTTLS\r\n"));
        d.expect("250-");
        // Not in a transaction.
        d.client("MAIL FROM:<a@example.org>").expect("250 2.1.0");
        d.client("STARTTLS")
            .expect("503 5.5.1 STARTTLS not allowed");
        d.client("RSET").expect("250");
        d.client("STARTTLS").expect("220 2.0.0 Ready to start TLS");
        handshake(&mut d);
        assert_eq!(d.s.tls(), Some(&facts()));
        assert!(d.s.client().tls);
        // RFC 3207 §4.2: the client starts over with EHLO, and STARTTLS is gone.
        assert_eq!(d.s.helo(), "");
        d.client("MAIL FROM:<a@example.org>")
            .expect("503 5.5.1 Error: send HELO/EHLO");
        d.client("EHLO client.example");
        assert!(!first_reply(&d).contains("STARTTLS"));
        d.expect("250-");
        d.client("STARTTLS").expect("503 5.5.1 TLS already active");
    }

    #[test]
    fn starttls_refusals() {
        let mut d = Dialog::new();
        d.client("EHLO client.example");
        assert!(!first_reply(&d).contains("STARTTLS"));
        d.expect("250-");
        d.client("STARTTLS").expect("500 5.5.2");
        let mut d = offering(false);
        d.client("STARTTLS")
            .expect("503 5.5.1 Error: send HELO/EHLO");
        d.client("EHLO client.example").expect("250-");
        d.client("STARTTLS now").expect("501 5.5.4");
        assert!(!d.out.contains(&Action::StartTls));
    }

    #[test]
    fn pipelined_commands_wait_for_the_handshake() {
        let mut d = offering(false);
        d.client("EHLO client.example").expect("250-");
        // One write: the RSET must never be taken as a command.
        d.client("STARTTLS").client("RSET");
        d.expect("220 2.0.0").expect_nothing();
        assert_eq!(d.input.len(), 1);
        handshake(&mut d);
        d.expect_nothing();
    }

    #[test]
    fn tls_require_refuses_mail_before_tls() {
        let mut d = offering(true);
        d.client("EHLO client.example").expect("250-");
        d.client("MAIL FROM:<a@example.org>")
            .expect("530 5.7.0 Must issue a STARTTLS command first");
        d.client("RCPT TO:<a@example.org>").expect("530 5.7.0");
        d.client("DATA").expect("530 5.7.0");
        d.client("HELP").expect("530 5.7.0");
        d.client("NOOP").expect("250");
        d.client("RSET").expect("250");
        d.client("HELO client.example").expect("250 ");
        d.client("STARTTLS").expect("220 ");
        handshake(&mut d);
        d.client("EHLO client.example").expect("250-");
        d.client("MAIL FROM:<a@example.org>").expect("250 2.1.0");
        d.client("RCPT TO:<bob@example.org>").expect("250 2.1.5");
        d.client("DATA").expect("354 ");
        d.client("Subject: x").client("").client("body");
        let h = d.s.received_header("Mon, 1 Jan 2024 00:00:00 +0000");
        assert!(
            h.contains(" with ESMTPS id 0000abcd (TLSv1.3:TLS_AES_256_GCM_SHA384:256:NO)\n"),
            "{h}"
        );
        d.client(".").expect("250 2.0.0");
    }

    #[test]
    fn smtps_session_is_not_reset() {
        // TLS from the first byte: the facts come before any line.
        let mut d = Dialog::new();
        d.s.on_tls(facts());
        d.client("EHLO client.example");
        assert!(!first_reply(&d).contains("STARTTLS"));
        d.expect("250-");
        d.client("MAIL FROM:<a@example.org>").expect("250 2.1.0");
        d.client("STARTTLS").expect("503 5.5.1 TLS already active");
    }
}
