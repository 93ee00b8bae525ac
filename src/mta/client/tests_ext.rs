//! Dialogs with servers that offer extensions: PIPELINING, SIZE, 8BITMIME, DSN,
//! SMTPUTF8, STARTTLS and AUTH; and those that refuse EHLO.

use super::tests::{job, Dialog};
use super::*;
use crate::mail::params::notify;

const ALL: &[&str] = &["PIPELINING", "SIZE 1000", "8BITMIME", "DSN", "SMTPUTF8"];

fn tls_facts() -> TlsFacts {
    TlsFacts {
        version: "TLSv1.3",
        cipher: "TLS_AES_256_GCM_SHA384",
        bits: 256,
        sni: None,
        subject: None,
    }
}

#[test]
fn pipelining_sends_one_batch_and_matches_replies_in_order() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a", "b", "c"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(
            &["PIPELINING"],
            &[
                "MAIL FROM:<s@x>",
                "RCPT TO:<a>",
                "RCPT TO:<b>",
                "RCPT TO:<c>",
                "DATA",
            ],
        )
        .server(250, &[])
        .server(250, &[])
        .server(550, &[])
        .server(250, &[])
        .server(354, &["<body 1>"])
        .server(250, &[]);
    assert_eq!(d.outcome(1), ["ok", "perm", "ok"]);
}

#[test]
fn pipelined_354_with_nothing_accepted_gets_a_lone_dot_then_rset() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a", "b"]))
        .push(job(2, "s@x", &["c"]));
    d.ready(1);
    d.ready(2);
    d.server(220, &["EHLO me.example"])
        .ehlo(
            &["PIPELINING"],
            &["MAIL FROM:<s@x>", "RCPT TO:<a>", "RCPT TO:<b>", "DATA"],
        )
        .server(250, &[])
        .reply(ServerReply::new(550, "5.1.1 no a"), &[])
        .reply(ServerReply::new(450, "4.2.0 b later"), &[])
        .server(354, &["."]);
    // The job is settled by the RCPT replies, not by what the lone dot gets.
    assert_eq!(d.outcome(1), ["perm", "temp"]);
    assert_eq!(d.why(1, 0), "550 5.1.1 no a");
    d.server(250, &["RSET"])
        .server(250, &["MAIL FROM:<s@x>", "RCPT TO:<c>", "DATA"]);
}

#[test]
fn pipelined_refusals_of_mail_and_data() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a", "b"]))
        .push(job(2, "t@x", &["c"]))
        .push(job(3, "u@x", &["d"]));
    for id in 1..=3 {
        d.ready(id);
    }
    d.server(220, &["EHLO me.example"])
        .ehlo(
            &["PIPELINING"],
            &["MAIL FROM:<s@x>", "RCPT TO:<a>", "RCPT TO:<b>", "DATA"],
        )
        // MAIL refused: the RCPT and DATA replies say nothing; no RSET.
        .reply(ServerReply::new(553, "5.1.8 bad sender"), &[])
        .server(503, &[])
        .server(503, &[])
        .server(503, &["MAIL FROM:<t@x>", "RCPT TO:<c>", "DATA"]);
    assert_eq!(d.outcome(1), ["perm", "perm"]);
    assert_eq!(d.why(1, 1), "553 5.1.8 bad sender");
    // DATA refused after an accepted recipient: RSET.
    d.server(250, &[])
        .server(250, &[])
        .server(451, &["RSET"])
        .server(250, &["MAIL FROM:<u@x>", "RCPT TO:<d>", "DATA"]);
    assert_eq!(d.outcome(2), ["temp"]);
}

#[test]
fn pipelined_too_many_recipients() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a", "b", "c"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(
            &["PIPELINING"],
            &[
                "MAIL FROM:<s@x>",
                "RCPT TO:<a>",
                "RCPT TO:<b>",
                "RCPT TO:<c>",
                "DATA",
            ],
        )
        .server(250, &[])
        .server(250, &[])
        .server(452, &[])
        .server(452, &[])
        .server(354, &["<body 1>"])
        .server(
            250,
            &["MAIL FROM:<s@x>", "RCPT TO:<b>", "RCPT TO:<c>", "DATA"],
        )
        .server(250, &[])
        .server(452, &[])
        .server(250, &[])
        .server(354, &["<body 1>"])
        .server(250, &[]);
    assert_eq!(d.outcome(1), ["ok", "temp", "ok"]);
}

