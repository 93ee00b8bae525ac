//! The SMTP/LMTP client session: a pure state machine fed with server replies.
//!
//! A session carries jobs, each one message to some recipients of it (the queue
//! manager puts at most [`MAX_RCPT`] in one), one after the other over the same
//! connection: after the final dot of one the next MAIL follows at once, after a
//! transaction that went nowhere (MAIL, every RCPT or DATA refused) an RSET.
//!
//! ```text
//! Greeting -> Hello -> Ready <------------------------------------------+
//!                      Ready --a ready job--> Mail -> Rcpt... -> Data   |
//!                                             Data -> Body -> Dot ------+
//!                      Mail refused (job done) -------------------------+
//!                      no recipient accepted, DATA refused -> Rset -----+
//!                      Ready --quit, no job--> Quit -> Done
//! ```
//! Every recipient of a job ends with an [`Outcome`]: the reply to its RCPT when that
//! refused it, else the reply to the final dot (LMTP gives one per accepted recipient,
//! RFC 2033 §4.2). A 452 to a RCPT after others of the transaction were accepted means
//! too many recipients (RFC 5321 §4.5.3.1.10): that recipient and the rest go in the
//! next transaction of the same job; a 452 to the first RCPT of a transaction is a
//! temporary failure of that recipient. Each transaction settles at least its first
//! recipient, so a job ends.

use crate::mda::Outcome;
use crate::nexthop::Proto;
use std::collections::VecDeque;

/// Recipients of one job at most (RFC 5321 §4.5.3.1.8: a server takes at least 100).
pub const MAX_RCPT: usize = 100;

/// A server reply: its code and its text lines joined with a space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    /// The three-digit code.
    pub code: u16,
    /// The text, continuation lines joined.
    pub text: String,
}

impl ServerReply {
    fn line(&self) -> String {
        format!("{} {}", self.code, self.text)
    }

    fn outcome(&self) -> Outcome {
        match self.code {
            200..=399 => Outcome::Ok,
            400..=499 => Outcome::TempFail(self.line()),
            _ => Outcome::PermFail(self.line()),
        }
    }
}

/// Collects the lines of one (possibly multi-line) reply.
#[derive(Debug, Default)]
pub struct ReplyParser {
    text: String,
    lines: usize,
}

/// Longest reply accepted, in lines.
const MAX_REPLY_LINES: usize = 100;

impl ReplyParser {
    /// Feeds one line (CR LF stripped). Returns the reply once its last line came, or an
    /// error for a malformed line.
    pub fn feed(&mut self, line: &[u8]) -> Result<Option<ServerReply>, String> {
        let line = String::from_utf8_lossy(line);
        let b = line.as_bytes();
        if b.len() < 3
            || !b[..3].iter().all(u8::is_ascii_digit)
            || (b.len() > 3 && b[3] != b' ' && b[3] != b'-')
        {
            return Err(format!(
                "malformed reply line {:?}",
                line.chars().take(80).collect::<String>()
            ));
        }
        let code: u16 = line[..3].parse().map_err(|_| "bad code".to_string())?;
        let text = if b.len() > 4 { &line[4..] } else { "" };
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        self.text.push_str(text.trim_end());
        self.lines += 1;
        if self.lines > MAX_REPLY_LINES {
            return Err("reply too long".into());
        }
        if b.len() > 3 && b[3] == b'-' {
            return Ok(None);
        }
        let text = std::mem::take(&mut self.text);
        self.lines = 0;
        if !(200..=599).contains(&code) {
            return Err(format!("reply code {code} out of range"));
        }
        Ok(Some(ServerReply { code, text }))
    }
}

/// One message to deliver to some of its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The caller's id for it, given back in [`Step::Done`].
    pub id: u64,
    /// MAIL FROM, empty for `<>`.
    pub sender: String,
    /// The addresses given in RCPT TO.
    pub rcpts: Vec<String>,
}

/// What the glue must do next.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Send this command line (without CR LF).
    Send(String),
    /// Send this job's message content from its start, then the final dot, then call
    /// [`Client::body_sent`].
    SendBody(u64),
    /// A job is over: one outcome per recipient, in the order given.
    Done(u64, Vec<Outcome>),
    /// The session is over: close.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Hello,
    Ready,
    Mail,
    Rcpt,
    Data,
    Body,
    Dot,
    Rset,
    Quit,
    Done,
}

/// A job and what is known of it.
#[derive(Debug)]
struct JobState {
    job: Job,
    results: Vec<Option<Outcome>>,
    /// Its message can be sent (the glue has it open).
    ready: bool,
}

impl JobState {
    fn unsettled(&self) -> Vec<usize> {
        (0..self.results.len())
            .filter(|&i| self.results[i].is_none())
            .collect()
    }

