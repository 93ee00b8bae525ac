//! The SMTP/LMTP client session: a pure state machine fed with server replies.
//!
//! A session carries jobs, each one message to some recipients of it (the queue
//! manager puts at most [`MAX_RCPT`] in one), one after the other over the same
//! connection: after the final dot of one the next MAIL follows at once, after a
//! transaction that went nowhere (every RCPT or DATA refused) an RSET.
//!
//! ```text
//! [TlsConnect] -> Greeting -> Ehlo [-> Helo] [-> StartTls -> TlsWait -> Ehlo]
//!              [-> Auth] -> Ready <-------------------------------------------+
//! Ready --a ready job--> [Scan] -> Tx (MAIL, RCPT..., DATA) -> Body -> Dot ---+
//!                                  Tx (MAIL, RCPT...) -> Chunks (BDAT) -> Dot +
//!                                  Tx: MAIL refused (job done) --------------+
//!                                  Tx: nothing accepted, DATA refused -> Rset +
//!                                  Tx: 354 with nothing accepted -> LoneDot -> Rset
//! Ready --quit, no job--> Quit -> Done
//! ```
//!
//! The EHLO reply says what the server offers (`ehlo.rs`). A server that refuses EHLO
//! with a 5yz is greeted with HELO and offered no extension. With PIPELINING (RFC
//! 2920), MAIL, every RCPT and DATA go in one write and the replies are matched in
//! order; without it, each command waits for the reply to the one before. SIZE,
//! BODY=8BITMIME, SMTPUTF8 and the DSN parameters go on MAIL and RCPT when offered
//! (`params.rs`). Before MAIL, a job the server cannot take fails without being tried:
//! a message over the server's SIZE, 8-bit content for a server without 8BITMIME, a
//! non-ASCII address for a server without SMTPUTF8, a message received with SMTPUTF8
//! whose header section is UTF-8 for one without it (RFC 6531 §3.2: it is not
//! downgraded, 553 5.6.7), a BINARYMIME message for a server without CHUNKING and
//! BINARYMIME. What the content holds is asked of the glue only then, on
//! [`Step::Scan`]. STARTTLS and AUTH come between EHLO and the first MAIL (`setup.rs`).
//!
//! A BINARYMIME message (RFC 3030) never goes with DATA: after the replies to RCPT,
//! the glue sends it in BDAT chunks (`chunks.rs`), the last one marked LAST, whose
//! reply counts as the final dot's; with PIPELINING over SMTP the chunks follow each
//! other without waiting, else each waits for the reply to the one before. A chunk
//! refused ends the transaction: no chunk follows, and RSET comes once every chunk
//! sent was answered.
//!
//! Every recipient of a job ends with an [`Outcome`]: the reply to its RCPT when that
//! refused it, else the reply to the final dot (LMTP gives one per accepted recipient,
//! RFC 2033 §4.2). A 452 to a RCPT after others of the transaction were accepted
//! means too many recipients (RFC 5321 §4.5.3.1.10): that recipient goes in the next
//! transaction of the same job; a 452 to the first RCPT of a transaction is a
//! temporary failure of that recipient. Each transaction settles at least its first
//! recipient, so a job ends.
//!
//! A greeting other than 220, an EHLO and HELO refused, a 421 at any point, a failed
//! STARTTLS or AUTH, a reply when none is expected, or a lost connection end the
//! session: the recipients without a verdict are deferred, and
//! [`Client::failed_before_mail`] tells whether that happened before any MAIL (another
//! server of the destination may do better).

mod chunks;
mod ehlo;
pub mod params;
pub mod reply;
mod setup;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_chunks;
#[cfg(test)]
mod tests_ext;
mod tx;

pub use ehlo::Caps;
pub use reply::{ReplyParser, ServerReply};

use crate::mail::auth::Secret;
use crate::mail::TlsFacts;
use crate::mda::Outcome;
use crate::nexthop::Proto;
use std::collections::VecDeque;
use std::fmt;