#[test]
fn ehlo_refused_gives_helo_and_no_extension() {
    for code in [500, 502, 504, 550] {
        let mut d = Dialog::new(Proto::Smtp);
        d.push(job(1, "s@x", &["a"]));
        d.ready(1);
        d.server(220, &["EHLO me.example"])
            .server(code, &["HELO me.example"])
            // Whatever the HELO reply says, no extension is used: lock-step, no SIZE.
            .reply(ServerReply::new(250, "mx PIPELINING"), &["MAIL FROM:<s@x>"]);
        assert_eq!(d.c.caps(), &Caps::default());
        // With 8-bit content unknown and no 8BITMIME, the content was looked at first.
        assert_eq!(d.scans, [1]);
    }
    // A refused HELO, a 4yz to EHLO, or LHLO refused end the session.
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a"]));
    d.server(220, &["EHLO me.example"])
        .server(500, &["HELO me.example"])
        .server(501, &["QUIT"]);
    assert_eq!(d.outcome(1), ["temp"]);
    assert!(d.why(1, 0).starts_with("HELO: 501"));
    let mut d = Dialog::new(Proto::Smtp);
    d.server(220, &["EHLO me.example"]).server(451, &["QUIT"]);
    assert!(d.c.failed_before_mail());
    let mut d = Dialog::new(Proto::Lmtp);
    d.server(220, &["LHLO me.example"]).server(500, &["QUIT"]);
}

#[test]
fn helo_session_scans_8bit_content_and_bounces_it() {
    let mut d = Dialog::new(Proto::Smtp);
    d.auto_scan = false;
    d.push(job(1, "s@x", &["a"])).push(job(2, "s@x", &["b"]));
    d.ready(1);
    d.ready(2);
    d.server(220, &["EHLO me.example"])
        .server(502, &["HELO me.example"]);
    d.server(250, &[]);
    assert_eq!(d.scans, [1]);
    let steps = d.c.scanned(1, Ok(eight(true)));
    assert!(d.take(steps).is_empty());
    assert_eq!(d.outcome(1), ["perm"]);
    assert!(d
        .why(1, 0)
        .starts_with("554 5.6.3 conversion to 7 bit needed and not done"));
    assert!(d.logs[0].starts_with("not-sent msgid=00000001 from=<s@x> rcpts=1 result="));
    assert_eq!(d.scans, [1, 2]);
    let steps = d.c.scanned(2, Ok(eight(false)));
    assert_eq!(d.take(steps), ["MAIL FROM:<s@x>"]);
    // A scan that fails defers its job only.
    let mut d = Dialog::new(Proto::Smtp);
    d.auto_scan = false;
    d.push(job(1, "s@x", &["a"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"]).ehlo(&[], &[]);
    let steps = d.c.scanned(1, Err("read error".into()));
    d.take(steps);
    assert_eq!(d.outcome(1), ["temp"]);
}

#[test]
fn eight_bit_content_and_8bitmime() {
    // Declared 8-bit: BODY=8BITMIME when offered, no scan.
    let mut d = Dialog::new(Proto::Smtp);
    let mut j = job(1, "s@x", &["a"]);
    j.body_8bit = true;
    d.push(j.clone());
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["8BITMIME"], &["MAIL FROM:<s@x> BODY=8BITMIME"]);
    assert!(d.scans.is_empty());
    // Declared 8-bit, no 8BITMIME: bounced without a scan, nothing sent.
    let mut d = Dialog::new(Proto::Smtp);
    d.push(j);
    d.ready(1);
    d.server(220, &["EHLO me.example"]).ehlo(&["SIZE"], &[]);
    assert!(d.scans.is_empty());
    assert_eq!(d.outcome(1), ["perm"]);
    assert_eq!(
        d.why(1, 0),
        "554 5.6.3 conversion to 7 bit needed and not done: mx.test does not offer 8BITMIME"
    );
    // Not declared, 8BITMIME offered: sent without a scan, as it is.
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["8BITMIME"], &["MAIL FROM:<s@x>"]);
    assert!(d.scans.is_empty());
    // LMTP delivers locally: never scanned nor refused.
    let mut d = Dialog::new(Proto::Lmtp);
    d.push(job(1, "s@x", &["a"]));
    d.ready(1);
    d.server(220, &["LHLO me.example"])
        .ehlo(&[], &["MAIL FROM:<s@x>"]);
}

#[test]
fn size_over_the_server_limit_fails_without_mail() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a", "b"]))
        .push(job(2, "s@x", &["c"]));
    d.ready_size(1, 1001);
    d.ready_size(2, 1000);
    d.server(220, &["EHLO me.example"]).ehlo(
        ALL,
        &[
            "MAIL FROM:<s@x> SIZE=1000",
            "RCPT TO:<c> ORCPT=rfc822;c",
            "DATA",
        ],
    );
    assert_eq!(d.outcome(1), ["perm", "perm"]);
    assert_eq!(
        d.why(1, 1),
        "552 5.3.4 message too big for mx.test (limit 1000)"
    );
    assert_eq!(d.c.transactions(), 1);
    // SIZE without a limit (or 0): no limit.
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["a"]));
    d.ready_size(1, 1 << 40);
    d.server(220, &["EHLO me.example"]).ehlo(
        &["SIZE 0", "8BITMIME"],
        &["MAIL FROM:<s@x> SIZE=1099511627776"],
    );
}

