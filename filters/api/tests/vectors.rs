//! Replays the golden vectors of `tests/vectors/*.hex` against the codec.
//!
//! The format of the files is described in `tests/vectors/README`. For every valid
//! vector the frame built from its description must encode to exactly its bytes, and its
//! bytes must decode to exactly that frame (and encode back to the same bytes); invalid
//! vectors must fail to decode with the error they name, and incomplete ones must ask for
//! more bytes. The examples of smtpd-filters(7) are checked against
//! `worked-example.hex` and `tls-auth-example.hex` when the manual page is there (in
//! the source tree).
//!
//! Every failure is reported at once, with the bytes the codec expected, so a new vector
//! can be written as a description alone and completed from the test's output.

use smtpd_filter::codec::{decode, encode, kind, kind_of, Decoder, Frame, WireError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Every frame kind, by the name the vector files use.
const KINDS: &[(&str, u8)] = &[
    ("REGISTER", kind::REGISTER),
    ("READY", kind::READY),
    ("REFUSED", kind::REFUSED),
    ("CONNECT", kind::CONNECT),
    ("HELO", kind::HELO),
    ("EHLO", kind::EHLO),
    ("STARTTLS", kind::STARTTLS),
    ("AUTH", kind::AUTH),
    ("MAIL", kind::MAIL),
    ("RCPT", kind::RCPT),
    ("DATA", kind::DATA),
    ("DATA_LINES", kind::DATA_LINES),
    ("DATA_END", kind::DATA_END),
    ("EOM", kind::EOM),
    ("COMMIT", kind::COMMIT),
    ("ROLLBACK", kind::ROLLBACK),
    ("DISCONNECT", kind::DISCONNECT),
    ("PROTOCOL", kind::PROTOCOL),
    ("TLS", kind::TLS),
    ("AUTH_RESULT", kind::AUTH_RESULT),
    ("PROCEED", kind::PROCEED),
    ("REJECT", kind::REJECT),
    ("TEMPFAIL", kind::TEMPFAIL),
    ("DISCONNECT_ANSWER", kind::DISCONNECT_ANSWER),
    ("JUNK", kind::JUNK),
    ("REWRITE", kind::REWRITE),
    ("ADD_HEADER", kind::ADD_HEADER),
    ("INSERT_HEADER", kind::INSERT_HEADER),
    ("CHANGE_HEADER", kind::CHANGE_HEADER),
    ("REPLACE_BODY", kind::REPLACE_BODY),
    ("ADD_RCPT", kind::ADD_RCPT),
    ("DEL_RCPT", kind::DEL_RCPT),
    ("CHANGE_FROM", kind::CHANGE_FROM),
    ("QUARANTINE", kind::QUARANTINE),
    ("DISCARD", kind::DISCARD),
    ("LOG", kind::LOG),
];

/// A field value in a description.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Val {
    Int(u64),
    Str(Vec<u8>),
    List(Vec<Vec<u8>>),
}

/// What a vector's description says about its bytes.
#[derive(Debug)]
enum Expect {
    /// One whole frame.
    Frame {
        kind: String,
        session: u64,
        fields: Vec<(String, Val)>,
    },
    /// Not a frame: decoding fails with this error.
    Invalid(WireError),
    /// Not a whole frame yet.
    Incomplete,
}

#[derive(Debug)]
struct Vector {
    /// `file:line` of the description.
    at: String,
    expect: Expect,
    hex: String,
}

impl Vector {
    fn bytes(&self) -> Result<Vec<u8>, String> {
        if !self.hex.len().is_multiple_of(2) {
            return Err(format!("{}: odd number of hex digits", self.at));
        }
        (0..self.hex.len())
            .step_by(2)
            .map(|i| {
                u8::from_str_radix(&self.hex[i..i + 2], 16)
                    .map_err(|_| format!("{}: bad hex {:?}", self.at, &self.hex[i..i + 2]))
            })
            .collect()
    }
}

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors")
}

/// The `.hex` files, sorted.
fn hex_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(vectors_dir())
        .expect("tests/vectors")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "hex"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .hex file in {:?}", vectors_dir());
    files
}

/// Reads the description after its first word: tokens `key=value` (or, for a frame,
/// the kind name and `session N` first).
struct Desc<'s> {
    s: &'s [u8],
    pos: usize,
}

