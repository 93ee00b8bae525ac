//! The statements that set the daemon's global settings: `queue`, `bounce`, `smtp`,
//! `control` and `mta`; and the `queue path` alone, for the tools.

use super::super::lexer::{expand, lex, Tok};
use super::super::relative_to;
use super::{parse_duration, parse_size, Parser, Stmt};
use crate::config::model::{ControlConfig, SmtpConfig};
use crate::config::relay::MtaLimits;
use crate::config::tls::parse_ciphers;
use crate::config::ConfigError;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Largest value of any `limit`.
const LIMIT_MAX: usize = 1 << 30;

/// The field a `smtp limit` name sets, with its minimum.
fn smtp_limit<'a>(s: &'a mut SmtpConfig, name: &str) -> Option<(&'a mut usize, usize)> {
    Some(match name {
        "max-rcpt" => (&mut s.max_rcpt, 1),
        "max-mails" => (&mut s.max_mails, 1),
        "max-command-line" => (&mut s.max_command_line, 512),
        "max-text-line" => (&mut s.max_text_line, 1000),
        "max-sessions" => (&mut s.max_sessions, 1),
        "max-sessions-per-address" => (&mut s.max_sessions_per_address, 0),
        "max-connection-rate" => (&mut s.max_connection_rate, 0),
        "max-errors" => (&mut s.max_errors, 1),
        "max-hops" => (&mut s.max_hops, 1),
        "max-auth-failures" => (&mut s.max_auth_failures, 1),
        _ => return None,
    })
}

/// The field a `control limit` name sets, with its minimum.
fn control_limit<'a>(c: &'a mut ControlConfig, name: &str) -> Option<(&'a mut usize, usize)> {
    Some(match name {
        "max-clients" => (&mut c.max_clients, 1),
        "max-clients-per-user" => (&mut c.max_clients_per_user, 1),
        _ => return None,
    })
}

/// The field an `mta limit` name sets, with its minimum.
fn mta_limit<'a>(m: &'a mut MtaLimits, name: &str) -> Option<(&'a mut usize, usize)> {
    Some(match name {
        "max-conn-per-route" => (&mut m.max_conn_per_route, 1),
        "max-conn-per-host" => (&mut m.max_conn_per_host, 1),
        "session-mail-max" => (&mut m.session_mail_max, 1),
        _ => return None,
    })
}

/// Reads the `NAME NUMBER ...` pairs that follow `STATEMENT limit` into `target`.
pub(super) fn limits<T>(
    st: &mut Stmt,
    statement: &str,
    target: &mut T,
    field: impl for<'a> Fn(&'a mut T, &str) -> Option<(&'a mut usize, usize)>,
) -> Result<(), ConfigError> {
    if st.at_end() {
        return Err(st.err("limit name expected"));
    }
    while !st.at_end() {
        let name = st.value("limit name")?;
        if field(target, &name).is_none() {
            return Err(st.err(
                super::compat::limit_refusal(statement, &name)
                    .unwrap_or_else(|| format!("unknown limit '{name}'")),
            ));
        }
        let v = st.value("number")?;
        let n: usize = v
            .parse()
            .map_err(|_| st.err(format!("invalid number '{v}'")))?;
        let Some((slot, min)) = field(target, &name) else {
            return Err(st.err(format!("unknown limit '{name}'")));
        };
        // 0 lifts the text line limit: lines as long as the message.
        let off = n == 0 && name == "max-text-line";
        if (n < min && !off) || n > LIMIT_MAX {
            return Err(st.err(format!("{name}: {n} is out of range (at least {min})")));
        }
        *slot = n;
    }
    Ok(())
}

/// A duration of at least a second.
fn duration(st: &mut Stmt) -> Result<std::time::Duration, ConfigError> {
    let v = st.value("duration")?;
    parse_duration(&v)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| st.err(super::invalid_duration(&v)))
}

impl Parser {
    /// `bounce warn-interval D[, D ...]`: up to four delays, increasing.
    pub(super) fn bounce(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        st.expect("warn-interval")?;
        let mut v = Vec::new();
        loop {
            let d = duration(st)?;
            if v.last().is_some_and(|&l| d <= l) {
                return Err(st.err("warn-interval delays must increase"));
            }
            v.push(d);
            if !st.eat_punct(',') {
                break;
            }
        }
        if v.len() > 4 {
            return Err(st.err("at most four warn-interval delays"));
        }
        st.done()?;
        self.cfg.queue.warn_intervals = v;
        Ok(())
    }

