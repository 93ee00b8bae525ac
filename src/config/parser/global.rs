//! Statements of OpenSMTPD's grammar beyond listeners, actions and rules: `srs`,
//! `admd`, `mda wrapper`, `mda limit` and `queue encryption`; and what is settled once
//! every statement is read (`smtp ciphers` as the default of listeners and relay
//! actions, `srs` actions and their key).

use super::action::check_method;
use super::settings::limits;
use super::{parse_duration, Parser, Stmt};
use crate::config::model::*;
use crate::config::ConfigError;

/// Length of a `queue encryption` key: 32 octets, the AES-256 key itself, as
/// OpenSMTPD takes it (the output of `openssl rand -hex 16`).
pub const QUEUE_KEY_LEN: usize = 32;

/// Longest `admd` value.
const MAX_ADMD: usize = 255;

/// The field an `mda limit` name sets, with its minimum.
fn mda_limit<'a>(m: &'a mut MdaConfig, name: &str) -> Option<(&'a mut usize, usize)> {
    Some(match name {
        "max-session" => (&mut m.max_session, 1),
        _ => return None,
    })
}

/// Checks a `queue encryption` key given in the file (or read at start).
pub fn check_queue_key(key: &str) -> Result<(), String> {
    if key.len() == QUEUE_KEY_LEN {
        Ok(())
    } else {
        Err(format!(
            "queue encryption: the key must be {QUEUE_KEY_LEN} characters (as made by \
             'openssl rand -hex 16'), not {}",
            key.len()
        ))
    }
}

impl Parser {
    /// `srs key SECRET`, `srs key backup SECRET`, `srs ttl DELAY`.
    pub(super) fn srs(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        if st.eat("key") {
            let backup = st.eat("backup");
            let secret = st.value("secret")?;
            if secret.is_empty() {
                return Err(st.err("srs key: the secret is empty"));
            }
            if backup {
                self.cfg.srs.backup = Some(secret);
            } else {
                self.cfg.srs.key = Some(secret);
            }
        } else if st.eat("ttl") {
            let v = st.value("duration")?;
            let d = parse_duration(&v).ok_or_else(|| st.err(super::invalid_duration(&v)))?;
            let days = d.as_secs() / 86400;
            if days == 0 {
                return Err(st.err(format!("srs ttl '{v}' is too short: at least a day")));
            }
            // SRS time stamps count days modulo 1024.
            if days >= 1024 {
                return Err(st.err(format!("srs ttl '{v}' is too long: less than 1024 days")));
            }
            self.cfg.srs.ttl_days = days as u32;
        } else {
            return Err(st.err("after 'srs': key or ttl"));
        }
        st.done()
    }

    /// `admd AUTHSERV-ID`.
    pub(super) fn admd(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let v = st.value("authserv-id")?;
        st.done()?;
        if v.is_empty() || v.len() > MAX_ADMD || !v.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(st.err(format!("admd: invalid authserv-id '{v}'")));
        }
        self.cfg.admd = Some(v);
        Ok(())
    }

    /// `mda wrapper NAME "COMMAND"` and `mda limit NAME NUMBER ...`.
    pub(super) fn mda(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        if st.eat("wrapper") {
            let name = st.value("wrapper name")?;
            let command = st.value("command")?;
            st.done()?;
            if self.wrappers.contains_key(&name) {
                return Err(st.err(format!("mda wrapper '{name}' defined twice")));
            }
            crate::format::wrap_command(&command, "true")
                .map_err(|m| st.err(format!("mda wrapper '{name}': {m}")))?;
            self.wrappers.insert(name, command);
            Ok(())
        } else if st.eat("limit") {
            limits(st, "mda", &mut self.cfg.mda, mda_limit)?;
            st.done()
        } else {
            Err(st.err("after 'mda': wrapper or limit"))
        }
    }

    /// `queue encryption [KEY|stdin|-]`, after `encryption`.
    pub(super) fn queue_encryption(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let key = if st.at_end() {
            QueueKey::Prompt
        } else {
            let v = st.value("key")?;
            if v.eq_ignore_ascii_case("stdin") || v == "-" {
                QueueKey::Stdin
            } else {
                check_queue_key(&v).map_err(|m| st.err(m))?;
                QueueKey::Given(v)
            }
        };
        self.cfg.queue.encryption = Some(key);
        Ok(())
    }

    /// Folds the action's `wrapper` into its mda command: the wrapper's command, whose
    /// `%{mda}` stands for the action's.
    pub(super) fn apply_wrapper(
        &self,
        st: &Stmt,
        action: &mut ActionDef,
    ) -> Result<(), ConfigError> {
        let Some(name) = &action.wrapper else {
            return Ok(());
        };
        let wrapper = self.wrappers.get(name).ok_or_else(|| {
            st.err(format!(
                "undefined mda wrapper '{name}': declare it before with 'mda wrapper {name} \"COMMAND\"'"
            ))
        })?;
        let Method::Mda(command) = &action.method else {
            return Err(st.err(
                "'wrapper' applies to mda actions only: maildir, mbox and lmtp deliveries \
                 are made by smtpd itself, not by a command",
            ));
        };
        let wrapped = crate::format::wrap_command(wrapper, command)
            .map_err(|m| st.err(format!("action '{}': wrapper '{name}': {m}", action.name)))?;
        action.method = Method::Mda(wrapped);
        check_method(&action.method).map_err(|m| st.err(format!("action '{}': {m}", action.name)))
    }

    /// After the last statement: `srs` actions have a key, and `smtp ciphers` is the
    /// default of listeners and relay actions that give none.
    pub(super) fn finish_globals(&mut self) -> Result<(), ConfigError> {
        if let (Some(place), None) = (self.srs_actions.first(), &self.cfg.srs.key) {
            return Err(place.err("'srs' needs a key: add 'srs key SECRET'"));
        }
        let Some(ciphers) = self.cfg.smtp.ciphers.clone() else {
            return Ok(());
        };
        for &i in &self.default_cipher_listeners {
            if let Some(tls) = self.cfg.listeners.get_mut(i).and_then(|l| l.tls.as_mut()) {
                super::listen::check_suites(&tls.protocols, &ciphers)
                    .map_err(|m| tls.place.err(format!("smtp ciphers: {m}")))?;
                tls.ciphers = ciphers.clone();
            }
        }
        for &a in &self.default_cipher_relays {
            if let Some(Method::Relay(r)) = self.cfg.actions.get_mut(a).map(|a| &mut a.method) {
                super::listen::check_suites(&r.protocols, &ciphers).map_err(|m| {
                    ConfigError::at(
                        &self.path.display().to_string(),
                        0,
                        format!("smtp ciphers: {m}"),
                    )
                })?;
                r.ciphers = ciphers.clone();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "grammar_tests.rs"]
mod tests;
