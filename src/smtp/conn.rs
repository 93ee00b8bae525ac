//! The socket glue of an SMTP session: moves bytes between the socket, the line
//! buffer, the [`Session`] and the spool. The only SMTP code that does I/O.

use super::filtering::FilterSide;
use super::session::{Action, DataLine, Session, State};
use crate::config::Config;
use crate::filter::pipe::Lines;
use crate::filter::report::Report;
use crate::linebuf::{Line, LineBuf, Text};
use crate::mail::reply::Reply;
use crate::queue::envelope::Envelope;
use crate::queue::spool::{is_no_space, Committer, Spool};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Size of each connection's input buffer, unless the line limits need more.
const INBUF: usize = 16 * 1024;
/// Message bytes gathered before one write(2).
const MSG_CHUNK: usize = 64 * 1024;
/// Unsent reply bytes above which no more input is taken.
const OUT_HIGH: usize = 64 * 1024;
/// Reads from one client in one pump: one that writes without pause (an endless
/// line, a flood of commands) takes its share, then the others take theirs, and the
/// loop comes back to it next turn.
const READS_PER_PUMP: u32 = 2;
/// What one pump may handle, for the same reason, in units: a command or a header
/// field line costs [`COMMAND_COST`] (16 KiB of pipelined NOOPs is 2,700 commands,
/// each answered; header lines are parsed and kept), a line of a message's body one
/// (the reads bound those already: 32 KiB of ordinary lines takes one pump). So 128
/// commands or header lines, or 1024 body lines.
const LINES_PER_PUMP: u32 = 1024;
/// The units of a command or a header line; see [`LINES_PER_PUMP`].
const COMMAND_COST: u32 = 8;

/// Why a session ended, for the `disconnected` log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The client said QUIT.
    Quit,
    /// The client closed the connection.
    Disconnect,
    /// Too many errors or another protocol limit.
    Limit,
    /// The session timed out.
    Timeout,
    /// The daemon is stopping.
    Shutdown,
    /// A socket error.
    Error,
    /// A bug in the daemon's handling of the session (a caught panic).
    Internal,
}

impl Reason {
    /// The word used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Quit => "quit",
            Reason::Disconnect => "disconnect",
            Reason::Limit => "limit",
            Reason::Timeout => "timeout",
            Reason::Shutdown => "shutdown",
            Reason::Error => "error",
            Reason::Internal => "internal-error",
        }
    }
}

/// What the connection needs from the server while it runs.
pub struct Ctx<'a> {
    /// The configuration the session started under.
    pub cfg: &'a Arc<Config>,
    /// The spool.
    pub spool: &'a Spool,
    /// The sync thread.
    pub committer: &'a Committer,
    /// The lookup threads.
    pub lookups: &'a crate::lookup::Lookups,
    /// This connection's slab key.
    pub key: usize,
    /// The channel to the privileged parent (system account checks).
    pub parent: Option<&'a std::os::fd::OwnedFd>,
    /// The engine's counters.
    pub counters: &'a mut crate::metrics::SmtpCounters,
}

struct MsgWriter {
    id: u32,
    file: crate::queue::spool::MessageFile,
    buf: Vec<u8>,
    failed: bool,
    /// Bytes written to the file so far (a reused spool file may hold more).
    written: u64,
}