impl<'s> Desc<'s> {
    fn skip_ws(&mut self) {
        while self.pos < self.s.len() && self.s[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }
    fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos >= self.s.len()
    }
    fn word(&mut self) -> Result<String, String> {
        self.skip_ws();
        let start = self.pos;
        while self.pos < self.s.len()
            && !self.s[self.pos].is_ascii_whitespace()
            && self.s[self.pos] != b'='
        {
            self.pos += 1;
        }
        if start == self.pos {
            return Err("a word was expected".into());
        }
        Ok(String::from_utf8_lossy(&self.s[start..self.pos]).into_owned())
    }
    fn int(&mut self) -> Result<u64, String> {
        let w = self.word()?;
        let r = match w.strip_prefix("0x") {
            Some(h) => u64::from_str_radix(h, 16),
            None => w.parse(),
        };
        r.map_err(|_| format!("bad number {w:?}"))
    }
    fn string(&mut self) -> Result<Vec<u8>, String> {
        self.skip_ws();
        if self.s.get(self.pos) != Some(&b'"') {
            return Err("a quoted string was expected".into());
        }
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            let Some(&c) = self.s.get(self.pos) else {
                return Err("unterminated string".into());
            };
            self.pos += 1;
            match c {
                b'"' => return Ok(out),
                b'\\' => {
                    let Some(&e) = self.s.get(self.pos) else {
                        return Err("unterminated escape".into());
                    };
                    self.pos += 1;
                    match e {
                        b'\\' => out.push(b'\\'),
                        b'"' => out.push(b'"'),
                        b'r' => out.push(b'\r'),
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'0' => out.push(0),
                        b'x' => {
                            let h = self
                                .s
                                .get(self.pos..self.pos + 2)
                                .and_then(|h| std::str::from_utf8(h).ok())
                                .and_then(|h| u8::from_str_radix(h, 16).ok())
                                .ok_or("bad \\x escape")?;
                            self.pos += 2;
                            out.push(h);
                        }
                        other => return Err(format!("unknown escape \\{}", other as char)),
                    }
                }
                c => out.push(c),
            }
        }
    }
    fn value(&mut self) -> Result<Val, String> {
        self.skip_ws();
        match self.s.get(self.pos) {
            Some(b'"') => Ok(Val::Str(self.string()?)),
            Some(b'[') => {
                self.pos += 1;
                let mut v = Vec::new();
                loop {
                    self.skip_ws();
                    if self.s.get(self.pos) == Some(&b']') {
                        self.pos += 1;
                        return Ok(Val::List(v));
                    }
                    if !v.is_empty() {
                        if self.s.get(self.pos) != Some(&b',') {
                            return Err("',' or ']' expected in a list".into());
                        }
                        self.pos += 1;
                    }
                    v.push(self.string()?);
                }
            }
            _ => Ok(Val::Int(self.int()?)),
        }
    }
    fn fields(&mut self) -> Result<Vec<(String, Val)>, String> {
        let mut out: Vec<(String, Val)> = Vec::new();
        while !self.at_end() {
            let key = self.word()?;
            if self.s.get(self.pos) != Some(&b'=') {
                return Err(format!("'=' expected after {key:?}"));
            }
            self.pos += 1;
            if out.iter().any(|(k, _)| *k == key) {
                return Err(format!("field {key:?} given twice"));
            }
            let v = self.value()?;
            out.push((key, v));
        }
        Ok(out)
    }
}

fn parse_expect(line: &str) -> Result<Expect, String> {
    let mut d = Desc {
        s: line.as_bytes(),
        pos: 0,
    };
    match d.word()?.as_str() {
        "kind" => {
            let kind = d.word()?;
            if d.word()? != "session" {
                return Err("'session' expected after the kind".into());
            }
            let session = d.int()?;
            let fields = d.fields()?;
            Ok(Expect::Frame {
                kind,
                session,
                fields,
            })
        }
        "invalid" => {
            let what = d.word()?;
            let fields = d.fields()?;
            let one = |name: &str| -> Result<u64, String> {
                match fields.as_slice() {
                    [(k, Val::Int(n))] if k == name => Ok(*n),
                    _ => Err(format!("invalid {what} takes exactly {name}=N")),
                }
            };
            let byte = |name: &str| -> Result<u8, String> {
                u8::try_from(one(name)?).map_err(|_| format!("{name} is one byte"))
            };
            Ok(Expect::Invalid(match what.as_str() {
                "bad-length" => WireError::BadLength(
                    u32::try_from(one("length")?).map_err(|_| "length is a u32")?,
                ),
                "unknown-kind" => WireError::UnknownKind(byte("kind")?),
                "bad-payload" => WireError::BadPayload(byte("kind")?),
                other => return Err(format!("unknown error {other:?}")),
            }))
        }
        "incomplete" => {
            if !d.at_end() {
                return Err("nothing may follow 'incomplete'".into());
            }
            Ok(Expect::Incomplete)
        }
        other => Err(format!("unknown vector type {other:?}")),
    }
}

