//! The engine's end of one filter process: handshake, framing, and who waits for it.
//!
//! ```text
//! Handshake --REGISTER ok--> Ready --EOF / garbage / timeout / flood / stall--> Dead
//!     '--------- bad REGISTER ----------------------------------------------------^
//! ```
//! A dead pipe is replaced when the parent hands over the restarted filter's socket.
//!
//! The same pipe serves filters of OpenSMTPD's text protocol (`filter/pipe_text.rs`):
//! the filter's first byte tells which it speaks (a frame starts with a zero byte, a
//! line of text never does). A filter that has said nothing after [`DETECT_GRACE`] is
//! taken for one of OpenSMTPD's, which wait for the daemon's configuration lines; a
//! `proc` filter of the configuration is one from the start.
//!
//! What a filter costs the engine is bounded: a read takes at most [`READ_PER_TURN`]
//! bytes and [`FRAMES_PER_TURN`] frames, LOG frames are logged at most [`LOG_MAX`] per
//! [`LOG_WINDOW`], and the pipe knows what it asked the filter
//! ([`FilterPipe::settle`]), so that answers nobody asked for are counted.

pub use super::answer::{Answer, Decision, Edit, Lines};
use super::limit::{Allowance, Early, LogLimit};
use super::opensmtpd;
use super::pipe_text::TextSide;
use super::report::Report;
use smtpd_filter::codec::{self, event, Decoder, Frame};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Unsent bytes to a filter above which sessions stop feeding it data lines.
pub const OUT_HIGH: usize = 256 * 1024;
/// Unsent bytes to a filter above which lines that another filter returned are not
/// passed on to it (their message fails).
pub const OUT_DATA_MAX: usize = 8 << 20;
/// Unsent bytes to a filter above which it is taken for hung: it does not read.
pub const OUT_MAX: usize = 16 << 20;
/// Bytes read from one filter in one turn of the loop: the rest waits for the next
/// turn, so that a filter that writes without end cannot hold the loop.
pub const READ_PER_TURN: usize = 256 * 1024;
/// Frames taken from one filter in one turn of the loop.
pub const FRAMES_PER_TURN: usize = 1024;
/// Bytes asked for by each read.
const READ_CHUNK: usize = 64 * 1024;
/// Answers nobody asked for that a filter may send in [`UNREQUESTED_WINDOW`]: one more
/// is a protocol error. Late answers of a correct filter are not counted at all (see
/// [`FilterPipe::settle`]); the allowance is for slips.
pub const UNREQUESTED_MAX: u32 = 100;
/// The window of [`UNREQUESTED_MAX`].
pub const UNREQUESTED_WINDOW: Duration = Duration::from_secs(10);
/// LOG frames of a filter logged per [`LOG_WINDOW`]; the others are counted.
pub const LOG_MAX: u32 = 100;
/// The window of [`LOG_MAX`].
pub const LOG_WINDOW: Duration = Duration::from_secs(10);
/// How long the lines still owed to a session that left in the middle of its message
/// are taken (and dropped) without being counted as unrequested.
pub const GONE_FOR: Duration = Duration::from_secs(60);
/// Sessions remembered that way, at most (the oldest are forgotten first).
pub const GONE_MAX: usize = 16384;

/// How long a filter may stay silent before it is taken for one of OpenSMTPD's.
pub const DETECT_GRACE: Duration = Duration::from_secs(1);

/// Which protocol the filter speaks.
#[derive(Debug)]
enum Kind {
    /// Not known yet: the filter has not spoken.
    Undecided,
    /// The binary protocol of smtpd-filters(7).
    Binary,
    /// OpenSMTPD's protocol.
    Text(Box<TextSide>),
}

/// Where the pipe stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeState {
    /// Waiting for the filter's REGISTER.
    Handshake,
    /// Registered: events it answers, events it observes.
    Ready {
        /// Answered events.
        hooks: u32,
        /// Observed events.
        reports: u32,
    },
    /// Gone; waiting for a restart.
    Dead,
}

/// Where an answer stands against what the filter was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// It answers a pending question, or brings lines of a message the filter passes.
    Asked,
    /// Lines, or their end, for a session that left in the middle of its message.
    Gone,
    /// Nobody asked for it.
    Unrequested,
}

