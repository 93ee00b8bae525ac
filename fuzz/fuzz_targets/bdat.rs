//! BDAT framing (RFC 3030): a message cut into chunks, the stream read in pieces of
//! any size, through `LineBuf` and the session as `smtp::conn` drives them, against a
//! reference computed from the message alone.
//!
//! Input: `flags seed:u16le` then the message. flags: bit 0 BINARYMIME, bits 1-2 the
//! input buffer size, bit 3 a NOOP after each chunk, bit 4 a refused BDAT (before
//! MAIL) carrying the whole message first, bit 5 a text message that is not refused
//! sent with DATA too, dot-stuffed (the same stored bytes). The seed draws the chunk boundaries (any number, empty chunks
//! included) and the read sizes.
//!
//! The checks: exactly one reply per command, in order (no octet of a chunk is ever a
//! command, nothing in a chunk ends the message); a text message is stored with LF
//! line ends (a last line without CR LF closed), or refused with 550 when it holds a
//! bare CR or LF (5.5.2) or a NUL (5.6.0); a BINARYMIME message has its header section
//! so checked and stored, and its body stored octet for octet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::linebuf::{Line, LineBuf, Text};
use smtpd::lookup::{Lookup, LookupAnswer};
use smtpd::mail::delivery::{Delivery, Dest};
use smtpd::mail::peer::Peer;
use smtpd::mail::reply::Reply;
use smtpd::smtp::session::{Action, ChunkStep, DataLine, Limits, Session};

const BUF_SIZES: [usize; 4] = [16 * 1024, 1024, 600, 520];

struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// The session behind its line buffer, the message as the glue stores it.
struct Wire {
    s: Session,
    lb: LineBuf,
    replies: Vec<Reply>,
    stored: Vec<u8>,
    committed: Vec<Vec<u8>>,
    closed: bool,
}

impl Wire {
    fn run(&mut self, mut actions: Vec<Action>) {
        let mut i = 0;
        while i < actions.len() {
            let a = std::mem::replace(&mut actions[i], Action::Close);
            i += 1;
            let mut more = Vec::new();
            match a {
                Action::Reply(r) => self.replies.push(r),
                Action::OpenMessage => {
                    self.stored.clear();
                    self.lb.begin_content();
                    self.s.on_opened(Ok(1), &mut more);
                }
                Action::Commit => {
                    self.committed.push(std::mem::take(&mut self.stored));
                    self.s.on_committed(Ok(()), &mut more);
                }
                Action::Discard => self.stored.clear(),
                Action::Close => self.closed = true,
                Action::Lookup(l) => {
                    let a = match &l {
                        Lookup::Space(_) => LookupAnswer::Space(true),
                        Lookup::Rcpt(q) => LookupAnswer::Rcpt(Ok(vec![Delivery {
                            action: 0,
                            dest: Dest::User(q.rcpt.local.clone()),
                        }])),
                        Lookup::Sender(_) => LookupAnswer::Sender(Ok(())),
                    };
                    self.s.on_lookup(a, &mut more);
                }
                other => panic!("unexpected action {other:?}"),
            }
            actions.splice(i..i, more);
        }
    }

    fn store(stored: &mut Vec<u8>, v: DataLine, last: bool) {
        match v {
            DataLine::Store(b) => {
                stored.extend_from_slice(b);
                if last {
                    stored.push(b'\n');
                }
            }
            DataLine::Raw(b, crlf) => {
                stored.extend_from_slice(b);
                if crlf {
                    stored.extend_from_slice(b"\r\n");
                }
            }
            DataLine::Drop => {}
            DataLine::End => panic!("a dot ended a chunked message"),
        }
    }

