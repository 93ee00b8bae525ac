//! The wire format of the filter protocol: frames, and their encoding and decoding.
//!
//! ```text
//! frame   = u32 length | u8 kind | u64 session | payload     (big-endian)
//! length  = 9 + payload length (kind and session included)
//! string  = u16 length | bytes (UTF-8 not required)
//! lines   = u16 count | string * count
//! ```
//! The filter speaks first ([`Frame::Register`]); the daemon answers [`Frame::Ready`] or
//! [`Frame::Refused`]. Session 0 is the connection itself.

/// Version of the protocol this codec speaks.
pub const VERSION: u16 = 1;
/// Bytes of the frame header (length, kind, session).
pub const HEADER: usize = 13;
/// Largest frame either side sends, header included.
pub const MAX_FRAME: usize = 1 << 20;

/// Event bits a filter registers for (in [`Frame::Register`]).
pub mod event {
    /// New connection.
    pub const CONNECT: u32 = 1 << 0;
    /// HELO.
    pub const HELO: u32 = 1 << 1;
    /// EHLO.
    pub const EHLO: u32 = 1 << 2;
    /// STARTTLS (reserved: never sent; see [`TLS`]).
    pub const STARTTLS: u32 = 1 << 3;
    /// A client's credentials were accepted: may the session go on authenticated?
    pub const AUTH: u32 = 1 << 4;
    /// MAIL FROM.
    pub const MAIL: u32 = 1 << 5;
    /// RCPT TO.
    pub const RCPT: u32 = 1 << 6;
    /// DATA.
    pub const DATA: u32 = 1 << 7;
    /// The message's lines.
    pub const DATA_LINES: u32 = 1 << 8;
    /// End of message.
    pub const EOM: u32 = 1 << 9;
    /// The message was committed (no answer).
    pub const COMMIT: u32 = 1 << 10;
    /// The transaction was abandoned (no answer).
    pub const ROLLBACK: u32 = 1 << 11;
    /// The session ended (no answer).
    pub const DISCONNECT: u32 = 1 << 12;
    /// Every command line and reply, for observers (no answer).
    pub const PROTOCOL: u32 = 1 << 13;
    /// A TLS handshake completed (no answer).
    pub const TLS: u32 = 1 << 14;
    /// How an AUTH exchange ended (no answer).
    pub const AUTH_RESULT: u32 = 1 << 15;
    /// Every event above.
    pub const ALL: u32 = (1 << 16) - 1;
    /// Events that wait for an answer.
    pub const ANSWERED: u32 = CONNECT | HELO | EHLO | STARTTLS | AUTH | MAIL | RCPT | DATA | EOM;
    /// Events that are only told (reports).
    pub const REPORTS: u32 = COMMIT | ROLLBACK | DISCONNECT | PROTOCOL | TLS | AUTH_RESULT;
}

