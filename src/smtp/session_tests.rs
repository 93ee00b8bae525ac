//! Tests of `session.rs`.

use super::*;
use crate::lookup::{LookupAnswer, RcptQuery};

/// The answers of the test's lookup workers: anything @elsewhere.example is refused
/// to a remote client, "nobody" is unknown, every other recipient is a user.
pub(super) fn resolve(q: &RcptQuery) -> Result<Vec<Delivery>, Reply> {
    match (q.rcpt.local.as_str(), q.rcpt.domain.as_str()) {
        (_, "elsewhere.example") if !q.client.local => Err(Reply::NO_RULE),
        ("nobody", _) => Err(Reply::UNKNOWN_USER),
        (u, _) => Ok(vec![Delivery {
            action: 0,
            dest: crate::mail::delivery::Dest::User(u.to_string()),
        }]),
    }
}

/// A session driven the way `smtp::conn` drives it, with the spool and the lookup
/// workers answering at once (`auto`) or when the test says so.
pub(super) struct Dialog {
    pub(super) s: Session,
    pub(super) out: Vec<Action>,
    pub(super) stored: Vec<Vec<u8>>,
    /// The spool has room (the answer to `Lookup::Space`).
    pub(super) space: bool,
    /// Lookups are answered as they are asked; else they wait in `asked`.
    pub(super) auto: bool,
    /// Lookups asked and not answered yet.
    pub(super) asked: Vec<Lookup>,
    /// Filter queries asked and not answered yet.
    pub(super) queries: Vec<FilterQuery>,
    /// Lines sent and not yet taken by the session (pipelining).
    pub(super) input: VecDeque<String>,
    /// The recipients of the last message committed.
    pub(super) committed: Vec<String>,
    /// Credentials checks asked and not answered yet.
    pub(super) auths: Vec<crate::lookup::AuthCheck>,
    /// AUTH_RESULT reports, as `MECHANISM user code`.
    pub(super) auth_reports: Vec<String>,
}

/// The client of the tests: 192.0.2.7, no name, no TLS, to mx.example.org.
pub(super) fn test_client() -> Peer {
    Peer {
        addr: Some(std::net::IpAddr::from([192, 0, 2, 7])),
        local: false,
        server_name: "mx.example.org".into(),
        tag: None,
        hostname: None,
        tls: false,
        auth: None,
    }
}

pub(super) fn limits() -> Limits {
    Limits {
        max_message_size: 1000,
        max_rcpt: 3,
        max_mails: 2,
        max_errors: 10,
        max_hops: 3,
        max_text_line: 0,
        max_command_line: 512,
        max_auth_failures: 3,
    }
}

impl Dialog {
    pub(super) fn new() -> Self {
        Self::with_hooks(0)
    }

    /// A dialog whose filter chain decides the `hooks` events.
    pub(super) fn with_hooks(hooks: u32) -> Self {
        let mut out = Vec::new();
        let s = Session::new(7, test_client(), limits(), hooks, &mut out);
        let mut d = Dialog {
            s,
            out,
            stored: Vec::new(),
            space: true,
            auto: true,
            asked: Vec::new(),
            queries: Vec::new(),
            input: VecDeque::new(),
            committed: Vec::new(),
            auths: Vec::new(),
            auth_reports: Vec::new(),
        };
        d.glue();
        if hooks == 0 {
            d.expect("220 mx.example.org ESMTP");
        }
        d
    }

    /// Sends a line; the session takes it (and lines sent before it) when it
    /// wants input, as the glue feeds a pipelined batch.
    pub(super) fn client(&mut self, line: &str) -> &mut Self {
        self.input.push_back(line.to_string());
        self.feed();
        self
    }

    fn feed(&mut self) {
        while self.s.wants_input() {
            let Some(line) = self.input.pop_front() else {
                return;
            };
            if self.s.in_data() {
                match self.s.on_data(line.as_bytes(), true, true, false) {
                    DataLine::Store(b) | DataLine::Raw(b, _) => self.stored.push(b.to_vec()),
                    DataLine::Drop => {}
                    DataLine::End => self.s.on_data_end(false, &mut self.out),
                }
            } else {
                self.s.on_line(line.as_bytes(), &mut self.out);
            }
            self.glue();
        }
    }

