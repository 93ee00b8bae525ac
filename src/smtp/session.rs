//! The SMTP server session: a pure state machine (no sockets, no clock, no files).
//!
//! ```text
//!  Connected --EHLO/HELO--> Ready --MAIL--> Mail --RCPT*--> Mail --DATA--> Data
//!      ^                      ^  ^                                           |
//!      |                      |  '---------- reply to "." (250 or error) ---+-- Commit
//!      '---- (EHLO again) ----'                                              (fsync)
//!  any --QUIT / limit / timeout--> Quit
//! ```
//!
//! The glue (`smtp::conn`) feeds command lines to [`Session::on_line`], data lines to
//! [`Session::on_data`], and answers the [`Action`]s it gets: it writes replies,
//! opens and commits spool files, and closes the connection. What may block (the
//! spool's free space at MAIL, a recipient's expansion at RCPT or from a filter's
//! edit) is asked with [`Action::Lookup`] and answered through [`Session::on_lookup`]
//! (see `session/lookup.rs`). While [`Session::wants_input`] is false (a lookup, a
//! filter query or a commit in flight), the glue keeps further pipelined lines
//! buffered: RFC 2920 pipelining needs nothing more.

use super::command::{Command, ParseError};
use crate::filter::phase::{FilterQuery, FilterVerdict, Phase};
use crate::mail::address::Mailbox;
use crate::mail::delivery::Delivery;
use crate::mail::params::{notify, Body, MailParams, RcptParams};
use crate::mail::reply::Reply;
use crate::mail::Peer;
use std::collections::VecDeque;

mod lookup;

use crate::lookup::Lookup;
pub use lookup::EnvelopeEdit;

/// What the glue must do, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this reply.
    Reply(Reply),
    /// Open a message file in the spool, then call [`Session::on_opened`].
    OpenMessage,
    /// Write the envelopes and commit the open message, then call [`Session::on_committed`].
    Commit,
    /// Remove the open message (the transaction failed).
    Discard,
    /// Close the connection once the output is flushed.
    Close,
    /// Run the filter chain for this phase, then call [`Session::on_filter_result`].
    Filter(FilterQuery),
    /// Ask the lookup workers, then call [`Session::on_lookup`].
    Lookup(Lookup),
}

/// A command waiting for its filter verdict or its lookup.
#[derive(Debug, Clone)]
enum Pending {
    Connect,
    Helo {
        name: String,
        esmtp: bool,
    },
    Mail {
        sender: Mailbox,
        params: MailParams,
    },
    Rcpt {
        addr: Mailbox,
        params: RcptParams,
    },
    Data,
    Eom,
    /// MAIL waits for the spool's free space.
    Space {
        sender: Mailbox,
        params: MailParams,
    },
    /// RCPT waits for the recipient's expansion.
    Resolve {
        addr: Mailbox,
        params: RcptParams,
    },
    /// A recipient added by a filter at the end of the message waits for its
    /// expansion; the rest of the edits wait in the transaction.
    EomRcpt {
        addr: Mailbox,
    },
}

impl Pending {
    /// Whether a lookup (rather than a filter verdict) is awaited.
    fn is_lookup(&self) -> bool {
        matches!(
            self,
            Pending::Space { .. } | Pending::Resolve { .. } | Pending::EomRcpt { .. }
        )
    }
}

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Greeting sent; HELO/EHLO expected.
    Connected,
    /// Identified; no transaction.
    Ready,
    /// MAIL accepted; collecting recipients.
    Mail,
    /// After 354: data lines until ".".
    Data,
    /// The message is being made durable; no input is read.
    Commit,
    /// Closing.
    Quit,
}

/// A recipient accepted by the ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rcpt {
    /// The address as given in RCPT TO.
    pub addr: Mailbox,
    /// RCPT parameters.
    pub params: RcptParams,
    /// What it expands to: one envelope each.
    pub deliveries: Vec<Delivery>,
}

