//! Dialogs of SMTP AUTH (`auth.rs`).

use super::super::tests::Dialog;
use super::*;
use crate::lookup::Lookup;
use crate::mail::auth::AuthResult::{Ok as Good, PermFail, TempFail};
use crate::smtp::sasl::encode;

/// A dialog on a listener with `mode` (credentials table 4, senders table 5 when
/// `senders`), with TLS active or not, after EHLO.
fn dialog(mode: AuthMode, tls: bool, senders: bool) -> Dialog {
    let mut d = Dialog::new();
    d.s.set_auth(ListenerAuth {
        mode,
        table: Some(4),
        senders: senders.then_some(5),
        masquerade: true,
        received_auth: true,
    });
    if tls {
        protect(&mut d.s);
    }
    d.client("EHLO c").expect("250-mx.example.org");
    d
}

/// Marks the session as protected by TLS, as an smtps handshake does.
fn protect(s: &mut Session) {
    s.on_tls(crate::mail::TlsFacts {
        version: "TLSv1.3",
        cipher: "TLS_AES_256_GCM_SHA384",
        bits: 256,
        sni: None,
        subject: None,
    });
}

fn plain(authzid: &str, user: &str, password: &[u8]) -> String {
    let mut m = format!("{authzid}\0{user}\0").into_bytes();
    m.extend_from_slice(password);
    encode(&m)
}

/// The EHLO reply as on the wire.
fn ehlo(d: &mut Dialog) -> String {
    d.client("EHLO c");
    let mut w = Vec::new();
    match d.out.first() {
        Some(Action::Reply(r)) => r.render(&mut w),
        other => panic!("{other:?}"),
    }
    d.out.clear();
    String::from_utf8_lossy(&w).into_owned()
}

/// Authenticates as bob with PLAIN.
fn login(d: &mut Dialog) {
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"pw")))
        .expect_nothing();
    d.auth_answer(Good).expect("235 2.7.0");
}

#[test]
fn offered_and_accepted_only_with_tls() {
    let mut d = dialog(AuthMode::Required, false, false);
    assert!(!ehlo(&mut d).contains("AUTH"));
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"pw")))
        .expect("538 5.7.11");
    d.client("AUTH LOGIN").expect("538 5.7.11");
    // Unknown mechanisms are told apart first.
    d.client("AUTH CRAM-MD5").expect("504 5.5.4");
    d.client("MAIL FROM:<a@b.c>").expect("530 5.7.0");
    assert!(d.auths.is_empty());
    protect(&mut d.s);
    let text = ehlo(&mut d);
    assert!(
        text.contains("250-AUTH PLAIN LOGIN\r\n250 HELP\r\n"),
        "{text}"
    );
    login(&mut d);
    assert!(!ehlo(&mut d).contains("AUTH"));
}

#[test]
fn not_offered_without_auth_on_the_listener() {
    let mut d = dialog(AuthMode::Off, true, false);
    assert!(!ehlo(&mut d).contains("AUTH"));
    d.client("AUTH PLAIN")
        .expect("503 5.5.1 Error: authentication not enabled");
    d.client("MAIL FROM:<a@b.c> AUTH=<>").expect("250 2.1.0");
}

#[test]
fn plain_with_and_without_an_initial_response() {
    let mut d = dialog(AuthMode::Required, true, false);
    d.client("AUTH PLAIN").expect("334 \r\n");
    assert!(d.s.in_auth_exchange() && d.s.wants_input());
    d.client(&plain("bob", "bob", b"secret")).expect_nothing();
    assert!(!d.s.wants_input(), "no input while the check runs");
    let c = &d.auths[0];
    assert_eq!((c.table, c.credentials.user.as_str()), (Some(4), "bob"));
    assert_eq!(c.credentials.password.expose(), b"secret");
    d.auth_answer(Good)
        .expect("235 2.7.0 Authentication succeeded");
    assert_eq!(d.s.auth_user(), Some("bob"));
    assert_eq!(d.s.client().auth.as_deref(), Some("bob"));
    d.client("AUTH PLAIN")
        .expect("503 5.5.1 Error: already authenticated");
    d.client("MAIL FROM:<a@b.c> AUTH=bob@b.c")
        .expect("250 2.1.0");
}