fn dsn_job() -> Job {
    let mut j = job(1, "s@x", &["a@y", "b@y"]);
    j.ret = "FULL".into();
    j.envid = "env+2Bid".into();
    j.rcpts[0].notify = notify::SUCCESS | notify::FAILURE;
    j.rcpts[0].orcpt = "rfc822;A@y".into();
    j.rcpts[1].original = "B+tag@y".into();
    j
}

#[test]
fn dsn_parameters_pass_on_when_offered() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(dsn_job());
    d.ready(1);
    d.server(220, &["EHLO me.example"]).ehlo(
        ALL,
        &[
            "MAIL FROM:<s@x> SIZE=10 RET=FULL ENVID=env+2Bid",
            "RCPT TO:<a@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A@y",
            "RCPT TO:<b@y> ORCPT=rfc822;B+2Btag@y",
            "DATA",
        ],
    );
    d.server(250, &[])
        .server(250, &[])
        .server(250, &[])
        .server(354, &["<body 1>"])
        .reply(ServerReply::new(250, "2.0.0 Ok: queued as 1"), &[]);
    let done = d.done_of(1);
    assert_eq!(done.notice, SuccessNotice::PassedOn);
    assert_eq!(done.replies, ["250 2.0.0 Ok: queued as 1"; 2]);
    assert_eq!(done.server, "mx.test");
}

#[test]
fn no_dsn_means_relayed() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(dsn_job());
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["8BITMIME"], &["MAIL FROM:<s@x>"]);
    d.server(250, &["RCPT TO:<a@y>"])
        .server(250, &["RCPT TO:<b@y>"])
        .server(550, &["DATA"])
        .server(354, &["<body 1>"])
        .server(250, &[]);
    let done = d.done_of(1);
    assert_eq!(done.notice, SuccessNotice::Relayed);
    assert_eq!(done.replies, ["250 x", ""]);
}

#[test]
fn smtputf8_addresses() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["j\u{f6}rg@y"]))
        .push(job(2, "s@x", &["a@y"]));
    d.ready(1);
    d.ready(2);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["8BITMIME"], &["MAIL FROM:<s@x>"]);
    assert_eq!(d.outcome(1), ["perm"]);
    assert!(d.why(1, 0).starts_with("553 5.6.7"));
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(1, "s@x", &["j\u{f6}rg@y"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["8BITMIME", "SMTPUTF8"], &["MAIL FROM:<s@x> SMTPUTF8"]);
}

fn eight(b: bool) -> Content {
    Content {
        eight_bit: b,
        utf8_header: false,
    }
}

