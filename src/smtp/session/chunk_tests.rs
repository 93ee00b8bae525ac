//! Tests of `chunk.rs`: BDAT dialogs fed as bytes through a line buffer, the way
//! `smtp::conn` feeds them, with the message stored as the glue stores it.

use super::super::tests::{limits, resolve, test_client};
use super::super::*;
use super::ChunkStep;
use crate::filter::phase::FilterVerdict;
use crate::linebuf::{Line, LineBuf, Text};
use crate::lookup::LookupAnswer;

/// A session behind a line buffer; lookups and the spool answer at once.
struct Wire {
    s: Session,
    lb: LineBuf,
    /// Replies, first lines only, in order.
    replies: Vec<String>,
    /// The open message as stored.
    stored: Vec<u8>,
    /// Messages committed.
    messages: Vec<Vec<u8>>,
    /// Actions Discard seen.
    discarded: usize,
    closed: bool,
    /// The verdict on a DATA filter query (with hooks).
    data_verdict: Option<FilterVerdict>,
}

impl Wire {
    fn new() -> Wire {
        Wire::with(limits(), 0)
    }

    fn with(limits: Limits, hooks: u32) -> Wire {
        let client = test_client();
        let mut out = Vec::new();
        let s = Session::new(7, client, limits, hooks, &mut out);
        let mut w = Wire {
            s,
            lb: LineBuf::new(64),
            replies: Vec::new(),
            stored: Vec::new(),
            messages: Vec::new(),
            discarded: 0,
            closed: false,
            data_verdict: None,
        };
        w.run(out);
        w
    }

    /// Sends `bytes` in reads of `read` octets; returns the replies they got.
    fn send_in(&mut self, bytes: &[u8], read: usize) -> Vec<String> {
        let n = self.replies.len();
        for piece in bytes.chunks(read.max(1)) {
            let mut rest = piece;
            while !rest.is_empty() && !self.closed {
                let space = self.lb.space();
                let k = space.len().min(rest.len());
                space[..k].copy_from_slice(&rest[..k]);
                self.lb.filled(k);
                rest = &rest[k..];
                self.process();
            }
        }
        self.replies[n..].to_vec()
    }

    fn send(&mut self, bytes: &[u8]) -> Vec<String> {
        self.send_in(bytes, 1 << 20)
    }

