//! The Sendmail macros a session gives its milters: which names go with each stage by
//! default, and the values the bridge knows (the connection, the transaction, and what
//! the daemon reported of TLS and AUTH).

use super::{Config, Session};
use crate::conn::MacroSet;
use crate::milter::{cmd, Family};

/// What the daemon told of a session's TLS handshake, for the TLS macros.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// The protocol version (`{tls_version}`).
    pub version: String,
    /// The cipher suite (`{cipher}`).
    pub cipher: String,
    /// Its key length (`{cipher_bits}`).
    pub bits: u16,
    /// The verified client certificate's subject, or empty (`{cert_subject}`).
    pub subject: String,
}

/// Default macro names by stage (the milter may ask for its own lists).
fn default_names(code: u8) -> &'static [&'static str] {
    match code {
        cmd::CONNECT => &[
            "j",
            "{daemon_name}",
            "{daemon_addr}",
            "{daemon_port}",
            "{if_addr}",
            "{if_name}",
            "{client_addr}",
            "{client_port}",
            "{client_name}",
            "{client_ptr}",
            "_",
            "v",
        ],
        // As Sendmail and Postfix: the TLS facts with HELO (sent again after STARTTLS).
        cmd::HELO => &[
            "{tls_version}",
            "{cipher}",
            "{cipher_bits}",
            "{cert_subject}",
        ],
        cmd::MAIL => &[
            "i",
            "{auth_type}",
            "{auth_authen}",
            "{mail_addr}",
            "{mail_host}",
            "{mail_mailer}",
        ],
        cmd::RCPT => &["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
        cmd::DATA | cmd::EOH | cmd::BODYEOB => &["i"],
        _ => &[],
    }
}

fn is_default_name(n: &str) -> bool {
    let b = n.trim_start_matches('{').trim_end_matches('}');
    [cmd::CONNECT, cmd::HELO, cmd::MAIL, cmd::RCPT, cmd::DATA]
        .iter()
        .flat_map(|c| default_names(*c).iter())
        .any(|d| d.trim_start_matches('{').trim_end_matches('}') == b)
}

/// The host part of an address and the mailer Sendmail would name for it.
fn host_and_mailer(addr: &str) -> (String, &'static str) {
    match addr.rsplit_once('@') {
        Some((_, d)) if !d.is_empty() => (d.to_string(), "smtp"),
        _ => (String::new(), "local"),
    }
}

impl Session {
    /// The name given to milters in CONNECT and `{client_name}`: the host name, else the
    /// bracketed address as Sendmail writes it.
    pub(super) fn client_name(&self) -> String {
        if !self.hostname.is_empty() {
            return self.hostname.clone();
        }
        match &self.remote {
            Family::Inet4(ip, _) => format!("[{ip}]"),
            Family::Inet6(ip, _) => format!("[IPv6:{ip}]"),
            Family::Local => "localhost".into(),
            Family::Unknown => "unknown".into(),
        }
    }

    /// The queue id given as macro `i`: the session id and the transaction's number (the
    /// daemon's message id is only known once the message is committed).
    pub(super) fn queue_id(&self) -> String {
        format!("{:016X}.{}", self.sid, self.txn)
    }

    pub(super) fn macro_set(&self, code: u8, cfg: &Config) -> MacroSet {
        let mut v: Vec<(String, String)> = Vec::with_capacity(24);
        let mut put = |k: &str, val: String| v.push((k.to_string(), val));
        put("j", cfg.hostname.clone());
        put("{daemon_name}", "smtpd".into());
        if let Some(a) = self.local.addr() {
            put("{daemon_addr}", a.clone());
            put("{if_addr}", a);
        }
        if let Some(p) = self.local.port() {
            put("{daemon_port}", p.to_string());
        }
        let name = self.client_name();
        if let Some(a) = self.remote.addr() {
            put("{client_addr}", a.clone());
            put("_", format!("{name} [{a}]"));
        } else {
            put("_", name.clone());
        }
        if let Some(p) = self.remote.port() {
            put("{client_port}", p.to_string());
        }
        put("{client_name}", name);
        if !self.hostname.is_empty() {
            put("{client_ptr}", self.hostname.clone());
        }
        put(
            "v",
            format!("smtpd filter-milter {}", env!("CARGO_PKG_VERSION")),
        );
        // Undefined until known, as in Sendmail: a milter tells "no TLS" or "not
        // authenticated" by their absence.
        if let Some(t) = &self.tls {
            put("{tls_version}", t.version.clone());
            put("{cipher}", t.cipher.clone());
            put("{cipher_bits}", t.bits.to_string());
            if !t.subject.is_empty() {
                put("{cert_subject}", t.subject.clone());
            }
        }
        if let Some((mechanism, user)) = &self.auth {
            put("{auth_type}", mechanism.clone());
            put("{auth_authen}", user.clone());
        }
        if self.txn > 0 {
            put("i", self.queue_id());
            let (host, mailer) = host_and_mailer(&self.sender);
            put("{mail_addr}", self.sender.clone());
            put("{mail_host}", host);
            put("{mail_mailer}", mailer.into());
            if !self.rcpt.is_empty() {
                let (host, mailer) = host_and_mailer(&self.rcpt);
                put("{rcpt_addr}", self.rcpt.clone());
                put("{rcpt_host}", host);
                put("{rcpt_mailer}", mailer.into());
            }
        }
        let bare = |n: &str| n.trim_start_matches('{').trim_end_matches('}').to_string();
        for (k, val) in &cfg.macros {
            v.retain(|(n, _)| bare(n) != bare(k));
            v.push((k.clone(), val.clone()));
        }
        let mut defaults: Vec<String> = default_names(code).iter().map(|s| s.to_string()).collect();
        if code == cmd::CONNECT {
            for (k, _) in &cfg.macros {
                if !is_default_name(k) {
                    defaults.push(k.clone());
                }
            }
        }
        MacroSet {
            defaults,
            values: v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::{Ctx, DefaultAction};
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    #[test]
    fn hosts_and_mailers() {
        assert_eq!(
            host_and_mailer("a@example.test"),
            ("example.test".into(), "smtp")
        );
        assert_eq!(host_and_mailer("postmaster"), (String::new(), "local"));
        assert_eq!(host_and_mailer(""), (String::new(), "local"));
        assert!(is_default_name("{mail_addr}") && is_default_name("mail_addr"));
        assert!(is_default_name("{tls_version}") && is_default_name("cipher_bits"));
        assert!(!is_default_name("{auth_ssf}"));
    }

    fn config() -> Config {
        Config {
            targets: Vec::new(),
            timeout: Duration::from_secs(5),
            default: DefaultAction::Tempfail,
            macros: Vec::new(),
            hostname: "mx.test".into(),
            verbose: false,
        }
    }

    /// The macros a session sends with `code`, once `set` ran on it.
    fn sent(code: u8, set: impl FnOnce(&mut Session)) -> Vec<(String, String)> {
        let cfg = config();
        let poll = mio::Poll::new().expect("poll");
        let (mut out, mut tokens, mut next) = (Vec::new(), HashMap::new(), 0);
        let mut ctx = Ctx {
            cfg: &cfg,
            registry: poll.registry(),
            out: &mut out,
            tokens: &mut tokens,
            next_token: &mut next,
            daemon_timeout: Duration::from_secs(30),
        };
        let now = Instant::now();
        let mut s = Session::new(
            7,
            "127.0.0.1:25",
            "192.0.2.1:4321",
            "",
            false,
            &mut ctx,
            now,
        );
        set(&mut s);
        let m = s.macro_set(code, &cfg);
        m.pick(&m.defaults)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tls_macros_go_with_helo_once_the_daemon_told_them() {
        assert_eq!(sent(cmd::HELO, |_| {}), pairs(&[]));
        let tls = |subject: &str| TlsFacts {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            bits: 256,
            subject: subject.into(),
        };
        assert_eq!(
            sent(cmd::HELO, |s| s.set_tls(tls("CN=client.test"))),
            pairs(&[
                ("{tls_version}", "TLSv1.3"),
                ("{cipher}", "TLS_AES_256_GCM_SHA384"),
                ("{cipher_bits}", "256"),
                ("{cert_subject}", "CN=client.test"),
            ])
        );
        // No verified certificate: {cert_subject} is undefined.
        assert_eq!(
            sent(cmd::HELO, |s| s.set_tls(tls(""))).len(),
            3,
            "no {{cert_subject}} without a verified certificate"
        );
    }

    #[test]
    fn auth_macros_are_undefined_until_a_successful_auth() {
        let auth = |m: &[(String, String)]| {
            m.iter()
                .filter(|(k, _)| k.starts_with("{auth"))
                .cloned()
                .collect::<Vec<_>>()
        };
        assert_eq!(auth(&sent(cmd::MAIL, |_| {})), pairs(&[]));
        assert_eq!(
            auth(&sent(cmd::MAIL, |s| s.authenticated(b"PLAIN", b"alice"))),
            pairs(&[("{auth_type}", "PLAIN"), ("{auth_authen}", "alice")])
        );
    }
}
