//! Format specifiers (`%{rcpt.user}`, `%{sender.domain[0]}`, ...) in maildir/mbox paths and
//! `mda` commands.
//!
//! # Syntax
//!
//! ```text
//! %%                          a literal '%'
//! %{NAME}                     the value of NAME
//! %{NAME[SLICE]}              part of that value (by character, not byte)
//! %{NAME[SLICE]:MOD|MOD...}   the value, then modifiers (':' may also separate modifiers)
//! ```
//!
//! A `%` followed by anything else than `{` or `%` is kept as is, so `date +%s` in a
//! command needs no escaping.
//!
//! Names: `sender`, `sender.user`, `sender.domain`, `rcpt`, `rcpt.user`, `rcpt.domain`,
//! `dest`, `dest.user`, `dest.domain`, `user.username`, `user.directory`, `mbox.from`.
//! The `.user`/`.domain` parts split the address at its last `@`; an address without `@`
//! is all user part. `mbox.from` is the sender, or `MAILER-DAEMON` for the null sender.
//! `%{mda}`, in the command of an `mda wrapper`, stands for the wrapped command
//! ([`wrap_command`]).
//!
//! Slices, with `n` the number of characters of the value:
//! - `[i]`: the single character at index `i`; a negative `i` counts from the end
//!   (`-1` is the last character).
//! - `[a:]`: from index `a` to the end; `[-3:]` is the last three characters.
//! - `[a:b]`: a non-negative `b` is the last index kept (inclusive), so `[0:6]` of
//!   `example.org` is `example`; a negative `b` drops that many characters from the end,
//!   so `[0:-4]` is `example` too.
//! - `[:b]`: from the start.
//!
//! Indices past either end are clamped; a slice that selects nothing gives "".
//!
//! Modifiers: `lowercase`, `uppercase`, `strip` (drop a `+subaddress` from the user
//! part, with the delimiter from [`FormatCtx::subaddr_delim`]) and `raw` (see below).
//! They apply in this order, whatever order they are written in: strip, slice,
//! case change, sanitizing.
//!
//! # Sanitizing
//!
//! Values come from the envelope, so from whoever sent the mail. Before a value is used:
//! - paths ([`expand_path`]): every character outside `[A-Za-z0-9@+_=.,-]` becomes `:`,
//!   and a leading `.` becomes `:` (so no value can be `.`, `..`, a hidden file, or reach
//!   another directory). `:raw` keeps the other characters but never lifts the path
//!   rules: `/`, control characters and a leading `.` are still replaced by `:`;
//! - commands ([`expand_command`]): every character outside the same set becomes `:`,
//!   and so does a leading `-` (so a value cannot pose as an option of the command).
//!   With `:raw` only control characters (newline, NUL, ...) are replaced.
//!
//! `%{user.directory}` is the exception: it comes from the password database, is a path
//! by nature, and is used as is (control characters excepted).

use std::fmt::Write as _;

mod shell;
pub use shell::wrap_command;
use shell::Quote;

/// The values a format may refer to, for one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatCtx {
    /// The envelope sender (`MAIL FROM`), `user@domain`; empty for the null sender `<>`.
    pub sender: String,
    /// The recipient as the client gave it in `RCPT TO`, before alias or virtual expansion.
    pub rcpt: String,
    /// The recipient after expansion: the address actually being delivered.
    pub dest: String,
    /// The local account the delivery runs as.
    pub user: String,
    /// The home directory of [`user`](Self::user), from the password database.
    pub home: String,
    /// The character that starts a sub-address in a user part (`smtp sub-addr-delim`).
    pub subaddr_delim: char,
}

impl Default for FormatCtx {
    fn default() -> Self {
        FormatCtx {
            sender: String::new(),
            rcpt: String::new(),
            dest: String::new(),
            user: String::new(),
            home: String::new(),
            subaddr_delim: '+',
        }
    }
}