    fn process(&mut self) {
        while self.s.wants_input() && !self.closed {
            let mut out = Vec::new();
            if self.s.in_chunk() {
                match self.s.read_chunk(&mut self.lb) {
                    ChunkStep::Partial => break,
                    ChunkStep::Skipped => {}
                    ChunkStep::Piece(piece, (_, last, _)) => store(&mut self.stored, piece, last),
                    ChunkStep::Done => {
                        if self.s.on_chunk_end(&mut out) {
                            if let Some((piece, _)) = self.s.chunk_tail(&mut self.lb) {
                                store(&mut self.stored, piece, true);
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
                    piece => store(&mut self.stored, piece, last),
                }
            } else {
                match self.lb.next_command(510) {
                    Line::Partial => break,
                    Line::TooLong => self.s.on_bad_line(Reply::LINE_TOO_LONG, &mut out),
                    Line::Complete { bare: true, .. } => {
                        self.s.on_bad_line(Reply::BARE_NEWLINE_COMMAND, &mut out)
                    }
                    Line::Complete { bytes, .. } => self.s.on_line(bytes, &mut out),
                }
            }
            self.run(out);
        }
    }

    fn run(&mut self, mut out: Vec<Action>) {
        let mut i = 0;
        while i < out.len() {
            let a = std::mem::replace(&mut out[i], Action::Close);
            i += 1;
            let mut more = Vec::new();
            match a {
                Action::Reply(r) => {
                    let mut w = Vec::new();
                    r.render(&mut w);
                    let w = String::from_utf8_lossy(&w).into_owned();
                    self.replies
                        .push(w.lines().last().unwrap_or_default().to_string());
                }
                Action::OpenMessage => {
                    self.stored.clear();
                    self.stored.extend_from_slice(b"Received: x\n");
                    self.lb.begin_content();
                    self.s.on_opened(Ok(0xabcd), &mut more);
                }
                Action::Commit => {
                    self.messages.push(std::mem::take(&mut self.stored));
                    self.s.on_committed(Ok(()), &mut more);
                }
                Action::Discard => {
                    self.discarded += 1;
                    self.stored.clear();
                }
                Action::Close => self.closed = true,
                Action::Lookup(l) => {
                    let a = match &l {
                        Lookup::Space(_) => LookupAnswer::Space(true),
                        Lookup::Rcpt(q) => LookupAnswer::Rcpt(resolve(q)),
                        Lookup::Sender(_) => LookupAnswer::Sender(Ok(())),
                    };
                    self.s.on_lookup(a, &mut more);
                }
                Action::Filter(_) => {
                    let v = self.data_verdict.clone().unwrap_or(FilterVerdict::Proceed {
                        rewrite: None,
                        junk: false,
                    });
                    self.s.on_filter_result(v, &mut more);
                }
                _ => {}
            }
            out.splice(i..i, more);
        }
    }

    /// EHLO, MAIL with `params`, one RCPT.
    fn open(&mut self, params: &str) {
        let r = self.send(
            format!("EHLO c\r\nMAIL FROM:<a@b.c>{params}\r\nRCPT TO:<bob@example.org>\r\n")
                .as_bytes(),
        );
        assert_eq!(r.len(), 3, "{r:?}");
        assert!(r.iter().all(|l| l.starts_with("250")), "{r:?}");
    }
}

/// Stores a piece as the glue does: text with LF, binary as it came.
fn store(stored: &mut Vec<u8>, piece: DataLine, last: bool) {
    match piece {
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
        DataLine::Drop | DataLine::End => {}
    }
}

fn bdat(payload: &[u8], last: bool) -> Vec<u8> {
    let mut v = format!(
        "BDAT {}{}\r\n",
        payload.len(),
        if last { " LAST" } else { "" }
    )
    .into_bytes();
    v.extend_from_slice(payload);
    v
}

/// The spool's form of a text body: CR LF made LF.
fn lf(b: &[u8]) -> Vec<u8> {
    let mut v = b"Received: x\n".to_vec();
    v.extend_from_slice(
        &String::from_utf8_lossy(b)
            .replace("\r\n", "\n")
            .into_bytes(),
    );
    v
}

#[test]
fn ehlo_offers_chunking_and_binarymime() {
    let mut out = Vec::new();
    let mut s = Wire::new().s;
    s.on_line(b"EHLO c", &mut out);
    let Some(Action::Reply(r)) = out.first() else {
        panic!("{out:?}");
    };
    let text = r.text.to_string();
    assert!(text.contains("\nCHUNKING\nBINARYMIME\n"), "{text}");
}

#[test]
fn chunks_cut_anywhere_store_the_same_message() {
    let body = "Subject: é\r\n\r\nline\r\n.\r\n..\r\nsmörgåsbord\r\n".as_bytes();
    for cut in 0..=body.len() {
        for read in [1, 5, 1000] {
            let mut w = Wire::new();
            w.open("");
            let mut wire = bdat(&body[..cut], false);
            wire.extend(bdat(&body[cut..], false));
            wire.extend(bdat(b"", true));
            let r = w.send_in(&wire, read);
            assert_eq!(r.len(), 3, "cut {cut}: {r:?}");
            assert!(r[0].starts_with(&format!("250 2.0.0 {cut} octets received")));
            assert!(
                r[2].starts_with("250 2.0.0 0000abcd Message accepted"),
                "{r:?}"
            );
            assert_eq!(w.messages, [lf(body)], "cut {cut} read {read}");
        }
    }
}

#[test]
fn a_text_body_without_final_cr_lf_gets_one_and_dots_are_content() {
    let mut w = Wire::new();
    w.open(" BODY=8BITMIME");
    let r = w.send(&bdat(b"a\r\n.\r\nQUIT\r\nlast", true));
    assert_eq!(r.len(), 1);
    assert!(r[0].starts_with("250 2.0.0"), "{r:?}");
    assert_eq!(w.messages, [b"Received: x\na\n.\nQUIT\nlast\n".to_vec()]);
    assert!(!w.closed, "QUIT in a chunk was run");
    // The empty message.
    w.open("");
    assert!(w.send(&bdat(b"", true))[0].starts_with("250 2.0.0"));
    assert_eq!(w.messages[1], b"Received: x\n");
}

#[test]
fn bare_cr_lf_and_nul_refuse_a_text_body_at_its_last_chunk() {
    for (bad, code) in [
        (&b"a\nb\r\n"[..], "550 5.5.2"),
        (b"a\r", "550 5.5.2"),
        (b"a\rb\r\n", "550 5.5.2"),
        (b"\n.\r\n", "550 5.5.2"),
        (b"a\x00b\r\n", "550 5.6.0"),
    ] {
        let mut w = Wire::new();
        w.open("");
        let mut wire = bdat(b"Subject: x\r\n\r\n", false);
        wire.extend(bdat(bad, false));
        wire.extend(bdat(b"end\r\n", true));
        let r = w.send(&wire);
        assert_eq!(r.len(), 3, "{bad:?}: {r:?}");
        assert!(r[0].starts_with("250 2.0.0") && r[1].starts_with("250 2.0.0"));
        assert!(r[2].starts_with(code), "{bad:?}: {r:?}");
        assert!(w.messages.is_empty());
        // In step: the next command is a command.
        assert!(w.send(b"NOOP\r\n")[0].starts_with("250 2.0.0 Ok"));
    }
}

#[test]
fn a_binarymime_body_is_stored_as_it_came() {
    let head = b"Subject: bin\r\nContent-Type: application/octet-stream\r\n\r\n";
    let body: &[u8] = b"\x00\x01\r\n.\r\n\n.\n\rMAIL FROM:<x@y>\r\n\xff\r";
    for cut in 0..=body.len() {
        let mut w = Wire::new();
        w.open(" BODY=BINARYMIME");
        let mut all = head.to_vec();
        all.extend_from_slice(&body[..cut]);
        let mut wire = bdat(&all, false);
        wire.extend(bdat(&body[cut..], true));
        let r = w.send_in(&wire, 7);
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[1].starts_with("250 2.0.0"), "cut {cut}: {r:?}");
        let mut want =
            b"Received: x\nSubject: bin\nContent-Type: application/octet-stream\n\n".to_vec();
        want.extend_from_slice(body);
        assert_eq!(w.messages, [want], "cut {cut}");
    }
    // The empty line that ends the header section cut between its CR and its LF.
    let msg: &[u8] = b"Subject: b\r\n\r\n\x00\n\r";
    for cut in 0..=msg.len() {
        let mut w = Wire::new();
        w.open(" BODY=BINARYMIME");
        let r = w.send(&[bdat(&msg[..cut], false), bdat(&msg[cut..], true)].concat());
        assert!(r[1].starts_with("250 2.0.0 0000abcd"), "cut {cut}: {r:?}");
        assert_eq!(
            w.messages,
            [b"Received: x\nSubject: b\n\n\x00\n\r".to_vec()],
            "cut {cut}"
        );
    }
    // The header section stays text.
    let mut w = Wire::new();
    w.open(" BODY=BINARYMIME");
    let r = w.send(&bdat(b"Subject: a\nb\r\n\r\nbody", true));
    assert!(r[0].starts_with("550 5.5.2"), "{r:?}");
}

#[test]
fn data_is_refused_for_binarymime_and_after_bdat() {
    let mut w = Wire::new();
    w.open(" BODY=BINARYMIME");
    assert!(w.send(b"DATA\r\n")[0].starts_with("503 5.5.1"));
    let mut w = Wire::new();
    w.open("");
    let r = w.send(&[bdat(b"Subject: x\r\n", false), b"DATA\r\n".to_vec()].concat());
    assert!(r[0].starts_with("250 2.0.0 12 octets"), "{r:?}");
    assert!(r[1].starts_with("503 5.5.1"), "{r:?}");
    assert!(
        w.send(b"RCPT TO:<c@example.org>\r\n")[0].starts_with("503 5.5.1 Error: RCPT after BDAT")
    );
    // The transaction goes on.
    assert!(w.send(&bdat(b"\r\nbody\r\n", true))[0].starts_with("250 2.0.0 0000abcd"));
    assert_eq!(w.messages, [b"Received: x\nSubject: x\n\nbody\n".to_vec()]);
}

#[test]
fn refused_chunks_are_skipped_unseen() {
    let smuggled = b"MAIL FROM:<x@y.z>\r\nRCPT TO:<victim@example.org>\r\nQUIT\r\n";
    // Before MAIL, before EHLO, after HELO.
    for (start, code) in [
        (&b"EHLO c\r\n"[..], "503 5.5.1 Error: need MAIL"),
        (b"", "503 5.5.1 Error: send HELO"),
        (b"HELO c\r\n", "503 5.5.1 Error: BDAT needs EHLO"),
    ] {
        let mut w = Wire::new();
        let mut wire = start.to_vec();
        wire.extend(bdat(smuggled, true));
        wire.extend_from_slice(b"NOOP\r\n");
        let r = w.send_in(&wire, 3);
        assert_eq!(r.len(), start.len().min(1) + 2, "{r:?}");
        assert!(r[r.len() - 2].starts_with(code), "{r:?}");
        assert!(r[r.len() - 1].starts_with("250 2.0.0 Ok"), "{r:?}");
        assert!(!w.closed && w.messages.is_empty());
    }
    // Without a recipient: refused, and the transaction is over.
    let mut w = Wire::new();
    w.send(b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n");
    let r = w.send(
        &[
            bdat(smuggled, false),
            b"RCPT TO:<bob@example.org>\r\n".to_vec(),
        ]
        .concat(),
    );
    assert!(r[0].starts_with("503 5.5.1 Error: need RCPT"), "{r:?}");
    assert!(r[1].starts_with("503 5.5.1 Error: need MAIL"), "{r:?}");
}

#[test]
fn a_chunk_past_the_size_limit_is_refused_before_its_octets() {
    let mut w = Wire::new();
    w.open("");
    let big = vec![b'x'; 1001];
    let mut wire = bdat(b"Subject: x\r\n\r\n", false);
    wire.extend(bdat(&big, false));
    // Pipelined after the refused one: no transaction any more.
    wire.extend(bdat(b"more\r\n", true));
    wire.extend_from_slice(b"NOOP\r\n");
    let r = w.send_in(&wire, 100);
    assert_eq!(r.len(), 4, "{r:?}");
    assert!(r[0].starts_with("250 2.0.0 14 octets"));
    assert!(r[1].starts_with("552 5.3.4"), "{r:?}");
    assert!(r[2].starts_with("503 5.5.1 Error: need MAIL"), "{r:?}");
    assert!(r[3].starts_with("250 2.0.0 Ok"), "{r:?}");
    assert_eq!(w.discarded, 1, "the open message was removed");
    assert!(w.messages.is_empty());
    // The size counts every chunk: 1000 in all is fine.
    w.open("");
    let mut wire = bdat(&vec![b'y'; 500], false);
    wire.extend(bdat(&vec![b'z'; 500], true));
    assert!(w.send(&wire)[1].starts_with("250 2.0.0 0000abcd"));
}

#[test]
fn a_bdat_whose_size_cannot_be_read_closes_the_session() {
    for line in [
        &b"BDAT 1x\r\n"[..],
        b"BDAT\r\n",
        b"BDAT 5 LAST x\r\n",
        b"BDAT 5\x00\r\n",
    ] {
        let mut w = Wire::new();
        w.open("");
        let r = w.send(&[line, b"QUIT\r\n"].concat());
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].starts_with("501 5.5.4 Syntax: BDAT"), "{r:?}");
        assert!(w.closed);
    }
}

#[test]
fn rset_and_ehlo_drop_a_chunked_message() {
    let mut w = Wire::new();
    w.open("");
    let r = w.send(&[bdat(b"Subject: x\r\n", false), b"RSET\r\n".to_vec()].concat());
    assert!(r[1].starts_with("250 2.0.0 Ok"));
    assert_eq!(w.discarded, 1);
    assert!(w.send(&bdat(b"x", true))[0].starts_with("503 5.5.1 Error: need MAIL"));
    w.open("");
    w.send(&bdat(b"Subject: x\r\n", false));
    w.send(b"EHLO again\r\n");
    assert_eq!(w.discarded, 2);
}

#[test]
fn a_refused_data_phase_skips_the_first_chunk() {
    let mut w = Wire::with(limits(), crate::filter::phase::Phase::Data.event());
    w.data_verdict = Some(FilterVerdict::Reject(Reply::new(550, "5.7.1", "no")));
    w.open("");
    let r = w.send(&[bdat(b"QUIT\r\n", true), b"NOOP\r\n".to_vec()].concat());
    assert!(r[0].starts_with("550 5.7.1 no"), "{r:?}");
    assert!(r[1].starts_with("250 2.0.0 Ok"), "{r:?}");
    assert!(!w.closed);
}

#[test]
fn pipelined_transactions_with_bdat() {
    let mut w = Wire::new();
    let mut wire = b"EHLO c\r\n".to_vec();
    for i in 0..2 {
        wire.extend_from_slice(b"MAIL FROM:<a@b.c>\r\nRCPT TO:<bob@example.org>\r\n");
        wire.extend(bdat(format!("Subject: {i}\r\n").as_bytes(), false));
        wire.extend(bdat(b"\r\nbody\r\n", true));
    }
    wire.extend_from_slice(b"QUIT\r\n");
    let r = w.send(&wire);
    let codes: Vec<&str> = r.iter().map(|l| &l[..3]).collect();
    assert_eq!(
        codes,
        ["250", "250", "250", "250", "250", "250", "250", "250", "250", "221"]
    );
    assert_eq!(w.messages.len(), 2);
    assert_eq!(w.messages[1], b"Received: x\nSubject: 1\n\nbody\n");
}
