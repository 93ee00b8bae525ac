//! HELO and EHLO (RFC 5321 §4.1.1.1): the greeting's filter phase, then the reply and,
//! to EHLO, the extensions this session offers: what the listener and the session's
//! state (TLS, AUTH) allow, and the limits enforced (RFC 9422).

use super::{Action, Pending, Session, State};
use crate::filter::phase::Phase;
use crate::mail::reply::Reply;

impl Session {
    pub(super) fn greet(&mut self, name: &str, esmtp: bool, out: &mut Vec<Action>) {
        let phase = if esmtp { Phase::Ehlo } else { Phase::Helo };
        let pending = Pending::Helo {
            name: name.to_string(),
            esmtp,
        };
        if !self.ask(phase, name.to_string(), pending, out) {
            self.greet_proceed(name, esmtp, out);
        }
    }

    pub(super) fn greet_proceed(&mut self, name: &str, esmtp: bool, out: &mut Vec<Action>) {
        // RFC 5321 §4.1.4: HELO/EHLO resets any transaction.
        self.drop_tx(out);
        self.helo = name.to_string();
        self.esmtp = esmtp;
        let addr = self
            .client
            .addr
            .map_or_else(|| "local".to_string(), |a| format!("[{a}]"));
        let mut text = format!(
            "{} Hello {} {}, pleased to meet you",
            self.client.server_name, name, addr
        );
        // RFC 5321 §4.5.3.1.5: a reply line is at most 512 octets with its code and CR LF.
        if text.len() > 500 {
            text = format!("{} Hello", self.client.server_name);
        }
        if esmtp {
            text.push_str(&format!(
                "\n8BITMIME\nENHANCEDSTATUSCODES\nSIZE {}{}\nPIPELINING\nSMTPUTF8",
                self.limits.max_message_size,
                if self.offers_dsn() { "\nDSN" } else { "" }
            ));
            // RFC 9422: the limits enforced below, so that clients split their
            // recipients and messages instead of meeting 452s.
            let limit = |n: usize| (1..1_000_000_000).contains(&n).then_some(n);
            if let (Some(r), Some(m)) = (limit(self.limits.max_rcpt), limit(self.limits.max_mails))
            {
                text.push_str(&format!("\nLIMITS RCPTMAX={r} MAILMAX={m}"));
            }
            // RFC 3030: BDAT, and bodies that only BDAT can carry.
            text.push_str("\nCHUNKING\nBINARYMIME");
            if self.offers_starttls() {
                text.push_str("\nSTARTTLS");
            }
            // RFC 8689 §4: only on a session TLS protects.
            if self.tls.is_some() {
                text.push_str("\nREQUIRETLS");
            }
            if self.auth_offered() {
                text.push('\n');
                text.push_str(crate::smtp::sasl::EHLO_KEYWORD);
            }
            text.push_str("\nHELP");
        }
        out.push(Action::Reply(Reply::new(250, "", text)));
        self.enter(State::Ready);
    }
}