    /// The lookup workers' answer to the oldest lookup asked.
    pub(super) fn lookup_answer(&mut self, a: LookupAnswer) -> &mut Self {
        assert!(!self.asked.is_empty(), "no lookup was asked");
        self.asked.remove(0);
        self.s.on_lookup(a, &mut self.out);
        self.glue();
        self.feed();
        self
    }

    /// The answer to the oldest credentials check.
    pub(super) fn auth_answer(&mut self, r: crate::mail::auth::AuthResult) -> &mut Self {
        assert!(!self.auths.is_empty(), "no credentials check was asked");
        self.auths.remove(0);
        self.s.on_auth(r, &mut self.out);
        self.glue();
        self.feed();
        self
    }

    /// The filter chain's verdict on the oldest query.
    pub(super) fn verdict(&mut self, v: FilterVerdict) -> &mut Self {
        assert!(!self.queries.is_empty(), "no filter query was made");
        self.queries.remove(0);
        self.s.on_filter_result(v, &mut self.out);
        self.glue();
        self.feed();
        self
    }

    fn glue(&mut self) {
        // Nothing follows a Close: the glue stops there.
        if let Some(c) = self.out.iter().position(|a| matches!(a, Action::Close)) {
            assert!(
                self.out[c..].iter().all(|a| matches!(a, Action::Close)),
                "actions after Close: {:?}",
                self.out
            );
        }
        let mut i = 0;
        while i < self.out.len() {
            let mut more = Vec::new();
            match &self.out[i] {
                Action::OpenMessage => self.s.on_opened(Ok(0xabcd), &mut more),
                Action::Commit => {
                    self.committed = self.s.tx().map_or_else(Vec::new, |t| {
                        t.rcpts.iter().map(|r| r.addr.to_string()).collect()
                    });
                    self.s.on_committed(Ok(()), &mut more)
                }
                Action::Lookup(l) if self.auto => {
                    let a = match l {
                        Lookup::Space(_) => LookupAnswer::Space(self.space),
                        Lookup::Rcpt(q) => LookupAnswer::Rcpt(resolve(q)),
                        // A user may send as its own local part only (a local
                        // user's name is its uid).
                        Lookup::Sender(q) => {
                            let user = match &q.user {
                                crate::lookup::SenderUser::Auth(name) => name.clone(),
                                crate::lookup::SenderUser::Local { uid, .. } => uid.to_string(),
                            };
                            LookupAnswer::Sender(match q.sender.local == user {
                                true => Ok(()),
                                false => Err(Reply::SENDER_NOT_OWNED),
                            })
                        }
                    };
                    self.s.on_lookup(a, &mut more)
                }
                Action::Lookup(l) => self.asked.push(l.clone()),
                Action::Authenticate(c) => self.auths.push(c.clone()),
                Action::Filter(q) => self.queries.push(q.clone()),
                Action::AuthReport {
                    mechanism,
                    user,
                    code,
                } => self.auth_reports.push(format!("{mechanism} {user} {code}")),
                _ => {
                    i += 1;
                    continue;
                }
            }
            self.out.remove(i);
            self.out.splice(i..i, more);
        }
    }

    /// Takes the first pending reply and checks that it starts with `prefix`.
    pub(super) fn expect(&mut self, prefix: &str) -> &mut Self {
        let pos = self.out.iter().position(|a| matches!(a, Action::Reply(_)));
        let Some(Action::Reply(r)) = pos.map(|p| self.out.remove(p)) else {
            panic!("no reply, wanted {prefix}; actions {:?}", self.out);
        };
        let mut wire = Vec::new();
        r.render(&mut wire);
        let wire = String::from_utf8_lossy(&wire).into_owned();
        assert!(wire.starts_with(prefix), "got {wire:?}, wanted {prefix:?}");
        self
    }

    /// Checks that no reply is pending.
    pub(super) fn expect_nothing(&mut self) -> &mut Self {
        assert!(
            !self.out.iter().any(|a| matches!(a, Action::Reply(_))),
            "{:?}",
            self.out
        );
        self
    }

    pub(super) fn expect_close(&mut self) -> &mut Self {
        assert!(self.out.contains(&Action::Close), "{:?}", self.out);
        self
    }
}