/// Reads one `.hex` file.
fn read_vectors(path: &Path) -> Result<Vec<Vector>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path:?}: {e}"))?;
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut out: Vec<Vector> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = format!("{name}:{}", i + 1);
        let starts = ["# kind ", "# invalid ", "# incomplete"];
        if starts.iter().any(|s| line.starts_with(s)) {
            let expect = parse_expect(&line[2..]).map_err(|e| format!("{at}: {e}"))?;
            out.push(Vector {
                at,
                expect,
                hex: String::new(),
            });
        } else if line.starts_with('#') || line.trim().is_empty() {
            continue;
        } else {
            let v = out
                .last_mut()
                .ok_or_else(|| format!("{at}: hex before any description"))?;
            for c in line.chars().filter(|c| !c.is_whitespace()) {
                if !c.is_ascii_hexdigit() {
                    return Err(format!("{at}: {c:?} is not a hex digit"));
                }
                v.hex.push(c.to_ascii_lowercase());
            }
        }
    }
    Ok(out)
}

/// Takes the fields of a description one by one, by name and type.
struct Fields<'a> {
    list: &'a [(String, Val)],
    used: Vec<bool>,
}

impl<'a> Fields<'a> {
    fn get(&mut self, name: &str) -> Result<&'a Val, String> {
        let i = self
            .list
            .iter()
            .position(|(k, _)| k == name)
            .ok_or_else(|| format!("field {name:?} missing"))?;
        self.used[i] = true;
        Ok(&self.list[i].1)
    }
    fn str(&mut self, name: &str) -> Result<&'a [u8], String> {
        match self.get(name)? {
            Val::Str(s) => Ok(s),
            _ => Err(format!("field {name:?} is a string")),
        }
    }
    fn int<T: TryFrom<u64>>(&mut self, name: &str) -> Result<T, String> {
        match self.get(name)? {
            Val::Int(n) => T::try_from(*n).map_err(|_| format!("field {name:?} out of range")),
            _ => Err(format!("field {name:?} is a number")),
        }
    }
    fn lines(&mut self, name: &str) -> Result<Vec<&'a [u8]>, String> {
        match self.get(name)? {
            Val::List(l) => Ok(l.iter().map(|s| s.as_slice()).collect()),
            _ => Err(format!("field {name:?} is a list of strings")),
        }
    }
    fn done(&self) -> Result<(), String> {
        match self.used.iter().position(|u| !u) {
            Some(i) => Err(format!("unknown field {:?}", self.list[i].0)),
            None => Ok(()),
        }
    }
}

