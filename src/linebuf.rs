//! Bounded input buffer that splits SMTP lines without copying them.
//!
//! A line ends only at CR LF (RFC 5321 §2.3.8). A bare LF or a lone CR is never taken
//! as the end of a good line: in message content it is part of the line and reported,
//! which is what keeps `<LF>.<CR><LF>` and its cousins from ending a message early
//! (SMTP smuggling). Three readers share the buffer:
//!
//! - [`LineBuf::next_line`]: CR LF ends a line; a bare LF or lone CR is part of it and
//!   reported (replies read by the SMTP client).
//! - [`LineBuf::next_command`]: the same, except that a bare LF also ends the line, as
//!   a bad one, so that a client that ends its commands with LF alone is answered at
//!   once instead of waiting for a CR LF that never comes. What follows a bare LF, up to
//!   the next CR LF, is reported bad as well: a bare LF never turns one line into two
//!   commands.
//! - [`LineBuf::next_text`]: message content. A line longer than the buffer comes out
//!   in pieces, so content lines have no length limit of their own while the memory
//!   stays one buffer per connection.
//! - [`LineBuf::next_chunk`]: the content of a BDAT chunk (RFC 3030), in byte-count
//!   mode: it hands out the same pieces as `next_text` would for the chunks' bytes put
//!   end to end, but never looks past the octets the chunk has left, so the command that
//!   follows a chunk is never taken as content, nor content as a command. A CR at a
//!   chunk's end is held until the next chunk's first octet says whether it ends a line
//!   ([`LineBuf::end_content`] gives what is left when the last chunk is in).
//!   [`LineBuf::skip`] discards a refused chunk's octets unseen.
//!
//! The buffer never grows. A command line longer than the limit is reported once as
//! [`Line::TooLong`]; its remaining bytes are discarded up to its end, so a client
//! cannot make the daemon hold more than one buffer per connection.

/// What [`LineBuf::next_line`] and [`LineBuf::next_command`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line, CR LF stripped.
    Complete {
        /// The line's bytes, valid until the next call that changes the buffer.
        bytes: &'a [u8],
        /// The line holds a bare LF or a lone CR, or (commands) ended at a bare LF or
        /// followed one.
        bare: bool,
    },
    /// No complete line yet: read more.
    Partial,
    /// The line is longer than the limit. The rest of it, up to its end, is skipped
    /// and will not be seen; the next call goes on with the line after it.
    TooLong,
}

/// What [`LineBuf::next_text`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Text<'a> {
    /// Bytes of one content line (the whole line unless it is longer than the buffer).
    Piece {
        /// The bytes, CR LF stripped, valid until the next call that changes the buffer.
        bytes: &'a [u8],
        /// The piece starts its line: dot-stuffing and the final "." apply to it.
        first: bool,
        /// The piece ends its line (its CR LF was consumed).
        last: bool,
        /// The piece holds a bare LF or a lone CR.
        bare: bool,
    },
    /// No line end and room left: read more.
    Partial,
}

/// A fixed-size input buffer with a line splitter. The memory is taken at the first
/// read and can be given back while the buffer is empty ([`LineBuf::release`]), so an
/// idle connection costs no buffer.
#[derive(Debug)]
pub struct LineBuf {
    buf: Box<[u8]>,
    capacity: usize,
    start: usize,
    end: usize,
    /// Bytes before this offset are known to hold no line end.
    scanned: usize,
    /// Discarding the tail of an over-long line.
    skipping: bool,
    /// The skipped bytes ended with a CR whose LF may come in the next read.
    skip_cr: bool,
    /// The line being skipped ends at a bare LF too (a command line).
    skip_lf: bool,
    /// A command line ended at a bare LF: the next one, up to its CR LF, is bad too.
    tainted: bool,
    /// A piece of a content line was handed out; the rest of the line follows (in this
    /// chunk or the next one of a BDAT body).
    in_line: bool,
    /// A BDAT chunk ended with a CR, consumed and not yet handed out: whether it ends a
    /// line depends on the next chunk's first octet.
    chunk_cr: bool,
}

impl LineBuf {
    /// Creates a buffer that holds at most `capacity` bytes (at least 2).
    pub fn new(capacity: usize) -> Self {
        LineBuf {
            buf: Box::default(),
            capacity: capacity.max(2),
            start: 0,
            end: 0,
            scanned: 0,
            skipping: false,
            skip_cr: false,
            skip_lf: false,
            tainted: false,
            in_line: false,
            chunk_cr: false,
        }
    }

