//! The filter pipe's socket: writing what waits for the filter, reading and decoding
//! what it sends (our frames, or OpenSMTPD's text protocol), within the bounds of a
//! loop turn.

use super::*;

impl FilterPipe {
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
                    if !self.heard {
                        // A frame's length starts with a zero byte; a line never does.
                        self.heard = true;
                        self.decide_by = None;
                        if self.rbuf[0] == 0 && !self.text_only {
                            self.kind = Kind::Binary;
                        } else if !matches!(self.kind, Kind::Text(_)) {
                            self.speak_text();
                        }
                    }
                    match &mut self.kind {
                        Kind::Text(t) => t.feed(&self.rbuf[..n]),
                        _ => self.dec.feed(&self.rbuf[..n]),
                    }
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

    /// Takes at most `max` whole frames (or lines) from the decoder; returns how many.
    fn decode(
        &mut self,
        max: usize,
        now: Instant,
        out: &mut Vec<(u64, Answer)>,
    ) -> Result<usize, String> {
        if let Kind::Text(t) = &mut self.kind {
            let r = t.decode(max, &self.name, &mut self.logs, now, out);
            let d = match r {
                Ok(d) => d,
                Err(e) => {
                    self.state = PipeState::Dead;
                    return Err(e);
                }
            };
            if d.ready {
                let (hooks, reports) = (t.hooks, t.reports);
                log::info!(
                    "filter {} registered (OpenSMTPD protocol {}) hooks={hooks:#x} reports={reports:#x}",
                    self.name,
                    crate::filter::text::VERSION
                );
                self.state = PipeState::Ready { hooks, reports: 0 };
                if self.out.is_empty() {
                    self.stalled = Instant::now();
                }
                let dropped = self.early_text.take(reports, &mut self.out);
                if dropped > 0 {
                    log::warn!(
                        "filter {}: {dropped} reports dropped while it registered",
                        self.name
                    );
                }
            }
            return Ok(d.lines);
        }
        if matches!(self.kind, Kind::Undecided) {
            return Ok(0);
        }
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
}
