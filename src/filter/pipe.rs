//! The engine's end of one filter process: handshake, framing, and who waits for it.
//!
//! ```text
//! Handshake --REGISTER ok--> Ready --EOF / garbage / timeout--> Dead
//!     '--------- bad REGISTER ------------------------------------^
//! ```
//! A dead pipe is replaced when the parent hands over the restarted filter's socket.

use smtpd_filter::codec::{self, event, Decoder, Frame};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Unsent bytes to a filter above which sessions stop feeding it data lines.
pub const OUT_HIGH: usize = 256 * 1024;

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

/// An owned answer from a filter for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Go on.
    Proceed,
    /// Refuse with this code and text.
    Reject(u16, String),
    /// Refuse for now.
    Tempfail(String),
    /// Reply and close.
    Disconnect(u16, String),
    /// Go on, mark as spam.
    Junk,
    /// Go on with this parameter.
    Rewrite(String),
    /// Output lines of the message.
    DataLines(Lines),
    /// End of the output lines.
    DataEnd,
    /// An end-of-message edit (kept as its frame kind and fields).
    Edit(Edit),
    /// Accept and drop the message.
    Discard,
}

/// A batch of message lines in one buffer, each followed by LF as in the spool: one
/// allocation per batch, not per line, and stored with one copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    buf: Vec<u8>,
    /// Where each line ends, its LF not included.
    ends: Vec<usize>,
}

impl Lines {
    /// An empty batch with room for `lines` lines of `bytes` bytes in all.
    pub fn with_capacity(lines: usize, bytes: usize) -> Lines {
        Lines {
            buf: Vec::with_capacity(bytes + lines),
            ends: Vec::with_capacity(lines),
        }
    }

    /// Appends a line (without its line end).
    pub fn push(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.ends.push(self.buf.len());
        self.buf.push(b'\n');
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no line.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The lines, in order, without their line ends.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let l = &self.buf[start..end];
            start = end + 1;
            l
        })
    }

    /// Every line, each followed by LF.
    pub fn text(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }
}

