//! The `filter` statements: filter processes, chains and built-in filters, and the
//! references to them from `listen on`; the `proc` statements of OpenSMTPD's filters.

use super::*;

/// Words after which a built-in filter's `auth` check has no user or table.
const BUILTIN_WORDS: &[&str] = &[
    "bypass",
    "junk",
    "reject",
    "disconnect",
    "rewrite",
    "report",
    "src",
    "fcrdns",
    "rdns",
    "helo",
    "mail-from",
    "rcpt-to",
    "auth",
];

/// A `proc NAME "COMMAND" [user U] [group G] [chroot DIR]` statement, until a `filter
/// NAME proc PROC` uses it (once).
#[derive(Debug, Clone)]
pub(super) struct ProcDef {
    command: String,
    user: Option<String>,
    group: Option<String>,
    chroot: Option<PathBuf>,
    /// The filter that uses it.
    used_by: Option<String>,
}

/// The options of a process, after its command.
struct ProcOptions {
    user: Option<String>,
    group: Option<String>,
    chroot: Option<PathBuf>,
    timeout: Option<Duration>,
}

/// How long a filter's answer may take by default.
const FILTER_TIMEOUT: Duration = Duration::from_secs(30);

impl Parser {
    /// `filter NAME` or `filter { A, B }` after `listen on`: the chain head.
    pub(super) fn filter_ref(&mut self, st: &mut Stmt) -> Result<FilterId, ConfigError> {
        if st.eat_punct('{') {
            let mut ids = Vec::new();
            for (name, _) in Self::inline_entries(st)? {
                ids.push(self.named_filter(st, &name)?);
            }
            let id = self.cfg.filters.len();
            self.cfg.filters.push(FilterDef {
                name: format!("(chain {id})"),
                kind: FilterKind::Chain(ids),
            });
            return Ok(id);
        }
        let name = st.value("filter name")?;
        self.named_filter(st, &name)
    }

    fn named_filter(&self, st: &Stmt, name: &str) -> Result<FilterId, ConfigError> {
        self.filter_names
            .get(name)
            .copied()
            .ok_or_else(|| st.err(format!("undefined filter '{name}'")))
    }

