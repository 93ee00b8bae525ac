use super::*;

fn recs(list: &[&str]) -> Vec<Vec<u8>> {
    list.iter().map(|s| s.as_bytes().to_vec()).collect()
}

#[test]
fn txt_records() {
    let id = |l: &[&str]| txt_id(&recs(l));
    assert_eq!(
        id(&["v=STSv1; id=20160831085700Z;"]).as_deref(),
        Some("20160831085700Z")
    );
    assert_eq!(id(&["v=STSv1;id=abc"]).as_deref(), Some("abc"));
    assert_eq!(
        id(&["v=STSv1 ;\tid=abc ; ext_1.x=v-v "]).as_deref(),
        Some("abc")
    );
    // Other records are ignored.
    assert_eq!(
        id(&["v=spf1 -all", "v=STSv1; id=x1", "v=STSv10; id=y"]).as_deref(),
        Some("x1")
    );
    // Two STSv1 records: no policy.
    assert_eq!(id(&["v=STSv1; id=a", "v=STSv1; id=b"]), None);
    assert_eq!(id(&[]), None);
    // Malformed ones.
    for bad in [
        "v=STSv1",
        "v=STSv1;",
        "v=STSv1; id=",
        "v=STSv1; id=has-dash",
        "v=STSv1; id=123456789012345678901234567890123",
        "v=STSv1; id=a; id=b",
        "v=STSv1; ext=1",
        "v=STSv1;; id=a",
        "v=STSv1; id=a; =x",
        "v=STSv1; id=a; e=x=y",
        "v=STSv1; id=a; _e=x",
        "v=STSv1; id=\u{e9}",
        "V=STSv1; id=a",
    ] {
        assert_eq!(id(&[bad]), None, "{bad}");
        assert!(parse_txt(bad.as_bytes()).is_err(), "{bad}");
    }
    assert_eq!(
        parse_txt(b"v=STSv1; id=123456789012345678901234567890AB").as_deref(),
        Ok("123456789012345678901234567890AB")
    );
    assert!(parse_txt(b"\xff").is_err());
}

const GOOD: &str = "version: STSv1\nmode: enforce\nmx: mail.example.com\nmx: *.Example.NET.\nmx: backupmx.example.com\nmax_age: 604800\n";