/// A message whose lines a filter passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Passing {
    /// The daemon's DATA_END was sent.
    end_sent: bool,
    /// Octets the filter returned, each line counted with CR LF.
    returned: u64,
}

/// How a filter of OpenSMTPD's protocol is set up.
#[derive(Debug, Clone, Default)]
pub struct TextSetup {
    /// The configuration lines it is sent.
    pub hello: Vec<u8>,
    /// It speaks that protocol whatever it sends first (`proc`).
    pub only: bool,
}

/// What a session that left was still owed, and until when that is dropped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Left {
    until: Instant,
    /// A decision was pending: the filter may answer it late.
    asked: bool,
}

/// The engine's view of one filter process.
pub struct FilterPipe {
    /// Index of the filter in the configuration.
    pub id: usize,
    /// Its name.
    pub name: String,
    /// The socket (None while dead).
    pub sock: Option<mio::net::UnixStream>,
    /// Where it stands.
    pub state: PipeState,
    /// Sessions waiting for an answer, with their deadlines.
    pub waiting: HashMap<u64, Instant>,
    /// How long an answer may take.
    pub timeout: Duration,
    /// The loop turn of the last read (see [`FilterPipe::read`]).
    pub read_turn: u64,
    /// How long its answers took.
    pub latency: crate::metrics::Histogram,
    /// Processes that took over from a dead one.
    pub restarts: u64,
    /// Sessions whose message lines the filter passes.
    data: HashMap<u64, Passing>,
    /// Sessions that left while the filter still owed them lines or a decision, until
    /// when what it sends for them is dropped without being counted; in the order they
    /// left.
    gone: HashMap<u64, Left>,
    gone_order: VecDeque<(u64, Instant)>,
    /// Answers nobody asked for.
    unrequested: Allowance,
    /// LOG frames.
    logs: LogLimit,
    /// Reports sent before the filter registered.
    early: Early,
    dec: Decoder,
    /// The filter closed its end; the frames before it are still taken.
    eof: bool,
    /// Read buffer, allocated at the first read.
    rbuf: Vec<u8>,
    out: Vec<u8>,
    /// Since when `out` waits without the filter taking any of it.
    stalled: Instant,
    /// The deadline armed for the pipe in the engine's timers, if any.
    pub armed: Option<Instant>,
    /// The protocol it speaks.
    kind: Kind,
    /// It speaks OpenSMTPD's protocol, whatever it sends first (`proc`).
    text_only: bool,
    /// OpenSMTPD's configuration lines, sent when the filter turns out to speak it.
    hello: Vec<u8>,
    /// When a silent filter is taken for one of OpenSMTPD's.
    decide_by: Option<Instant>,
    /// The process sent something: its first byte told which protocol it speaks.
    heard: bool,
    /// Reports sent before a filter of OpenSMTPD's registered.
    early_text: Early,
}

impl FilterPipe {
    /// A pipe over the filter's socket, waiting for its REGISTER (or its registration
    /// in OpenSMTPD's protocol, whose configuration lines are `hello`).
    pub fn new(
        id: usize,
        name: &str,
        fd: Option<OwnedFd>,
        timeout: Duration,
        text: Option<TextSetup>,
    ) -> io::Result<FilterPipe> {
        let sock = match fd {
            Some(fd) => {
                let s = std::os::unix::net::UnixStream::from(fd);
                s.set_nonblocking(true)?;
                Some(mio::net::UnixStream::from_std(s))
            }
            None => None,
        };
        Ok(FilterPipe {
            id,
            name: name.to_string(),
            state: if sock.is_some() {
                PipeState::Handshake
            } else {
                PipeState::Dead
            },
            sock,
            waiting: HashMap::new(),
            timeout,
            read_turn: 0,
            latency: crate::metrics::Histogram::default(),
            restarts: 0,
            data: HashMap::new(),
            gone: HashMap::new(),
            gone_order: VecDeque::new(),
            unrequested: Allowance::new(UNREQUESTED_MAX, UNREQUESTED_WINDOW),
            logs: LogLimit::new(LOG_MAX, LOG_WINDOW),
            early: Early::default(),
            dec: Decoder::new(),
            eof: false,
            rbuf: Vec::new(),
            out: Vec::new(),
            stalled: Instant::now(),
            armed: None,
            kind: Kind::Undecided,
            text_only: text.as_ref().is_some_and(|t| t.only),
            hello: text.map(|t| t.hello).unwrap_or_default(),
            decide_by: None,
            heard: false,
            early_text: Early::default(),
        })
        .map(|mut p| {
            if p.sock.is_some() {
                p.start();
            }
            p
        })
    }

