//! The header of a message as its lines come: fields kept as received (continuation
//! lines joined by CR LF), in one buffer, with the picking of fields that `h=` names
//! (RFC 6376 §5.4.2) and the signing domain of the From field.

/// Bytes of header kept at most: past that the message is neither signed nor verified.
pub const MAX_HEADER: usize = 1 << 20;

/// Why header lines cannot be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    /// A line that is neither a field nor the continuation of one.
    Malformed,
    /// More than [`MAX_HEADER`] bytes.
    TooLarge,
}

#[derive(Debug, Clone, Copy)]
struct Field {
    start: usize,
    end: usize,
    name_end: usize,
}

/// The fields of a header, in order.
#[derive(Debug, Default)]
pub struct Header {
    buf: Vec<u8>,
    fields: Vec<Field>,
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

impl Header {
    /// Forgets every field, keeping the memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.fields.clear();
    }

    /// Takes one line of the header (no line end, not empty).
    pub fn push_line(&mut self, line: &[u8]) -> Result<(), HeaderError> {
        if self.buf.len() + line.len() + 2 > MAX_HEADER {
            return Err(HeaderError::TooLarge);
        }
        if line.first().copied().is_some_and(is_wsp) {
            let last = self.fields.last_mut().ok_or(HeaderError::Malformed)?;
            self.buf.extend_from_slice(b"\r\n");
            self.buf.extend_from_slice(line);
            last.end = self.buf.len();
            return Ok(());
        }
        // RFC 5322 §2.2: a name of printable characters but the colon, then a colon
        // (obsolete syntax allows white space before it, §4.5).
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(HeaderError::Malformed)?;
        let name_end = line[..colon]
            .iter()
            .rposition(|&b| !is_wsp(b))
            .map_or(0, |i| i + 1);
        if name_end == 0 || !line[..name_end].iter().all(|&b| (33..=126).contains(&b)) {
            return Err(HeaderError::Malformed);
        }
        let start = self.buf.len();
        self.buf.extend_from_slice(line);
        self.fields.push(Field {
            start,
            end: self.buf.len(),
            name_end: start + name_end,
        });
        Ok(())
    }

    /// The number of fields.
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    /// Whether there is no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Field `i` as received (name, colon, value; folded with CR LF).
    pub fn field(&self, i: usize) -> &[u8] {
        let f = self.fields[i];
        &self.buf[f.start..f.end]
    }

    /// The name of field `i`.
    pub fn name(&self, i: usize) -> &[u8] {
        let f = self.fields[i];
        &self.buf[f.start..f.name_end]
    }

    /// The value of field `i`: what follows the colon.
    pub fn value(&self, i: usize) -> &[u8] {
        let f = self.fields[i];
        let colon = self.buf[f.name_end..f.end]
            .iter()
            .position(|&b| b == b':')
            .map_or(f.end, |c| f.name_end + c + 1);
        &self.buf[colon..f.end]
    }

    /// The indexes of the fields called `name` (without regard to case), in order.
    pub fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = usize> + 'a {
        (0..self.fields.len()).filter(move |&i| self.name(i).eq_ignore_ascii_case(name.as_bytes()))
    }

    /// The fields that the names of an `h=` list sign, in the order of the list: for
    /// each name the last field of that name not yet taken, counting from the bottom;
    /// a name with no field left signs nothing (§5.4.2).
    pub fn select<S: AsRef<str>>(&self, names: &[S]) -> Vec<usize> {
        let mut taken = vec![false; self.fields.len()];
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            let n = n.as_ref().as_bytes();
            let pick = (0..self.fields.len())
                .rev()
                .find(|&i| !taken[i] && self.name(i).eq_ignore_ascii_case(n));
            if let Some(i) = pick {
                taken[i] = true;
                out.push(i);
            }
        }
        out
    }

    /// The domain of the first address of the From field, lowercase, if there is one
    /// From field with an address in a domain.
    pub fn from_domain(&self) -> Option<String> {
        let mut froms = self.named("from");
        let i = froms.next()?;
        if froms.next().is_some() {
            // RFC 5322 §3.6: one From field; a message with two is not signed.
            return None;
        }
        address_domain(self.value(i))
    }
}

