//! Tests of `privsep.rs`.

use super::*;

#[test]
fn login_shells() {
    let etc = "# /etc/shells\n/bin/sh\n/usr/bin/bash\n";
    assert!(valid_shell("/usr/bin/bash", Some(etc)));
    assert!(valid_shell("", Some(etc)));
    assert!(!valid_shell("/usr/sbin/nologin", Some(etc)));
    assert!(!valid_shell("# /etc/shells", Some(etc)));
    assert!(valid_shell("/bin/csh", None));
    assert!(!valid_shell("/bin/false", None));
}

#[test]
fn forward_lines() {
    assert_eq!(
        split_forward_line("\\bob, \"|cat > /tmp/x, y\""),
        ["\\bob", "|cat > /tmp/x, y"]
    );
    assert_eq!(split_forward_line("|procmail -a x"), ["|procmail -a x"]);
    assert_eq!(split_forward_line("a@b, c@d,"), ["a@b", "c@d"]);
}

#[test]
fn request_and_result_round_trip() {
    for kind in [
        LocalKind::Maildir {
            path: Some("~/Mail/%{rcpt.user}".into()),
            junk: true,
        },
        LocalKind::Maildir {
            path: None,
            junk: false,
        },
        LocalKind::Mbox,
        LocalKind::Mda("procmail -f %{sender}".into()),
        LocalKind::File("/tmp/x".into()),
        LocalKind::Pipe("cat".into()),
    ] {
        let r = DeliverReq {
            id: 42,
            kind,
            user: "bob".into(),
            sender: "a@b.c".into(),
            rcpt: "bob+x@b.c".into(),
            dest: "bob".into(),
            subaddr_delim: '+',
            forward: true,
            len: 12345,
            userbase: None,
            account: Some("1000:1000:/home/bob".into()),
        };
        assert_eq!(DeliverReq::decode(&r.encode()), Some(r));
    }
    let enc = DeliverReq {
        id: 1,
        kind: LocalKind::Mbox,
        user: "u".into(),
        sender: String::new(),
        rcpt: String::new(),
        dest: String::new(),
        subaddr_delim: '+',
        forward: false,
        len: 0,
        userbase: None,
        account: None,
    }
    .encode();
    assert_eq!(DeliverReq::decode(&enc[..enc.len() - 1]), None);
    for o in [
        Outcome::Ok,
        Outcome::TempFail("t".into()),
        Outcome::PermFail("p".into()),
    ] {
        let r = DeliverRes { id: 9, outcome: o };
        assert_eq!(DeliverRes::decode(&r.encode()), Some(r));
    }
}

#[test]
fn userbase_accounts() {
    use super::deliver::table_account;
    let pw = table_account("vmail", "2000:2001:/srv/mail").unwrap_or_else(|_| panic!("valid"));
    assert_eq!((pw.uid, pw.gid, pw.dir.as_str()), (2000, 2001, "/srv/mail"));
    assert_eq!(pw.name, "vmail");
    let pw = table_account("v", "5:6:/a:b").unwrap_or_else(|_| panic!("valid"));
    assert_eq!(pw.dir, "/a:b");
    for bad in ["", "1:2", "x:2:/h", "1:2:relative", "-1:2:/h"] {
        assert!(
            matches!(table_account("v", bad), Err(Outcome::TempFail(_))),
            "{bad}"
        );
    }
    for root in ["0:5:/root", "5:0:/x"] {
        assert!(matches!(
            table_account("v", root),
            Err(Outcome::PermFail(_))
        ));
    }
}
