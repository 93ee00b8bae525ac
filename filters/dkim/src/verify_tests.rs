use super::*;
use crate::canon::{BodyHash, Canon};
use crate::keys::tests::{ED25519, ED25519_RECORD, RSA_PKCS1, RSA_RECORD};
use crate::keys::SigningKey;
use crate::sign::{self, KeyEntry, SignConfig};
use std::collections::HashMap;
use std::sync::Arc;

const NOW: u64 = 1_796_615_800;

struct Table(HashMap<String, Txt>);

impl KeySource for Table {
    fn txt(&self, name: &str) -> Txt {
        self.0.get(name).cloned().unwrap_or(Txt::None)
    }
}

fn table(entries: &[(&str, &str)]) -> Table {
    Table(
        entries
            .iter()
            .map(|(n, r)| {
                (
                    n.to_string(),
                    Txt::Records(vec![r.trim().as_bytes().to_vec()]),
                )
            })
            .collect(),
    )
}

fn keys() -> Table {
    table(&[
        ("sel._domainkey.example.org", RSA_RECORD),
        ("ed._domainkey.example.org", ED25519_RECORD),
    ])
}

/// Splits a message (CR LF lines) into its header and body lines.
fn split(msg: &[u8]) -> (Header, Vec<Vec<u8>>) {
    let text = msg.strip_suffix(b"\r\n").unwrap_or(msg);
    let mut h = Header::default();
    let mut body = Vec::new();
    let mut in_body = false;
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if in_body {
            body.push(line.to_vec());
        } else if line.is_empty() {
            in_body = true;
        } else {
            h.push_line(line).unwrap();
        }
    }
    (h, body)
}

/// Verifies every DKIM-Signature field of `msg`.
fn check(msg: &[u8], keys: &dyn KeySource) -> Vec<Verdict> {
    let (h, body) = split(msg);
    h.named("dkim-signature")
        .map(|i| {
            let value = String::from_utf8_lossy(h.value(i)).into_owned();
            match Signature::parse(&value, NOW) {
                Err(u) => Verdict::unusable(&u),
                Ok(sig) => {
                    let mut bh = BodyHash::new(sig.body_canon, sig.length);
                    for l in &body {
                        bh.line(l);
                    }
                    let (d, n) = bh.finish();
                    verify(&h, i, &sig, d.as_ref(), n, keys)
                }
            }
        })
        .collect()
}