    pub(super) fn filter(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let name = st.value("filter name")?;
        if self.filter_names.contains_key(&name) {
            return Err(st.err(format!("filter '{name}' defined twice")));
        }
        let kind = if st.eat("proc-exec") {
            let command = st.value("command")?;
            let o = self.proc_options(st)?;
            FilterKind::Proc {
                command,
                user: o.user,
                group: o.group,
                chroot: o.chroot,
                timeout: o.timeout.unwrap_or(FILTER_TIMEOUT),
                opensmtpd: false,
            }
        } else if st.eat("proc") {
            let p = st.value("proc name")?;
            let o = self.proc_options(st)?;
            if o.user.is_some() || o.group.is_some() || o.chroot.is_some() {
                return Err(st.err("user, group and chroot belong to the proc statement"));
            }
            let Some(def) = self.procs.get_mut(&p) else {
                return Err(st.err(format!("undefined proc '{p}'")));
            };
            if let Some(other) = &def.used_by {
                return Err(st.err(format!("proc '{p}' is used by filter '{other}' already")));
            }
            def.used_by = Some(name.clone());
            FilterKind::Proc {
                command: def.command.clone(),
                user: def.user.clone(),
                group: def.group.clone(),
                chroot: def.chroot.clone(),
                timeout: o.timeout.unwrap_or(FILTER_TIMEOUT),
                opensmtpd: true,
            }
        } else if st.eat("chain") {
            st.expect_punct('{')?;
            let mut ids = Vec::new();
            for (n, _) in Self::inline_entries(st)? {
                let id = self.named_filter(st, &n)?;
                if matches!(self.cfg.filters[id].kind, FilterKind::Chain(_)) {
                    return Err(st.err(format!(
                        "chain '{name}': '{n}' is a chain; chains do not nest"
                    )));
                }
                if ids.contains(&id) {
                    return Err(st.err(format!("chain '{name}': '{n}' appears twice")));
                }
                ids.push(id);
            }
            if ids.is_empty() {
                return Err(st.err(format!("chain '{name}' is empty")));
            }
            st.done()?;
            FilterKind::Chain(ids)
        } else if st.eat("phase") {
            let p = st.value("phase")?;
            let phase = PHASES
                .iter()
                .find(|(n, _)| *n == p)
                .map(|(_, bit)| *bit)
                .ok_or_else(|| st.err(super::compat::unknown_phase(&p)))?;
            st.expect("match")?;
            let mut checks = Vec::new();
            let decision = loop {
                let neg = st.eat_punct('!');
                if let Some(why) = st.peek_word().and_then(|w| unknown_at(w, &p)) {
                    return Err(st.err(why));
                }
                let check = if st.eat("src") {
                    Check::Src(self.memory_matcher(st, "a built-in filter")?)
                } else if st.eat("fcrdns") {
                    Check::Fcrdns
                } else if st.eat("rdns") {
                    let m = self.optional_matcher(st, BUILTIN_WORDS)?;
                    if let Some(Matcher::Table(t)) = &m {
                        self.check_in_memory(st, *t, "a built-in filter")?;
                    }
                    Check::Rdns(m)
                } else if st.eat("helo") {
                    Check::Helo(self.memory_matcher(st, "a built-in filter")?)
                } else if st.eat("mail-from") {
                    Check::MailFrom(self.memory_matcher(st, "a built-in filter")?)
                } else if st.eat("rcpt-to") {
                    Check::RcptTo(self.memory_matcher(st, "a built-in filter")?)
                } else if st.eat("auth") {
                    let m = self.optional_matcher(st, BUILTIN_WORDS)?;
                    if let Some(Matcher::Table(t)) = &m {
                        self.check_in_memory(st, *t, "a built-in filter")?;
                    }
                    Check::Auth(m)
                } else if neg {
                    return Err(st.err("a check must follow '!'"));
                } else {
                    let d = st.value("decision")?;
                    break match d.as_str() {
                        "bypass" => BuiltinDecision::Bypass,
                        "junk" => BuiltinDecision::Junk,
                        "reject" | "disconnect" | "rewrite" => {
                            let arg = st.value("argument")?;
                            match d.as_str() {
                                "reject" => BuiltinDecision::Reject(reply_text(st, &arg)?),
                                "disconnect" => BuiltinDecision::Disconnect(reply_text(st, &arg)?),
                                _ => BuiltinDecision::Rewrite(arg),
                            }
                        }
                        "report" => return Err(st.err(super::compat::BUILTIN_REPORT)),
                        other => return Err(st.err(format!("unknown decision '{other}'"))),
                    };
                };
                checks.push((neg, check));
            };
            st.done()?;
            if checks.is_empty() {
                return Err(st.err("a built-in filter needs at least one check"));
            }
            if matches!(decision, BuiltinDecision::Rewrite(_))
                && !matches!(p.as_str(), "helo" | "ehlo" | "mail-from" | "rcpt-to")
            {
                return Err(st.err(format!("rewrite is not possible in phase '{p}'")));
            }
            FilterKind::Builtin(Builtin {
                phase,
                checks,
                decision,
            })
        } else {
            return Err(st.err("filter kind expected: proc-exec, proc, chain or phase"));
        };
        self.filter_names
            .insert(name.clone(), self.cfg.filters.len());
        self.cfg.filters.push(FilterDef { name, kind });
        Ok(())
    }
}

impl Parser {
    /// `proc NAME "COMMAND" [user U] [group G] [chroot DIR]`: a filter process of
    /// OpenSMTPD's protocol, for one `filter NAME proc PROC`.
    pub(super) fn proc(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let name = st.value("proc name")?;
        if self.procs.contains_key(&name) {
            return Err(st.err(format!("proc '{name}' defined twice")));
        }
        let command = st.value("command")?;
        let o = self.proc_options(st)?;
        if o.timeout.is_some() {
            return Err(st.err("timeout belongs to the filter statement"));
        }
        let def = ProcDef {
            command,
            user: o.user,
            group: o.group,
            chroot: o.chroot,
            used_by: None,
        };
        self.procs.insert(name, def);
        Ok(())
    }

