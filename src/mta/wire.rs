//! The spooled message as it goes on the wire: LF line ends become CR LF, a leading dot
//! is doubled (RFC 5321 §4.5.2) and, for a next hop that needs it, lines longer than
//! RFC 5321 allows are folded.
//!
//! The spool keeps content lines as the client sent them, however long. SMTP allows
//! 998 octets before the CR LF (RFC 5321 §4.5.3.1.6), so towards an SMTP server a longer
//! line is folded: a header field before the last space or tab that fits (a folding
//! that RFC 5322 §2.2.3 undoes), a body line likewise before its last space or tab,
//! and a line with no white space in its first 998 octets is cut there (a header
//! field's continuation then starts with a space). LMTP delivers locally and gets the
//! lines intact. The encoder takes the message in chunks of any size and holds at
//! most one line's worth of bytes.
//!
//! A BINARYMIME message goes in BDAT chunks instead ([`BinaryEncoder`]).

/// Longest line sent to an SMTP server, without its CR LF (RFC 5321 §4.5.3.1.6).
pub const MAX_LINE: usize = 998;

/// Turns the spooled message into SMTP content, chunk by chunk.
#[derive(Debug)]
pub struct Encoder {
    /// Fold lines longer than this; `None` to keep lines intact.
    fold: Option<usize>,
    /// Bytes of the current line not yet written (only when folding).
    line: Vec<u8>,
    /// The current line holds no byte yet (a dot there is doubled).
    at_start: bool,
    /// The line being written is a continuation made by folding.
    continued: bool,
    /// Still in the header section.
    in_headers: bool,
}

impl Encoder {
    /// An encoder that folds lines over `fold` octets, or keeps them intact (`None`).
    pub fn new(fold: Option<usize>) -> Encoder {
        Encoder {
            fold: fold.map(|f| f.max(2)),
            line: Vec::new(),
            at_start: true,
            continued: false,
            in_headers: true,
        }
    }

    /// Encodes the next chunk of the message (LF line ends) onto `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !chunk.is_empty() {
            let (part, ends) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            chunk = &chunk[part.len() + usize::from(ends)..];
            match self.fold {
                None => {
                    if self.at_start && part.first() == Some(&b'.') {
                        out.push(b'.');
                    }
                    out.extend_from_slice(part);
                    self.at_start &= part.is_empty();
                }
                Some(max) => {
                    self.line.extend_from_slice(part);
                    while self.wire_len() > max {
                        self.fold_once(max, out);
                    }
                }
            }
            if ends {
                self.end_line(out);
            }
        }
    }

    /// Ends the message: a last line without LF gets its CR LF, then the final dot.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_start || !self.line.is_empty() {
            self.end_line(out);
        }
        out.extend_from_slice(b".\r\n");
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        let empty = self.at_start && self.line.is_empty() && !self.continued;
        self.write(self.line.len(), out);
        out.extend_from_slice(b"\r\n");
        if empty {
            self.in_headers = false;
        }
        self.at_start = true;
        self.continued = false;
    }

    /// Octets the pending line takes on the wire: a stuffed dot counts (RFC 5321
    /// §4.5.3.1.6 limits what is sent).
    fn wire_len(&self) -> usize {
        let stuffed = self.at_start && self.line.first() == Some(&b'.');
        self.line.len() + usize::from(stuffed)
    }

    /// Writes the first `n` bytes of the pending line, dot-stuffed.
    fn write(&mut self, n: usize, out: &mut Vec<u8>) {
        if self.at_start && self.line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(&self.line[..n]);
        self.line.drain(..n);
        self.at_start &= n == 0;
    }

    /// Writes one folded line out of a pending line longer than `max`.
    fn fold_once(&mut self, max: usize, out: &mut Vec<u8>) {
        // A stuffed dot takes one of the line's octets.
        let room = if self.at_start && self.line.first() == Some(&b'.') {
            max - 1
        } else {
            max
        };
        // Before the last space or tab that leaves something on this line.
        let cut = self.line[1..=room]
            .iter()
            .rposition(|&b| b == b' ' || b == b'\t')
            .map(|i| i + 1);
        let (n, insert_space) = match cut {
            Some(i) => (i, false),
            // A header continuation must start with white space.
            None => (room, self.in_headers),
        };
        self.write(n, out);
        out.extend_from_slice(b"\r\n");
        self.at_start = true;
        self.continued = true;
        if insert_space {
            self.line.insert(0, b' ');
        }
    }
}

/// Turns a spooled BINARYMIME message into the octets of its BDAT chunks (RFC 3030):
/// the header section's LF line ends become CR LF (the spool keeps it as text), the
/// body is sent as it is stored, which is as it came. No dot-stuffing, no folding:
/// BDAT has neither dots nor line limits.
#[derive(Debug, Default)]
pub struct BinaryEncoder {
    /// The header section is over (its empty line was passed).
    in_body: bool,
    /// The last octet of the header section seen was an LF (or none was seen).
    line_start: bool,
}

impl BinaryEncoder {
    /// An encoder at the start of a message.
    pub fn new() -> BinaryEncoder {
        BinaryEncoder {
            in_body: false,
            line_start: true,
        }
    }

