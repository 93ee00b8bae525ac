//! BDAT (`chunks.rs`) as dialogs with a scripted server: a BINARYMIME message goes in
//! chunks, never with DATA.

use super::tests::{job, Dialog};
use super::*;

fn binary(id: u64, rcpts: &[&str]) -> Job {
    Job {
        body_binary: true,
        ..job(id, "s@x", rcpts)
    }
}

/// The glue sends `n` chunks while the client lets it, the last with LAST; returns
/// how many went.
fn send_chunks(d: &mut Dialog, n: usize) -> usize {
    let mut sent = 0;
    while sent < n && d.c.may_send_chunk() {
        sent += 1;
        d.c.chunk_sent(sent == n);
    }
    sent
}

/// A BINARYMIME message to one recipient, over SMTP with PIPELINING, up to the reply
/// to its MAIL (its RCPT's is next).
fn pipelined_binary() -> Dialog {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(binary(1, &["a"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(
            &["PIPELINING", "CHUNKING", "BINARYMIME"],
            &["MAIL FROM:<s@x> BODY=BINARYMIME", "RCPT TO:<a>"],
        )
        .server(250, &[]);
    d
}

/// The same, up to its chunks.
fn pipelined_to_chunks() -> Dialog {
    let mut d = pipelined_binary();
    d.server(250, &["<chunks 1>"]);
    d
}

#[test]
fn binary_without_chunking_and_binarymime_is_bounced_without_mail() {
    for keywords in [
        &["PIPELINING", "8BITMIME"][..],
        &["CHUNKING"],
        &["BINARYMIME"],
    ] {
        let mut d = Dialog::new(Proto::Smtp);
        d.push(binary(1, &["a"]));
        d.ready(1);
        d.server(220, &["EHLO me.example"]).ehlo(keywords, &[]);
        assert_eq!(d.outcome(1), ["perm"], "{keywords:?}");
        assert_eq!(
            d.why(1, 0),
            "554 5.6.3 conversion of binary content needed and not done: mx.test does not offer CHUNKING and BINARYMIME"
        );
        assert!(d.logs[0].starts_with("not-sent "), "{:?}", d.logs);
    }
    // LMTP alike: BDAT or nothing.
    let mut d = Dialog::new(Proto::Lmtp);
    d.push(binary(1, &["a"]));
    d.ready(1);
    d.server(220, &["LHLO me.example"])
        .ehlo(&["PIPELINING"], &[]);
    assert_eq!(d.outcome(1), ["perm"]);
}

#[test]
fn pipelined_chunks_after_the_rcpt_replies() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(binary(1, &["a", "b"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"]).ehlo(
        &["PIPELINING", "CHUNKING", "BINARYMIME", "8BITMIME"],
        &[
            "MAIL FROM:<s@x> BODY=BINARYMIME",
            "RCPT TO:<a>",
            "RCPT TO:<b>",
        ],
    );
    d.server(250, &[])
        .server(250, &[])
        .server(550, &["<chunks 1>"]);
    assert!(d.c.in_chunks());
    // Pipelined: every chunk goes at once.
    assert_eq!(send_chunks(&mut d, 3), 3);
    assert!(!d.c.in_chunks());
    d.server(250, &[]).server(250, &[]);
    let steps = d.c.quit();
    assert!(d.take(steps).is_empty());
    d.server(250, &["QUIT"]);
    assert_eq!(d.outcome(1), ["ok", "perm"]);
}

#[test]
fn lock_step_chunks_wait_for_each_reply() {
    for proto in [Proto::Smtp, Proto::Lmtp] {
        let mut d = Dialog::new(proto);
        d.push(binary(1, &["a", "b"]));
        d.ready(1);
        let hello = if proto == Proto::Smtp {
            "EHLO me.example"
        } else {
            "LHLO me.example"
        };
        let keywords: &[&str] = if proto == Proto::Smtp {
            &["CHUNKING", "BINARYMIME"]
        } else {
            &["PIPELINING", "CHUNKING", "BINARYMIME"]
        };
        let first: &[&str] = if proto == Proto::Smtp {
            &["MAIL FROM:<s@x> BODY=BINARYMIME"]
        } else {
            &[
                "MAIL FROM:<s@x> BODY=BINARYMIME",
                "RCPT TO:<a>",
                "RCPT TO:<b>",
            ]
        };
        d.server(220, &[hello]).ehlo(keywords, first);
        if proto == Proto::Smtp {
            d.server(250, &["RCPT TO:<a>"])
                .server(250, &["RCPT TO:<b>"]);
        } else {
            d.server(250, &[]).server(250, &[]);
        }
        d.server(250, &["<chunks 1>"]);
        assert_eq!(send_chunks(&mut d, 3), 1, "{proto:?}");
        d.server(250, &[]);
        assert_eq!(send_chunks(&mut d, 2), 1);
        d.server(250, &[]);
        assert_eq!(send_chunks(&mut d, 1), 1);
        if proto == Proto::Lmtp {
            // One reply per recipient to the LAST chunk.
            d.server(250, &[]).server(452, &[]);
            assert_eq!(d.outcome(1), ["ok", "temp"]);
        } else {
            d.server(250, &[]);
            assert_eq!(d.outcome(1), ["ok", "ok"]);
        }
    }
}

#[test]
fn a_refused_chunk_stops_the_chunks_and_resets() {
    // Lock-step: the refusal comes before anything more is sent.
    let mut d = Dialog::new(Proto::Smtp);
    d.push(binary(1, &["a"])).push(binary(2, &["b"]));
    d.ready(1);
    d.ready(2);
    d.server(220, &["EHLO me.example"])
        .ehlo(
            &["CHUNKING", "BINARYMIME"],
            &["MAIL FROM:<s@x> BODY=BINARYMIME"],
        )
        .server(250, &["RCPT TO:<a>"])
        .server(250, &["<chunks 1>"]);
    assert_eq!(send_chunks(&mut d, 3), 1);
    d.server(552, &["RSET"]);
    assert!(!d.c.may_send_chunk());
    assert_eq!(d.outcome(1), ["perm"]);
    assert!(d
        .logs
        .iter()
        .any(|l| l.starts_with("transaction ") && l.contains("552")));
    // The next job goes on after the RSET.
    d.server(250, &["MAIL FROM:<s@x> BODY=BINARYMIME"]);
    // Pipelined: the chunks already sent get their replies; the first refusal wins,
    // even when the LAST one is accepted, and RSET follows.
    let mut d = pipelined_to_chunks();
    assert_eq!(send_chunks(&mut d, 3), 3);
    d.server(451, &[]).server(503, &[]).server(250, &["RSET"]);
    assert_eq!(d.outcome(1), ["temp"]);
    // Refused before LAST went: no more chunks; RSET once the replies are in.
    let mut d = pipelined_to_chunks();
    d.c.chunk_sent(false);
    d.c.chunk_sent(false);
    d.server(554, &[]);
    assert!(!d.c.may_send_chunk(), "no chunk after a refusal");
    d.server(250, &["RSET"]);
    assert_eq!(d.outcome(1), ["perm"]);
}

#[test]
fn text_messages_keep_data_even_with_chunking() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"]).ehlo(
        &["PIPELINING", "CHUNKING", "BINARYMIME"],
        &["MAIL FROM:<s@x>", "RCPT TO:<a>", "DATA"],
    );
}

#[test]
fn no_recipient_accepted_sends_no_chunk() {
    let mut d = pipelined_binary();
    d.server(550, &["RSET"]);
    assert_eq!(d.outcome(1), ["perm"]);
}
