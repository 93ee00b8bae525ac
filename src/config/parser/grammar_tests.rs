//! Tests of the OpenSMTPD statements and options of `global.rs`, `rules.rs`,
//! `listen_opts.rs` and the refusals of `compat.rs`.

use crate::config::model::*;
use crate::config::parse;
use std::collections::HashMap;
use std::path::Path;

fn conf(text: &str) -> Result<Config, String> {
    let text = format!("listen on 127.0.0.1\n{text}\n");
    parse(&text, Path::new("/etc/smtpd.conf"), &HashMap::new()).map_err(|e| e.to_string())
}

fn err(text: &str) -> String {
    match conf(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e,
    }
}

#[test]
fn quotes_and_arrows() {
    let c = conf("table t { 'a b' => 'c', \"d\" = e }\nadmd 'mx.example.org'").unwrap();
    assert_eq!(c.tables[0].entries().get("a b"), Some("c"));
    assert_eq!(c.tables[0].entries().get("d"), Some("e"));
    assert_eq!(c.admd.as_deref(), Some("mx.example.org"));
    assert!(err("admd \"two words\"").contains("admd: invalid"));
}

#[test]
fn regular_expressions() {
    let c = conf(
        "table pats { '^ALICE@', 'b[o]b' }\naction a mbox\n\
         match from any for rcpt-to regex <pats> action a\n\
         match from any for domain regex '(?i)^EXAMPLE\\.(org|net)$' action a\n\
         match from any mail-from regex \"^$\" tag regex { '^in' } action a",
    )
    .unwrap();
    let Cond::ForRcptTo(Matcher::Regex(res)) = &c.rules[0].conds[1].1 else {
        panic!("{:?}", c.rules[0].conds);
    };
    // The table's keys as written, not lower-cased.
    assert_eq!(res[0].pattern(), "^ALICE@");
    assert!(res[0].is_match("ALICE@x") && !res[0].is_match("alice@x"));
    assert!(matches!(
        &c.rules[1].conds[1].1,
        Cond::ForDomain(Matcher::Regex(_))
    ));
    let e = err("action a mbox\nmatch from any for domain regex 'a(' action a");
    assert!(
        e.starts_with("/etc/smtpd.conf:3: invalid regular expression 'a('"),
        "{e}"
    );
    assert!(err("action a relay src regex '1'").contains("cannot be a regular expression"));
}

#[test]
fn reverse_dns_rules() {
    let c = conf(
        "action a mbox\nmatch from rdns action a\nmatch from rdns regex '\\.example$' action a\n\
         match !from rdns { '*.example.org' } for any reject\nmatch from rdns for any reject",
    )
    .unwrap();
    assert_eq!(c.rules[0].conds[0], (false, Cond::FromRdns(None)));
    assert!(matches!(
        c.rules[2].conds[0],
        (true, Cond::FromRdns(Some(Matcher::Table(_))))
    ));
    assert_eq!(c.rules[3].conds[0], (false, Cond::FromRdns(None)));
    assert!(c.needs_rdns());
}

#[test]
fn listener_options() {
    let c = conf(
        "table names { 127.0.0.1 = mx.example.org }\n\
         listen on 127.0.0.2 mask-src no-dsn hostnames <names>\n\
         listen on socket tag LOCAL mask-src no-dsn",
    )
    .unwrap();
    let o = c.listeners[1].options;
    assert!(o.mask_src && o.no_dsn && o.hostnames == Some(0));
    assert_eq!(c.socket.tag.as_deref(), Some("LOCAL"));
    assert!(c.socket.options.mask_src && c.socket.options.no_dsn);
    assert_eq!(c.listeners[0].options, SessionOptions::default());
    assert!(!c.listeners[1].proxy_v2);
    let c = conf(
        "listen on 127.0.0.2 port 2525 proxy-v2 smtps pki p\n\
                  pki p cert /c.pem\npki p key /k.pem",
    )
    .unwrap();
    assert!(c.listeners[1].proxy_v2 && !c.listeners[0].proxy_v2);
    let e = err("listen on 127.0.0.2 proxy-v2 proxy-v2");
    assert!(e.contains("'proxy-v2' given twice"), "{e}");
    assert!(err("listen on socket proxy-v2").contains("unexpected 'proxy-v2'"));
    assert!(err("table n { x = y }\nlisten on 127.0.0.2 hostnames <n>").contains("no IP address"));
    assert!(err("listen on socket hostnames <x>").contains("unexpected 'hostnames'"));
    assert!(err("listen on socket tag a tag b").contains("'tag' given twice"));
    assert!(err("listen on socket tag a\nlisten on socket tag b").contains("tag already given"));
}

#[test]
fn srs_statements() {
    let c = conf("srs key s3cret\nsrs key backup old\nsrs ttl 7d\naction r relay srs").unwrap();
    assert_eq!(c.srs.key.as_deref(), Some("s3cret"));
    assert_eq!(c.srs.backup.as_deref(), Some("old"));
    assert_eq!(c.srs.ttl_days, 7);
    let Method::Relay(r) = &c.actions[0].method else {
        panic!()
    };
    assert!(r.srs);
    // The key may come after the action; an action without any key is refused.
    assert!(conf("action r relay srs\nsrs key k").is_ok());
    assert_eq!(
        err("action r relay srs"),
        "/etc/smtpd.conf:2: 'srs' needs a key: add 'srs key SECRET'"
    );
    assert!(err("srs ttl 1h").contains("too short"));
    assert!(err("srs ttl 2000d").contains("too long"));
}