    /// Gives `o` to every recipient without an outcome.
    fn settle_all(&mut self, o: &Outcome) {
        for r in self.results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(o.clone());
        }
    }
}

/// The transaction in progress: of the front job.
#[derive(Debug, Default)]
struct Tx {
    /// Recipients (indices in the job) to offer, in order.
    todo: Vec<usize>,
    /// The next to offer.
    pos: usize,
    accepted: Vec<usize>,
    /// Replies to the final dot still expected.
    dot_replies: usize,
}

/// One client session delivering jobs.
#[derive(Debug)]
pub struct Client {
    proto: Proto,
    helo: String,
    state: State,
    /// Jobs not over; the one of the transaction in progress is first.
    jobs: VecDeque<JobState>,
    tx: Tx,
    /// End the session once no job is left.
    closing: bool,
    /// Why the session cannot carry jobs any more: the outcome of those pushed later.
    failed: Option<Outcome>,
}

impl Client {
    /// A session that will say `helo`.
    pub fn new(proto: Proto, helo: &str) -> Client {
        Client {
            proto,
            helo: helo.to_string(),
            state: State::Greeting,
            jobs: VecDeque::new(),
            tx: Tx::default(),
            closing: false,
            failed: None,
        }
    }

    /// The protocol spoken.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Whether the body is being sent (the glue streams it, then calls
    /// [`Client::body_sent`]).
    pub fn in_body(&self) -> bool {
        self.state == State::Body
    }

    /// Whether the session is over.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Adds a job; it starts once [`Client::ready`] says its message can be sent.
    pub fn push(&mut self, job: Job) -> Vec<Step> {
        let n = job.rcpts.len();
        let mut js = JobState {
            job,
            results: vec![None; n],
            ready: false,
        };
        if let Some(o) = &self.failed {
            js.settle_all(o);
            return vec![Step::Done(js.job.id, Self::outcomes(js.results))];
        }
        self.jobs.push_back(js);
        Vec::new()
    }

    /// The message of job `id` is open (`Ok`), or cannot be read: then the job is over,
    /// every recipient failed temporarily with the reason.
    pub fn ready(&mut self, id: u64, r: Result<(), String>) -> Vec<Step> {
        let mut out = Vec::new();
        let Some(at) = self.jobs.iter().position(|j| j.job.id == id) else {
            return out;
        };
        match r {
            Ok(()) => self.jobs[at].ready = true,
            // A job already in a transaction had its message.
            Err(_) if self.jobs[at].ready => {}
            Err(why) => {
                if let Some(mut js) = self.jobs.remove(at) {
                    js.settle_all(&Outcome::TempFail(why));
                    out.push(Step::Done(js.job.id, Self::outcomes(js.results)));
                }
            }
        }
        if self.state == State::Ready {
            self.next(&mut out);
        }
        out
    }

    /// No more jobs will come: QUIT once those pushed are over.
    pub fn quit(&mut self) -> Vec<Step> {
        self.closing = true;
        let mut out = Vec::new();
        if self.state == State::Ready {
            self.next(&mut out);
        }
        out
    }

    /// The connection is gone (closed, failed, timed out): every job not over ends,
    /// its recipients without a verdict failed temporarily with `why`.
    pub fn lost(&mut self, why: &str) -> Vec<Step> {
        let o = Outcome::TempFail(why.to_string());
        self.failed.get_or_insert(o.clone());
        self.state = State::Done;
        self.fail_jobs(&o)
    }

    /// The body was sent with its final dot.
    pub fn body_sent(&mut self) {
        if self.state == State::Body {
            self.state = State::Dot;
            self.tx.dot_replies = match self.proto {
                Proto::Lmtp => self.tx.accepted.len(),
                Proto::Smtp => 1,
            };
        }
    }