fn outcome(msg: &[u8], keys: &dyn KeySource) -> (Outcome, Option<String>) {
    let v = check(msg, keys);
    assert_eq!(v.len(), 1);
    (v[0].outcome, v[0].reason.clone())
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/messages/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn replace(msg: &[u8], from: &str, to: &str) -> Vec<u8> {
    String::from_utf8(msg.to_vec())
        .unwrap()
        .replacen(from, to, 1)
        .into_bytes()
}

#[test]
fn dkimpy_signatures_verify_and_changes_do_not() {
    for f in [
        "dkimpy-rsa-relaxed.eml",
        "dkimpy-rsa-simple.eml",
        "dkimpy-ed25519.eml",
    ] {
        let m = fixture(f);
        assert_eq!(outcome(&m, &keys()), (Outcome::Pass, None), "{f}");
        let body = replace(&m, "at noon?", "at one?");
        assert_eq!(
            outcome(&body, &keys()),
            (Outcome::Fail, Some("body hash did not verify".into())),
            "{f}"
        );
        let subject = replace(&m, "Lunch", "Dinner");
        assert_eq!(
            outcome(&subject, &keys()),
            (Outcome::Fail, Some("signature did not verify".into())),
            "{f}"
        );
    }
    // White space changes: relaxed does not mind, simple does.
    let ws = |f| replace(&fixture(f), "Hi  Bob", "Hi Bob");
    assert_eq!(
        outcome(&ws("dkimpy-rsa-relaxed.eml"), &keys()).0,
        Outcome::Pass
    );
    assert_eq!(
        outcome(&ws("dkimpy-rsa-simple.eml"), &keys()).0,
        Outcome::Fail
    );
    // Empty lines added at the end count for nothing, either way.
    for f in ["dkimpy-rsa-relaxed.eml", "dkimpy-rsa-simple.eml"] {
        let mut m = fixture(f);
        m.extend_from_slice(b"\r\n\r\n");
        assert_eq!(outcome(&m, &keys()).0, Outcome::Pass, "{f}");
    }
}

#[test]
fn key_problems() {
    let m = fixture("dkimpy-rsa-relaxed.eml");
    let cases: [(Txt, Outcome, &str); 6] = [
        (Txt::None, Outcome::PermError, "no key for signature"),
        (
            Txt::TempFail("timeout".into()),
            Outcome::TempError,
            "key lookup failed: timeout",
        ),
        (
            Txt::Records(vec![b"v=DKIM1; p=".to_vec()]),
            Outcome::PermError,
            "key revoked",
        ),
        (
            Txt::Records(vec![ED25519_RECORD.trim().as_bytes().to_vec()]),
            Outcome::PermError,
            "the key's k= does not match a=",
        ),
        (
            Txt::Records(vec![b"v=spf1 -all".to_vec()]),
            Outcome::PermError,
            "bad key record: the key record's v= is not DKIM1",
        ),
        (
            Txt::Records(vec![b"v=DKIM1; p=MIIBIjAN".to_vec()]),
            Outcome::PermError,
            "the key is not an RSA public key",
        ),
    ];
    for (txt, want, why) in cases {
        let t = Table([("sel._domainkey.example.org".to_string(), txt)].into());
        assert_eq!(outcome(&m, &t), (want, Some(why.to_string())));
    }
    // A bad record before the good one is skipped.
    let both = Txt::Records(vec![
        b"garbage".to_vec(),
        RSA_RECORD.trim().as_bytes().to_vec(),
    ]);
    let t = Table([("sel._domainkey.example.org".to_string(), both)].into());
    assert_eq!(outcome(&m, &t).0, Outcome::Pass);
}

fn entry(pem: &str, selector: &str) -> KeyEntry {
    KeyEntry {
        domain: "example.org".into(),
        selector: selector.into(),
        key: Arc::new(SigningKey::from_pem(pem.as_bytes()).unwrap()),
    }
}

/// Signs `msg` as the filter does and returns it with the field on top.
fn signed(msg: &[u8], e: &KeyEntry, c: Canon) -> Vec<u8> {
    let cfg = SignConfig {
        header_canon: c,
        body_canon: c,
        headers: sign::DEFAULT_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        oversign: vec!["from".into()],
        expire: None,
    };
    let (h, body) = split(msg);
    let mut bh = BodyHash::new(c, None);
    for l in &body {
        bh.line(l);
    }
    let value = sign::prepare(&h, bh.finish().0.as_ref(), e, &cfg, NOW)
        .sign()
        .unwrap();
    let mut out = format!("{}: {value}\r\n", sign::FIELD).into_bytes();
    out.extend_from_slice(msg);
    out
}

#[test]
fn our_signatures_verify_and_oversigned_from_cannot_be_added() {
    let plain = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n";
    for e in [entry(RSA_PKCS1, "sel"), entry(ED25519, "ed")] {
        for c in [Canon::Simple, Canon::Relaxed] {
            let m = signed(plain, &e, c);
            assert_eq!(outcome(&m, &keys()), (Outcome::Pass, None), "{c:?}");
            let mut two_froms = m.clone();
            two_froms.splice(0..0, b"From: evil@example.net\r\n".iter().copied());
            assert_eq!(outcome(&two_froms, &keys()).0, Outcome::Fail);
        }
    }
    // Empty body, no body at all.
    for msg in [
        &b"From: a@example.org\r\n\r\n"[..],
        b"From: a@example.org\r\n",
    ] {
        let m = signed(msg, &entry(ED25519, "ed"), Canon::Simple);
        assert_eq!(outcome(&m, &keys()).0, Outcome::Pass);
    }
}

#[test]
fn l_limits_what_is_signed() {
    let e = entry(ED25519, "ed");
    let m = signed(b"From: a@example.org\r\n\r\nbody\r\n", &e, Canon::Relaxed);
    // Sign again with l= by hand: the signed part is the first 6 octets ("body\r\n").
    let text = String::from_utf8(m)
        .unwrap()
        .replacen("; b=", "; l=6; b=", 1);
    // The signature no longer matches (l= was added after signing) but the body
    // hash part is checked first: a longer body still hashes its first 6 octets.
    let longer = format!("{text}appended\r\n");
    assert_eq!(
        outcome(longer.as_bytes(), &keys()),
        (Outcome::Fail, Some("signature did not verify".into()))
    );
    let short = text.replacen("l=6", "l=60", 1);
    assert_eq!(
        outcome(short.as_bytes(), &keys()),
        (Outcome::Fail, Some("l= is longer than the body".into()))
    );
}

#[test]
fn results_fields() {
    assert_eq!(results("mx.example.net", &[]), "mx.example.net; dkim=none");
    let pass = Verdict {
        outcome: Outcome::Pass,
        reason: None,
        domain: Some("example.org".into()),
        selector: Some("sel".into()),
        algorithm: Some("rsa-sha256".into()),
        b_text: Some("ab/+cdefghij".into()),
        identity: None,
    };
    let fail = Verdict {
        outcome: Outcome::Fail,
        reason: Some("body hash did not verify".into()),
        b_text: Some("xyz".into()),
        identity: Some("@example.org".into()),
        ..pass.clone()
    };
    assert_eq!(
        results("mx", &[pass, fail]),
        "mx;\r\n\tdkim=pass header.d=example.org header.s=sel header.a=rsa-sha256 \
         header.b=\"ab/+cdef\";\r\n\tdkim=fail reason=\"body hash did not verify\" \
         header.d=example.org header.i=@example.org header.s=sel header.a=rsa-sha256 header.b=xyz"
    );
    assert_eq!(
        authserv_id_of(b" (c) mx.example.net 1; dkim=pass"),
        "mx.example.net"
    );
    assert_eq!(authserv_id_of(b"mx;dkim=pass"), "mx");
}