    /// Takes a restarted filter's socket.
    pub fn replace(&mut self, fd: OwnedFd) -> io::Result<()> {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        self.sock = Some(mio::net::UnixStream::from_std(s));
        self.restarts += 1;
        self.state = PipeState::Handshake;
        self.early = Early::default();
        self.early_text = Early::default();
        self.dec = Decoder::new();
        self.eof = false;
        self.forget();
        self.start();
        Ok(())
    }

    /// A process starts: a `proc` filter is sent OpenSMTPD's configuration at once,
    /// another has [`DETECT_GRACE`] to speak first.
    fn start(&mut self) {
        self.kind = Kind::Undecided;
        self.decide_by = None;
        self.heard = false;
        if self.text_only {
            self.speak_text();
        } else {
            self.decide_by = Some(Instant::now() + DETECT_GRACE);
        }
    }

    /// The filter speaks OpenSMTPD's protocol: it gets the configuration lines.
    fn speak_text(&mut self) {
        self.decide_by = None;
        self.kind = Kind::Text(Box::default());
        if self.out.is_empty() {
            self.stalled = Instant::now();
        }
        self.out.extend_from_slice(&self.hello);
    }

    /// A filter silent for [`DETECT_GRACE`] is one of OpenSMTPD's: `true` when it was
    /// just taken for one (its configuration lines wait to be written).
    pub fn decide_due(&mut self, now: Instant) -> bool {
        let due = matches!(self.kind, Kind::Undecided) && self.decide_by.is_some_and(|t| t <= now);
        if due {
            self.speak_text();
        }
        due
    }

    /// Whether the filter needs a session's protocol lines, or the events derived
    /// from them (true while it is not registered: it may register for them).
    pub fn observes(&self) -> bool {
        match (&self.kind, self.state) {
            (Kind::Text(t), PipeState::Ready { .. }) => t.reports != 0,
            (_, PipeState::Ready { reports, .. }) => {
                reports & (event::PROTOCOL | event::ROLLBACK) != 0
            }
            (_, PipeState::Handshake | PipeState::Dead) => true,
        }
    }

    /// Whether the filter speaks OpenSMTPD's protocol.
    pub fn speaks_text(&self) -> bool {
        matches!(self.kind, Kind::Text(_))
    }

    /// Events the filter answers, when ready.
    pub fn hooks(&self) -> Option<u32> {
        match self.state {
            PipeState::Ready { hooks, .. } => Some(hooks),
            _ => None,
        }
    }

    /// Whether the filter wants `ev` (answered or observed).
    pub fn wants(&self, ev: u32) -> bool {
        matches!(self.state, PipeState::Ready { hooks, reports } if (hooks | reports) & ev != 0)
    }

    /// Sends a report: at once when the filter observes it, kept until it registers
    /// when it has not yet (in both protocols while it is not known which it speaks).
    pub fn report(&mut self, session: u64, r: &Report) {
        let handshake = matches!(self.state, PipeState::Handshake);
        // A filter taken for one of OpenSMTPD's for its silence may still turn out to
        // speak the binary protocol.
        let known_text = self.text_only || (self.heard && matches!(self.kind, Kind::Text(_)));
        if handshake && !known_text {
            if let Some(f) = r.frame() {
                let mut w = Vec::new();
                codec::encode(session, &f, &mut w);
                self.early.push(codec::kind_of(&f).1, w);
            }
        }
        if handshake && !matches!(self.kind, Kind::Binary) {
            let ev = opensmtpd::report_events(r);
            if ev != 0 {
                let mut w = Vec::new();
                opensmtpd::report(&mut w, super::text::Stamp::now(), session, r, ev);
                self.early_text.push(ev, w);
            }
            return;
        }
        if handshake || self.state == PipeState::Dead {
            return;
        }
        let was_empty = self.out.is_empty();
        match &self.kind {
            Kind::Text(t) => {
                t.report(&mut self.out, session, r);
            }
            _ => match r.frame() {
                Some(f) if self.wants(codec::kind_of(&f).1) => {
                    codec::encode(session, &f, &mut self.out)
                }
                _ => {}
            },
        }
        if was_empty && !self.out.is_empty() {
            self.stalled = Instant::now();
        }
    }

