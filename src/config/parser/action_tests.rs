//! Tests of `action.rs` and of the forms OpenSMTPD's grammar refuses that the parser
//! refuses too, each with its reason: options and conditions given twice, checks of
//! built-in filters in a phase that does not know their value, lists where a mapping
//! is needed, OpenSMTPD's table types.

use crate::config::model::*;
use crate::config::parse;
use crate::table::Source;
use std::collections::HashMap;
use std::path::Path;

fn conf(text: &str) -> Result<Config, String> {
    let text = format!("listen on 127.0.0.1\n{text}\n");
    parse(&text, Path::new("/etc/smtpd.conf"), &HashMap::new()).map_err(|e| e.to_string())
}

/// The message of the error, without `FILE:LINE: ` (the line of the statement after
/// the listener's, or a later one).
fn err(text: &str) -> String {
    let e = match conf(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e,
    };
    let line = 2 + text.matches('\n').count();
    match (2..=line).find_map(|n| e.strip_prefix(&format!("/etc/smtpd.conf:{n}: "))) {
        Some(m) => m.to_string(),
        None => panic!("not at a line of the statements: {e}"),
    }
}

#[test]
fn checks_of_values_not_known_yet() {
    for (check, phase, why) in [
        (
            "helo x",
            "connect",
            "the HELO name is known from phase 'helo' on",
        ),
        (
            "mail-from a@b",
            "helo",
            "the sender is known from phase 'mail-from' on",
        ),
        (
            "mail-from a@b",
            "connect",
            "the sender is known from phase 'mail-from' on",
        ),
        (
            "auth",
            "ehlo",
            "AUTH comes after EHLO, so check it from phase 'mail-from' on",
        ),
        (
            "rcpt-to a@b",
            "mail-from",
            "a recipient is known in phase 'rcpt-to' only",
        ),
        (
            "rcpt-to a@b",
            "data",
            "a recipient is known in phase 'rcpt-to' only",
        ),
        (
            "rcpt-to a@b",
            "commit",
            "a recipient is known in phase 'rcpt-to' only",
        ),
    ] {
        let name = check.split(' ').next().unwrap_or_default();
        for neg in ["", "!"] {
            let e = err(&format!("filter f phase {phase} match {neg}{check} junk"));
            assert_eq!(
                e,
                format!("check '{name}' is not possible in phase '{phase}': {why}")
            );
        }
    }
    // What each phase knows, as OpenSMTPD's grammar allows it.
    let c = conf(
        "filter a phase connect match src 10.0.0.0/8 rdns fcrdns junk\n\
         filter b phase helo match helo x junk\n\
         filter c phase ehlo match !helo x fcrdns junk\n\
         filter d phase mail-from match helo x auth mail-from a@b junk\n\
         filter e phase rcpt-to match auth rcpt-to a@b mail-from a@b junk\n\
         filter f phase data match helo x auth mail-from a@b junk\n\
         filter g phase commit match helo x auth mail-from a@b junk",
    );
    assert_eq!(c.map(|c| c.filters.len()), Ok(7));
}

#[test]
fn action_options_given_once() {
    for (text, word) in [
        ("action a relay helo a.example helo b.example", "helo"),
        ("action a relay src 127.0.0.1 src 127.0.0.2", "src"),
        ("action a relay tls tls no-verify", "tls"),
        ("action a relay backup backup mx mx.example.org", "backup"),
        ("action a relay mail-from a@b mail-from a@b", "mail-from"),
        ("action a relay pki a pki b", "pki"),
        ("action a relay no-dane no-dane", "no-dane"),
        ("action a relay host smtp://x host smtp://y", "host"),
        ("action a relay srs srs", "srs"),
        ("action a maildir alias { a = b } alias { a = b }", "alias"),
        ("action a maildir junk ttl 1d ttl 2d", "ttl"),
        ("action a relay ttl 1d ttl 2d", "ttl"),
        ("action a maildir user nobody user root", "user"),
        ("action a mda x userbase { a } userbase { a }", "userbase"),
    ] {
        assert_eq!(err(text), format!("'{word}' given twice"), "{text}");
    }
}