#[test]
fn policies() {
    let p = Policy::parse(GOOD.as_bytes()).unwrap();
    assert_eq!(p.mode, Mode::Enforce);
    assert_eq!(
        p.mx,
        ["mail.example.com", "*.example.net", "backupmx.example.com"]
    );
    assert_eq!(p.max_age, 604800);
    // CRLF, no final line end, blank lines at the end, spaces after the colon,
    // unknown fields: the same policy.
    let crlf = "version: STSv1\r\nmode:   enforce  \r\nfuture_ext: some value\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age:604800\r\n\r\n\n";
    assert_eq!(Policy::parse(crlf.as_bytes()).unwrap(), p);
    let no_end = GOOD.trim_end();
    assert_eq!(Policy::parse(no_end.as_bytes()).unwrap(), p);
    // The canonical text reads back.
    assert_eq!(Policy::parse(p.to_text().as_bytes()).unwrap(), p);
    // Mode none needs no mx.
    let none = Policy::parse(b"version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
    assert_eq!((none.mode, none.mx.len(), none.max_age), (Mode::None, 0, 0));
    let testing =
        Policy::parse(b"mode: testing\nmx: a.b\nmax_age: 31557600\nversion: STSv1").unwrap();
    assert_eq!(testing.mode, Mode::Testing);
}

#[test]
fn malformed_policies() {
    let cases = [
        ("", "no version"),
        ("version: STSv1\nmode: enforce\nmax_age: 1\n", "no mx"),
        ("version: STSv1\nmx: a.b\nmax_age: 1\n", "no mode"),
        ("version: STSv1\nmode: enforce\nmx: a.b\n", "no max_age"),
        ("mode: enforce\nmx: a.b\nmax_age: 1\n", "no version"),
        (
            "version: STSv2\nmode: enforce\nmx: a.b\nmax_age: 1\n",
            "unknown version",
        ),
        (
            "version: STSv1\nmode: Enforce\nmx: a.b\nmax_age: 1\n",
            "unknown mode",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 31557601\n",
            "bad max_age",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: -1\n",
            "bad max_age",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 00000000001\n",
            "bad max_age",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 99999999999999999999\n",
            "bad max_age",
        ),
        (
            "version: STSv1\nmode: enforce\nmode: testing\nmx: a.b\nmax_age: 1\n",
            "mode given twice",
        ),
        (
            "version: STSv1\nversion: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\n",
            "version given twice",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\nmax_age: 1\n",
            "max_age given twice",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a..b\nmax_age: 1\n",
            "bad mx pattern",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: *.*.b\nmax_age: 1\n",
            "bad mx pattern",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a_b.c\nmax_age: 1\n",
            "bad mx pattern",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: -a.c\nmax_age: 1\n",
            "bad mx pattern",
        ),
        (
            "version: STSv1\n\nmode: enforce\nmx: a.b\nmax_age: 1\n",
            "not a field",
        ),
        (
            "version: STSv1\n mode: enforce\nmx: a.b\nmax_age: 1\n",
            "bad field",
        ),
        (
            "version: STSv1\nmode : enforce\nmx: a.b\nmax_age: 1\n",
            "bad field",
        ),
        ("version: STSv1\nmode:\nmx: a.b\nmax_age: 1\n", "bad field"),
        (
            "version: STSv1\rmode: enforce\nmx: a.b\nmax_age: 1\n",
            "bad field",
        ),
        (
            "version: STSv1\nmode: enforce\nmx: a.b\nmax_age: 1\nx: a\tb\n",
            "bad field",
        ),
        ("<html>\n", "not a field"),
    ];
    for (text, why) in cases {
        let e = Policy::parse(text.as_bytes()).unwrap_err();
        assert!(e.contains(why), "{text:?}: {e}");
    }
    assert!(Policy::parse(b"version: STSv1\xff").is_err());
}

#[test]
fn mx_patterns() {
    assert!(mx_matches("mail.example.com", "mail.example.com"));
    assert!(mx_matches("mail.example.com", "MAIL.Example.com."));
    assert!(!mx_matches("mail.example.com", "mail2.example.com"));
    assert!(!mx_matches("mail.example.com", "a.mail.example.com"));
    // `*.` stands for exactly one leftmost label.
    assert!(mx_matches("*.example.com", "mx1.example.com"));
    assert!(mx_matches("*.example.com", "MX1.EXAMPLE.COM."));
    assert!(!mx_matches("*.example.com", "example.com"));
    assert!(!mx_matches("*.example.com", "a.b.example.com"));
    assert!(!mx_matches("*.example.com", ".example.com"));
    assert!(!mx_matches("*.example.com", "mx1.example.org"));
    let p = Policy::parse(GOOD.as_bytes()).unwrap();
    assert!(p.lists("mx.example.net"));
    assert!(!p.lists("mx.mail.example.com"));
}

fn hosts(l: &[&str]) -> Vec<String> {
    l.iter().map(|s| s.to_string()).collect()
}

#[test]
fn decisions() {
    let mut p = Policy::parse(GOOD.as_bytes()).unwrap();
    let mx = hosts(&["mail.example.com", "evil.example.org", "mx9.example.net"]);
    let d = decide(Some(&p), &mx);
    assert_eq!(d.allowed, ["mail.example.com", "mx9.example.net"]);
    assert_eq!(d.unlisted, ["evil.example.org"]);
    assert_eq!(d.tls, Requirement::Require);
    // Nothing listed under enforce: no host at all.
    let d = decide(Some(&p), &hosts(&["evil.example.org"]));
    assert!(d.allowed.is_empty());

    p.mode = Mode::Testing;
    let d = decide(Some(&p), &mx);
    assert_eq!(d.allowed, mx);
    assert_eq!(d.unlisted, ["evil.example.org"]);
    assert_eq!(d.tls, Requirement::Report);

    p.mode = Mode::None;
    let d = decide(Some(&p), &mx);
    assert_eq!(
        (d.allowed, d.unlisted, d.tls),
        (mx.clone(), vec![], Requirement::Nothing)
    );
    let d = decide(None, &mx);
    assert_eq!((d.allowed, d.tls), (mx, Requirement::Nothing));
}

fn entry() -> CacheEntry {
    CacheEntry {
        fetched: 1_765_000_000,
        id: "20240101T000000".into(),
        policy: Policy::parse(GOOD.as_bytes()).unwrap(),
    }
}

#[test]
fn cache_entries() {
    let e = entry();
    let text = e.to_text();
    assert!(text.starts_with("fetched 1765000000\nid 20240101T000000\n\nversion: STSv1\n"));
    assert_eq!(CacheEntry::parse(text.as_bytes()).unwrap(), e);
    for bad in [
        "",
        "fetched 1\nid a\n",
        "fetched\nid a\n\nversion: STSv1\nmode: none\nmax_age: 1\n",
        "fetched -1\nid a\n\nversion: STSv1\nmode: none\nmax_age: 1\n",
        "fetched 1\nid a-b\n\nversion: STSv1\nmode: none\nmax_age: 1\n",
        "fetched 1\nid a\nmore\n\nversion: STSv1\nmode: none\nmax_age: 1\n",
        "id a\nfetched 1\n\nversion: STSv1\nmode: none\nmax_age: 1\n",
        "fetched 1\nid a\n\nversion: STSv1\nmode: none\n",
        "fetched 99999999999999999999999\nid a\n\nversion: STSv1\nmode: none\nmax_age: 1\n",
    ] {
        assert!(CacheEntry::parse(bad.as_bytes()).is_err(), "{bad:?}");
    }
    // Every truncation of a good entry is refused or reads as a policy, never panics.
    for n in 0..text.len() {
        let _ = CacheEntry::parse(&text.as_bytes()[..n]);
    }
}

#[test]
fn refreshing() {
    let e = entry();
    let t = e.fetched;
    let age = e.policy.max_age;
    assert_eq!(refresh(None, None, t), Refresh::NoPolicy);
    assert_eq!(refresh(None, Some("x"), t), Refresh::Fetch);
    assert_eq!(refresh(Some(&e), Some(&e.id), t + 10), Refresh::UseCached);
    assert_eq!(refresh(Some(&e), Some("new1"), t + 10), Refresh::Fetch);
    // A vanished record does not cancel an unexpired policy (§5.1).
    assert_eq!(refresh(Some(&e), None, t + 10), Refresh::UseCached);
    assert!(!e.expired(t + age - 1));
    assert!(e.expired(t + age));
    assert_eq!(refresh(Some(&e), None, t + age), Refresh::NoPolicy);
    assert_eq!(refresh(Some(&e), Some(&e.id), t + age), Refresh::Fetch);
}

#[test]
fn cache_files() {
    let dir = crate::testutil::TempDir::new("sts");
    let q = dir.0.as_path();
    assert_eq!(read_cache(q, "example.com").unwrap(), None);
    let e = entry();
    write_cache(q, "Example.COM.", &e).unwrap();
    assert!(q.join("sts/example.com").is_file());
    assert!(!q.join("sts/example.com.tmp").exists());
    assert_eq!(read_cache(q, "example.com").unwrap(), Some(e.clone()));
    // A newer entry replaces it.
    let mut newer = e.clone();
    newer.id = "2".into();
    write_cache(q, "example.com", &newer).unwrap();
    assert_eq!(read_cache(q, "example.com").unwrap(), Some(newer));
    // A damaged file is an error, not a policy.
    std::fs::write(q.join("sts/example.com"), "garbage").unwrap();
    let err = read_cache(q, "example.com").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    // A symbolic link or a directory in its place is not read through.
    std::fs::remove_file(q.join("sts/example.com")).unwrap();
    std::os::unix::fs::symlink(q.join("sts/elsewhere"), q.join("sts/example.com")).unwrap();
    write_cache(q, "elsewhere", &e).unwrap();
    assert!(read_cache(q, "example.com").is_err());
    std::fs::remove_file(q.join("sts/example.com")).unwrap();
    std::fs::create_dir(q.join("sts/example.com")).unwrap();
    let err = read_cache(q, "example.com").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    // A name that is no domain never becomes a path.
    for bad in ["../etc", "a/b", "", ".", "a..b", "-a.b"] {
        assert_eq!(cache_path(q, bad), None, "{bad}");
        assert!(write_cache(q, bad, &e).is_err());
        assert!(read_cache(q, bad).is_err());
    }
}
