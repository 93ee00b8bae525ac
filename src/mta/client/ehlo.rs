//! What a server offers, read from the lines of its EHLO (or LHLO) reply (RFC 5321
//! §4.1.1.1): the first line greets, each other line is a keyword and its
//! parameters. Only the extensions the client uses are kept; unknown keywords,
//! keywords too long and lines beyond the bound are ignored.

use super::reply::ServerReply;

/// Keyword lines read at most; the rest are ignored.
const MAX_KEYWORDS: usize = 64;
/// Octets of a keyword line read at most; a longer one is ignored.
const MAX_KEYWORD_LINE: usize = 512;
/// AUTH mechanisms kept at most.
const MAX_MECHANISMS: usize = 16;
/// Octets of the server's name kept at most.
const MAX_NAME: usize = 255;

/// The extensions a server announced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caps {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870): `Some(0)` when offered with no limit or a limit of 0.
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// AUTH (RFC 4954): the mechanisms, upper case.
    pub auth: Vec<String>,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034).
    pub enhanced: bool,
    /// LIMITS (RFC 9422): what the server takes at most.
    pub limits: Limits,
    /// CHUNKING (RFC 3030): BDAT.
    pub chunking: bool,
    /// BINARYMIME (RFC 3030).
    pub binarymime: bool,
}

/// The limits of a LIMITS keyword (RFC 9422 §5); `None` when not given (or not a
/// number above zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// MAILMAX: transactions per session.
    pub mail: Option<usize>,
    /// RCPTMAX: recipients per transaction.
    pub rcpt: Option<usize>,
    /// RCPTDOMAINMAX: recipient domains per transaction.
    pub rcpt_domain: Option<usize>,
}

impl Limits {
    /// The limits of a LIMITS keyword's parameters: unknown names, bad values and a
    /// name given twice (its first value counts) are ignored.
    fn parse<'a>(params: impl Iterator<Item = &'a str>) -> Limits {
        let mut l = Limits::default();
        for p in params {
            let Some((name, v)) = p.split_once('=') else {
                continue;
            };
            let Some(n) = v
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0 && v.len() <= 9 && v.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let slot = if name.eq_ignore_ascii_case("MAILMAX") {
                &mut l.mail
            } else if name.eq_ignore_ascii_case("RCPTMAX") {
                &mut l.rcpt
            } else if name.eq_ignore_ascii_case("RCPTDOMAINMAX") {
                &mut l.rcpt_domain
            } else {
                continue;
            };
            slot.get_or_insert(n);
        }
        l
    }
}

impl Caps {
    /// The extensions of an EHLO reply.
    pub fn parse(r: &ServerReply) -> Caps {
        let mut c = Caps::default();
        for line in r.lines.iter().skip(1).take(MAX_KEYWORDS) {
            if line.len() > MAX_KEYWORD_LINE {
                continue;
            }
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            let is = |k: &str| keyword.eq_ignore_ascii_case(k);
            if is("PIPELINING") {
                c.pipelining = true;
            } else if is("SIZE") {
                // A limit that is no number is as good as none (RFC 1870 §4 wants
                // digits only).
                c.size = Some(
                    words
                        .next()
                        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                );
            } else if is("8BITMIME") {
                c.eightbitmime = true;
            } else if is("DSN") {
                c.dsn = true;
            } else if is("STARTTLS") {
                c.starttls = true;
            } else if is("AUTH")
                || keyword
                    .get(..5)
                    .is_some_and(|p| p.eq_ignore_ascii_case("AUTH="))
            {
                // `AUTH=LOGIN` is how old servers said it (before RFC 2554).
                let first = keyword.split_once('=').map(|(_, m)| m);
                for m in first.into_iter().chain(words) {
                    let m = m.to_ascii_uppercase();
                    if c.auth.len() < MAX_MECHANISMS && !c.auth.contains(&m) {
                        c.auth.push(m);
                    }
                }
            } else if is("SMTPUTF8") {
                c.smtputf8 = true;
            } else if is("REQUIRETLS") {
                c.requiretls = true;
            } else if is("ENHANCEDSTATUSCODES") {
                c.enhanced = true;
            } else if is("LIMITS") {
                c.limits = Limits::parse(words);
            } else if is("CHUNKING") {
                c.chunking = true;
            } else if is("BINARYMIME") {
                c.binarymime = true;
            }
        }
        c
    }