#[test]
fn full_transaction() {
    let mut d = Dialog::new();
    d.client("EHLO client.example")
        .expect("250-mx.example.org Hello client.example [192.0.2.7]");
    d.client("MAIL FROM:<a@example.org> SIZE=100")
        .expect("250 2.1.0");
    d.client("RCPT TO:<bob@example.org> NOTIFY=NEVER")
        .expect("250 2.1.5");
    d.client("DATA").expect("354 ");
    d.client("Subject: hi")
        .client("")
        .client("..dot")
        .client(".");
    d.expect("250 2.0.0 0000abcd Message accepted");
    assert_eq!(d.stored, [&b"Subject: hi"[..], b"", b".dot"]);
    d.client("QUIT").expect("221 2.0.0").expect_close();
}

#[test]
fn ehlo_advertises_extensions() {
    let mut out = Vec::new();
    let mut d = Dialog::new();
    d.client("EHLO c");
    if let Some(Action::Reply(r)) = d.out.first() {
        r.render(&mut out);
    }
    let text = String::from_utf8_lossy(&out);
    for ext in [
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SIZE 1000",
        "DSN",
        "PIPELINING",
        "SMTPUTF8",
        "HELP",
        "LIMITS RCPTMAX=3 MAILMAX=2",
    ] {
        assert!(
            text.contains(&format!("250-{ext}\r\n")) || text.contains(&format!("250 {ext}\r\n")),
            "{ext}: {text}"
        );
    }
}

#[test]
fn smtputf8_transactions() {
    let mut d = Dialog::new();
    d.client("EHLO c").expect("250");
    // Without SMTPUTF8 a UTF-8 address is refused (RFC 6531 §3.5).
    d.client("MAIL FROM:<jörg@bücher.example>")
        .expect("553 5.6.7 Non-ASCII addresses need SMTPUTF8");
    d.client("MAIL FROM:<a@b.c>").expect("250");
    d.client("RCPT TO:<用户@例子.广告>").expect("553 5.6.7");
    d.client("RSET").expect("250");
    // Octets that are not UTF-8 (a truncated sequence, an overlong form).
    d.s.on_line(b"MAIL FROM:<j\xc3@b.c> SMTPUTF8", &mut d.out);
    d.glue();
    d.expect("553 5.1.7 Sender address is not valid UTF-8");
    d.client("MAIL FROM:<jörg@bücher.example> SMTPUTF8")
        .expect("250 2.1.0");
    d.s.on_line(b"RCPT TO:<\xc0\xafx@b.c>", &mut d.out);
    d.glue();
    d.expect("553 5.1.3 Recipient address is not valid UTF-8");
    d.client("RCPT TO:<用户@例子.广告>").expect("250 2.1.5");
    let tx =
        d.s.tx()
            .map(|t| (t.params.smtputf8, Session::is_smtputf8(t)));
    assert_eq!(tx, Some((true, true)));
    d.client("DATA").expect("354");
    let h = d.s.received_header("date");
    assert!(h.contains(" with UTF8SMTP id 0000abcd"), "{h}");
    assert!(h.contains("for <用户@例子.广告>"), "{h}");
    d.client("Subject: grüße")
        .client("")
        .client("ü")
        .client(".");
    d.expect("250 2.0.0");
    assert_eq!(d.committed, ["用户@例子.广告"]);
    // The next transaction is plain ESMTP again; SMTPUTF8 needs EHLO.
    d.client("MAIL FROM:<a@b.c>").expect("250");
    d.client("RCPT TO:<u@b.c>").expect("250");
    d.client("DATA").expect("354");
    assert!(d.s.received_header("d").contains(" with ESMTP id"));
    d.client(".").expect("250");
    let mut d = Dialog::new();
    d.client("HELO c").expect("250");
    d.client("MAIL FROM:<a@b.c> SMTPUTF8").expect("555 5.5.4");
}

#[test]
fn sequence_errors() {
    let mut d = Dialog::new();
    d.client("MAIL FROM:<a@b.c>").expect("503 5.5.1");
    d.client("HELO c").expect("250 mx.example.org");
    d.client("RCPT TO:<a@b.c>")
        .expect("503 5.5.1 Error: need MAIL");
    d.client("DATA").expect("503 5.5.1 Error: need MAIL");
    d.client("MAIL FROM:<a@b.c>").expect("250");
    d.client("MAIL FROM:<a@b.c>")
        .expect("503 5.5.1 Error: nested");
    d.client("DATA").expect("503 5.5.1 Error: need RCPT");
    d.client("RSET").expect("250 2.0.0");
    d.client("RCPT TO:<a@b.c>").expect("503");
}