/// The open transaction.
#[derive(Debug, Clone, Default)]
pub struct Tx {
    /// MAIL FROM.
    pub sender: Mailbox,
    /// MAIL parameters.
    pub params: MailParams,
    /// Accepted recipients.
    pub rcpts: Vec<Rcpt>,
    /// The spool's id for the message, once opened.
    pub msgid: Option<u32>,
    /// Octets of content as transmitted (CR LF counted as two).
    pub size: u64,
    /// The first reason the message will be refused at ".".
    fail: Option<Reply>,
    /// Still in the header section.
    in_headers: bool,
    /// Received headers seen.
    hops: usize,
    /// Octets of the content line in progress so far (unstuffed, no line end).
    line_len: usize,
    /// A filter marked the transaction as spam.
    pub junk: bool,
    /// A filter quarantined the message: it is held in the queue, with this reason.
    pub quarantine: Option<String>,
    /// End-of-message envelope edits still to apply, in order.
    edits: VecDeque<EnvelopeEdit>,
}

/// Limits the session enforces (from `smtp ...`).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Maximum content size.
    pub max_message_size: u64,
    /// Recipients per transaction.
    pub max_rcpt: usize,
    /// Transactions per session.
    pub max_mails: usize,
    /// Failed commands before 421.
    pub max_errors: usize,
    /// Received headers refused from this count on.
    pub max_hops: usize,
    /// Octets in a content line, CR LF included; 0 for no limit but the size.
    pub max_text_line: usize,
}

