//! The HTTP/1.1 GET of an MTA-STS policy (RFC 8461 §3.3), sans I/O: [`request`]
//! makes the bytes to send over TLS to `mta-sts.DOMAIN` (port 443, PKIX-checked
//! against the relay action's roots for that name), [`Response`] reads the answer from
//! bytes fed in any split.
//!
//! Only what a policy needs is accepted (§3.3): status 200, no redirect followed,
//! `Content-Type: text/plain` (parameters allowed), a head of at most
//! [`MAX_HEAD`] bytes and a body of at most [`MAX_BODY`], delimited by
//! `Content-Length`, chunked transfer coding, or the end of the connection. A
//! response with both `Content-Length` and `Transfer-Encoding`, or two lengths that
//! differ, is refused rather than guessed at.

/// The path of the policy on its host.
pub const POLICY_PATH: &str = "/.well-known/mta-sts.txt";
/// The most bytes of status line and header fields (and of chunked trailers).
pub const MAX_HEAD: usize = 8 * 1024;
/// The most bytes of body.
pub const MAX_BODY: usize = 64 * 1024;
/// The longest line of a chunk size.
const MAX_CHUNK_LINE: usize = 1024;

/// The host that serves the policy of `domain`.
pub fn policy_host(domain: &str) -> String {
    format!("mta-sts.{}", domain.strip_suffix('.').unwrap_or(domain))
}

/// The request for the policy of `domain`; the connection closes after the answer.
pub fn request(domain: &str) -> Vec<u8> {
    format!(
        "GET {POLICY_PATH} HTTP/1.1\r\nHost: {}\r\nUser-Agent: smtpd\r\nAccept: text/plain\r\nConnection: close\r\n\r\n",
        policy_host(domain)
    )
    .into_bytes()
}

/// Why a response is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// A status other than 200 and not a redirect.
    Status(u16),
    /// A redirect (3xx), never followed (§3.3).
    Redirect(u16),
    /// The head passed [`MAX_HEAD`].
    HeadTooLong,
    /// The body passed [`MAX_BODY`].
    BodyTooLong,
    /// The media type is not `text/plain` (`None`: no Content-Type).
    ContentType(Option<String>),
    /// Not HTTP as expected.
    Malformed(String),
    /// The connection ended before the body did.
    Truncated,
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpError::Status(c) => write!(f, "HTTP status {c}"),
            HttpError::Redirect(c) => write!(f, "HTTP redirect {c}, not followed"),
            HttpError::HeadTooLong => write!(f, "HTTP head over {MAX_HEAD} bytes"),
            HttpError::BodyTooLong => write!(f, "policy over {MAX_BODY} bytes"),
            HttpError::ContentType(Some(t)) => write!(f, "Content-Type {t:?}, not text/plain"),
            HttpError::ContentType(None) => write!(f, "no Content-Type"),
            HttpError::Malformed(m) => write!(f, "bad HTTP response: {m}"),
            HttpError::Truncated => write!(f, "HTTP response truncated"),
        }
    }
}

/// Where the reading of a response stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More bytes are needed.
    More,
    /// The body is complete: [`Response::body`].
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The status line.
    Status,
    /// Header fields, until the blank line.
    Fields,
    /// A body of this many more bytes.
    Length(usize),
    /// A chunk size line.
    ChunkSize,
    /// This many more bytes of a chunk.
    ChunkData(usize),
    /// The line end after a chunk's data.
    ChunkEnd,
    /// Trailer fields after the last chunk, until the blank line.
    Trailers,
    /// A body until the connection closes.
    UntilClose,
    Done,
    /// An error was returned; nothing more is read.
    Failed,
}

/// The reader of one response.
#[derive(Debug)]
pub struct Response {
    state: State,
    /// The line being gathered (without its end).
    line: Vec<u8>,
    /// Bytes of head (and trailers) read so far.
    head: usize,
    body: Vec<u8>,
    length: Option<usize>,
    chunked: bool,
    content_type: Option<String>,
}

impl Default for Response {
    fn default() -> Self {
        Response::new()
    }
}

