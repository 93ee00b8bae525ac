//! The message as milters see it: header fields split off the message lines, the body
//! in CR LF chunks; and the milters' modifications turned into our end-of-message edits.

use crate::milter::{Mod, MAX_CHUNK};
use smtpd_filter::Edit;
use std::collections::HashMap;

/// One piece of the header section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A header field: name, and the raw value after the colon (continuation lines
    /// joined with `\n`, each keeping its leading white space).
    Header(Vec<u8>, Vec<u8>),
    /// The end of the header section.
    EndOfHeaders,
}

/// Splits message lines (no line ends, dot-stuffing undone) into header fields, the
/// end of the headers and body lines.
#[derive(Debug)]
pub struct Splitter {
    in_headers: bool,
    cur: Option<(Vec<u8>, Vec<u8>)>,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter {
            in_headers: true,
            cur: None,
        }
    }
}

/// The name of a header field line (`Name:` or `Name :`), if it starts one.
pub fn header_name(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = line[..colon].trim_ascii_end();
    if name.is_empty() || !name.iter().all(|&b| (33..=126).contains(&b)) {
        return None;
    }
    Some((name, &line[colon + 1..]))
}

impl Splitter {
    /// A splitter at the start of a message.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the header section is still going on.
    pub fn in_headers(&self) -> bool {
        self.in_headers
    }

    fn flush(&mut self, out: &mut Vec<Part>) {
        if let Some((n, v)) = self.cur.take() {
            out.push(Part::Header(n, v));
        }
    }

    /// Takes a line of the header section. Returns false when the line is not part of
    /// it (the header section ended before it: the line is the first body line).
    pub fn header_line(&mut self, line: &[u8], out: &mut Vec<Part>) -> bool {
        if !self.in_headers {
            return false;
        }
        if line.is_empty() {
            self.flush(out);
            out.push(Part::EndOfHeaders);
            self.in_headers = false;
            return true;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, v)) = self.cur.as_mut() {
                v.push(b'\n');
                v.extend_from_slice(line);
                return true;
            }
        } else if let Some((name, value)) = header_name(line) {
            self.flush(out);
            self.cur = Some((name.to_vec(), value.to_vec()));
            return true;
        }
        // Not a header: the body starts here, without an empty line.
        self.flush(out);
        out.push(Part::EndOfHeaders);
        self.in_headers = false;
        false
    }

    /// The message ended: what is left of the header section.
    pub fn finish(&mut self, out: &mut Vec<Part>) {
        if self.in_headers {
            self.flush(out);
            out.push(Part::EndOfHeaders);
            self.in_headers = false;
        }
    }
}

/// The value of a header as sent to a milter: without its leading space unless the
/// milter negotiated HDR_LEADSPC (Sendmail removes one space, not a tab).
pub fn milter_value(raw: &[u8], leadspc: bool) -> &[u8] {
    if leadspc {
        raw
    } else {
        raw.strip_prefix(b" ").unwrap_or(raw)
    }
}

/// Gathers body lines into CR LF chunks of at most [`MAX_CHUNK`] bytes.
#[derive(Debug, Default)]
pub struct Chunker {
    buf: Vec<u8>,
}

impl Chunker {
    /// Appends a body line; full chunks go to `out`.
    pub fn line(&mut self, line: &[u8], out: &mut Vec<Vec<u8>>) {
        self.buf.extend_from_slice(line);
        self.buf.extend_from_slice(b"\r\n");
        while self.buf.len() >= MAX_CHUNK {
            let rest = self.buf.split_off(MAX_CHUNK);
            out.push(std::mem::replace(&mut self.buf, rest));
        }
    }

    /// The last chunk, if any bytes are left.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.buf.is_empty()).then(|| std::mem::take(&mut self.buf))
    }

    /// Drops what is buffered.
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// Whether `name` may be a header field name (RFC 5322 ftext, at most 128 bytes).
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name.iter().all(|&b| (33..=126).contains(&b) && b != b':')
}

