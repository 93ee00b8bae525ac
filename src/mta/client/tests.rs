//! The client as dialogs with a scripted server: each reply given is checked against
//! what the client does next. Lock-step sessions, LMTP, and the ends of sessions;
//! the extensions are in `tests_ext.rs`.

use super::*;
use crate::linebuf::{Line, LineBuf};

pub(super) fn r(code: u16) -> ServerReply {
    ServerReply::new(code, "x")
}

pub(super) fn job(id: u64, sender: &str, rcpts: &[&str]) -> Job {
    Job {
        id,
        msgid: id as u32,
        sender: sender.into(),
        rcpts: rcpts
            .iter()
            .map(|s| Rcpt {
                addr: s.to_string(),
                original: s.to_string(),
                ..Rcpt::default()
            })
            .collect(),
        ..Job::default()
    }
}

/// The client paired with a scripted server.
pub(super) struct Dialog {
    pub(super) c: Client,
    pub(super) done: Vec<JobDone>,
    pub(super) logs: Vec<String>,
    pub(super) closed: bool,
    /// `Scan` asked for.
    pub(super) scans: Vec<u64>,
    /// Answer a `Scan` at once: 7-bit content.
    pub(super) auto_scan: bool,
    pub(super) starttls: bool,
}

impl Dialog {
    pub(super) fn new(proto: Proto) -> Dialog {
        Dialog::with(proto, ClientOpts::default())
    }

    pub(super) fn with(proto: Proto, opts: ClientOpts) -> Dialog {
        Dialog {
            c: Client::new(proto, "me.example", opts),
            done: Vec::new(),
            logs: Vec::new(),
            closed: false,
            scans: Vec::new(),
            auto_scan: true,
            starttls: false,
        }
    }

    /// Takes the steps; returns the lines sent (SendBody as `<body N>`, a secret as
    /// what may be shown of it, a lone dot as `.`).
    pub(super) fn take(&mut self, steps: Vec<Step>) -> Vec<String> {
        let mut sent = Vec::new();
        for s in steps {
            match s {
                Step::Send(l) => sent.push(l),
                Step::SendSecret { line, shown } => {
                    let line = String::from_utf8_lossy(line.expose()).to_string();
                    sent.push(format!("{shown} [{line}]"));
                }
                Step::SendBody(id) => {
                    sent.push(format!("<body {id}>"));
                    self.c.body_sent();
                }
                // The chunks go when the test says (`tests_chunks.rs`).
                Step::SendChunks(id) => sent.push(format!("<chunks {id}>")),
                Step::Scan(id) => {
                    self.scans.push(id);
                    if self.auto_scan {
                        let steps = self.c.scanned(id, Ok(Content::default()));
                        sent.extend(self.take(steps));
                    }
                }
                Step::StartTls => self.starttls = true,
                Step::Log { event, fields } => self.logs.push(format!("{event} {fields}")),
                Step::Done(d) => self.done.push(d),
                Step::Close => self.closed = true,
            }
        }
        sent
    }

    pub(super) fn push(&mut self, j: Job) -> &mut Self {
        let steps = self.c.push(j);
        assert_eq!(self.take(steps), Vec::<String>::new());
        self
    }

    pub(super) fn ready(&mut self, id: u64) -> Vec<String> {
        self.ready_size(id, 10)
    }

    pub(super) fn ready_size(&mut self, id: u64, size: u64) -> Vec<String> {
        let steps = self.c.ready(id, Ok(size));
        self.take(steps)
    }

    /// The server replies; the client must send `expect` (nothing when empty).
    pub(super) fn reply(&mut self, reply: ServerReply, expect: &[&str]) -> &mut Self {
        let steps = self.c.on_reply(&reply);
        assert_eq!(self.take(steps), expect, "after {}", reply.line());
        self
    }

    /// The server replies `code`; the client must send `expect`.
    pub(super) fn server(&mut self, code: u16, expect: &[&str]) -> &mut Self {
        self.reply(r(code), expect)
    }

    /// The server says 250 to EHLO with these keyword lines.
    pub(super) fn ehlo(&mut self, keywords: &[&str], expect: &[&str]) -> &mut Self {
        let mut lines = vec!["mx.test".to_string()];
        lines.extend(keywords.iter().map(|k| k.to_string()));
        let reply = ServerReply {
            code: 250,
            text: lines.join(" "),
            lines,
        };
        self.reply(reply, expect)
    }

    pub(super) fn done_of(&self, id: u64) -> &JobDone {
        self.done
            .iter()
            .find(|d| d.id == id)
            .unwrap_or_else(|| panic!("job {id} not done: {:?}", self.done))
    }

