//! What a listener's `mask-src` and `no-dsn` change in a session: the client left out
//! of the Received header, and the DSN extension (RFC 3461) neither offered nor taken.

use super::Session;
use crate::config::SessionOptions;
use crate::mail::params::{MailParams, RcptParams};
use crate::mail::reply::Reply;

impl Session {
    /// Applies the listener's session options.
    pub fn set_options(&mut self, options: SessionOptions) {
        self.options = options;
    }

    /// Whether the reply to EHLO lists DSN.
    pub(super) fn offers_dsn(&self) -> bool {
        !self.options.no_dsn
    }

    /// Whether the Received header names the client.
    pub(super) fn shows_client(&self) -> bool {
        !self.options.mask_src
    }
}

/// The refusal of MAIL parameters of the DSN extension when `o` turns it off.
pub(super) fn refused_mail_params(o: &SessionOptions, p: &MailParams) -> Option<Reply> {
    let name = match (p.ret.is_some(), p.envid.is_some()) {
        _ if !o.no_dsn => return None,
        (true, _) => "RET",
        (false, true) => "ENVID",
        (false, false) => return None,
    };
    Some(unsupported(name))
}

/// The refusal of RCPT parameters of the DSN extension when `o` turns it off.
pub(super) fn refused_rcpt_params(o: &SessionOptions, p: &RcptParams) -> Option<Reply> {
    let name = match (p.notify != 0, p.orcpt.is_some()) {
        _ if !o.no_dsn => return None,
        (true, _) => "NOTIFY",
        (false, true) => "ORCPT",
        (false, false) => return None,
    };
    Some(unsupported(name))
}

/// RFC 5321 §4.1.1.11: a parameter the server does not offer.
fn unsupported(name: &str) -> Reply {
    Reply::new(555, "5.5.4", format!("Unsupported option: {name}"))
}

#[cfg(test)]
mod tests {
    use crate::config::SessionOptions;
    use crate::smtp::session::tests::Dialog;
    use crate::smtp::session::Action;

    #[test]
    fn no_dsn_and_mask_src() {
        let mut d = Dialog::new();
        d.s.set_options(SessionOptions {
            mask_src: true,
            no_dsn: true,
            hostnames: None,
        });
        d.client("EHLO c.example");
        let mut ehlo = Vec::new();
        for a in d.out.drain(..) {
            if let Action::Reply(r) = a {
                r.render(&mut ehlo);
            }
        }
        let ehlo = String::from_utf8_lossy(&ehlo);
        assert!(ehlo.starts_with("250-") && !ehlo.contains("DSN"), "{ehlo}");
        d.client("MAIL FROM:<a@b.c> RET=HDRS")
            .expect("555 5.5.4 Unsupported option: RET");
        d.client("MAIL FROM:<a@b.c> ENVID=x").expect("555 5.5.4");
        d.client("MAIL FROM:<a@b.c>").expect("250");
        d.client("RCPT TO:<u@b.c> NOTIFY=NEVER").expect("555 5.5.4");
        d.client("RCPT TO:<u@b.c> ORCPT=rfc822;u@b.c")
            .expect("555 5.5.4");
        d.client("RCPT TO:<u@b.c>").expect("250");
        d.s.on_line(b"DATA", &mut d.out);
        d.out.clear();
        d.s.on_opened(Ok(0x1234), &mut d.out);
        let h = d.s.received_header("date");
        assert!(
            h.starts_with("Received: by mx.example.org (smtpd) with ESMTP id 00001234"),
            "{h}"
        );
        assert!(!h.contains("192.0.2.7"), "{h}");
    }
}
