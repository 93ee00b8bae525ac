//! Server replies as the client reads them (RFC 5321 §4.2), checked before anything is
//! believed: a reply is a bounded number of bounded lines, all with the same code, the
//! code in range. A server that breaks these rules (a long line, endless continuation
//! lines, codes that change, garbage) ends the session; what its text says is kept
//! only as sanitised, bounded text. This is the class of CVE-2020-8794, where a
//! client trusted a server's reply lines.

use crate::mda::Outcome;

/// Longest reply line accepted, in octets without CR LF. RFC 5321 §4.5.3.1.5 says 512
/// with CR LF; servers send longer texts, so some room is given.
pub const MAX_LINE: usize = 4096;
/// Lines of one reply at most (an EHLO reply has a line per extension).
pub const MAX_LINES: usize = 100;
/// Octets of the text kept of one reply (its lines joined); beyond, the text is cut.
const MAX_TEXT: usize = 4096;

/// A server reply: its code and its text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    /// The three-digit code, 200 to 559.
    pub code: u16,
    /// The text, continuation lines joined with a space, sanitised and bounded.
    pub text: String,
    /// The text of each line (for an EHLO reply, one keyword line each).
    pub lines: Vec<String>,
}

impl ServerReply {
    /// A reply of one line (for tests and the machine's own verdicts).
    pub fn new(code: u16, text: &str) -> ServerReply {
        ServerReply {
            code,
            text: text.to_string(),
            lines: vec![text.to_string()],
        }
    }

    /// `code text`, as it goes in an outcome and a log line (the enhanced status
    /// code, when the server gave one, is the start of the text).
    pub fn line(&self) -> String {
        if self.text.is_empty() {
            self.code.to_string()
        } else {
            format!("{} {}", self.code, self.text)
        }
    }

    /// Whether the code is 2yz.
    pub fn positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The outcome this reply gives a recipient: 2yz and 3yz delivered, 4yz a temporary
    /// failure, 5yz a permanent one, each with the reply as the reason.
    pub fn outcome(&self) -> Outcome {
        match self.code {
            200..=399 => Outcome::Ok,
            400..=499 => Outcome::TempFail(self.line()),
            _ => Outcome::PermFail(self.line()),
        }
    }

    /// The outcome of a reply that should have been a failure or a given success: a
    /// failure as itself, anything else a temporary failure (the server said something
    /// that makes no sense here, so nothing is known).
    pub fn failure(&self) -> Outcome {
        match self.code {
            400..=599 => self.outcome(),
            _ => Outcome::TempFail(format!("unexpected reply {}", self.line())),
        }
    }
}

/// Collects the lines of one (possibly multi-line) reply.
#[derive(Debug, Default)]
pub struct ReplyParser {
    /// The code of the reply's first line, once one came.
    code: Option<u16>,
    text: String,
    lines: Vec<String>,
}

/// Whether `b` is a reply code RFC 5321 §4.2 allows: first digit 2 to 5, second 0 to
/// 5, third any digit.
fn valid_code(b: &[u8]) -> bool {
    matches!(b, [b'2'..=b'5', b'0'..=b'5', b'0'..=b'9'])
}

/// The text of a line as it may be kept: UTF-8 (RFC 6531 allows it in replies) with
/// invalid sequences replaced, control characters as spaces, trailing blanks dropped.
fn clean(text: &[u8]) -> String {
    String::from_utf8_lossy(text)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim_end()
        .to_string()
}