fn malformed(m: impl Into<String>) -> HttpError {
    HttpError::Malformed(m.into())
}

impl Response {
    /// A reader waiting for the status line.
    pub fn new() -> Response {
        Response {
            state: State::Status,
            line: Vec::new(),
            head: 0,
            body: Vec::new(),
            length: None,
            chunked: false,
            content_type: None,
        }
    }

    /// The policy, once [`Progress::Done`].
    pub fn body(&self) -> Option<&[u8]> {
        (self.state == State::Done).then_some(self.body.as_slice())
    }

    /// Reads more of the response. Bytes after its end are ignored. After an
    /// error, the same error comes back no more: the reader stays failed.
    pub fn feed(&mut self, input: &[u8]) -> Result<Progress, HttpError> {
        if self.state == State::Failed {
            return Err(malformed("read after an error"));
        }
        let r = self.feed_inner(input);
        if r.is_err() {
            self.state = State::Failed;
        }
        r
    }

    /// The connection closed: the end of a body without a length, else too soon.
    pub fn eof(&mut self) -> Result<Progress, HttpError> {
        match self.state {
            State::UntilClose => {
                self.state = State::Done;
                Ok(Progress::Done)
            }
            State::Done => Ok(Progress::Done),
            _ => {
                self.state = State::Failed;
                Err(HttpError::Truncated)
            }
        }
    }

