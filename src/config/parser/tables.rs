//! The `table` statement: inline, `file:`, `db:`, OpenSMTPD 6's table programs
//! (`TYPE:ARG`) and line-protocol processes (`proc-exec "COMMAND"`); and the tables the
//! event loop reads, which must be in memory.

use super::super::lexer::Tok;
use super::{Parser, Stmt};
use crate::config::model::{Matcher, TableId};
use crate::config::{relative_to, ConfigError};
use crate::table::{Proc, Program, Source, Table};

impl Parser {
    pub(super) fn table(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let name = st.value("table name")?;
        if self.table_names.contains_key(&name) || self.passwd_tables.contains(&name) {
            return Err(st.err(format!("table '{name}' defined twice")));
        }
        if st.eat("getpwnam") {
            // OpenSMTPD's table of the system's accounts: what `userbase` reads
            // without a table.
            st.done()?;
            self.passwd_tables.push(name);
            return Ok(());
        }
        let table = if st.eat_punct('{') {
            Table::new(&name, Self::inline_entries(st)?)
        } else if st.eat("proc-exec") {
            let command = st.value("command")?;
            let program = Program::Exec(command);
            Table::process(&name, Self::table_proc(st, &name, program)?)
        } else {
            let src = st.value("table source")?;
            match src.split_once(':') {
                Some((kind, rest)) if !kind.contains('/') => {
                    let path = relative_to(&self.current, rest);
                    match kind {
                        "getpwnam" => {
                            return Err(st.err(format!(
                                "table type 'getpwnam' takes no argument: table {name} getpwnam"
                            )))
                        }
                        "proc" => return Err(st.err(proc_table(&name, rest))),
                        "file" | "static" | "db" => {
                            let source = match kind {
                                "db" => Source::Db(path),
                                _ => Source::File(path),
                            };
                            Table::load(&name, source)
                                .map_err(|e| st.err(format!("table '{name}': {e}")))?
                        }
                        _ => {
                            if kind.is_empty()
                                || !kind.bytes().all(|b| {
                                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'
                                })
                            {
                                return Err(st.err(format!("invalid table type '{kind}'")));
                            }
                            let exe = Program::extras_path(kind);
                            if !exe.is_file() {
                                return Err(st.err(format!(
                                    "unsupported table type '{kind}': no {} (Debian's opensmtpd-extras installs OpenSMTPD's table programs there)",
                                    exe.display()
                                )));
                            }
                            let program = Program::Extras {
                                kind: kind.to_string(),
                                arg: path.display().to_string(),
                            };
                            Table::process(&name, Self::table_proc(st, &name, program)?)
                        }
                    }
                }
                _ => Table::load(&name, Source::File(relative_to(&self.current, &src)))
                    .map_err(|e| st.err(format!("table '{name}': {e}")))?,
            }
        };
        st.done()?;
        self.table_names.insert(name, self.cfg.tables.len());
        self.cfg.tables.push(table);
        Ok(())
    }

    /// The options of a table process: `user` and `group`.
    fn table_proc(st: &mut Stmt, name: &str, program: Program) -> Result<Proc, ConfigError> {
        // The name goes to the process in its protocol's fields.
        if name.is_empty()
            || name.len() > 255
            || name.contains(|c: char| c == '|' || c.is_control())
        {
            return Err(st.err(format!(
                "table '{name}': a table process needs a name without '|' or control characters"
            )));
        }
        let mut proc = Proc {
            program,
            user: None,
            group: None,
        };
        loop {
            if st.eat("user") {
                proc.user = Some(st.value("user name")?);
            } else if st.eat("group") {
                proc.group = Some(st.value("group name")?);
            } else {
                return Ok(proc);
            }
        }
    }

    /// `<name>` (or an inline table) that the event loop reads: a relay's `domain` or
    /// `helo-src`. Its entries must be in memory, since a table process's
    /// answer would make the loop wait.
    pub(super) fn memory_table_ref(
        &mut self,
        st: &mut Stmt,
        what: &str,
    ) -> Result<TableId, ConfigError> {
        let t = self.table_ref(st)?;
        self.check_in_memory(st, t, what)?;
        Ok(t)
    }

    /// `<name>` (or an inline table) given to `what`, which looks values up by key:
    /// every entry of a table in memory must have a value (OpenSMTPD refuses a list
    /// there; an empty table is a mapping).
    pub(super) fn mapping_table_ref(
        &mut self,
        st: &mut Stmt,
        what: &str,
    ) -> Result<TableId, ConfigError> {
        let t = self.table_ref(st)?;
        self.check_mapping(st, t, what)?;
        Ok(t)
    }

    /// Checks that the table `t` given to `what` is a mapping, as far as its entries
    /// in memory show (a table process answers for itself).
    pub(super) fn check_mapping(
        &self,
        st: &Stmt,
        t: TableId,
        what: &str,
    ) -> Result<(), ConfigError> {
        let entries = self.cfg.tables[t].entries();
        let list = entries
            .keys()
            .find(|k| entries.get(k).is_some_and(str::is_empty));
        if let Some(k) = list {
            return Err(st.err(format!(
                "the table given to '{what}' must be a mapping (key => value): '{k}' has no value"
            )));
        }
        Ok(())
    }