    /// Whether the server offers AUTH mechanism `m` (upper case).
    pub fn offers_auth(&self, m: &str) -> bool {
        self.auth.iter().any(|x| x == m)
    }
}

/// The server's name as its greeting or EHLO reply gives it (the first word), reduced
/// to the characters of a host name or address literal; empty when there is none.
pub fn server_name(r: &ServerReply) -> String {
    let first = r
        .lines
        .first()
        .and_then(|l| l.split_ascii_whitespace().next())
        .unwrap_or_default();
    first
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || ".-_:[]".contains(*c))
        .take(MAX_NAME)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(lines: &[&str]) -> ServerReply {
        ServerReply {
            code: 250,
            text: lines.join(" "),
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn keywords_of_a_postfix_reply() {
        let r = reply(&[
            "mx.example.org",
            "PIPELINING",
            "SIZE 10240000",
            "VRFY",
            "ETRN",
            "STARTTLS",
            "AUTH PLAIN login CRAM-MD5",
            "AUTH=PLAIN LOGIN",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "DSN",
            "SMTPUTF8",
            "CHUNKING",
        ]);
        let c = Caps::parse(&r);
        assert_eq!(
            c,
            Caps {
                pipelining: true,
                size: Some(10240000),
                eightbitmime: true,
                dsn: true,
                starttls: true,
                auth: vec!["PLAIN".into(), "LOGIN".into(), "CRAM-MD5".into()],
                smtputf8: true,
                requiretls: false,
                enhanced: true,
                limits: Limits::default(),
                chunking: true,
                binarymime: false,
            }
        );
        assert!(c.offers_auth("PLAIN") && !c.offers_auth("XOAUTH2"));
        assert_eq!(server_name(&r), "mx.example.org");
    }

    #[test]
    fn the_greeting_line_is_no_keyword_and_case_does_not_matter() {
        let c = Caps::parse(&reply(&["PIPELINING here", "size", "8bitmime"]));
        assert!(!c.pipelining && c.eightbitmime);
        assert_eq!(c.size, Some(0));
        let c = Caps::parse(&reply(&["x", "SIZE 12x", "SIZE"]));
        assert_eq!(c.size, Some(0));
        let c = Caps::parse(&reply(&["x", "SIZE 99999999999999999999999"]));
        assert_eq!(c.size, Some(0));
        assert_eq!(Caps::parse(&reply(&["only a name"])), Caps::default());
    }

    #[test]
    fn limits_of_rfc_9422() {
        let c = Caps::parse(&reply(&[
            "x",
            "LIMITS RCPTMAX=50 mailmax=3 RCPTDOMAINMAX=2 FOO=1 RCPTMAX=9",
        ]));
        assert_eq!(
            c.limits,
            Limits {
                mail: Some(3),
                rcpt: Some(50),
                rcpt_domain: Some(2)
            }
        );
        let c = Caps::parse(&reply(&[
            "x",
            "LIMITS RCPTMAX=0 MAILMAX=-1 RCPTDOMAINMAX=1x MAILMAX=99999999999",
        ]));
        assert_eq!(c.limits, Limits::default());
        assert_eq!(
            Caps::parse(&reply(&["x", "LIMITS"])).limits,
            Limits::default()
        );
    }

    #[test]
    fn bounds() {
        let mut lines = vec!["x".to_string()];
        lines.extend((0..MAX_KEYWORDS).map(|i| format!("X-{i}")));
        lines.push("PIPELINING".into());
        let r = ServerReply {
            code: 250,
            text: String::new(),
            lines,
        };
        assert!(
            !Caps::parse(&r).pipelining,
            "keywords past the bound are ignored"
        );
        let long = format!("AUTH {}", "PLAIN ".repeat(100));
        assert!(Caps::parse(&reply(&["x", &long])).auth.is_empty());
        let many: String = (0..40).map(|i| format!(" M{i}")).collect();
        let c = Caps::parse(&reply(&["x", &format!("AUTH{many}")]));
        assert_eq!(c.auth.len(), MAX_MECHANISMS);
        assert_eq!(
            server_name(&reply(&["mx.ex\u{e9}ample;rm -rf", "x"])),
            "mx.examplerm"
        );
        assert_eq!(server_name(&reply(&[""])), "");
    }
}