/// Turns a header value from a milter into a value our daemon folds correctly: line
/// ends (LF or CR LF) become `\n`, every continuation line starts with white space (a
/// tab is added when it does not), blank continuation lines are dropped, the first
/// line loses its leading white space. `None` for other control characters or a value
/// over 8 KiB.
pub fn fold_value(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len() + 8);
    let mut first = true;
    for line in v.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if first {
            out.extend_from_slice(line.trim_ascii_start());
            first = false;
            continue;
        }
        if line.iter().all(|&b| b == b' ' || b == b'\t') {
            continue;
        }
        out.push(b'\n');
        if line[0] != b' ' && line[0] != b'\t' {
            out.push(b'\t');
        }
        out.extend_from_slice(line);
    }
    if out.len() > 8192
        || out
            .iter()
            .any(|&b| b != b'\n' && b != b'\t' && (b < 32 || b == 127))
    {
        return None;
    }
    Some(out)
}

/// An address from a milter without its angle brackets and surrounding white space.
pub fn strip_addr(a: &[u8]) -> Vec<u8> {
    let a = a.trim_ascii();
    let a = a.strip_prefix(b"<").unwrap_or(a);
    let a = a.strip_suffix(b">").unwrap_or(a);
    a.to_vec()
}

/// Bytes from a milter as the text of an edit (the daemon takes text; invalid UTF-8
/// becomes U+FFFD, as the daemon would make it).
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Splits a replacement body into chunks that fit a frame string: line ends become LF,
/// bare CRs are dropped, chunks end after a LF when they can and never inside a UTF-8
/// sequence. An empty body gives one empty chunk (the body is then emptied).
pub fn body_chunks(body: &[u8], max: usize) -> Vec<Vec<u8>> {
    // CR LF becomes LF (the LF stays) and a bare CR goes: every CR is dropped.
    let clean: Vec<u8> = body.iter().copied().filter(|&b| b != b'\r').collect();
    let mut out = Vec::new();
    let mut rest = clean.as_slice();
    while rest.len() > max {
        let window = &rest[..max];
        let cut = match window.iter().rposition(|&b| b == b'\n') {
            Some(p) => p + 1,
            None => {
                let mut c = max;
                while c > 1 && (rest[c] & 0xc0) == 0x80 {
                    c -= 1;
                }
                c
            }
        };
        out.push(rest[..cut].to_vec());
        rest = &rest[cut..];
    }
    if !rest.is_empty() || out.is_empty() {
        out.push(rest.to_vec());
    }
    out
}

