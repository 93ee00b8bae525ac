//! The `action` statement: its delivery method, the options of local deliveries and
//! `ttl` (the relay options are `relay.rs`'s), and what a method names, checked at
//! start.

use super::super::lexer::Tok;
use super::{parse_duration, relative_to, Given, Parser, Stmt};
use crate::config::model::*;
use crate::config::ConfigError;

/// The delivery methods (and `lmtp`'s `rcpt-to`), which an unquoted maildir path may
/// not be.
const METHODS: &[&str] = &[
    "maildir",
    "mbox",
    "mda",
    "lmtp",
    "expand-only",
    "forward-only",
    "relay",
    "rcpt-to",
];

/// The options of local delivery methods (`junk` is maildir's, after its path).
const LOCAL_OPTIONS: &[&str] = &["junk", "alias", "virtual", "userbase", "user", "wrapper"];

/// The options of `relay`.
const RELAY_OPTIONS: &[&str] = &[
    "host",
    "domain",
    "backup",
    "helo",
    "helo-src",
    "src",
    "mail-from",
    "tls",
    "auth",
    "pki",
    "ca",
    "protocols",
    "ciphers",
    "srs",
    "no-dane",
    "no-mta-sts",
];

impl Parser {
    pub(super) fn action(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let name = st.value("action name")?;
        if self.action_names.contains_key(&name) {
            return Err(st.err(format!("action '{name}' defined twice")));
        }
        let method = self.method(st)?;
        let mut action = ActionDef {
            name: name.clone(),
            method,
            alias: None,
            virtual_: None,
            userbase: None,
            user: None,
            ttl: None,
            wrapper: None,
        };
        check_method(&action.method).map_err(|m| st.err(format!("action '{name}': {m}")))?;
        let mut relay_names = (None, None);
        let mut given = Given::default();
        while !st.at_end() {
            // Each option may be given once, as in OpenSMTPD.
            for once in [LOCAL_OPTIONS, RELAY_OPTIONS, &["ttl"]] {
                given.note(st, once, "")?;
            }
            if let Method::Relay(r) = &mut action.method {
                if self.relay_option(st, r, &mut relay_names)? {
                    continue;
                }
            }
            if action.method.is_local() && self.local_option(st, &mut action)? {
                continue;
            }
            if st.eat("ttl") {
                let v = st.value("duration")?;
                action.ttl =
                    Some(parse_duration(&v).ok_or_else(|| st.err(super::invalid_duration(&v)))?);
            } else {
                foreign_option(st, &action.method)?;
                break;
            }
        }
        if action.alias.is_some() && action.virtual_.is_some() {
            return Err(st.err("'alias' and 'virtual' cannot both be used"));
        }
        if let Method::Relay(r) = &action.method {
            self.relay_done(st, self.cfg.actions.len(), r, relay_names)?;
        }
        self.apply_wrapper(st, &mut action)?;
        self.action_names.insert(name, self.cfg.actions.len());
        self.cfg.actions.push(action);
        Ok(())
    }

    /// The delivery method and its arguments.
    fn method(&mut self, st: &mut Stmt) -> Result<Method, ConfigError> {
        Ok(if st.eat("maildir") {
            Method::Maildir {
                path: self.maildir_path(st)?,
                junk: st.eat("junk"),
            }
        } else if st.eat("mbox") {
            Method::Mbox
        } else if st.eat("mda") {
            Method::Mda(st.value("command")?)
        } else if st.eat("lmtp") {
            let dest = st.value("LMTP destination")?;
            Method::Lmtp {
                dest,
                rcpt_to: st.eat("rcpt-to"),
            }
        } else if st.eat("expand-only") {
            Method::ExpandOnly
        } else if st.eat("forward-only") {
            Method::ForwardOnly
        } else if st.eat("relay") {
            Method::Relay(Box::new(crate::config::relay::Relay::new()))
        } else {
            return Err(st.err("delivery method expected: maildir, mbox, mda, lmtp, expand-only, forward-only or relay"));
        })
    }