    fn feed_inner(&mut self, mut input: &[u8]) -> Result<Progress, HttpError> {
        while !input.is_empty() {
            match self.state {
                State::Status | State::Fields | State::Trailers => {
                    let Some(line) = self.take_line(&mut input, MAX_HEAD)? else {
                        break;
                    };
                    self.head_line(&line)?;
                }
                State::ChunkSize | State::ChunkEnd => {
                    let Some(line) = self.take_line(&mut input, MAX_CHUNK_LINE)? else {
                        break;
                    };
                    self.chunk_line(&line)?;
                }
                State::Length(left) | State::ChunkData(left) => {
                    let n = left.min(input.len());
                    self.body.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    let left = left - n;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => State::Done,
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::ChunkEnd,
                        _ => State::ChunkData(left),
                    };
                }
                State::UntilClose => {
                    if self.body.len() + input.len() > MAX_BODY {
                        return Err(HttpError::BodyTooLong);
                    }
                    self.body.extend_from_slice(input);
                    input = &[];
                }
                State::Done | State::Failed => break,
            }
        }
        Ok(match self.state {
            State::Done => Progress::Done,
            _ => Progress::More,
        })
    }

    /// A whole line from `input` (CRLF or LF cut off), or `None` when it goes on
    /// past the input. `limit` bounds a line of chunk size; head lines count
    /// against [`MAX_HEAD`] together.
    fn take_line(&mut self, input: &mut &[u8], limit: usize) -> Result<Option<Vec<u8>>, HttpError> {
        let in_head = matches!(self.state, State::Status | State::Fields | State::Trailers);
        let data = *input;
        let (part, rest, whole) = match memchr::memchr(b'\n', data) {
            Some(i) => (&data[..i], &data[i + 1..], true),
            None => (data, &data[data.len()..], false),
        };
        let used = part.len() + usize::from(whole);
        if in_head {
            self.head += used;
            if self.head > MAX_HEAD {
                return Err(HttpError::HeadTooLong);
            }
        } else if self.line.len() + used > limit {
            return Err(malformed("chunk size line too long"));
        }
        self.line.extend_from_slice(part);
        *input = rest;
        if !whole {
            return Ok(None);
        }
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.contains(&b'\r') {
            return Err(malformed("bare CR"));
        }
        Ok(Some(line))
    }

    /// One line of the head or of the trailers.
    fn head_line(&mut self, line: &[u8]) -> Result<(), HttpError> {
        match self.state {
            State::Status => {
                self.status(line)?;
                self.state = State::Fields;
            }
            State::Fields if line.is_empty() => self.start_body()?,
            State::Fields => self.field(line)?,
            // Trailers are read and ignored.
            _ if line.is_empty() => self.state = State::Done,
            _ => {}
        }
        Ok(())
    }

    /// `HTTP/1.x 200 reason`.
    fn status(&self, line: &[u8]) -> Result<(), HttpError> {
        let bad = || malformed(format!("status line {:?}", String::from_utf8_lossy(line)));
        let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
        let (minor, rest) = rest.split_first().ok_or_else(bad)?;
        let code = rest.strip_prefix(b" ").ok_or_else(bad)?;
        let (digits, reason) = code.split_at(code.len().min(3));
        let ok = minor.is_ascii_digit()
            && digits.len() == 3
            && digits.iter().all(u8::is_ascii_digit)
            && (reason.is_empty() || reason[0] == b' ');
        if !ok {
            return Err(bad());
        }
        let code = digits
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        match code {
            200 => Ok(()),
            300..=399 => Err(HttpError::Redirect(code)),
            _ => Err(HttpError::Status(code)),
        }
    }

    /// One header field: the ones that frame the body or type it are kept.
    fn field(&mut self, line: &[u8]) -> Result<(), HttpError> {
        let text = std::str::from_utf8(line).map_err(|_| malformed("header not UTF-8"))?;
        if text.starts_with([' ', '\t']) {
            return Err(malformed("folded header line"));
        }
        let (name, value) = text
            .split_once(':')
            .ok_or_else(|| malformed(format!("header line {text:?}")))?;
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            return Err(malformed(format!("header name {name:?}")));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| malformed(format!("Content-Length {value:?}")))?;
            if n > MAX_BODY {
                return Err(HttpError::BodyTooLong);
            }
            if self.length.is_some_and(|l| l != n) {
                return Err(malformed("two Content-Length values"));
            }
            self.length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if !value.eq_ignore_ascii_case("chunked") || self.chunked {
                return Err(malformed(format!("Transfer-Encoding {value:?}")));
            }
            self.chunked = true;
        } else if name.eq_ignore_ascii_case("content-type") {
            if self.content_type.is_some() {
                return Err(malformed("two Content-Type fields"));
            }
            self.content_type = Some(value.to_string());
        }
        Ok(())
    }

    /// The blank line after the head: how the body is delimited.
    fn start_body(&mut self) -> Result<(), HttpError> {
        let media = self
            .content_type
            .as_deref()
            .map(|t| t.split(';').next().unwrap_or("").trim_matches([' ', '\t']));
        if !media.is_some_and(|m| m.eq_ignore_ascii_case("text/plain")) {
            return Err(HttpError::ContentType(self.content_type.clone()));
        }
        self.state = match (self.chunked, self.length) {
            (true, Some(_)) => return Err(malformed("both Content-Length and Transfer-Encoding")),
            (true, None) => State::ChunkSize,
            (false, Some(0)) => State::Done,
            (false, Some(n)) => State::Length(n),
            (false, None) => State::UntilClose,
        };
        Ok(())
    }

    /// A chunk size line (`HEX[;extensions]`), or the line end after a chunk.
    fn chunk_line(&mut self, line: &[u8]) -> Result<(), HttpError> {
        if self.state == State::ChunkEnd {
            if !line.is_empty() {
                return Err(malformed("chunk longer than its size"));
            }
            self.state = State::ChunkSize;
            return Ok(());
        }
        let hex = line.split(|&b| b == b';').next().unwrap_or(&[]);
        let hex = hex.strip_suffix(b" ").unwrap_or(hex);
        if hex.is_empty() || hex.len() > 8 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(malformed(format!(
                "chunk size {:?}",
                String::from_utf8_lossy(line)
            )));
        }
        let size = hex.iter().fold(0usize, |n, &d| {
            let v = (d as char).to_digit(16).unwrap_or(0) as usize;
            n * 16 + v
        });
        if self.body.len() + size > MAX_BODY {
            return Err(HttpError::BodyTooLong);
        }
        self.state = if size == 0 {
            State::Trailers
        } else {
            State::ChunkData(size)
        };
        Ok(())
    }
}

#[cfg(test)]
#[path = "https_tests.rs"]
mod tests;