/// Recipients of one job at most (RFC 5321 §4.5.3.1.8: a server takes at least 100).
pub const MAX_RCPT: usize = 100;

/// Whether and how the session protects itself with STARTTLS (RFC 3207).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Never (`smtp+notls`, LMTP).
    Off,
    /// When the server offers it; in plain text otherwise.
    Opportunistic,
    /// Always: a server that does not offer it gets no mail.
    Required,
}

/// How a session behaves, from its action.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientOpts {
    /// STARTTLS.
    pub tls: TlsMode,
    /// Credentials for AUTH (user, password), sent only once TLS is on.
    pub auth: Option<(String, String)>,
    /// TLS from the first byte (SMTPS): the glue does the handshake and calls
    /// [`Client::tls_done`] before the greeting is read.
    pub tls_on_connect: bool,
}

impl Default for ClientOpts {
    fn default() -> ClientOpts {
        ClientOpts {
            tls: TlsMode::Off,
            auth: None,
            tls_on_connect: false,
        }
    }
}

impl fmt::Debug for ClientOpts {
    /// The password never shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientOpts")
            .field("tls", &self.tls)
            .field("auth", &self.auth.as_ref().map(|(u, _)| (u, "(secret)")))
            .field("tls_on_connect", &self.tls_on_connect)
            .finish()
    }
}

/// One recipient of a job.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Rcpt {
    /// The address given in RCPT TO.
    pub addr: String,
    /// DSN NOTIFY bits as received (`crate::mail::params::notify`), 0 for none.
    pub notify: u8,
    /// DSN ORCPT as received (`type;xtext`), or empty.
    pub orcpt: String,
    /// The recipient as the message's client gave it here, for an ORCPT when none
    /// was received.
    pub original: String,
}

/// One message to deliver to some of its recipients.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Job {
    /// The caller's id for it, given back in [`JobDone`].
    pub id: u64,
    /// The message, for the log.
    pub msgid: u32,
    /// MAIL FROM, empty for `<>`.
    pub sender: String,
    /// The recipients.
    pub rcpts: Vec<Rcpt>,
    /// The client said `BODY=8BITMIME`.
    pub body_8bit: bool,
    /// The message needs SMTPUTF8 (RFC 6531): it was received with it, or an address
    /// is UTF-8. SMTPUTF8 goes on MAIL when the server offers it.
    pub smtputf8: bool,
    /// REQUIRETLS (RFC 8689): sent only over verified TLS, to a server that offers
    /// REQUIRETLS, with the parameter.
    pub requiretls: bool,
    /// The client said `BODY=BINARYMIME`: the message goes only in BDAT chunks.
    pub body_binary: bool,
    /// DSN RET as received (`FULL`, `HDRS`) or empty.
    pub ret: String,
    /// DSN ENVID as received (xtext) or empty.
    pub envid: String,
}

/// What a job's message holds, as far as the checks before MAIL care.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Content {
    /// An octet above 127 somewhere (RFC 6152).
    pub eight_bit: bool,
    /// An octet above 127 in the header section: UTF-8 headers (RFC 6532).
    pub utf8_header: bool,
}

/// What a delivered recipient's NOTIFY=SUCCESS calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuccessNotice {
    /// A final delivery (LMTP): a "delivered" notice from here.
    Delivered,
    /// Handed to a server that does not do DSN: a "relayed" notice from here (RFC 3461
    /// §6.2.3).
    Relayed,
    /// The server took the NOTIFY parameter: it reports, not this one.
    PassedOn,
}

/// A job that is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobDone {
    /// The job's id.
    pub id: u64,
    /// One outcome per recipient, in the job's order.
    pub outcomes: Vec<Outcome>,
    /// For each recipient delivered, the server's reply that took it; empty otherwise.
    pub replies: Vec<String>,
    /// What NOTIFY=SUCCESS calls for.
    pub notice: SuccessNotice,
    /// The server's name as it gave it (for Remote-MTA), or empty.
    pub server: String,
}

