//! The engine's end of one filter process: handshake, framing, and who waits for it.
//!
//! ```text
//! Handshake --REGISTER ok--> Ready --EOF / garbage / timeout / flood / stall--> Dead
//!     '--------- bad REGISTER ----------------------------------------------------^
//! ```
//! A dead pipe is replaced when the parent hands over the restarted filter's socket.
//!
//! What a filter costs the engine is bounded: a read takes at most [`READ_PER_TURN`]
//! bytes and [`FRAMES_PER_TURN`] frames, LOG frames are logged at most [`LOG_MAX`] per
//! [`LOG_WINDOW`], and the pipe knows what it asked the filter
//! ([`FilterPipe::settle`]), so that answers nobody asked for are counted.

pub use super::answer::{Answer, Decision, Edit, Lines};
use super::limit::{Allowance, Early, LogLimit};
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
    /// Sessions whose message lines the filter passes.
    data: HashMap<u64, Passing>,
    /// Sessions that left while the filter still owed them lines, until when their
    /// lines are dropped without being counted; in the order they left.
    gone: HashMap<u64, Instant>,
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
}

impl FilterPipe {
    /// A pipe over the filter's socket, waiting for its REGISTER.
    pub fn new(
        id: usize,
        name: &str,
        fd: Option<OwnedFd>,
        timeout: Duration,
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
        })
    }

    /// Takes a restarted filter's socket.
    pub fn replace(&mut self, fd: OwnedFd) -> io::Result<()> {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        self.sock = Some(mio::net::UnixStream::from_std(s));
        self.state = PipeState::Handshake;
        self.early = Early::default();
        self.dec = Decoder::new();
        self.eof = false;
        self.forget();
        Ok(())
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

    /// Sends a report of event `ev`: at once when the filter observes it, kept until it
    /// registers when it has not yet.
    pub fn report(&mut self, session: u64, ev: u32, f: &Frame) {
        if matches!(self.state, PipeState::Handshake) {
            let mut w = Vec::new();
            codec::encode(session, f, &mut w);
            self.early.push(ev, w);
        } else if self.wants(ev) {
            self.send(session, f);
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

    /// Queues a frame that waits for an answer from the filter.
    pub fn ask(&mut self, session: u64, f: &Frame, now: Instant) {
        self.waiting.insert(session, now + self.timeout);
        self.send(session, f);
    }

    /// A message of `session` starts through the filter: what it returns is counted
    /// from zero.
    pub fn start_lines(&mut self, session: u64) {
        self.data.insert(session, Passing::default());
    }

    /// Queues lines of `session`'s message: the filter owes lines back until its
    /// DATA_END.
    pub fn pass_lines(&mut self, session: u64, f: &Frame) {
        self.data.entry(session).or_default();
        self.send(session, f);
    }

    /// Queues the end of `session`'s message lines, which the filter answers with its
    /// own DATA_END.
    pub fn ask_end(&mut self, session: u64, now: Instant) {
        self.data.entry(session).or_default().end_sent = true;
        self.ask(session, &Frame::DataEnd, now);
    }

    /// Octets the filter returned for `session`'s message so far.
    pub fn returned(&self, session: u64) -> u64 {
        self.data.get(&session).map_or(0, |p| p.returned)
    }

    /// Sorts an answer for `session` against what the filter was asked, and settles
    /// the question it answers: a decision or the data end ends the wait, an edit
    /// restarts its deadline. Answers that came late because the session ended
    /// meanwhile are [`Fit::Asked`] (the wait outlives the session) or [`Fit::Gone`].
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
                    self.waiting.remove(&session);
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
            _ => self.waiting.remove(&session).is_some(),
        };
        if asked {
            Fit::Asked
        } else if self.gone.contains_key(&session)
            && matches!(a, Answer::DataLines(_) | Answer::DataEnd)
        {
            Fit::Gone
        } else {
            Fit::Unrequested
        }
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

    /// `session` ended: lines the filter still owes it are dropped without being
    /// counted for [`GONE_FOR`]. A data end it was asked for is still awaited.
    pub fn session_left(&mut self, session: u64, now: Instant) {
        if self.data.get(&session).is_none_or(|p| p.end_sent) {
            return;
        }
        self.data.remove(&session);
        if self.gone_order.len() >= GONE_MAX {
            if let Some((old, _)) = self.gone_order.pop_front() {
                self.gone.remove(&old);
            }
        }
        let until = now + GONE_FOR;
        self.gone.insert(session, until);
        self.gone_order.push_back((session, until));
    }

    /// Forgets the sessions that left more than [`GONE_FOR`] ago.
    pub fn prune_gone(&mut self, now: Instant) {
        while let Some(&(s, until)) = self.gone_order.front() {
            if until > now {
                break;
            }
            self.gone_order.pop_front();
            if self.gone.get(&s) == Some(&until) {
                self.gone.remove(&s);
            }
        }
    }

    /// Forgets everything about the sessions of the filter's previous process.
    fn forget(&mut self) {
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

    /// Writes what can be written; an error marks the pipe dead.
    pub fn flush(&mut self) -> io::Result<()> {
        let Some(sock) = self.sock.as_mut() else {
            return Ok(());
        };
        while !self.out.is_empty() {
            match sock.write(&self.out) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.drain(..n);
                    self.stalled = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.state = PipeState::Dead;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Reads and decodes what the filter sent, at most [`READ_PER_TURN`] bytes and
    /// [`FRAMES_PER_TURN`] frames: answers come back per session. `Ok(true)`: input may
    /// be left (in the socket or decoded), for which no new readiness event will come;
    /// the loop calls again on its next turn. The decoder never holds more than one
    /// partial frame and one read. A protocol error or EOF marks the pipe dead and is
    /// returned as the error.
    pub fn read(&mut self, now: Instant, out: &mut Vec<(u64, Answer)>) -> Result<bool, String> {
        if self.rbuf.is_empty() {
            // A 64 KiB message comes back from a pass-through filter in one or two reads.
            self.rbuf = vec![0u8; READ_CHUNK];
        }
        let mut frames = 0;
        let mut read = 0;
        loop {
            frames += self.decode(FRAMES_PER_TURN - frames, now, out)?;
            if frames >= FRAMES_PER_TURN {
                return Ok(true);
            }
            // No whole frame is left in the decoder.
            if self.eof {
                self.state = PipeState::Dead;
                return Err("the filter closed its end".into());
            }
            if read >= READ_PER_TURN {
                return Ok(true);
            }
            let Some(sock) = self.sock.as_mut() else {
                return Err("not running".into());
            };
            let room = (READ_PER_TURN - read).min(READ_CHUNK);
            match sock.read(&mut self.rbuf[..room]) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.dec.feed(&self.rbuf[..n]);
                    read += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.state = PipeState::Dead;
                    return Err(format!("read: {e}"));
                }
            }
        }
    }

    /// Takes at most `max` whole frames from the decoder; returns how many.
    fn decode(
        &mut self,
        max: usize,
        now: Instant,
        out: &mut Vec<(u64, Answer)>,
    ) -> Result<usize, String> {
        let mut n = 0;
        while n < max {
            let frame = match self.dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.state = PipeState::Dead;
                    return Err(e.to_string());
                }
            };
            let (session, f) = frame;
            n += 1;
            let answer = match (self.state, f) {
                (
                    PipeState::Handshake,
                    Frame::Register {
                        version,
                        hooks,
                        reports,
                        name,
                    },
                ) => {
                    if version != codec::VERSION {
                        let mut w = Vec::new();
                        codec::encode(0, &Frame::Refused(b"unsupported protocol version"), &mut w);
                        self.out.extend_from_slice(&w);
                        let _ = self.flush();
                        self.state = PipeState::Dead;
                        return Err(format!("protocol version {version} refused"));
                    }
                    log::info!(
                        "filter {} registered name={} hooks={hooks:#x} reports={reports:#x}",
                        self.name,
                        String::from_utf8_lossy(name)
                    );
                    self.state = PipeState::Ready {
                        hooks: hooks & event::ANSWERED | hooks & event::DATA_LINES,
                        reports: reports & event::REPORTS,
                    };
                    let ready = Frame::Ready {
                        version: codec::VERSION,
                        max_frame: codec::MAX_FRAME as u32,
                        timeout_ms: self.timeout.as_millis().min(u32::MAX as u128) as u32,
                    };
                    self.send(0, &ready);
                    let wanted = match self.state {
                        PipeState::Ready { hooks, reports } => hooks | reports,
                        _ => 0,
                    };
                    let dropped = self.early.take(wanted, &mut self.out);
                    if dropped > 0 {
                        log::warn!(
                            "filter {}: {dropped} reports dropped while it registered",
                            self.name
                        );
                    }
                    continue;
                }
                (PipeState::Handshake, _) => {
                    self.state = PipeState::Dead;
                    return Err("spoke before registering".into());
                }
                (_, Frame::Log(l)) => {
                    let (admit, dropped) = self.logs.admit(now);
                    if dropped > 0 {
                        log::info!("filter {}: {dropped} log lines dropped", self.name);
                    }
                    if admit {
                        log::info!("filter {}: {}", self.name, l.escape_ascii());
                    }
                    continue;
                }
                (_, Frame::DataLines(lines)) => {
                    let bytes = lines.iter().map(|l| l.len()).sum();
                    let mut out = Lines::with_capacity(lines.len(), bytes);
                    for l in lines {
                        out.push(l);
                    }
                    Answer::DataLines(out)
                }
                (_, Frame::DataEnd) => Answer::DataEnd,
                (_, f) => {
                    if let Some(d) = Decision::from_frame(&f) {
                        Answer::Decision(d)
                    } else if let Some(e) = Edit::from_frame(&f) {
                        Answer::Edit(e)
                    } else {
                        self.state = PipeState::Dead;
                        return Err(format!(
                            "unexpected frame kind 0x{:02x}",
                            codec::kind_of(&f).0
                        ));
                    }
                }
            };
            out.push((session, answer));
        }
        Ok(n)
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
        [answer, write, gone].into_iter().flatten().min()
    }

    /// Marks the pipe dead and returns the sessions that were waiting on it.
    pub fn kill(&mut self) -> Vec<u64> {
        self.state = PipeState::Dead;
        self.sock = None;
        let waiting = self.waiting.drain().map(|(s, _)| s).collect();
        self.forget();
        waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (FilterPipe, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let p = FilterPipe::new(0, "t", Some(OwnedFd::from(ours)), Duration::from_secs(30));
        (p.unwrap(), theirs)
    }

    fn register() -> Vec<u8> {
        let mut w = Vec::new();
        let f = Frame::Register {
            version: codec::VERSION,
            hooks: event::ANSWERED | event::DATA_LINES,
            reports: 0,
            name: b"t",
        };
        codec::encode(0, &f, &mut w);
        w
    }

    /// Frames of every size: many small answers and large line batches.
    fn flood() -> (Vec<u8>, usize) {
        let line = [b'x'; 998];
        let mut w = Vec::new();
        let mut n = 0;
        while w.len() < 3 << 20 {
            codec::encode(n as u64, &Frame::Proceed, &mut w);
            if n % 100 == 0 {
                codec::encode(n as u64, &Frame::DataLines(vec![&line[..]; 1000]), &mut w);
                n += 1;
            }
            n += 1;
        }
        (w, n)
    }

    fn idle() -> FilterPipe {
        FilterPipe::new(0, "t", None, Duration::from_secs(30)).unwrap()
    }

    fn lines(n: usize) -> Answer {
        let mut l = Lines::default();
        for _ in 0..n {
            l.push(b"0123456789");
        }
        Answer::DataLines(l)
    }

    fn edit() -> Answer {
        Answer::Edit(Edit::AddHeader("X-A".into(), "1".into()))
    }

    #[test]
    fn decisions_answer_pending_questions_only() {
        let now = Instant::now();
        let mut p = idle();
        assert_eq!(
            p.settle(7, &Answer::Decision(Decision::Proceed), now),
            Fit::Unrequested
        );
        p.ask(7, &Frame::Mail(b"a@b"), now);
        assert_eq!(
            p.settle(8, &Answer::Decision(Decision::Proceed), now),
            Fit::Unrequested
        );
        assert_eq!(
            p.settle(7, &Answer::Decision(Decision::Junk), now),
            Fit::Asked
        );
        // A second decision for the same question.
        assert_eq!(
            p.settle(7, &Answer::Decision(Decision::Proceed), now),
            Fit::Unrequested
        );
        // Edits come before the decision and start its deadline again.
        p.ask(7, &Frame::Eom(10), now);
        let later = now + Duration::from_secs(20);
        assert_eq!(p.settle(7, &edit(), later), Fit::Asked);
        assert!(!p.overdue(now + Duration::from_secs(40)));
        assert!(p.overdue(later + Duration::from_secs(30)));
        assert_eq!(
            p.settle(7, &Answer::Decision(Decision::Discard), later),
            Fit::Asked
        );
        assert_eq!(p.settle(7, &edit(), later), Fit::Unrequested);
        assert!(p.waiting.is_empty());
    }

    #[test]
    fn lines_and_their_end_follow_the_message() {
        let now = Instant::now();
        let mut p = idle();
        assert_eq!(p.settle(5, &lines(1), now), Fit::Unrequested);
        assert_eq!(p.settle(5, &Answer::DataEnd, now), Fit::Unrequested);
        p.start_lines(5);
        p.pass_lines(5, &Frame::DataLines(vec![b"x"]));
        assert_eq!(p.settle(5, &lines(2), now), Fit::Asked);
        assert_eq!(p.returned(5), 24);
        // Its DATA_END before the daemon's: nobody asked for it.
        assert_eq!(p.settle(5, &Answer::DataEnd, now), Fit::Unrequested);
        p.ask_end(5, now);
        // While the end is awaited, a decision answers nothing.
        assert_eq!(
            p.settle(5, &Answer::Decision(Decision::Proceed), now),
            Fit::Unrequested
        );
        assert_eq!(p.settle(5, &lines(1), now), Fit::Asked);
        assert_eq!(p.returned(5), 36);
        assert_eq!(p.settle(5, &Answer::DataEnd, now), Fit::Asked);
        assert!(p.waiting.is_empty());
        // Lines after its own end are lost.
        assert_eq!(p.settle(5, &lines(1), now), Fit::Unrequested);
        assert_eq!(p.returned(5), 0);
        // The next message counts from zero.
        p.pass_lines(5, &Frame::DataLines(vec![b"x"]));
        assert_eq!(p.settle(5, &lines(1), now), Fit::Asked);
        p.start_lines(5);
        assert_eq!(p.returned(5), 0);
    }

    #[test]
    fn late_answers_for_sessions_that_left_are_not_counted() {
        let now = Instant::now();
        let mut p = idle();
        // Left while a decision was pending: the wait outlives the session.
        p.ask(1, &Frame::Rcpt(b"a@b"), now);
        p.session_left(1, now);
        assert_eq!(
            p.settle(1, &Answer::Decision(Decision::Proceed), now),
            Fit::Asked
        );
        // Left in the middle of its lines: they are dropped for a while.
        p.pass_lines(2, &Frame::DataLines(vec![b"x"]));
        p.session_left(2, now);
        assert_eq!(p.settle(2, &lines(1), now), Fit::Gone);
        assert_eq!(p.settle(2, &Answer::DataEnd, now), Fit::Gone);
        assert_eq!(
            p.settle(2, &Answer::Decision(Decision::Proceed), now),
            Fit::Unrequested
        );
        p.prune_gone(now + GONE_FOR - Duration::from_secs(1));
        assert_eq!(p.settle(2, &lines(1), now), Fit::Gone);
        p.prune_gone(now + GONE_FOR);
        assert_eq!(p.settle(2, &lines(1), now), Fit::Unrequested);
        // Left after the end was sent: the filter's end is still awaited.
        p.pass_lines(3, &Frame::DataLines(vec![b"x"]));
        p.ask_end(3, now);
        p.session_left(3, now);
        assert_eq!(p.settle(3, &lines(1), now), Fit::Asked);
        assert_eq!(p.settle(3, &Answer::DataEnd, now), Fit::Asked);
    }

    #[test]
    fn sessions_that_left_are_remembered_up_to_a_bound() {
        let now = Instant::now();
        let mut p = idle();
        for s in 0..GONE_MAX as u64 + 10 {
            p.pass_lines(s, &Frame::DataLines(vec![b"x"]));
            p.session_left(s, now);
        }
        assert_eq!(p.gone.len(), GONE_MAX);
        assert_eq!(p.settle(0, &lines(1), now), Fit::Unrequested);
        assert_eq!(p.settle(10, &lines(1), now), Fit::Gone);
        p.kill();
        assert!(p.gone.is_empty() && p.gone_order.is_empty() && p.data.is_empty());
    }

    #[test]
    fn unrequested_answers_have_an_allowance() {
        let now = Instant::now();
        let mut p = idle();
        for _ in 0..UNREQUESTED_MAX {
            assert_eq!(p.unrequested(now), None);
        }
        assert_eq!(p.unrequested(now), Some(UNREQUESTED_MAX + 1));
        // A new window.
        assert_eq!(p.unrequested(now + UNREQUESTED_WINDOW), None);
    }

    #[test]
    fn a_filter_that_takes_nothing_for_its_timeout_is_stalled() {
        let (mut p, mut theirs) = pair();
        let t = Instant::now();
        p.send(1, &Frame::Data);
        assert!(!p.write_stalled(t));
        assert!(p.write_stalled(t + Duration::from_secs(31)));
        p.flush().unwrap();
        assert!(!p.write_stalled(t + Duration::from_secs(31)));
        // Fill the socket until it takes no more.
        let line = [b'x'; 998];
        for _ in 0..1000 {
            p.send(1, &Frame::DataLines(vec![&line[..]; 100]));
            p.flush().unwrap();
            if p.unsent() > 0 {
                break;
            }
        }
        let stuck = p.unsent();
        assert!(stuck > 0);
        p.flush().unwrap();
        assert_eq!(p.unsent(), stuck);
        let later = Instant::now() + Duration::from_secs(31);
        assert!(p.write_stalled(later));
        // The filter reads: the wait starts again from the last write.
        let mut buf = vec![0u8; 256 * 1024];
        let _ = theirs.read(&mut buf).unwrap();
        p.flush().unwrap();
        assert!(p.unsent() < stuck);
        assert!(!p.write_stalled(Instant::now() + Duration::from_secs(29)));
    }

    #[test]
    fn a_flood_is_taken_a_bounded_amount_at_a_time() {
        let (mut p, mut theirs) = pair();
        let (wire, frames) = flood();
        let writer = std::thread::spawn(move || {
            theirs.write_all(&register()).unwrap();
            theirs.write_all(&wire).unwrap();
            theirs
        });
        let mut got = 0;
        let mut turns = 0;
        while got < frames && turns < 100_000 {
            turns += 1;
            let mut out = Vec::new();
            let before = p.dec.pending();
            let more = p.read(Instant::now(), &mut out).unwrap();
            assert!(out.len() <= FRAMES_PER_TURN);
            assert!(p.dec.pending() <= codec::MAX_FRAME + READ_CHUNK);
            assert!(p.dec.pending() <= before + READ_PER_TURN);
            got += out.len();
            if !more {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert_eq!(got, frames);
        assert!(matches!(p.state, PipeState::Ready { .. }));
        // Everything was taken: nothing is left, and the next read waits.
        let theirs = writer.join().unwrap();
        assert_eq!(p.read(Instant::now(), &mut Vec::new()), Ok(false));
        drop(theirs);
        assert_eq!(
            p.read(Instant::now(), &mut Vec::new()),
            Err("the filter closed its end".into())
        );
        assert_eq!(p.state, PipeState::Dead);
    }

    #[test]
    fn frames_before_the_end_are_taken_first() {
        let (mut p, mut theirs) = pair();
        let mut wire = register();
        for s in 0..FRAMES_PER_TURN as u64 + 10 {
            codec::encode(s + 1, &Frame::Proceed, &mut wire);
        }
        theirs.write_all(&wire).unwrap();
        drop(theirs);
        let mut out = Vec::new();
        assert_eq!(p.read(Instant::now(), &mut out), Ok(true));
        // The REGISTER counts as a frame of the turn.
        assert_eq!(out.len(), FRAMES_PER_TURN - 1);
        out.clear();
        assert_eq!(
            p.read(Instant::now(), &mut out),
            Err("the filter closed its end".into())
        );
        assert_eq!(out.len(), 11);
        assert_eq!(
            out.last(),
            Some(&(
                FRAMES_PER_TURN as u64 + 10,
                Answer::Decision(Decision::Proceed)
            ))
        );
    }
}