/// What [`Session::on_data`] decided for a piece of content.
#[derive(Debug, PartialEq, Eq)]
pub enum DataLine<'a> {
    /// Store these bytes (dot-unstuffed), followed by a line end when the piece ends
    /// its line.
    Store(&'a [u8]),
    /// Drop the line: the message is already refused.
    Drop,
    /// The lone "."; [`Session::on_data_end`] must be called.
    End,
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Session {
    /// Session id, for logs.
    pub id: u64,
    state: State,
    client: Peer,
    limits: Limits,
    helo: String,
    esmtp: bool,
    tx: Option<Tx>,
    mails: usize,
    errors: usize,
    /// Events (filter protocol bits) the session's filter chain wants to decide.
    hooks: u32,
    pending: Option<Pending>,
    /// A filter marked the session as spam (applies to its transactions).
    junk: bool,
}

impl Session {
    /// Starts a session whose filter chain decides the `hooks` events (0 for none);
    /// the greeting, or the connect filter query, is the first action.
    pub fn new(id: u64, client: Peer, limits: Limits, hooks: u32, out: &mut Vec<Action>) -> Self {
        let mut s = Session {
            id,
            state: State::Connected,
            client,
            limits,
            helo: String::new(),
            esmtp: false,
            tx: None,
            mails: 0,
            errors: 0,
            hooks,
            pending: None,
            junk: false,
        };
        if !s.ask(Phase::Connect, String::new(), Pending::Connect, out) {
            s.banner(out);
        }
        s
    }

    fn banner(&self, out: &mut Vec<Action>) {
        out.push(Action::Reply(Reply::new(
            220,
            "",
            format!("{} ESMTP smtpd", self.client.server_name),
        )));
    }

    /// Asks the filter chain about `phase` when it wants to decide it; true if asked.
    fn ask(
        &mut self,
        phase: Phase,
        param: String,
        pending: Pending,
        out: &mut Vec<Action>,
    ) -> bool {
        if self.hooks & phase.event() == 0 {
            return false;
        }
        self.pending = Some(pending);
        out.push(Action::Filter(FilterQuery { phase, param }));
        true
    }

    /// The filter chain's verdict on the pending command.
    pub fn on_filter_result(&mut self, v: FilterVerdict, out: &mut Vec<Action>) {
        let Some(p) = self.pending.take() else {
            debug_assert!(false, "filter verdict without a pending command");
            return;
        };
        if p.is_lookup() {
            debug_assert!(false, "filter verdict while a lookup is pending");
            self.pending = Some(p);
            return;
        }
        let (rewrite, junk) = match v {
            FilterVerdict::Proceed { rewrite, junk } => (rewrite, junk),
            FilterVerdict::Discard if matches!(p, Pending::Eom) => {
                // Accepted as far as the client knows; nothing is queued.
                let id = self.tx.take().and_then(|t| t.msgid).unwrap_or(0);
                out.push(Action::Discard);
                out.push(Action::Reply(Reply::new(
                    250,
                    "2.0.0",
                    format!("{id:08x} Message accepted for delivery"),
                )));
                self.mails += 1;
                self.enter(State::Ready);
                return;
            }
            FilterVerdict::Discard => (None, false),
            FilterVerdict::Disconnect(r) => return self.close(r, out),
            FilterVerdict::Reject(r) => {
                // A 421 always ends the session, as RFC 5321 §3.8 means it.
                if r.code == 421 || matches!(p, Pending::Connect) {
                    return self.close(r, out);
                }
                if matches!(p, Pending::Eom) {
                    out.push(Action::Discard);
                    self.tx = None;
                    self.enter(State::Ready);
                }
                return self.fail(r, out);
            }
        };
        // Junk before MAIL marks the session, after it the transaction.
        if junk && !matches!(p, Pending::Mail { .. }) {
            match self.tx.as_mut() {
                Some(tx) => tx.junk = true,
                None => self.junk = true,
            }
        }
        match p {
            Pending::Connect => self.banner(out),
            Pending::Helo { name, esmtp } => {
                let name = rewrite.unwrap_or(name);
                // A rewritten name is checked as the client's own would be.
                if crate::mail::address::valid_helo(&name) {
                    self.greet_proceed(&name, esmtp, out)
                } else {
                    self.fail(Reply::HELO_SYNTAX, out)
                }
            }
            Pending::Mail { sender, params } => match rewrite {
                None => self.mail_proceed(sender, params, junk, out),
                Some(r) => match crate::mail::address::parse_address(&r, true) {
                    Some(m) => self.mail_proceed(m, params, junk, out),
                    None => self.fail(Reply::BAD_SENDER, out),
                },
            },
            Pending::Rcpt { addr, params } => match rewrite {
                None => self.rcpt_proceed(addr, params, out),
                Some(r) => match crate::mail::address::parse_address(&r, false) {
                    Some(m) => self.rcpt_proceed(m, params, out),
                    None => self.fail(Reply::BAD_RCPT, out),
                },
            },
            Pending::Data => out.push(Action::OpenMessage),
            // The filters' envelope edits, then the commit.
            Pending::Eom => self.eom_edits(out),
            Pending::Space { .. } | Pending::Resolve { .. } | Pending::EomRcpt { .. } => {}
        }
    }

    /// Records the client's reverse DNS name (looked up after the session started).
    pub fn set_hostname(&mut self, h: Option<String>) {
        self.client.hostname = h;
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the glue may feed the next line.
    pub fn wants_input(&self) -> bool {
        self.pending.is_none() && !matches!(self.state, State::Commit | State::Quit)
    }

    /// Whether lines are message content (use [`Session::on_data`]).
    pub fn in_data(&self) -> bool {
        self.state == State::Data
    }

    /// Whether the client said EHLO (and so was offered PIPELINING).
    pub fn esmtp(&self) -> bool {
        self.esmtp
    }

    /// The HELO/EHLO name.
    pub fn helo(&self) -> &str {
        &self.helo
    }

    /// The client.
    pub fn client(&self) -> &Peer {
        &self.client
    }

    /// The open transaction, if any.
    pub fn tx(&self) -> Option<&Tx> {
        self.tx.as_ref()
    }

    fn enter(&mut self, to: State) {
        log::debug!(target: "smtpd::smtp", "{:016x} smtp state {:?} -> {:?}", self.id, self.state, to);
        self.state = to;
    }

    /// Counts a failed command; past the limit the session ends with 421.
    fn fail(&mut self, reply: Reply, out: &mut Vec<Action>) {
        out.push(Action::Reply(reply));
        self.errors += 1;
        if self.errors >= self.limits.max_errors {
            self.close(Reply::TOO_MANY_ERRORS, out);
        }
    }

    /// Ends the session with `reply` (from any state but Commit, which discards nothing
    /// already promised: the glue only calls this on timeouts and shutdown).
    pub fn close(&mut self, reply: Reply, out: &mut Vec<Action>) {
        if self.state == State::Quit {
            return;
        }
        if self.tx.as_ref().is_some_and(|t| t.msgid.is_some()) && self.state != State::Commit {
            out.push(Action::Discard);
        }
        out.push(Action::Reply(reply));
        out.push(Action::Close);
        self.enter(State::Quit);
    }

    /// A command line that was too long, or held a bare CR/LF or NUL.
    pub fn on_bad_line(&mut self, reply: Reply, out: &mut Vec<Action>) {
        debug_assert!(self.wants_input());
        self.fail(reply, out);
    }

    /// Feeds one command line (CR LF stripped, checked for bare CR/LF and NUL).
    pub fn on_line(&mut self, line: &[u8], out: &mut Vec<Action>) {
        debug_assert!(self.wants_input() && !self.in_data());
        if memchr::memchr(0, line).is_some() {
            return self.fail(Reply::NUL_COMMAND, out);
        }
        let cmd = match Command::parse(line) {
            Ok(c) => c,
            Err(e) => return self.fail(e.reply(), out),
        };
        match cmd {
            Command::Helo(name) => self.greet(name, false, out),
            Command::Ehlo(name) => self.greet(name, true, out),
            Command::Mail(sender, params) => self.mail(sender, params, out),
            Command::Rcpt(addr, params) => self.rcpt(addr, params, out),
            Command::Data => self.data(out),
            Command::Rset => {
                if self.state == State::Mail {
                    self.tx = None;
                    self.enter(State::Ready);
                }
                out.push(Action::Reply(Reply::OK));
            }
            Command::Noop => out.push(Action::Reply(Reply::OK)),
            Command::Quit => {
                self.tx = None;
                out.push(Action::Reply(Reply::BYE));
                out.push(Action::Close);
                self.enter(State::Quit);
            }
            Command::Help => out.push(Action::Reply(Reply::new(
                214,
                "2.0.0",
                "This is smtpd\nCommands: HELO EHLO MAIL RCPT DATA RSET NOOP QUIT HELP\nEnd of HELP info",
            ))),
            Command::Vrfy | Command::Expn => self.fail(Reply::NOT_IMPLEMENTED, out),
        }
    }

    fn greet(&mut self, name: &str, esmtp: bool, out: &mut Vec<Action>) {
        let phase = if esmtp { Phase::Ehlo } else { Phase::Helo };
        let pending = Pending::Helo {
            name: name.to_string(),
            esmtp,
        };
        if !self.ask(phase, name.to_string(), pending, out) {
            self.greet_proceed(name, esmtp, out);
        }
    }

    fn greet_proceed(&mut self, name: &str, esmtp: bool, out: &mut Vec<Action>) {
        // RFC 5321 §4.1.4: HELO/EHLO resets any transaction.
        self.tx = None;
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
                "\n8BITMIME\nENHANCEDSTATUSCODES\nSIZE {}\nDSN\nPIPELINING\nHELP",
                self.limits.max_message_size
            ));
        }
        out.push(Action::Reply(Reply::new(250, "", text)));
        self.enter(State::Ready);
    }

    fn mail(&mut self, sender: Mailbox, params: MailParams, out: &mut Vec<Action>) {
        match self.state {
            State::Connected => return self.fail(Reply::NEED_HELO, out),
            State::Mail => return self.fail(Reply::NESTED_MAIL, out),
            _ => {}
        }
        if self.mails >= self.limits.max_mails {
            return self.fail(Reply::TOO_MANY_MAILS, out);
        }
        let size = params.size.unwrap_or(0);
        if size > self.limits.max_message_size {
            return self.fail(Reply::TOO_BIG, out);
        }
        if !self.esmtp && params != MailParams::default() {
            // Parameters need EHLO (RFC 5321 §4.1.1.11).
            return self.fail(
                ParseError::BadParam("parameters need EHLO".into()).reply(),
                out,
            );
        }
        // The answer comes through `on_lookup`, then `mail_checked`.
        self.pending = Some(Pending::Space { sender, params });
        out.push(Action::Lookup(Lookup::Space(size)));
    }

    /// MAIL, once the spool said it has room.
    fn mail_checked(&mut self, sender: Mailbox, params: MailParams, out: &mut Vec<Action>) {
        let param = sender.to_string();
        let pending = Pending::Mail {
            sender: sender.clone(),
            params: params.clone(),
        };
        if !self.ask(Phase::Mail, param, pending, out) {
            self.mail_proceed(sender, params, false, out);
        }
    }

    fn mail_proceed(
        &mut self,
        sender: Mailbox,
        params: MailParams,
        junk: bool,
        out: &mut Vec<Action>,
    ) {
        self.tx = Some(Tx {
            sender,
            params,
            in_headers: true,
            junk: junk || self.junk,
            ..Tx::default()
        });
        out.push(Action::Reply(Reply::MAIL_OK));
        self.enter(State::Mail);
    }

    fn rcpt(&mut self, addr: Mailbox, params: RcptParams, out: &mut Vec<Action>) {
        let Some(tx) = self.tx.as_mut().filter(|_| self.state == State::Mail) else {
            let r = if self.state == State::Connected {
                Reply::NEED_HELO
            } else {
                Reply::NEED_MAIL
            };
            return self.fail(r, out);
        };
        if !self.esmtp && params != RcptParams::default() {
            return self.fail(
                ParseError::BadParam("parameters need EHLO".into()).reply(),
                out,
            );
        }
        if tx.rcpts.len() >= self.limits.max_rcpt {
            // Not counted as an error: clients with long lists retry in a new transaction.
            out.push(Action::Reply(Reply::TOO_MANY_RCPT));
            return;
        }
        let param = addr.to_string();
        let pending = Pending::Rcpt {
            addr: addr.clone(),
            params: params.clone(),
        };
        if !self.ask(Phase::Rcpt, param, pending, out) {
            self.rcpt_proceed(addr, params, out);
        }
    }

    /// Asks for the recipient's expansion; the answer comes through `on_lookup`.
    fn rcpt_proceed(&mut self, addr: Mailbox, params: RcptParams, out: &mut Vec<Action>) {
        let Some(q) = self.rcpt_query(&addr) else {
            return self.fail(Reply::NEED_MAIL, out);
        };
        self.pending = Some(Pending::Resolve { addr, params });
        out.push(Action::Lookup(Lookup::Rcpt(Box::new(q))));
    }

    fn data(&mut self, out: &mut Vec<Action>) {
        match self.state {
            State::Connected => return self.fail(Reply::NEED_HELO, out),
            State::Ready => return self.fail(Reply::NEED_MAIL, out),
            _ => {}
        }
        if self.tx.as_ref().is_none_or(|t| t.rcpts.is_empty()) {
            return self.fail(Reply::NEED_RCPT, out);
        }
        if !self.ask(Phase::Data, String::new(), Pending::Data, out) {
            out.push(Action::OpenMessage);
        }
    }

    /// The answer to [`Action::OpenMessage`]: the message id, or why it failed.
    pub fn on_opened(&mut self, r: Result<u32, Reply>, out: &mut Vec<Action>) {
        let Some(tx) = self.tx.as_mut() else {
            debug_assert!(false, "open without transaction");
            return;
        };
        match r {
            Ok(msgid) => {
                tx.msgid = Some(msgid);
                out.push(Action::Reply(Reply::START_DATA));
                self.enter(State::Data);
            }
            Err(reply) => {
                self.tx = None;
                self.enter(State::Ready);
                self.fail(reply, out);
            }
        }
    }

    /// The Received header for the open message (RFC 5321 §4.4), with `date` formatted
    /// by the caller, lines ending in LF.
    pub fn received_header(&self, date: &str) -> String {
        let Some(tx) = &self.tx else {
            return String::new();
        };
        let from = match self.client.addr {
            Some(ip) => format!(
                "{} ({} [{}])",
                self.helo,
                self.client.hostname.as_deref().unwrap_or("unknown"),
                ip
            ),
            None => format!("{} (local)", self.helo),
        };
        let proto = if self.esmtp { "ESMTP" } else { "SMTP" };
        let mut h = format!(
            "Received: from {from}\n\tby {} (smtpd) with {proto} id {:08x}",
            self.client.server_name,
            tx.msgid.unwrap_or(0)
        );
        // Name the recipient only when there is one, so a Bcc is not disclosed.
        if let [only] = tx.rcpts.as_slice() {
            h.push_str(&format!("\n\tfor <{}>", only.addr));
        }
        h.push_str(&format!(";\n\t{date}\n"));
        h
    }

    /// Feeds a piece of content, CR LF stripped: a whole line, or a part of a line
    /// longer than the input buffer (`first`: the piece starts its line; `last`: it ends
    /// it). `bare` is the line buffer's report of a bare CR or LF in the piece.
    pub fn on_data<'a>(
        &mut self,
        bytes: &'a [u8],
        first: bool,
        last: bool,
        bare: bool,
    ) -> DataLine<'a> {
        debug_assert!(self.in_data());
        if first && last && bytes == b"." {
            return DataLine::End;
        }
        let Some(tx) = self.tx.as_mut() else {
            return DataLine::Drop;
        };
        // RFC 5321 §4.5.2: drop one leading dot.
        let bytes = match first {
            true => bytes.strip_prefix(b".").unwrap_or(bytes),
            false => bytes,
        };
        tx.size += bytes.len() as u64 + if last { 2 } else { 0 };
        if first {
            tx.line_len = 0;
        }
        tx.line_len = tx.line_len.saturating_add(bytes.len());
        if tx.fail.is_some() {
            return DataLine::Drop;
        }
        if bare {
            tx.fail = Some(Reply::BARE_NEWLINE_DATA);
            return DataLine::Drop;
        }
        if memchr::memchr(0, bytes).is_some() {
            tx.fail = Some(Reply::NUL_DATA);
            return DataLine::Drop;
        }
        if tx.size > self.limits.max_message_size {
            tx.fail = Some(Reply::TOO_BIG);
            return DataLine::Drop;
        }
        // `smtp limit max-text-line` counts the line end.
        let max_line = self.limits.max_text_line;
        if max_line > 0 && tx.line_len.saturating_add(2) > max_line {
            tx.fail = Some(Reply::DATA_LINE_TOO_LONG);
            return DataLine::Drop;
        }
        if tx.in_headers && first {
            if last && bytes.is_empty() {
                tx.in_headers = false;
            } else if bytes.len() >= 9 && bytes[..9].eq_ignore_ascii_case(b"received:") {
                tx.hops += 1;
                if tx.hops >= self.limits.max_hops {
                    tx.fail = Some(Reply::LOOP);
                    return DataLine::Drop;
                }
            }
        }
        DataLine::Store(bytes)
    }

    /// A content line could not be carried whole (longer than the filters' protocol
    /// allows): the message will be refused.
    pub fn on_data_too_long(&mut self) {
        if let Some(tx) = self.tx.as_mut() {
            tx.fail.get_or_insert(Reply::DATA_LINE_TOO_LONG);
        }
    }

    /// The filters' output grew past the size limit.
    pub fn on_filter_overflow(&mut self) {
        if let Some(tx) = self.tx.as_mut() {
            tx.fail.get_or_insert(Reply::TOO_BIG);
        }
    }

    /// A data filter failed: the message's lines are lost, which is temporary
    /// whatever else went wrong with it (a message the failed filter made too big, for
    /// one).
    pub fn on_filter_failed(&mut self) {
        if let Some(tx) = self.tx.as_mut() {
            tx.fail = Some(Reply::LOCAL_ERROR);
        }
    }

    /// A write to the message file failed (`no_space` for ENOSPC/EDQUOT).
    pub fn on_write_error(&mut self, no_space: bool) {
        if let Some(tx) = self.tx.as_mut() {
            tx.fail.get_or_insert(if no_space {
                Reply::NO_STORAGE
            } else {
                Reply::LOCAL_ERROR
            });
        }
    }

    /// The end of data was seen. `pipelined` tells that the client sent more bytes after
    /// the final "." without having been offered PIPELINING.
    pub fn on_data_end(&mut self, pipelined: bool, out: &mut Vec<Action>) {
        debug_assert!(self.in_data());
        let fail = self.tx.as_mut().and_then(|t| t.fail.take());
        if pipelined && !self.esmtp {
            out.push(Action::Discard);
            self.tx = None;
            return self.close(Reply::UNAUTH_PIPELINING, out);
        }
        match fail {
            Some(reply) => {
                out.push(Action::Discard);
                self.tx = None;
                self.enter(State::Ready);
                self.fail(reply, out);
            }
            None => {
                let size = self.tx.as_ref().map_or(0, |t| t.size).to_string();
                if !self.ask(Phase::Eom, size, Pending::Eom, out) {
                    out.push(Action::Commit);
                    self.enter(State::Commit);
                }
            }
        }
    }

    /// The answer to [`Action::Commit`]: the message is durable, or why not.
    pub fn on_committed(&mut self, r: Result<(), Reply>, out: &mut Vec<Action>) {
        if self.state != State::Commit {
            return;
        }
        let tx = self.tx.take();
        self.enter(State::Ready);
        match r {
            Ok(()) => {
                self.mails += 1;
                let id = tx.and_then(|t| t.msgid).unwrap_or(0);
                out.push(Action::Reply(Reply::new(
                    250,
                    "2.0.0",
                    format!("{id:08x} Message accepted for delivery"),
                )));
            }
            Err(reply) => self.fail(reply, out),
        }
    }

    /// DSN NOTIFY value to store for a recipient (0 = default).
    pub fn notify_of(r: &Rcpt) -> u8 {
        r.params.notify & (notify::SUCCESS | notify::FAILURE | notify::DELAY | notify::NEVER)
    }

    /// Whether the client declared 8-bit content.
    pub fn is_8bit(tx: &Tx) -> bool {
        tx.params.body == Body::EightBitMime
    }
}