/// One client connection.
pub struct Conn {
    /// The socket.
    pub sock: crate::stream::Stream,
    /// Generation, to tell this connection from an earlier one in the same slot.
    pub gen: u64,
    /// The configuration the session started under (the loop's when `None`): a reload
    /// does not change the rules of a session in progress.
    pub cfg: Option<Arc<Config>>,
    /// The client's address (for per-address limits); `None` on the local socket.
    pub peer: Option<IpAddr>,
    /// Our end and the client's as a PROXY header named them, which filters are told
    /// instead of the socket's.
    pub proxied: Option<(std::net::SocketAddr, std::net::SocketAddr)>,
    /// The user id of a client on the local socket (for the control socket's limits).
    pub uid: Option<u32>,
    /// When the session times out unless input arrives.
    pub deadline: Instant,
    session: Session,
    inbuf: LineBuf,
    out: Vec<u8>,
    out_pos: usize,
    msg: Option<MsgWriter>,
    actions: Vec<Action>,
    readable: bool,
    writable: bool,
    eof: bool,
    /// The last pump used up its reads with input maybe left (see READS_PER_PUMP).
    backlogged: bool,
    /// The session is in the loop's list of those to pump again next turn.
    queued: bool,
    /// The connection is gone both ways (reset, or closed and then written to).
    hung_up: bool,
    closing: Option<Reason>,
    /// What the session's filters need of it.
    pub filters: FilterSide,
    /// Header and body edits to make at commit.
    pending_edits: Vec<crate::queue::edit::Edit>,
    /// The command line whose lookup is in flight, for the log of a failure.
    lookup_line: Option<Vec<u8>>,
    /// The message being rewritten with its edits by a lookup thread (before the
    /// commit).
    editing: Option<u32>,
    /// The session waits for its client's reverse DNS: nothing is sent or processed.
    pub hold: bool,
    /// The reverse name resolves back to the client's address.
    pub fcrdns: bool,
    /// The listener's TLS configuration, for STARTTLS.
    tls_config: Option<std::sync::Arc<rustls::ServerConfig>>,
    /// STARTTLS was answered: TLS starts once the output is written.
    starttls: bool,
    /// The session was told that TLS is up.
    tls_up: bool,
    /// The deadline moved earlier: the loop must arm it.
    rearm: bool,
    /// The answer to the session's AUTH, held back as the penalty of a failure.
    held_auth: Option<crate::mail::auth::AuthResult>,
    /// What the next negative reply answers, for the counters: the last command's
    /// verb, `connect` or `message`.
    phase: &'static str,
    /// The last BDAT command line, for the log of the reply given after its chunk.
    bdat_line: Vec<u8>,
}

/// Lines gathered before they are sent to a filter.
const BATCH_LINES: usize = 256;
/// Lines a session gathers for its data filters, at most, before it stops reading:
/// in count, and in bytes.
pub(super) const BATCH_MAX_LINES: usize = BATCH_LINES * 16;
pub(super) const BATCH_MAX_BYTES: usize = 256 * 1024;