/// Expands a maildir or mbox path.
///
/// A leading `~/` is replaced by the user's home directory (an error when the user has
/// none). Expanded values are sanitized
/// as described in the module documentation, so that no envelope data can add a path
/// component or climb out of the directory the administrator wrote.
pub fn expand_path(fmt: &str, ctx: &FormatCtx) -> Result<String, String> {
    let mut out = String::with_capacity(fmt.len() + 32);
    let mut rest = fmt;
    if fmt.starts_with('~') && ctx.home.is_empty() {
        return Err(format!("{fmt}: user {} has no home directory", ctx.user));
    }
    if let Some(tail) = fmt.strip_prefix("~/") {
        out.push_str(ctx.home.trim_end_matches('/'));
        out.push('/');
        rest = tail;
    } else if fmt == "~" {
        out.push_str(&ctx.home);
        rest = "";
    }
    let mut chars = rest.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.peek().map(|&(_, c)| c) {
            Some('%') => {
                chars.next();
                out.push('%');
            }
            Some('{') => {
                let (spec, len) = parse_spec(&rest[i..])?;
                out.push_str(&spec.expand(ctx, Mode::Path));
                // Skip the rest of the specifier (we are at the '%').
                for _ in rest[i + 1..i + len].chars() {
                    chars.next();
                }
            }
            _ => out.push('%'),
        }
    }
    Ok(out)
}

/// Expands an `mda` command for `/bin/sh -c`, keeping envelope data out of the script.
///
/// Each specifier is replaced by a reference to a positional parameter (`"$1"`, `"$2"`,
/// ..., `"${10}"`), double-quoted so that it stays one word; the values, sanitized as the
/// module documentation says, are returned in parameter order. Run the result as
/// `/bin/sh -c SCRIPT smtpd-mda ARGS...`, so `$1` is `ARGS[0]`. The shell only ever
/// parses the administrator's text: a sender such as `;reboot;` is an argument, never
/// code (the lesson of CVE-2020-7247).
///
/// Inside a double-quoted part of the command the reference is written without extra
/// quotes (`"/var/x/%{rcpt.user}"` becomes `"/var/x/$1"`). Inside single quotes, where
/// the shell expands nothing, the sanitized value itself is written, as OpenSMTPD
/// does; a single quote in it (possible with `:raw`, or in `%{user.directory}`) is
/// written `'\''`, so that it cannot end the quoted part. The quote tracking
/// understands `'`, `"` and backslash; do not rely on it for here-documents or other
/// exotic constructs.
///
/// The same specifier written twice shares one parameter.
pub fn expand_command(fmt: &str, ctx: &FormatCtx) -> Result<(String, Vec<String>), String> {
    let mut script = String::with_capacity(fmt.len() + 16);
    let mut args: Vec<String> = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    let mut quote = Quote::None;
    let mut chars = fmt.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if quote.escapes() => {
                // The escaped character is the shell's business, even a '%'.
                script.push(c);
                if let Some((_, next)) = chars.next() {
                    script.push(next);
                }
                continue;
            }
            '%' => match chars.peek().map(|&(_, c)| c) {
                Some('%') => {
                    chars.next();
                    script.push('%');
                    continue;
                }
                Some('{') => {
                    let (spec, len) = parse_spec(&fmt[i..])?;
                    for _ in fmt[i + 1..i + len].chars() {
                        chars.next();
                    }
                    if quote == Quote::Single {
                        script.push_str(&spec.expand(ctx, Mode::Command).replace('\'', "'\\''"));
                        continue;
                    }
                    let text = &fmt[i..i + len];
                    let n = match seen.iter().position(|s| *s == text) {
                        Some(k) => k + 1,
                        None => {
                            seen.push(text);
                            args.push(spec.expand(ctx, Mode::Command));
                            args.len()
                        }
                    };
                    let reference = if n < 10 {
                        format!("${n}")
                    } else {
                        format!("${{{n}}}")
                    };
                    if quote == Quote::Double {
                        script.push_str(&reference);
                    } else {
                        let _ = write!(script, "\"{reference}\"");
                    }
                    continue;
                }
                _ => {}
            },
            _ => quote = quote.after(c),
        }
        script.push(c);
    }
    Ok((script, args))
}