#[test]
fn queue_encryption_forms() {
    let key = "0123456789abcdef0123456789abcdef";
    let c = conf(&format!("queue encryption {key}")).unwrap();
    assert_eq!(c.queue.encryption, Some(QueueKey::Given(key.into())));
    for (form, want) in [
        ("queue encryption", QueueKey::Prompt),
        ("queue encryption stdin", QueueKey::Stdin),
        ("queue encryption -", QueueKey::Stdin),
    ] {
        assert_eq!(conf(form).unwrap().queue.encryption, Some(want));
    }
    assert!(!format!("{:?}", QueueKey::Given(key.into())).contains(key));
    assert!(err("queue encryption short").contains("must be 32 characters"));
    assert!(err("queue compression").contains("'queue compression' is not supported"));
}

#[test]
fn mda_wrappers_and_limits() {
    let c = conf(
        "mda wrapper spam \"/usr/bin/spamc -e %{mda}\"\nmda limit max-session 7\n\
         action m mda \"procmail -f '%{sender}'\" wrapper spam",
    )
    .unwrap();
    assert_eq!(c.mda.max_session, 7);
    assert_eq!(
        c.actions[0].method,
        Method::Mda("/usr/bin/spamc -e procmail -f '%{sender}'".into())
    );
    assert_eq!(c.actions[0].wrapper.as_deref(), Some("spam"));
    assert!(err("action m mda x wrapper nope").contains("undefined mda wrapper 'nope'"));
    assert!(
        err("mda wrapper w \"x %{mda}\"\naction m maildir wrapper w")
            .contains("'wrapper' applies to mda actions only")
    );
    assert!(err("mda wrapper w \"x '%{mda}'\"").contains("inside quotes"));
    assert!(err("mda limit max-session 0").contains("out of range"));
    let e = err("mda limit max-session-per-user 3");
    assert!(
        e.contains("mda limit max-session-per-user is not supported"),
        "{e}"
    );
    let e = err("mta limit conn-delay-route 5");
    assert!(
        e.contains("mta limit conn-delay-route is not supported"),
        "{e}"
    );
    assert!(err("mta limit inet4").contains("mta limit inet4 is not supported"));
    assert!(err("mta limit bogus 1").contains("unknown limit 'bogus'"));
    assert!(err("scheduler limit max-inflight 10").contains("'scheduler' is not supported"));
}

#[test]
fn smtp_ciphers_are_the_default() {
    let pki = "pki mx cert /x.crt\npki mx key /x.key\n";
    let c = conf(&format!(
        "{pki}listen on 127.0.0.3 tls pki mx\nlisten on 127.0.0.4 tls pki mx \
         ciphers ECDHE-RSA-AES256-GCM-SHA384\nsmtp ciphers \"HIGH:!aNULL:!MD5\"\n\
         action r relay\naction s relay ciphers ECDHE-RSA-AES128-GCM-SHA256"
    ))
    .unwrap();
    let given = crate::config::tls::parse_ciphers("HIGH:!aNULL:!MD5").unwrap();
    let tls = |i: usize| c.listeners[i].tls.as_ref().unwrap().ciphers.clone();
    assert_eq!(tls(1), given);
    assert_eq!(tls(2).len(), 1 + 3);
    let relay = |i: usize| match &c.actions[i].method {
        Method::Relay(r) => r.ciphers.clone(),
        _ => panic!(),
    };
    assert_eq!(relay(0), given);
    assert_ne!(relay(1), given);
    assert!(err("smtp ciphers NOPE").contains("NOPE"));
}

#[test]
fn builtin_filter_forms() {
    let c = conf(
        "filter f phase mail-from match !auth regex '^bob$' reject \"550 no\"\n\
         filter g phase rcpt-to match auth junk",
    )
    .unwrap();
    let FilterKind::Builtin(b) = &c.filters[0].kind else {
        panic!()
    };
    assert!(matches!(
        b.checks[0],
        (true, Check::Auth(Some(Matcher::Regex(_))))
    ));
    let FilterKind::Builtin(b) = &c.filters[1].kind else {
        panic!()
    };
    assert_eq!(b.checks[0], (false, Check::Auth(None)));
    assert!(err("filter f phase connect match auth junk").contains("not possible in phase"));
    assert!(err("filter f phase auth match src 1.2.3.4 junk").contains("phase 'auth'"));
    assert!(
        err("filter f phase connect match src 1.2.3.4 report \"x\"").contains("'report' decision")
    );
}

#[test]
fn relay_refusals() {
    assert!(err("table h { smtp://a }\naction r relay host <h>").contains("several smarthosts"));
    assert!(
        err("filter f phase connect match rdns junk\naction r relay filter f")
            .contains("'filter' on a relay action")
    );
}