    pub(super) fn queue(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        if st.eat("path") {
            let p = st.value("directory")?;
            self.queue_path = Some(super::relative_to(&self.current, &p));
        } else if st.eat("ttl") {
            let v = st.value("duration")?;
            self.cfg.queue.ttl =
                parse_duration(&v).ok_or_else(|| st.err(super::invalid_duration(&v)))?;
        } else if st.eat("encryption") {
            self.queue_encryption(st)?;
        } else if st.eat("compression") {
            return Err(st.err(super::compat::QUEUE_COMPRESSION));
        } else {
            return Err(st.err("after 'queue': path, ttl or encryption"));
        }
        st.done()
    }

    pub(super) fn smtp(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let s = &mut self.cfg.smtp;
        if st.eat("max-message-size") {
            let v = st.value("size")?;
            s.max_message_size = parse_size(&v)
                .filter(|&n| n > 0)
                .ok_or_else(|| st.err(format!("invalid size '{v}'")))?;
        } else if st.eat("timeout") {
            s.timeout = duration(st)?;
        } else if st.eat("sub-addr-delim") {
            let v = st.value("character")?;
            let mut c = v.chars();
            s.sub_addr_delim = match (c.next(), c.next()) {
                (Some(ch), None) if ch.is_ascii_graphic() && ch != '@' => ch,
                _ => return Err(st.err(format!("invalid delimiter '{v}'"))),
            };
        } else if st.eat("limit") {
            limits(st, "smtp", s, smtp_limit)?;
        } else if st.eat("ciphers") {
            let v = st.value("ciphers")?;
            s.ciphers = Some(parse_ciphers(&v).map_err(|m| st.err(m))?);
        } else {
            return Err(
                st.err("after 'smtp': max-message-size, limit, timeout, sub-addr-delim or ciphers")
            );
        }
        st.done()
    }

    /// `control limit NAME NUMBER ...` and `control timeout DURATION`.
    pub(super) fn control(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let c = &mut self.cfg.control;
        if st.eat("timeout") {
            c.timeout = duration(st)?;
        } else if st.eat("limit") {
            limits(st, "control", c, control_limit)?;
        } else {
            return Err(st.err("after 'control': limit or timeout"));
        }
        st.done()
    }
}

impl Parser {
    /// `mta max-deferred N`, `mta timeout D` and `mta limit [for domain D] NAME NUMBER
    /// ...`.
    pub(super) fn mta(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let m = &mut self.cfg.mta;
        if st.eat("max-deferred") {
            let v = st.value("number")?;
            m.max_deferred = v
                .parse()
                .ok()
                .filter(|&n: &usize| n <= LIMIT_MAX)
                .ok_or_else(|| st.err(format!("invalid number '{v}'")))?;
        } else if st.eat("timeout") {
            m.timeout = duration(st)?;
        } else if st.eat("limit") {
            if st.eat("for") {
                st.expect("domain")?;
                let d = st.value("domain")?.to_ascii_lowercase();
                if !crate::mail::address::valid_domain(&d) {
                    return Err(st.err(format!("invalid domain '{d}'")));
                }
                let mut l = m
                    .domains
                    .iter()
                    .find(|(n, _)| *n == d)
                    .map_or(m.limits, |(_, l)| *l);
                limits(st, "mta", &mut l, mta_limit)?;
                m.domains.retain(|(n, _)| *n != d);
                m.domains.push((d, l));
            } else {
                limits(st, "mta", &mut m.limits, mta_limit)?;
            }
        } else {
            return Err(st.err("after 'mta': limit, max-deferred or timeout"));
        }
        st.done()
    }
}

/// The `queue path` of a configuration text (the default when none is given or the
/// text does not lex). Macros defined before the statement are expanded.
pub(in crate::config) fn queue_path_only(text: &str, path: &Path) -> PathBuf {
    let default = PathBuf::from("/var/spool/smtpd");
    let Ok(toks) = lex(text, path) else {
        return default;
    };
    let mut macros = HashMap::new();
    let mut found = None;
    for stmt in toks.split(|t| t.tok == Tok::Newline) {
        let word = |i: usize| match stmt.get(i).map(|t| &t.tok) {
            Some(Tok::Word { text, .. }) => Some(text.clone()),
            _ => None,
        };
        if stmt.len() == 3 && stmt[1].tok == Tok::Punct('=') {
            if let (Some(k), Some(v)) = (word(0), word(2)) {
                macros.insert(k, v);
            }
            continue;
        }
        if word(0).as_deref() == Some("queue") && word(1).as_deref() == Some("path") {
            if let Ok(exp) = expand(stmt, &macros) {
                if let Some(Tok::Word { text, .. }) = exp.get(2).map(|t| &t.tok) {
                    found = Some(relative_to(path, text));
                }
            }
        }
    }
    found.unwrap_or(default)
}