/// Where an expanded value goes; decides how it is sanitized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Path,
    Command,
}

/// The names a specifier may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Sender,
    SenderUser,
    SenderDomain,
    Rcpt,
    RcptUser,
    RcptDomain,
    Dest,
    DestUser,
    DestDomain,
    UserName,
    UserDirectory,
    MboxFrom,
}

/// Which part of an address a name designates, for `:strip`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Address,
    User,
    Other,
}

impl Field {
    fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "sender" => Field::Sender,
            "sender.user" => Field::SenderUser,
            "sender.domain" => Field::SenderDomain,
            "rcpt" => Field::Rcpt,
            "rcpt.user" => Field::RcptUser,
            "rcpt.domain" => Field::RcptDomain,
            "dest" => Field::Dest,
            "dest.user" => Field::DestUser,
            "dest.domain" => Field::DestDomain,
            "user.username" => Field::UserName,
            "user.directory" => Field::UserDirectory,
            "mbox.from" => Field::MboxFrom,
            _ => return None,
        })
    }

    fn value(self, ctx: &FormatCtx) -> &str {
        match self {
            Field::Sender => &ctx.sender,
            Field::SenderUser => user_part(&ctx.sender),
            Field::SenderDomain => domain_part(&ctx.sender),
            Field::Rcpt => &ctx.rcpt,
            Field::RcptUser => user_part(&ctx.rcpt),
            Field::RcptDomain => domain_part(&ctx.rcpt),
            Field::Dest => &ctx.dest,
            Field::DestUser => user_part(&ctx.dest),
            Field::DestDomain => domain_part(&ctx.dest),
            Field::UserName => &ctx.user,
            Field::UserDirectory => &ctx.home,
            Field::MboxFrom if ctx.sender.is_empty() => "MAILER-DAEMON",
            Field::MboxFrom => &ctx.sender,
        }
    }

    fn part(self) -> Part {
        match self {
            Field::Sender | Field::Rcpt | Field::Dest | Field::MboxFrom => Part::Address,
            Field::SenderUser | Field::RcptUser | Field::DestUser | Field::UserName => Part::User,
            Field::SenderDomain | Field::RcptDomain | Field::DestDomain | Field::UserDirectory => {
                Part::Other
            }
        }
    }
}

/// The part of `addr` before its last `@` (all of it when there is none).
fn user_part(addr: &str) -> &str {
    addr.rsplit_once('@').map_or(addr, |(u, _)| u)
}

/// The part of `addr` after its last `@` ("" when there is none).
fn domain_part(addr: &str) -> &str {
    addr.rsplit_once('@').map_or("", |(_, d)| d)
}

/// The user part without its sub-address. A user part that starts with the delimiter is
/// kept whole: there would be nothing left.
fn strip_user(user: &str, delim: char) -> &str {
    match user.find(delim) {
        Some(i) if i > 0 => &user[..i],
        _ => user,
    }
}

/// A `[...]` slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slice {
    Index(i64),
    Range(Option<i64>, Option<i64>),
}

impl Slice {
    fn parse(s: &str) -> Option<Slice> {
        fn int(s: &str) -> Option<Option<i64>> {
            if s.is_empty() {
                return Some(None);
            }
            let digits = s.strip_prefix('-').unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            s.parse().ok().map(Some)
        }
        match s.split_once(':') {
            None => int(s)?.map(Slice::Index),
            Some((a, b)) => Some(Slice::Range(int(a)?, int(b)?)),
        }
    }

