//! SMTP command parsing (RFC 5321 §4.1, RFC 1870, RFC 6152, RFC 3461, RFC 6531,
//! RFC 3030).
//!
//! The parser borrows the line and never allocates for a valid command except for the
//! mailbox it returns. It fails closed: anything that is not a well-formed path is an
//! error, never a guess (the CVE-2020-7247 lesson).

use crate::mail::address::{parse_path, valid_helo, valid_xtext, Mailbox};
use crate::mail::params::{notify, Body, MailParams, RcptParams, Ret};
use crate::mail::reply::Reply;

/// A parsed command line. Verbs are matched case-insensitively.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// `HELO domain`.
    Helo(&'a str),
    /// `EHLO domain`.
    Ehlo(&'a str),
    /// `MAIL FROM:<path> [params]`.
    Mail(Mailbox, MailParams),
    /// `RCPT TO:<path> [params]`.
    Rcpt(Mailbox, RcptParams),
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `HELP [topic]`.
    Help,
    /// `VRFY string`.
    Vrfy,
    /// `EXPN string`.
    Expn,
    /// `STARTTLS` (RFC 3207).
    Starttls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth(&'a str, Option<&'a str>),
    /// `BDAT octets [LAST]` (RFC 3030): a chunk of that many octets follows the line.
    Bdat(u64, bool),
}

/// Why a line is not a valid command; each maps to one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Unknown verb.
    Unknown,
    /// HELO/EHLO without a valid domain.
    HeloSyntax,
    /// MAIL without `FROM:<...>`.
    MailSyntax,
    /// RCPT without `TO:<...>`.
    RcptSyntax,
    /// The reverse-path does not parse.
    BadSender,
    /// The forward-path does not parse.
    BadRcpt,
    /// An argument where none is allowed.
    NoArgs,
    /// An unknown or malformed ESMTP parameter.
    BadParam(String),
    /// AUTH without a valid mechanism name, or with more than one response.
    AuthSyntax,
    /// MAIL (`rcpt` false) or RCPT (`rcpt` true) with octets that are not UTF-8:
    /// overlong forms, surrogates, truncated sequences, code points past U+10FFFF.
    NotUtf8 {
        /// The command is RCPT.
        rcpt: bool,
    },
    /// BDAT whose arguments are not `octets [LAST]`: where its chunk ends is unknown.
    BdatSyntax,
}

impl ParseError {
    /// The reply for this error.
    pub fn reply(&self) -> Reply {
        match self {
            ParseError::Unknown => Reply::UNKNOWN_COMMAND,
            ParseError::HeloSyntax => Reply::HELO_SYNTAX,
            ParseError::MailSyntax => Reply::MAIL_SYNTAX,
            ParseError::RcptSyntax => Reply::RCPT_SYNTAX,
            ParseError::BadSender => Reply::BAD_SENDER,
            ParseError::BadRcpt => Reply::BAD_RCPT,
            ParseError::NoArgs => Reply::NO_ARGS,
            ParseError::BadParam(p) => Reply::new(555, "5.5.4", format!("Unsupported option: {p}")),
            ParseError::AuthSyntax => Reply::AUTH_SYNTAX,
            ParseError::NotUtf8 { rcpt: false } => Reply::SENDER_NOT_UTF8,
            ParseError::NotUtf8 { rcpt: true } => Reply::RCPT_NOT_UTF8,
            ParseError::BdatSyntax => Reply::BDAT_SYNTAX,
        }
    }
}