    pub(super) fn outcome(&self, id: u64) -> Vec<&'static str> {
        self.done_of(id)
            .outcomes
            .iter()
            .map(|o| match o {
                Outcome::Ok => "ok",
                Outcome::TempFail(_) => "temp",
                Outcome::PermFail(_) => "perm",
                Outcome::Forward(_) => "forward",
            })
            .collect()
    }

    /// The reason of recipient `i` of job `id`.
    pub(super) fn why(&self, id: u64, i: usize) -> String {
        match &self.done_of(id).outcomes[i] {
            Outcome::TempFail(s) | Outcome::PermFail(s) => s.clone(),
            o => format!("{o:?}"),
        }
    }
}

/// The server's bytes of each turn, fed to a line buffer and the parser cut at `at`
/// (or whole); returns every line the client sent, turn by turn.
fn wire_dialog(turns: &[&[u8]], at: Option<usize>) -> Vec<Vec<String>> {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a@y", "b@y", "c@y"]));
    d.ready(1);
    let mut buf = LineBuf::new(8192);
    let mut p = ReplyParser::default();
    let mut sent = Vec::new();
    for turn in turns {
        let cut = at.unwrap_or(turn.len()).min(turn.len());
        let mut lines = Vec::new();
        for piece in [&turn[..cut], &turn[cut..]] {
            buf.space()[..piece.len()].copy_from_slice(piece);
            buf.filled(piece.len());
            while let Line::Complete { bytes, .. } = buf.next_line(4096) {
                if let Ok(Some(reply)) = p.feed(bytes) {
                    let steps = d.c.on_reply(&reply);
                    lines.extend(d.take(steps));
                }
            }
        }
        sent.push(lines);
    }
    let steps = d.c.quit();
    sent.push(d.take(steps));
    sent.push(d.outcome(1).iter().map(|s| s.to_string()).collect());
    sent
}

#[test]
fn a_pipelined_dialog_at_every_cut() {
    let turns: &[&[u8]] = &[
        b"220 mx.test ESMTP\r\n",
        b"250-mx.test hello\r\n250-PIPELINING\r\n250-SIZE 100000\r\n250 8BITMIME\r\n",
        b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go\r\n",
        b"250 2.0.0 queued as X\r\n",
    ];
    let whole = wire_dialog(turns, None);
    assert_eq!(
        whole,
        vec![
            vec!["EHLO me.example"],
            vec![
                "MAIL FROM:<s@x> SIZE=10",
                "RCPT TO:<a@y>",
                "RCPT TO:<b@y>",
                "RCPT TO:<c@y>",
                "DATA"
            ],
            vec!["<body 1>"],
            vec![],
            vec!["QUIT"],
            vec!["ok", "perm", "ok"],
        ]
    );
    let longest = turns.iter().map(|t| t.len()).max().unwrap_or(0);
    for at in 0..longest {
        assert_eq!(wire_dialog(turns, Some(at)), whole, "cut at {at}");
    }
}

#[test]
fn lmtp_one_transaction_per_recipient_verdict() {
    let mut d = Dialog::new(Proto::Lmtp);
    d.push(job(1, "a@b.c", &["x", "y", "z"]));
    assert!(d.ready(1).is_empty(), "nothing before the greeting");
    d.server(220, &["LHLO me.example"])
        .server(250, &["MAIL FROM:<a@b.c>"])
        .server(250, &["RCPT TO:<x>"])
        .server(250, &["RCPT TO:<y>"])
        .server(550, &["RCPT TO:<z>"])
        .server(250, &["DATA"])
        .server(354, &["<body 1>"])
        .server(250, &[])
        .server(452, &[]);
    assert_eq!(d.outcome(1), ["ok", "perm", "temp"]);
    assert_eq!(d.done_of(1).notice, SuccessNotice::Delivered);
    let steps = d.c.quit();
    assert_eq!(d.take(steps), ["QUIT"]);
    d.server(221, &[]);
    assert!(d.closed && d.c.done());
}