#[test]
fn login_with_and_without_an_initial_response() {
    let mut d = dialog(AuthMode::Required, true, false);
    d.client("AUTH LOGIN").expect("334 VXNlcm5hbWU6\r\n");
    d.client(&encode(b"bob")).expect("334 UGFzc3dvcmQ6\r\n");
    d.client(&encode(b"pw")).expect_nothing();
    assert_eq!(d.auths[0].credentials.user, "bob");
    d.auth_answer(PermFail).expect("535 5.7.8");
    d.client(&format!("auth login {}", encode(b"carol")))
        .expect("334 UGFzc3dvcmQ6");
    d.client(&encode(b"pw2")).expect_nothing();
    assert_eq!(d.auths[0].credentials.user, "carol");
    d.auth_answer(Good).expect("235 2.7.0");
}

#[test]
fn empty_responses_cancel_and_bad_base64() {
    let mut d = dialog(AuthMode::Required, true, false);
    // "=" is an empty initial response: no PLAIN message.
    d.client("AUTH PLAIN =").expect("501 5.5.2");
    d.client("AUTH PLAIN").expect("334");
    d.client("*").expect("501 5.7.0 Authentication cancelled");
    assert!(!d.s.in_auth_exchange());
    d.client("AUTH LOGIN").expect("334");
    d.client("!!not base64!!")
        .expect("501 5.5.2 Invalid base64 data");
    d.client("AUTH PLAIN @@@@").expect("501 5.5.2");
    d.client("AUTH PLAIN").expect("334");
    d.client(&encode(b"no nul at all")).expect("501 5.5.2");
    d.client("AUTH LOGIN").expect("334");
    d.client("").expect("501 5.5.2");
    d.client("AUTH").expect("501 5.5.4");
    assert!(d.auths.is_empty());
}

#[test]
fn an_authorization_identity_of_another_user_is_refused() {
    let mut d = dialog(AuthMode::Required, true, false);
    d.client(&format!("AUTH PLAIN {}", plain("root", "bob", b"pw")))
        .expect("535 5.7.8");
    assert!(d.auths.is_empty(), "refused without a check");
    assert_eq!(d.s.auth_user(), None);
}

#[test]
fn failures_end_the_session() {
    let mut d = dialog(AuthMode::Required, true, false);
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"x")));
    d.auth_answer(TempFail).expect("454 4.7.0");
    for _ in 0..2 {
        d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"x")));
        d.auth_answer(PermFail).expect("535 5.7.8");
        assert_ne!(d.s.state(), State::Quit);
    }
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"x")));
    d.auth_answer(PermFail)
        .expect("535 5.7.8")
        .expect("421 4.7.0 Too many authentication failures")
        .expect_close();
}

#[test]
fn auth_out_of_place() {
    let mut d = Dialog::new();
    d.s.set_auth(ListenerAuth {
        mode: AuthMode::Optional,
        ..ListenerAuth::default()
    });
    protect(&mut d.s);
    d.client("AUTH PLAIN")
        .expect("503 5.5.1 Error: send EHLO first");
    d.client("HELO c").expect("250");
    d.client("AUTH PLAIN")
        .expect("503 5.5.1 Error: send EHLO first");
    d.client("EHLO c").expect("250");
    d.client("MAIL FROM:<a@b.c>").expect("250");
    d.client("AUTH PLAIN")
        .expect("503 5.5.1 Error: AUTH not permitted during a mail transaction");
    d.client("RSET").expect("250");
    d.client("AUTH PLAIN").expect("334");
}

#[test]
fn required_and_optional() {
    let mut d = dialog(AuthMode::Required, true, false);
    d.client("MAIL FROM:<a@b.c>")
        .expect("530 5.7.0 Authentication required");
    d.client("RCPT TO:<u@b.c>").expect("503 5.5.1");
    login(&mut d);
    d.client("MAIL FROM:<a@b.c>").expect("250 2.1.0");
    let mut d = dialog(AuthMode::Optional, true, false);
    assert!(ehlo(&mut d).contains("AUTH PLAIN LOGIN"));
    d.client("MAIL FROM:<a@b.c>").expect("250 2.1.0");
}

#[test]
fn pipelined_commands_wait_for_the_check() {
    let mut d = dialog(AuthMode::Required, true, false);
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"pw")))
        .client("MAIL FROM:<bob@b.c>")
        .expect_nothing();
    assert_eq!(d.input.len(), 1);
    d.auth_answer(Good).expect("235").expect("250 2.1.0");
}

#[test]
fn senders_of_authenticated_users() {
    let mut d = dialog(AuthMode::Optional, true, true);
    // Not authenticated: not checked.
    d.client("MAIL FROM:<alice@b.c>").expect("250 2.1.0");
    d.client("RSET").expect("250");
    login(&mut d);
    d.client("MAIL FROM:<alice@b.c>")
        .expect("553 5.7.1 Sender address not owned");
    assert!(d.s.tx().is_none());
    d.client("MAIL FROM:<bob@b.c>").expect("250 2.1.0");
    assert_eq!(d.s.masquerade().as_deref(), Some("bob@b.c"));
}