/// The frame a description stands for.
fn frame_of<'a>(kind: &str, fields: &'a [(String, Val)]) -> Result<Frame<'a>, String> {
    let mut f = Fields {
        list: fields,
        used: vec![false; fields.len()],
    };
    let frame = match kind {
        "REGISTER" => Frame::Register {
            version: f.int("version")?,
            hooks: f.int("hooks")?,
            reports: f.int("reports")?,
            name: f.str("name")?,
        },
        "READY" => Frame::Ready {
            version: f.int("version")?,
            max_frame: f.int("max_frame")?,
            timeout_ms: f.int("timeout_ms")?,
        },
        "REFUSED" => Frame::Refused(f.str("reason")?),
        "CONNECT" => Frame::Connect {
            local: f.str("local")?,
            remote: f.str("remote")?,
            hostname: f.str("hostname")?,
        },
        "HELO" => Frame::Helo(f.str("name")?),
        "EHLO" => Frame::Ehlo(f.str("name")?),
        "STARTTLS" => Frame::Starttls,
        "AUTH" => Frame::Auth {
            mechanism: f.str("mechanism")?,
            user: f.str("user")?,
        },
        "MAIL" => Frame::Mail(f.str("address")?),
        "RCPT" => Frame::Rcpt(f.str("address")?),
        "DATA" => Frame::Data,
        "DATA_LINES" => Frame::DataLines(f.lines("lines")?),
        "DATA_END" => Frame::DataEnd,
        "EOM" => Frame::Eom(f.int("size")?),
        "COMMIT" => Frame::Commit(f.str("msgid")?),
        "ROLLBACK" => Frame::Rollback,
        "DISCONNECT" => Frame::Disconnect,
        "PROTOCOL" => {
            let dir = match f.str("dir")? {
                [d] => *d,
                _ => return Err("field \"dir\" is one byte".into()),
            };
            Frame::Protocol {
                dir,
                line: f.str("line")?,
            }
        }
        "TLS" => Frame::Tls {
            version: f.str("version")?,
            cipher: f.str("cipher")?,
            bits: f.int("bits")?,
            sni: f.str("sni")?,
            subject: f.str("subject")?,
        },
        "AUTH_RESULT" => Frame::AuthResult {
            mechanism: f.str("mechanism")?,
            user: f.str("user")?,
            result: f.str("result")?,
        },
        "PROCEED" => Frame::Proceed,
        "REJECT" => Frame::Reject {
            code: f.int("code")?,
            text: f.str("text")?,
        },
        "TEMPFAIL" => Frame::Tempfail(f.str("text")?),
        "DISCONNECT_ANSWER" => Frame::DisconnectAnswer {
            code: f.int("code")?,
            text: f.str("text")?,
        },
        "JUNK" => Frame::Junk,
        "REWRITE" => Frame::Rewrite(f.str("value")?),
        "ADD_HEADER" => Frame::AddHeader {
            name: f.str("name")?,
            value: f.str("value")?,
        },
        "INSERT_HEADER" => Frame::InsertHeader {
            index: f.int("index")?,
            name: f.str("name")?,
            value: f.str("value")?,
        },
        "CHANGE_HEADER" => Frame::ChangeHeader {
            index: f.int("index")?,
            name: f.str("name")?,
            value: f.str("value")?,
        },
        "REPLACE_BODY" => Frame::ReplaceBody(f.str("chunk")?),
        "ADD_RCPT" => Frame::AddRcpt(f.str("address")?),
        "DEL_RCPT" => Frame::DelRcpt(f.str("address")?),
        "CHANGE_FROM" => Frame::ChangeFrom(f.str("address")?),
        "QUARANTINE" => Frame::Quarantine(f.str("reason")?),
        "DISCARD" => Frame::Discard,
        "LOG" => Frame::Log(f.str("text")?),
        other => return Err(format!("unknown kind {other:?}")),
    };
    f.done()?;
    let byte = KINDS.iter().find(|(n, _)| *n == kind).map(|(_, b)| *b);
    if byte != Some(kind_of(&frame).0) {
        return Err(format!("kind {kind} is not byte {byte:02x?}"));
    }
    Ok(frame)
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks one vector against the codec.
fn check(v: &Vector) -> Result<(), String> {
    let bytes = v.bytes()?;
    let at = &v.at;
    if bytes.is_empty() && !matches!(v.expect, Expect::Frame { .. }) {
        return Err(format!("{at}: no bytes"));
    }
    match &v.expect {
        Expect::Frame {
            kind,
            session,
            fields,
        } => {
            let want = frame_of(kind, fields).map_err(|e| format!("{at}: {e}"))?;
            let mut enc = Vec::new();
            encode(*session, &want, &mut enc);
            if enc != bytes {
                return Err(format!(
                    "{at}: the description encodes to\n    {}\nnot\n    {}",
                    hex(&enc),
                    hex(&bytes)
                ));
            }
            match decode(&bytes) {
                Ok(Some((s, got, used))) => {
                    if s != *session || got != want || used != bytes.len() {
                        return Err(format!(
                            "{at}: decoded session {s:#x} {got:?} using {used} bytes, \
                             want {session:#x} {want:?} using {}",
                            bytes.len()
                        ));
                    }
                    let mut again = Vec::new();
                    encode(s, &got, &mut again);
                    if again != bytes {
                        return Err(format!("{at}: the decoded frame encodes differently"));
                    }
                }
                other => return Err(format!("{at}: decode gave {other:?}")),
            }
            // Any shorter prefix is a frame still to come, never an error.
            for n in 0..bytes.len() {
                if decode(&bytes[..n]) != Ok(None) {
                    return Err(format!("{at}: the first {n} bytes are not incomplete"));
                }
            }
            // Bytes after the frame are left for the next one.
            let mut more = bytes.clone();
            more.extend_from_slice(&[0, 0]);
            match decode(&more) {
                Ok(Some((_, _, used))) if used == bytes.len() => Ok(()),
                other => Err(format!("{at}: with trailing bytes, decode gave {other:?}")),
            }
        }
        Expect::Invalid(e) => match decode(&bytes) {
            Err(got) if got == *e => Ok(()),
            other => Err(format!("{at}: decode gave {other:?}, want Err({e:?})")),
        },
        Expect::Incomplete => match decode(&bytes) {
            Ok(None) => Ok(()),
            other => Err(format!("{at}: decode gave {other:?}, want Ok(None)")),
        },
    }
}

