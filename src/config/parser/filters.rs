//! The `filter` statements: filter processes, chains and built-in filters, and the
//! references to them from `listen on`.

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
            let (mut user, mut group, mut chroot) = (None, None, None);
            let mut timeout = Duration::from_secs(30);
            while !st.at_end() {
                if st.eat("user") {
                    user = Some(st.value("user name")?);
                } else if st.eat("group") {
                    group = Some(st.value("group name")?);
                } else if st.eat("chroot") {
                    let d = st.value("directory")?;
                    chroot = Some(relative_to(&self.current, &d));
                } else if st.eat("timeout") {
                    let v = st.value("duration")?;
                    timeout = parse_duration(&v)
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| st.err(format!("invalid duration '{v}'")))?;
                } else {
                    st.done()?;
                    break;
                }
            }
            FilterKind::Proc {
                command,
                user,
                group,
                chroot,
                timeout,
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
                    if matches!(p.as_str(), "connect" | "helo" | "ehlo") {
                        return Err(st.err(format!("check 'auth' is not possible in phase '{p}'")));
                    }
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
            return Err(st.err("filter kind expected: proc-exec, chain or phase"));
        };
        self.filter_names
            .insert(name.clone(), self.cfg.filters.len());
        self.cfg.filters.push(FilterDef { name, kind });
        Ok(())
    }
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
