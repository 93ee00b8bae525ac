//! Canonicalization (RFC 6376 §3.4): header fields one at a time, and the body as a
//! stream of lines hashed as they come, with the `l=` limit of a verifier.

use ring::digest;

/// A canonicalization algorithm, for the header or the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Canon {
    /// `simple`: (almost) nothing changes.
    Simple,
    /// `relaxed`: white space and header name case are normalized.
    Relaxed,
}

impl Canon {
    /// The name of the algorithm in a `c=` tag.
    pub fn as_str(self) -> &'static str {
        match self {
            Canon::Simple => "simple",
            Canon::Relaxed => "relaxed",
        }
    }

    fn parse(s: &str) -> Option<Canon> {
        match s.trim().to_ascii_lowercase().as_str() {
            "simple" => Some(Canon::Simple),
            "relaxed" => Some(Canon::Relaxed),
            _ => None,
        }
    }
}

/// The header and body algorithms of a `c=` value: `header/body`, or `header` alone,
/// whose body algorithm is then `simple` (RFC 6376 §3.5; both `simple` when empty).
pub fn parse_pair(s: &str) -> Option<(Canon, Canon)> {
    if s.trim().is_empty() {
        return Some((Canon::Simple, Canon::Simple));
    }
    match s.split_once('/') {
        Some((h, b)) => Some((Canon::parse(h)?, Canon::parse(b)?)),
        None => Some((Canon::parse(s)?, Canon::Simple)),
    }
}

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Appends the canonical form of one header field to `out`, with its CRLF. `field` is
/// the field as received: its name, the colon and its value, continuation lines
/// joined by CR LF, without the final CR LF.
pub fn header_field(c: Canon, field: &[u8], out: &mut Vec<u8>) {
    match c {
        Canon::Simple => out.extend_from_slice(field),
        Canon::Relaxed => {
            let colon = field.iter().position(|&b| b == b':').unwrap_or(field.len());
            let name = &field[..colon];
            let name_end = name.iter().rposition(|&b| !is_wsp(b)).map_or(0, |i| i + 1);
            out.extend(name[..name_end].iter().map(u8::to_ascii_lowercase));
            out.push(b':');
            // Unfold (drop CR and LF), then every run of white space becomes one space,
            // none at either end.
            let mut space = false;
            let mut started = false;
            for &b in field.get(colon + 1..).unwrap_or_default() {
                match b {
                    b'\r' | b'\n' => {}
                    b' ' | b'\t' => space = true,
                    _ => {
                        if space && started {
                            out.push(b' ');
                        }
                        space = false;
                        started = true;
                        out.push(b);
                    }
                }
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the relaxed form of one body line (no line end): runs of white space
/// become one space, and white space at the end goes.
fn relaxed_line(line: &[u8], out: &mut Vec<u8>) {
    let n = line.len();
    let mut i = 0;
    while i < n {
        let ws = i;
        while i < n && is_wsp(line[i]) {
            i += 1;
        }
        if i == n {
            break;
        }
        if i > ws {
            out.push(b' ');
        }
        let start = i;
        while i < n && !is_wsp(line[i]) {
            i += 1;
        }
        out.extend_from_slice(&line[start..i]);
    }
}

/// Bytes gathered before they are handed to the hash.
const STAGE: usize = 16 * 1024;
const CRLFS: &[u8] = b"\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";

/// The SHA-256 hash of a canonicalized body, fed line by line (RFC 6376 §3.4.3,
/// §3.4.4): empty lines are held back until a line with text follows them, so that
/// those at the end count for nothing; at most `limit` octets are hashed (`l=`).
pub struct BodyHash {
    canon: Canon,
    ctx: digest::Context,
    stage: Vec<u8>,
    /// Empty lines held back.
    blank: u64,
    /// Canonical octets so far, whether hashed or not.
    total: u64,
    limit: Option<u64>,
    /// Canonical octets handed to the hash.
    hashed: u64,
}

impl std::fmt::Debug for BodyHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyHash")
            .field("canon", &self.canon)
            .field("total", &self.total)
            .field("limit", &self.limit)
            .finish()
    }
}

impl BodyHash {
    /// A hash of an empty body so far, with `canon`, hashing at most `limit` octets.
    pub fn new(canon: Canon, limit: Option<u64>) -> BodyHash {
        BodyHash {
            canon,
            ctx: digest::Context::new(&digest::SHA256),
            stage: Vec::with_capacity(STAGE + 1024),
            blank: 0,
            total: 0,
            limit,
            hashed: 0,
        }
    }

    /// Takes one line of the body, without its line end.
    pub fn line(&mut self, line: &[u8]) {
        let blank = match self.canon {
            Canon::Simple => line.is_empty(),
            Canon::Relaxed => line.iter().all(|&b| is_wsp(b)),
        };
        if blank {
            self.blank += 1;
            return;
        }
        // The held-back empty lines go before this line.
        self.flush_blanks();
        let mark = self.stage.len();
        match self.canon {
            Canon::Simple => self.stage.extend_from_slice(line),
            Canon::Relaxed => relaxed_line(line, &mut self.stage),
        }
        self.stage.extend_from_slice(b"\r\n");
        self.total += (self.stage.len() - mark) as u64;
        if self.stage.len() >= STAGE {
            self.drain();
        }
    }

    fn flush_blanks(&mut self) {
        while self.blank > 0 {
            let n = self.blank.min((CRLFS.len() / 2) as u64);
            let bytes = &CRLFS[..2 * n as usize];
            self.stage.extend_from_slice(bytes);
            self.total += bytes.len() as u64;
            self.blank -= n;
            if self.stage.len() >= STAGE {
                self.drain();
            }
        }
    }

    /// Hands the staged octets to the hash, up to the limit.
    fn drain(&mut self) {
        let take = match self.limit {
            Some(l) => (l.saturating_sub(self.hashed)).min(self.stage.len() as u64) as usize,
            None => self.stage.len(),
        };
        self.ctx.update(&self.stage[..take]);
        self.hashed += take as u64;
        self.stage.clear();
    }

    /// The hash, and the length of the whole canonical body (which may exceed what was
    /// hashed when there is a limit).
    pub fn finish(mut self) -> (digest::Digest, u64) {
        // A simple body that is empty is one CRLF (RFC 6376 §3.4.3); a relaxed one
        // stays empty (§3.4.4, erratum 1384).
        if self.canon == Canon::Simple && self.total == 0 {
            self.stage.extend_from_slice(b"\r\n");
            self.total = 2;
        }
        self.drain();
        (self.ctx.finish(), self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(c: Canon, field: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        header_field(c, field, &mut v);
        v
    }

    fn body(c: Canon, lines: &[&[u8]], limit: Option<u64>) -> (Vec<u8>, u64) {
        let mut h = BodyHash::new(c, limit);
        for l in lines {
            h.line(l);
        }
        let (d, n) = h.finish();
        (d.as_ref().to_vec(), n)
    }

    fn sha(data: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, data).as_ref().to_vec()
    }

    /// RFC 6376 §3.4.5: the example message, header and body, both ways.
    #[test]
    fn rfc6376_section_3_4_5_example() {
        let a = b"A: X";
        let b = b"B : Y\t\r\n\tZ  ";
        let mut relaxed = header(Canon::Relaxed, a);
        relaxed.extend(header(Canon::Relaxed, b));
        assert_eq!(relaxed, b"a:X\r\nb:Y Z\r\n");
        let mut simple = header(Canon::Simple, a);
        simple.extend(header(Canon::Simple, b));
        assert_eq!(simple, b"A: X\r\nB : Y\t\r\n\tZ  \r\n");

        let lines: [&[u8]; 4] = [b" C ", b"D \t E", b"", b""];
        assert_eq!(
            body(Canon::Relaxed, &lines, None),
            (sha(b" C\r\nD E\r\n"), 9)
        );
        assert_eq!(
            body(Canon::Simple, &lines, None),
            (sha(b" C \r\nD \t E\r\n"), 12)
        );
    }

    #[test]
    fn empty_bodies() {
        // §3.4.3: simple, an empty body is CRLF; §3.4.4: relaxed, it is empty.
        assert_eq!(body(Canon::Simple, &[], None), (sha(b"\r\n"), 2));
        assert_eq!(body(Canon::Simple, &[b"", b""], None), (sha(b"\r\n"), 2));
        assert_eq!(body(Canon::Relaxed, &[], None), (sha(b""), 0));
        assert_eq!(body(Canon::Relaxed, &[b" ", b"\t"], None), (sha(b""), 0));
        assert_eq!(
            sha(b"\r\n"),
            smtpd::mail::base64::decode(b"frcCV1k9oG9oKj3dpUqdJg1PxRT2RSN/XKdLCPjaYaY=").unwrap()
        );
    }

    #[test]
    fn empty_lines_inside_the_body_count_and_at_the_end_do_not() {
        let lines: [&[u8]; 6] = [b"a", b"", b"", b"b", b"", b""];
        assert_eq!(
            body(Canon::Simple, &lines, None).0,
            sha(b"a\r\n\r\n\r\nb\r\n")
        );
        // Many held-back lines are written in several pieces.
        let mut many: Vec<&[u8]> = vec![b"x"];
        many.extend(std::iter::repeat_n(&b""[..], 5000));
        many.push(b"y");
        let mut want = b"x\r\n".to_vec();
        want.extend(b"\r\n".repeat(5000));
        want.extend(b"y\r\n");
        assert_eq!(
            body(Canon::Relaxed, &many, None),
            (sha(&want), want.len() as u64)
        );
    }

    #[test]
    fn the_limit_cuts_the_hashed_octets_not_the_count() {
        let lines: [&[u8]; 2] = [b"hello  world", b"more"];
        assert_eq!(body(Canon::Relaxed, &lines, Some(5)), (sha(b"hello"), 19));
        assert_eq!(
            body(Canon::Relaxed, &lines, Some(100)),
            (sha(b"hello world\r\nmore\r\n"), 19)
        );
        // A long body staged in several pieces, cut in the middle of one.
        let line = [b'z'; 1000];
        let lines: Vec<&[u8]> = (0..100).map(|_| &line[..]).collect();
        let mut whole = Vec::new();
        for _ in 0..100 {
            whole.extend_from_slice(&line);
            whole.extend_from_slice(b"\r\n");
        }
        assert_eq!(
            body(Canon::Simple, &lines, Some(50_000)),
            (sha(&whole[..50_000]), whole.len() as u64)
        );
        assert_eq!(body(Canon::Simple, &lines, None).0, sha(&whole));
    }

    #[test]
    fn relaxed_header_details() {
        // Leading space of the value, several colons, folded with LF only.
        assert_eq!(
            header(Canon::Relaxed, b"SUBJECT:   a:b \r\n   c"),
            b"subject:a:b c\r\n"
        );
        assert_eq!(header(Canon::Relaxed, b"X-Empty:"), b"x-empty:\r\n");
        assert_eq!(header(Canon::Relaxed, b"X-Sp:  \t "), b"x-sp:\r\n");
    }

    #[test]
    fn canonicalization_pairs() {
        use Canon::*;
        assert_eq!(parse_pair("relaxed/relaxed"), Some((Relaxed, Relaxed)));
        assert_eq!(parse_pair("relaxed"), Some((Relaxed, Simple)));
        assert_eq!(parse_pair("Simple/Relaxed"), Some((Simple, Relaxed)));
        assert_eq!(parse_pair(""), Some((Simple, Simple)));
        assert_eq!(parse_pair("nowsp/simple"), None);
        assert_eq!(parse_pair("relaxed/"), None);
    }
}
