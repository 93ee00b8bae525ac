//! What a session waits for from the lookup workers (`crate::lookup`).
//!
//! ```text
//!  Ready --MAIL--> [Space]   --on_lookup(Space)--> 250 / 452, or the MAIL filter query
//!  Mail  --RCPT--> [Resolve] --on_lookup(Rcpt)---> 250 / refusal
//!  Data  --"." and the chain's edits--> [EomRcpt]* --> Commit
//! ```
//!
//! The spool's free space (statvfs(2) may stall on a sick disk) and a recipient's
//! expansion (the password database through NSS, `:include:` files, tables) may block,
//! so the session only asks ([`Action::Lookup`]) and waits in a named pending state,
//! taking no input: the rest of a pipelined batch waits in the glue's buffer and each
//! reply goes out in order. The answer comes back through [`Session::on_lookup`]; one
//! for a session that was closed meanwhile is dropped.
//!
//! Recipients added by filters at the end of the message are resolved the same way:
//! the envelope edits apply in order, each added recipient waits for its lookup, and
//! the commit comes after the last edit.

use super::{Action, Pending, Rcpt, Session, State};
use crate::lookup::{Lookup, LookupAnswer, RcptQuery};
use crate::mail::address::Mailbox;
use crate::mail::params::RcptParams;
use crate::mail::reply::Reply;

/// An end-of-message edit of the envelope, from a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeEdit {
    /// Add a recipient (matched and expanded like RCPT TO; a refusal is logged).
    AddRcpt(Mailbox),
    /// Remove the recipients given as this address.
    DelRcpt(String),
    /// Change the sender.
    ChangeFrom(Mailbox),
    /// Hold the message in the queue, with this reason.
    Quarantine(String),
}

impl Session {
    /// The lookup workers' answer to the pending [`Action::Lookup`].
    pub fn on_lookup(&mut self, answer: LookupAnswer, out: &mut Vec<Action>) {
        if self.state == State::Quit {
            // Closed meanwhile (timeout, shutdown): nothing more is said.
            return;
        }
        let p = match self.pending.take() {
            Some(p) if p.is_lookup() => p,
            other => {
                debug_assert!(false, "lookup answer without a pending lookup");
                self.pending = other;
                return;
            }
        };
        match (p, answer) {
            (Pending::Space { sender, params }, LookupAnswer::Space(true)) => {
                self.mail_checked(sender, params, out)
            }
            (Pending::Space { .. }, LookupAnswer::Space(false)) => {
                self.fail(Reply::NO_STORAGE, out)
            }
            (Pending::Resolve { addr, params }, LookupAnswer::Rcpt(r)) => {
                match (r, self.tx.as_mut()) {
                    (Ok(deliveries), Some(tx)) => {
                        tx.rcpts.push(Rcpt {
                            addr,
                            params,
                            deliveries,
                        });
                        out.push(Action::Reply(Reply::RCPT_OK));
                    }
                    (Ok(_), None) => self.fail(Reply::NEED_MAIL, out),
                    (Err(reply), _) => self.fail(reply, out),
                }
            }
            (
                Pending::Senders {
                    sender,
                    params,
                    junk,
                },
                LookupAnswer::Sender(r),
            ) => match r {
                Ok(()) => self.mail_open(sender, params, junk, out),
                Err(reply) => self.fail(reply, out),
            },
            (Pending::EomRcpt { addr }, LookupAnswer::Rcpt(r)) => {
                match (r, self.tx.as_mut()) {
                    (Ok(deliveries), Some(tx)) => tx.rcpts.push(Rcpt {
                        addr,
                        params: RcptParams::default(),
                        deliveries,
                    }),
                    (Ok(_), None) => {}
                    (Err(r), _) => log::info!(
                        "{:016x} filter recipient <{addr}> refused: {}",
                        self.id,
                        r.summary()
                    ),
                }
                self.eom_edits(out);
            }
            (p, a) => {
                debug_assert!(false, "lookup answer {a:?} for {p:?}");
                match p {
                    Pending::EomRcpt { .. } => self.eom_edits(out),
                    _ => self.fail(Reply::LOCAL_ERROR, out),
                }
            }
        }
    }

    /// The envelope edits the filter chain made at the end of the message; they apply,
    /// in order, once the chain lets the message through.
    pub fn set_envelope_edits(&mut self, edits: Vec<EnvelopeEdit>) {
        if let Some(tx) = self.tx.as_mut() {
            tx.edits = edits.into();
        }
    }