    /// Feeds what is buffered, as `Conn::process` does.
    fn process(&mut self) {
        while self.s.wants_input() && !self.closed {
            let mut out = Vec::new();
            if self.s.in_chunk() {
                match self.s.read_chunk(&mut self.lb) {
                    ChunkStep::Partial => break,
                    ChunkStep::Skipped => {}
                    ChunkStep::Piece(v, (_, last, _)) => Wire::store(&mut self.stored, v, last),
                    ChunkStep::Done => {
                        if self.s.on_chunk_end(&mut out) {
                            if let Some((v, _)) = self.s.chunk_tail(&mut self.lb) {
                                Wire::store(&mut self.stored, v, true);
                            }
                            self.s.on_data_end(false, &mut out);
                        }
                    }
                }
            } else if self.s.in_data() {
                let Text::Piece {
                    bytes,
                    first,
                    last,
                    bare,
                } = self.lb.next_text()
                else {
                    break;
                };
                match self.s.on_data(bytes, first, last, bare) {
                    DataLine::End => self.s.on_data_end(false, &mut out),
                    v => Wire::store(&mut self.stored, v, last),
                }
            } else {
                match self.lb.next_command(510) {
                    Line::Partial => break,
                    Line::TooLong => panic!("a command line too long"),
                    Line::Complete { bare: true, bytes } => {
                        panic!("a bad command line: {}", bytes.escape_ascii())
                    }
                    Line::Complete { bytes, .. } => self.s.on_line(bytes, &mut out),
                }
            }
            self.run(out);
        }
    }
}

/// Whether `b` has a CR not followed by LF, or an LF not after a CR.
fn has_bare(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
            || (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
    })
}

/// How the spool keeps text: CR LF made LF, a last line without one closed.
fn as_text(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len() + 1);
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            out.push(b'\n');
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if !b.is_empty() && !b.ends_with(b"\r\n") {
        out.push(b'\n');
    }
    out
}

/// What the message must give: stored bytes, or the refusal's enhanced codes allowed.
fn reference(msg: &[u8], binary: bool) -> Result<Vec<u8>, Vec<&'static str>> {
    // The header section ends at the first empty line.
    let (text, body) = match binary {
        false => (msg, None),
        true => {
            let mut at = None;
            let mut start = 0;
            while let Some(i) = msg[start..].windows(2).position(|w| w == b"\r\n") {
                if i == 0 {
                    at = Some(start);
                    break;
                }
                start += i + 2;
            }
            match at {
                Some(a) => (&msg[..a + 2], Some(&msg[a + 2..])),
                None => (msg, None),
            }
        }
    };
    let (bare, nul) = (has_bare(text), text.contains(&0));
    if bare || nul {
        let mut codes = Vec::new();
        if bare {
            codes.push("5.5.2");
        }
        if nul {
            codes.push("5.6.0");
        }
        return Err(codes);
    }
    let mut out = as_text(text);
    if let Some(b) = body {
        out.extend_from_slice(b);
    }
    Ok(out)
}