    /// `[user U] [group G] [chroot DIR] [timeout D]` up to the end of the statement.
    fn proc_options(&self, st: &mut Stmt) -> Result<ProcOptions, ConfigError> {
        let mut o = ProcOptions {
            user: None,
            group: None,
            chroot: None,
            timeout: None,
        };
        while !st.at_end() {
            if st.eat("user") {
                o.user = Some(st.value("user name")?);
            } else if st.eat("group") {
                o.group = Some(st.value("group name")?);
            } else if st.eat("chroot") {
                let d = st.value("directory")?;
                o.chroot = Some(relative_to(&self.current, &d));
            } else if st.eat("timeout") {
                let v = st.value("duration")?;
                o.timeout = Some(
                    parse_duration(&v)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| st.err(super::invalid_duration(&v)))?,
                );
            } else {
                st.done()?;
                break;
            }
        }
        Ok(o)
    }
}

/// Why a built-in filter cannot check `check` in `phase`: its value is not known yet
/// then (or, for a recipient, known in its own phase only). OpenSMTPD's grammar allows
/// the same checks in each phase.
fn unknown_at(check: &str, phase: &str) -> Option<String> {
    let before_mail = matches!(phase, "connect" | "helo" | "ehlo");
    let why = match check {
        "helo" if phase == "connect" => "the HELO name is known from phase 'helo' on",
        "mail-from" if before_mail => "the sender is known from phase 'mail-from' on",
        "auth" if before_mail => "AUTH comes after EHLO, so check it from phase 'mail-from' on",
        "rcpt-to" if phase != "rcpt-to" => "a recipient is known in phase 'rcpt-to' only",
        _ => return None,
    };
    Some(format!(
        "check '{check}' is not possible in phase '{phase}': {why}"
    ))
}

/// A reply given in the configuration: `CODE [ESC] text` with a 4xx or 5xx code.
pub(super) fn reply_text(st: &Stmt, s: &str) -> Result<String, ConfigError> {
    let ok = s.len() > 4
        && s.as_bytes()[..3].iter().all(u8::is_ascii_digit)
        && matches!(s.as_bytes()[0], b'4' | b'5')
        && s.as_bytes()[3] == b' '
        && s.bytes().all(|b| (32..127).contains(&b));
    if ok {
        Ok(s.to_string())
    } else {
        Err(st.err(format!(
            "invalid reply \"{s}\": expected a 4xx or 5xx code and text"
        )))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse, FilterKind};
    use std::collections::HashMap;
    use std::path::Path;
    use std::time::Duration;

    fn conf(text: &str) -> Result<crate::config::Config, String> {
        let text = format!("{text}\nlisten on 127.0.0.1\n");
        parse(&text, Path::new("/etc/smtpd.conf"), &HashMap::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn the_proc_form_of_opensmtpd() {
        let c = conf(
            "proc p \"/usr/libexec/filter -v\" user nobody group nogroup chroot \"/var/empty\"\n\
             filter f proc p timeout 5s\n\
             filter g proc-exec \"/bin/g\"",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            c.filters[0].kind,
            FilterKind::Proc {
                command: "/usr/libexec/filter -v".into(),
                user: Some("nobody".into()),
                group: Some("nogroup".into()),
                chroot: Some("/var/empty".into()),
                timeout: Duration::from_secs(5),
                opensmtpd: true,
            }
        );
        assert!(matches!(
            c.filters[1].kind,
            FilterKind::Proc {
                opensmtpd: false,
                timeout,
                ..
            } if timeout == Duration::from_secs(30)
        ));
        for (text, err) in [
            ("filter f proc p", "undefined proc 'p'"),
            ("proc p \"x\"\nproc p \"y\"", "proc 'p' defined twice"),
            (
                "proc p \"x\"\nfilter f proc p\nfilter g proc p",
                "used by filter 'f' already",
            ),
            (
                "proc p \"x\"\nfilter f proc p user nobody",
                "belong to the proc statement",
            ),
            ("proc p \"x\" timeout 1s", "timeout belongs to the filter"),
            ("proc p", "command"),
            ("proc p \"x\" color red", "color"),
        ] {
            let e = conf(text).err().unwrap_or_default();
            assert!(e.contains(err), "{text}: {e}");
        }
    }
}