impl<'a> Command<'a> {
    /// Parses one command line (CR LF already stripped, no bare CR/LF/NUL).
    pub fn parse(line: &'a [u8]) -> Result<Command<'a>, ParseError> {
        let line = std::str::from_utf8(line).map_err(|_| not_utf8(line))?;
        let (verb, rest) = match line.find(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        let is = |v: &str| verb.eq_ignore_ascii_case(v);
        if is("HELO") || is("EHLO") {
            let domain = rest.trim_matches(' ');
            if !valid_helo(domain) {
                return Err(ParseError::HeloSyntax);
            }
            return Ok(if is("HELO") {
                Command::Helo(domain)
            } else {
                Command::Ehlo(domain)
            });
        }
        if is("MAIL") {
            let (path, params) = split_path(rest, "FROM:").ok_or(ParseError::MailSyntax)?;
            let mbox = parse_path(path, true).ok_or(ParseError::BadSender)?;
            return Ok(Command::Mail(mbox, parse_mail_params(params)?));
        }
        if is("RCPT") {
            let (path, params) = split_path(rest, "TO:").ok_or(ParseError::RcptSyntax)?;
            let mbox = parse_path(path, false).ok_or(ParseError::BadRcpt)?;
            return Ok(Command::Rcpt(mbox, parse_rcpt_params(params)?));
        }
        let no_args = |c: Command<'a>| {
            if rest.trim_matches(' ').is_empty() {
                Ok(c)
            } else {
                Err(ParseError::NoArgs)
            }
        };
        if is("DATA") {
            return no_args(Command::Data);
        }
        if is("RSET") {
            return no_args(Command::Rset);
        }
        if is("QUIT") {
            return no_args(Command::Quit);
        }
        if is("STARTTLS") {
            // RFC 3207 §4: 501 for parameters.
            return no_args(Command::Starttls);
        }
        if is("NOOP") {
            return Ok(Command::Noop);
        }
        if is("HELP") {
            return Ok(Command::Help);
        }
        if is("VRFY") {
            return Ok(Command::Vrfy);
        }
        if is("EXPN") {
            return Ok(Command::Expn);
        }
        if is("BDAT") {
            return parse_bdat(rest);
        }
        if is("AUTH") {
            let mut words = rest.split(' ');
            let mech = words.next().unwrap_or("");
            let initial = words.next();
            // RFC 4954 §4: 1 to 20 upper-case letters, digits, '-' and '_'.
            let valid = (1..=20).contains(&mech.len())
                && mech
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid || words.next().is_some() || initial == Some("") {
                return Err(ParseError::AuthSyntax);
            }
            return Ok(Command::Auth(mech, initial));
        }
        Err(ParseError::Unknown)
    }
}

/// The error of a line that is not UTF-8: an address error for MAIL and RCPT (whose
/// paths may be UTF-8, RFC 6531), an unknown command otherwise.
fn not_utf8(line: &[u8]) -> ParseError {
    let verb = |v: &[u8]| line.len() > 4 && line[..4].eq_ignore_ascii_case(v) && line[4] == b' ';
    if verb(b"MAIL") {
        ParseError::NotUtf8 { rcpt: false }
    } else if verb(b"RCPT") {
        ParseError::NotUtf8 { rcpt: true }
    } else {
        ParseError::Unknown
    }
}

/// Whether `line` is a BDAT command, whatever its arguments: a line that cannot be
/// read as a command but names BDAT leaves the server not knowing where its chunk ends.
pub fn is_bdat(line: &[u8]) -> bool {
    line.get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"BDAT"))
        && matches!(line.get(4), None | Some(b' '))
}

/// The arguments of BDAT: the chunk's size in octets (digits, at most 20 of them, as
/// for SIZE=), then optionally `LAST`.
fn parse_bdat(rest: &str) -> Result<Command<'_>, ParseError> {
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|n| n.len() <= 20 && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u64>().ok())
        .ok_or(ParseError::BdatSyntax)?;
    let last = match words.next() {
        None => false,
        Some(w) if w.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(ParseError::BdatSyntax),
    };
    if words.next().is_some() {
        return Err(ParseError::BdatSyntax);
    }
    Ok(Command::Bdat(size, last))
}

/// Splits `FROM:<path> params` into the path (with brackets) and the parameter string.
/// Spaces after the colon are tolerated, as most servers do.
fn split_path<'a>(rest: &'a str, keyword: &str) -> Option<(&'a str, &'a str)> {
    // Compare bytes: the line may hold multi-byte characters right after the verb.
    let head = rest.as_bytes().get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword.as_bytes()) {
        return None;
    }
    // The keyword is ASCII, so its end is a character boundary.
    let rest = rest.get(keyword.len()..)?.trim_start_matches(' ');
    if !rest.starts_with('<') {
        return None;
    }
    let end = path_end(rest)?;
    let (path, params) = rest.split_at(end + 1);
    if !params.is_empty() && !params.starts_with(' ') {
        return None;
    }
    Some((path, params.trim_matches(' ')))
}

/// Index of the `>` closing the path, skipping quoted strings.
fn path_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    let mut quoted = false;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

fn params(s: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    s.split(' ')
        .filter(|p| !p.is_empty())
        .map(|p| match p.find('=') {
            Some(i) => (&p[..i], Some(&p[i + 1..])),
            None => (p, None),
        })
}

fn bad(key: &str) -> ParseError {
    ParseError::BadParam(key.chars().take(32).collect())
}