/// At most `max` octets of `s`, cut on a character boundary.
fn cut(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

impl ReplyParser {
    /// Feeds one line (CR LF stripped). Returns the reply once its last line came, or
    /// why the server's output cannot be trusted any more (the session must end).
    pub fn feed(&mut self, line: &[u8]) -> Result<Option<ServerReply>, String> {
        let shown = || clean(&line[..line.len().min(80)]);
        if line.len() > MAX_LINE {
            return Err(format!("reply line longer than {MAX_LINE} octets"));
        }
        if line.len() < 3 || !valid_code(&line[..3]) {
            return Err(format!("malformed reply line {:?}", shown()));
        }
        let more = match line.get(3) {
            None | Some(b' ') => false,
            Some(b'-') => true,
            Some(_) => return Err(format!("malformed reply line {:?}", shown())),
        };
        let code = line[..3]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        match self.code {
            Some(c) if c != code => {
                return Err(format!(
                    "reply line with code {code} continues a reply with code {c}"
                ))
            }
            _ => self.code = Some(code),
        }
        if self.lines.len() >= MAX_LINES {
            return Err(format!("reply longer than {MAX_LINES} lines"));
        }
        let text = clean(line.get(4..).unwrap_or_default());
        if self.text.len() < MAX_TEXT {
            if !self.text.is_empty() {
                self.text.push(' ');
            }
            self.text.push_str(&text);
            cut(&mut self.text, MAX_TEXT);
        }
        self.lines.push(text);
        if more {
            return Ok(None);
        }
        self.code = None;
        Ok(Some(ServerReply {
            code,
            text: std::mem::take(&mut self.text),
            lines: std::mem::take(&mut self.lines),
        }))
    }

    /// Whether a reply has started and not ended.
    pub fn in_reply(&self) -> bool {
        self.code.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linebuf::{Line, LineBuf};

    /// Feeds `input` to a line buffer and the parser, cut at `at`; returns the replies
    /// or the first error.
    fn parse_split(input: &[u8], at: usize) -> Result<Vec<ServerReply>, String> {
        let mut buf = LineBuf::new(MAX_LINE * 2);
        let mut p = ReplyParser::default();
        let mut out = Vec::new();
        for piece in [&input[..at], &input[at..]] {
            let space = buf.space();
            space[..piece.len()].copy_from_slice(piece);
            buf.filled(piece.len());
            loop {
                match buf.next_line(MAX_LINE) {
                    Line::Partial => break,
                    Line::TooLong => return Err("too long".into()),
                    Line::Complete { bytes, .. } => {
                        if let Some(r) = p.feed(bytes)? {
                            out.push(r);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// The same result whatever byte the input is cut at.
    fn parse(input: &[u8]) -> Result<Vec<ServerReply>, String> {
        let whole = parse_split(input, input.len());
        for at in 0..input.len() {
            assert_eq!(parse_split(input, at), whole, "cut at {at}");
        }
        whole
    }

    #[test]
    fn multiline_replies_at_every_cut() {
        let r = parse(b"250-mx hello\r\n250-PIPELINING\r\n250 HELP\r\n354 go\r\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].code, 250);
        assert_eq!(r[0].text, "mx hello PIPELINING HELP");
        assert_eq!(r[0].lines, ["mx hello", "PIPELINING", "HELP"]);
        assert_eq!(r[1].line(), "354 go");
        // A bare code is a reply with no text.
        let r = parse(b"250\r\n").unwrap();
        assert_eq!((r[0].code, r[0].line().as_str()), (250, "250"));
    }

    #[test]
    fn malformed_lines_are_refused() {
        for bad in [
            &b"25\r\n"[..],
            b"250xyz\r\n",
            b"2a0 x\r\n",
            b"999 no\r\n",
            b"199 too low\r\n",
            b"600 too high\r\n",
            b"260 second digit\r\n",
            b"\r\n",
            b" 250 indented\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn continuation_with_another_code_is_refused() {
        let e = parse(b"250-first\r\n550 second\r\n").unwrap_err();
        assert!(e.contains("550"), "{e}");
    }

    #[test]
    fn too_many_lines_are_refused() {
        let mut input = b"250-x\r\n".repeat(MAX_LINES - 1);
        input.extend_from_slice(b"250 last\r\n");
        assert_eq!(parse_split(&input, 0).unwrap()[0].lines.len(), MAX_LINES);
        let mut input = b"250-x\r\n".repeat(MAX_LINES);
        input.extend_from_slice(b"250 last\r\n");
        assert!(parse_split(&input, 0).is_err());
    }

    #[test]
    fn long_lines_are_refused_and_long_texts_cut() {
        let mut p = ReplyParser::default();
        let long = format!("250 {}", "x".repeat(MAX_LINE));
        assert!(p.feed(long.as_bytes()).is_err());
        // Many lines of the longest size: the joined text stays bounded.
        let mut p = ReplyParser::default();
        let line = format!("250-{}", "y".repeat(MAX_LINE - 4));
        for _ in 0..10 {
            assert_eq!(p.feed(line.as_bytes()), Ok(None));
        }
        let r = p.feed(b"250 end").unwrap().unwrap();
        assert!(r.text.len() <= MAX_TEXT, "{}", r.text.len());
        assert_eq!(r.lines.len(), 11);
    }

    #[test]
    fn text_is_sanitised() {
        let r = parse(b"550 5.1.1 caf\xc3\xa9 \xff\xfe bad\x1b[31m\x07 x \r\n").unwrap();
        assert_eq!(r[0].text, "5.1.1 caf\u{e9} \u{fffd}\u{fffd} bad [31m  x");
        assert!(r[0].line().chars().all(|c| !c.is_control()));
        // A NUL and a lone CR in a line are spaces.
        let mut p = ReplyParser::default();
        let r = p.feed(b"451 a\0b\rc").unwrap().unwrap();
        assert_eq!(r.text, "a b c");
    }

    #[test]
    fn outcomes_of_codes() {
        assert_eq!(ServerReply::new(250, "ok").outcome(), Outcome::Ok);
        assert_eq!(
            ServerReply::new(451, "4.3.0 later").outcome(),
            Outcome::TempFail("451 4.3.0 later".into())
        );
        assert_eq!(
            ServerReply::new(550, "5.1.1 no").outcome(),
            Outcome::PermFail("550 5.1.1 no".into())
        );
        assert_eq!(
            ServerReply::new(250, "ok").failure(),
            Outcome::TempFail("unexpected reply 250 ok".into())
        );
    }
}