    /// Whether the output is backed up.
    pub fn congested(&self) -> bool {
        self.out.len() > OUT_HIGH
    }

    /// Bytes queued for the filter and not written yet.
    pub fn unsent(&self) -> usize {
        self.out.len()
    }

    /// Whether output has waited for the filter's timeout without the filter taking
    /// any of it: it does not read.
    pub fn write_stalled(&self, now: Instant) -> bool {
        !self.out.is_empty() && now.saturating_duration_since(self.stalled) >= self.timeout
    }

    /// Queues a frame for `session`; the loop writes every pipe's frames once per turn
    /// ([`FilterPipe::flush`]), so a turn's events for a filter go in one write.
    pub fn send(&mut self, session: u64, f: &Frame) {
        if self.out.is_empty() {
            self.stalled = Instant::now();
        }
        codec::encode(session, f, &mut self.out);
    }

    /// Whether frames wait to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Queues a frame that waits for an answer from the filter (a question, in
    /// OpenSMTPD's protocol).
    pub fn ask(&mut self, session: u64, f: &Frame, now: Instant) {
        self.waiting.insert(session, now + self.timeout);
        if let Kind::Text(t) = &mut self.kind {
            if self.out.is_empty() {
                self.stalled = Instant::now();
            }
            t.ask(&mut self.out, session, f);
        } else {
            self.send(session, f);
        }
    }

    /// A message of `session` starts through the filter: what it returns is counted
    /// from zero.
    pub fn start_lines(&mut self, session: u64) {
        self.data.insert(session, Passing::default());
        if let Kind::Text(t) = &mut self.kind {
            t.start_lines(session);
        }
    }

    /// Queues lines of `session`'s message: the filter owes lines back until its
    /// DATA_END.
    pub fn pass_lines(&mut self, session: u64, lines: Vec<&[u8]>) {
        self.data.entry(session).or_default();
        if let Kind::Text(t) = &mut self.kind {
            if self.out.is_empty() {
                self.stalled = Instant::now();
            }
            t.lines(&mut self.out, session, lines.into_iter().map(Some));
        } else {
            self.send(session, &Frame::DataLines(lines));
        }
    }

    /// Queues the end of `session`'s message lines, which the filter answers with its
    /// own DATA_END (a lone dot in OpenSMTPD's protocol).
    pub fn ask_end(&mut self, session: u64, now: Instant) {
        self.data.entry(session).or_default().end_sent = true;
        if let Kind::Text(t) = &mut self.kind {
            self.waiting.insert(session, now + self.timeout);
            if self.out.is_empty() {
                self.stalled = Instant::now();
            }
            t.lines(&mut self.out, session, std::iter::once(None));
        } else {
            self.ask(session, &Frame::DataEnd, now);
        }
    }

    /// Octets the filter returned for `session`'s message so far.
    pub fn returned(&self, session: u64) -> u64 {
        self.data.get(&session).map_or(0, |p| p.returned)
    }

    /// Sorts an answer for `session` against what the filter was asked, and settles
    /// the question it answers: a decision or the data end ends the wait, an edit
    /// restarts its deadline. Answers that came late because the session ended
    /// meanwhile are [`Fit::Gone`], but for a data end asked before (the wait for it
    /// outlives the session: [`Fit::Asked`]).
    pub fn settle(&mut self, session: u64, a: &Answer, now: Instant) -> Fit {
        let passing = self.data.get_mut(&session);
        let end_sent = passing.as_ref().is_some_and(|p| p.end_sent);
        let asked = match a {
            Answer::DataLines(l) => match passing {
                Some(p) => {
                    p.returned += (l.text().len() + l.len()) as u64;
                    true
                }
                None => false,
            },
            Answer::DataEnd => {
                let asked = end_sent;
                if asked {
                    self.data.remove(&session);
                    if let Some(deadline) = self.waiting.remove(&session) {
                        self.answered(deadline, now);
                    }
                }
                asked
            }
            // The wait for a data end is not a question a decision answers.
            _ if end_sent => false,
            Answer::Edit(_) => match self.waiting.get_mut(&session) {
                Some(deadline) => {
                    *deadline = now + self.timeout;
                    true
                }
                None => false,
            },
            _ => match self.waiting.remove(&session) {
                Some(deadline) => {
                    self.answered(deadline, now);
                    true
                }
                None => false,
            },
        };
        let left = self.gone.get(&session);
        if asked {
            Fit::Asked
        } else if left
            .is_some_and(|l| l.asked || matches!(a, Answer::DataLines(_) | Answer::DataEnd))
        {
            Fit::Gone
        } else {
            Fit::Unrequested
        }
    }