    fn apply(self, value: &str) -> String {
        let chars: Vec<char> = value.chars().collect();
        let n = chars.len() as i64;
        let (first, last) = match self {
            Slice::Index(i) => {
                let i = if i < 0 { n + i } else { i };
                (i, i)
            }
            Slice::Range(a, b) => {
                let first = match a {
                    Some(a) if a < 0 => (n + a).max(0),
                    Some(a) => a,
                    None => 0,
                };
                let last = match b {
                    Some(b) if b < 0 => n + b - 1,
                    Some(b) => b.min(n - 1),
                    None => n - 1,
                };
                (first, last)
            }
        };
        if first < 0 || first > last || first >= n {
            return String::new();
        }
        chars[first as usize..=last as usize].iter().collect()
    }
}

/// One parsed `%{...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    name: Field,
    slice: Option<Slice>,
    lowercase: bool,
    uppercase: bool,
    strip: bool,
    raw: bool,
}

/// Parses the specifier at the start of `s` (which starts with `%{`); returns it and the
/// number of bytes it spans, braces included.
fn parse_spec(s: &str) -> Result<(Spec, usize), String> {
    let Some(close) = s.find('}') else {
        return Err(format!("unterminated format specifier: {s}"));
    };
    let body = &s[2..close];
    let whole = &s[..=close];
    let (name, slice, mods) = match body.find('[') {
        Some(open) => {
            let Some(end) = body[open..].find(']').map(|e| open + e) else {
                return Err(format!("bad slice in {whole}"));
            };
            let slice = Slice::parse(&body[open + 1..end])
                .ok_or_else(|| format!("bad slice in {whole}"))?;
            let after = &body[end + 1..];
            let mods = match after.strip_prefix(':') {
                Some(m) => Some(m),
                None if after.is_empty() => None,
                None => return Err(format!("bad slice in {whole}")),
            };
            (&body[..open], Some(slice), mods)
        }
        None => match body.split_once(':') {
            Some((n, m)) => (n, None, Some(m)),
            None => (body, None, None),
        },
    };
    let name = Field::parse(name).ok_or_else(|| format!("unknown format specifier {whole}"))?;
    let mut spec = Spec {
        name,
        slice,
        lowercase: false,
        uppercase: false,
        strip: false,
        raw: false,
    };
    if let Some(mods) = mods {
        for m in mods.split(['|', ':']) {
            match m {
                "lowercase" => spec.lowercase = true,
                "uppercase" => spec.uppercase = true,
                "strip" => spec.strip = true,
                "raw" => spec.raw = true,
                _ => return Err(format!("unknown modifier {m:?} in {whole}")),
            }
        }
    }
    if spec.lowercase && spec.uppercase {
        return Err(format!("both lowercase and uppercase in {whole}"));
    }
    Ok((spec, close + 1))
}

/// Whether `c` may appear in a sanitized value.
fn is_safe(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '@' | '+' | '_' | '=' | '.' | ',' | '-')
}

impl Spec {
    fn expand(&self, ctx: &FormatCtx, mode: Mode) -> String {
        let value = self.name.value(ctx);
        let value: std::borrow::Cow<'_, str> = if self.strip {
            match self.name.part() {
                Part::User => strip_user(value, ctx.subaddr_delim).into(),
                Part::Address => match value.rsplit_once('@') {
                    Some((u, d)) => format!("{}@{d}", strip_user(u, ctx.subaddr_delim)).into(),
                    None => strip_user(value, ctx.subaddr_delim).into(),
                },
                Part::Other => value.into(),
            }
        } else {
            value.into()
        };
        let mut value = match self.slice {
            Some(slice) => slice.apply(&value),
            None => value.into_owned(),
        };
        if self.lowercase {
            value = value.to_lowercase();
        } else if self.uppercase {
            value = value.to_uppercase();
        }
        let trusted = self.name == Field::UserDirectory;
        sanitize(&value, mode, self.raw, trusted)
    }
}