/// Turns one milter's modifications into edits. `counts` holds how many headers of
/// each (lower-case) name the message has, kept up to date: a change of a header
/// that does not exist adds it, as Sendmail does. Invalid headers are dropped, with
/// the reason in `log`.
pub fn edits_of(
    mods: Vec<Mod>,
    counts: &mut HashMap<Vec<u8>, u32>,
    log: &mut Vec<String>,
) -> Vec<Edit> {
    let mut out = Vec::new();
    let mut body: Option<(usize, Vec<u8>)> = None;
    let header = |name: &[u8], value: &[u8], log: &mut Vec<String>| -> Option<Vec<u8>> {
        if !valid_name(name) {
            log.push(format!(
                "invalid header name {:?} dropped",
                name.escape_ascii().to_string()
            ));
            return None;
        }
        match fold_value(value) {
            Some(v) => Some(v),
            None => {
                log.push(format!(
                    "invalid value of header {} dropped",
                    name.escape_ascii()
                ));
                None
            }
        }
    };
    for m in mods {
        match m {
            Mod::AddHeader(n, v) => {
                if let Some(v) = header(&n, &v, log) {
                    *counts.entry(n.to_ascii_lowercase()).or_default() += 1;
                    out.push(Edit::AddHeader(text(&n), text(&v)));
                }
            }
            Mod::InsHeader(i, n, v) => {
                if let Some(v) = header(&n, &v, log) {
                    *counts.entry(n.to_ascii_lowercase()).or_default() += 1;
                    out.push(Edit::InsertHeader(i, text(&n), text(&v)));
                }
            }
            Mod::ChgHeader(i, n, v) => {
                let i = i.max(1);
                let have = counts.get(&n.to_ascii_lowercase()).copied().unwrap_or(0);
                if v.iter().all(|&b| b == b' ' || b == b'\t') {
                    if !valid_name(&n) {
                        log.push(format!("invalid header name {} dropped", n.escape_ascii()));
                    } else if i <= have {
                        counts.insert(n.to_ascii_lowercase(), have - 1);
                        out.push(Edit::ChangeHeader(i, text(&n), String::new()));
                    }
                } else if let Some(v) = header(&n, &v, log) {
                    if i > have {
                        counts.insert(n.to_ascii_lowercase(), have + 1);
                        out.push(Edit::AddHeader(text(&n), text(&v)));
                    } else {
                        out.push(Edit::ChangeHeader(i, text(&n), text(&v)));
                    }
                }
            }
            Mod::ReplBody(b) => match body.as_mut() {
                Some((_, acc)) => acc.extend_from_slice(&b),
                None => body = Some((out.len(), b)),
            },
            Mod::AddRcpt(a, args) => {
                if !args.is_empty() {
                    log.push(format!(
                        "ESMTP arguments {:?} of an added recipient ignored",
                        args.escape_ascii().to_string()
                    ));
                }
                out.push(Edit::AddRcpt(text(&strip_addr(&a))));
            }
            Mod::DelRcpt(a) => out.push(Edit::DelRcpt(text(&strip_addr(&a)))),
            Mod::ChgFrom(a, args) => {
                if !args.is_empty() {
                    log.push(format!(
                        "ESMTP arguments {:?} of the new sender ignored",
                        args.escape_ascii().to_string()
                    ));
                }
                out.push(Edit::ChangeFrom(text(&strip_addr(&a))));
            }
            Mod::Quarantine(r) => {
                let r: Vec<u8> = r.into_iter().filter(|&b| b >= 32 && b != 127).collect();
                out.push(Edit::Quarantine(if r.is_empty() {
                    "quarantined by a milter".to_string()
                } else {
                    text(&r)
                }));
            }
        }
    }
    if let Some((at, b)) = body {
        let chunks: Vec<Edit> = body_chunks(&b, 60000)
            .into_iter()
            .map(Edit::ReplaceBody)
            .collect();
        out.splice(at..at, chunks);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(lines: &[&[u8]]) -> (Vec<Part>, Vec<Vec<u8>>) {
        let mut s = Splitter::new();
        let mut parts = Vec::new();
        let mut body = Vec::new();
        for l in lines {
            if !s.header_line(l, &mut parts) {
                body.push(l.to_vec());
            }
        }
        s.finish(&mut parts);
        (parts, body)
    }

    fn h(n: &str, v: &str) -> Part {
        Part::Header(n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn headers_are_split_and_unfolded() {
        let (parts, body) = split(&[
            b"From: a@example.test",
            b"Subject: a long",
            b"  subject",
            b"\tend",
            b"X-Empty:",
            b"Odd : spacing",
            b"",
            b"body 1",
            b"Not: a header",
            b"",
        ]);
        assert_eq!(
            parts,
            vec![
                h("From", " a@example.test"),
                h("Subject", " a long\n  subject\n\tend"),
                h("X-Empty", ""),
                h("Odd", " spacing"),
                Part::EndOfHeaders
            ]
        );
        assert_eq!(
            body,
            vec![b"body 1".to_vec(), b"Not: a header".to_vec(), vec![]]
        );
    }

    #[test]
    fn header_section_without_empty_line() {
        // No empty line: a non-header line starts the body.
        let (parts, body) = split(&[b"Subject: x", b"just text", b"more"]);
        assert_eq!(parts, vec![h("Subject", " x"), Part::EndOfHeaders]);
        assert_eq!(body, vec![b"just text".to_vec(), b"more".to_vec()]);
        // Only headers.
        let (parts, body) = split(&[b"Subject: x", b" y"]);
        assert_eq!(parts, vec![h("Subject", " x\n y"), Part::EndOfHeaders]);
        assert!(body.is_empty());
        // A first line that is a continuation is body.
        let (parts, body) = split(&[b" indented", b"Subject: x"]);
        assert_eq!(parts, vec![Part::EndOfHeaders]);
        assert_eq!(body.len(), 2);
        // Empty message.
        let (parts, body) = split(&[]);
        assert_eq!(parts, vec![Part::EndOfHeaders]);
        assert!(body.is_empty());
    }

    #[test]
    fn leading_space() {
        assert_eq!(milter_value(b" v", false), b"v");
        assert_eq!(milter_value(b"  v", false), b" v");
        assert_eq!(milter_value(b"\tv", false), b"\tv");
        assert_eq!(milter_value(b" v", true), b" v");
    }

    #[test]
    fn body_chunks_are_crlf_and_bounded() {
        let mut c = Chunker::default();
        let mut out = Vec::new();
        c.line(b"hello", &mut out);
        c.line(b"", &mut out);
        assert!(out.is_empty());
        assert_eq!(c.finish(), Some(b"hello\r\n\r\n".to_vec()));
        assert_eq!(c.finish(), None);
        let long = vec![b'x'; 998];
        for _ in 0..200 {
            c.line(&long, &mut out);
        }
        let last = c.finish().unwrap_or_default();
        assert!(out.iter().all(|ch| ch.len() == MAX_CHUNK));
        assert_eq!(out.len(), 200 * 1000 / MAX_CHUNK);
        assert_eq!(
            out.iter().map(Vec::len).sum::<usize>() + last.len(),
            200 * 1000
        );
    }

    #[test]
    fn folded_values() {
        assert_eq!(
            fold_value(b" v=1;\n\tb=x").as_deref(),
            Some(&b"v=1;\n\tb=x"[..])
        );
        assert_eq!(fold_value(b"a\r\n b").as_deref(), Some(&b"a\n b"[..]));
        assert_eq!(fold_value(b"a\nb").as_deref(), Some(&b"a\n\tb"[..]));
        assert_eq!(fold_value(b"a\n\n \nb\n").as_deref(), Some(&b"a\n\tb"[..]));
        assert_eq!(fold_value(b"a\rb"), None);
        assert_eq!(fold_value(b"a\x1bb"), None);
        assert_eq!(fold_value(&[b'a'; 9000]), None);
        assert_eq!(fold_value(b"").as_deref(), Some(&b""[..]));
        assert!(valid_name(b"X-Test") && !valid_name(b"X Test") && !valid_name(b"a:b"));
        assert!(!valid_name(b""));
    }

    #[test]
    fn replacement_body_chunks() {
        assert_eq!(body_chunks(b"a\r\nb\r\n", 100), vec![b"a\nb\n".to_vec()]);
        assert_eq!(body_chunks(b"", 100), vec![Vec::<u8>::new()]);
        assert_eq!(body_chunks(b"a\rb", 100), vec![b"ab".to_vec()]);
        let c = body_chunks(b"aaaa\nbbbb\ncc", 6);
        assert_eq!(
            c,
            vec![b"aaaa\n".to_vec(), b"bbbb\n".to_vec(), b"cc".to_vec()]
        );
        // A long line is cut, but not inside a UTF-8 sequence.
        let s = "ééééé".as_bytes();
        let c = body_chunks(s, 3);
        assert!(c.iter().all(|x| std::str::from_utf8(x).is_ok()));
        assert_eq!(c.concat(), s);
    }

    #[test]
    fn modifications_become_edits() {
        let mut counts: HashMap<Vec<u8>, u32> = HashMap::new();
        counts.insert(b"subject".to_vec(), 1);
        let mut log = Vec::new();
        let b = |s: &str| s.as_bytes().to_vec();
        let edits = edits_of(
            vec![
                Mod::AddHeader(b("X-A"), b(" 1")),
                Mod::InsHeader(0, b("DKIM-Signature"), b(" v=1;\n\tb=x")),
                Mod::ChgHeader(1, b("Subject"), b("new")),
                Mod::ChgHeader(0, b("X-Missing"), b("added")),
                Mod::ChgHeader(2, b("Subject"), b("")),
                Mod::ReplBody(b("new\r\n")),
                Mod::AddHeader(b("Bad Name"), b("x")),
                Mod::ReplBody(b("body\r\n")),
                Mod::AddRcpt(b("<new@example.test>"), b("NOTIFY=NEVER")),
                Mod::DelRcpt(b("<old@example.test>")),
                Mod::ChgFrom(b(" <s@example.test> "), vec![]),
                Mod::Quarantine(b("why\n")),
                Mod::ChgHeader(1, b("Subject"), b("")),
            ],
            &mut counts,
            &mut log,
        );
        assert_eq!(
            edits,
            vec![
                Edit::AddHeader("X-A".into(), "1".into()),
                Edit::InsertHeader(0, "DKIM-Signature".into(), "v=1;\n\tb=x".into()),
                Edit::ChangeHeader(1, "Subject".into(), "new".into()),
                Edit::AddHeader("X-Missing".into(), "added".into()),
                Edit::ReplaceBody(b("new\nbody\n")),
                Edit::AddRcpt("new@example.test".into()),
                Edit::DelRcpt("old@example.test".into()),
                Edit::ChangeFrom("s@example.test".into()),
                Edit::Quarantine("why".into()),
                Edit::ChangeHeader(1, "Subject".into(), String::new()),
            ]
        );
        assert_eq!(log.len(), 2, "{log:?}");
        assert_eq!(counts.get(&b("subject")[..]), Some(&0));
    }
}
