//! `match` rules and their conditions, and the values, tables and regular expressions
//! that conditions (and built-in filter checks) compare with.

use super::super::lexer::Tok;
use super::auth::RULE_WORDS;
use super::{valid_net, Given, Parser, Stmt};
use crate::config::model::*;
use crate::config::ConfigError;
use crate::sys::regex::Regex;
use std::sync::Arc;

/// The conditions of a rule besides `from` and `for`, each given once in a rule (as in
/// OpenSMTPD), `from auth`, `from mail-from` and `for rcpt-to` included.
const CONDITIONS: &[&str] = &["mail-from", "rcpt-to", "helo", "tag", "tls", "auth"];

/// The end of the message for a condition given twice.
const IN_ONE_RULE: &str = " in one rule";

impl Parser {
    /// A value, `<table>`, `{ inline }`, or `regex` followed by one of these.
    pub(super) fn matcher(&mut self, st: &mut Stmt) -> Result<Matcher, ConfigError> {
        if st.eat("regex") {
            return self.regex_matcher(st);
        }
        if matches!(st.peek(), Some(Tok::Punct('<' | '{'))) {
            Ok(Matcher::Table(self.table_ref(st)?))
        } else {
            Ok(Matcher::Value(st.value("value or <table>")?))
        }
    }

    /// After `regex`: a pattern, or a table whose keys, as written, are patterns.
    fn regex_matcher(&mut self, st: &mut Stmt) -> Result<Matcher, ConfigError> {
        let patterns: Vec<String> = if matches!(st.peek(), Some(Tok::Punct('<' | '{'))) {
            let t = self.table_ref(st)?;
            self.check_in_memory(st, t, "'regex'")?;
            self.cfg.tables[t].entries().keys_as_written()
        } else {
            vec![st.value("regular expression or <table>")?]
        };
        let mut out = Vec::with_capacity(patterns.len());
        for p in patterns {
            out.push(
                Regex::new(&p)
                    .map_err(|e| st.err(format!("invalid regular expression '{p}': {e}")))?,
            );
        }
        Ok(Matcher::Regex(Arc::new(out)))
    }

    /// The optional name, table or regular expression after `from rdns` in a rule, or
    /// `auth` in a built-in filter: none when the next word is one of `stop`.
    pub(super) fn optional_matcher(
        &mut self,
        st: &mut Stmt,
        stop: &[&str],
    ) -> Result<Option<Matcher>, ConfigError> {
        match st.peek() {
            Some(Tok::Punct('<' | '{')) => Ok(Some(self.matcher(st)?)),
            Some(Tok::Word { text, quoted }) if *quoted || !stop.contains(&text.as_str()) => {
                Ok(Some(self.matcher(st)?))
            }
            _ => Ok(None),
        }
    }

    /// The condition after `from`.
    fn source_cond(&mut self, st: &mut Stmt) -> Result<Cond, ConfigError> {
        Ok(if st.eat("any") {
            Cond::FromAny
        } else if st.eat("local") {
            Cond::FromLocal
        } else if st.eat("socket") {
            Cond::FromSocket
        } else if st.eat("src") {
            let m = self.matcher(st)?;
            if let Matcher::Value(v) = &m {
                if !valid_net(v) {
                    return Err(st.err(format!("invalid address or network '{v}'")));
                }
            }
            Cond::FromSrc(m)
        } else if st.eat("rdns") {
            Cond::FromRdns(self.optional_matcher(st, RULE_WORDS)?)
        } else if st.eat("mail-from") {
            Cond::FromMailFrom(self.matcher(st)?)
        } else if st.eat("auth") {
            Cond::FromAuth(self.auth_matcher(st)?)
        } else {
            return Err(st.err("after 'from': any, local, socket, src, rdns, mail-from or auth"));
        })
    }

    /// The condition after `for`.
    fn destination_cond(&mut self, st: &mut Stmt) -> Result<Cond, ConfigError> {
        Ok(if st.eat("any") {
            Cond::ForAny
        } else if st.eat("local") {
            Cond::ForLocal
        } else if st.eat("domain") {
            Cond::ForDomain(self.matcher(st)?)
        } else if st.eat("rcpt-to") {
            Cond::ForRcptTo(self.matcher(st)?)
        } else {
            return Err(st.err("after 'for': any, local, domain or rcpt-to"));
        })
    }

    /// A condition of the transaction: one of [`CONDITIONS`].
    fn condition(&mut self, st: &mut Stmt) -> Result<Cond, ConfigError> {
        Ok(if st.eat("mail-from") {
            Cond::MailFrom(self.matcher(st)?)
        } else if st.eat("rcpt-to") {
            Cond::RcptTo(self.matcher(st)?)
        } else if st.eat("helo") {
            Cond::Helo(self.matcher(st)?)
        } else if st.eat("tag") {
            Cond::Tag(self.matcher(st)?)
        } else if st.eat("tls") {
            Cond::Tls
        } else {
            st.expect("auth")?;
            Cond::Auth(self.auth_matcher(st)?)
        })
    }

    /// `match [!]COND ... action NAME|reject`.
    pub(super) fn rule(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let line = st.line();
        let mut conds: Vec<(bool, Cond)> = Vec::new();
        let (mut has_from, mut has_for) = (false, false);
        let mut given = Given::default();
        let decision = loop {
            if st.at_end() {
                return Err(st.err("'action NAME' or 'reject' expected"));
            }
            if st.eat("action") {
                let name = st.value("action name")?;
                let id = *self
                    .action_names
                    .get(&name)
                    .ok_or_else(|| st.err(format!("undefined action '{name}'")))?;
                break Decision::Action(id);
            }
            if st.eat("reject") {
                break Decision::Reject;
            }
            let neg = st.eat_punct('!');
            let cond = if st.eat("from") {
                if has_from {
                    return Err(st.err("'from' given twice"));
                }
                has_from = true;
                let c = self.source_cond(st)?;
                match c {
                    Cond::FromAuth(_) => given.mark(st, "auth", IN_ONE_RULE)?,
                    Cond::FromMailFrom(_) => given.mark(st, "mail-from", IN_ONE_RULE)?,
                    _ => {}
                }
                c
            } else if st.eat("for") {
                if has_for {
                    return Err(st.err("'for' given twice"));
                }
                has_for = true;
                let c = self.destination_cond(st)?;
                if let Cond::ForRcptTo(_) = c {
                    given.mark(st, "rcpt-to", IN_ONE_RULE)?;
                }
                c
            } else if CONDITIONS.contains(&st.peek_word().unwrap_or_default()) {
                given.note(st, CONDITIONS, IN_ONE_RULE)?;
                self.condition(st)?
            } else {
                let what = st.value("condition").unwrap_or_default();
                return Err(st.err(format!("unknown match condition '{what}'")));
            };
            conds.push((neg, cond));
        };
        st.done()?;
        // OpenSMTPD's defaults: from local, for local.
        if !has_from {
            conds.insert(0, (false, Cond::FromLocal));
        }
        if !has_for {
            conds.push((false, Cond::ForLocal));
        }
        self.cfg.rules.push(Rule {
            conds,
            decision,
            line,
        });
        Ok(())
    }
}