    /// Bytes received and not yet handed out as lines.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Drops every pending byte and any line in progress (used after STARTTLS-like
    /// resets and on close).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
        self.skipping = false;
        self.skip_cr = false;
        self.tainted = false;
        self.in_line = false;
        self.chunk_cr = false;
    }

    /// Starts the content of a new message: no line is in progress.
    pub fn begin_content(&mut self) {
        self.in_line = false;
        self.chunk_cr = false;
    }

    /// Gives the memory back when nothing is buffered (an idle connection).
    pub fn release(&mut self) {
        if self.start == self.end && !self.skipping && !self.buf.is_empty() {
            self.buf = Box::default();
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
        }
    }

    /// The free space to read into; call [`LineBuf::filled`] with the count read.
    /// Compacts first when the free tail is smaller than half the buffer.
    pub fn space(&mut self) -> &mut [u8] {
        if self.buf.is_empty() {
            self.buf = vec![0; self.capacity].into_boxed_slice();
        }
        if self.start > 0 && (self.buf.len() - self.end) < self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.scanned -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were read into [`LineBuf::space`].
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len());
        self.end += n;
    }

    /// Returns the next line of at most `max` bytes (CR LF excluded); only CR LF ends
    /// a line.
    pub fn next_line(&mut self, max: usize) -> Line<'_> {
        self.split(max, false)
    }

    /// Returns the next command line of at most `max` bytes (CR LF excluded); a bare LF
    /// ends a bad line (see the module documentation).
    pub fn next_command(&mut self, max: usize) -> Line<'_> {
        self.split(max, true)
    }

    fn split(&mut self, max: usize, lf_ends: bool) -> Line<'_> {
        if self.skipping && !self.skip_tail() {
            return Line::Partial;
        }
        let mut from = self.scanned.max(self.start);
        loop {
            let Some(i) = memchr::memchr(b'\n', &self.buf[from..self.end]) else {
                self.scanned = self.end;
                return self.partial(max, lf_ends);
            };
            let nl = from + i;
            let crlf = nl > self.start && self.buf[nl - 1] == b'\r';
            if crlf || lf_ends {
                let start = self.start;
                self.start = nl + 1;
                self.scanned = self.start;
                let tainted = std::mem::replace(&mut self.tainted, !crlf);
                let bytes = &self.buf[start..if crlf { nl - 1 } else { nl }];
                if bytes.len() > max {
                    return Line::TooLong;
                }
                let bare = !crlf || tainted || memchr::memchr2(b'\r', b'\n', bytes).is_some();
                return Line::Complete { bytes, bare };
            }
            // A bare LF: part of the line, not its end.
            from = nl + 1;
        }
    }

    /// Returns the next piece of message content: a whole line, or, when a line does
    /// not fit in the buffer, as much of it as the buffer holds.
    pub fn next_text(&mut self) -> Text<'_> {
        debug_assert!(!self.skipping, "a command line is being skipped");
        match self.text_end(self.end, false) {
            Some((stop, next, last)) => self.piece(stop, next, last),
            None => Text::Partial,
        }
    }

    /// Returns the next piece of a BDAT chunk's content, of which `left` octets are still
    /// to come (decremented by the octets consumed): as [`LineBuf::next_text`] would
    /// for the chunks put end to end, never looking past the chunk's end. A CR that
    /// ends the chunk is held back (see [`LineBuf::end_content`]); when the next chunk
    /// starts with LF, the pair ends the line.
    pub fn next_chunk(&mut self, left: &mut u64) -> Text<'_> {
        debug_assert!(!self.skipping, "a command line is being skipped");
        let avail = (self.end - self.start).min(usize::try_from(*left).unwrap_or(usize::MAX));
        if avail == 0 {
            return Text::Partial;
        }
        if std::mem::replace(&mut self.chunk_cr, false) {
            // The CR that ended the chunk before: a line end with this LF, else bare.
            let lf = self.buf[self.start] == b'\n';
            if lf {
                self.start += 1;
                self.scanned = self.scanned.max(self.start);
                *left -= 1;
            }
            let first = !std::mem::replace(&mut self.in_line, !lf);
            return Text::Piece {
                bytes: if lf { b"" } else { b"\r" },
                first,
                last: lf,
                bare: !lf,
            };
        }
        let Some((stop, next, last)) = self.text_end(self.start + avail, avail as u64 == *left)
        else {
            return Text::Partial;
        };
        *left -= (next - self.start) as u64;
        self.piece(stop, next, last)
    }

    /// Where the next piece of content in the buffer up to `window` ends: (its end,
    /// where the piece after it starts, whether a CR LF ended it), or `None` to read
    /// more. A piece ends at CR LF, or, when the buffer is full of one line, at the
    /// buffer's end but for a final CR, whose LF may come with the next read. With
    /// `chunk_end`, `window` ends a BDAT chunk: the piece ends there, and a final CR is
    /// held until the next chunk's first octet (`chunk_cr`).
    fn text_end(&mut self, window: usize, chunk_end: bool) -> Option<(usize, usize, bool)> {
        let mut from = self.scanned.clamp(self.start, window);
        loop {
            match memchr::memchr(b'\n', &self.buf[from..window]) {
                Some(i) if from + i > self.start && self.buf[from + i - 1] == b'\r' => {
                    return Some((from + i - 1, from + i + 1, true));
                }
                // A bare LF: part of the line, not its end.
                Some(i) => from += i + 1,
                None if chunk_end => {
                    self.chunk_cr = self.buf[window - 1] == b'\r';
                    return Some((window - usize::from(self.chunk_cr), window, false));
                }
                None => {
                    self.scanned = window;
                    if self.end - self.start < self.capacity {
                        return None;
                    }
                    let cr = self.buf[self.end - 1] == b'\r';
                    let stop = self.end - usize::from(cr);
                    return Some((stop, stop, false));
                }
            }
        }
    }

    /// Hands out the piece `start..stop` and moves past it to `next`.
    fn piece(&mut self, stop: usize, next: usize, last: bool) -> Text<'_> {
        let start = self.start;
        self.start = next;
        self.scanned = next;
        // An empty piece before a held CR starts nothing: the line's first octets (or
        // its end, when an LF follows) still say `first`.
        let first = !self.in_line;
        self.in_line = !last && (self.in_line || stop > start);
        let bytes = &self.buf[start..stop];
        let bare = memchr::memchr2(b'\r', b'\n', bytes).is_some();
        Text::Piece {
            bytes,
            first,
            last,
            bare,
        }
    }

    /// Ends the content of a chunked body (its last chunk is in): the piece that closes
    /// it, if any. A CR held back from the last chunk comes out as a bare one; a line
    /// without its CR LF is closed by an empty piece. Either says `last`: the caller
    /// knows that no CR LF was there.
    pub fn end_content(&mut self) -> Option<Text<'static>> {
        let cr = std::mem::replace(&mut self.chunk_cr, false);
        let open = std::mem::replace(&mut self.in_line, false);
        match (cr, open) {
            (true, _) => Some(Text::Piece {
                bytes: b"\r",
                first: !open,
                last: true,
                bare: true,
            }),
            (false, true) => Some(Text::Piece {
                bytes: b"",
                first: false,
                last: true,
                bare: false,
            }),
            (false, false) => None,
        }
    }

    /// Discards up to `left` buffered octets (a refused BDAT chunk's), unseen;
    /// decrements `left` by the count. False when nothing was buffered.
    pub fn skip(&mut self, left: &mut u64) -> bool {
        debug_assert!(!self.skipping, "a command line is being skipped");
        let n = (self.end - self.start).min(usize::try_from(*left).unwrap_or(usize::MAX));
        self.start += n;
        self.scanned = self.scanned.max(self.start);
        *left -= n as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            self.scanned = 0;
        }
        n > 0
    }

    /// Whether the bytes after the last line hold the start of another line.
    fn partial(&mut self, max: usize, lf_ends: bool) -> Line<'static> {
        // The line so far, minus a possible CR that a coming LF would turn into CR LF.
        let mut len = self.end - self.start;
        if len > 0 && self.buf[self.end - 1] == b'\r' {
            len -= 1;
        }
        if len > max || self.end - self.start == self.capacity {
            self.skipping = true;
            self.skip_cr = false;
            self.skip_lf = lf_ends;
            self.skip_tail();
            return Line::TooLong;
        }
        Line::Partial
    }

    /// Discards bytes up to and including the end of the line being skipped; true once
    /// it was found.
    fn skip_tail(&mut self) -> bool {
        let data = &self.buf[self.start..self.end];
        for i in memchr::memchr_iter(b'\n', data) {
            let prev_cr = if i == 0 {
                self.skip_cr
            } else {
                data[i - 1] == b'\r'
            };
            if prev_cr || self.skip_lf {
                self.start += i + 1;
                self.scanned = self.start;
                self.skipping = false;
                self.skip_cr = false;
                if !prev_cr {
                    self.tainted = true;
                }
                return true;
            }
        }
        if let Some(&last) = data.last() {
            self.skip_cr = last == b'\r';
        }
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Copies as much of `data` as fits; returns the count.
    fn feed(lb: &mut LineBuf, data: &[u8]) -> usize {
        let space = lb.space();
        let n = space.len().min(data.len());
        space[..n].copy_from_slice(&data[..n]);
        lb.filled(n);
        n
    }

    /// Lines as `next_line` (or, with `commands`, `next_command`) splits them, fed in
    /// reads of `chunk` bytes ("!" marks a bad line).
    fn split(input: &[u8], cap: usize, max: usize, chunk: usize, commands: bool) -> Vec<String> {
        let mut lb = LineBuf::new(cap);
        let mut out = Vec::new();
        let mut input = input;
        while !input.is_empty() {
            let n = feed(&mut lb, &input[..chunk.max(1).min(input.len())]);
            input = &input[n..];
            loop {
                let line = match commands {
                    true => lb.next_command(max),
                    false => lb.next_line(max),
                };
                match line {
                    Line::Complete { bytes, bare } => out.push(format!(
                        "{}{}",
                        if bare { "!" } else { "" },
                        String::from_utf8_lossy(bytes)
                    )),
                    Line::TooLong => out.push("<long>".into()),
                    Line::Partial => break,
                }
            }
        }
        out
    }

    fn lines(input: &[u8], cap: usize, max: usize, chunk: usize) -> Vec<String> {
        split(input, cap, max, chunk, false)
    }

    fn commands(input: &[u8], cap: usize, max: usize, chunk: usize) -> Vec<String> {
        split(input, cap, max, chunk, true)
    }

    #[test]
    fn splits_at_crlf_only_for_every_split_offset() {
        let input = b"EHLO a\r\nMAIL x\ny\r\n.\r\r\nlast\r\n";
        for chunk in 1..input.len() {
            assert_eq!(
                lines(input, 64, 32, chunk),
                ["EHLO a", "!MAIL x\ny", "!.\r", "last"],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn smuggling_sequences_are_not_line_ends() {
        for seq in [
            &b"a\n.\nb\r\n"[..],
            b"a\r.\rb\r\n",
            b"a\r.\nb\r\n",
            b"a\n.\r\r\n",
        ] {
            let got = lines(seq, 64, 32, 64);
            assert_eq!(got.len(), 1, "{seq:?}");
            assert!(got[0].starts_with('!'), "{seq:?}");
        }
        // <LF>.<CR><LF>: the CR LF ends a line that holds a bare LF, not a "." line.
        assert_eq!(lines(b"x\n.\r\n", 64, 32, 64), ["!x\n."]);
    }

    #[test]
    fn too_long_line_is_skipped_for_every_split_offset() {
        let input = b"0123456789ABCDEF\r\nok\r\n";
        for chunk in 1..input.len() {
            assert_eq!(
                lines(input, 12, 8, chunk),
                ["<long>", "ok"],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn line_of_exactly_max_is_accepted() {
        assert_eq!(
            lines(b"12345678\r\n123456789\r\n", 32, 8, 32),
            ["12345678", "<long>"]
        );
    }

    #[test]
    fn a_bare_lf_ends_a_bad_command_and_taints_the_next() {
        let input = b"EHLO a\r\nMAIL x\nRCPT y\r\nNOOP\r\nQUIT\n";
        for chunk in 1..input.len() {
            assert_eq!(
                commands(input, 64, 32, chunk),
                ["EHLO a", "!MAIL x", "!RCPT y", "NOOP", "!QUIT"],
                "chunk {chunk}"
            );
        }
        // A lone CR is still part of the line.
        assert_eq!(commands(b"NOOP a\rb\r\n", 64, 32, 64), ["!NOOP a\rb"]);
        // A too-long command ended by a bare LF: skipped to it, the next line is bad.
        for chunk in 1..30 {
            assert_eq!(
                commands(b"0123456789ABCDEF\nx\r\nok\r\n", 12, 8, chunk),
                ["<long>", "!x", "ok"],
                "chunk {chunk}"
            );
        }
    }

    /// Content as `next_text` hands it out: whole lines, pieces joined, with the
    /// first/last flags checked and "!" for a line with a bare CR or LF.
    fn text(input: &[u8], cap: usize, chunk: usize) -> (Vec<String>, usize) {
        let mut lb = LineBuf::new(cap);
        let mut out = Vec::new();
        let mut line = Vec::new();
        let mut bad = false;
        let mut pieces = 0;
        for piece in input.chunks(chunk.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                let n = feed(&mut lb, rest);
                rest = &rest[n..];
                while let Text::Piece {
                    bytes,
                    first,
                    last,
                    bare,
                } = lb.next_text()
                {
                    assert_eq!(first, line.is_empty() && !bad && pieces == 0);
                    assert!(bytes.len() <= cap);
                    line.extend_from_slice(bytes);
                    bad |= bare;
                    pieces += 1;
                    if last {
                        out.push(format!(
                            "{}{}",
                            if bad { "!" } else { "" },
                            String::from_utf8_lossy(&line)
                        ));
                        line.clear();
                        bad = false;
                        pieces = 0;
                    }
                }
            }
        }
        assert!(line.is_empty(), "unfinished line");
        (out, lb.pending())
    }

    #[test]
    fn content_lines_longer_than_the_buffer_come_in_pieces() {
        let long = "x".repeat(37) + "\r" + &"y".repeat(20);
        let input = format!("short\r\n{long}\r\n.\r\n");
        for chunk in 1..input.len() {
            let (got, left) = text(input.as_bytes(), 16, chunk);
            assert_eq!(got, ["short", &format!("!{long}"), "."], "chunk {chunk}");
            assert_eq!(left, 0);
        }
        // A CR LF split across the buffer's end is still one line end.
        for chunk in 1..40 {
            let (got, _) = text(b"0123456789abcde\r\nnext\r\n", 16, chunk);
            assert_eq!(got, ["0123456789abcde", "next"], "chunk {chunk}");
        }
        // Smuggling sequences stay inside their line.
        let (got, _) = text(b"a\n.\nb\r\nx\n.\r\n", 16, 64);
        assert_eq!(got, ["!a\n.\nb", "!x\n."]);
    }

    #[test]
    fn cr_split_from_its_lf_at_the_limit() {
        // 8 bytes then CR at the buffer's end, LF in the next read.
        for chunk in 1..12 {
            assert_eq!(
                lines(b"12345678\r\nab\r\n", 10, 8, chunk),
                ["12345678", "ab"]
            );
        }
    }

    /// A chunked body as the session sees it: each chunk's octets sent after a
    /// `BDAT n` command line read with `next_command`, the stream fed in reads of
    /// `read` octets; lines joined from their pieces ("!" for bare), the last one
    /// closed by `end_content` ("~" when it had no CR LF).
    fn chunked(payloads: &[&[u8]], cap: usize, read: usize) -> Vec<String> {
        let mut wire = Vec::new();
        for p in payloads {
            wire.extend_from_slice(format!("BDAT {}\r\n", p.len()).as_bytes());
            wire.extend_from_slice(p);
        }
        wire.extend_from_slice(b"QUIT\r\n");
        let mut lb = LineBuf::new(cap);
        lb.begin_content();
        let (mut out, mut line, mut bad) = (Vec::new(), Vec::new(), false);
        let mut left: Option<u64> = None;
        let mut commands = Vec::new();
        let mut push = |line: &mut Vec<u8>, bad: &mut bool, mark: &str| {
            out.push(format!(
                "{}{mark}{}",
                if *bad { "!" } else { "" },
                String::from_utf8_lossy(line)
            ));
            line.clear();
            *bad = false;
        };
        for piece in wire.chunks(read.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() {
                let n = feed(&mut lb, rest);
                rest = &rest[n..];
                loop {
                    match left.as_mut() {
                        Some(l) if *l > 0 => match lb.next_chunk(l) {
                            Text::Partial => break,
                            Text::Piece {
                                bytes, last, bare, ..
                            } => {
                                line.extend_from_slice(bytes);
                                bad |= bare;
                                if last {
                                    push(&mut line, &mut bad, "");
                                }
                            }
                        },
                        _ => {
                            left = None;
                            match lb.next_command(64) {
                                Line::Complete { bytes, .. } => {
                                    let c = String::from_utf8_lossy(bytes).into_owned();
                                    left = c.strip_prefix("BDAT ").and_then(|n| n.parse().ok());
                                    commands.push(c);
                                }
                                Line::TooLong => commands.push("<long>".into()),
                                Line::Partial => break,
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(commands.len(), payloads.len() + 1, "{commands:?}");
        assert_eq!(commands.last().map(String::as_str), Some("QUIT"));
        if let Some(Text::Piece { bytes, bare, .. }) = lb.end_content() {
            line.extend_from_slice(bytes);
            bad |= bare;
            push(&mut line, &mut bad, "~");
        }
        assert_eq!(lb.pending(), 0);
        out
    }

    #[test]
    fn chunks_put_end_to_end_split_as_one_stream() {
        let body: &[u8] =
            b"Subject: x\r\n\r\nline one\r\n.\r\n..\r\na\rb\nc\r\n\xc3\xa9t\xc3\xa9\r\nend";
        let want = [
            "Subject: x",
            "",
            "line one",
            ".",
            "..",
            "!a\rb\nc",
            "\u{e9}t\u{e9}",
            "~end",
        ];
        // Every cut into two or three chunks (inside CR LF, inside a UTF-8 character, at
        // a lone dot), every read size, buffers small and large.
        for a in 0..=body.len() {
            for b in a..=body.len() {
                if b != a && b != body.len() && (a + b) % 3 != 0 {
                    continue;
                }
                let parts = [&body[..a], &body[a..b], &body[b..]];
                // Lines longer than a small buffer come in pieces, joined here.
                for (cap, read) in [(64, 1000), (64, 1), (16, 7), (12, 3)] {
                    let got = chunked(&parts, cap, read);
                    assert_eq!(got, want, "cut {a} {b} cap {cap} read {read}");
                }
            }
        }
    }

    #[test]
    fn a_cr_at_a_chunk_end_waits_for_the_next_chunk() {
        // CR | LF: a line end.
        assert_eq!(chunked(&[b"a\r", b"\nb\r\n"], 64, 100), ["a", "b"]);
        // CR | not LF: a bare CR inside the line.
        assert_eq!(chunked(&[b"a\r", b"b\r\n"], 64, 100), ["!a\rb"]);
        // CR | CR LF: a bare CR, then the line end.
        assert_eq!(chunked(&[b"a\r", b"\r\n"], 64, 100), ["!a\r"]);
        // CR at the very end: bare, and the body has no final CR LF.
        assert_eq!(chunked(&[b"a\r\n", b"b\r"], 64, 100), ["a", "!~b\r"]);
        // A chunk that is only a CR, then only an LF.
        assert_eq!(chunked(&[b"a", b"\r", b"\n", b""], 64, 1), ["a"]);
        // Empty chunks change nothing; an empty body has no line.
        assert_eq!(chunked(&[b"", b"x\r\n", b""], 64, 100), ["x"]);
        assert!(chunked(&[b""], 64, 100).is_empty());
    }

    #[test]
    fn chunk_octets_that_look_like_commands_stay_content() {
        let smuggled: &[u8] = b"x\r\n.\r\nMAIL FROM:<a@b>\r\nBDAT 3\r\nRCPT TO:<c@d>\r\n";
        assert_eq!(
            chunked(&[smuggled, b"\n.\n"], 64, 5),
            [
                "x",
                ".",
                "MAIL FROM:<a@b>",
                "BDAT 3",
                "RCPT TO:<c@d>",
                "!~\n.\n"
            ]
        );
    }

    #[test]
    fn skip_discards_only_the_chunk() {
        let mut lb = LineBuf::new(16);
        feed(&mut lb, b"0123456789");
        let mut left = 12;
        assert!(lb.skip(&mut left));
        assert_eq!(left, 2);
        assert!(!lb.skip(&mut left), "nothing buffered");
        feed(&mut lb, b"abNOOP\r\n");
        assert!(lb.skip(&mut left));
        assert_eq!(left, 0);
        assert!(!lb.skip(&mut left), "the chunk is over");
        assert_eq!(
            lb.next_command(64),
            Line::Complete {
                bytes: b"NOOP",
                bare: false
            }
        );
    }
}