    fn outcomes(results: Vec<Option<Outcome>>) -> Vec<Outcome> {
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Outcome::TempFail("no verdict".into())))
            .collect()
    }

    /// Ends every job with `o` for the recipients without an outcome.
    fn fail_jobs(&mut self, o: &Outcome) -> Vec<Step> {
        self.jobs
            .drain(..)
            .map(|mut js| {
                js.settle_all(o);
                Step::Done(js.job.id, Self::outcomes(js.results))
            })
            .collect()
    }

    /// The session failed at its start or in a message: every job gets `o`, then QUIT.
    fn fail_session(&mut self, o: Outcome, out: &mut Vec<Step>) {
        out.extend(self.fail_jobs(&o));
        self.failed = Some(o);
        out.push(Step::Send("QUIT".into()));
        self.state = State::Quit;
    }

    /// The front job is over when every recipient has an outcome.
    fn front_done(&mut self, out: &mut Vec<Step>) -> bool {
        let over = self
            .jobs
            .front()
            .is_none_or(|j| j.results.iter().all(Option::is_some));
        if over {
            if let Some(js) = self.jobs.pop_front() {
                out.push(Step::Done(js.job.id, Self::outcomes(js.results)));
            }
        }
        over
    }

    /// In `Ready`: starts the next transaction (of the front job if it has recipients
    /// left, else of the first ready job), or QUIT when closing with no job left.
    fn next(&mut self, out: &mut Vec<Step>) {
        if let Some(at) = self.jobs.iter().position(|j| j.ready) {
            if let Some(js) = self.jobs.remove(at) {
                self.jobs.push_front(js);
            }
            let Some(js) = self.jobs.front() else { return };
            self.tx = Tx {
                todo: js.unsettled(),
                ..Tx::default()
            };
            out.push(Step::Send(format!("MAIL FROM:<{}>", js.job.sender)));
            self.state = State::Mail;
        } else if self.closing && self.jobs.is_empty() {
            out.push(Step::Send("QUIT".into()));
            self.state = State::Quit;
        }
    }

    fn rset(&mut self, out: &mut Vec<Step>) {
        out.push(Step::Send("RSET".into()));
        self.state = State::Rset;
    }

    /// Offers the next recipient, or goes on to DATA (or RSET when none was accepted).
    fn next_rcpt(&mut self, out: &mut Vec<Step>) {
        let Some(js) = self.jobs.front() else {
            return self.rset(out);
        };
        match self.tx.todo.get(self.tx.pos) {
            Some(&i) => {
                out.push(Step::Send(format!("RCPT TO:<{}>", js.job.rcpts[i])));
                self.state = State::Rcpt;
            }
            None if self.tx.accepted.is_empty() => {
                // Every recipient refused: the job is over.
                self.front_done(out);
                self.rset(out);
            }
            None => {
                out.push(Step::Send("DATA".into()));
                self.state = State::Data;
            }
        }
    }

    /// Feeds a server reply; returns what to do.
    pub fn on_reply(&mut self, r: &ServerReply) -> Vec<Step> {
        let mut out = Vec::new();
        match self.state {
            State::Greeting if r.code != 220 => self.fail_session(r.outcome(), &mut out),
            State::Greeting => {
                let verb = match self.proto {
                    Proto::Smtp => "EHLO",
                    Proto::Lmtp => "LHLO",
                };
                out.push(Step::Send(format!("{verb} {}", self.helo)));
                self.state = State::Hello;
            }
            State::Hello if r.code != 250 => self.fail_session(r.outcome(), &mut out),
            State::Hello | State::Rset => {
                self.state = State::Ready;
                self.next(&mut out);
            }
            State::Ready => {}
            State::Mail => {
                if r.code == 250 {
                    self.next_rcpt(&mut out);
                } else {
                    // No transaction was opened: the job is over.
                    if let Some(js) = self.jobs.front_mut() {
                        js.settle_all(&r.outcome());
                    }
                    self.front_done(&mut out);
                    self.state = State::Ready;
                    self.next(&mut out);
                }
            }
            State::Rcpt => self.on_rcpt(r, &mut out),
            State::Data => {
                if r.code == 354 {
                    if let Some(js) = self.jobs.front() {
                        out.push(Step::SendBody(js.job.id));
                    }
                    self.state = State::Body;
                } else {
                    // The message is refused as a whole.
                    let o = match r.code {
                        200..=399 => Outcome::TempFail(format!("unexpected reply {}", r.line())),
                        _ => r.outcome(),
                    };
                    if let Some(js) = self.jobs.front_mut() {
                        js.settle_all(&o);
                    }
                    self.front_done(&mut out);
                    self.rset(&mut out);
                }
            }
            State::Body => {
                // A reply while the body is sent: the server gave up on the session.
                let o = r.outcome();
                out.extend(self.fail_jobs(&o));
                self.failed = Some(o);
                out.push(Step::Close);
                self.state = State::Done;
            }
            State::Dot => self.on_dot(r, &mut out),
            State::Quit => {
                out.push(Step::Close);
                self.state = State::Done;
            }
            State::Done => out.push(Step::Close),
        }
        out
    }

    fn on_rcpt(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        let Some(&i) = self.tx.todo.get(self.tx.pos) else {
            return self.next_rcpt(out);
        };
        let Some(js) = self.jobs.front_mut() else {
            return self.rset(out);
        };
        self.tx.pos += 1;
        match r.code {
            250 | 251 => self.tx.accepted.push(i),
            // Too many recipients: this one and the rest go in the next transaction.
            452 if !self.tx.accepted.is_empty() => self.tx.pos = self.tx.todo.len(),
            200..=399 => {
                js.results[i] = Some(Outcome::TempFail(format!("unexpected reply {}", r.line())))
            }
            _ => js.results[i] = Some(r.outcome()),
        }
        self.next_rcpt(out);
    }

    fn on_dot(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        let Some(js) = self.jobs.front_mut() else {
            self.state = State::Ready;
            return self.next(out);
        };
        match self.proto {
            Proto::Smtp => {
                let o = r.outcome();
                for &i in &self.tx.accepted {
                    js.results[i] = Some(o.clone());
                }
            }
            Proto::Lmtp => {
                let n = self.tx.accepted.len() - self.tx.dot_replies;
                if let Some(&i) = self.tx.accepted.get(n) {
                    js.results[i] = Some(r.outcome());
                }
            }
        }
        self.tx.dot_replies = self.tx.dot_replies.saturating_sub(1);
        if self.tx.dot_replies == 0 {
            // The transaction is complete: the next MAIL needs no RSET (RFC 5321 §4.1.1.4).
            self.front_done(out);
            self.state = State::Ready;
            self.next(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(code: u16) -> ServerReply {
        ServerReply {
            code,
            text: "x".into(),
        }
    }

    fn job(id: u64, sender: &str, rcpts: &[&str]) -> Job {
        Job {
            id,
            sender: sender.into(),
            rcpts: rcpts.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The client paired with a scripted server: each reply the server gives is checked
    /// against what the client does next.
    struct Dialog {
        c: Client,
        done: Vec<(u64, Vec<Outcome>)>,
        closed: bool,
    }

    impl Dialog {
        fn new(proto: Proto) -> Dialog {
            Dialog {
                c: Client::new(proto, "me.example"),
                done: Vec::new(),
                closed: false,
            }
        }

        /// Takes the steps; returns the lines sent (SendBody as `<body N>`).
        fn take(&mut self, steps: Vec<Step>) -> Vec<String> {
            let mut sent = Vec::new();
            for s in steps {
                match s {
                    Step::Send(l) => sent.push(l),
                    Step::SendBody(id) => {
                        sent.push(format!("<body {id}>"));
                        self.c.body_sent();
                    }
                    Step::Done(id, o) => self.done.push((id, o)),
                    Step::Close => self.closed = true,
                }
            }
            sent
        }

        fn push(&mut self, j: Job) -> &mut Self {
            let steps = self.c.push(j);
            assert_eq!(self.take(steps), Vec::<String>::new());
            self
        }

        fn ready(&mut self, id: u64) -> Vec<String> {
            let steps = self.c.ready(id, Ok(()));
            self.take(steps)
        }

        /// The server replies `code`; the client must send `expect` (nothing when empty).
        fn server(&mut self, code: u16, expect: &[&str]) -> &mut Self {
            let steps = self.c.on_reply(&r(code));
            assert_eq!(self.take(steps), expect, "after {code}");
            self
        }

        fn outcome(&self, id: u64) -> Vec<&'static str> {
            let (_, o) = self
                .done
                .iter()
                .find(|(j, _)| *j == id)
                .unwrap_or_else(|| panic!("job {id} not done: {:?}", self.done));
            o.iter()
                .map(|o| match o {
                    Outcome::Ok => "ok",
                    Outcome::TempFail(_) => "temp",
                    Outcome::PermFail(_) => "perm",
                    Outcome::Forward(_) => "forward",
                })
                .collect()
        }
    }

    #[test]
    fn multiline_replies() {
        let mut p = ReplyParser::default();
        assert_eq!(p.feed(b"250-mx hello"), Ok(None));
        assert_eq!(p.feed(b"250-PIPELINING"), Ok(None));
        assert_eq!(
            p.feed(b"250 HELP"),
            Ok(Some(ServerReply {
                code: 250,
                text: "mx hello PIPELINING HELP".into()
            }))
        );
        assert!(p.feed(b"25").is_err());
        assert!(p.feed(b"250xyz").is_err());
        assert!(p.feed(b"999 no").is_err());
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
    fn refused_greeting_fails_every_job_and_later_ones() {
        let mut d = Dialog::new(Proto::Smtp);
        d.push(job(1, "", &["x@y"]));
        d.server(554, &["QUIT"]);
        assert_eq!(d.outcome(1), ["perm"]);
        let steps = d.c.push(job(2, "", &["z@y"]));
        d.take(steps);
        assert_eq!(d.outcome(2), ["perm"]);
        d.server(221, &[]);
        assert!(d.closed);
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
        assert!(d.c.done());
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
        let steps = d.c.on_reply(&r(421));
        d.take(steps);
        assert!(d.closed);
        assert_eq!(d.outcome(1), ["temp"]);
        assert_eq!(d.outcome(2), ["temp"]);
    }
}
