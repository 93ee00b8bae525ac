//! The SMTP server session: a pure state machine (no sockets, no clock, no files).
//!
//! ```text
//!  Connected --EHLO/HELO--> Ready --MAIL--> Mail --RCPT*--> Mail --DATA--> Data
//!      ^                      ^  ^                             |  ^          |
//!      |                      |  |                        BDAT |  | (250)    |
//!      |                      |  |                             v  |          |
//!      |                      |  |                           Chunk --LAST----+
//!      |                      |  '---------- reply to "." or LAST (250 or error) -- Commit
//!      '---- (EHLO again) ----'                                              (fsync)
//!  any --QUIT / limit / timeout--> Quit
//! ```
//!
//! `Chunk` is the byte-count mode of RFC 3030: the octets of a BDAT chunk follow its
//! command line, their count is the only thing that ends them, and the glue reads
//! them with [`crate::linebuf::LineBuf::next_chunk`] (or discards those of a refused
//! chunk with `skip`) until [`Session::chunk_left`] is 0 (`session/chunk.rs`).
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

mod auth;
mod chunk;
mod data;
mod hello;
mod lookup;
mod options;
mod tls;

use crate::lookup::{AuthCheck, Lookup};
use chunk::Chunk;
pub use chunk::ChunkStep;
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
    /// Once the replies before it are sent, start TLS on the connection (STARTTLS,
    /// RFC 3207): input the client sent after its STARTTLS line is discarded, never
    /// taken as commands; call [`Session::on_tls`] when the handshake is done.
    StartTls,
    /// Check SMTP AUTH credentials, then call [`Session::on_auth`].
    Authenticate(AuthCheck),
    /// An AUTH exchange in which the client gave credentials ended with a reply of
    /// `code`: tell the filters that observe AUTH_RESULT, after the reply.
    AuthReport {
        /// The SASL mechanism, as `PLAIN`.
        mechanism: &'static str,
        /// The authentication identity the client gave.
        user: String,
        /// The final reply's code (235, 535, 454...).
        code: u16,
    },
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
    /// STARTTLS was answered with 220: the TLS handshake comes first.
    Tls,
    /// MAIL of an authenticated user waits for the check of its sender.
    Senders {
        sender: Mailbox,
        params: MailParams,
        junk: bool,
    },
    /// AUTH waits for the check of the credentials of `user`.
    Auth {
        user: String,
        mechanism: &'static str,
    },
    /// The credentials of `user` were accepted: the filters' verdict on them comes
    /// before the 235.
    AuthFilter {
        user: String,
        mechanism: &'static str,
    },
}

