//! Tests of `bounce.rs`.

use super::*;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

const PYTHON: &str = "/usr/bin/python3";

const ORIGINAL: &str = "Received: from client.example.org (client.example.org [192.0.2.1])\n\
        \tby mx.example.net with ESMTP id 1a2b3c4d\n\
        From: Alice <alice@example.org>\n\
        To: bob@example.net\n\
        Subject: lunch on friday\n\
        Message-ID: <m1@example.org>\n\
        \n\
        Shall we meet at noon?\n\
        Faked-Header: this is body text\n\
        \n\
        -- \n\
        Alice\n";

fn report(rcpt: &str, status: &str, diag: &str) -> RcptReport {
    RcptReport {
        rcpt: rcpt.to_string(),
        orcpt: String::new(),
        status: status.to_string(),
        diagnostic: diag.to_string(),
        last_attempt: "Tue, 14 Nov 2023 22:13:20 +0000".to_string(),
        will_retry_until: None,
        remote_mta: String::new(),
    }
}

fn dsn<'a>(kind: DsnKind, rcpts: &'a [RcptReport], ret_full: bool) -> Dsn<'a> {
    Dsn {
        kind,
        reporting_mta: "mx.example.net",
        from_host: "mx.example.net",
        to: "alice@example.org",
        date: "Wed, 15 Nov 2023 10:00:00 +0000",
        message_id: "dsn.1a2b3c4d@mx.example.net",
        boundary: "1a2b3c4d/mx.example.net",
        envid: "",
        arrival_date: "Tue, 14 Nov 2023 22:13:20 +0000",
        ret_full,
        rcpts,
    }
}

fn run(d: &Dsn, original: &str, max_body: usize) -> String {
    let mut rd = original.as_bytes();
    let out = render(d, &mut rd, max_body).unwrap();
    String::from_utf8(out).unwrap()
}

/// Structure checks shared by every Python run; `blocks` holds the parsed
/// delivery-status blocks, `third` the third part.
const PRELUDE: &str = r#"
import sys, email, email.policy
raw = open(sys.argv[1], 'rb').read()
assert b'\r' not in raw, 'CR in output'
m = email.message_from_bytes(raw, policy=email.policy.default)
assert m.is_multipart(), 'not multipart'
assert m.get_content_type() == 'multipart/report', m.get_content_type()
assert m.get_param('report-type') == 'delivery-status', m.get_param('report-type')
assert m['Auto-Submitted'] == 'auto-replied'
assert m['MIME-Version'] == '1.0'
assert str(m['From']).endswith('<MAILER-DAEMON@mx.example.net>'), m['From']
parts = m.get_payload()
assert len(parts) == 3, len(parts)
assert parts[0].get_content_type() == 'text/plain', parts[0].get_content_type()
assert parts[1].get_content_type() == 'message/delivery-status', parts[1].get_content_type()
blocks = parts[1].get_payload()
assert len(blocks) >= 2, blocks
assert blocks[0]['Reporting-MTA'].startswith('dns; mx.example.net'), blocks[0]['Reporting-MTA']
for b in blocks[1:]:
    assert b['Final-Recipient'].startswith('rfc822; '), b['Final-Recipient']
    assert b['Action'] in ('failed', 'delayed', 'delivered', 'relayed'), b['Action']
    assert len(b['Status'].split('.')) == 3, b['Status']
third = parts[2]
for p in m.walk():
    assert not p.defects, (p.get_content_type(), p.defects)
"#;

/// Parses `msg` with Python's email package and runs `checks` after [`PRELUDE`].
/// Skipped when Python is not installed.
fn python_check(msg: &str, checks: &str) {
    if !Path::new(PYTHON).exists() {
        eprintln!("{PYTHON} missing: skipping the MIME structure check");
        return;
    }
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "smtpd-bounce-test-{}-{}.eml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, msg).unwrap();
    let script = format!("{PRELUDE}\n{checks}");
    let res = Command::new(PYTHON)
        .arg("-c")
        .arg(&script)
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(
        res.status.success(),
        "python check failed:\n{}\n--- message ---\n{msg}",
        String::from_utf8_lossy(&res.stderr)
    );
}

