//! The engine's end of a filter that speaks OpenSMTPD's protocol: its registration,
//! the tokens of the questions it was asked and of the messages it passes, and its
//! lines turned into [`Answer`]s. The pipe ([`super::pipe`]) does the I/O and the
//! bookkeeping both kinds share.
//!
//! ```text
//! config lines sent --register|...--> (hooks, reports) --register|ready--> Ready
//! ```
//! A line that is not of the protocol, too long, out of place (a registration after
//! `register|ready`, anything else before it) or with the wrong token for its session
//! is an error: the pipe fails the filter and it is restarted.

use super::answer::{Answer, Lines};
use super::limit::LogLimit;
use super::opensmtpd;
use super::report::Report;
use super::text::{self, Line, Register, Stamp, Verdict, MAX_LINE};
use smtpd_filter::codec::Frame;
use std::collections::HashMap;
use std::time::Instant;

/// Lines of one message gathered into one answer at most.
const BATCH_LINES: usize = 1024;

/// What a text filter said in one call of [`TextSide::decode`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// Lines taken.
    pub lines: usize,
    /// It sent `register|ready`.
    pub ready: bool,
}

/// The text side of a filter pipe.
#[derive(Debug, Default)]
pub struct TextSide {
    /// The events of the binary protocol its phases stand for.
    pub hooks: u32,
    /// The report events it registered (bits of [`text::report`]).
    pub reports: u32,
    /// It sent `register|ready`.
    ready: bool,
    /// The token and phase of each session's pending question.
    tokens: HashMap<u64, (u64, &'static str)>,
    /// The token of each message whose lines it passes.
    data_tokens: HashMap<u64, u64>,
    /// Bytes read and not yet taken as lines.
    buf: Vec<u8>,
}

fn new_token() -> u64 {
    loop {
        let t = crate::sys::random_u64();
        if t != 0 {
            return t;
        }
    }
}

impl TextSide {
    /// Queues the question `frame` asks of session `sid` into `out`, with a new token;
    /// `false` when the frame is no question of the protocol.
    pub fn ask(&mut self, out: &mut Vec<u8>, sid: u64, frame: &Frame) -> bool {
        let Some(phase) = opensmtpd::phase_of(frame) else {
            return false;
        };
        let token = new_token();
        self.tokens.insert(sid, (token, phase));
        opensmtpd::question(out, Stamp::now(), sid, token, frame)
    }

    /// A message of `sid` starts through the filter, under a new token.
    pub fn start_lines(&mut self, sid: u64) {
        self.data_tokens.insert(sid, new_token());
    }

    /// Queues lines of `sid`'s message (`None`: its end).
    pub fn lines<'a>(
        &mut self,
        out: &mut Vec<u8>,
        sid: u64,
        lines: impl Iterator<Item = Option<&'a [u8]>>,
    ) {
        let token = *self.data_tokens.entry(sid).or_insert_with(new_token);
        let ts = Stamp::now();
        for l in lines {
            opensmtpd::data_line(out, ts, sid, token, l);
        }
    }

    /// Queues the reports of `r` the filter registered; `false` when it registered none.
    pub fn report(&self, out: &mut Vec<u8>, sid: u64, r: &Report) -> bool {
        let wanted = self.reports & opensmtpd::report_events(r);
        if wanted != 0 {
            opensmtpd::report(out, Stamp::now(), sid, r, wanted);
        }
        wanted != 0
    }

