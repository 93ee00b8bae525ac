//! The SMTP AUTH words of the grammar: the listener options `auth [<t>]`,
//! `auth-optional [<t>]`, `senders <t> [masquerade]` and `received-auth`, and the
//! optional user or table after `from auth` and `auth` in a `match` rule.

use super::super::lexer::Tok;
use super::{Parser, Stmt};
use crate::config::model::{AuthMode, ListenerAuth, Matcher, TableId};
use crate::config::ConfigError;

/// Words that may follow `from auth` or `auth` (or `from rdns`) in a rule and are no
/// user (or host) name.
pub(super) const RULE_WORDS: &[&str] = &[
    "from",
    "for",
    "action",
    "reject",
    "mail-from",
    "rcpt-to",
    "helo",
    "tag",
    "auth",
    "tls",
];

impl Parser {
    /// Reads one SMTP AUTH option of `listen on` into `a`; false when the next word
    /// is none.
    pub(super) fn listen_auth(
        &mut self,
        st: &mut Stmt,
        a: &mut ListenerAuth,
    ) -> Result<bool, ConfigError> {
        let mode = if st.eat("auth") {
            AuthMode::Required
        } else if st.eat("auth-optional") {
            AuthMode::Optional
        } else if st.eat("senders") {
            a.senders = Some(self.mapping_table_ref(st, "senders")?);
            a.masquerade = st.eat("masquerade");
            return Ok(true);
        } else if st.eat("received-auth") {
            a.received_auth = true;
            return Ok(true);
        } else if st.peek_word() == Some("masquerade") {
            return Err(st.err(
                "'masquerade' follows 'senders <table>', as in 'senders <users> masquerade'",
            ));
        } else {
            return Ok(false);
        };
        if a.mode != AuthMode::Off {
            return Err(st.err("'auth' or 'auth-optional' given twice"));
        }
        a.mode = mode;
        if matches!(st.peek(), Some(Tok::Punct('<' | '{'))) {
            let t = self.table_ref(st)?;
            self.check_credentials(st, t)?;
            a.table = Some(t);
        }
        Ok(true)
    }

    /// Every entry of a credentials table in memory must hold a crypt(3) hash: a
    /// password in clear would never match, and is better refused at start. A table
    /// process's entries are its own business.
    fn check_credentials(&self, st: &Stmt, t: TableId) -> Result<(), ConfigError> {
        let table = &self.cfg.tables[t];
        let entries = table.entries();
        for k in entries.keys() {
            let v = entries.get(k).unwrap_or("");
            if crate::credentials::table_hash(v).is_none() {
                return Err(st.err(format!(
                    "table '{}': the entry of '{k}' is no crypt(3) hash (make one with 'smtpctl encrypt')",
                    table.name
                )));
            }
        }
        Ok(())
    }

    /// The user name or table after `from auth` or `auth` in a rule, if one is given.
    pub(super) fn auth_matcher(&mut self, st: &mut Stmt) -> Result<Option<Matcher>, ConfigError> {
        match st.peek() {
            Some(Tok::Punct('<' | '{')) => Ok(Some(self.matcher(st)?)),
            Some(Tok::Word { text, quoted }) if *quoted || !RULE_WORDS.contains(&text.as_str()) => {
                Ok(Some(self.matcher(st)?))
            }
            _ => Ok(None),
        }
    }
}

/// What a listener's AUTH options mean together.
pub(super) fn check_listen(st: &Stmt, a: &ListenerAuth) -> Result<(), ConfigError> {
    if a.mode == AuthMode::Off && a.senders.is_some() {
        return Err(st.err("'senders' needs 'auth' or 'auth-optional' on the same listener"));
    }
    if a.mode == AuthMode::Off && a.received_auth {
        return Err(st.err("'received-auth' needs 'auth' or 'auth-optional' on the same listener"));
    }
    Ok(())
}