fn lines_ok(msg: &str) {
    assert!(msg.ends_with('\n'));
    for line in msg.lines() {
        assert!(line.len() <= 998, "long line {line:?}");
    }
}

#[test]
fn status_codes() {
    assert_eq!(status_of("550 5.1.1 mailbox unknown", true), "5.1.1");
    assert_eq!(status_of("550-5.1.1 mailbox unknown", true), "5.1.1");
    assert_eq!(status_of("  452 4.2.2 over quota", true), "4.2.2");
    assert_eq!(status_of("5.7.1 refused", false), "5.7.1");
    assert_eq!(status_of("550 4.2.2 confused server", false), "5.2.2");
    assert_eq!(status_of("550 5.01.010 padded", true), "5.1.10");
    assert_eq!(status_of("554 no enhanced code", false), "5.0.0");
    assert_eq!(status_of("421 closing", true), "4.0.0");
    assert_eq!(status_of("250", true), "2.0.0");
    assert_eq!(status_of("250 2.0.0 Ok", true), "2.0.0");
    assert_eq!(status_of("mda exited with status 75", false), "4.0.0");
    assert_eq!(status_of("mda exited with status 75", true), "5.0.0");
    assert_eq!(status_of("", true), "5.0.0");
    assert_eq!(status_of("", false), "4.0.0");
    // Not codes.
    assert_eq!(status_of("5500 5.1.1 x", true), "5.0.0");
    assert_eq!(status_of("550 5.1 x", false), "5.0.0");
    assert_eq!(status_of("550 3.1.1 x", false), "5.0.0");
    assert_eq!(status_of("550 5.1.1234 x", false), "5.0.0");
    assert_eq!(status_of("650 5.1.1 x", false), "4.0.0");
}

#[test]
fn diagnostics_and_helpers() {
    assert_eq!(diagnostic_of(""), "");
    assert_eq!(
        diagnostic_of("550 5.1.1 mailbox unknown"),
        "smtp; 550 5.1.1 mailbox unknown"
    );
    assert_eq!(diagnostic_of("no such user"), "x-unix; no such user");
    assert!(return_full(DsnKind::Failed, "FULL"));
    assert!(return_full(DsnKind::Failed, ""));
    assert!(!return_full(DsnKind::Failed, "hdrs"));
    assert!(!return_full(DsnKind::Delayed, "FULL"));
    assert!(!return_full(DsnKind::Delivered, ""));
    assert_eq!(xtext_decode("a+2Bb+3D+zz+4"), b"a+b=+zz+4");
    assert_eq!(status_or_default("garbage", DsnKind::Delayed), "4.0.0");
}

#[test]
fn report_from_envelope() {
    let env = Envelope {
        rcpt: "bob@example.net".into(),
        dsn_orcpt: "rfc822;bob+40example.net".into(),
        errorline: "550 5.1.1 mailbox unknown".into(),
        ..Envelope::default()
    };
    let r = RcptReport::from_envelope(&env, DsnKind::Failed, "d1", Some("d2"));
    assert_eq!(r.status, "5.1.1");
    assert_eq!(r.diagnostic, "smtp; 550 5.1.1 mailbox unknown");
    assert_eq!(r.orcpt, "rfc822;bob+40example.net");
    assert_eq!(r.will_retry_until, None);
    let env = Envelope {
        errorline: "connection timed out".into(),
        ..env
    };
    let r = RcptReport::from_envelope(&env, DsnKind::Delayed, "d1", Some("d2"));
    assert_eq!(r.status, "4.0.0");
    assert_eq!(r.diagnostic, "x-unix; connection timed out");
    assert_eq!(r.will_retry_until.as_deref(), Some("d2"));
    let r = RcptReport::from_envelope(&env, DsnKind::Delivered, "d1", None);
    assert_eq!(r.status, "2.0.0");
}