/// What the glue must do next.
#[derive(Debug, PartialEq, Eq)]
#[must_use]
pub enum Step {
    /// Send this command line (without CR LF).
    Send(String),
    /// Send this line of an AUTH exchange, which holds credentials; a log or trace
    /// shows `shown` instead.
    SendSecret {
        /// The line.
        line: Secret,
        /// What may be shown of it.
        shown: &'static str,
    },
    /// Send this job's message content from its start, then the final dot, then call
    /// [`Client::body_sent`].
    SendBody(u64),
    /// Send this job's message in BDAT chunks (RFC 3030), as it is in the spool but
    /// for the CR LF line ends of its header section: each chunk while
    /// [`Client::may_send_chunk`] says so, then [`Client::chunk_sent`]; the last one
    /// with LAST.
    SendChunks(u64),
    /// Find what this job's message holds ([`Content`]) and tell [`Client::scanned`].
    Scan(u64),
    /// The server said 220 to STARTTLS: start the TLS handshake (after checking that
    /// the server sent nothing more in plain text) and tell [`Client::tls_done`].
    StartTls,
    /// Log a line about a transaction: `mta EVENT` and the session's facts, then
    /// `fields`.
    Log {
        /// `transaction` (MAIL was sent) or `not-sent` (the job was refused here).
        event: &'static str,
        /// The rest of the line: `msgid=.. from=<..> rcpts=N accepted=N result=".."`.
        fields: String,
    },
    /// A job is over.
    Done(JobDone),
    /// The session is over: close.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// TLS from the first byte: waiting for the handshake.
    TlsConnect,
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    /// Waiting for [`Client::tls_done`].
    TlsWait,
    Auth(setup::AuthStep),
    Ready,
    /// Waiting for [`Client::scanned`].
    Scan,
    /// Commands of a transaction wait for their replies.
    Tx,
    Body,
    /// BDAT chunks being sent (the glue streams them); their replies come meanwhile.
    Chunks,
    Dot,
    /// A lone dot after a 354 with no recipient accepted.
    LoneDot,
    Rset,
    Quit,
    Done,
}