#[test]
fn helo_sessions_take_no_parameters() {
    let mut d = Dialog::new();
    d.client("HELO c").expect("250");
    d.client("MAIL FROM:<a@b.c> BODY=8BITMIME")
        .expect("555 5.5.4");
}

#[test]
fn recipients_refused_by_policy() {
    let mut d = Dialog::new();
    d.client("EHLO c").expect("250");
    d.client("MAIL FROM:<a@b.c>").expect("250");
    d.client("RCPT TO:<x@elsewhere.example>")
        .expect("550 5.7.1");
    d.client("RCPT TO:<nobody@example.org>").expect("550 5.1.1");
}

#[test]
fn limits_are_enforced() {
    let mut d = Dialog::new();
    d.client("EHLO c").expect("250");
    d.client("MAIL FROM:<a@b.c> SIZE=1001").expect("552 5.3.4");
    d.client("MAIL FROM:<a@b.c>").expect("250");
    for _ in 0..3 {
        d.client("RCPT TO:<u@b.c>").expect("250");
    }
    d.client("RCPT TO:<u@b.c>").expect("452 4.5.3");
    d.client("DATA").expect("354");
    d.client(&"x".repeat(600))
        .client(&"y".repeat(600))
        .client(".");
    d.expect("552 5.3.4");
    // max-mails 2: two accepted transactions, then 452.
    for _ in 0..2 {
        d.client("MAIL FROM:<a@b.c>").expect("250");
        d.client("RCPT TO:<u@b.c>").expect("250");
        d.client("DATA")
            .expect("354")
            .client("hi")
            .client(".")
            .expect("250 2.0.0");
    }
    d.client("MAIL FROM:<a@b.c>").expect("452 4.5.3");
}

#[test]
fn too_many_errors_close_the_session() {
    let mut d = Dialog::new();
    for _ in 0..9 {
        d.client("BOGUS").expect("500 5.5.2");
    }
    d.client("BOGUS")
        .expect("500 5.5.2")
        .expect("421 4.7.0")
        .expect_close();
}

#[test]
fn mail_loop_is_refused() {
    let mut d = Dialog::new();
    d.client("EHLO c").expect("250");
    d.client("MAIL FROM:<a@b.c>").expect("250");
    d.client("RCPT TO:<u@b.c>").expect("250");
    d.client("DATA").expect("354");
    for _ in 0..3 {
        d.client("Received: from x");
    }
    d.client("").client(".").expect("554 5.4.6");
    assert!(d.out.is_empty() || !d.out.contains(&Action::Commit));
}

#[test]
fn bare_newline_and_nul_in_content_are_refused() {
    for (line, bare, want) in [("a\nb", true, "550 5.5.2"), ("a\0b", false, "550 5.6.0")] {
        let mut d = Dialog::new();
        d.client("EHLO c").expect("250");
        d.client("MAIL FROM:<a@b.c>").expect("250");
        d.client("RCPT TO:<u@b.c>").expect("250");
        d.client("DATA").expect("354");
        assert_eq!(
            d.s.on_data(line.as_bytes(), true, true, bare),
            DataLine::Drop
        );
        d.client(".").expect(want);
        assert!(d.out.contains(&Action::Discard));
    }
}

#[test]
fn a_long_line_in_pieces_is_stored_whole_and_unstuffed_once() {
    let mut d = Dialog::new();
    d.client("EHLO c").expect("250");
    d.client("MAIL FROM:<a@b.c>").expect("250");
    d.client("RCPT TO:<u@b.c>").expect("250");
    d.client("DATA").expect("354");
    let s = &mut d.s;
    assert_eq!(
        s.on_data(b"..a", true, false, false),
        DataLine::Store(b".a")
    );
    // A later piece that starts with a dot keeps it, and "." there is no end.
    assert_eq!(
        s.on_data(b".b", false, false, false),
        DataLine::Store(b".b")
    );
    assert_eq!(s.on_data(b".", false, true, false), DataLine::Store(b"."));
    assert_eq!(s.tx().map(|t| t.size), Some(7));
    d.client(".").expect("250");
}

#[test]
fn max_text_line_counts_every_piece() {
    for (limit, want) in [(0, "250"), (12, "250"), (11, "500 5.5.2")] {
        let mut d = Dialog::new();
        d.s.limits.max_text_line = limit;
        d.client("EHLO c").expect("250");
        d.client("MAIL FROM:<a@b.c>").expect("250");
        d.client("RCPT TO:<u@b.c>").expect("250");
        d.client("DATA").expect("354");
        // ten octets (with the stuffed dot: eleven on the wire) and CR LF
        let _ = d.s.on_data(b"..abcd", true, false, false);
        let _ = d.s.on_data(b"efghi", false, true, false);
        d.client(".").expect(want);
    }
}