fn parse_mail_params(s: &str) -> Result<MailParams, ParseError> {
    let mut p = MailParams::default();
    let (mut seen_size, mut seen_body) = (false, false);
    for (key, val) in params(s) {
        let k = |n: &str| key.eq_ignore_ascii_case(n);
        match val {
            // RFC 6531 §3.4: no value.
            None if k("SMTPUTF8") && !p.smtputf8 => p.smtputf8 = true,
            // RFC 8689 §4: no value.
            None if k("REQUIRETLS") && !p.requiretls => p.requiretls = true,
            Some(v) if k("SIZE") && !seen_size => {
                seen_size = true;
                if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad(key));
                }
                p.size = Some(v.parse().unwrap_or(u64::MAX));
            }
            Some(v) if k("BODY") && !seen_body => {
                seen_body = true;
                p.body = if v.eq_ignore_ascii_case("7BIT") {
                    Body::SevenBit
                } else if v.eq_ignore_ascii_case("8BITMIME") {
                    Body::EightBitMime
                } else if v.eq_ignore_ascii_case("BINARYMIME") {
                    Body::BinaryMime
                } else {
                    return Err(bad(key));
                };
            }
            Some(v) if k("RET") && p.ret.is_none() => {
                p.ret = Some(if v.eq_ignore_ascii_case("FULL") {
                    Ret::Full
                } else if v.eq_ignore_ascii_case("HDRS") {
                    Ret::Hdrs
                } else {
                    return Err(bad(key));
                });
            }
            Some(v) if k("ENVID") && p.envid.is_none() => {
                if v.is_empty() || v.len() > 100 || !valid_xtext(v) {
                    return Err(bad(key));
                }
                p.envid = Some(v.to_string());
            }
            // AUTH= (RFC 4954 §5) is legal from any client; without AUTH it carries no
            // weight and is ignored, as OpenSMTPD and Postfix do.
            Some(v) if k("AUTH") && (v == "<>" || valid_xtext(v)) => {}
            _ => return Err(bad(key)),
        }
    }
    Ok(p)
}

