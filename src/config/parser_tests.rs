//! Tests of `parser.rs`.

use super::super::parse;
use super::*;

fn conf(text: &str) -> Result<Config, String> {
    parse(text, Path::new("/etc/smtpd.conf"), &HashMap::new()).map_err(|e| e.to_string())
}

#[test]
fn full_example() {
    let c = conf(
        r#"
            lan = "127.0.0.1"
            table users { "bob@example.org" = bob, "@example.net" = alice }
            table nets { 127.0.0.0/8, ::1 }
            listen on $lan port 2525 hostname mx.example.org tag IN
            listen on ::1 inet6 port 2525
            queue path "/tmp/spool"
            queue ttl 2d
            bounce warn-interval 1h, 4h
            smtp max-message-size 10M
            smtp limit max-rcpt 50 max-mails 10
            smtp timeout 30s
            smtp limit max-sessions-per-address 0 max-connection-rate 600
            control limit max-clients 10 max-clients-per-user 3
            control timeout 1m
            action "local" maildir "/var/mail/%{user.username}" junk alias { postmaster = root } ttl 1h
            action "virt" mbox virtual <users>
            action "out" relay host "smtp://[192.0.2.1]:25"
            match from any for domain "example.org" action "virt"
            match !from src <nets> for any reject
            match from local for any action "out"
            match for local action local
            "#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners.len(), 2);
    assert_eq!(c.listeners[0].addrs[0].to_string(), "127.0.0.1:2525");
    assert_eq!(c.listeners[0].tag.as_deref(), Some("IN"));
    assert_eq!(c.queue.path, PathBuf::from("/tmp/spool"));
    assert_eq!(c.queue.ttl, Duration::from_secs(2 * 86400));
    assert_eq!(
        c.queue.warn_intervals,
        [Duration::from_secs(3600), Duration::from_secs(14400)]
    );
    assert_eq!(c.smtp.max_message_size, 10 << 20);
    assert_eq!((c.smtp.max_rcpt, c.smtp.max_mails), (50, 10));
    assert_eq!(c.smtp.timeout, Duration::from_secs(30));
    assert_eq!(
        (c.smtp.max_sessions_per_address, c.smtp.max_connection_rate),
        (0, 600)
    );
    assert_eq!(
        (c.control.max_clients, c.control.max_clients_per_user),
        (10, 3)
    );
    assert_eq!(c.control.timeout, Duration::from_secs(60));
    assert_eq!(c.actions.len(), 3);
    assert!(matches!(
        c.actions[0].method,
        Method::Maildir { junk: true, .. }
    ));
    assert_eq!(c.rules.len(), 4);
    assert_eq!(
        c.rules[1].conds[0],
        (true, Cond::FromSrc(Matcher::Table(1)))
    );
    assert_eq!(c.rules[1].decision, Decision::Reject);
    assert_eq!(
        c.rules[3].conds,
        [(false, Cond::FromLocal), (false, Cond::ForLocal)]
    );
}

#[test]
fn errors_name_file_and_line() {
    let cases = [
        (
            "listen on 127.0.0.1\nbogus\n",
            "/etc/smtpd.conf:2: unknown keyword 'bogus'",
        ),
        (
            "listen on 127.0.0.1 port 0",
            "/etc/smtpd.conf:1: invalid port '0'",
        ),
        (
            "listen on 127.0.0.1\nmatch for any action nope",
            "/etc/smtpd.conf:2: undefined action 'nope'",
        ),
        (
            "listen on 127.0.0.1\naction a mbox alias <t>",
            "/etc/smtpd.conf:2: undefined table 't'",
        ),
        (
            "listen on 127.0.0.1\n\nsmtp limit max-rcpt 0",
            "/etc/smtpd.conf:3: max-rcpt: 0 is out of range (at least 1)",
        ),
        (
            "listen on 127.0.0.1\nsmtp limit max-command-line 100",
            "/etc/smtpd.conf:2: max-command-line: 100 is out of range (at least 512)",
        ),
        (
            "listen on 127.0.0.1\ncontrol limit max-clients 0",
            "/etc/smtpd.conf:2: max-clients: 0 is out of range (at least 1)",
        ),
        (
            "listen on 127.0.0.1\ncontrol timeout 0s",
            "/etc/smtpd.conf:2: invalid duration '0s'",
        ),
        (
            "listen on 127.0.0.1\ncontrol bogus",
            "/etc/smtpd.conf:2: after 'control': limit or timeout",
        ),
        (
            "listen on 127.0.0.1\nmatch from src 300.1.1.1 reject",
            "/etc/smtpd.conf:2: invalid address or network '300.1.1.1'",
        ),
        (
            "action a mbox",
            "/etc/smtpd.conf: no listener: add a 'listen on' line",
        ),
        (
            "listen on 127.0.0.1 port 25 bogus",
            "/etc/smtpd.conf:1: unexpected 'bogus'",
        ),
        (
            "listen on 127.0.0.1\nmatch from any",
            "/etc/smtpd.conf:2: 'action NAME' or 'reject' expected",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(conf(text).err().as_deref(), Some(want), "{text}");
    }
}

#[test]
fn command_line_macros_win() {
    let mut m = HashMap::new();
    m.insert("p".to_string(), "2600".to_string());
    let c =
        parse("p = 25\nlisten on 127.0.0.1 port $p", Path::new("x"), &m).map_err(|e| e.to_string());
    assert_eq!(c.map(|c| c.listeners[0].addrs[0].port()), Ok(2600));
}

#[test]
fn a_macro_expanding_to_nothing_leaves_an_empty_line() {
    // Found by the config fuzz target: the refusal of what follows named no file.
    let text = "empty = \"\"\n$empty\nlisten on 127.0.0.1\n&\n";
    assert_eq!(
        conf(text).map(|_| ()),
        Err("/etc/smtpd.conf:4: unknown keyword '&'".to_string())
    );
    assert!(conf("empty = \"\"\n$empty\nlisten on 127.0.0.1 $empty port 25\n").is_ok());
}

#[test]
fn development_default_parses() {
    let c = parse(
        super::super::DEVELOPMENT,
        Path::new("./built-in"),
        &HashMap::new(),
    );
    assert!(c.is_ok(), "{c:?}");
}

#[test]
fn sizes_and_durations() {
    assert_eq!(parse_size("35M"), Some(35 << 20));
    assert_eq!(parse_size("512"), Some(512));
    assert_eq!(parse_size("x"), None);
    assert_eq!(parse_duration("4d"), Some(Duration::from_secs(345600)));
    // A unit is needed, as in OpenSMTPD: a bare number is refused with a hint.
    assert_eq!(parse_duration("90"), None);
    assert_eq!(parse_duration("+9s"), None);
    assert_eq!(parse_duration("d"), None);
    assert_eq!(
        invalid_duration("90"),
        "invalid duration '90': give its unit, as in 90s, 90m, 90h or 90d"
    );
}

const PKIS: &str = "pki mx.example.org cert \"/c/mx.crt\"\npki mx.example.org key \"/c/mx.key\"\n\
                    pki Mail.Example.NET cert \"/c/mail.crt\"\npki mail.example.net key \"/c/mail.key\"\n\
                    pki mail.example.net dhe auto\nca clients cert \"/c/ca.pem\"\n";

#[test]
fn tls_listeners() {
    use crate::config::tls::{Suite, TlsVersion};
    let c = conf(&format!(
        "{PKIS}listen on 127.0.0.1 hostname mx.example.org tls\n\
         listen on 127.0.0.1 port submission tls-require verify pki mail.example.net pki mx.example.org ca clients\n\
         listen on 127.0.0.1 smtps pki mx.example.org protocols \"tlsv1.3\" ciphers \"TLS_AES_128_GCM_SHA256\"\n\
         listen on 127.0.0.1 port 2525\n\
         match tls for any reject\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.pkis.len(), 2);
    assert_eq!(c.pkis[1].dhe, Dhe::Auto);
    assert_eq!(
        c.pkis[0].key.as_ref().map(|(p, at)| (p.clone(), at.line)),
        Some((PathBuf::from("/c/mx.key"), 2))
    );
    let t: Vec<_> = c.listeners.iter().map(|l| l.tls.clone()).collect();
    let starttls = t[0].as_ref().unwrap_or_else(|| panic!("tls"));
    // No pki named: the one named like the listener's host name.
    assert_eq!(
        (starttls.mode, starttls.pkis.clone()),
        (TlsMode::Starttls, vec![0])
    );
    assert_eq!(starttls.protocols, TlsVersion::ALL.to_vec());
    assert_eq!(starttls.ciphers, Suite::ALL.to_vec());
    let sub = t[1].as_ref().unwrap_or_else(|| panic!("tls-require"));
    assert_eq!(c.listeners[1].addrs[0].port(), 587);
    assert_eq!(
        (sub.mode, sub.verify, sub.pkis.clone(), sub.ca),
        (TlsMode::Require, true, vec![1, 0], Some(0))
    );
    let smtps = t[2].as_ref().unwrap_or_else(|| panic!("smtps"));
    assert_eq!(c.listeners[2].addrs[0].port(), 465);
    assert_eq!(smtps.mode, TlsMode::Smtps);
    assert_eq!(smtps.protocols, vec![TlsVersion::V13]);
    assert_eq!(smtps.ciphers, vec![Suite::Tls13Aes128Gcm]);
    assert!(t[3].is_none());
    assert_eq!(c.rules[0].conds[1], (false, Cond::Tls));
}

#[test]
fn tls_errors() {
    let cases = [
        (
            "listen on 127.0.0.1 tls pki nope",
            "7: undefined pki 'nope'",
        ),
        (
            "listen on 127.0.0.1 hostname x.example tls",
            "7: no pki for this TLS listener",
        ),
        (
            "listen on 127.0.0.1 pki mx.example.org",
            "7: 'pki' needs tls",
        ),
        ("listen on 127.0.0.1 ciphers HIGH", "7: 'ciphers' needs tls"),
        (
            "listen on 127.0.0.1 tls smtps pki mx.example.org",
            "7: only one of tls",
        ),
        ("listen on 127.0.0.1 tls verify", "7: unexpected 'verify'"),
        (
            "listen on 127.0.0.1 smtps pki mx.example.org ca nope",
            "7: undefined ca 'nope'",
        ),
        (
            "listen on 127.0.0.1 tls pki mx.example.org protocols \"tlsv1.1\"",
            "7: protocol 'tlsv1.1' is not supported",
        ),
        (
            "listen on 127.0.0.1 tls pki mx.example.org ciphers \"HIGH:RC4-MD5\"",
            "7: unknown cipher 'RC4-MD5'",
        ),
        (
            "listen on 127.0.0.1 tls pki mx.example.org ciphers \"TLS_AES_128_GCM_SHA256\"",
            "7: ciphers leave no cipher suite for TLSv1.2",
        ),
        (
            "listen on 127.0.0.1 port nosuchservice",
            "7: invalid port 'nosuchservice'",
        ),
        (
            "pki mx.example.org dhe strong",
            "7: after 'dhe': none, auto or legacy",
        ),
        (
            "pki mx.example.org cert \"/x\"",
            "7: pki 'mx.example.org': cert given twice",
        ),
        ("ca clients cert \"/x\"", "7: ca 'clients' defined twice"),
        ("pki lone cert \"/x\"", "7: pki 'lone': no key"),
        ("pki lone key \"/x\"", "7: pki 'lone': no certificate"),
    ];
    for (line, want) in cases {
        let text = format!("{PKIS}{line}\nlisten on 127.0.0.1\n");
        let e = conf(&text)
            .err()
            .unwrap_or_else(|| panic!("{line}: accepted"));
        assert!(e.contains(want), "{line}: {e}");
    }
}

#[test]
fn auth_options_and_conditions() {
    let c = conf(
        r#"
            table creds { bob = "$6$salt$hash", "Carol" = "carol:$y$j9T$salt$hash" }
            table senders { bob = "bob@example.org, @example.net" }
            pki mx.example.org cert "/c/mx.crt"
            pki mx.example.org key "/c/mx.key"
            listen on 127.0.0.1 port 587 hostname mx.example.org tls-require auth <creds> senders <senders> masquerade received-auth
            listen on 127.0.0.1 port 588 hostname mx.example.org smtps auth-optional
            listen on 127.0.0.1 port 589
            smtp limit max-auth-failures 5
            action "out" relay
            match from auth for any action "out"
            match from auth bob for any action "out"
            match from any auth <senders> for any action "out"
            match !auth for local action "out"
            "#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let a = c.listeners[0].auth;
    assert_eq!(a.mode, AuthMode::Required);
    assert_eq!((a.table, a.senders), (Some(0), Some(1)));
    assert!(a.masquerade && a.received_auth);
    let b = c.listeners[1].auth;
    assert_eq!(
        (b.mode, b.table, b.senders),
        (AuthMode::Optional, None, None)
    );
    assert_eq!(c.listeners[2].auth, ListenerAuth::default());
    assert_eq!(c.smtp.max_auth_failures, 5);
    assert_eq!(c.rules[0].conds[0], (false, Cond::FromAuth(None)));
    assert_eq!(
        c.rules[1].conds[0],
        (false, Cond::FromAuth(Some(Matcher::Value("bob".into()))))
    );
    assert_eq!(
        c.rules[2].conds[1],
        (false, Cond::Auth(Some(Matcher::Table(1))))
    );
    // `auth` beside no `from` keeps the default `from local`.
    assert_eq!(
        c.rules[3].conds,
        [
            (false, Cond::FromLocal),
            (true, Cond::Auth(None)),
            (false, Cond::ForLocal)
        ]
    );
}

#[test]
fn auth_option_errors() {
    let cases = [
        (
            "table c { bob = secret }\nlisten on 127.0.0.1 auth <c>",
            "/etc/smtpd.conf:2: table 'c': the entry of 'bob' is no crypt(3) hash (make one with 'smtpctl encrypt')",
        ),
        (
            "listen on 127.0.0.1 port 587 auth-optional",
            "/etc/smtpd.conf:1: 'auth-optional' needs tls, tls-require or smtps",
        ),
        (
            "listen on 127.0.0.1 auth auth-optional",
            "/etc/smtpd.conf:1: 'auth' or 'auth-optional' given twice",
        ),
        (
            "table s { bob = bob@example.org }\nlisten on 127.0.0.1 senders <s>",
            "/etc/smtpd.conf:2: 'senders' needs 'auth' or 'auth-optional' on the same listener",
        ),
        (
            "listen on 127.0.0.1 received-auth",
            "/etc/smtpd.conf:1: 'received-auth' needs 'auth' or 'auth-optional' on the same listener",
        ),
        (
            "listen on 127.0.0.1 auth <nope>",
            "/etc/smtpd.conf:1: undefined table 'nope'",
        ),
        (
            "listen on 127.0.0.1 auth senders masquerade",
            "/etc/smtpd.conf:1: expected '<'",
        ),
        (
            "listen on 127.0.0.1\nsmtp limit max-auth-failures 0",
            "/etc/smtpd.conf:2: max-auth-failures: 0 is out of range (at least 1)",
        ),
    ];
    for (text, want) in cases {
        assert_eq!(conf(text).err().as_deref(), Some(want), "{text}");
    }
}