fn utf8_job(id: u64) -> Job {
    let mut j = job(id, "s@x", &["a@y"]);
    j.smtputf8 = true;
    j
}

#[test]
fn a_message_received_with_smtputf8_is_not_downgraded() {
    // To a server without SMTPUTF8: UTF-8 headers bounce with 5.6.7, without MAIL;
    // an ASCII header section goes (as 8-bit content, the body's business).
    let mut d = Dialog::new(Proto::Smtp);
    d.auto_scan = false;
    d.push(utf8_job(1)).push(utf8_job(2));
    d.ready(1);
    d.ready(2);
    d.server(220, &["EHLO me.example"]).ehlo(&["8BITMIME"], &[]);
    assert_eq!(d.scans, [1]);
    let head = Content {
        eight_bit: true,
        utf8_header: true,
    };
    let steps = d.c.scanned(1, Ok(head));
    assert!(d.take(steps).is_empty());
    assert_eq!(d.outcome(1), ["perm"]);
    assert!(
        d.why(1, 0).starts_with("553 5.6.7 UTF-8 header"),
        "{}",
        d.why(1, 0)
    );
    assert_eq!(d.scans, [1, 2]);
    let steps = d.c.scanned(2, Ok(eight(true)));
    assert_eq!(d.take(steps), ["MAIL FROM:<s@x> BODY=8BITMIME"]);
    // To a server with it: SMTPUTF8 on MAIL, nothing scanned.
    let mut d = Dialog::new(Proto::Smtp);
    d.auto_scan = false;
    d.push(utf8_job(1));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["8BITMIME", "SMTPUTF8"], &["MAIL FROM:<s@x> SMTPUTF8"]);
    assert!(d.scans.is_empty());
    // LMTP delivers the header section intact.
    let mut d = Dialog::new(Proto::Lmtp);
    d.auto_scan = false;
    d.push(utf8_job(1));
    d.ready(1);
    d.server(220, &["LHLO me.example"])
        .ehlo(&["8BITMIME"], &["MAIL FROM:<s@x>"]);
    assert!(d.scans.is_empty());
}

fn tls_opts(tls: TlsMode, auth: bool) -> ClientOpts {
    ClientOpts {
        tls,
        auth: auth.then(|| ("bob".to_string(), "s3cret".to_string())),
        tls_on_connect: false,
    }
}

#[test]
fn starttls_then_ehlo_again() {
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Opportunistic, false));
    d.push(job(1, "s@x", &["a"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["STARTTLS", "PIPELINING"], &["STARTTLS"])
        .server(220, &[]);
    assert!(d.starttls);
    let steps = d.c.tls_done(Ok(tls_facts()));
    assert_eq!(d.take(steps), ["EHLO me.example"]);
    assert_eq!(
        d.c.caps(),
        &Caps::default(),
        "the old EHLO reply is forgotten"
    );
    // STARTTLS is not offered again; mail follows.
    d.ehlo(&["8BITMIME"], &["MAIL FROM:<s@x>"]);
    assert_eq!(d.c.tls().map(|t| t.version), Some("TLSv1.3"));
}

#[test]
fn starttls_refused_or_absent() {
    // Opportunistic: plain text then.
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Opportunistic, false));
    d.push(job(1, "s@x", &["a"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["STARTTLS", "8BITMIME"], &["STARTTLS"])
        .server(454, &["MAIL FROM:<s@x>"]);
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Opportunistic, false));
    d.server(220, &["EHLO me.example"]).ehlo(&["8BITMIME"], &[]);
    // Required: deferred.
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Required, false));
    d.push(job(1, "s@x", &["a"]));
    d.server(220, &["EHLO me.example"])
        .ehlo(&["8BITMIME"], &["QUIT"]);
    assert_eq!(d.why(1, 0), "4.7.4 TLS not offered by mx.test");
    assert!(d.c.failed_before_mail());
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Required, false));
    d.push(job(1, "s@x", &["a"]));
    d.server(220, &["EHLO me.example"])
        .ehlo(&["STARTTLS"], &["STARTTLS"])
        .server(454, &["QUIT"]);
    assert_eq!(d.outcome(1), ["temp"]);
    // A handshake that fails ends the session at once.
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Opportunistic, false));
    d.push(job(1, "s@x", &["a"]));
    d.server(220, &["EHLO me.example"])
        .ehlo(&["STARTTLS"], &["STARTTLS"])
        .server(220, &[]);
    let steps = d.c.tls_done(Err("bad certificate".into()));
    assert!(d.take(steps).is_empty());
    assert!(d.closed);
    assert_eq!(
        d.why(1, 0),
        "4.7.5 TLS with mx.test failed: bad certificate"
    );
}