/// An end-of-message edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Append a header.
    AddHeader(String, String),
    /// Insert a header at an index.
    InsertHeader(u32, String, String),
    /// Change (empty value: delete) the n-th header of a name.
    ChangeHeader(u32, String, String),
    /// A chunk of the replacement body.
    ReplaceBody(Vec<u8>),
    /// Add a recipient.
    AddRcpt(String),
    /// Remove a recipient.
    DelRcpt(String),
    /// Change the sender.
    ChangeFrom(String),
    /// Hold the message.
    Quarantine(String),
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
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
    dec: Decoder,
    /// Read buffer, allocated at the first read.
    rbuf: Vec<u8>,
    out: Vec<u8>,
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
            dec: Decoder::new(),
            rbuf: Vec::new(),
            out: Vec::new(),
        })
    }

    /// Takes a restarted filter's socket.
    pub fn replace(&mut self, fd: OwnedFd) -> io::Result<()> {
        let s = std::os::unix::net::UnixStream::from(fd);
        s.set_nonblocking(true)?;
        self.sock = Some(mio::net::UnixStream::from_std(s));
        self.state = PipeState::Handshake;
        self.dec = Decoder::new();
        self.out.clear();
        self.waiting.clear();
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

    /// Whether the output is backed up.
    pub fn congested(&self) -> bool {
        self.out.len() > OUT_HIGH
    }

    /// Queues a frame for `session`; the loop writes every pipe's frames once per turn
    /// ([`FilterPipe::flush`]), so a turn's events for a filter go in one write.
    pub fn send(&mut self, session: u64, f: &Frame) {
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

    /// Reads and decodes what the filter sent. Answers come back per session; a
    /// protocol error or EOF marks the pipe dead and is returned as the error.
    pub fn read(&mut self, out: &mut Vec<(u64, Answer)>) -> Result<(), String> {
        let Some(sock) = self.sock.as_mut() else {
            return Err("not running".into());
        };
        if self.rbuf.is_empty() {
            // A 64 KiB message comes back from a pass-through filter in one or two reads.
            self.rbuf = vec![0u8; 64 * 1024];
        }
        let mut eof = false;
        loop {
            match sock.read(&mut self.rbuf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => self.dec.feed(&self.rbuf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.state = PipeState::Dead;
                    return Err(format!("read: {e}"));
                }
            }
        }
        loop {
            let frame = match self.dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.state = PipeState::Dead;
                    return Err(e.to_string());
                }
            };
            let (session, f) = frame;
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
                        reports: reports & event::ALL,
                    };
                    let ready = Frame::Ready {
                        version: codec::VERSION,
                        max_frame: codec::MAX_FRAME as u32,
                        timeout_ms: self.timeout.as_millis().min(u32::MAX as u128) as u32,
                    };
                    self.send(0, &ready);
                    continue;
                }
                (PipeState::Handshake, _) => {
                    self.state = PipeState::Dead;
                    return Err("spoke before registering".into());
                }
                (_, Frame::Log(l)) => {
                    log::info!("filter {}: {}", self.name, l.escape_ascii());
                    continue;
                }
                (_, Frame::Proceed) => Answer::Proceed,
                (_, Frame::Reject { code, text: t }) => Answer::Reject(code, text(t)),
                (_, Frame::Tempfail(t)) => Answer::Tempfail(text(t)),
                (_, Frame::DisconnectAnswer { code, text: t }) => Answer::Disconnect(code, text(t)),
                (_, Frame::Junk) => Answer::Junk,
                (_, Frame::Rewrite(v)) => Answer::Rewrite(text(v)),
                (_, Frame::DataLines(lines)) => {
                    let bytes = lines.iter().map(|l| l.len()).sum();
                    let mut out = Lines::with_capacity(lines.len(), bytes);
                    for l in lines {
                        out.push(l);
                    }
                    Answer::DataLines(out)
                }
                (_, Frame::DataEnd) => Answer::DataEnd,
                (_, Frame::AddHeader { name, value }) => {
                    Answer::Edit(Edit::AddHeader(text(name), text(value)))
                }
                (_, Frame::InsertHeader { index, name, value }) => {
                    Answer::Edit(Edit::InsertHeader(index, text(name), text(value)))
                }
                (_, Frame::ChangeHeader { index, name, value }) => {
                    Answer::Edit(Edit::ChangeHeader(index, text(name), text(value)))
                }
                (_, Frame::ReplaceBody(b)) => Answer::Edit(Edit::ReplaceBody(b.to_vec())),
                (_, Frame::AddRcpt(a)) => Answer::Edit(Edit::AddRcpt(text(a))),
                (_, Frame::DelRcpt(a)) => Answer::Edit(Edit::DelRcpt(text(a))),
                (_, Frame::ChangeFrom(a)) => Answer::Edit(Edit::ChangeFrom(text(a))),
                (_, Frame::Quarantine(r)) => Answer::Edit(Edit::Quarantine(text(r))),
                (_, Frame::Discard) => Answer::Discard,
                (_, other) => {
                    self.state = PipeState::Dead;
                    return Err(format!(
                        "unexpected frame kind 0x{:02x}",
                        codec::kind_of(&other).0
                    ));
                }
            };
            out.push((session, answer));
        }
        if eof {
            self.state = PipeState::Dead;
            return Err("the filter closed its end".into());
        }
        Ok(())
    }

    /// Sessions whose answer is overdue.
    pub fn overdue(&self, now: Instant) -> bool {
        self.waiting.values().any(|&d| d <= now)
    }

    /// Marks the pipe dead and returns the sessions that were waiting on it.
    pub fn kill(&mut self) -> Vec<u64> {
        self.state = PipeState::Dead;
        self.sock = None;
        self.out.clear();
        self.waiting.drain().map(|(s, _)| s).collect()
    }
}