/// The domain of the first address of a From value: inside the first `<...>` if there
/// is one, else the first word with an `@`, comments and quoted strings skipped.
pub fn address_domain(value: &[u8]) -> Option<String> {
    let text = strip_comments(value);
    let addr = match text.find('<') {
        Some(open) => {
            let rest = &text[open + 1..];
            &rest[..rest.find('>')?]
        }
        None => text
            .split(|c: char| c == ',' || c.is_whitespace())
            .find(|w| w.contains('@'))?,
    };
    let domain = addr.rsplit_once('@')?.1.trim().trim_end_matches('.');
    let ok = !domain.is_empty()
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    ok.then(|| domain.to_ascii_lowercase())
}

/// The text of a value without its comments and quoted strings (each made one space),
/// unfolded.
fn strip_comments(value: &[u8]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut depth = 0u32;
    let mut quoted = false;
    let mut escaped = false;
    for &b in value {
        let c = char::from(b);
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(' ');
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => {
                depth -= 1;
                out.push(' ');
            }
            '\r' | '\n' => {}
            _ if quoted || depth > 0 => {}
            _ => out.push(if b.is_ascii() { c } else { '?' }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(lines: &[&str]) -> Header {
        let mut h = Header::default();
        for l in lines {
            h.push_line(l.as_bytes()).unwrap();
        }
        h
    }

    #[test]
    fn fields_and_continuations() {
        let h = header(&["From: a@b.example", "Subject: one", "\ttwo", "X-Y : z"]);
        assert_eq!(h.len(), 3);
        assert_eq!(h.field(1), b"Subject: one\r\n\ttwo");
        assert_eq!(h.name(2), b"X-Y");
        assert_eq!(h.value(2), b" z");
        assert_eq!(h.value(1), b" one\r\n\ttwo");
        let mut bad = Header::default();
        assert_eq!(bad.push_line(b" leading"), Err(HeaderError::Malformed));
        assert_eq!(bad.push_line(b"no colon"), Err(HeaderError::Malformed));
        assert_eq!(bad.push_line(b": no name"), Err(HeaderError::Malformed));
        assert_eq!(bad.push_line(b"Bad\x01: x"), Err(HeaderError::Malformed));
        let big = vec![b'a'; MAX_HEADER];
        assert_eq!(bad.push_line(&big), Err(HeaderError::TooLarge));
    }

    #[test]
    fn h_picks_from_the_bottom_and_skips_missing_names() {
        let h = header(&[
            "Received: 1",
            "To: x",
            "Received: 2",
            "From: f@x.example",
            "Received: 3",
        ]);
        // §5.4.2's example: three Received fields, named twice: the two last, bottom up.
        assert_eq!(h.select(&["received", "received"]), vec![4, 2]);
        assert_eq!(h.select(&["from", "from", "TO", "cc"]), vec![3, 1]);
        assert_eq!(h.named("received").collect::<Vec<_>>(), vec![0, 2, 4]);
    }

    #[test]
    fn from_domains() {
        let d = |v: &str| address_domain(v.as_bytes());
        assert_eq!(d(" alice@Example.ORG"), Some("example.org".into()));
        assert_eq!(
            d(" \"Bob <x@evil.example>\" <bob@b.example>"),
            Some("b.example".into())
        );
        assert_eq!(
            d(" (c@c.example) Carol <carol@real.example>"),
            Some("real.example".into())
        );
        assert_eq!(
            d(" a@one.example, b@two.example"),
            Some("one.example".into())
        );
        assert_eq!(d(" <a@x.example.>"), Some("x.example".into()));
        assert_eq!(d(" undisclosed"), None);
        assert_eq!(d(" <a@[192.0.2.1]>"), None);
        assert_eq!(d(" <@>"), None);
        let h = header(&["From: a@one.example", "From: b@two.example"]);
        assert_eq!(h.from_domain(), None);
        let h = header(&["from: A <a@one.example>"]);
        assert_eq!(h.from_domain(), Some("one.example".into()));
    }
}