    /// Encodes the next chunk of the spooled message onto `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !self.in_body && !chunk.is_empty() {
            let Some(i) = memchr::memchr(b'\n', chunk) else {
                out.extend_from_slice(chunk);
                self.line_start = false;
                return;
            };
            out.extend_from_slice(&chunk[..i]);
            out.extend_from_slice(b"\r\n");
            self.in_body = self.line_start && i == 0;
            self.line_start = true;
            chunk = &chunk[i + 1..];
        }
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(msg: &[u8], fold: Option<usize>, chunk: usize) -> Vec<u8> {
        let mut e = Encoder::new(fold);
        let mut out = Vec::new();
        for c in msg.chunks(chunk.max(1)) {
            e.push(c, &mut out);
        }
        e.finish(&mut out);
        out
    }

    fn every_chunk(msg: &[u8], fold: Option<usize>, want: &[u8]) {
        for chunk in 1..=msg.len().max(1) {
            assert_eq!(
                encode(msg, fold, chunk).escape_ascii().to_string(),
                want.escape_ascii().to_string(),
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn crlf_and_dot_stuffing() {
        let want = b"a\r\n..b\r\n\r\n..\r\n...\r\n.\r\n";
        every_chunk(b"a\n.b\n\n.\n..\n", None, want);
        every_chunk(b"a\n.b\n\n.\n..\n", Some(10), want);
        every_chunk(b"no end", None, b"no end\r\n.\r\n");
        every_chunk(b"", None, b".\r\n");
    }

    #[test]
    fn long_lines_intact_without_folding() {
        let line = "x".repeat(5000);
        let msg = format!("H: {line}\n\n{line}\n");
        let want = format!("H: {line}\r\n\r\n{line}\r\n.\r\n");
        assert_eq!(encode(msg.as_bytes(), None, 7), want.as_bytes());
    }

    #[test]
    fn header_folded_at_white_space_or_continued_with_one() {
        // At most 10 octets per line.
        every_chunk(
            b"Subject: aa bb cc dd\nX: 0123456789abcdef\n\nbody\n",
            Some(10),
            b"Subject:\r\n aa bb cc\r\n dd\r\nX:\r\n 012345678\r\n 9abcdef\r\n\r\nbody\r\n.\r\n",
        );
    }

    #[test]
    fn body_folded_at_white_space_else_cut() {
        every_chunk(
            b"\nhello big world\n0123456789abcdefghij\n.234567890123\n",
            Some(10),
            b"\r\nhello big\r\n world\r\n0123456789\r\nabcdefghij\r\n..23456789\r\n0123\r\n.\r\n",
        );
    }

    #[test]
    fn the_longest_line_is_kept_and_a_stuffed_dot_counts() {
        let x = "x".repeat(MAX_LINE);
        let msg = format!("\n{x}\n.{}\n", &x[1..]);
        let out = encode(msg.as_bytes(), Some(MAX_LINE), 4096);
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        assert_eq!(lines[1].len(), MAX_LINE + 1, "998 octets and CR: intact");
        // A line of 998 octets starting with a dot is 999 once stuffed: folded.
        assert!(lines.iter().all(|l| l.len() <= MAX_LINE + 1));
        assert_eq!(lines[2].len(), MAX_LINE + 1);
        assert!(lines[2].starts_with(b".."));
        assert_eq!(lines[3], b"x\r");
        // At a small width, every chunking.
        every_chunk(b"\n.234567890\n", Some(10), b"\r\n..23456789\r\n0\r\n.\r\n");
        every_chunk(b"\n0123456789\n", Some(10), b"\r\n0123456789\r\n.\r\n");
    }

    #[test]
    fn every_line_fits_and_the_text_survives() {
        let msg = format!(
            "To: {}\nSubject: {}\n\n{}\n.{}\n",
            "a@b.example, ".repeat(200),
            "word ".repeat(400),
            "z".repeat(3000),
            "y ".repeat(1500)
        );
        let out = encode(msg.as_bytes(), Some(MAX_LINE), 4096);
        let text = out.strip_suffix(b".\r\n").unwrap_or(&out);
        for l in text.split(|&b| b == b'\n') {
            assert!(l.len() <= MAX_LINE + 1, "line of {} octets", l.len());
        }
        // Unfolding header continuations and joining cut body lines gives the text back.
        let header_end = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
        let (h, b) = text.split_at(header_end + 4);
        let unfolded = String::from_utf8_lossy(h).replace("\r\n ", " ");
        assert!(unfolded.contains(&"a@b.example, ".repeat(200)));
        let body = String::from_utf8_lossy(b).replace("\r\n", "");
        assert!(body.contains(&"z".repeat(3000)), "{body}");
    }

    #[test]
    fn binary_header_gets_cr_lf_and_the_body_is_kept() {
        let msg: &[u8] = b"Received: x\nSubject: s\n\nbin\r\n\n.\r\x00\n\r";
        let want: &[u8] = b"Received: x\r\nSubject: s\r\n\r\nbin\r\n\n.\r\x00\n\r";
        for chunk in 1..=msg.len() {
            let mut e = BinaryEncoder::new();
            let mut out = Vec::new();
            for c in msg.chunks(chunk) {
                e.push(c, &mut out);
            }
            assert_eq!(
                out.escape_ascii().to_string(),
                want.escape_ascii().to_string(),
                "chunk {chunk}"
            );
        }
        // No body: the header section alone, its last line as it is.
        let mut out = Vec::new();
        BinaryEncoder::new().push(b"A: b\nC: d", &mut out);
        assert_eq!(out, b"A: b\r\nC: d");
        // An empty first line: everything after it is body.
        let mut out = Vec::new();
        BinaryEncoder::new().push(b"\nx\ny", &mut out);
        assert_eq!(out, b"\r\nx\ny");
    }
}