#[test]
fn failed_full() {
    let mut r1 = report(
        "bob@example.net",
        "5.1.1",
        "smtp; 550 5.1.1 <bob@example.net>: mailbox unknown",
    );
    r1.orcpt = "rfc822;Bob+2BTag@example.net".into();
    let r2 = report("carol@example.net", "5.2.2", "452 4.2.2 over quota");
    let rcpts = [r1, r2];
    let mut d = dsn(DsnKind::Failed, &rcpts, true);
    d.envid = "QQ+2B314159";
    let msg = run(&d, ORIGINAL, 1 << 20);
    lines_ok(&msg);
    assert!(msg.starts_with("From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\n"));
    assert!(msg.contains("\nTo: <alice@example.org>\n"));
    assert!(msg.contains("\nSubject: Undelivered Mail Returned to Sender\n"));
    assert!(msg.contains("\nMessage-ID: <dsn.1a2b3c4d@mx.example.net>\n"));
    assert!(msg.contains("\nOriginal-Envelope-Id: QQ+314159\n"));
    assert!(msg.contains("\nOriginal-Recipient: rfc822;Bob+Tag@example.net\n"));
    assert!(msg.contains("\nDiagnostic-Code: smtp; 452 4.2.2 over quota\n"));
    assert!(msg.contains("\nShall we meet at noon?\n"));
    assert!(msg.contains("  <carol@example.net>\n      status 5.2.2: 452 4.2.2 over quota\n"));
    python_check(
        &msg,
        r#"
assert m['Subject'] == 'Undelivered Mail Returned to Sender'
assert m['To'].addresses[0].addr_spec == 'alice@example.org', m['To']
assert blocks[0]['Original-Envelope-Id'] == 'QQ+314159'
assert blocks[0]['Arrival-Date'] == 'Tue, 14 Nov 2023 22:13:20 +0000'
assert len(blocks) == 3, len(blocks)
b = blocks[1]
assert b['Original-Recipient'] == 'rfc822;Bob+Tag@example.net', b['Original-Recipient']
assert b['Final-Recipient'] == 'rfc822; bob@example.net'
assert b['Action'] == 'failed'
assert b['Status'] == '5.1.1'
assert b['Diagnostic-Code'] == 'smtp; 550 5.1.1 <bob@example.net>: mailbox unknown', b['Diagnostic-Code']
assert b['Last-Attempt-Date'] == 'Tue, 14 Nov 2023 22:13:20 +0000'
assert b['Will-Retry-Until'] is None
c = blocks[2]
assert c['Final-Recipient'] == 'rfc822; carol@example.net'
assert c['Original-Recipient'] is None
assert c['Status'] == '5.2.2'
assert third.get_content_type() == 'message/rfc822', third.get_content_type()
inner = third.get_payload()[0]
assert inner['Subject'] == 'lunch on friday'
assert 'Shall we meet at noon?' in inner.get_content()
text = parts[0].get_content()
assert 'bob@example.net' in text and 'carol@example.net' in text
"#,
    );
}