#[test]
fn tls_on_connect_waits_for_the_handshake() {
    let mut opts = tls_opts(TlsMode::Off, true);
    opts.tls_on_connect = true;
    let mut d = Dialog::with(Proto::Smtp, opts);
    let steps = d.c.tls_done(Ok(tls_facts()));
    assert!(d.take(steps).is_empty());
    d.server(220, &["EHLO me.example"]).ehlo(
        &["AUTH PLAIN"],
        &["AUTH PLAIN (hidden) [AUTH PLAIN AGJvYgBzM2NyZXQ=]"],
    );
}

#[test]
fn auth_plain_preferred_login_otherwise() {
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Required, true));
    d.push(job(1, "s@x", &["a"]));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["STARTTLS", "AUTH LOGIN PLAIN"], &["STARTTLS"])
        .server(220, &[]);
    let steps = d.c.tls_done(Ok(tls_facts()));
    d.take(steps);
    d.ehlo(
        &["AUTH LOGIN PLAIN", "8BITMIME"],
        &["AUTH PLAIN (hidden) [AUTH PLAIN AGJvYgBzM2NyZXQ=]"],
    )
    .server(235, &["MAIL FROM:<s@x>"]);
    // LOGIN: user name and password after each prompt.
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Required, true));
    d.server(220, &["EHLO me.example"])
        .ehlo(&["STARTTLS"], &["STARTTLS"])
        .server(220, &[]);
    let steps = d.c.tls_done(Ok(tls_facts()));
    d.take(steps);
    d.ehlo(&["AUTH=LOGIN"], &["AUTH LOGIN"])
        .server(334, &["(hidden) [Ym9i]"])
        .server(334, &["(hidden) [czNjcmV0]"])
        .server(235, &[]);
    assert!(!d.c.done());
}

#[test]
fn auth_failures_defer() {
    let start = |d: &mut Dialog, keywords: &[&str], expect: &[&str]| {
        d.push(job(1, "s@x", &["a"]));
        d.server(220, &["EHLO me.example"])
            .ehlo(&["STARTTLS"], &["STARTTLS"])
            .server(220, &[]);
        let steps = d.c.tls_done(Ok(tls_facts()));
        d.take(steps);
        d.ehlo(keywords, expect);
    };
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Required, true));
    start(
        &mut d,
        &["AUTH PLAIN"],
        &["AUTH PLAIN (hidden) [AUTH PLAIN AGJvYgBzM2NyZXQ=]"],
    );
    d.reply(
        ServerReply::new(535, "5.7.8 authentication failed"),
        &["QUIT"],
    );
    assert_eq!(d.outcome(1), ["temp"]);
    assert_eq!(d.why(1, 0), "AUTH: 535 5.7.8 authentication failed");
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Required, true));
    start(&mut d, &["AUTH CRAM-MD5"], &["QUIT"]);
    assert_eq!(d.why(1, 0), "4.7.0 mx.test offers no AUTH PLAIN or LOGIN");
    // Credentials without TLS: never sent.
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Off, true));
    d.push(job(1, "s@x", &["a"]));
    d.server(220, &["EHLO me.example"])
        .ehlo(&["AUTH PLAIN", "STARTTLS"], &["QUIT"]);
    assert!(d.why(1, 0).contains("only over TLS"));
}

#[test]
fn credentials_never_show() {
    let opts = tls_opts(TlsMode::Required, true);
    let c = Client::new(Proto::Smtp, "me", opts.clone());
    let shown = format!("{opts:?} {c:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    let step = Step::SendSecret {
        line: crate::mail::auth::Secret::new(b"AUTH PLAIN AGJvYgBzM2NyZXQ=".to_vec()),
        shown: "AUTH PLAIN (hidden)",
    };
    let shown = format!("{step:?}");
    assert!(!shown.contains("AGJvYgBzM2NyZXQ"), "{shown}");
}