    /// The table after `userbase` (a list of users, or OpenSMTPD's mapping to
    /// `uid:gid:home`): none for a `getpwnam` table, which is the system's accounts,
    /// the default.
    pub(super) fn userbase_ref(&mut self, st: &mut Stmt) -> Result<Option<TableId>, ConfigError> {
        let tok = |i: usize| st.toks.get(st.pos + i).map(|t| &t.tok);
        if let (Some(Tok::Punct('<')), Some(Tok::Word { text, .. }), Some(Tok::Punct('>'))) =
            (tok(0), tok(1), tok(2))
        {
            if self.passwd_tables.contains(text) {
                st.pos += 3;
                return Ok(None);
            }
        }
        self.table_ref(st).map(Some)
    }

    /// A value or a table that the event loop reads (a relay's `src`, the checks of
    /// built-in filters).
    pub(super) fn memory_matcher(
        &mut self,
        st: &mut Stmt,
        what: &str,
    ) -> Result<Matcher, ConfigError> {
        let m = self.matcher(st)?;
        if let Matcher::Table(t) = m {
            self.check_in_memory(st, t, what)?;
        }
        Ok(m)
    }

    pub(super) fn check_in_memory(
        &self,
        st: &Stmt,
        t: TableId,
        what: &str,
    ) -> Result<(), ConfigError> {
        let table = &self.cfg.tables[t];
        if table.in_memory() {
            return Ok(());
        }
        Err(st.err(format!(
            "table '{}': {what} needs a file, db or inline table, not a table process",
            table.name
        )))
    }
}

/// Why `table NAME proc:COMMAND` is refused: OpenSMTPD 6 speaks imsg to the command,
/// 7.6 its line protocol, and the line cannot tell which.
fn proc_table(name: &str, command: &str) -> String {
    format!(
        "table type 'proc' is not supported: a program of OpenSMTPD 7.6's line protocol \
         is run by 'table {name} proc-exec \"{command}\"'; one of OpenSMTPD 6's imsg \
         protocol is installed as {}/table-NAME and named NAME:ARG",
        crate::table::EXTRAS_DIR
    )
}

#[cfg(test)]
mod tests {
    use crate::table::{Program, Source};
    use std::collections::HashMap;
    use std::path::Path;

    fn conf(text: &str) -> Result<crate::config::Config, String> {
        let text = format!("listen on 127.0.0.1 port 2525\n{text}");
        crate::config::parse(&text, Path::new("/etc/smtpd.conf"), &HashMap::new())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn table_processes() {
        let c = conf(
            "table users proc-exec \"/usr/local/libexec/smtpd/table-sqlite /etc/mail/sqlite.conf\" user _table group mail\n\
             action \"virt\" maildir \"/var/mail/%{user.username}\" virtual <users> userbase <users>\n\
             match from any for domain <users> action \"virt\"\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let t = &c.tables[0];
        assert!(!t.in_memory() && t.backend().is_some());
        let Source::Proc(p) = &t.source else {
            panic!("{:?}", t.source)
        };
        assert_eq!(
            p.program,
            Program::Exec("/usr/local/libexec/smtpd/table-sqlite /etc/mail/sqlite.conf".into())
        );
        assert_eq!(
            (p.user.as_deref(), p.group.as_deref()),
            (Some("_table"), Some("mail"))
        );
    }

    #[test]
    fn what_the_loop_reads_must_be_in_memory() {
        for (use_, what) in [
            ("action r relay domain <t>", "a relay's 'domain'"),
            ("action r relay helo-src <t>", "'helo-src'"),
            ("action r relay src <t>", "a relay's 'src'"),
            (
                "filter f phase connect match src <t> reject \"550 5.7.1 no\"",
                "a built-in filter",
            ),
        ] {
            let e = conf(&format!("table t proc-exec \"/bin/cat\"\n{use_}\n"))
                .err()
                .unwrap_or_default();
            assert!(
                e.contains(&format!(
                    "table 't': {what} needs a file, db or inline table"
                )),
                "{use_}: {e}"
            );
            // The same with a table in memory parses.
            assert!(
                conf(&format!(
                    "table t {{ 192.0.2.1 = \"smtp://192.0.2.2\" }}\n{use_}\n"
                ))
                .is_ok(),
                "{use_}"
            );
        }
    }

    #[test]
    fn table_types() {
        let e = conf("table t no_such:/x\n").err().unwrap_or_default();
        assert!(e.contains("invalid table type 'no_such'"), "{e}");
        let e = conf("table t nosuch:/x\n").err().unwrap_or_default();
        assert!(
            e.contains("unsupported table type 'nosuch': no /usr/libexec/opensmtpd/table-nosuch"),
            "{e}"
        );
        let e = conf("table t db:/nonexistent/aliases.db\n")
            .err()
            .unwrap_or_default();
        assert!(e.contains("table 't': /nonexistent/aliases.db"), "{e}");
        let e = conf("table t file:/nonexistent/aliases user x\n")
            .err()
            .unwrap_or_default();
        assert!(e.contains("/nonexistent/aliases"), "{e}");
        // Options belong to table processes only.
        let e = conf("table t { a } user x\n").err().unwrap_or_default();
        assert!(!e.is_empty());
        let e = conf("table \"a b|c\" proc-exec x\n")
            .err()
            .unwrap_or_default();
        assert!(e.contains("without '|'"), "{e}");
    }
}