#[test]
fn delayed_headers_only() {
    let mut r = report("bob@example.net", "4.4.1", "x-unix; connection refused");
    r.will_retry_until = Some("Fri, 17 Nov 2023 22:13:20 +0000".into());
    let rcpts = [r];
    let d = dsn(DsnKind::Delayed, &rcpts, false);
    let msg = run(&d, ORIGINAL, 1 << 20);
    lines_ok(&msg);
    assert!(msg.contains("\nSubject: Delayed Mail (still being retried)\n"));
    assert!(msg.contains("\nWill-Retry-Until: Fri, 17 Nov 2023 22:13:20 +0000\n"));
    assert!(!msg.contains("Original-Envelope-Id"));
    assert!(!msg.contains("noon"));
    python_check(
        &msg,
        r#"
assert m['Subject'] == 'Delayed Mail (still being retried)'
assert len(blocks) == 2
b = blocks[1]
assert b['Action'] == 'delayed'
assert b['Status'] == '4.4.1'
assert b['Will-Retry-Until'] == 'Fri, 17 Nov 2023 22:13:20 +0000'
assert b['Diagnostic-Code'] == 'x-unix; connection refused'
assert third.get_content_type() == 'text/rfc822-headers', third.get_content_type()
h = third.get_content()
assert 'Subject: lunch on friday' in h
assert 'noon' not in h and 'Faked-Header' not in h
"#,
    );
}

#[test]
fn delivered() {
    let mut r = report("bob@example.net", "2.0.0", "");
    r.will_retry_until = Some("ignored for this kind".into());
    let rcpts = [r];
    let d = dsn(DsnKind::Delivered, &rcpts, false);
    let msg = run(&d, ORIGINAL, 1 << 20);
    lines_ok(&msg);
    assert!(!msg.contains("Will-Retry-Until"));
    assert!(!msg.contains("Diagnostic-Code"));
    python_check(
        &msg,
        r#"
assert m['Subject'] == 'Successful Mail Delivery Report'
b = blocks[1]
assert b['Action'] == 'delivered'
assert b['Status'] == '2.0.0'
assert b['Diagnostic-Code'] is None
assert third.get_content_type() == 'text/rfc822-headers'
"#,
    );
}

#[test]
fn relayed_names_the_server_for_every_recipient() {
    let mut r1 = report(
        "bob@example.net",
        "2.0.0",
        "smtp; 250 2.0.0 Ok: queued as 1",
    );
    r1.remote_mta = "mx.example.com".into();
    let mut r2 = report(
        "carol@example.net",
        "2.0.0",
        "smtp; 250 2.0.0 Ok: queued as 1",
    );
    r2.remote_mta = "mx.example.com\nX-Injected: 1".into();
    let rcpts = [r1, r2];
    let d = dsn(DsnKind::Relayed, &rcpts, false);
    let msg = run(&d, ORIGINAL, 1 << 20);
    lines_ok(&msg);
    assert!(msg.contains("handed to mx.example.com"), "{msg}");
    assert!(!msg.contains("X-Injected: 1"));
    python_check(
        &msg,
        r#"
assert m['Subject'] == 'Relayed Mail Report'
assert len(blocks) == 3
for b in blocks[1:]:
    assert b['Action'] == 'relayed'
    assert b['Status'] == '2.0.0'
    assert b['Remote-MTA'].startswith('dns; mx.example.com')
    assert b['Diagnostic-Code'] == 'smtp; 250 2.0.0 Ok: queued as 1'
assert blocks[2]['Final-Recipient'] == 'rfc822; carol@example.net'
assert third.get_content_type() == 'text/rfc822-headers'
"#,
    );
}