/// Replaces what may not appear in a value used in `mode` (see the module documentation).
fn sanitize(value: &str, mode: Mode, raw: bool, trusted: bool) -> String {
    value
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let keep = if c.is_control() {
                false
            } else if trusted {
                true
            } else {
                match mode {
                    Mode::Path => (raw || is_safe(c)) && c != '/' && !(i == 0 && c == '.'),
                    Mode::Command => raw || (is_safe(c) && !(i == 0 && c == '-')),
                }
            };
            if keep {
                c
            } else {
                ':'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> FormatCtx {
        FormatCtx {
            sender: "Alice+news@Example.COM".into(),
            rcpt: "User+Tag@Example.org".into(),
            dest: "bob@example.net".into(),
            user: "bob".into(),
            home: "/home/bob".into(),
            subaddr_delim: '+',
        }
    }

    fn p(fmt: &str) -> String {
        expand_path(fmt, &ctx()).unwrap()
    }

    #[test]
    fn every_specifier() {
        let c = ctx();
        let cases = [
            ("%{sender}", "Alice+news@Example.COM"),
            ("%{sender.user}", "Alice+news"),
            ("%{sender.domain}", "Example.COM"),
            ("%{rcpt}", "User+Tag@Example.org"),
            ("%{rcpt.user}", "User+Tag"),
            ("%{rcpt.domain}", "Example.org"),
            ("%{dest}", "bob@example.net"),
            ("%{dest.user}", "bob"),
            ("%{dest.domain}", "example.net"),
            ("%{user.username}", "bob"),
            ("%{user.directory}", "/home/bob"),
            ("%{mbox.from}", "Alice+news@Example.COM"),
            ("100%%", "100%"),
            ("50% off", "50% off"),
        ];
        for (fmt, want) in cases {
            assert_eq!(expand_path(fmt, &c).unwrap(), want, "{fmt}");
        }
        let null = FormatCtx {
            sender: String::new(),
            ..ctx()
        };
        assert_eq!(expand_path("%{mbox.from}", &null).unwrap(), "MAILER-DAEMON");
        assert_eq!(expand_path("x%{sender}y", &null).unwrap(), "xy");
        assert_eq!(expand_path("x%{sender.domain}y", &null).unwrap(), "xy");
    }

    #[test]
    fn slices() {
        let c = FormatCtx {
            rcpt: "u@example.org".into(),
            ..ctx()
        };
        let cases = [
            ("%{rcpt.domain[0]}", "e"),
            ("%{rcpt.domain[1]}", "x"),
            ("%{rcpt.domain[-1]}", "g"),
            ("%{rcpt.domain[8:]}", "org"),
            ("%{rcpt.domain[-3:]}", "org"),
            ("%{rcpt.domain[0:6]}", "example"),
            ("%{rcpt.domain[0:-4]}", "example"),
            ("%{rcpt.domain[:2]}", "exa"),
            ("%{rcpt.domain[:]}", "example.org"),
            ("%{rcpt.domain[50]}", ""),
            ("%{rcpt.domain[-50]}", ""),
            ("%{rcpt.domain[5:2]}", ""),
            ("%{rcpt.domain[-50:2]}", "exa"),
            ("%{rcpt.domain[8:99]}", "org"),
            ("%{rcpt.domain[0:-99]}", ""),
        ];
        for (fmt, want) in cases {
            assert_eq!(expand_path(fmt, &c).unwrap(), want, "{fmt}");
        }
        // Slicing counts characters, not bytes.
        let c = FormatCtx {
            rcpt: "ü@x".into(),
            ..ctx()
        };
        assert_eq!(expand_path("%{rcpt.user[0]:raw}", &c).unwrap(), "ü");
        assert_eq!(expand_path("%{rcpt.user[0]}", &c).unwrap(), ":");
    }

    #[test]
    fn modifiers() {
        assert_eq!(p("%{rcpt:lowercase}"), "user+tag@example.org");
        assert_eq!(p("%{rcpt:uppercase}"), "USER+TAG@EXAMPLE.ORG");
        assert_eq!(p("%{rcpt:strip}"), "User@Example.org");
        assert_eq!(p("%{rcpt:lowercase|strip}"), "user@example.org");
        assert_eq!(p("%{rcpt:strip:lowercase}"), "user@example.org");
        assert_eq!(p("%{rcpt.user:strip}"), "User");
        assert_eq!(p("%{rcpt.domain:strip}"), "Example.org");
        assert_eq!(p("%{sender.user[0:2]:lowercase}"), "ali");
        assert_eq!(p("%{mbox.from:strip}"), "Alice@Example.COM");
        let c = FormatCtx {
            rcpt: "+x@y".into(),
            subaddr_delim: '-',
            dest: "a-b@c".into(),
            ..ctx()
        };
        assert_eq!(expand_path("%{rcpt.user:strip}", &c).unwrap(), "+x");
        assert_eq!(expand_path("%{dest:strip}", &c).unwrap(), "a@c");
    }

    #[test]
    fn errors() {
        let c = ctx();
        for bad in [
            "%{rcpt",
            "/x/%{rcpt.user",
            "%{nope}",
            "%{mda}",
            "%{rcpt.user[}",
            "%{rcpt.user[x]}",
            "%{rcpt.user[1:2:3]}",
            "%{rcpt.user[-]}",
            "%{rcpt.user[1]x}",
            "%{rcpt.user:shout}",
            "%{rcpt.user:lowercase|uppercase}",
            "%{}",
        ] {
            assert!(expand_path(bad, &c).is_err(), "{bad}");
            assert!(expand_command(bad, &c).is_err(), "{bad}");
        }
    }

    #[test]
    fn home_prefix() {
        assert_eq!(p("~/Maildir"), "/home/bob/Maildir");
        assert_eq!(p("~"), "/home/bob");
        assert_eq!(p("/var/~/x"), "/var/~/x");
        let homeless = FormatCtx {
            home: String::new(),
            ..ctx()
        };
        assert!(expand_path("~/Maildir", &homeless).is_err());
        assert_eq!(
            p("%{user.directory}/Maildir/%{rcpt.user:strip:lowercase}"),
            "/home/bob/Maildir/user"
        );
    }

    #[test]
    fn path_traversal_is_defused() {
        let evil = |rcpt: &str| FormatCtx {
            rcpt: rcpt.into(),
            sender: rcpt.into(),
            ..ctx()
        };
        let c = evil("../../etc@x");
        let out = expand_path("/var/mail/%{rcpt.user}", &c).unwrap();
        assert_eq!(out, "/var/mail/:.:..:etc");
        assert!(!out[10..].contains('/'));
        let raw = expand_path("/var/mail/%{rcpt.user:raw}", &c).unwrap();
        assert_eq!(raw, "/var/mail/:.:..:etc");
        for user in ["..", ".", ".ssh", "a/b", "a\0b", "a\nb", "a b"] {
            let c = evil(&format!("{user}@x"));
            for fmt in ["%{rcpt.user}", "%{rcpt.user:raw}", "%{sender.user[0:]}"] {
                let out = expand_path(fmt, &c).unwrap();
                assert!(!out.starts_with('.'), "{user:?} -> {out:?}");
                assert!(!out.contains('/'), "{user:?} -> {out:?}");
                assert!(!out.contains(['\0', '\n']), "{user:?} -> {out:?}");
            }
        }
        // A slice cannot uncover a dot that sanitizing would have caught.
        let c = evil("x..@y");
        assert_eq!(expand_path("%{rcpt.user[1:]}", &c).unwrap(), ":.");
        // Raw keeps harmless characters in paths.
        let c = evil("a b?c@x");
        assert_eq!(expand_path("%{rcpt.user:raw}", &c).unwrap(), "a b?c");
        assert_eq!(expand_path("%{rcpt.user}", &c).unwrap(), "a:b:c");
    }

    #[test]
    fn command_keeps_envelope_data_out_of_the_script() {
        let c = FormatCtx {
            sender: ";sleep 66;".into(),
            rcpt: "$(reboot)`id`@x".into(),
            ..ctx()
        };
        let (script, args) =
            expand_command("/usr/libexec/mail.local -f %{sender} %{rcpt.user:raw}", &c).unwrap();
        assert_eq!(script, "/usr/libexec/mail.local -f \"$1\" \"$2\"");
        assert!(!script.contains("sleep"));
        assert!(!script.contains("reboot"));
        assert_eq!(args, [":sleep:66:", "$(reboot)`id`"]);
        let (script, args) = expand_command("deliver %{sender:raw}", &c).unwrap();
        assert_eq!(script, "deliver \"$1\"");
        assert_eq!(args, [";sleep 66;"]);
    }

    #[test]
    fn command_quoting_contexts() {
        let c = ctx();
        let (script, args) =
            expand_command("procmail -a \"/x/%{rcpt.user}/y\" %{dest} %{rcpt.user}", &c).unwrap();
        assert_eq!(script, "procmail -a \"/x/$1/y\" \"$2\" \"$1\"");
        assert_eq!(args, ["User+Tag", "bob@example.net"]);
        // Inside single quotes, the sanitized value itself.
        let (script, args) = expand_command("echo '<%{rcpt.user}>' %{dest}", &c).unwrap();
        assert_eq!(script, "echo '<User+Tag>' \"$1\"");
        assert_eq!(args, ["bob@example.net"]);
        // `%%` is ours, not the shell's: it becomes '%' even inside single quotes.
        let (script, args) = expand_command("echo '%%' \\%{x} \"a\\\"%{dest}\" %%", &c).unwrap();
        assert_eq!(script, "echo '%' \\%{x} \"a\\\"$1\" %");
        assert_eq!(args, ["bob@example.net"]);
        let (script, _) = expand_command("date +%s", &c).unwrap();
        assert_eq!(script, "date +%s");
        // Parameters past 9 need braces.
        let fmt = "x %{sender} %{sender.user} %{sender.domain} %{rcpt} %{rcpt.user} \
                   %{rcpt.domain} %{dest} %{dest.user} %{dest.domain} %{user.username}";
        let (script, args) = expand_command(fmt, &c).unwrap();
        assert!(script.ends_with("\"$9\" \"${10}\""), "{script}");
        assert_eq!(args.len(), 10);
    }

    #[test]
    fn command_sanitizing() {
        let c = FormatCtx {
            sender: "-oQ/tmp@x".into(),
            rcpt: "a\nb\0c d@x".into(),
            ..ctx()
        };
        let (_, args) = expand_command(
            "m %{sender} %{rcpt.user} %{rcpt.user:raw} %{user.directory}",
            &c,
        )
        .unwrap();
        assert_eq!(args, [":oQ:tmp@x", "a:b:c:d", "a:b:c d", "/home/bob"]);
        let (_, args) = expand_command("m %{sender:raw}", &c).unwrap();
        assert_eq!(args, ["-oQ/tmp@x"]);
        // A quote cannot end a single-quoted part: sanitized away, or escaped with raw.
        let c = FormatCtx {
            sender: "a';reboot;'@x".into(),
            ..ctx()
        };
        let (script, args) = expand_command("m '%{sender}' '%{sender:raw}'", &c).unwrap();
        assert_eq!(script, "m 'a::reboot::@x' 'a'\\'';reboot;'\\''@x'");
        assert!(args.is_empty());
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", &script.replacen("m ", "printf '%s|' ", 1)])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "a::reboot::@x|a';reboot;'@x|"
        );
    }
}