fn parse_rcpt_params(s: &str) -> Result<RcptParams, ParseError> {
    let mut p = RcptParams::default();
    for (key, val) in params(s) {
        let k = |n: &str| key.eq_ignore_ascii_case(n);
        match val {
            Some(v) if k("NOTIFY") && p.notify == 0 => {
                for item in v.split(',') {
                    let bit = match item.to_ascii_uppercase().as_str() {
                        "SUCCESS" => notify::SUCCESS,
                        "FAILURE" => notify::FAILURE,
                        "DELAY" => notify::DELAY,
                        "NEVER" => notify::NEVER,
                        _ => return Err(bad(key)),
                    };
                    if p.notify & bit != 0 {
                        return Err(bad(key));
                    }
                    p.notify |= bit;
                }
                // NEVER excludes the others (RFC 3461 §4.1).
                if p.notify & notify::NEVER != 0 && p.notify != notify::NEVER {
                    return Err(bad(key));
                }
            }
            Some(v) if k("ORCPT") && p.orcpt.is_none() => {
                let (kind, addr) = v.split_once(';').ok_or_else(|| bad(key))?;
                if kind.is_empty()
                    || !kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    || addr.is_empty()
                    || addr.len() > 500
                    || !valid_xtext(addr)
                {
                    return Err(bad(key));
                }
                p.orcpt = Some(v.to_string());
            }
            _ => return Err(bad(key)),
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::address::valid_domain;

    fn mb(l: &str, d: &str) -> Mailbox {
        Mailbox {
            local: l.into(),
            domain: d.into(),
        }
    }

    #[test]
    fn verbs() {
        assert_eq!(
            Command::parse(b"ehlo client.example"),
            Ok(Command::Ehlo("client.example"))
        );
        assert_eq!(
            Command::parse(b"HELO [192.0.2.1]"),
            Ok(Command::Helo("[192.0.2.1]"))
        );
        assert_eq!(Command::parse(b"EHLO"), Err(ParseError::HeloSyntax));
        assert_eq!(Command::parse(b"EHLO  "), Err(ParseError::HeloSyntax));
        assert_eq!(Command::parse(b"DATA"), Ok(Command::Data));
        assert_eq!(Command::parse(b"DATA x"), Err(ParseError::NoArgs));
        assert_eq!(Command::parse(b"NOOP hello"), Ok(Command::Noop));
        assert_eq!(Command::parse(b"vrfy root"), Ok(Command::Vrfy));
        assert_eq!(Command::parse(b"WIZ"), Err(ParseError::Unknown));
        assert_eq!(
            Command::parse(b"auth plain AGJvYgBw"),
            Ok(Command::Auth("plain", Some("AGJvYgBw")))
        );
        assert_eq!(
            Command::parse(b"AUTH LOGIN"),
            Ok(Command::Auth("LOGIN", None))
        );
        for bad in [
            &b"AUTH"[..],
            b"AUTH ",
            b"AUTH PLAIN a b",
            b"AUTH PLAIN ",
            b"AUTH PL@IN",
            b"AUTH ABCDEFGHIJKLMNOPQRSTU",
        ] {
            assert_eq!(Command::parse(bad), Err(ParseError::AuthSyntax));
        }
        assert_eq!(Command::parse(b"\xff\xfe"), Err(ParseError::Unknown));
        assert_eq!(Command::parse(b"NOOP \xff"), Err(ParseError::Unknown));
    }

    #[test]
    fn utf8_paths() {
        match Command::parse("MAIL FROM:<jörg@bücher.example> smtputf8".as_bytes()) {
            Ok(Command::Mail(m, p)) => {
                assert_eq!(m, mb("jörg", "bücher.example"));
                assert!(p.smtputf8);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Command::parse("RCPT TO:<用户@例子.广告>".as_bytes()),
            Ok(Command::Rcpt(m, _)) if m.local == "用户" && !m.is_ascii()
        ));
        // Octets that are not UTF-8: overlong forms (of "/" and of NUL), a surrogate
        // (U+D800), a truncated sequence, a code point past U+10FFFF, a lone
        // continuation octet, and octets UTF-8 never uses.
        for bad in [
            &b"\xc0\xaf"[..],
            b"\xe0\x80\x80",
            b"\xed\xa0\x80",
            b"\xc3",
            b"\xe2\x82",
            b"\xf4\x90\x80\x80",
            b"\x80",
            b"\xfe",
        ] {
            let mut mail = b"MAIL FROM:<a".to_vec();
            mail.extend_from_slice(bad);
            mail.extend_from_slice(b"@b.c> SMTPUTF8");
            assert_eq!(
                Command::parse(&mail),
                Err(ParseError::NotUtf8 { rcpt: false }),
                "{}",
                mail.escape_ascii()
            );
            let mut rcpt = b"rcpt TO:<a@b".to_vec();
            rcpt.extend_from_slice(bad);
            rcpt.push(b'>');
            assert_eq!(
                Command::parse(&rcpt),
                Err(ParseError::NotUtf8 { rcpt: true })
            );
        }
        assert_eq!(
            ParseError::NotUtf8 { rcpt: true }.reply().code,
            Reply::RCPT_NOT_UTF8.code
        );
    }

    #[test]
    fn mail_paths() {
        let ok = |l: &[u8]| match Command::parse(l) {
            Ok(Command::Mail(m, p)) => (m, p),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(l)),
        };
        assert_eq!(ok(b"MAIL FROM:<a@Example.ORG>").0, mb("a", "example.org"));
        assert_eq!(ok(b"mail from: <a@b.c>").0, mb("a", "b.c"));
        assert!(ok(b"MAIL FROM:<>").0.is_null());
        assert_eq!(ok(b"MAIL FROM:<@r1,@r2:x@y.z>").0, mb("x", "y.z"));
        assert_eq!(ok(b"MAIL FROM:<\"a b\"@c.d>").0, mb("\"a b\"", "c.d"));
        let (_, p) = ok(b"MAIL FROM:<a@b.c> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=x+2By");
        assert_eq!(p.size, Some(1000));
        assert_eq!(p.body, Body::EightBitMime);
        assert_eq!(p.ret, Some(Ret::Hdrs));
        assert_eq!(p.envid.as_deref(), Some("x+2By"));
        assert_eq!(ok(b"MAIL FROM:<> body=binarymime").1.body, Body::BinaryMime);
    }

    #[test]
    fn bdat() {
        for (line, want) in [
            (&b"BDAT 0 LAST"[..], Command::Bdat(0, true)),
            (b"bdat 1000", Command::Bdat(1000, false)),
            (b"BDAT 0010 last", Command::Bdat(10, true)),
            (b"BDAT  5  LAST ", Command::Bdat(5, true)),
            (b"BDAT 18446744073709551615", Command::Bdat(u64::MAX, false)),
        ] {
            assert_eq!(Command::parse(line), Ok(want));
            assert!(is_bdat(line));
        }
        for line in [
            &b"BDAT"[..],
            b"BDAT ",
            b"BDAT x",
            b"BDAT -1",
            b"BDAT +1",
            b"BDAT 1 LASTX",
            b"BDAT 1 LAST x",
            b"BDAT 1x",
            b"BDAT 18446744073709551616",
            b"BDAT 000000000000000000001",
        ] {
            assert_eq!(
                Command::parse(line),
                Err(ParseError::BdatSyntax),
                "{line:?}"
            );
            assert!(is_bdat(line), "{line:?}");
        }
        assert!(!is_bdat(b"BDATX 1") && !is_bdat(b"BDA") && is_bdat(b"bdat"));
    }

    #[test]
    fn bad_mail() {
        for (line, err) in [
            (&b"MAIL <a@b.c>"[..], ParseError::MailSyntax),
            (b"MAIL FROM:a@b.c", ParseError::MailSyntax),
            (b"MAIL FROM:<a@b.c", ParseError::MailSyntax),
            (b"MAIL FROM:<a@b.c>x", ParseError::MailSyntax),
            (b"MAIL FROM:<;cmd;>", ParseError::BadSender),
            (b"MAIL FROM:<a>", ParseError::BadSender),
            (b"MAIL FROM:<@>", ParseError::BadSender),
            (b"MAIL FROM:<a@>", ParseError::BadSender),
            (b"MAIL FROM:<@a>", ParseError::BadSender),
            (b"MAIL FROM:<a..b@c.d>", ParseError::BadSender),
            (b"MAIL FROM:<a@b..c>", ParseError::BadSender),
            (b"MAIL FROM:<a@-b.c>", ParseError::BadSender),
            (b"MAIL FROM:<a b@c.d>", ParseError::BadSender),
            (
                b"MAIL FROM:<a@b.c> SMTPUTF8=yes",
                ParseError::BadParam("SMTPUTF8".into()),
            ),
            (
                b"MAIL FROM:<a@b.c> SMTPUTF8 SMTPUTF8",
                ParseError::BadParam("SMTPUTF8".into()),
            ),
            (
                b"MAIL FROM:<a@b.c> SIZE=x",
                ParseError::BadParam("SIZE".into()),
            ),
            (
                b"MAIL FROM:<a@b.c> BODY=BINARY",
                ParseError::BadParam("BODY".into()),
            ),
            (
                b"MAIL FROM:<a@b.c> ENVID=a=b",
                ParseError::BadParam("ENVID".into()),
            ),
        ] {
            assert_eq!(
                Command::parse(line),
                Err(err),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
        let long = format!("MAIL FROM:<{}@b.c>", "a".repeat(65));
        assert_eq!(Command::parse(long.as_bytes()), Err(ParseError::BadSender));
    }

    #[test]
    fn rcpt() {
        match Command::parse(b"RCPT TO:<u@d.e> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;u@d.e") {
            Ok(Command::Rcpt(m, p)) => {
                assert_eq!(m, mb("u", "d.e"));
                assert_eq!(p.notify, notify::SUCCESS | notify::FAILURE);
                assert_eq!(p.orcpt.as_deref(), Some("rfc822;u@d.e"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Command::parse(b"RCPT TO:<>"), Err(ParseError::BadRcpt));
        assert!(
            matches!(Command::parse(b"RCPT TO:<Postmaster>"), Ok(Command::Rcpt(m, _)) if m.local == "postmaster")
        );
        assert_eq!(
            Command::parse(b"RCPT TO:<u@d.e> NOTIFY=NEVER,DELAY"),
            Err(ParseError::BadParam("NOTIFY".into()))
        );
        assert_eq!(
            Command::parse(b"RCPT TO:<u@d.e> FOO=1"),
            Err(ParseError::BadParam("FOO".into()))
        );
        assert!(Command::parse(b"RCPT TO:<u@[IPv6:::1]>").is_ok());
        assert!(
            matches!(Command::parse(b"RCPT TO:<u@[IPv6:::1]>"), Ok(Command::Rcpt(m, _)) if valid_domain(&m.domain))
        );
        // A multi-byte character right after the verb (found by fuzzing).
        assert_eq!(
            Command::parse("MAIL FROM\u{e9}".as_bytes()),
            Err(ParseError::MailSyntax)
        );
        assert_eq!(
            Command::parse("RCPT TO\u{e9}:<u@b.c>".as_bytes()),
            Err(ParseError::RcptSyntax)
        );
        assert!(Command::parse(b"RCPT TO:<u@[300.1.1.1]>").is_err());
    }
}