    /// Applies the envelope edits left, in order: an added recipient is looked up
    /// first (the edits after it wait for the answer). The commit follows the last.
    pub(super) fn eom_edits(&mut self, out: &mut Vec<Action>) {
        while let Some(e) = self.tx.as_mut().and_then(|t| t.edits.pop_front()) {
            match e {
                EnvelopeEdit::AddRcpt(addr) => {
                    if let Some(q) = self.rcpt_query(&addr) {
                        self.pending = Some(Pending::EomRcpt { addr });
                        out.push(Action::Lookup(Lookup::Rcpt(Box::new(q))));
                        return;
                    }
                }
                EnvelopeEdit::DelRcpt(a) => self.del_rcpt(&a),
                EnvelopeEdit::ChangeFrom(m) => self.change_from(m),
                EnvelopeEdit::Quarantine(r) => self.quarantine(&r),
            }
        }
        out.push(Action::Commit);
        self.enter(State::Commit);
    }

    /// The question for `addr` in the open transaction.
    pub(super) fn rcpt_query(&self, addr: &Mailbox) -> Option<RcptQuery> {
        let tx = self.tx.as_ref()?;
        Some(RcptQuery {
            client: self.client.clone(),
            helo: self.helo.clone(),
            sender: tx.sender.clone(),
            rcpt: addr.clone(),
        })
    }

    /// End-of-message edit: removes the recipients given as `addr`.
    fn del_rcpt(&mut self, addr: &str) {
        if let Some(tx) = self.tx.as_mut() {
            let a = addr.trim_matches(['<', '>']);
            tx.rcpts
                .retain(|r| !r.addr.to_string().eq_ignore_ascii_case(a));
        }
    }

    /// End-of-message edit: changes the sender.
    fn change_from(&mut self, m: Mailbox) {
        if let Some(tx) = self.tx.as_mut() {
            tx.sender = m;
        }
    }