#[test]
fn header_injection() {
    let mut r = report(
        "bob@example.net\r\nX-Injected: 1",
        "5.1.1\nX-Status: 9",
        "smtp; 550 5.1.1 gone\r\nX-Diag: 2",
    );
    r.orcpt = "rfc822;bob+0D+0AX-Orcpt:+201".into();
    r.last_attempt = "today\nX-Date: 3".into();
    r.will_retry_until = Some("later\nX-Until: 4".into());
    let rcpts = [r];
    let mut d = dsn(DsnKind::Delayed, &rcpts, true);
    d.to = "alice@example.org\nBcc: x@example.com";
    d.envid = "id+0A+0AX-Envid:+201";
    d.date = "now\r\nX-Top: 5";
    d.message_id = "id@host>\nX-Msgid: 6";
    d.from_host = "mx\n.example.net";
    d.reporting_mta = "mx.example.net\nX-Mta: 7";
    d.arrival_date = "then\n\nX-Arrival: 8";
    let msg = run(&d, ORIGINAL, 1 << 20);
    lines_ok(&msg);
    for line in msg.lines() {
        let l = line.to_ascii_lowercase();
        assert!(
            !l.starts_with("bcc:") && !l.starts_with("x-"),
            "injected line {line:?}"
        );
    }
    assert!(msg.contains("\nTo: <alice@example.org Bcc: x@example.com>\n"));
    assert!(msg.contains("\nOriginal-Recipient: rfc822;bob+0D+0AX-Orcpt: 1\n"));
    assert!(msg.contains("\nFinal-Recipient: rfc822; bob@example.net+0D+0AX-Injected: 1\n"));
    // A malformed status falls back to the default for the kind.
    assert!(msg.contains("\nStatus: 4.0.0\n"));
    python_check(
        &msg,
        r#"
assert m['Bcc'] is None
assert m['X-Top'] is None and m['X-Msgid'] is None
assert len(blocks) == 2, len(blocks)
for b in blocks:
    for k in b.keys():
        assert not k.lower().startswith('x-'), k
"#,
    );
}

#[test]
fn hdrs_cuts_at_first_empty_line() {
    let rcpts = [report("bob@example.net", "5.1.1", "")];
    let d = dsn(DsnKind::Failed, &rcpts, false);
    let msg = run(&d, ORIGINAL, 1 << 20);
    let head_end = ORIGINAL.find("\n\n").unwrap() + 1;
    let expected = format!(
            "Content-Type: text/rfc822-headers\nContent-Description: Original message headers\n\n{}\n--",
            &ORIGINAL[..head_end]
        );
    assert!(msg.contains(&expected), "{msg}");
    assert!(!msg.contains("noon") && !msg.contains("Faked-Header"));

    // The same cut through the reader directly, including its edge cases.
    let cut = |s: &str, full: bool, max: usize| {
        let mut rd = s.as_bytes();
        let (v, all) = read_original(&mut rd, full, max).unwrap();
        (String::from_utf8(v).unwrap(), all)
    };
    assert_eq!(
        cut("A: 1\nB: 2\n\nbody\n", false, 100),
        ("A: 1\nB: 2\n".into(), false)
    );
    assert_eq!(
        cut("A: 1\nB: 2\n", false, 100),
        ("A: 1\nB: 2\n".into(), false)
    );
    assert_eq!(cut("A: 1\nB: 2", false, 100), ("A: 1\nB: 2".into(), false));
    assert_eq!(cut("\nbody\n", false, 100), (String::new(), false));
    assert_eq!(cut("", false, 100), (String::new(), false));
    // Over the limit: the blank line lies beyond what was read at first.
    assert_eq!(
        cut("A: 1\nB: 2\n\nbody\n", true, 3),
        ("A: 1\nB: 2\n".into(), false)
    );
    assert_eq!(
        cut("A: 1\nB: 2\n\nbody\n", true, 9),
        ("A: 1\nB: 2\n".into(), false)
    );
    assert_eq!(
        cut("A: 1\nB: 2\n\nbody\n", true, 10),
        ("A: 1\nB: 2\n".into(), false)
    );
    assert_eq!(
        cut("A: 1\nB: 2\n\nbody\n", true, 11),
        ("A: 1\nB: 2\n".into(), false)
    );
    assert_eq!(
        cut("A: 1\nB: 2\n\nbody\n", true, 15),
        ("A: 1\nB: 2\n".into(), false)
    );
    assert_eq!(
        cut("A: 1\nB: 2\n\nbody\n", true, 16),
        ("A: 1\nB: 2\n\nbody\n".into(), true)
    );
}