    /// Counts the time a question waited for its answer: from when it was asked (or
    /// its deadline last restarted by an edit) to `now`.
    fn answered(&mut self, deadline: Instant, now: Instant) {
        let asked = deadline.checked_sub(self.timeout).unwrap_or(deadline);
        self.latency
            .observe(now.saturating_duration_since(asked).as_secs_f64());
    }

    /// Counts an answer nobody asked for: `Some(count)` once the allowance is spent.
    pub fn unrequested(&mut self, now: Instant) -> Option<u32> {
        if self.unrequested.admit(now) {
            None
        } else {
            Some(self.unrequested.count())
        }
    }

    /// The window of the allowance for answers nobody asked for.
    pub fn unrequested_window(&self) -> Duration {
        self.unrequested.window()
    }

    /// `session` ended: the decision it waited for is not awaited any more (its
    /// deadline no longer counts against the filter, which may drop it), and that
    /// late decision or the lines the filter still owes it are dropped without being
    /// counted for [`GONE_FOR`]. A data end it was asked for is still awaited.
    pub fn session_left(&mut self, session: u64, now: Instant) {
        let passing = self.data.get(&session);
        if passing.is_some_and(|p| p.end_sent) {
            return;
        }
        let lines = passing.is_some();
        let asked = self.waiting.remove(&session).is_some();
        if !lines && !asked {
            return;
        }
        self.data.remove(&session);
        if self.gone_order.len() >= GONE_MAX {
            if let Some((old, _)) = self.gone_order.pop_front() {
                self.gone.remove(&old);
            }
        }
        let until = now + GONE_FOR;
        self.gone.insert(session, Left { until, asked });
        self.gone_order.push_back((session, until));
    }

    /// Forgets the sessions that left more than [`GONE_FOR`] ago.
    pub fn prune_gone(&mut self, now: Instant) {
        while let Some(&(s, until)) = self.gone_order.front() {
            if until > now {
                break;
            }
            self.gone_order.pop_front();
            if self.gone.get(&s).is_some_and(|l| l.until == until) {
                self.gone.remove(&s);
            }
        }
    }

    /// Forgets everything about the sessions of the filter's previous process.
    fn forget(&mut self) {
        if let Kind::Text(t) = &mut self.kind {
            t.forget();
        }
        self.out.clear();
        self.waiting.clear();
        self.data.clear();
        self.gone.clear();
        self.gone_order.clear();
        self.unrequested.reset();
        let dropped = self.logs.take_dropped();
        if dropped > 0 {
            log::info!("filter {}: {dropped} log lines dropped", self.name);
        }
    }

    /// Sessions whose answer is overdue.
    pub fn overdue(&self, now: Instant) -> bool {
        self.waiting.values().any(|&d| d <= now)
    }

    /// The earliest time something about the pipe must be looked at: an answer's
    /// deadline, the deadline of frames the filter does not take, or the end of a left
    /// session's grace.
    pub fn next_deadline(&self) -> Option<Instant> {
        let answer = self.waiting.values().min().copied();
        let write = (!self.out.is_empty()).then(|| self.stalled + self.timeout);
        let gone = self.gone_order.front().map(|&(_, until)| until);
        let decide = self
            .decide_by
            .filter(|_| matches!(self.kind, Kind::Undecided));
        [answer, write, gone, decide].into_iter().flatten().min()
    }

    /// Marks the pipe dead and returns the sessions that were waiting on it.
    pub fn kill(&mut self) -> Vec<u64> {
        self.decide_by = None;
        self.state = PipeState::Dead;
        self.sock = None;
        let waiting = self.waiting.drain().map(|(s, _)| s).collect();
        self.forget();
        waiting
    }
}

mod wire;

#[cfg(test)]
#[path = "pipe_tests.rs"]
mod tests;