/// Frame kinds on the wire.
pub mod kind {
    /// filter -> daemon: registration.
    pub const REGISTER: u8 = 0x01;
    /// daemon -> filter: accepted.
    pub const READY: u8 = 0x02;
    /// daemon -> filter: refused.
    pub const REFUSED: u8 = 0x03;
    /// Event: connect.
    pub const CONNECT: u8 = 0x10;
    /// Event: HELO.
    pub const HELO: u8 = 0x11;
    /// Event: EHLO.
    pub const EHLO: u8 = 0x12;
    /// Event: STARTTLS (reserved).
    pub const STARTTLS: u8 = 0x13;
    /// Event: AUTH.
    pub const AUTH: u8 = 0x14;
    /// Event: MAIL FROM.
    pub const MAIL: u8 = 0x15;
    /// Event: RCPT TO.
    pub const RCPT: u8 = 0x16;
    /// Event: DATA.
    pub const DATA: u8 = 0x17;
    /// Both ways: message lines.
    pub const DATA_LINES: u8 = 0x18;
    /// Both ways: end of message lines.
    pub const DATA_END: u8 = 0x19;
    /// Event: end of message.
    pub const EOM: u8 = 0x1a;
    /// Event: committed.
    pub const COMMIT: u8 = 0x1b;
    /// Event: rolled back.
    pub const ROLLBACK: u8 = 0x1c;
    /// Event: disconnected.
    pub const DISCONNECT: u8 = 0x1d;
    /// Event: a protocol line.
    pub const PROTOCOL: u8 = 0x1e;
    /// Event: a TLS handshake completed.
    pub const TLS: u8 = 0x40;
    /// Event: an AUTH exchange ended.
    pub const AUTH_RESULT: u8 = 0x41;
    /// Answer: go on.
    pub const PROCEED: u8 = 0x20;
    /// Answer: refuse with a reply.
    pub const REJECT: u8 = 0x21;
    /// Answer: refuse for now.
    pub const TEMPFAIL: u8 = 0x22;
    /// Answer: reply and close.
    pub const DISCONNECT_ANSWER: u8 = 0x23;
    /// Answer: go on, mark as spam.
    pub const JUNK: u8 = 0x24;
    /// Answer: go on with this parameter instead.
    pub const REWRITE: u8 = 0x25;
    /// Edit: add a header at the end of the header section.
    pub const ADD_HEADER: u8 = 0x30;
    /// Edit: insert a header at an index.
    pub const INSERT_HEADER: u8 = 0x31;
    /// Edit: change (or delete) the n-th header of a name.
    pub const CHANGE_HEADER: u8 = 0x32;
    /// Edit: a chunk of the new body.
    pub const REPLACE_BODY: u8 = 0x33;
    /// Edit: add a recipient.
    pub const ADD_RCPT: u8 = 0x34;
    /// Edit: remove a recipient.
    pub const DEL_RCPT: u8 = 0x35;
    /// Edit: change the sender.
    pub const CHANGE_FROM: u8 = 0x36;
    /// Edit: hold the message in the queue.
    pub const QUARANTINE: u8 = 0x37;
    /// Answer at EOM: accept and drop the message.
    pub const DISCARD: u8 = 0x38;
    /// filter -> daemon: a line for the daemon's log.
    pub const LOG: u8 = 0x3f;
}

