//! The shell quoting of mda commands, as far as format specifiers need it: where a
//! specifier stands (outside quotes, in double or in single quotes), and the folding
//! of an action's command into its `mda wrapper`.

/// The shell quoting in effect at a point of a command.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Quote {
    /// Outside quotes.
    None,
    /// In single quotes.
    Single,
    /// In double quotes.
    Double,
}

impl Quote {
    /// The quoting after `c`, read in this one (a backslash is the caller's).
    pub(super) fn after(self, c: char) -> Quote {
        match (self, c) {
            (Quote::None, '\'') => Quote::Single,
            (Quote::Single, '\'') => Quote::None,
            (Quote::None, '"') => Quote::Double,
            (Quote::Double, '"') => Quote::None,
            (q, _) => q,
        }
    }

    /// Whether a backslash escapes the character after it here.
    pub(super) fn escapes(self) -> bool {
        self != Quote::Single
    }
}

/// The command of an `mda wrapper` with each `%{mda}` replaced by `command`, the
/// action's mda command, as written: its specifiers are expanded with the wrapper's
/// when the result is run (see [`expand_command`]). `%{mda}` must stand outside quotes,
/// where the command it brings keeps its own quoting, and that command's quotes must
/// be balanced; OpenSMTPD's `%{mda}` takes no slice nor modifier.
pub fn wrap_command(wrapper: &str, command: &str) -> Result<String, String> {
    const MDA: &str = "%{mda}";
    if quote_at_end(command) != Quote::None {
        return Err("the mda command has an unbalanced quote".into());
    }
    let mut out = String::with_capacity(wrapper.len() + command.len());
    let mut quote = Quote::None;
    let mut chars = wrapper.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if quote.escapes() => {
                out.push(c);
                if let Some((_, next)) = chars.next() {
                    out.push(next);
                }
                continue;
            }
            '%' if wrapper[i..].starts_with("%{mda") => {
                if !wrapper[i..].starts_with(MDA) {
                    return Err("%{mda} takes no slice nor modifier".into());
                }
                if quote != Quote::None {
                    return Err("%{mda} inside quotes: write it unquoted".into());
                }
                out.push_str(command);
                for _ in 1..MDA.len() {
                    chars.next();
                }
                continue;
            }
            _ => quote = quote.after(c),
        }
        out.push(c);
    }
    if quote != Quote::None {
        return Err("the wrapper command has an unbalanced quote".into());
    }
    Ok(out)
}

/// The quoting in effect at the end of `s`.
fn quote_at_end(s: &str) -> Quote {
    let mut quote = Quote::None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' && quote.escapes() {
            chars.next();
        } else {
            quote = quote.after(c);
        }
    }
    quote
}

#[cfg(test)]
mod tests {
    use super::super::{expand_command, FormatCtx};
    use super::wrap_command;

    #[test]
    fn wrappers() {
        let w = wrap_command(
            "/usr/bin/spamc -e %{mda} -u '%{user.username}'",
            "procmail -f \"%{sender}\"",
        )
        .unwrap();
        assert_eq!(
            w,
            "/usr/bin/spamc -e procmail -f \"%{sender}\" -u '%{user.username}'"
        );
        let ctx = FormatCtx {
            sender: "alice@example.org".into(),
            user: "bob".into(),
            ..FormatCtx::default()
        };
        let (script, args) = expand_command(&w, &ctx).unwrap();
        assert_eq!(script, "/usr/bin/spamc -e procmail -f \"$1\" -u 'bob'");
        assert_eq!(args.len(), 1);
        assert!(wrap_command("x \"%{mda}\"", "y").is_err());
        assert!(wrap_command("x '%{mda}'", "y").is_err());
        assert!(wrap_command("x %{mda:raw}", "y").is_err());
        assert!(wrap_command("x %{mda}", "y 'z").is_err());
        assert!(wrap_command("x ' %{mda}", "y").is_err());
        assert_eq!(wrap_command("x \\%{mda}", "y").unwrap(), "x \\%{mda}");
        assert_eq!(wrap_command("nice", "y").unwrap(), "nice");
    }
}