#[test]
fn senders_of_plain_local_users() {
    // The dialog's lookups own a local user's sender when its local part is the uid.
    let mut d = Dialog::new();
    d.s.set_local_user(1001, true, Some(3));
    d.client("EHLO c").expect("250");
    d.client("MAIL FROM:<root@b.c>")
        .expect("553 5.7.1 Sender address not owned");
    d.auto = false;
    d.client("MAIL FROM:<1001@b.c>");
    assert_eq!(d.asked, [Lookup::Space(0)]);
    let mut out = Vec::new();
    d.s.on_lookup(crate::lookup::LookupAnswer::Space(true), &mut out);
    match out.as_slice() {
        [Action::Lookup(Lookup::Sender(q))] => {
            assert_eq!(q.table, Some(3));
            assert_eq!(
                q.user,
                SenderUser::Local {
                    uid: 1001,
                    server_name: "mx.example.org".into()
                }
            );
        }
        other => panic!("{other:?}"),
    }
    // Root and the daemon's user are not checked.
    let mut d = Dialog::new();
    d.s.set_local_user(0, false, Some(3));
    d.client("EHLO c").expect("250");
    d.client("MAIL FROM:<anyone@b.c>").expect("250 2.1.0");
    assert_eq!(d.s.local_uid(), Some(0));
}

#[test]
fn received_header_names_the_protocol_and_the_user() {
    for (tls, auth, proto) in [
        (false, false, "ESMTP id"),
        (true, false, "ESMTPS id"),
        (
            true,
            true,
            "ESMTPSA id 00001234 (TLSv1.3:TLS_AES_256_GCM_SHA384:256:NO) (auth=yes user=bob)",
        ),
    ] {
        let mut d = dialog(AuthMode::Optional, tls, false);
        if auth {
            login(&mut d);
        }
        d.client("MAIL FROM:<a@b.c>").expect("250");
        d.client("RCPT TO:<u@b.c>").expect("250");
        d.s.on_line(b"DATA", &mut d.out);
        d.out.clear();
        d.s.on_opened(Ok(0x1234), &mut d.out);
        let h = d.s.received_header("date");
        assert!(h.contains(&format!("with {proto}")), "{h}");
    }
}

#[test]
fn long_lines() {
    let mut d = dialog(AuthMode::Required, false, false);
    // Before TLS, the configured limit for every line.
    assert_eq!(d.s.command_limit(510), 510);
    let long = format!("AUTH PLAIN {}", "A".repeat(600));
    d.client(&long).expect("500 5.5.2 Line too long");
    protect(&mut d.s);
    assert_eq!(d.s.command_limit(510), 12288);
    d.client(&format!("NOOP {}", "x".repeat(600)))
        .expect("500 5.5.2 Line too long");
    // An initial response beyond 512 octets is taken.
    let big = plain(&"b".repeat(255), &"b".repeat(255), &[b'p'; 255]);
    assert!(big.len() > 1000);
    d.client(&format!("AUTH PLAIN {big}")).expect_nothing();
    assert_eq!(d.auths.len(), 1);
    d.auth_answer(PermFail).expect("535 5.7.8");
    d.client("AUTH LOGIN").expect("334");
    assert_eq!(d.s.command_limit(510), 12288);
    d.s.on_bad_line(Reply::LINE_TOO_LONG, &mut d.out);
    d.expect("500 5.5.6 Authentication exchange line is too long");
    assert!(!d.s.in_auth_exchange());
}

#[test]
fn nothing_of_the_exchange_is_shown() {
    let mut d = dialog(AuthMode::Required, true, false);
    let line = format!("AUTH PLAIN {}", plain("", "bob", b"hunter2"));
    assert_eq!(&*d.s.loggable(line.as_bytes()), b"AUTH PLAIN (hidden)");
    d.client("AUTH LOGIN").expect("334");
    let b64 = encode(b"bob");
    assert_eq!(&*d.s.loggable(b64.as_bytes()), b"(hidden)");
    let shown = format!("{:?}", d.s);
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[test]
fn every_octet_of_a_password_reaches_the_check() {
    let mut d = dialog(AuthMode::Required, true, false);
    let password: Vec<u8> = (1..=255).collect();
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", &password)))
        .expect_nothing();
    assert_eq!(d.auths[0].credentials.password.expose(), &password[..]);
    let shown = format!("{:?}", d.auths[0]);
    assert!(shown.contains("(secret)"), "{shown}");
}

#[test]
fn an_answer_after_the_session_closed_is_dropped() {
    let mut d = dialog(AuthMode::Required, true, false);
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"pw")));
    d.s.close(Reply::TIMEOUT, &mut d.out);
    d.out.clear();
    d.auth_answer(Good);
    assert!(d.out.is_empty(), "{:?}", d.out);
    assert_eq!(d.s.auth_user(), None);
}