fn bdat(wire: &mut Vec<u8>, payload: &[u8], last: bool) {
    let head = format!("BDAT {}{}\r\n", payload.len(), if last { " LAST" } else { "" });
    wire.extend_from_slice(head.as_bytes());
    wire.extend_from_slice(payload);
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let flags = data[0];
    let mut rng = Rng(u32::from(u16::from_le_bytes([data[1], data[2]])) | 0x1_0000);
    let msg = &data[3..];
    let binary = flags & 1 != 0;
    let limits = Limits {
        max_message_size: u64::MAX,
        max_rcpt: 10,
        max_mails: 10,
        max_errors: 100,
        max_hops: usize::MAX,
        max_text_line: 0,
        max_command_line: 512,
        max_auth_failures: 3,
    };
    let client = Peer {
        addr: Some(std::net::IpAddr::from([192, 0, 2, 7])),
        local: false,
        server_name: "mx.example.org".into(),
        tag: None,
        hostname: None,
        tls: false,
        auth: None,
    };
    let mut out = Vec::new();
    let s = Session::new(1, client, limits, 0, &mut out);
    let mut w = Wire {
        s,
        lb: LineBuf::new(BUF_SIZES[usize::from((flags >> 1) & 3)]),
        replies: Vec::new(),
        stored: Vec::new(),
        committed: Vec::new(),
        closed: false,
    };
    w.run(out);

    // The client's stream, and the replies it must get (code, enhanced code or "").
    let mut wire = b"EHLO client.example\r\n".to_vec();
    let mut want: Vec<(u16, &str)> = vec![(220, ""), (250, "")];
    if flags & 0x10 != 0 {
        bdat(&mut wire, msg, true);
        want.push((503, "5.5.1"));
    }
    let body = if binary { " BODY=BINARYMIME" } else { "" };
    wire.extend_from_slice(format!("MAIL FROM:<a@b.example>{body}\r\n").as_bytes());
    wire.extend_from_slice(b"RCPT TO:<c@d.example>\r\n");
    want.extend([(250, "2.1.0"), (250, "2.1.5")]);
    let mut pos = 0;
    loop {
        let rest = msg.len() - pos;
        let n = match rng.next() % 4 {
            0 => 0,
            1 => rng.next() as usize % 4,
            2 => rng.next() as usize % 700,
            _ => rest,
        }
        .min(rest);
        let last = pos + n == msg.len() && rng.next() % 3 != 0;
        bdat(&mut wire, &msg[pos..pos + n], last);
        pos += n;
        if last {
            break;
        }
        want.push((250, "2.0.0"));
        if flags & 8 != 0 {
            wire.extend_from_slice(b"NOOP\r\n");
            want.push((250, "2.0.0"));
        }
    }
    let result = reference(msg, binary);
    match &result {
        Ok(_) => want.push((250, "2.0.0")),
        Err(_) => want.push((550, "")),
    }
    // The same text message with DATA, dot-stuffed, is stored the same.
    let data_too = !binary && result.is_ok() && flags & 0x20 != 0;
    if data_too {
        wire.extend_from_slice(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n");
        want.extend([(250, "2.1.0"), (250, "2.1.5"), (354, "")]);
        // Dot-stuffed, and ended by CR LF . CR LF.
        let mut content = Vec::new();
        for (i, line) in msg.split(|&b| b == b'\n').enumerate() {
            if i > 0 {
                content.push(b'\n');
            }
            if line.first() == Some(&b'.') {
                content.push(b'.');
            }
            content.extend_from_slice(line);
        }
        if !msg.is_empty() && !msg.ends_with(b"\r\n") {
            content.extend_from_slice(b"\r\n");
        }
        content.extend_from_slice(b".\r\n");
        wire.extend_from_slice(&content);
        want.push((250, "2.0.0"));
    }
    wire.extend_from_slice(b"QUIT\r\n");
    want.push((221, "2.0.0"));

    let mut at = 0;
    while at < wire.len() && !w.closed {
        let space = w.lb.space();
        assert!(!space.is_empty(), "input buffer full");
        let n = match rng.next() % 3 {
            0 => 1 + rng.next() as usize % 16,
            1 => 1 + rng.next() as usize % 4096,
            _ => wire.len() - at,
        }
        .min(space.len())
        .min(wire.len() - at);
        space[..n].copy_from_slice(&wire[at..at + n]);
        w.lb.filled(n);
        at += n;
        w.process();
    }
    let got: Vec<(u16, &str)> = w.replies.iter().map(|r| (r.code, r.esc)).collect();
    assert_eq!(got.len(), want.len(), "replies {got:?}, wanted {want:?}");
    for (g, e) in got.iter().zip(&want) {
        assert_eq!(g.0, e.0, "replies {got:?}, wanted {want:?}");
        if !e.1.is_empty() {
            assert_eq!(g.1, e.1, "replies {got:?}, wanted {want:?}");
        }
    }
    match result {
        Ok(stored) => {
            assert_eq!(
                w.committed.first().map(|m| m.escape_ascii().to_string()),
                Some(stored.escape_ascii().to_string()),
                "stored message"
            );
            if data_too {
                assert_eq!(w.committed.get(1), Some(&stored), "the same message with DATA");
            }
        }
        Err(codes) => {
            let esc = w.replies[want.len() - 2].esc;
            assert!(codes.contains(&esc), "refused with {esc}, wanted one of {codes:?}");
            assert!(w.committed.is_empty());
        }
    }
    assert!(w.closed, "QUIT was not taken");
});
