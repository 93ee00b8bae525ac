//! The SMTP/LMTP client session: a pure state machine fed with server replies.
//!
//! ```text
//! Greeting -> Hello (EHLO|LHLO) -> Mail -> Rcpt(i)... -> Data -> Body -> Dot -> Quit
//! ```
//! Every recipient ends with an [`Outcome`]: the server's verdict on it (RCPT, then the
//! reply to the final dot; LMTP gives one reply per accepted recipient there).

use crate::mda::Outcome;

/// Recipients of one job at most (RFC 5321 §4.5.3.1.8: a server takes at least 100).
pub const MAX_RCPT: usize = 100;

/// SMTP (relay) or LMTP (RFC 2033).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// SMTP with EHLO.
    Smtp,
    /// LMTP with LHLO.
    Lmtp,
}

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
    /// The caller's id for it.
    pub id: u64,
    /// MAIL FROM, empty for `<>`.
    pub sender: String,
    /// The addresses given in RCPT TO.
    pub rcpts: Vec<String>,
}

/// What the glue must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this command line (without CR LF).
    Send(String),
    /// Send the message content, then the final dot.
    SendBody,
    /// The session is over: close.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Greeting,
    Hello,
    Mail,
    Rcpt(usize),
    Data,
    Body,
    Dot,
    Quit,
    Done,
}

/// One client session delivering one message to some recipients.
#[derive(Debug)]
pub struct Client {
    proto: Proto,
    helo: String,
    sender: String,
    rcpts: Vec<String>,
    results: Vec<Option<Outcome>>,
    accepted: Vec<usize>,
    dot_replies: usize,
    state: State,
}

impl Client {
    /// A session that will say `helo` and deliver from `sender` (empty for `<>`).
    pub fn new(proto: Proto, helo: &str, sender: &str, rcpts: Vec<String>) -> Client {
        let n = rcpts.len();
        Client {
            proto,
            helo: helo.to_string(),
            sender: sender.to_string(),
            rcpts,
            results: vec![None; n],
            accepted: Vec::new(),
            dot_replies: 0,
            state: State::Greeting,
        }
    }

    /// Whether the body is being sent (the glue streams it, then calls [`Client::body_sent`]).
    pub fn in_body(&self) -> bool {
        self.state == State::Body
    }

    /// Whether the session is over.
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Every recipient's outcome; those without one get `fallback` (connection lost).
    pub fn outcomes(&self, fallback: &Outcome) -> Vec<Outcome> {
        self.results
            .iter()
            .map(|r| r.clone().unwrap_or_else(|| fallback.clone()))
            .collect()
    }

