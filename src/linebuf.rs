//! Bounded input buffer that splits SMTP lines without copying them.
//!
//! A line ends only at CR LF (RFC 5321 §2.3.8). A bare LF or a lone CR is part of the
//! line and is reported, never taken as a line end: this is what keeps
//! `<LF>.<CR><LF>` and its cousins from ending a message early (SMTP smuggling).
//!
//! The buffer never grows. A line longer than the limit is reported once as
//! [`Line::TooLong`]; its remaining bytes are discarded up to the next CR LF, so a
//! client cannot make the daemon hold more than one buffer per connection.

/// What [`LineBuf::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line, CR LF stripped.
    Complete {
        /// The line's bytes, valid until the next call that changes the buffer.
        bytes: &'a [u8],
        /// The line holds a bare LF or a lone CR (it is still one line).
        bare: bool,
    },
    /// No complete line yet: read more.
    Partial,
    /// The line is longer than the limit. The rest of it, up to its CR LF, is skipped
    /// and will not be seen; the next call goes on with the line after it.
    TooLong,
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
}

impl LineBuf {
    /// Creates a buffer that holds at most `capacity` bytes.
    pub fn new(capacity: usize) -> Self {
        LineBuf {
            buf: Box::default(),
            capacity,
            start: 0,
            end: 0,
            scanned: 0,
            skipping: false,
            skip_cr: false,
        }
    }

    /// Bytes received and not yet handed out as lines.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Drops every pending byte (used after STARTTLS-like resets and on close).
    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
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

    /// Returns the next line of at most `max` bytes (CR LF excluded).
    pub fn next_line(&mut self, max: usize) -> Line<'_> {
        if self.skipping && !self.skip_tail() {
            return Line::Partial;
        }
        let mut from = self.scanned.max(self.start);
        loop {
            let Some(i) = memchr::memchr(b'\n', &self.buf[from..self.end]) else {
                self.scanned = self.end;
                return self.partial(max);
            };
            let nl = from + i;
            if nl > self.start && self.buf[nl - 1] == b'\r' {
                let start = self.start;
                self.start = nl + 1;
                self.scanned = self.start;
                let bytes = &self.buf[start..nl - 1];
                if bytes.len() > max {
                    return Line::TooLong;
                }
                let bare = memchr::memchr2(b'\r', b'\n', bytes).is_some();
                return Line::Complete { bytes, bare };
            }
            // A bare LF: part of the line, not its end.
            from = nl + 1;
        }
    }

    /// Whether the bytes after the last line hold the start of another line.
    fn partial(&mut self, max: usize) -> Line<'static> {
        // The line so far, minus a possible CR that a coming LF would turn into CR LF.
        let mut len = self.end - self.start;
        if len > 0 && self.buf[self.end - 1] == b'\r' {
            len -= 1;
        }
        if len > max || self.end - self.start == self.capacity {
            self.skipping = true;
            self.skip_cr = false;
            self.skip_tail();
            return Line::TooLong;
        }
        Line::Partial
    }

    /// Discards bytes up to and including the next CR LF; true once it was found.
    fn skip_tail(&mut self) -> bool {
        let data = &self.buf[self.start..self.end];
        let mut prev_cr = self.skip_cr;
        for (i, &b) in data.iter().enumerate() {
            if b == b'\n' && prev_cr {
                self.start += i + 1;
                self.scanned = self.start;
                self.skipping = false;
                self.skip_cr = false;
                return true;
            }
            prev_cr = b == b'\r';
        }
        self.skip_cr = prev_cr;
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

    fn lines(input: &[u8], cap: usize, max: usize, chunk: usize) -> Vec<String> {
        let mut lb = LineBuf::new(cap);
        let mut out = Vec::new();
        let mut input = input;
        while !input.is_empty() {
            let n = feed(&mut lb, &input[..chunk.max(1).min(input.len())]);
            input = &input[n..];
            loop {
                match lb.next_line(max) {
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
    fn cr_split_from_its_lf_at_the_limit() {
        // 8 bytes then CR at the buffer's end, LF in the next read.
        for chunk in 1..12 {
            assert_eq!(
                lines(b"12345678\r\nab\r\n", 10, 8, chunk),
                ["12345678", "ab"]
            );
        }
    }
}