#[test]
fn a_keyword_is_no_maildir_path() {
    for word in ["tls", "helo", "srs", "host", "src", "domain"] {
        assert_eq!(
            err(&format!("action a maildir {word}")),
            format!(
                "maildir: '{word}' is an option of relay actions, not a path (quote a \
                 directory of that name: maildir \"{word}\")"
            )
        );
    }
    assert!(err("action a maildir relay").contains("'relay' is a keyword of actions"));
    // Quoted, it is a directory next to the configuration; unquoted words are paths
    // too, as in OpenSMTPD; local options follow the method.
    let c = conf(
        "action a maildir \"tls\" junk\naction b maildir Mail2 junk\naction c maildir alias { x = y }\n\
         action d maildir ttl 1d",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let paths: Vec<_> = c
        .actions
        .iter()
        .map(|a| match &a.method {
            Method::Maildir { path, junk } => (path.clone(), *junk),
            m => panic!("{m:?}"),
        })
        .collect();
    assert_eq!(
        paths,
        [
            (Some("/etc/tls".to_string()), true),
            (Some("/etc/Mail2".to_string()), true),
            (None, false),
            (None, false),
        ]
    );
}

#[test]
fn a_list_is_no_mapping() {
    for (text, what, key) in [
        (
            "action a relay domain { example.com }",
            "domain",
            "example.com",
        ),
        ("action a maildir alias { root }", "alias", "root"),
        ("action a maildir virtual { @x = y, @z }", "virtual", "@z"),
        (
            "action a relay helo-src { 127.0.0.1 }",
            "helo-src",
            "127.0.0.1",
        ),
        ("action a relay host smtps://l@x auth { l }", "auth", "l"),
    ] {
        assert_eq!(
            err(text),
            format!("the table given to '{what}' must be a mapping (key => value): '{key}' has no value"),
            "{text}"
        );
    }
    // An empty table is a mapping; `userbase` takes a list of users.
    assert!(conf("action a maildir alias { } userbase { bob }").is_ok());
}

#[test]
fn user_and_the_options_of_the_other_kind() {
    assert!(err("action a mbox user nobody").starts_with("'user' may not be given to mbox: "));
    assert!(err("action a forward-only user x")
        .starts_with("'user' may not be given to forward-only: "));
    assert!(
        err("action a expand-only user x").starts_with("'user' may not be given to expand-only: ")
    );
    assert!(conf("action a lmtp /run/l.sock user x\naction b mda x user y").is_ok());
    for word in ["alias", "virtual", "userbase", "user", "wrapper", "junk"] {
        assert_eq!(
            err(&format!("action a relay {word} x")),
            format!("'{word}' is an option of local delivery actions, not of relay")
        );
    }
    assert_eq!(
        err("action a maildir \"/m\" helo x"),
        "'helo' is an option of relay actions, not of maildir"
    );
    assert_eq!(
        err("action a lmtp /run/l.sock tls"),
        "'tls' is an option of relay actions, not of lmtp"
    );
}

#[test]
fn listener_options_given_once() {
    for (opts, word) in [
        ("port 1 port 2", "port"),
        ("tag A tag B", "tag"),
        ("hostname a.example hostname b.example", "hostname"),
        ("mask-src no-dsn mask-src", "mask-src"),
        ("filter f filter f", "filter"),
        ("tls pki p protocols tlsv1.2 protocols tlsv1.3", "protocols"),
        ("tls pki p ca c ca c", "ca"),
    ] {
        let e = err(&format!(
            "filter f phase connect match rdns junk\nlisten on 127.0.0.2 {opts}"
        ));
        assert_eq!(e, format!("'{word}' given twice"), "{opts}");
    }
    assert_eq!(
        err("listen on 127.0.0.2 inet4 inet6"),
        "only one of inet4 and inet6 may be given"
    );
    assert_eq!(
        err("listen on socket port 25"),
        "unexpected 'port': 'listen on socket' takes only filter, tag, mask-src, no-dsn and senders"
    );
    assert_eq!(
        err("listen on 127.0.0.2 auth masquerade"),
        "'masquerade' follows 'senders <table>', as in 'senders <users> masquerade'"
    );
}

#[test]
fn rule_conditions_given_once() {
    for (conds, word) in [
        ("tag A tag B", "tag"),
        ("auth !auth", "auth"),
        ("from auth auth bob", "auth"),
        ("auth from auth", "auth"),
        ("helo a !helo b", "helo"),
        ("mail-from a@b from mail-from c@d", "mail-from"),
        ("for rcpt-to a@b rcpt-to c@d", "rcpt-to"),
        ("tls !tls", "tls"),
    ] {
        assert_eq!(
            err(&format!("match {conds} reject")),
            format!("'{word}' given twice in one rule"),
            "{conds}"
        );
    }
    let c = conf("match from any tag A !helo x mail-from a@b rcpt-to c@d auth tls for any reject");
    assert_eq!(c.map(|c| c.rules[0].conds.len()), Ok(8));
}

#[test]
fn opensmtpd_table_types() {
    let c = conf("table pw getpwnam\naction a maildir userbase <pw>\ntable h static:/etc/hosts")
        .unwrap_or_else(|e| panic!("{e}"));
    // The system's accounts are the default user base.
    assert_eq!(c.actions[0].userbase, None);
    assert_eq!(c.tables.len(), 1);
    assert_eq!(c.tables[0].source, Source::File("/etc/hosts".into()));
    assert_eq!(
        err("table pw getpwnam\nmatch for domain <pw> reject"),
        "table 'pw' (getpwnam) holds the system's accounts: it can be given to 'userbase' only"
    );
    assert!(err("table pw getpwnam:/x").contains("takes no argument"));
    assert!(err("table pw { a }\ntable pw getpwnam").contains("defined twice"));
    let e = err("table t proc:/usr/bin/cat");
    assert!(
        e.starts_with("table type 'proc' is not supported: ")
            && e.contains("'table t proc-exec \"/usr/bin/cat\"'"),
        "{e}"
    );
}

#[test]
fn durations_need_a_unit_and_session_keepalive_its_reason() {
    assert_eq!(
        err("queue ttl 3"),
        "invalid duration '3': give its unit, as in 3s, 3m, 3h or 3d"
    );
    assert!(err("smtp timeout 30").starts_with("invalid duration '30': give its unit"));
    assert!(err("bounce warn-interval 1h, 3").starts_with("invalid duration '3'"));
    assert_eq!(
        err("mta limit session-keepalive 10"),
        "mta limit session-keepalive is not supported: an outgoing session sends QUIT as \
         soon as no message waits for its destination, instead of staying open idle"
    );
}