/// A decoded frame. Strings borrow from the decoder's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The filter's hello: version, events answered, events observed, its name.
    Register {
        /// Protocol version.
        version: u16,
        /// Events (bits of [`event`]) the filter answers.
        hooks: u32,
        /// Events it only observes.
        reports: u32,
        /// Its name, for logs.
        name: &'a [u8],
    },
    /// The daemon accepts: its version, largest frame, answer deadline.
    Ready {
        /// Protocol version.
        version: u16,
        /// Largest frame the daemon takes.
        max_frame: u32,
        /// Milliseconds a filter has to answer.
        timeout_ms: u32,
    },
    /// The daemon refuses the registration.
    Refused(&'a [u8]),
    /// A new session: local address, remote address, resolved host name.
    Connect {
        /// Our address.
        local: &'a [u8],
        /// The client's address.
        remote: &'a [u8],
        /// Its host name, or empty.
        hostname: &'a [u8],
    },
    /// HELO name.
    Helo(&'a [u8]),
    /// EHLO name.
    Ehlo(&'a [u8]),
    /// STARTTLS (reserved: never sent).
    Starttls,
    /// The client's credentials were accepted; the 235 reply waits for the answer.
    Auth {
        /// The SASL mechanism, as `PLAIN` or `LOGIN`.
        mechanism: &'a [u8],
        /// The authentication identity the client gave.
        user: &'a [u8],
    },
    /// MAIL FROM address (without brackets).
    Mail(&'a [u8]),
    /// RCPT TO address.
    Rcpt(&'a [u8]),
    /// DATA.
    Data,
    /// Message lines, dot-unstuffed, without line ends.
    DataLines(Vec<&'a [u8]>),
    /// No more lines.
    DataEnd,
    /// End of message, with its size.
    Eom(u64),
    /// Committed, with the message id.
    Commit(&'a [u8]),
    /// Rolled back.
    Rollback,
    /// Disconnected.
    Disconnect,
    /// A protocol line: `b'<'` from the client, `b'>'` from the server.
    Protocol {
        /// Direction.
        dir: u8,
        /// The line.
        line: &'a [u8],
    },
    /// The session's TLS handshake completed.
    Tls {
        /// The protocol version, as `TLSv1.3`.
        version: &'a [u8],
        /// The cipher suite's IANA name, as `TLS_AES_256_GCM_SHA384`.
        cipher: &'a [u8],
        /// The cipher's key length in bits.
        bits: u16,
        /// The server name the client asked for (SNI), or empty.
        sni: &'a [u8],
        /// The subject of the client's verified certificate, or empty.
        subject: &'a [u8],
    },
    /// An AUTH exchange ended.
    AuthResult {
        /// The SASL mechanism.
        mechanism: &'a [u8],
        /// The authentication identity the client gave (empty when it gave none).
        user: &'a [u8],
        /// `ok`, `permfail` or `tempfail`.
        result: &'a [u8],
    },
    /// Go on.
    Proceed,
    /// Refuse with a 4xx/5xx code and text.
    Reject {
        /// The reply code.
        code: u16,
        /// The text.
        text: &'a [u8],
    },
    /// Refuse for now (451, or 421 at connect).
    Tempfail(&'a [u8]),
    /// Reply and close.
    DisconnectAnswer {
        /// The reply code.
        code: u16,
        /// The text.
        text: &'a [u8],
    },
    /// Go on and mark the message as spam.
    Junk,
    /// Go on with this parameter instead.
    Rewrite(&'a [u8]),
    /// Add a header.
    AddHeader {
        /// Name.
        name: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Insert a header at an index (0 = first).
    InsertHeader {
        /// Index.
        index: u32,
        /// Name.
        name: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Change the `index`-th (1-based) header called `name`; empty value deletes it.
    ChangeHeader {
        /// Index.
        index: u32,
        /// Name.
        name: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// A chunk of the new body.
    ReplaceBody(&'a [u8]),
    /// Add a recipient.
    AddRcpt(&'a [u8]),
    /// Remove a recipient.
    DelRcpt(&'a [u8]),
    /// Change the sender.
    ChangeFrom(&'a [u8]),
    /// Hold the message, with a reason.
    Quarantine(&'a [u8]),
    /// Accept and drop the message.
    Discard,
    /// A log line from the filter.
    Log(&'a [u8]),
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The length field is below the header size or above [`MAX_FRAME`].
    BadLength(u32),
    /// Unknown kind byte.
    UnknownKind(u8),
    /// The payload does not match its kind.
    BadPayload(u8),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::BadLength(n) => write!(f, "bad frame length {n}"),
            WireError::UnknownKind(k) => write!(f, "unknown frame kind 0x{k:02x}"),
            WireError::BadPayload(k) => write!(f, "malformed payload for kind 0x{k:02x}"),
        }
    }
}

impl std::error::Error for WireError {}

struct Cursor<'a> {
    b: &'a [u8],
    kind: u8,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::BadPayload(self.kind));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn str(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn end(&self) -> Result<(), WireError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(WireError::BadPayload(self.kind))
        }
    }
}

/// Decodes one frame from the start of `buf`. `Ok(None)`: not enough bytes yet.
/// On success returns the session, the frame and the bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(u64, Frame<'_>, usize)>, WireError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if (len as usize) < HEADER - 4 || len as usize > MAX_FRAME - 4 {
        return Err(WireError::BadLength(len));
    }
    let total = 4 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let kind_byte = buf[4];
    let mut s = [0u8; 8];
    s.copy_from_slice(&buf[5..13]);
    let session = u64::from_be_bytes(s);
    let mut c = Cursor {
        b: &buf[13..total],
        kind: kind_byte,
    };
    use self::kind as k;
    let f = match kind_byte {
        k::REGISTER => Frame::Register {
            version: c.u16()?,
            hooks: c.u32()?,
            reports: c.u32()?,
            name: c.str()?,
        },
        k::READY => Frame::Ready {
            version: c.u16()?,
            max_frame: c.u32()?,
            timeout_ms: c.u32()?,
        },
        k::REFUSED => Frame::Refused(c.str()?),
        k::CONNECT => Frame::Connect {
            local: c.str()?,
            remote: c.str()?,
            hostname: c.str()?,
        },
        k::HELO => Frame::Helo(c.str()?),
        k::EHLO => Frame::Ehlo(c.str()?),
        k::STARTTLS => Frame::Starttls,
        k::AUTH => Frame::Auth {
            mechanism: c.str()?,
            user: c.str()?,
        },
        k::MAIL => Frame::Mail(c.str()?),
        k::RCPT => Frame::Rcpt(c.str()?),
        k::DATA => Frame::Data,
        k::DATA_LINES => {
            let n = c.u16()? as usize;
            let mut v = Vec::with_capacity(n.min(4096));
            for _ in 0..n {
                v.push(c.str()?);
            }
            Frame::DataLines(v)
        }
        k::DATA_END => Frame::DataEnd,
        k::EOM => Frame::Eom(c.u64()?),
        k::COMMIT => Frame::Commit(c.str()?),
        k::ROLLBACK => Frame::Rollback,
        k::DISCONNECT => Frame::Disconnect,
        k::PROTOCOL => {
            let d = c.take(1)?[0];
            if d != b'<' && d != b'>' {
                return Err(WireError::BadPayload(kind_byte));
            }
            Frame::Protocol {
                dir: d,
                line: c.str()?,
            }
        }
        k::TLS => Frame::Tls {
            version: c.str()?,
            cipher: c.str()?,
            bits: c.u16()?,
            sni: c.str()?,
            subject: c.str()?,
        },
        k::AUTH_RESULT => Frame::AuthResult {
            mechanism: c.str()?,
            user: c.str()?,
            result: c.str()?,
        },
        k::PROCEED => Frame::Proceed,
        k::REJECT => Frame::Reject {
            code: c.u16()?,
            text: c.str()?,
        },
        k::TEMPFAIL => Frame::Tempfail(c.str()?),
        k::DISCONNECT_ANSWER => Frame::DisconnectAnswer {
            code: c.u16()?,
            text: c.str()?,
        },
        k::JUNK => Frame::Junk,
        k::REWRITE => Frame::Rewrite(c.str()?),
        k::ADD_HEADER => Frame::AddHeader {
            name: c.str()?,
            value: c.str()?,
        },
        k::INSERT_HEADER => Frame::InsertHeader {
            index: c.u32()?,
            name: c.str()?,
            value: c.str()?,
        },
        k::CHANGE_HEADER => Frame::ChangeHeader {
            index: c.u32()?,
            name: c.str()?,
            value: c.str()?,
        },
        k::REPLACE_BODY => Frame::ReplaceBody(c.str()?),
        k::ADD_RCPT => Frame::AddRcpt(c.str()?),
        k::DEL_RCPT => Frame::DelRcpt(c.str()?),
        k::CHANGE_FROM => Frame::ChangeFrom(c.str()?),
        k::QUARANTINE => Frame::Quarantine(c.str()?),
        k::DISCARD => Frame::Discard,
        k::LOG => Frame::Log(c.str()?),
        other => return Err(WireError::UnknownKind(other)),
    };
    c.end()?;
    Ok(Some((session, f, total)))
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    // Longer strings are cut: every producer bounds its strings well below this.
    let s = &s[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Appends the encoding of `frame` for `session` to `out`.
pub fn encode(session: u64, frame: &Frame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let (k, _) = kind_of(frame);
    out.push(k);
    out.extend_from_slice(&session.to_be_bytes());
    match frame {
        Frame::Register {
            version,
            hooks,
            reports,
            name,
        } => {
            out.extend_from_slice(&version.to_be_bytes());
            out.extend_from_slice(&hooks.to_be_bytes());
            out.extend_from_slice(&reports.to_be_bytes());
            put_str(out, name);
        }
        Frame::Ready {
            version,
            max_frame,
            timeout_ms,
        } => {
            out.extend_from_slice(&version.to_be_bytes());
            out.extend_from_slice(&max_frame.to_be_bytes());
            out.extend_from_slice(&timeout_ms.to_be_bytes());
        }
        Frame::Connect {
            local,
            remote,
            hostname,
        } => {
            put_str(out, local);
            put_str(out, remote);
            put_str(out, hostname);
        }
        Frame::Refused(s)
        | Frame::Helo(s)
        | Frame::Ehlo(s)
        | Frame::Mail(s)
        | Frame::Rcpt(s)
        | Frame::Commit(s)
        | Frame::Tempfail(s)
        | Frame::Rewrite(s)
        | Frame::ReplaceBody(s)
        | Frame::AddRcpt(s)
        | Frame::DelRcpt(s)
        | Frame::ChangeFrom(s)
        | Frame::Quarantine(s)
        | Frame::Log(s) => put_str(out, s),
        Frame::DataLines(lines) => {
            out.extend_from_slice(&(lines.len().min(u16::MAX as usize) as u16).to_be_bytes());
            for l in lines.iter().take(u16::MAX as usize) {
                put_str(out, l);
            }
        }
        Frame::Eom(size) => out.extend_from_slice(&size.to_be_bytes()),
        Frame::Protocol { dir, line } => {
            out.push(*dir);
            put_str(out, line);
        }
        Frame::Reject { code, text } | Frame::DisconnectAnswer { code, text } => {
            out.extend_from_slice(&code.to_be_bytes());
            put_str(out, text);
        }
        Frame::AddHeader { name: a, value: b }
        | Frame::Auth {
            mechanism: a,
            user: b,
        } => {
            put_str(out, a);
            put_str(out, b);
        }
        Frame::Tls {
            version,
            cipher,
            bits,
            sni,
            subject,
        } => {
            put_str(out, version);
            put_str(out, cipher);
            out.extend_from_slice(&bits.to_be_bytes());
            put_str(out, sni);
            put_str(out, subject);
        }
        Frame::AuthResult {
            mechanism,
            user,
            result,
        } => {
            put_str(out, mechanism);
            put_str(out, user);
            put_str(out, result);
        }
        Frame::InsertHeader { index, name, value } | Frame::ChangeHeader { index, name, value } => {
            out.extend_from_slice(&index.to_be_bytes());
            put_str(out, name);
            put_str(out, value);
        }
        Frame::Starttls
        | Frame::Data
        | Frame::DataEnd
        | Frame::Rollback
        | Frame::Disconnect
        | Frame::Proceed
        | Frame::Junk
        | Frame::Discard => {}
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// The kind byte of a frame and the event bit it belongs to (0 for none).
pub fn kind_of(f: &Frame) -> (u8, u32) {
    use self::kind as k;
    match f {
        Frame::Register { .. } => (k::REGISTER, 0),
        Frame::Ready { .. } => (k::READY, 0),
        Frame::Refused(_) => (k::REFUSED, 0),
        Frame::Connect { .. } => (k::CONNECT, event::CONNECT),
        Frame::Helo(_) => (k::HELO, event::HELO),
        Frame::Ehlo(_) => (k::EHLO, event::EHLO),
        Frame::Starttls => (k::STARTTLS, event::STARTTLS),
        Frame::Auth { .. } => (k::AUTH, event::AUTH),
        Frame::Mail(_) => (k::MAIL, event::MAIL),
        Frame::Rcpt(_) => (k::RCPT, event::RCPT),
        Frame::Data => (k::DATA, event::DATA),
        Frame::DataLines(_) => (k::DATA_LINES, event::DATA_LINES),
        Frame::DataEnd => (k::DATA_END, event::DATA_LINES),
        Frame::Eom(_) => (k::EOM, event::EOM),
        Frame::Commit(_) => (k::COMMIT, event::COMMIT),
        Frame::Rollback => (k::ROLLBACK, event::ROLLBACK),
        Frame::Disconnect => (k::DISCONNECT, event::DISCONNECT),
        Frame::Protocol { .. } => (k::PROTOCOL, event::PROTOCOL),
        Frame::Tls { .. } => (k::TLS, event::TLS),
        Frame::AuthResult { .. } => (k::AUTH_RESULT, event::AUTH_RESULT),
        Frame::Proceed => (k::PROCEED, 0),
        Frame::Reject { .. } => (k::REJECT, 0),
        Frame::Tempfail(_) => (k::TEMPFAIL, 0),
        Frame::DisconnectAnswer { .. } => (k::DISCONNECT_ANSWER, 0),
        Frame::Junk => (k::JUNK, 0),
        Frame::Rewrite(_) => (k::REWRITE, 0),
        Frame::AddHeader { .. } => (k::ADD_HEADER, 0),
        Frame::InsertHeader { .. } => (k::INSERT_HEADER, 0),
        Frame::ChangeHeader { .. } => (k::CHANGE_HEADER, 0),
        Frame::ReplaceBody(_) => (k::REPLACE_BODY, 0),
        Frame::AddRcpt(_) => (k::ADD_RCPT, 0),
        Frame::DelRcpt(_) => (k::DEL_RCPT, 0),
        Frame::ChangeFrom(_) => (k::CHANGE_FROM, 0),
        Frame::Quarantine(_) => (k::QUARANTINE, 0),
        Frame::Discard => (k::DISCARD, 0),
        Frame::Log(_) => (k::LOG, 0),
    }
}

/// A growable input buffer that yields whole frames.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes buffered and not yet decoded.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next whole frame, if any. After an error the stream is unusable.
    pub fn next_frame(&mut self) -> Result<Option<(u64, Frame<'_>)>, WireError> {
        if self.start > 0 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        match decode(&self.buf[self.start..])? {
            None => Ok(None),
            Some((session, frame, used)) => {
                self.start += used;
                Ok(Some((session, frame)))
            }
        }
    }
}

#[cfg(test)]
mod tests;