#[test]
fn a_failed_data_filter_makes_any_failure_temporary() {
    let mut d = Dialog::new();
    d.client("EHLO c").expect("250");
    d.client("MAIL FROM:<a@b.c>").expect("250");
    d.client("RCPT TO:<u@b.c>").expect("250");
    d.client("DATA").expect("354");
    // The filter made the message too big, then was killed for it.
    d.s.on_filter_overflow();
    d.s.on_filter_failed();
    d.client(".").expect("451 4.3.0");
    assert!(!d.out.contains(&Action::Commit));
}

#[test]
fn nul_in_command() {
    let mut d = Dialog::new();
    d.client("EHLO c\0x").expect("500 5.5.2 NUL");
}

#[test]
fn no_storage_at_mail() {
    let mut d = Dialog::new();
    d.space = false;
    d.client("EHLO c").expect("250");
    d.client("MAIL FROM:<a@b.c>").expect("452 4.3.1");
}

#[test]
fn unauthorised_pipelining_after_dot_closes() {
    let mut d = Dialog::new();
    d.client("HELO c").expect("250");
    d.client("MAIL FROM:<a@b.c>").expect("250");
    d.client("RCPT TO:<u@b.c>").expect("250");
    d.client("DATA").expect("354");
    assert_eq!(d.s.on_data(b".", true, true, false), DataLine::End);
    d.s.on_data_end(true, &mut d.out);
    d.expect("554 5.5.0").expect_close();
    assert!(!d.out.contains(&Action::Commit));
}

#[test]
fn filter_phases_reject_rewrite_and_disconnect() {
    use smtpd_filter::codec::event;
    let hooks = event::CONNECT | event::MAIL | event::RCPT | event::EOM;
    let mut d = Dialog::with_hooks(hooks);
    // Connect waits for the chain; no greeting yet, no input taken.
    let connect = FilterQuery {
        phase: Phase::Connect,
        param: String::new(),
    };
    assert_eq!(d.queries, [connect]);
    assert!(!d.s.wants_input());
    d.expect_nothing();
    d.verdict(FilterVerdict::Proceed {
        rewrite: None,
        junk: false,
    })
    .expect("220 mx.example.org");
    d.client("EHLO c").expect("250");
    // The spool's room is asked first, then the chain.
    d.client("MAIL FROM:<a@b.c>").expect_nothing();
    let mail = FilterQuery {
        phase: Phase::Mail,
        param: "a@b.c".into(),
    };
    assert_eq!(d.queries, [mail]);
    // Rewritten sender, checked again.
    d.verdict(FilterVerdict::Proceed {
        rewrite: Some("x@y.z".into()),
        junk: true,
    })
    .expect("250 2.1.0");
    assert_eq!(d.s.tx().map(|t| t.sender.to_string()), Some("x@y.z".into()));
    assert!(d.s.tx().is_some_and(|t| t.junk));
    d.client("RCPT TO:<u@b.c>").expect_nothing();
    d.verdict(FilterVerdict::Reject(Reply::new(550, "5.7.1", "not you")))
        .expect("550 5.7.1 not you");
    assert!(d.s.wants_input());
    d.client("RCPT TO:<u@b.c>");
    d.verdict(FilterVerdict::Disconnect(Reply::new(421, "4.7.0", "bye")))
        .expect("421 4.7.0 bye")
        .expect_close();
    assert_eq!(d.s.state(), State::Quit);
}

#[test]
fn received_header() {
    let mut d = Dialog::new();
    d.client("EHLO c.example").expect("250");
    d.client("MAIL FROM:<a@b.c>").expect("250");
    d.client("RCPT TO:<u@b.c>").expect("250");
    d.s.on_line(b"DATA", &mut d.out);
    d.out.clear();
    d.s.on_opened(Ok(0x1234), &mut d.out);
    assert_eq!(
            d.s.received_header("Thu, 1 Jan 1970 00:00:00 +0000"),
            "Received: from c.example (unknown [192.0.2.7])\n\tby mx.example.org (smtpd) with ESMTP id 00001234\n\tfor <u@b.c>;\n\tThu, 1 Jan 1970 00:00:00 +0000\n"
        );
}