#[test]
fn max_body_fallback() {
    let rcpts = [report("bob@example.net", "5.1.1", "smtp; 550 5.1.1 gone")];
    let d = dsn(DsnKind::Failed, &rcpts, true);

    let msg = run(&d, ORIGINAL, ORIGINAL.len());
    assert!(msg.contains("Content-Type: message/rfc822\n"));
    assert!(msg.contains("noon"));

    let msg = run(&d, ORIGINAL, ORIGINAL.len() - 1);
    lines_ok(&msg);
    assert!(msg.contains("Content-Type: text/rfc822-headers\n"));
    assert!(msg.contains("too large"));
    assert!(!msg.contains("noon"));
    python_check(
        &msg,
        r#"
assert third.get_content_type() == 'text/rfc822-headers'
h = third.get_content()
assert 'Message-ID: <m1@example.org>' in h and 'noon' not in h
assert 'too large' in parts[0].get_content()
"#,
    );

    let msg = run(&d, ORIGINAL, 0);
    assert!(msg.contains("Content-Type: text/rfc822-headers\n"));
    assert!(msg.contains("Subject: lunch on friday\n"));
}

#[test]
fn boundary_collision_and_8bit() {
    let original = "Received: from x by y\nSubject: caf\u{e9}\n\n--b\n--b=1 also\nend\n";
    let rcpts = [report("j\u{f6}rg@example.net", "5.1.1", "")];
    let mut d = dsn(DsnKind::Failed, &rcpts, true);
    d.boundary = "b";
    let msg = run(&d, original, 1 << 20);
    assert!(msg.contains("boundary=\"b=2\""), "{msg}");
    assert!(msg.contains("\nContent-Transfer-Encoding: 8bit\n"));
    assert!(msg.contains("\nFinal-Recipient: rfc822; j+C3+B6rg@example.net\n"));
    assert!(msg.contains("text/plain; charset=utf-8"));
    python_check(
        &msg,
        r#"
assert third.get_content_type() == 'message/rfc822'
body = third.get_payload()[0].get_payload()
assert '--b\n--b=1 also\nend' in body, repr(body)
"#,
    );

    // An unusable boundary is replaced.
    let rcpts = [report("bob@example.net", "5.1.1", "")];
    let mut d = dsn(DsnKind::Failed, &rcpts, false);
    d.boundary = "\"\n";
    let msg = run(&d, ORIGINAL, 1 << 20);
    assert!(msg.contains("boundary=\"dsn-report-boundary\""));
    assert!(msg.is_ascii());
    assert!(!msg.contains("Content-Transfer-Encoding"));
}

#[test]
fn long_values_are_folded() {
    let long = format!("smtp; 550 5.7.1 {}", "policy rejection text ".repeat(60));
    let rcpts = [report("bob@example.net", "5.7.1", &long)];
    let d = dsn(DsnKind::Failed, &rcpts, false);
    let msg = run(&d, ORIGINAL, 1 << 20);
    lines_ok(&msg);
    let ds_start = msg.find("Content-Type: message/delivery-status").unwrap();
    let ds_end = msg[ds_start..].find("\n--").unwrap() + ds_start;
    for line in msg[ds_start..ds_end].lines() {
        assert!(line.len() <= FOLD_WIDTH, "{line:?}");
    }
    python_check(
        &msg,
        r#"
d = blocks[1]['Diagnostic-Code']
assert d.startswith('smtp; 550 5.7.1 policy rejection text'), d
"#,
    );
}

#[test]
fn refuses_null_sender_and_no_recipients() {
    let rcpts = [report("bob@example.net", "5.1.1", "")];
    let mut d = dsn(DsnKind::Failed, &rcpts, true);
    d.to = "";
    let err = render(&d, &mut ORIGINAL.as_bytes(), 1 << 20).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let d = dsn(DsnKind::Failed, &[], true);
    let err = render(&d, &mut ORIGINAL.as_bytes(), 1 << 20).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
}
