use super::*;
use crate::config::parse_args;
use crate::jobs;
use crate::keys::tests::{ED25519_RECORD, RSA_RECORD};
use crate::verify::{KeySource, Txt};
use smtpd_filter::codec::Decoder;

const NOW: u64 = 1_796_615_800;
const LOCAL: u64 = 1;
const REMOTE: u64 = 2;

struct Keys;

impl KeySource for Keys {
    fn txt(&self, name: &str) -> Txt {
        match name {
            "rsa._domainkey.example.org" => Txt::Records(vec![RSA_RECORD.trim().into()]),
            "ed._domainkey.example.org" => Txt::Records(vec![ED25519_RECORD.trim().into()]),
            _ => Txt::None,
        }
    }
}

fn machine(extra: &str) -> Machine {
    let dir = env!("CARGO_MANIFEST_DIR");
    let args = format!(
        "-r mx.example.net -k example.org:rsa:{dir}/tests/keys/rsa2048.pem \
         -k example.org:ed:{dir}/tests/keys/ed25519.pem {extra}"
    );
    let args: Vec<String> = args.split_whitespace().map(String::from).collect();
    Machine::new(Arc::new(parse_args(&args).unwrap()))
}

/// What the filter wrote, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Proceed,
    DataEnd,
    Lines(Vec<String>),
    Insert(String, String),
    Change(u32, String, String),
    Other(String),
}

fn outs(bytes: &[u8]) -> Vec<(u64, Out)> {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut d = Decoder::new();
    d.feed(bytes);
    let mut v = Vec::new();
    while let Some((sid, f)) = d.next_frame().unwrap() {
        let o = match f {
            Frame::Proceed => Out::Proceed,
            Frame::DataEnd => Out::DataEnd,
            Frame::DataLines(l) => Out::Lines(l.iter().map(|x| s(x)).collect()),
            Frame::InsertHeader {
                index: 0,
                name,
                value,
            } => Out::Insert(s(name), s(value)),
            Frame::ChangeHeader { index, name, value } => Out::Change(index, s(name), s(value)),
            f => Out::Other(format!("{f:?}")),
        };
        v.push((sid, o));
    }
    v
}

fn feed(m: &mut Machine, sid: u64, f: Frame<'_>) -> (Vec<(u64, Out)>, Option<Job>) {
    let mut raw = Vec::new();
    codec::encode(sid, &f, &mut raw);
    let mut out = Vec::new();
    let job = m.frame(sid, &f, &raw, NOW, &mut out);
    (outs(&out), job)
}

fn connect(m: &mut Machine, sid: u64, remote: &str) {
    let c = Frame::Connect {
        local: b"127.0.0.1:25",
        remote: remote.as_bytes(),
        hostname: b"",
    };
    assert_eq!(feed(m, sid, c).0, vec![(sid, Out::Proceed)]);
}

/// Sends a message (CR LF lines, no final line end) and its end; returns what EOM
/// gave: answers written at once, or those of its job once done.
fn message(m: &mut Machine, sid: u64, text: &str) -> (Vec<(u64, Out)>, bool) {
    let lines: Vec<&[u8]> = text.split("\r\n").map(str::as_bytes).collect();
    let (out, job) = feed(m, sid, Frame::DataLines(lines.clone()));
    assert!(job.is_none());
    let echo: Vec<String> = text.split("\r\n").map(String::from).collect();
    assert_eq!(
        out,
        vec![(sid, Out::Lines(echo))],
        "the lines go back as they came"
    );
    assert_eq!(feed(m, sid, Frame::DataEnd).0, vec![(sid, Out::DataEnd)]);
    let (now, job) = feed(m, sid, Frame::Eom(text.len() as u64));
    match job {
        None => (now, false),
        Some(job) => {
            assert!(now.is_empty());
            let mut out = Vec::new();
            jobs::run(job, &m.cfg, &Keys, &mut out);
            (outs(&out), true)
        }
    }
}

/// The message as the daemon would queue it: the inserted fields on top.
fn with_fields(out: &[(u64, Out)], text: &str) -> String {
    let mut top = String::new();
    for (_, o) in out {
        if let Out::Insert(n, v) = o {
            top = format!("{n}: {v}\r\n{top}");
        }
    }
    format!("{top}{text}")
}

const TEXT: &str =
    "From: Alice <alice@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nbody  text\r\n";

fn sign(text: &str) -> String {
    let mut m = machine("");
    connect(&mut m, LOCAL, "local");
    let (out, job) = message(&mut m, LOCAL, text);
    assert!(job);
    assert_eq!(out.len(), 3, "{out:?}");
    assert_eq!(out[2], (LOCAL, Out::Proceed));
    with_fields(&out, text)
}

/// Verifies `text` from a remote session; returns the results' value and the other
/// edits.
fn verify(text: &str) -> (String, Vec<Out>) {
    let mut m = machine("");
    connect(&mut m, REMOTE, "192.0.2.1:4321");
    let (out, _) = message(&mut m, REMOTE, text);
    assert_eq!(out.last(), Some(&(REMOTE, Out::Proceed)), "{out:?}");
    let mut results = None;
    let mut others = Vec::new();
    for (_, o) in &out[..out.len() - 1] {
        match o {
            Out::Insert(n, v) if n == RESULTS_FIELD => results = Some(v.clone()),
            o => others.push(o.clone()),
        }
    }
    (results.unwrap(), others)
}