/// A job and what is known of it.
#[derive(Debug)]
struct JobState {
    job: Job,
    results: Vec<Option<Outcome>>,
    replies: Vec<String>,
    /// Its message can be sent (the glue has it open).
    ready: bool,
    /// The message's size in octets.
    size: u64,
    /// Whether its content has 8-bit octets, when known.
    eight_bit: Option<bool>,
    /// What its content holds, once the glue said.
    content: Option<Content>,
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

/// One client session delivering jobs.
#[derive(Debug)]
pub struct Client {
    proto: Proto,
    helo: String,
    opts: ClientOpts,
    state: State,
    /// Jobs not over; the one of the transaction in progress is first.
    jobs: VecDeque<JobState>,
    tx: tx::Tx,
    /// What the server offers (nothing after HELO).
    caps: Caps,
    /// The server's name, from its greeting or EHLO reply.
    server: String,
    tls: Option<TlsFacts>,
    /// The TLS of the session passes for REQUIRETLS (see [`Client::tls_verified`]).
    verified_tls: bool,
    /// End the session once no job is left.
    closing: bool,
    /// Why the session cannot carry jobs any more: the outcome of those pushed later.
    failed: Option<Outcome>,
    /// A MAIL was sent in this session.
    mail_sent: bool,
    /// Transactions started (MAIL sent).
    transactions: usize,
}

impl Client {
    /// A session that will say `helo`.
    pub fn new(proto: Proto, helo: &str, opts: ClientOpts) -> Client {
        let state = if opts.tls_on_connect {
            State::TlsConnect
        } else {
            State::Greeting
        };
        Client {
            proto,
            helo: helo.to_string(),
            opts,
            state,
            jobs: VecDeque::new(),
            tx: tx::Tx::default(),
            caps: Caps::default(),
            server: String::new(),
            tls: None,
            verified_tls: false,
            closing: false,
            failed: None,
            mail_sent: false,
            transactions: 0,
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

    /// The TLS session's facts, once TLS is on.
    pub fn tls(&self) -> Option<&TlsFacts> {
        self.tls.as_ref()
    }

    /// The server's name as it gave it, or empty.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Says whether the TLS about to be reported by [`Client::tls_done`] passes for
    /// REQUIRETLS (RFC 8689 §4.2.1): its certificate was verified by DANE, or by PKIX
    /// under an MTA-STS policy or an action that asks for verification.
    pub fn tls_verified(&mut self, verified: bool) {
        self.verified_tls = verified;
    }

    /// Transactions started (MAIL sent) so far.
    pub fn transactions(&self) -> usize {
        self.transactions
    }

    /// What the server offers, as its EHLO reply said.
    pub fn caps(&self) -> &Caps {
        &self.caps
    }

    /// Why the session failed, if it did.
    pub fn failure(&self) -> Option<&str> {
        match &self.failed {
            Some(Outcome::TempFail(s) | Outcome::PermFail(s)) => Some(s),
            _ => None,
        }
    }

    /// Whether a MAIL command was sent in this session.
    pub fn mail_sent(&self) -> bool {
        self.mail_sent
    }

    /// Whether the session failed before any MAIL was sent: connection, greeting,
    /// EHLO/HELO, STARTTLS or AUTH. Its jobs then never reached this server, and
    /// another server of the destination may take them.
    pub fn failed_before_mail(&self) -> bool {
        self.failed.is_some() && !self.mail_sent
    }

    /// Adds a job; it starts once [`Client::ready`] says its message can be sent.
    pub fn push(&mut self, job: Job) -> Vec<Step> {
        let n = job.rcpts.len();
        let eight_bit = job.body_8bit.then_some(true);
        let mut js = JobState {
            job,
            results: vec![None; n],
            replies: vec![String::new(); n],
            ready: false,
            size: 0,
            eight_bit,
            content: None,
        };
        if let Some(o) = &self.failed {
            js.settle_all(o);
            return vec![Step::Done(self.job_done(js))];
        }
        self.jobs.push_back(js);
        Vec::new()
    }

    /// The message of job `id` is open (`Ok` with its size in octets), or cannot be
    /// read: then the job is over, every recipient failed temporarily with the reason.
    pub fn ready(&mut self, id: u64, r: Result<u64, String>) -> Vec<Step> {
        let mut out = Vec::new();
        let Some(at) = self.jobs.iter().position(|j| j.job.id == id) else {
            return out;
        };
        match r {
            Ok(size) => {
                self.jobs[at].ready = true;
                self.jobs[at].size = size;
            }
            // A job already in a transaction had its message.
            Err(_) if self.jobs[at].ready => {}
            Err(why) => {
                if let Some(mut js) = self.jobs.remove(at) {
                    js.settle_all(&Outcome::TempFail(why));
                    out.push(Step::Done(self.job_done(js)));
                }
            }
        }
        if self.state == State::Ready {
            self.next(&mut out);
        }
        out
    }

    /// The answer to [`Step::Scan`]: what job `id`'s message holds, or why it could
    /// not be read (the job then fails temporarily).
    pub fn scanned(&mut self, id: u64, r: Result<Content, String>) -> Vec<Step> {
        let mut out = Vec::new();
        if self.state != State::Scan || self.jobs.front().is_none_or(|j| j.job.id != id) {
            return out;
        }
        match r {
            Ok(c) => {
                if let Some(js) = self.jobs.front_mut() {
                    // A declared BODY=8BITMIME stays 8-bit.
                    js.eight_bit = Some(js.eight_bit == Some(true) || c.eight_bit);
                    js.content = Some(c);
                }
            }
            Err(why) => {
                if let Some(js) = self.jobs.front_mut() {
                    js.settle_all(&Outcome::TempFail(why));
                }
                self.front_done(&mut out);
            }
        }
        self.next(&mut out);
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
        let mut out = Vec::new();
        if self.state == State::Quit && self.jobs.is_empty() {
            // Gone after QUIT: nothing was left to do.
            self.state = State::Done;
        } else if self.state != State::Done {
            let o = Outcome::TempFail(why.to_string());
            self.end_session(o, false, &mut out);
            // Nothing more is sent or read.
            out.retain(|s| !matches!(s, Step::Close));
            self.state = State::Done;
        }
        out
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

    /// Feeds a server reply; returns what to do.
    pub fn on_reply(&mut self, r: &ServerReply) -> Vec<Step> {
        let mut out = Vec::new();
        // RFC 5321 §3.8: the server is closing the connection.
        if r.code == 421 && !matches!(self.state, State::Quit | State::Done) {
            self.end_session(Outcome::TempFail(r.line()), false, &mut out);
            return out;
        }
        match self.state {
            State::Greeting => self.on_greeting(r, &mut out),
            State::Ehlo => self.on_ehlo(r, &mut out),
            State::Helo => self.on_helo(r, &mut out),
            State::StartTls => self.on_starttls(r, &mut out),
            State::Auth(step) => self.on_auth(step, r, &mut out),
            State::Tx => self.on_tx_reply(r, &mut out),
            State::Chunks | State::Dot if self.tx.chunk_replies > 0 => {
                self.on_chunk_reply(r, &mut out)
            }
            State::Dot => self.on_dot(r, &mut out),
            State::LoneDot => self.rset(&mut out),
            State::Rset if r.positive() => self.next(&mut out),
            State::Rset => {
                let o = Outcome::TempFail(format!("RSET refused: {}", r.line()));
                self.end_session(o, true, &mut out);
            }
            State::Quit => {
                out.push(Step::Close);
                self.state = State::Done;
            }
            State::Done => out.push(Step::Close),
            State::TlsConnect
            | State::TlsWait
            | State::Ready
            | State::Scan
            | State::Body
            | State::Chunks => {
                // Nothing was asked: a server that speaks out of turn cannot be
                // trusted with what follows.
                let why = format!("unexpected reply {} from {}", r.line(), self.server);
                self.end_session(Outcome::TempFail(why), false, &mut out);
            }
        }
        out
    }

    /// What a delivered recipient's NOTIFY=SUCCESS calls for, on this session.
    fn notice(&self) -> SuccessNotice {
        match self.proto {
            Proto::Lmtp => SuccessNotice::Delivered,
            Proto::Smtp if self.caps.dsn => SuccessNotice::PassedOn,
            Proto::Smtp => SuccessNotice::Relayed,
        }
    }

    fn job_done(&self, js: JobState) -> JobDone {
        let outcomes = js
            .results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Outcome::TempFail("no verdict".into())))
            .collect();
        JobDone {
            id: js.job.id,
            outcomes,
            replies: js.replies,
            notice: self.notice(),
            server: self.server.clone(),
        }
    }

    /// The session cannot go on: every job gets `o` for its recipients without a
    /// verdict, and so will those pushed later; then QUIT (`quit`) or close.
    fn end_session(&mut self, o: Outcome, quit: bool, out: &mut Vec<Step>) {
        if self.tx.active {
            let why = match &o {
                Outcome::TempFail(s) | Outcome::PermFail(s) => s.clone(),
                _ => String::new(),
            };
            self.log_tx(&why, out);
        }
        for mut js in std::mem::take(&mut self.jobs) {
            js.settle_all(&o);
            out.push(Step::Done(self.job_done(js)));
        }
        self.failed = Some(o);
        if quit {
            out.push(Step::Send("QUIT".into()));
            self.state = State::Quit;
        } else {
            out.push(Step::Close);
            self.state = State::Done;
        }
    }

    /// The front job is over when every recipient has an outcome.
    fn front_done(&mut self, out: &mut Vec<Step>) -> bool {
        let over = self
            .jobs
            .front()
            .is_none_or(|j| j.results.iter().all(Option::is_some));
        if over {
            if let Some(js) = self.jobs.pop_front() {
                out.push(Step::Done(self.job_done(js)));
            }
        }
        over
    }
}