#[cfg(test)]
mod tests {
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
    }

    pub(super) fn limits() -> Limits {
        Limits {
            max_message_size: 1000,
            max_rcpt: 3,
            max_mails: 2,
            max_errors: 10,
            max_hops: 3,
            max_text_line: 0,
        }
    }

    impl Dialog {
        pub(super) fn new() -> Self {
            Self::with_hooks(0)
        }

        /// A dialog whose filter chain decides the `hooks` events.
        pub(super) fn with_hooks(hooks: u32) -> Self {
            let mut out = Vec::new();
            let client = Peer {
                addr: Some(std::net::IpAddr::from([192, 0, 2, 7])),
                local: false,
                server_name: "mx.example.org".into(),
                tag: None,
                hostname: None,
            };
            let s = Session::new(7, client, limits(), hooks, &mut out);
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
                        DataLine::Store(b) => self.stored.push(b.to_vec()),
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
                        };
                        self.s.on_lookup(a, &mut more)
                    }
                    Action::Lookup(l) => self.asked.push(l.clone()),
                    Action::Filter(q) => self.queries.push(q.clone()),
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
            "HELP",
        ] {
            assert!(
                text.contains(&format!("250-{ext}\r\n"))
                    || text.contains(&format!("250 {ext}\r\n")),
                "{ext}: {text}"
            );
        }
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
}