#[test]
fn local_messages_are_signed_and_remote_ones_verified() {
    let wire = sign(TEXT);
    assert!(
        wire.starts_with("DKIM-Signature: v=1; a=ed25519-sha256;"),
        "{wire}"
    );
    assert!(
        wire.contains("\r\nDKIM-Signature: v=1; a=rsa-sha256;"),
        "{wire}"
    );
    let (ar, others) = verify(&wire);
    assert!(others.is_empty());
    assert!(
        ar.starts_with("mx.example.net;\r\n\tdkim=pass header.d=example.org header.s=ed header.a=ed25519-sha256 header.b="),
        "{ar}"
    );
    assert!(
        ar.contains(";\r\n\tdkim=pass header.d=example.org header.s=rsa header.a=rsa-sha256"),
        "{ar}"
    );
    let (ar, _) = verify(&wire.replace("body  text", "body text!"));
    assert_eq!(
        ar.matches("dkim=fail reason=\"body hash did not verify\"")
            .count(),
        2,
        "{ar}"
    );
    // Relaxed: white space may change.
    let (ar, _) = verify(&wire.replace("body  text", "body text"));
    assert_eq!(ar.matches("dkim=pass").count(), 2, "{ar}");
}

#[test]
fn forged_results_of_ours_are_deleted() {
    let text = format!(
        "Authentication-Results: MX.example.net; dkim=pass\r\n\
         Authentication-Results: other.example; dkim=pass\r\n\
         Authentication-Results: mx.example.net (forged); dkim=pass\r\n{TEXT}"
    );
    let (ar, others) = verify(&text);
    assert_eq!(ar, "mx.example.net; dkim=none");
    let change = |i| Out::Change(i, RESULTS_FIELD.into(), String::new());
    assert_eq!(others, vec![change(3), change(1)]);
}

#[test]
fn who_is_internal() {
    let mut m = machine("-i 192.0.2.0/24 -i 2001:db8::/32");
    for (sid, remote, internal) in [
        (1, "local", true),
        (2, "192.0.2.9:1234", true),
        (3, "[2001:db8::7]:25", true),
        (4, "198.51.100.1:25", false),
    ] {
        connect(&mut m, sid, remote);
        assert_eq!(m.sessions[&sid].internal, internal, "{remote}");
    }
    // An authenticated session is internal.
    let auth = Frame::AuthResult {
        mechanism: b"PLAIN",
        user: b"alice",
        result: b"ok",
    };
    let (out, _) = feed(&mut m, 4, auth);
    assert!(out.is_empty());
    assert!(m.sessions[&4].internal);
    let failed = Frame::AuthResult {
        mechanism: b"PLAIN",
        user: b"mallory",
        result: b"permfail",
    };
    connect(&mut m, 5, "198.51.100.2:25");
    feed(&mut m, 5, failed);
    assert!(!m.sessions[&5].internal);
    // -a: every session; CONNECT is then not asked.
    let all = machine("-a");
    assert_eq!(all.events().0 & event::CONNECT, 0);
    assert_ne!(machine("").events().0 & event::CONNECT, 0);
    assert_eq!(machine("-m verify").events().1 & event::AUTH_RESULT, 0);
}

#[test]
fn messages_left_alone() {
    // A local message from a domain without a key: let through at once.
    let mut m = machine("");
    connect(&mut m, LOCAL, "local");
    let other = TEXT.replace("example.org", "example.com");
    assert_eq!(
        message(&mut m, LOCAL, &other),
        (vec![(LOCAL, Out::Proceed)], false)
    );
    // Sign only: a remote message is not verified.
    let mut m = machine("-m sign");
    connect(&mut m, REMOTE, "192.0.2.1:25");
    assert_eq!(
        message(&mut m, REMOTE, TEXT),
        (vec![(REMOTE, Out::Proceed)], false)
    );
    // Verify only: a local message is verified, not signed.
    let mut m = machine("-m verify");
    let (out, job) = message(&mut m, LOCAL, TEXT);
    assert!(!job);
    assert!(
        matches!(&out[0].1, Out::Insert(_, v) if v == "mx.example.net; dkim=none"),
        "{out:?}"
    );
}

#[test]
fn malformed_headers_and_rolled_back_messages() {
    let (ar, _) = verify("From: a@example.org\r\nnot a field\r\n\r\nbody");
    assert_eq!(
        ar,
        "mx.example.net;\r\n\tdkim=permerror reason=\"malformed header\""
    );
    let mut m = machine("");
    connect(&mut m, LOCAL, "local");
    let broken = "From: a@example.org\r\n continued\r\n\tmore\r\nbad\r\n\r\nx";
    assert_eq!(
        message(&mut m, LOCAL, broken),
        (vec![(LOCAL, Out::Proceed)], false)
    );
    // Lines of a message rolled back are forgotten: the next one starts afresh.
    let half: Vec<&[u8]> = vec![b"Subject: half", b"X-Y: z"];
    feed(&mut m, LOCAL, Frame::DataLines(half));
    feed(&mut m, LOCAL, Frame::Rollback);
    let (out, job) = message(&mut m, LOCAL, TEXT);
    assert!(job && out.len() == 3, "{out:?}");
    // A message without a header line end: only a header, signed all the same.
    let (out, job) = message(&mut m, LOCAL, "From: a@example.org\r\nSubject: s");
    assert!(job && out.len() == 3, "{out:?}");
    assert_eq!(m.sessions(), 1);
    feed(&mut m, LOCAL, Frame::Disconnect);
    assert_eq!(m.sessions(), 0);
}

#[test]
fn a_session_never_seen_is_external() {
    // The filter was restarted: lines of a session it never saw.
    let mut m = machine("");
    let (ar, _) = {
        let (out, _) = message(&mut m, 9, TEXT);
        match &out[0].1 {
            Out::Insert(_, v) => (v.clone(), ()),
            o => panic!("{o:?}"),
        }
    };
    assert_eq!(ar, "mx.example.net; dkim=none");
}