/// A dialog as [`dialog`] makes it, with filters that registered AUTH.
fn filtered() -> Dialog {
    let mut d = Dialog::with_hooks(smtpd_filter::codec::event::AUTH);
    d.s.set_auth(ListenerAuth {
        mode: AuthMode::Required,
        table: Some(4),
        ..ListenerAuth::default()
    });
    d.expect("220");
    protect(&mut d.s);
    d.client("EHLO c").expect("250-mx.example.org");
    d
}

#[test]
fn filters_decide_on_accepted_credentials() {
    let mut d = filtered();
    // Refused credentials never reach the filters.
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"no")));
    d.auth_answer(PermFail).expect("535 5.7.8");
    assert!(d.queries.is_empty());
    // Accepted ones wait for the verdict before the 235.
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"pw")));
    d.auth_answer(Good).expect_nothing();
    assert_eq!(d.queries[0].phase, Phase::Auth { mechanism: "PLAIN" });
    assert_eq!(d.queries[0].param, "bob");
    d.verdict(FilterVerdict::Reject(Reply::new(
        535,
        "5.7.8",
        "Not from here",
    )))
    .expect("535 5.7.8 Not from here");
    assert_eq!(d.s.auth_user(), None);
    d.client("MAIL FROM:<bob@b.c>").expect("530 5.7.0");
    // The filters' temporary failure; then LOGIN, accepted, and marked as junk.
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"pw")));
    d.auth_answer(Good);
    d.verdict(FilterVerdict::Reject(Reply::new(454, "4.7.0", "Later")))
        .expect("454 4.7.0");
    d.client("AUTH LOGIN").expect("334");
    d.client(&encode(b"carol")).expect("334");
    d.client(&encode(b"pw")).expect_nothing();
    d.auth_answer(Good);
    assert_eq!(d.queries[0].phase, Phase::Auth { mechanism: "LOGIN" });
    d.verdict(FilterVerdict::Proceed {
        rewrite: None,
        junk: true,
    })
    .expect("235 2.7.0");
    assert_eq!(d.s.auth_user(), Some("carol"));
    assert_eq!(
        d.auth_reports,
        [
            "PLAIN bob 535",
            "PLAIN bob 535",
            "PLAIN bob 454",
            "LOGIN carol 235"
        ]
    );
}

#[test]
fn a_filter_may_end_the_session_at_auth() {
    let mut d = filtered();
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"pw")));
    d.auth_answer(Good);
    d.verdict(FilterVerdict::Disconnect(Reply::new(421, "4.7.0", "Bye")))
        .expect("421 4.7.0 Bye")
        .expect_close();
    assert_eq!(d.auth_reports, ["PLAIN bob 421"]);
}

#[test]
fn reports_name_what_the_client_gave_only() {
    let mut d = dialog(AuthMode::Required, true, false);
    // Cancelled and malformed exchanges gave no credentials: no report.
    d.client("AUTH PLAIN").expect("334");
    d.client("*").expect("501 5.7.0");
    d.client("AUTH PLAIN !!!").expect("501 5.5.2");
    assert!(d.auth_reports.is_empty());
    d.client(&format!("AUTH PLAIN {}", plain("", "bob", b"pw")));
    d.auth_answer(TempFail).expect("454 4.7.0");
    login(&mut d);
    assert_eq!(d.auth_reports, ["PLAIN bob 454", "PLAIN bob 235"]);
}

#[test]
fn the_report_of_a_failure_comes_before_the_close_of_the_error_limit() {
    let mut d = dialog(AuthMode::Required, true, false);
    for _ in 0..9 {
        d.client("BOGUS").expect("500");
    }
    // An empty password is refused at once; it is the tenth error.
    d.client("AUTH LOGIN").expect("334");
    d.client(&encode(b"bob")).expect("334");
    d.client("")
        .expect("535 5.7.8")
        .expect("421")
        .expect_close();
    assert_eq!(d.auth_reports, ["LOGIN bob 535"]);
}