#[test]
fn smtp_messages_share_the_connection() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "a@b.c", &["x@y", "z@y"]))
        .push(job(2, "", &["w@y"]));
    d.ready(2);
    d.server(220, &["EHLO me.example"])
        // Job 2 is ready first: it goes first.
        .server(250, &["MAIL FROM:<>"])
        .server(250, &["RCPT TO:<w@y>"])
        .server(250, &["DATA"])
        .server(354, &["<body 2>"])
        .server(250, &[]);
    assert_eq!(d.outcome(2), ["ok"]);
    assert_eq!(d.done_of(2).replies, ["250 x"]);
    assert_eq!(d.ready(1), ["MAIL FROM:<a@b.c>"]);
    d.server(250, &["RCPT TO:<x@y>"])
        .server(250, &["RCPT TO:<z@y>"])
        .server(250, &["DATA"])
        .server(354, &["<body 1>"])
        // One verdict for the whole message over SMTP.
        .server(451, &[]);
    assert_eq!(d.outcome(1), ["temp", "temp"]);
    let steps = d.c.quit();
    assert_eq!(d.take(steps), ["QUIT"]);
    assert_eq!(d.c.transactions(), 2);
    assert_eq!(
        d.logs,
        [
            "transaction msgid=00000002 from=<> rcpts=1 accepted=1 result=\"250 x\"",
            "transaction msgid=00000001 from=<a@b.c> rcpts=2 accepted=2 result=\"451 x\""
        ]
    );
}

#[test]
fn too_many_recipients_go_in_the_next_transaction() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a", "b", "c", "d"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .server(250, &["MAIL FROM:<s@x>"])
        .server(250, &["RCPT TO:<a>"])
        .server(250, &["RCPT TO:<b>"])
        .server(452, &["DATA"])
        .server(354, &["<body 1>"])
        // b, c and d follow in a second transaction, the message sent again.
        .server(250, &["MAIL FROM:<s@x>"])
        .server(250, &["RCPT TO:<b>"])
        .server(250, &["RCPT TO:<c>"])
        .server(452, &["DATA"])
        .server(354, &["<body 1>"])
        .server(250, &["MAIL FROM:<s@x>"])
        .server(250, &["RCPT TO:<c>"])
        // A 452 to the first RCPT is a temporary failure of that recipient.
        .server(452, &["RCPT TO:<d>"])
        .server(250, &["DATA"])
        .server(354, &["<body 1>"])
        .server(250, &[]);
    assert_eq!(d.outcome(1), ["ok", "ok", "temp", "ok"]);
}

#[test]
fn refusals_reset_and_go_on() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a"]))
        .push(job(2, "t@x", &["b"]))
        .push(job(3, "u@x", &["c"]));
    d.ready(1);
    d.ready(2);
    d.ready(3);
    d.server(220, &["EHLO me.example"])
        .server(250, &["MAIL FROM:<s@x>"])
        // MAIL refused: no transaction, the next job follows.
        .server(550, &["MAIL FROM:<t@x>"])
        .server(250, &["RCPT TO:<b>"])
        // Every RCPT refused: RSET before the next MAIL.
        .server(550, &["RSET"])
        .server(250, &["MAIL FROM:<u@x>"])
        .server(250, &["RCPT TO:<c>"])
        // DATA refused: the message fails, RSET.
        .server(250, &["DATA"])
        .server(554, &["RSET"])
        .server(250, &[]);
    assert_eq!(d.outcome(1), ["perm"]);
    assert_eq!(d.outcome(2), ["perm"]);
    assert_eq!(d.outcome(3), ["perm"]);
}

#[test]
fn a_refused_rset_ends_the_session() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a"])).push(job(2, "s@x", &["b"]));
    d.ready(1);
    d.ready(2);
    d.server(220, &["EHLO me.example"])
        .server(250, &["MAIL FROM:<s@x>"])
        .server(250, &["RCPT TO:<a>"])
        .server(550, &["RSET"])
        .server(500, &["QUIT"]);
    assert_eq!(d.outcome(1), ["perm"]);
    assert_eq!(d.outcome(2), ["temp"]);
    assert!(d.why(2, 0).starts_with("RSET refused: 500"));
}

#[test]
fn a_message_that_cannot_be_read_fails_alone() {
    let mut d = Dialog::new(Proto::Lmtp);
    d.push(job(1, "s@x", &["a"])).push(job(2, "s@x", &["b"]));
    d.server(220, &["LHLO me.example"]).server(250, &[]);
    let steps = d.c.ready(1, Err("cannot open".into()));
    assert!(d.take(steps).is_empty());
    assert_eq!(d.outcome(1), ["temp"]);
    assert_eq!(d.ready(2), ["MAIL FROM:<s@x>"]);
}

#[test]
fn a_refused_greeting_defers_every_job_and_later_ones() {
    for code in [554, 450] {
        let mut d = Dialog::new(Proto::Smtp);
        d.push(job(1, "", &["x@y"]));
        d.reply(ServerReply::new(code, "5.7.1 go away"), &["QUIT"]);
        // Another server of the destination may take it: deferred, not bounced.
        assert_eq!(d.outcome(1), ["temp"]);
        assert!(d.why(1, 0).contains(&format!("{code} 5.7.1 go away")));
        assert!(d.c.failed_before_mail());
        let steps = d.c.push(job(2, "", &["z@y"]));
        d.take(steps);
        assert_eq!(d.outcome(2), ["temp"]);
        d.server(221, &[]);
        assert!(d.closed);
    }
}