fn all_vectors() -> Vec<(PathBuf, Vec<Vector>)> {
    hex_files()
        .into_iter()
        .map(|p| {
            let v = read_vectors(&p).unwrap_or_else(|e| panic!("{e}"));
            (p, v)
        })
        .collect()
}

#[test]
fn every_vector_matches_the_codec() {
    let mut errors = Vec::new();
    let mut n = 0;
    for (_, vectors) in all_vectors() {
        for v in &vectors {
            n += 1;
            if let Err(e) = check(v) {
                errors.push(e);
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} of {n} vectors failed:\n{}",
        errors.len(),
        errors.join("\n")
    );
}

#[test]
fn every_kind_and_error_has_a_vector() {
    let mut kinds = BTreeSet::new();
    let (mut length, mut unknown, mut payload, mut incomplete) = (false, false, false, false);
    for (_, vectors) in all_vectors() {
        for v in vectors {
            match v.expect {
                Expect::Frame { kind, .. } => {
                    kinds.insert(kind);
                }
                Expect::Invalid(WireError::BadLength(_)) => length = true,
                Expect::Invalid(WireError::UnknownKind(_)) => unknown = true,
                Expect::Invalid(WireError::BadPayload(_)) => payload = true,
                Expect::Incomplete => incomplete = true,
            }
        }
    }
    let missing: Vec<&str> = KINDS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !kinds.contains(*n))
        .collect();
    assert!(missing.is_empty(), "kinds without a vector: {missing:?}");
    assert!(length && unknown && payload && incomplete);
    // The kind bytes are distinct, so no name hides another.
    let bytes: BTreeSet<u8> = KINDS.iter().map(|(_, b)| *b).collect();
    assert_eq!(bytes.len(), KINDS.len());
}

#[test]
fn each_file_decodes_as_one_stream_split_anywhere() {
    for (path, vectors) in all_vectors() {
        let frames: Vec<(u64, Vec<u8>)> = vectors
            .iter()
            .filter_map(|v| match &v.expect {
                Expect::Frame { session, .. } => Some((*session, v.bytes().unwrap())),
                _ => None,
            })
            .collect();
        if frames.is_empty() {
            continue;
        }
        let wire: Vec<u8> = frames.iter().flat_map(|(_, b)| b.clone()).collect();
        for chunk in [1, 2, 3, 5, 7, 13, 64, wire.len()] {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for part in wire.chunks(chunk) {
                d.feed(part);
                while let Some((s, f)) = d
                    .next_frame()
                    .unwrap_or_else(|e| panic!("{path:?} in chunks of {chunk}: {e}"))
                {
                    let mut one = Vec::new();
                    encode(s, &f, &mut one);
                    got.push((s, one));
                }
            }
            assert_eq!(got, frames, "{path:?} in chunks of {chunk}");
            assert_eq!(d.pending(), 0);
        }
    }
}

/// The bytes of an example in the manual page: the leading two-digit hex tokens of
/// each line of the literal displays (`.Bd` to `.Ed`) between the `NAME-begin` and
/// `NAME-end` comments.
fn manual_example(text: &str, name: &str) -> Option<Vec<u8>> {
    let start = text.find(&format!(".\\\" {name}-begin"))?;
    let end = text[start..].find(&format!(".\\\" {name}-end"))? + start;
    let mut out = Vec::new();
    let mut literal = false;
    for line in text[start..end].lines() {
        if line.starts_with(".Bd") {
            literal = true;
        } else if line.starts_with(".Ed") {
            literal = false;
        } else if literal {
            for tok in line.split_whitespace() {
                match u8::from_str_radix(tok, 16) {
                    Ok(b) if tok.len() == 2 => out.push(b),
                    _ => break,
                }
            }
        }
    }
    Some(out)
}

#[test]
fn the_manual_shows_the_examples() {
    let man = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../man/smtpd-filters.7");
    let Ok(text) = std::fs::read_to_string(&man) else {
        eprintln!("{man:?} not found: not checked");
        return;
    };
    for name in ["worked-example", "tls-auth-example", "later-example"] {
        let shown = manual_example(&text, name)
            .unwrap_or_else(|| panic!("{name} markers in smtpd-filters.7"));
        let vectors = read_vectors(&vectors_dir().join(format!("{name}.hex"))).unwrap();
        let want: Vec<u8> = vectors.iter().flat_map(|v| v.bytes().unwrap()).collect();
        assert_eq!(hex(&shown), hex(&want), "{name}");
    }
}