    fn fail_all(&mut self, o: Outcome) {
        for r in self.results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(o.clone());
        }
    }

    fn quit(&mut self, out: &mut Vec<Step>) {
        out.push(Step::Send("QUIT".into()));
        self.state = State::Quit;
    }

    fn rcpt_cmd(&self, i: usize) -> String {
        format!("RCPT TO:<{}>", self.rcpts[i])
    }

    /// The protocol spoken.
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// The body was sent with its final dot.
    pub fn body_sent(&mut self) {
        if self.state == State::Body {
            self.state = State::Dot;
            self.dot_replies = match self.proto {
                Proto::Lmtp => self.accepted.len(),
                Proto::Smtp => 1,
            };
        }
    }

    /// Feeds a server reply; returns what to do.
    pub fn on_reply(&mut self, r: &ServerReply) -> Vec<Step> {
        let mut out = Vec::new();
        match self.state {
            State::Greeting => {
                if r.code != 220 {
                    self.fail_all(r.outcome());
                    self.quit(&mut out);
                } else {
                    let verb = match self.proto {
                        Proto::Smtp => "EHLO",
                        Proto::Lmtp => "LHLO",
                    };
                    out.push(Step::Send(format!("{verb} {}", self.helo)));
                    self.state = State::Hello;
                }
            }
            State::Hello => {
                if r.code != 250 {
                    self.fail_all(r.outcome());
                    self.quit(&mut out);
                } else {
                    out.push(Step::Send(format!("MAIL FROM:<{}>", self.sender)));
                    self.state = State::Mail;
                }
            }
            State::Mail => {
                if r.code != 250 {
                    self.fail_all(r.outcome());
                    self.quit(&mut out);
                } else if self.rcpts.is_empty() {
                    self.quit(&mut out);
                } else {
                    out.push(Step::Send(self.rcpt_cmd(0)));
                    self.state = State::Rcpt(0);
                }
            }
            State::Rcpt(i) => {
                if matches!(r.code, 250 | 251) {
                    self.accepted.push(i);
                } else if r.code < 400 {
                    self.results[i] =
                        Some(Outcome::TempFail(format!("unexpected reply {}", r.line())));
                } else {
                    self.results[i] = Some(r.outcome());
                }
                if i + 1 < self.rcpts.len() {
                    out.push(Step::Send(self.rcpt_cmd(i + 1)));
                    self.state = State::Rcpt(i + 1);
                } else if self.accepted.is_empty() {
                    self.quit(&mut out);
                } else {
                    out.push(Step::Send("DATA".into()));
                    self.state = State::Data;
                }
            }
            State::Data => {
                if r.code != 354 {
                    self.fail_all(r.outcome());
                    self.quit(&mut out);
                } else {
                    out.push(Step::SendBody);
                    self.state = State::Body;
                }
            }
            State::Body => {
                // A reply while we send the body: the server gave up.
                self.fail_all(r.outcome());
                out.push(Step::Close);
                self.state = State::Done;
            }
            State::Dot => {
                match self.proto {
                    Proto::Smtp => {
                        let o = r.outcome();
                        for &i in &self.accepted {
                            self.results[i] = Some(o.clone());
                        }
                    }
                    Proto::Lmtp => {
                        let n = self.accepted.len() - self.dot_replies;
                        if let Some(&i) = self.accepted.get(n) {
                            self.results[i] = Some(r.outcome());
                        }
                    }
                }
                self.dot_replies = self.dot_replies.saturating_sub(1);
                if self.dot_replies == 0 {
                    self.quit(&mut out);
                }
            }
            State::Quit => {
                out.push(Step::Close);
                self.state = State::Done;
            }
            State::Done => out.push(Step::Close),
        }
        out
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
    fn lmtp_per_recipient() {
        let mut c = Client::new(
            Proto::Lmtp,
            "me",
            "a@b.c",
            vec!["x".into(), "y".into(), "z".into()],
        );
        assert_eq!(c.on_reply(&r(220)), [Step::Send("LHLO me".into())]);
        assert_eq!(
            c.on_reply(&r(250)),
            [Step::Send("MAIL FROM:<a@b.c>".into())]
        );
        assert_eq!(c.on_reply(&r(250)), [Step::Send("RCPT TO:<x>".into())]);
        assert_eq!(c.on_reply(&r(250)), [Step::Send("RCPT TO:<y>".into())]);
        assert_eq!(c.on_reply(&r(550)), [Step::Send("RCPT TO:<z>".into())]);
        assert_eq!(c.on_reply(&r(250)), [Step::Send("DATA".into())]);
        assert_eq!(c.on_reply(&r(354)), [Step::SendBody]);
        c.body_sent();
        assert_eq!(c.on_reply(&r(250)), []);
        assert_eq!(c.on_reply(&r(452)), [Step::Send("QUIT".into())]);
        assert_eq!(c.on_reply(&r(221)), [Step::Close]);
        let o = c.outcomes(&Outcome::TempFail("lost".into()));
        assert_eq!(o[0], Outcome::Ok);
        assert!(matches!(o[1], Outcome::PermFail(_)));
        assert!(matches!(o[2], Outcome::TempFail(_)));
    }

    #[test]
    fn smtp_refused_greeting_and_lost_connection() {
        let mut c = Client::new(Proto::Smtp, "me", "", vec!["x@y".into()]);
        assert_eq!(c.on_reply(&r(554)), [Step::Send("QUIT".into())]);
        assert!(matches!(c.outcomes(&Outcome::Ok)[0], Outcome::PermFail(_)));
        let c = Client::new(Proto::Smtp, "me", "", vec!["x@y".into()]);
        assert_eq!(
            c.outcomes(&Outcome::TempFail("lost".into()))[0],
            Outcome::TempFail("lost".into())
        );
    }
}