    /// Takes bytes the filter sent.
    pub fn feed(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// Bytes read and not yet taken as lines.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Whether a whole line waits.
    pub fn has_line(&self) -> bool {
        memchr::memchr(b'\n', &self.buf).is_some()
    }

    /// Forgets the sessions of the filter's previous process.
    pub fn forget(&mut self) {
        self.tokens.clear();
        self.data_tokens.clear();
        self.buf.clear();
    }

    /// Takes at most `max` whole lines: registrations, and answers into `out`. `name`
    /// and `logs` are for the reports a filter writes, which are logged.
    pub fn decode(
        &mut self,
        max: usize,
        name: &str,
        logs: &mut LogLimit,
        now: Instant,
        out: &mut Vec<(u64, Answer)>,
    ) -> Result<Decoded, String> {
        let mut d = Decoded::default();
        let mut start = 0;
        let r = loop {
            if d.lines >= max {
                break Ok(());
            }
            let Some(i) = memchr::memchr(b'\n', &self.buf[start..]) else {
                break if self.buf.len() - start > MAX_LINE {
                    Err(text::TextError::TooLong.to_string())
                } else {
                    Ok(())
                };
            };
            let end = start + i;
            d.lines += 1;
            let line = std::mem::take(&mut self.buf);
            let r = self.take(&line[start..end], &mut d, name, logs, now, out);
            self.buf = line;
            start = end + 1;
            if let Err(e) = r {
                break Err(e);
            }
        };
        self.buf.drain(..start);
        r.map(|()| d)
    }

    /// One line.
    fn take(
        &mut self,
        line: &[u8],
        d: &mut Decoded,
        name: &str,
        logs: &mut LogLimit,
        now: Instant,
        out: &mut Vec<(u64, Answer)>,
    ) -> Result<(), String> {
        let shown = || {
            line.escape_ascii()
                .to_string()
                .chars()
                .take(80)
                .collect::<String>()
        };
        let parsed = text::parse(line).map_err(|e| format!("{e} in \"{}\"", shown()))?;
        match (self.ready, parsed) {
            (false, Line::Register(Register::Ready)) => {
                self.ready = true;
                d.ready = true;
            }
            (false, Line::Register(Register::Report { smtp_out, events })) => {
                // No report of the smtp-out side is ever sent.
                if !smtp_out {
                    self.reports |= events;
                }
            }
            (false, Line::Register(Register::Filter(phase))) => {
                self.hooks |= opensmtpd::phase_event(phase);
            }
            (false, _) => return Err(format!("spoke before register|ready: \"{}\"", shown())),
            (true, Line::Register(_)) => {
                return Err(format!("registered after register|ready: \"{}\"", shown()))
            }
            (
                true,
                Line::Result {
                    sid,
                    token,
                    verdict,
                },
            ) => {
                let phase = match self.tokens.get(&sid) {
                    Some(&(t, _)) if t != token => {
                        return Err(format!("answered session {sid:016x} with a wrong token"))
                    }
                    Some(&(_, phase)) => {
                        self.tokens.remove(&sid);
                        phase
                    }
                    // Nobody asked: the pipe counts it.
                    None => "",
                };
                if let Verdict::Report(t) = verdict {
                    log_report(name, logs, sid, t, now);
                }
                let decision = opensmtpd::decision(&verdict, phase)?;
                out.push((sid, Answer::Decision(decision)));
            }
            (true, Line::DataLine { sid, token, line }) => {
                if self.data_tokens.get(&sid).is_some_and(|&t| t != token) {
                    return Err(format!(
                        "passed a line of session {sid:016x} with a wrong token"
                    ));
                }
                match opensmtpd::returned_line(line) {
                    None => {
                        self.data_tokens.remove(&sid);
                        out.push((sid, Answer::DataEnd));
                    }
                    Some(l) => match out.last_mut() {
                        // Lines in a row go in one batch.
                        Some((s, Answer::DataLines(b))) if *s == sid && b.len() < BATCH_LINES => {
                            b.push(l)
                        }
                        _ => {
                            let mut b = Lines::default();
                            b.push(l);
                            out.push((sid, Answer::DataLines(b)));
                        }
                    },
                }
            }
            (true, Line::Report { sid, text }) => log_report(name, logs, sid, text, now),
        }
        Ok(())
    }
}

/// Logs a filter's report, within the filter's allowance of log lines.
fn log_report(name: &str, logs: &mut LogLimit, sid: u64, text: &[u8], now: Instant) {
    let (admit, dropped) = logs.admit(now);
    if dropped > 0 {
        log::info!("filter {name}: {dropped} log lines dropped");
    }
    if admit {
        log::info!("{sid:016x} filter {name} report: {}", text.escape_ascii());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::answer::Decision;
    use std::time::Duration;

    fn side() -> (TextSide, LogLimit) {
        (
            TextSide::default(),
            LogLimit::new(100, Duration::from_secs(10)),
        )
    }

    fn run(
        t: &mut TextSide,
        logs: &mut LogLimit,
        input: &[u8],
    ) -> (Result<Decoded, String>, Vec<(u64, Answer)>) {
        let mut out = Vec::new();
        t.feed(input);
        let r = t.decode(1000, "t", logs, Instant::now(), &mut out);
        (r, out)
    }

    #[test]
    fn registers_then_answers_with_its_tokens() {
        let (mut t, mut logs) = side();
        let (r, _) = run(
            &mut t,
            &mut logs,
            b"register|report|smtp-in|link-connect\nregister|report|smtp-out|*\n\
register|filter|smtp-in|rcpt-to\nregister|filter|smtp-in|data-line\nregister|filter|smtp-in|quit\nregister|rea",
        );
        assert_eq!(
            r,
            Ok(Decoded {
                lines: 5,
                ready: false
            })
        );
        assert_eq!(t.reports, text::report::LINK_CONNECT);
        use smtpd_filter::codec::event;
        assert_eq!(t.hooks, event::RCPT | event::DATA_LINES);
        let (r, _) = run(&mut t, &mut logs, b"dy\n");
        assert_eq!(
            r,
            Ok(Decoded {
                lines: 1,
                ready: true
            })
        );
        let mut wire = Vec::new();
        assert!(t.ask(&mut wire, 7, &Frame::Rcpt(b"a@b")));
        let token = t.tokens[&7].0;
        let answer = format!("filter-result|7|{token:x}|reject|550 no\n");
        let (r, out) = run(&mut t, &mut logs, answer.as_bytes());
        assert!(r.is_ok());
        assert_eq!(
            out,
            [(7, Answer::Decision(Decision::Reject(550, "no".into())))]
        );
        // The same answer again: nobody asked (the pipe counts it).
        let (r, out) = run(&mut t, &mut logs, answer.as_bytes());
        assert!(r.is_ok() && out.len() == 1);
        // A wrong token.
        t.ask(&mut wire, 7, &Frame::Rcpt(b"a@b"));
        let (r, _) = run(&mut t, &mut logs, b"filter-result|7|1|proceed\n");
        assert!(r.unwrap_err().contains("wrong token"));
    }

    #[test]
    fn message_lines_are_batched_and_unstuffed() {
        let (mut t, mut logs) = side();
        let (r, _) = run(
            &mut t,
            &mut logs,
            b"register|filter|smtp-in|data-line\nregister|ready\n",
        );
        assert!(r.is_ok_and(|d| d.ready));
        t.start_lines(3);
        let mut wire = Vec::new();
        t.lines(
            &mut wire,
            3,
            [Some(&b".x"[..]), Some(b"y"), None].into_iter(),
        );
        let token = t.data_tokens[&3];
        let s = String::from_utf8_lossy(&wire).to_string();
        assert_eq!(s.matches(&format!("|{token:016x}|..x\n")).count(), 1);
        assert!(s.ends_with(&format!("|{token:016x}|.\n")));
        let back = format!(
            "filter-dataline|3|{token:x}|..x\nfilter-dataline|3|{token:x}|y\nfilter-dataline|3|{token:x}|.\n"
        );
        let (r, out) = run(&mut t, &mut logs, back.as_bytes());
        assert_eq!(r.map(|d| d.lines), Ok(3));
        let mut l = Lines::default();
        l.push(b".x");
        l.push(b"y");
        assert_eq!(out, [(3, Answer::DataLines(l)), (3, Answer::DataEnd)]);
        t.start_lines(3);
        let (r, _) = run(&mut t, &mut logs, b"filter-dataline|3|1|y\n");
        assert!(r.is_err());
    }

    #[test]
    fn what_breaks_the_protocol() {
        for input in [
            &b"filter-result|1|2|proceed\n"[..],
            b"hello\n",
            b"register|ready\nregister|ready\n",
            b"register|ready\nfilter-result|1|2|maybe\n",
            b"register|ready\nconfig|ready\n",
        ] {
            let (mut t, mut logs) = side();
            let (r, _) = run(&mut t, &mut logs, input);
            assert!(r.is_err(), "{}", input.escape_ascii());
        }
        // A line without end longer than the longest allowed.
        let (mut t, mut logs) = side();
        let (r, _) = run(&mut t, &mut logs, &vec![b'r'; MAX_LINE + 1]);
        assert!(r.is_err());
        // Up to it, it waits for the rest.
        let (mut t, mut logs) = side();
        let (r, _) = run(&mut t, &mut logs, &vec![b'r'; MAX_LINE]);
        assert_eq!(r, Ok(Decoded::default()));
    }
}