impl Pending {
    /// Whether a lookup (rather than a filter verdict) is awaited.
    fn is_lookup(&self) -> bool {
        matches!(
            self,
            Pending::Space { .. }
                | Pending::Resolve { .. }
                | Pending::EomRcpt { .. }
                | Pending::Senders { .. }
                | Pending::Auth { .. }
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
    /// Reading the octets of a BDAT chunk (RFC 3030), by count; after a LAST chunk,
    /// until the message's end is decided.
    Chunk,
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
    /// The message was opened by a BDAT chunk: DATA and RCPT are out of sequence.
    chunked: bool,
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
    /// Octets in a command line, CR LF included (AUTH lines may be longer).
    pub max_command_line: usize,
    /// Wrong AUTH credentials before 421.
    pub max_auth_failures: usize,
}

/// What [`Session::on_data`] decided for a piece of content.
#[derive(Debug, PartialEq, Eq)]
pub enum DataLine<'a> {
    /// Store these bytes (dot-unstuffed), followed by a line end when the piece ends
    /// its line.
    Store(&'a [u8]),
    /// Store these bytes as they came (the body of a BINARYMIME message), followed by
    /// CR LF when the flag says that the piece ended with one.
    Raw(&'a [u8], bool),
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
    /// What the listener offers of STARTTLS.
    starttls: tls::Offer,
    /// The TLS session's facts, once TLS is up.
    tls: Option<crate::mail::TlsFacts>,
    /// SMTP AUTH (`session/auth.rs`).
    auth: auth::AuthState,
    /// The listener's `mask-src` and `no-dsn` (`session/options.rs`).
    options: crate::config::SessionOptions,
    /// The BDAT chunk being read, or waiting for its message to be opened.
    chunk: Option<Chunk>,
    /// The user of a local submission (`session/auth.rs`).
    local_user: Option<auth::LocalUser>,
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
            starttls: tls::Offer::None,
            tls: None,
            auth: auth::AuthState::default(),
            options: crate::config::SessionOptions::default(),
            chunk: None,
            local_user: None,
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
        if let Pending::AuthFilter { user, mechanism } = p {
            return self.auth_filtered(user, mechanism, v, out);
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
                if matches!(p, Pending::Data) && self.chunk.is_some() {
                    return self.refuse_chunk(r, out);
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
            Pending::Space { .. }
            | Pending::Resolve { .. }
            | Pending::EomRcpt { .. }
            | Pending::Tls
            | Pending::Senders { .. }
            | Pending::Auth { .. }
            | Pending::AuthFilter { .. } => {}
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

    /// Whether the message being received is still in its header section.
    pub fn in_header_section(&self) -> bool {
        self.tx().is_some_and(|t| t.in_headers)
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
        self.fail_then(reply, None, out);
    }

    /// [`Session::fail`], with `then` carried out right after the reply (before the
    /// close the error limit may bring).
    fn fail_then(&mut self, reply: Reply, then: Option<Action>, out: &mut Vec<Action>) {
        out.push(Action::Reply(reply));
        out.extend(then);
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
        if !self.auth_bad_line(reply.clone(), out) {
            self.fail(reply, out);
        }
    }

    /// Feeds one command line (CR LF stripped, checked for bare CR/LF and NUL).
    pub fn on_line(&mut self, line: &[u8], out: &mut Vec<Action>) {
        debug_assert!(self.wants_input() && !self.in_data() && !self.in_chunk());
        if self.in_auth_exchange() {
            return self.auth_line(line, out);
        }
        if memchr::memchr(0, line).is_some() {
            if super::command::is_bdat(line) {
                return self.close(Reply::BDAT_SYNTAX, out);
            }
            return self.fail(Reply::NUL_COMMAND, out);
        }
        if self.too_long(line) {
            return self.fail(Reply::LINE_TOO_LONG, out);
        }
        let cmd = match Command::parse(line) {
            Ok(c) => c,
            // The chunk's end is unknown: its octets must never be read as commands.
            Err(ParseError::BdatSyntax) => return self.close(Reply::BDAT_SYNTAX, out),
            Err(e) => return self.fail(e.reply(), out),
        };
        // Whatever the verdict on a BDAT, its chunk is read (or skipped) by count.
        if let Command::Bdat(size, last) = cmd {
            return self.bdat(size, last, self.needs_tls_first(&cmd), out);
        }
        // RFC 3207 §4: a listener that requires TLS takes no mail before it.
        if self.needs_tls_first(&cmd) {
            return self.fail(Reply::TLS_REQUIRED, out);
        }
        match cmd {
            Command::Helo(name) => self.greet(name, false, out),
            Command::Ehlo(name) => self.greet(name, true, out),
            Command::Mail(sender, params) => self.mail(sender, params, out),
            Command::Rcpt(addr, params) => self.rcpt(addr, params, out),
            Command::Data => self.data(out),
            Command::Rset => {
                self.drop_tx(out);
                out.push(Action::Reply(Reply::OK));
            }
            Command::Noop => out.push(Action::Reply(Reply::OK)),
            Command::Quit => {
                self.drop_tx(out);
                out.push(Action::Reply(Reply::BYE));
                out.push(Action::Close);
                self.enter(State::Quit);
            }
            Command::Help => out.push(Action::Reply(Reply::new(
                214,
                "2.0.0",
                "This is smtpd\nCommands: HELO EHLO STARTTLS MAIL RCPT DATA RSET NOOP QUIT HELP\nEnd of HELP info",
            ))),
            Command::Vrfy | Command::Expn => self.fail(Reply::NOT_IMPLEMENTED, out),
            Command::Starttls => self.starttls(out),
            Command::Auth(mech, initial) => self.auth(mech, initial, out),
            Command::Bdat(..) => {}
        }
    }

    /// Ends the transaction, if any (RSET, HELO/EHLO, QUIT): its message, if one was
    /// opened (by a BDAT chunk), is removed.
    fn drop_tx(&mut self, out: &mut Vec<Action>) {
        if self.tx.take().is_some_and(|t| t.msgid.is_some()) {
            out.push(Action::Discard);
        }
        if self.state == State::Mail {
            self.enter(State::Ready);
        }
    }

    fn mail(&mut self, sender: Mailbox, params: MailParams, out: &mut Vec<Action>) {
        match self.state {
            State::Connected => return self.fail(Reply::NEED_HELO, out),
            State::Mail => return self.fail(Reply::NESTED_MAIL, out),
            _ => {}
        }
        if self.mail_needs_auth() {
            return self.fail(Reply::AUTH_REQUIRED, out);
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
        if let Some(r) = options::refused_mail_params(&self.options, &params) {
            return self.fail(r, out);
        }
        // RFC 6531 §3.5: a UTF-8 address only with SMTPUTF8.
        if !params.smtputf8 && !sender.is_ascii() {
            return self.fail(Reply::NEED_SMTPUTF8, out);
        }
        // REQUIRETLS is offered on TLS sessions only (RFC 8689 §4).
        if params.requiretls && self.tls.is_none() {
            return self.fail(Reply::REQUIRETLS_WITHOUT_TLS, out);
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

    /// MAIL, once the filters let it through: an authenticated user's sender is
    /// checked against the `senders` table first, a plain local user's against its
    /// own addresses and the socket's table.
    fn mail_proceed(
        &mut self,
        sender: Mailbox,
        params: MailParams,
        junk: bool,
        out: &mut Vec<Action>,
    ) {
        if let Some(q) = self.sender_query(&sender) {
            self.pending = Some(Pending::Senders {
                sender,
                params,
                junk,
            });
            out.push(Action::Lookup(Lookup::Sender(Box::new(q))));
            return;
        }
        self.mail_open(sender, params, junk, out)
    }

    /// Opens the transaction.
    fn mail_open(
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
        if tx.chunked {
            return self.fail(Reply::RCPT_AFTER_BDAT, out);
        }
        if !self.esmtp && params != RcptParams::default() {
            return self.fail(
                ParseError::BadParam("parameters need EHLO".into()).reply(),
                out,
            );
        }
        if let Some(r) = options::refused_rcpt_params(&self.options, &params) {
            return self.fail(r, out);
        }
        if !tx.params.smtputf8 && !addr.is_ascii() {
            return self.fail(Reply::NEED_SMTPUTF8, out);
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
        // RFC 3030 §3: a BINARYMIME message, or one begun with BDAT, takes no DATA.
        if self
            .tx
            .as_ref()
            .is_some_and(|t| t.chunked || t.params.body == Body::BinaryMime)
        {
            return self.fail(Reply::DATA_NOT_BDAT, out);
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
                if self.chunk.is_some() {
                    // BDAT: the chunk's octets follow at once, no 354.
                    self.enter(State::Chunk);
                } else {
                    out.push(Action::Reply(Reply::START_DATA));
                    self.enter(State::Data);
                }
            }
            Err(reply) if self.chunk.is_some() => self.refuse_chunk(reply, out),
            Err(reply) => {
                self.tx = None;
                self.enter(State::Ready);
                self.fail(reply, out);
            }
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

    /// Whether the message needs SMTPUTF8: the client gave the parameter, or an
    /// address is UTF-8 (a filter's rewrite may make one).
    pub fn is_smtputf8(tx: &Tx) -> bool {
        tx.params.smtputf8 || !tx.sender.is_ascii() || tx.rcpts.iter().any(|r| !r.addr.is_ascii())
    }

    /// Whether the client declared binary content (`BODY=BINARYMIME`).
    pub fn is_binary(tx: &Tx) -> bool {
        tx.params.body == Body::BinaryMime
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
