//! Tests of the relay options and the `mta` statements.

use crate::config::relay::{MtaLimits, Relay, RelayTls};
use crate::config::{parse, Config, Method};
use crate::nexthop::{Security, Target};
use std::collections::HashMap;
use std::path::Path;

fn conf(text: &str) -> Result<Config, String> {
    let text = format!("listen on 127.0.0.1\n{text}");
    parse(&text, Path::new("/etc/smtpd.conf"), &HashMap::new()).map_err(|e| e.to_string())
}

fn relay(text: &str) -> Relay {
    let c = conf(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    match c.actions.last().map(|a| &a.method) {
        Some(Method::Relay(r)) => (**r).clone(),
        other => panic!("{other:?}"),
    }
}

const PKI: &str =
    "pki mx.example.org cert \"/c\"\npki mx.example.org key \"/k\"\nca roots cert \"/r\"\n";

#[test]
fn every_relay_option() {
    let r = relay("action \"out\" relay");
    assert_eq!(r, Relay::new());
    assert!(r.dane && r.mta_sts && r.host.is_none() && r.tls == RelayTls::Default);
    let r = relay(&format!(
        "{PKI}table secrets {{ bob = \"bob:pw\" }}\ntable helos {{ 192.0.2.1 = out.example.org }}\n\
         action \"out\" relay host \"smtp+tls://bob@relay.example.net:587\" auth <secrets> \
         tls pki mx.example.org ca roots protocols \"tlsv1.3\" helo out.example.org \
         helo-src <helos> src 192.0.2.1 mail-from \"bounces@example.org\" no-dane no-mta-sts ttl 1d"
    ));
    let url = r.host.clone().unwrap_or_else(|| panic!());
    assert_eq!(url.target, Target::Tcp("relay.example.net".into(), 587));
    assert_eq!(url.security, Security::StartTls);
    assert_eq!(url.label.as_deref(), Some("bob"));
    assert!(r.auth.is_some() && r.helo_src.is_some() && r.pki.is_some() && r.ca.is_some());
    assert_eq!(r.tls, RelayTls::Verify);
    assert_eq!(r.helo.as_deref(), Some("out.example.org"));
    assert_eq!(r.mail_from.as_deref(), Some("bounces@example.org"));
    assert!(!r.dane && !r.mta_sts);
    assert_eq!(r.protocols.len(), 1);
    let r = relay("table d { example.net = \"smtp://10.0.0.1\" }\naction \"out\" relay domain <d> tls no-verify");
    assert!(r.domain.is_some());
    assert_eq!(r.tls, RelayTls::NoVerify);
    assert_eq!(relay("action \"out\" relay backup").backup, Some(None));
    assert_eq!(
        relay("action \"out\" relay backup mx mx2.example.org").backup,
        Some(Some("mx2.example.org".into()))
    );
    for scheme in ["smtp", "smtp+tls", "smtp+notls", "smtps", "lmtp"] {
        relay(&format!(
            "action \"out\" relay host \"{scheme}://127.0.0.1\""
        ));
    }
}

#[test]
fn relay_option_errors() {
    let cases = [
        (
            "action \"o\" relay host \"ftp://x\"",
            "unsupported protocol",
        ),
        (
            "action \"o\" relay host \"smtp://x\" host \"smtp://y\"",
            "'host' given twice",
        ),
        (
            "table d { a = b }\naction \"o\" relay host \"smtp://x\" domain <d>",
            "cannot both",
        ),
        (
            "action \"o\" relay host \"smtp://x\" backup",
            "'backup' is for MX",
        ),
        (
            "action \"o\" relay host \"smtp+notls://x\" tls",
            "'tls' cannot be used",
        ),
        (
            "action \"o\" relay host \"lmtp://x\" tls no-verify",
            "'tls' cannot be used",
        ),
        (
            "action \"o\" relay host \"smtp://l@x\"",
            "'auth <table>' is needed",
        ),
        (
            "table s { l = \"u:p\" }\naction \"o\" relay host \"smtp://x\" auth <s>",
            "needs a label",
        ),
        (
            "table s { l = \"u:p\" }\naction \"o\" relay host \"smtp+notls://l@x\" auth <s>",
            "'auth' needs TLS",
        ),
        (
            "table s { l = \"u:p\" }\naction \"o\" relay auth <s>",
            "needs a smarthost",
        ),
        ("action \"o\" relay pki nothere", "undefined pki 'nothere'"),
        ("action \"o\" relay ca nothere", "undefined ca 'nothere'"),
        ("action \"o\" relay src 300.1.1.1", "invalid address"),
        ("action \"o\" relay helo -bad-", "invalid host name"),
        ("action \"o\" relay mail-from \"a b\"", "invalid address"),
        ("action \"o\" relay protocols \"tlsv1.0\"", ""),
        (
            "action \"o\" relay alias <x>",
            "'alias' is an option of local delivery actions, not of relay",
        ),
        ("action \"o\" relay backup mx \"-x\"", "invalid host name"),
    ];
    for (text, want) in cases {
        let e = conf(text)
            .err()
            .unwrap_or_else(|| panic!("accepted: {text}"));
        assert!(e.contains(want), "{text}: {e}");
        assert!(e.starts_with("/etc/smtpd.conf:"), "{e}");
    }
}

#[test]
fn mta_statements() {
    let c = conf(
        "mta max-deferred 7\nmta timeout 30s\nmta limit max-conn-per-route 4 session-mail-max 20\n\
         mta limit for domain Example.ORG max-conn-per-host 2",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.mta.max_deferred, 7);
    assert_eq!(c.mta.timeout.as_secs(), 30);
    assert_eq!(c.mta.limits.max_conn_per_route, 4);
    let d = c.mta.limits_for(Some("example.org"));
    assert_eq!(
        d,
        MtaLimits {
            max_conn_per_route: 4,
            max_conn_per_host: 2,
            session_mail_max: 20
        }
    );
    assert_eq!(c.mta.limits_for(Some("other.example")), c.mta.limits);
    for (text, want) in [
        ("mta limit", "limit name expected"),
        ("mta limit max-conn-per-route 0", "out of range"),
        (
            "mta limit conn-delay-route 5",
            "is not supported: connections are not delayed",
        ),
        ("mta limit bogus 5", "unknown limit 'bogus'"),
        ("mta limit for domain", "domain expected"),
        ("mta max-deferred x", "invalid number"),
        ("mta whatever", "after 'mta'"),
    ] {
        let e = conf(text)
            .err()
            .unwrap_or_else(|| panic!("accepted: {text}"));
        assert!(e.contains(want), "{text}: {e}");
    }
}