    /// The optional path after `maildir`: a quoted word, or an unquoted one that is no
    /// keyword of actions (as in OpenSMTPD, whose keywords are never a path unquoted).
    fn maildir_path(&self, st: &mut Stmt) -> Result<Option<String>, ConfigError> {
        let Some(Tok::Word { text, quoted }) = st.peek() else {
            return Ok(None);
        };
        if !quoted {
            let word = text.as_str();
            if LOCAL_OPTIONS.contains(&word) || word == "ttl" {
                return Ok(None);
            }
            let what = if RELAY_OPTIONS.contains(&word) {
                "an option of relay actions"
            } else if METHODS.contains(&word) || word == "filter" {
                "a keyword of actions"
            } else {
                ""
            };
            if !what.is_empty() {
                return Err(st.err(format!(
                    "maildir: '{word}' is {what}, not a path (quote a directory of that \
                     name: maildir \"{word}\")"
                )));
            }
        }
        st.pos += 1;
        // A relative path is relative to the configuration file, like every other path
        // in it; `~` and format specifiers stay as written.
        Ok(Some(if text.starts_with(['/', '~', '%']) {
            text.clone()
        } else {
            relative_to(&self.current, text).display().to_string()
        }))
    }

    /// Takes one option of a local delivery method; false when the next word is none.
    fn local_option(&mut self, st: &mut Stmt, action: &mut ActionDef) -> Result<bool, ConfigError> {
        if st.eat("alias") {
            action.alias = Some(self.mapping_table_ref(st, "alias")?);
        } else if st.eat("virtual") {
            action.virtual_ = Some(self.mapping_table_ref(st, "virtual")?);
        } else if st.eat("userbase") {
            action.userbase = self.userbase_ref(st)?;
        } else if st.eat("user") {
            if let Some(why) = user_refusal(&action.method) {
                return Err(st.err(why));
            }
            action.user = Some(st.value("user name")?);
        } else if st.eat("wrapper") {
            action.wrapper = Some(st.value("wrapper name")?);
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}

/// The name of a delivery method in the grammar.
fn method_word(m: &Method) -> &'static str {
    match m {
        Method::Maildir { .. } => "maildir",
        Method::Mbox => "mbox",
        Method::Mda(_) => "mda",
        Method::Lmtp { .. } => "lmtp",
        Method::ExpandOnly => "expand-only",
        Method::ForwardOnly => "forward-only",
        Method::Relay(_) => "relay",
    }
}

/// The end of an action, or an option of the other kind of method (an error that says
/// so), or something else unexpected.
fn foreign_option(st: &Stmt, m: &Method) -> Result<(), ConfigError> {
    match st.peek_word() {
        Some(w) if !m.is_local() && LOCAL_OPTIONS.contains(&w) => Err(st.err(format!(
            "'{w}' is an option of local delivery actions, not of relay"
        ))),
        Some(w) if m.is_local() && RELAY_OPTIONS.contains(&w) => Err(st.err(format!(
            "'{w}' is an option of relay actions, not of {}",
            method_word(m)
        ))),
        _ => st.done(),
    }
}

/// Why `user` may not be given to a method, as OpenSMTPD refuses it.
fn user_refusal(m: &Method) -> Option<&'static str> {
    Some(match m {
        Method::Mbox => {
            "'user' may not be given to mbox: each mailbox of /var/mail is written as its \
             own user (deliver with maildir or mda to write as one account)"
        }
        Method::ForwardOnly => {
            "'user' may not be given to forward-only: it delivers nothing itself, only where \
             forward files send the mail"
        }
        Method::ExpandOnly => {
            "'user' may not be given to expand-only: it delivers nothing itself, only where \
             aliases and virtual mappings send the mail"
        }
        _ => return None,
    })
}

/// Checks what a delivery method names, so that mistakes show at start, not as failed
/// deliveries: relay and LMTP destinations, path and command formats.
pub(super) fn check_method(m: &Method) -> Result<(), String> {
    use crate::format::{expand_command, expand_path, FormatCtx};
    use crate::nexthop::Target;
    let ctx = FormatCtx {
        sender: "sender@example.org".into(),
        rcpt: "rcpt@example.org".into(),
        dest: "rcpt@example.org".into(),
        user: "user".into(),
        home: "/home/user".into(),
        ..FormatCtx::default()
    };
    match m {
        Method::Lmtp { dest, .. } => Target::parse(dest, 24).map(|_| ()),
        Method::Mda(cmd) => expand_command(cmd, &ctx).map(|_| ()),
        Method::Maildir { path: Some(p), .. } => expand_path(p, &ctx).map(|_| ()),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[path = "action_tests.rs"]
mod tests;