/// Logs client bytes safely.
fn esc(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

mod actions;
mod auth;
mod chunk;
mod content;
mod message;
mod out;
mod tls;

pub use tls::HANDSHAKE_TIMEOUT;

use message::write_chunk;

impl Conn {
    /// Wraps an accepted socket; the session's greeting is queued.
    pub fn new(
        sock: crate::stream::Stream,
        gen: u64,
        peer: Option<IpAddr>,
        session: Session,
        actions: Vec<Action>,
        deadline: Instant,
        max_line: usize,
    ) -> Conn {
        let mut c = Conn {
            sock,
            gen,
            cfg: None,
            peer,
            proxied: None,
            uid: None,
            deadline,
            session,
            inbuf: LineBuf::new(INBUF.max(max_line + 2)),
            out: Vec::new(),
            out_pos: 0,
            msg: None,
            actions: Vec::new(),
            readable: false,
            writable: false,
            eof: false,
            backlogged: false,
            queued: false,
            hung_up: false,
            closing: None,
            filters: FilterSide::default(),
            pending_edits: Vec::new(),
            lookup_line: None,
            editing: None,
            hold: false,
            fcrdns: false,
            tls_config: None,
            starttls: false,
            tls_up: false,
            rearm: false,
            held_auth: None,
            phase: "connect",
            bdat_line: Vec::new(),
        };
        for a in actions {
            match a {
                Action::Reply(r) => r.render(&mut c.out),
                // The connect phase of a filter chain comes before the greeting.
                Action::Filter(q) => c.filters.query = Some(q),
                _ => {}
            }
        }
        c
    }

    /// The session id.
    pub fn id(&self) -> u64 {
        self.session.id
    }

    /// Records the user of a local submission (see [`Session::set_local_user`]).
    pub fn set_local_user(
        &mut self,
        uid: u32,
        checked: bool,
        senders: Option<crate::config::TableId>,
    ) {
        self.uid = Some(uid);
        self.session.set_local_user(uid, checked, senders);
    }

    /// Puts bytes already read from the socket into the input buffer.
    pub fn prefeed(&mut self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let space = self.inbuf.space();
            if space.is_empty() {
                break;
            }
            let n = space.len().min(rest.len());
            space[..n].copy_from_slice(&rest[..n]);
            self.inbuf.filled(n);
            rest = &rest[n..];
        }
    }

    /// Whether the connection is done and can be removed.
    pub fn finished(&self) -> Option<Reason> {
        match self.closing {
            Some(r) if self.out_pos >= self.out.len() && !self.sock.wants_write() => Some(r),
            _ => None,
        }
    }

    /// Whether a commit is in flight.
    pub fn committing(&self) -> bool {
        self.session.state() == State::Commit
    }

    /// Whether a message file of this session is open: being written, or with the
    /// commit thread.
    pub fn holds_file(&self) -> bool {
        self.msg.is_some() || self.committing()
    }

    /// Records readiness from the poller.
    pub fn ready(&mut self, readable: bool, writable: bool) {
        self.readable |= readable;
        self.writable |= writable;
    }

    /// The client is gone both ways: nothing it sent is unread that matters and no
    /// reply can reach it, so the session ends even while it waits for a filter.
    pub fn hung_up(&mut self) {
        self.hung_up = true;
    }

    /// Moves bytes until nothing more can be done without new readiness.
    pub fn pump(&mut self, ctx: &mut Ctx, now: Instant) {
        if self.hung_up && self.closing.is_none() && !self.sock.handshaking() {
            self.abort(ctx, Reason::Disconnect);
            return;
        }
        let (mut reads, mut lines) = (0, LINES_PER_PUMP);
        loop {
            let mut progress = self.check_tls(ctx, now);
            progress |= self.process(ctx, &mut lines);
            self.flush();
            if self.closing.is_some() {
                return;
            }
            if self.starttls && self.out_pos >= self.out.len() {
                // STARTTLS's 220 is out, in plaintext: the handshake comes next.
                self.switch_to_tls(ctx, now);
                if self.closing.is_some() {
                    return;
                }
            }
            if lines == 0 {
                self.backlogged = true;
                return;
            }
            let handshaking = self.sock.handshaking();
            // Lines waiting for a filter hold the input back: once they are sent, the
            // server pumps again (see `has_more`). A handshake goes on regardless.
            if self.readable
                && !self.eof
                && (handshaking
                    || (self.session.wants_input()
                        && self.out.len() - self.out_pos < OUT_HIGH
                        && !self.filters.batch_full()))
                && !self.inbuf.space().is_empty()
            {
                if reads == READS_PER_PUMP {
                    self.backlogged = true;
                    return;
                }
                reads += 1;
                match self.sock.read(self.inbuf.space()) {
                    Ok(0) => {
                        self.eof = true;
                    }
                    Ok(n) => {
                        self.inbuf.filled(n);
                        self.deadline = now + ctx.cfg.smtp.timeout;
                        progress = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.readable = false,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                    Err(e) => {
                        if handshaking {
                            self.tls_failed(ctx, &e.to_string());
                        } else {
                            log::debug!("{:016x} smtp read error: {e}", self.id());
                        }
                        self.abort(ctx, Reason::Error);
                        return;
                    }
                }
                progress |= self.check_tls(ctx, now);
            }
            if self.eof && (self.session.wants_input() || self.sock.handshaking()) {
                if self.sock.handshaking() {
                    self.tls_failed(ctx, "connection closed during the handshake");
                }
                // The client left; a message it did not finish is dropped.
                self.abort(ctx, Reason::Disconnect);
                return;
            }
            if !progress {
                // Waiting for the client: an idle session keeps no input buffer.
                if !self.session.in_data() && !self.readable {
                    self.inbuf.release();
                }
                if self.out.is_empty() && self.out.capacity() > 4096 {
                    self.out = Vec::new();
                }
                return;
            }
        }
    }

    /// Closes without a reply of its own (EOF, socket error). Replies already queued
    /// still go out on EOF: a client that half-closed after QUIT-less input reads them.
    fn abort(&mut self, ctx: &mut Ctx, reason: Reason) {
        if let Some(m) = self.msg.take() {
            ctx.spool.discard(m.id);
        }
        if reason == Reason::Error {
            self.out_pos = self.out.len();
        }
        self.closing = Some(reason);
        self.flush();
    }

    /// Ends the session after a bug in its handling (a caught panic): whatever it was
    /// doing is dropped, the client gets a 421 and the connection is closed. Touches
    /// only plain fields, since the session's own state may be inconsistent.
    pub fn on_bug(&mut self, spool: &Spool) {
        self.release(spool);
        self.out.clear();
        self.out_pos = 0;
        Reply::new(421, "4.3.0", "Internal error, closing connection").render(&mut self.out);
        self.closing = Some(Reason::Internal);
        self.flush();
    }

    /// Ends the session with a final reply (timeout, shutdown).
    pub fn close_with(&mut self, ctx: &mut Ctx, reply: Reply, reason: Reason) {
        if self.closing.is_some() {
            return;
        }
        if self.sock.handshaking() {
            self.tls_failed(
                ctx,
                if reason == Reason::Timeout {
                    "handshake timeout"
                } else {
                    reason.as_str()
                },
            );
        }
        self.closing = Some(reason);
        self.session.close(reply, &mut self.actions);
        self.run_actions(ctx, None);
        self.flush();
    }

    /// Feeds buffered lines to the session; true if any was consumed.
    fn process(&mut self, ctx: &mut Ctx, budget: &mut u32) -> bool {
        let mut progress = false;
        if self.hold {
            return false;
        }
        while self.session.wants_input()
            && self.filters.data_end.is_none()
            && !self.filters.batch_full()
            && self.closing.is_none()
            && self.out.len() - self.out_pos < OUT_HIGH
            && *budget > 0
        {
            let body = self.session.in_data() && !self.session.in_header_section();
            *budget = budget.saturating_sub(if body { 1 } else { COMMAND_COST });
            if self.session.in_data() {
                let (bytes, first, last, bare) = match self.inbuf.next_text() {
                    Text::Partial => break,
                    Text::Piece {
                        bytes,
                        first,
                        last,
                        bare,
                    } => (bytes, first, last, bare),
                };
                match self.session.on_data(bytes, first, last, bare) {
                    DataLine::End if !self.filters.data_chain.is_empty() => {
                        if self.filters.observe {
                            self.filters.report_data_end();
                        }
                        // The chain's own end decides; input waits until then.
                        self.filters.data_end = Some(self.inbuf.pending() > 0);
                    }
                    DataLine::End => {
                        if self.filters.observe {
                            self.filters.report_data_end();
                        }
                        let pipelined = self.inbuf.pending() > 0;
                        self.phase = "message";
                        self.session.on_data_end(pipelined, &mut self.actions);
                        self.run_actions(ctx, Some(b"."));
                    }
                    piece => content::store(
                        ctx.spool,
                        &mut self.filters,
                        &mut self.msg,
                        &mut self.session,
                        piece,
                        (first, last, bare),
                    ),
                }
            } else if self.session.in_chunk() {
                if !self.read_chunk(ctx) {
                    break;
                }
            } else {
                let max = self
                    .session
                    .command_limit(ctx.cfg.smtp.max_command_line - 2);
                match self.inbuf.next_command(max) {
                    Line::Partial => break,
                    Line::TooLong => {
                        self.session
                            .on_bad_line(Reply::LINE_TOO_LONG, &mut self.actions);
                        self.run_actions(ctx, Some(b"(line too long)"));
                    }
                    Line::Complete { bytes, bare } => {
                        // Never an AUTH response, in a log or to a filter.
                        let shown = self.session.loggable(bytes);
                        if !self.session.in_auth_exchange() {
                            self.phase = crate::metrics::phase_of(bytes);
                        }
                        log::trace!(target: "smtpd::smtp", "{:016x} smtp <<< {}", self.session.id, esc(&shown));
                        #[cfg(debug_assertions)]
                        if regress_panic(bytes) {
                            panic!("a session panics on request of the regress suite");
                        }
                        if super::command::is_bdat(bytes) {
                            // Kept for the log of a refusal given after the chunk.
                            self.bdat_line.clear();
                            self.bdat_line.extend_from_slice(&shown);
                        }
                        if bare
                            && super::command::is_bdat(bytes)
                            && !self.session.in_auth_exchange()
                        {
                            // Where its chunk ends is unknown.
                            self.session.close(Reply::BDAT_SYNTAX, &mut self.actions);
                        } else if bare {
                            self.session
                                .on_bad_line(Reply::BARE_NEWLINE_COMMAND, &mut self.actions);
                        } else {
                            let had_tx = self.session.tx().is_some();
                            if self.filters.observe {
                                self.filters.report_client_line(&shown);
                            }
                            self.session.on_line(bytes, &mut self.actions);
                            if had_tx && self.session.tx().is_none() && self.filters.observe {
                                self.filters.report(Report::Rollback(None));
                            }
                        }
                        // The line is logged with failed replies, which may come with a
                        // lookup's answer; copy it only then.
                        if self.actions.iter().any(|a| match a {
                            Action::Reply(r) => r.is_error(),
                            Action::Lookup(_) | Action::Authenticate(_) | Action::Filter(_) => true,
                            _ => false,
                        }) {
                            let line = shown.to_vec();
                            self.run_actions(ctx, Some(&line));
                        } else {
                            self.run_actions(ctx, None);
                        }
                    }
                }
            }
            progress = true;
        }
        progress
    }

    /// Whether the last pump stopped at its share of reads with the client maybe still
    /// writing: the loop pumps it again next turn, as no readiness event will come.
    /// True once until `unqueue`: the session is listed once.
    pub fn take_backlog(&mut self) -> bool {
        let more = std::mem::take(&mut self.backlogged) && self.closing.is_none();
        let first = more && !self.queued;
        self.queued |= more;
        first
    }

    /// The loop took the session off its list of those to pump again.
    pub fn unqueue(&mut self) {
        self.queued = false;
    }

    /// Whether input is waiting that a new pump would take: after the lines gathered
    /// for a filter were sent away.
    pub fn has_more(&mut self) -> bool {
        std::mem::take(&mut self.filters.resume)
            && self.closing.is_none()
            && self.filters.data_end.is_none()
            && self.session.wants_input()
            && (self.readable || self.inbuf.pending() > 0)
    }

    /// What built-in filters check: client address, HELO name, sender.
    pub fn facts(&self) -> (Option<IpAddr>, String, String) {
        let sender = self
            .session
            .tx()
            .map(|t| t.sender.to_string())
            .unwrap_or_default();
        (
            self.session.client().addr,
            self.session.helo().to_string(),
            sender,
        )
    }

    /// Local and remote addresses as text (`ip:port`, or `local` for the socket).
    pub fn addresses(&self) -> (String, String) {
        if let Some((local, remote)) = self.proxied {
            return (local.to_string(), remote.to_string());
        }
        match self.sock.tcp() {
            Some(s) => (
                s.local_addr()
                    .map_or_else(|_| "unknown".into(), |a| a.to_string()),
                s.peer_addr()
                    .map_or_else(|_| "unknown".into(), |a| a.to_string()),
            ),
            None => ("local".into(), "local".into()),
        }
    }

    /// A filter query the session made, for the server to route through the chain.
    pub fn take_filter_query(&mut self) -> Option<crate::filter::phase::FilterQuery> {
        if self.hold {
            return None;
        }
        let q = self.filters.query.take();
        if let Some(q) = &q {
            self.filters.asked = Some(q.phase);
        }
        q
    }

    /// The size of the open transaction's message so far.
    pub fn tx_size(&self) -> u64 {
        self.session.tx().map_or(0, |t| t.size)
    }

    /// The client's reverse DNS, once looked up.
    pub fn set_rdns(&mut self, host: Option<String>, fcrdns: bool) {
        self.fcrdns = fcrdns;
        self.session.set_hostname(host);
    }

    /// The lookup is over: the greeting goes out and input is taken.
    pub fn release_hold(&mut self, ctx: &mut Ctx, now: Instant) {
        self.hold = false;
        self.readable = true;
        self.pump(ctx, now);
    }

    /// The client's reverse DNS name, if known.
    pub fn hostname(&self) -> Option<&str> {
        self.session.client().hostname.as_deref()
    }

    /// The user the client authenticated as, once it did.
    pub fn auth_user(&self) -> Option<&str> {
        self.session.auth_user()
    }

    /// The chain's verdict on the last query.
    pub fn on_filter_verdict(
        &mut self,
        ctx: &mut Ctx,
        v: crate::filter::phase::FilterVerdict,
        now: Instant,
    ) {
        self.session.on_filter_result(v, &mut self.actions);
        let line = self.lookup_line.take();
        let shown = line.as_deref().unwrap_or(b"(filtered command)");
        self.run_actions(ctx, Some(shown));
        self.pump(ctx, now);
    }

    /// A lookup thread's answer to this session's question.
    pub fn on_lookup(&mut self, ctx: &mut Ctx, answer: crate::lookup::LookupAnswer, now: Instant) {
        let line = self.lookup_line.take();
        self.session.on_lookup(answer, &mut self.actions);
        self.run_actions(ctx, line.as_deref());
        self.pump(ctx, now);
    }

    /// Whether the client sent bytes that are waiting (in the buffer or the socket).
    fn sent_early(&mut self) -> bool {
        if self.inbuf.pending() > 0 {
            return true;
        }
        match self.sock.read(self.inbuf.space()) {
            Ok(n) if n > 0 => {
                self.inbuf.filled(n);
                true
            }
            _ => false,
        }
    }

    /// Writes pending output until the socket would block, then the TLS records
    /// waiting (handshake messages go out while the greeting is held, too).
    fn flush(&mut self) {
        if !self.hold {
            self.flush_out();
        }
        if self.closing.is_some() && self.out_pos >= self.out.len() {
            self.sock.close_notify();
        }
        match self.sock.flush_records() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
            Err(_) => self.eof = true,
        }
    }

    fn flush_out(&mut self) {
        while self.out_pos < self.out.len() {
            match self.sock.write(&self.out[self.out_pos..]) {
                Ok(0) => break,
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // The client is gone; nothing more can be said to it.
                    self.out_pos = self.out.len();
                    self.eof = true;
                    break;
                }
            }
        }
        if self.out_pos >= self.out.len() {
            out::reset(&mut self.out);
            self.out_pos = 0;
        }
    }

    /// Drops an open message when the connection is removed.
    pub fn release(&mut self, spool: &Spool) {
        if let Some(m) = self.msg.take() {
            spool.discard(m.id);
        }
    }
}

/// Debug builds only: whether `line` is the command named by `SMTPD_REGRESS_PANIC`, on
/// which the regress suite has a session panic to prove that the panic stays with it.
#[cfg(debug_assertions)]
fn regress_panic(line: &[u8]) -> bool {
    use std::os::unix::ffi::OsStringExt;
    static WORD: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    WORD.get_or_init(|| std::env::var_os("SMTPD_REGRESS_PANIC").map(|v| v.into_vec()))
        .as_deref()
        == Some(line)
}