    /// End-of-message edit: holds the message in the queue.
    fn quarantine(&mut self, reason: &str) {
        if let Some(tx) = self.tx.as_mut() {
            tx.quarantine = Some(
                reason
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(200)
                    .collect(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{resolve, Dialog};
    use super::*;
    use crate::filter::phase::{FilterVerdict, Phase};
    use crate::mail::{Delivery, Dest};

    fn mailbox(s: &str) -> Mailbox {
        let (local, domain) = s.split_once('@').unwrap();
        Mailbox {
            local: local.into(),
            domain: domain.into(),
        }
    }

    fn user(u: &str) -> LookupAnswer {
        LookupAnswer::Rcpt(Ok(vec![Delivery {
            action: 0,
            dest: Dest::User(u.into()),
        }]))
    }

    /// A dialog whose lookups wait for the test, in a transaction from a@b.c.
    fn in_transaction(hooks: u32) -> Dialog {
        let mut d = Dialog::with_hooks(hooks);
        d.auto = false;
        if hooks != 0 {
            d.verdict(FilterVerdict::Proceed {
                rewrite: None,
                junk: false,
            })
            .expect("220");
        }
        d.client("EHLO c").expect("250");
        d.client("MAIL FROM:<a@b.c> SIZE=100").expect_nothing();
        assert_eq!(d.asked, [Lookup::Space(100)]);
        d.lookup_answer(LookupAnswer::Space(true))
            .expect("250 2.1.0");
        d
    }

    #[test]
    fn rcpt_waits_for_its_lookup() {
        let mut d = in_transaction(0);
        d.client("RCPT TO:<bob@example.org>").expect_nothing();
        assert!(!d.s.wants_input());
        let Some(Lookup::Rcpt(q)) = d.asked.first().cloned() else {
            panic!("{:?}", d.asked);
        };
        assert_eq!(q.rcpt.to_string(), "bob@example.org");
        assert_eq!(q.sender.to_string(), "a@b.c");
        assert_eq!((q.helo.as_str(), q.client.local), ("c", false));
        d.lookup_answer(resolve(&q).map_or_else(
            |r| LookupAnswer::Rcpt(Err(r)),
            |v| LookupAnswer::Rcpt(Ok(v)),
        ))
        .expect("250 2.1.5");
        assert!(d.s.wants_input());
        assert_eq!(d.s.tx().map(|t| t.rcpts.len()), Some(1));
    }

    #[test]
    fn mail_waits_for_the_spools_room() {
        let mut d = Dialog::new();
        d.auto = false;
        d.client("EHLO c").expect("250");
        d.client("MAIL FROM:<a@b.c>").expect_nothing();
        assert!(!d.s.wants_input());
        d.lookup_answer(LookupAnswer::Space(false))
            .expect("452 4.3.1");
        assert!(d.s.tx().is_none() && d.s.wants_input());
        d.client("MAIL FROM:<a@b.c>");
        d.lookup_answer(LookupAnswer::Space(true))
            .expect("250 2.1.0");
    }

    #[test]
    fn pipelined_rcpts_are_answered_in_order() {
        let mut d = in_transaction(0);
        d.client("RCPT TO:<nobody@example.org>")
            .client("RCPT TO:<bob@example.org>")
            .client("DATA")
            .expect_nothing();
        // One question at a time: the rest of the batch waits, unread.
        assert_eq!(d.asked.len(), 1);
        assert_eq!(d.input.len(), 2);
        d.lookup_answer(LookupAnswer::Rcpt(Err(Reply::UNKNOWN_USER)))
            .expect("550 5.1.1")
            .expect_nothing();
        assert!(matches!(&d.asked[..], [Lookup::Rcpt(q)] if q.rcpt.local == "bob"));
        d.lookup_answer(user("bob"))
            .expect("250 2.1.5")
            .expect("354");
        d.client("hi").client(".").expect("250 2.0.0");
        assert_eq!(d.committed, ["bob@example.org"]);
    }

    #[test]
    fn an_answer_for_a_session_closed_meanwhile_is_dropped() {
        let mut d = in_transaction(0);
        d.client("RCPT TO:<bob@example.org>").expect_nothing();
        d.s.close(Reply::TIMEOUT, &mut d.out);
        d.expect("421").expect_close();
        d.out.clear();
        d.lookup_answer(user("bob"));
        assert!(d.out.is_empty(), "{:?}", d.out);
        assert_eq!(d.s.state(), State::Quit);
    }

    #[test]
    fn a_refused_recipient_counts_as_an_error() {
        let mut d = in_transaction(0);
        d.s.limits.max_errors = 1;
        d.client("RCPT TO:<x@elsewhere.example>");
        d.lookup_answer(LookupAnswer::Rcpt(Err(Reply::NO_RULE)))
            .expect("550 5.7.1")
            .expect("421")
            .expect_close();
    }

    /// A message to u@b.c through a chain that decides the end of message, at its
    /// final dot.
    fn at_end_of_message() -> Dialog {
        use smtpd_filter::codec::event;
        let mut d = in_transaction(event::CONNECT | event::EOM);
        d.client("RCPT TO:<u@b.c>");
        d.lookup_answer(user("u")).expect("250 2.1.5");
        d.client("DATA").expect("354");
        d.client("hi").client(".").expect_nothing();
        assert!(matches!(&d.queries[..], [q] if q.phase == Phase::Eom));
        d
    }

    #[test]
    fn filter_recipients_are_looked_up_in_order_before_the_commit() {
        let mut d = at_end_of_message();
        d.s.set_envelope_edits(vec![
            EnvelopeEdit::ChangeFrom(mailbox("new@b.c")),
            EnvelopeEdit::AddRcpt(mailbox("x@b.c")),
            EnvelopeEdit::DelRcpt("<u@b.c>".into()),
            EnvelopeEdit::AddRcpt(mailbox("nobody@b.c")),
            EnvelopeEdit::Quarantine("held\n".into()),
        ]);
        d.verdict(FilterVerdict::Proceed {
            rewrite: None,
            junk: false,
        });
        // The first added recipient is matched with the new sender; nothing is
        // committed until the last edit.
        assert!(
            matches!(&d.asked[..], [Lookup::Rcpt(q)] if q.rcpt.local == "x" && q.sender.local == "new")
        );
        assert!(!d.out.contains(&Action::Commit) && !d.s.wants_input());
        d.lookup_answer(user("x")).expect_nothing();
        assert!(matches!(&d.asked[..], [Lookup::Rcpt(q)] if q.rcpt.local == "nobody"));
        assert_eq!(
            d.s.tx().map(|t| t.rcpts.len()),
            Some(1),
            "u@b.c removed, x@b.c added"
        );
        d.lookup_answer(LookupAnswer::Rcpt(Err(Reply::UNKNOWN_USER)))
            .expect("250 2.0.0");
        assert_eq!(d.committed, ["x@b.c"]);
        assert!(d.s.wants_input());
    }

    #[test]
    fn edits_of_a_refused_message_are_dropped() {
        let mut d = at_end_of_message();
        d.s.set_envelope_edits(vec![EnvelopeEdit::AddRcpt(mailbox("x@b.c"))]);
        d.verdict(FilterVerdict::Reject(Reply::new(554, "5.7.1", "no")))
            .expect("554 5.7.1 no");
        assert!(d.asked.is_empty() && d.s.tx().is_none());
        // The next message starts without them.
        d.client("MAIL FROM:<a@b.c>");
        d.lookup_answer(LookupAnswer::Space(true)).expect("250");
        d.client("RCPT TO:<u@b.c>");
        d.lookup_answer(user("u")).expect("250");
        d.client("DATA").client("hi").client(".").expect("354");
        d.verdict(FilterVerdict::Proceed {
            rewrite: None,
            junk: false,
        })
        .expect("250 2.0.0");
        assert!(d.asked.is_empty());
        assert_eq!(d.committed, ["u@b.c"]);
    }
}