#[test]
fn limits_split_recipients_and_end_the_session_at_mailmax() {
    let mut d = Dialog::new(Proto::Smtp);
    d.push(job(
        1,
        "s@x",
        &["a@one", "b@two", "c@one", "d@three", "e@one"],
    ))
    .push(job(2, "s@x", &["f@one"]));
    d.ready(1);
    d.ready(2);
    // At most 3 recipients and 2 domains per transaction, 2 transactions a session.
    d.server(220, &["EHLO me.example"])
        .ehlo(
            &["LIMITS RCPTMAX=3 RCPTDOMAINMAX=2 MAILMAX=2"],
            &["MAIL FROM:<s@x>"],
        )
        .server(250, &["RCPT TO:<a@one>"])
        .server(250, &["RCPT TO:<b@two>"])
        .server(250, &["RCPT TO:<c@one>"])
        .server(250, &["DATA"])
        .server(354, &["<body 1>"])
        // d@three and e@one follow in a second transaction of the same job.
        .server(250, &["MAIL FROM:<s@x>"])
        .server(250, &["RCPT TO:<d@three>"])
        .server(250, &["RCPT TO:<e@one>"])
        .server(250, &["DATA"])
        .server(354, &["<body 1>"])
        // MAILMAX reached: the second job waits for another session.
        .server(250, &["QUIT"]);
    assert_eq!(d.outcome(1), ["ok", "ok", "ok", "ok", "ok"]);
    assert_eq!(d.outcome(2), ["temp"]);
    assert!(d.why(2, 0).contains("LIMITS MAILMAX"), "{}", d.why(2, 0));
}

#[test]
fn requiretls_needs_verified_tls_and_the_extension() {
    let rt = |id| Job {
        requiretls: true,
        ..job(id, "s@x", &["a"])
    };
    // No TLS at all: nothing is sent, the recipient fails for good.
    let mut d = Dialog::new(Proto::Smtp);
    d.push(rt(1)).push(job(2, "s@x", &["b"]));
    d.ready(1);
    d.ready(2);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["8BITMIME", "REQUIRETLS"], &["MAIL FROM:<s@x>"]);
    assert_eq!(d.outcome(1), ["perm"]);
    assert!(d
        .why(1, 0)
        .starts_with("550 5.7.30 REQUIRETLS: no verified TLS"));
    // TLS that was not verified: the same.
    let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Opportunistic, false));
    d.push(rt(1));
    d.ready(1);
    d.server(220, &["EHLO me.example"])
        .ehlo(&["STARTTLS"], &["STARTTLS"])
        .server(220, &[]);
    let steps = d.c.tls_done(Ok(tls_facts()));
    d.take(steps);
    d.ehlo(&["REQUIRETLS"], &[]);
    assert!(d
        .why(1, 0)
        .starts_with("550 5.7.30 REQUIRETLS: no verified TLS"));
    // Verified, without the extension: refused; with it: MAIL carries it.
    for (kw, want) in [
        ("8BITMIME", None),
        ("REQUIRETLS", Some("MAIL FROM:<s@x> REQUIRETLS")),
    ] {
        let mut d = Dialog::with(Proto::Smtp, tls_opts(TlsMode::Opportunistic, false));
        d.push(rt(1));
        d.ready(1);
        d.server(220, &["EHLO me.example"])
            .ehlo(&["STARTTLS"], &["STARTTLS"])
            .server(220, &[]);
        d.c.tls_verified(true);
        let steps = d.c.tls_done(Ok(tls_facts()));
        d.take(steps);
        match want {
            Some(mail) => {
                d.ehlo(&[kw], &[mail]);
            }
            None => {
                d.ehlo(&[kw], &[]);
                assert!(
                    d.why(1, 0).contains("does not offer REQUIRETLS"),
                    "{}",
                    d.why(1, 0)
                );
            }
        }
    }
}