#[test]
fn a_421_anywhere_ends_the_session_with_the_unsettled_deferred() {
    // At the greeting, at EHLO: before any MAIL.
    for at in 0..2 {
        let mut d = Dialog::new(Proto::Smtp);
        d.push(job(1, "", &["x@y"]));
        d.ready(1);
        if at == 1 {
            d.server(220, &["EHLO me.example"]);
        }
        d.reply(ServerReply::new(421, "4.3.2 shutting down"), &[]);
        assert!(d.closed && d.c.done());
        assert_eq!(d.why(1, 0), "421 4.3.2 shutting down");
        assert!(d.c.failed_before_mail());
    }
    // In a transaction: what was settled stays, the rest is deferred.
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a", "b", "c"]))
        .push(job(2, "s@x", &["d"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .server(250, &["MAIL FROM:<s@x>"])
        .server(250, &["RCPT TO:<a>"])
        .server(250, &["RCPT TO:<b>"])
        .server(550, &["RCPT TO:<c>"])
        .server(421, &[]);
    assert!(d.closed);
    assert_eq!(d.outcome(1), ["temp", "perm", "temp"]);
    assert_eq!(d.outcome(2), ["temp"]);
    assert!(!d.c.failed_before_mail());
    assert_eq!(d.c.failure(), Some("421 x"));
    assert_eq!(
        d.logs,
        ["transaction msgid=00000001 from=<s@x> rcpts=3 accepted=1 result=\"421 x\""]
    );
}

#[test]
fn lost_connection_keeps_the_verdicts_known() {
    let mut d = Dialog::new(Proto::Lmtp);
    d.push(job(1, "s@x", &["a", "b"]))
        .push(job(2, "s@x", &["c"]));
    d.ready(1);
    d.server(220, &["LHLO me.example"])
        .server(250, &["MAIL FROM:<s@x>"])
        .server(250, &["RCPT TO:<a>"])
        .server(250, &["RCPT TO:<b>"])
        .server(250, &["DATA"])
        .server(354, &["<body 1>"])
        .server(250, &[]);
    let steps = d.c.lost("connection closed");
    d.take(steps);
    assert_eq!(d.outcome(1), ["ok", "temp"]);
    assert_eq!(d.outcome(2), ["temp"]);
    assert!(d.c.done() && !d.closed, "nothing to close: it is gone");
}

#[test]
fn lost_before_anything_is_before_mail_and_after_quit_is_no_failure() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a"]));
    let steps = d.c.lost("connection refused");
    d.take(steps);
    assert_eq!(d.outcome(1), ["temp"]);
    assert!(d.c.failed_before_mail());
    let mut d = Dialog::new(Proto::Smtp);
    d.server(220, &["EHLO me.example"]).server(250, &[]);
    let steps = d.c.quit();
    assert_eq!(d.take(steps), ["QUIT"]);
    let steps = d.c.lost("closed");
    d.take(steps);
    assert!(d.c.failure().is_none());
}

#[test]
fn server_reply_during_the_body_ends_the_session() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a"])).push(job(2, "s@x", &["b"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .server(250, &["MAIL FROM:<s@x>"])
        .server(250, &["RCPT TO:<a>"]);
    let steps = d.c.on_reply(&r(250));
    assert_eq!(steps, [Step::Send("DATA".into())]);
    let steps = d.c.on_reply(&r(354));
    assert_eq!(steps, [Step::SendBody(1)]);
    assert!(d.c.in_body());
    let steps = d.c.on_reply(&r(554));
    d.take(steps);
    assert!(d.closed);
    assert_eq!(d.outcome(1), ["temp"]);
    assert_eq!(d.outcome(2), ["temp"]);
}

#[test]
fn unsolicited_replies_abort() {
    // Before the client asked anything after EHLO (no job), and while it waits for
    // nothing.
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a"]));
    d.server(220, &["EHLO me.example"]).server(250, &[]);
    d.server(250, &[]);
    assert!(d.closed && d.c.done());
    assert_eq!(d.outcome(1), ["temp"]);
    assert!(
        d.why(1, 0).starts_with("unexpected reply 250 x from x"),
        "{}",
        d.why(1, 0)
    );
    // A second reply to a lock-step command.
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .server(250, &["MAIL FROM:<s@x>"])
        .server(250, &["RCPT TO:<a>"])
        .server(250, &["DATA"])
        .server(354, &["<body 1>"])
        .server(250, &[])
        .server(250, &[]);
    assert!(d.closed);
    assert_eq!(d.outcome(1), ["ok"], "what was settled stays");
}
