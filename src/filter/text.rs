//! OpenSMTPD's filter protocol (its smtpd-filters(7), protocol 0.7) as lines of text:
//! parsing what such a filter sends and formatting what it is sent. Pure: no socket, no
//! clock (timestamps come in), no state; strict: a line that deviates is an error, which
//! costs the filter its process, never the daemon.
//!
//! ```text
//! daemon -> filter   config|KEY|VALUE ... config|ready
//!                    report|0.7|SECS.USECS|smtp-in|EVENT|SID[|FIELD...]
//!                    filter|0.7|SECS.USECS|smtp-in|PHASE|SID|TOKEN|PARAM
//! filter -> daemon   register|report|smtp-in|EVENT   register|filter|smtp-in|PHASE
//!                    register|ready
//!                    filter-result|SID|TOKEN|proceed|junk|reject|R|disconnect|R|rewrite|V|report|T
//!                    filter-dataline|SID|TOKEN|LINE
//!                    report|SECS.USECS|smtp-in|SID|TEXT
//! ```
//! Every line ends with LF; only the last field of a line may hold `|`.

use std::fmt;

/// The protocol version the daemon speaks (OpenSMTPD 7.x).
pub const VERSION: &str = "0.7";

/// Longest line either side sends, LF not included: a message line of 64 KiB (the
/// longest the daemon passes to filters) with its prefix.
pub const MAX_LINE: usize = 65536 + 128;

/// Report events of the `smtp-in` subsystem a filter registers for, as bits.
pub mod report {
    /// `link-connect`: the client connected.
    pub const LINK_CONNECT: u32 = 1 << 0;
    /// `link-disconnect`: the session ended.
    pub const LINK_DISCONNECT: u32 = 1 << 1;
    /// `link-greeting`: the greeting was sent.
    pub const LINK_GREETING: u32 = 1 << 2;
    /// `link-identify`: HELO or EHLO was accepted.
    pub const LINK_IDENTIFY: u32 = 1 << 3;
    /// `link-tls`: a TLS handshake completed.
    pub const LINK_TLS: u32 = 1 << 4;
    /// `link-auth`: an AUTH exchange ended.
    pub const LINK_AUTH: u32 = 1 << 5;
    /// `tx-reset`: the transaction is over.
    pub const TX_RESET: u32 = 1 << 6;
    /// `tx-begin`: MAIL FROM opened a transaction.
    pub const TX_BEGIN: u32 = 1 << 7;
    /// `tx-mail`: the sender's result.
    pub const TX_MAIL: u32 = 1 << 8;
    /// `tx-rcpt`: a recipient's result.
    pub const TX_RCPT: u32 = 1 << 9;
    /// `tx-envelope`: an envelope of the message.
    pub const TX_ENVELOPE: u32 = 1 << 10;
    /// `tx-data`: the result of DATA.
    pub const TX_DATA: u32 = 1 << 11;
    /// `tx-commit`: the message was queued.
    pub const TX_COMMIT: u32 = 1 << 12;
    /// `tx-rollback`: the transaction was abandoned.
    pub const TX_ROLLBACK: u32 = 1 << 13;
    /// `protocol-client`: a command line of the client.
    pub const PROTOCOL_CLIENT: u32 = 1 << 14;
    /// `protocol-server`: a reply line.
    pub const PROTOCOL_SERVER: u32 = 1 << 15;
    /// `filter-report`: a filter's own report.
    pub const FILTER_REPORT: u32 = 1 << 16;
    /// `filter-response`: what the filter chain decided about a phase.
    pub const FILTER_RESPONSE: u32 = 1 << 17;
    /// `timeout`: the session timed out.
    pub const TIMEOUT: u32 = 1 << 18;
    /// Every event (`*`).
    pub const ALL: u32 = (1 << 19) - 1;
}

/// The report events by name.
pub const REPORTS: &[(&str, u32)] = &[
    ("link-connect", report::LINK_CONNECT),
    ("link-disconnect", report::LINK_DISCONNECT),
    ("link-greeting", report::LINK_GREETING),
    ("link-identify", report::LINK_IDENTIFY),
    ("link-tls", report::LINK_TLS),
    ("link-auth", report::LINK_AUTH),
    ("tx-reset", report::TX_RESET),
    ("tx-begin", report::TX_BEGIN),
    ("tx-mail", report::TX_MAIL),
    ("tx-rcpt", report::TX_RCPT),
    ("tx-envelope", report::TX_ENVELOPE),
    ("tx-data", report::TX_DATA),
    ("tx-commit", report::TX_COMMIT),
    ("tx-rollback", report::TX_ROLLBACK),
    ("protocol-client", report::PROTOCOL_CLIENT),
    ("protocol-server", report::PROTOCOL_SERVER),
    ("filter-report", report::FILTER_REPORT),
    ("filter-response", report::FILTER_RESPONSE),
    ("timeout", report::TIMEOUT),
];

/// The filter phases of the protocol, in OpenSMTPD's order.
pub const PHASES: &[&str] = &[
    "connect",
    "helo",
    "ehlo",
    "starttls",
    "auth",
    "mail-from",
    "rcpt-to",
    "data",
    "data-line",
    "rset",
    "quit",
    "noop",
    "help",
    "wiz",
    "commit",
];

/// A registration line of the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Register<'a> {
    /// `register|report|SUBSYSTEM|EVENT`: reports of these events (bits of [`report`]);
    /// `smtp_out` for the `smtp-out` subsystem.
    Report {
        /// The subsystem is `smtp-out`.
        smtp_out: bool,
        /// The events.
        events: u32,
    },
    /// `register|filter|smtp-in|PHASE`: the filter decides this phase (one of [`PHASES`]).
    Filter(&'a str),
    /// `register|ready`: the handshake is over.
    Ready,
}

/// What a filter decided, in `filter-result`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// `proceed`.
    Proceed,
    /// `junk`.
    Junk,
    /// `reject|REPLY`.
    Reject(&'a [u8]),
    /// `disconnect|REPLY`.
    Disconnect(&'a [u8]),
    /// `rewrite|VALUE`.
    Rewrite(&'a [u8]),
    /// `report|TEXT`: go on, and report the text.
    Report(&'a [u8]),
}

/// A line a filter sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// A registration (before `register|ready`).
    Register(Register<'a>),
    /// `filter-result|SID|TOKEN|VERDICT`.
    Result {
        /// The session.
        sid: u64,
        /// The token of the question it answers.
        token: u64,
        /// The verdict.
        verdict: Verdict<'a>,
    },
    /// `filter-dataline|SID|TOKEN|LINE`: a line of the message, still dot-stuffed; a
    /// lone `.` ends it.
    DataLine {
        /// The session.
        sid: u64,
        /// The token of the message.
        token: u64,
        /// The line.
        line: &'a [u8],
    },
    /// `report|SECS.USECS|smtp-in|SID|TEXT`: a report of the filter's own.
    Report {
        /// The session.
        sid: u64,
        /// The text.
        text: &'a [u8],
    },
}

/// Why a line is not one of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextError {
    /// Longer than [`MAX_LINE`].
    TooLong,
    /// An unknown kind of line, or an unknown verdict, event or phase.
    Unknown(String),
    /// A field is missing or malformed.
    Malformed(&'static str),
}

impl fmt::Display for TextError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextError::TooLong => write!(f, "a line longer than {MAX_LINE} octets"),
            TextError::Unknown(what) => write!(f, "unknown {what}"),
            TextError::Malformed(what) => write!(f, "malformed {what}"),
        }
    }
}

impl std::error::Error for TextError {}

/// Splits off the field before the next `|`.
fn field<'a>(rest: &mut &'a [u8], what: &'static str) -> Result<&'a [u8], TextError> {
    match memchr::memchr(b'|', rest) {
        Some(i) => {
            let f = &rest[..i];
            *rest = &rest[i + 1..];
            Ok(f)
        }
        None => Err(TextError::Malformed(what)),
    }
}

/// A session id or token: 1 to 16 hexadecimal digits.
fn hex(b: &[u8], what: &'static str) -> Result<u64, TextError> {
    if b.is_empty() || b.len() > 16 || !b.iter().all(u8::is_ascii_hexdigit) {
        return Err(TextError::Malformed(what));
    }
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .ok_or(TextError::Malformed(what))
}

fn unknown(what: &str, b: &[u8]) -> TextError {
    let shown: String = b.escape_ascii().to_string().chars().take(64).collect();
    TextError::Unknown(format!("{what} \"{shown}\""))
}

/// Parses one line a filter sent, without its LF.
pub fn parse(line: &[u8]) -> Result<Line<'_>, TextError> {
    if line.len() > MAX_LINE {
        return Err(TextError::TooLong);
    }
    let mut rest = line;
    let kind = match memchr::memchr(b'|', line) {
        Some(_) => field(&mut rest, "line")?,
        None => return Err(unknown("line", line)),
    };
    match kind {
        b"register" => parse_register(rest).map(Line::Register),
        b"filter-result" => {
            let sid = hex(field(&mut rest, "session id")?, "session id")?;
            let (token, verdict) = match memchr::memchr(b'|', rest) {
                Some(i) => (hex(&rest[..i], "token")?, &rest[i + 1..]),
                None => return Err(TextError::Malformed("token")),
            };
            let (name, param) = match memchr::memchr(b'|', verdict) {
                Some(i) => (&verdict[..i], Some(&verdict[i + 1..])),
                None => (verdict, None),
            };
            let verdict = match (name, param) {
                (b"proceed", None) => Verdict::Proceed,
                (b"junk", None) => Verdict::Junk,
                (b"reject", Some(p)) => Verdict::Reject(p),
                (b"disconnect", Some(p)) => Verdict::Disconnect(p),
                (b"rewrite", Some(p)) => Verdict::Rewrite(p),
                (b"report", Some(p)) => Verdict::Report(p),
                (b"proceed" | b"junk", Some(_)) => {
                    return Err(TextError::Malformed("verdict (a parameter after it)"))
                }
                (b"reject" | b"disconnect" | b"rewrite" | b"report", None) => {
                    return Err(TextError::Malformed("verdict (no parameter)"))
                }
                (other, _) => return Err(unknown("verdict", other)),
            };
            Ok(Line::Result {
                sid,
                token,
                verdict,
            })
        }
        b"filter-dataline" => {
            let sid = hex(field(&mut rest, "session id")?, "session id")?;
            let token = hex(field(&mut rest, "token")?, "token")?;
            Ok(Line::DataLine {
                sid,
                token,
                line: rest,
            })
        }
        b"report" => {
            let stamp = field(&mut rest, "timestamp")?;
            if !valid_stamp(stamp) {
                return Err(TextError::Malformed("timestamp"));
            }
            match field(&mut rest, "subsystem")? {
                b"smtp-in" => {}
                other => return Err(unknown("subsystem", other)),
            }
            let sid = hex(field(&mut rest, "session id")?, "session id")?;
            Ok(Line::Report { sid, text: rest })
        }
        other => Err(unknown("line", other)),
    }
}

/// `SECS.USECS`, six digits after the dot.
fn valid_stamp(b: &[u8]) -> bool {
    match memchr::memchr(b'.', b) {
        Some(i) => {
            let (s, u) = (&b[..i], &b[i + 1..]);
            (1..=20).contains(&s.len())
                && s.iter().all(u8::is_ascii_digit)
                && u.len() == 6
                && u.iter().all(u8::is_ascii_digit)
        }
        None => false,
    }
}

fn parse_register(rest: &[u8]) -> Result<Register<'_>, TextError> {
    if rest == b"ready" {
        return Ok(Register::Ready);
    }
    let mut rest = rest;
    let what = field(&mut rest, "registration")?;
    let sub = field(&mut rest, "subsystem")?;
    let smtp_out = match sub {
        b"smtp-in" => false,
        b"smtp-out" => true,
        other => return Err(unknown("subsystem", other)),
    };
    match what {
        b"report" => {
            let events = match rest {
                b"*" => report::ALL,
                name => REPORTS
                    .iter()
                    .find(|(n, _)| n.as_bytes() == name)
                    .map(|&(_, bit)| bit)
                    .ok_or_else(|| unknown("report event", name))?,
            };
            Ok(Register::Report { smtp_out, events })
        }
        b"filter" if !smtp_out => PHASES
            .iter()
            .find(|n| n.as_bytes() == rest)
            .map(|n| Register::Filter(n))
            .ok_or_else(|| unknown("filter phase", rest)),
        b"filter" => Err(TextError::Malformed(
            "registration (filters are smtp-in only)",
        )),
        other => Err(unknown("registration", other)),
    }
}

/// A moment, as `SECS.USECS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Seconds since the epoch.
    pub secs: u64,
    /// Microseconds.
    pub micros: u32,
}

impl Stamp {
    /// Now.
    pub fn now() -> Stamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Stamp {
            secs: d.as_secs(),
            micros: d.subsec_micros(),
        }
    }
}

/// Appends `b` with every CR and LF made a space: a field can never end the line.
fn push_clean(out: &mut Vec<u8>, b: &[u8]) {
    let start = out.len();
    out.extend_from_slice(b);
    for c in &mut out[start..] {
        if matches!(*c, b'\n' | b'\r') {
            *c = b' ';
        }
    }
}

/// Appends `b` with every `|` also made a space (a field that is not the last).
fn push_inner(out: &mut Vec<u8>, b: &[u8]) {
    let start = out.len();
    push_clean(out, b);
    for c in &mut out[start..] {
        if *c == b'|' {
            *c = b' ';
        }
    }
}

/// The handshake's configuration lines, `config|ready` last.
pub fn config(out: &mut Vec<u8>, smtpd_version: &str, session_timeout: u64, admd: &str) {
    out.extend_from_slice(b"config|smtpd-version|");
    push_clean(out, smtpd_version.as_bytes());
    out.extend_from_slice(b"\nconfig|protocol|");
    out.extend_from_slice(VERSION.as_bytes());
    out.extend_from_slice(format!("\nconfig|smtp-session-timeout|{session_timeout}").as_bytes());
    out.extend_from_slice(b"\nconfig|subsystem|smtp-in\nconfig|admd|");
    push_clean(out, admd.as_bytes());
    out.extend_from_slice(b"\nconfig|ready\n");
}

fn head(out: &mut Vec<u8>, kind: &str, ts: Stamp, event: &str, sid: u64) {
    out.extend_from_slice(
        format!(
            "{kind}|{VERSION}|{}.{:06}|smtp-in|{event}|{sid:016x}",
            ts.secs, ts.micros
        )
        .as_bytes(),
    );
}

/// A question: `filter|0.7|TS|smtp-in|PHASE|SID|TOKEN|PARAM` (`PARAM` may be empty;
/// a `connect` question's is `RDNS|SRC`).
pub fn filter(out: &mut Vec<u8>, ts: Stamp, phase: &str, sid: u64, token: u64, param: &[&[u8]]) {
    head(out, "filter", ts, phase, sid);
    out.extend_from_slice(format!("|{token:016x}").as_bytes());
    if param.is_empty() {
        out.push(b'|');
    }
    for (i, p) in param.iter().enumerate() {
        out.push(b'|');
        if i + 1 < param.len() {
            push_inner(out, p);
        } else {
            push_clean(out, p);
        }
    }
    out.push(b'\n');
}

/// A report: `report|0.7|TS|smtp-in|EVENT|SID[|FIELD...]`.
pub fn report(out: &mut Vec<u8>, ts: Stamp, event: &str, sid: u64, fields: &[&[u8]]) {
    head(out, "report", ts, event, sid);
    for (i, f) in fields.iter().enumerate() {
        out.push(b'|');
        if i + 1 < fields.len() {
            push_inner(out, f);
        } else {
            push_clean(out, f);
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrations() {
        assert_eq!(
            parse(b"register|report|smtp-in|link-connect"),
            Ok(Line::Register(Register::Report {
                smtp_out: false,
                events: report::LINK_CONNECT
            }))
        );
        assert_eq!(
            parse(b"register|report|smtp-out|*"),
            Ok(Line::Register(Register::Report {
                smtp_out: true,
                events: report::ALL
            }))
        );
        assert_eq!(
            parse(b"register|filter|smtp-in|data-line"),
            Ok(Line::Register(Register::Filter("data-line")))
        );
        assert_eq!(
            parse(b"register|ready"),
            Ok(Line::Register(Register::Ready))
        );
        for bad in [
            &b"register|filter|smtp-out|connect"[..],
            b"register|filter|smtp-in|Connect",
            b"register|report|smtp-in|link-foo",
            b"register|report|smtp-on|*",
            b"register|report",
            b"register|ready|now",
            b"register",
            b"",
            b"|",
        ] {
            assert!(parse(bad).is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn results() {
        let r = |v| {
            Ok(Line::Result {
                sid: 0x1234,
                token: 0xabcdef,
                verdict: v,
            })
        };
        assert_eq!(
            parse(b"filter-result|0000000000001234|0000000000abcdef|proceed"),
            r(Verdict::Proceed)
        );
        assert_eq!(parse(b"filter-result|1234|abcdef|junk"), r(Verdict::Junk));
        assert_eq!(
            parse(b"filter-result|1234|abcdef|reject|550 5.7.1 no|thanks"),
            r(Verdict::Reject(b"550 5.7.1 no|thanks"))
        );
        assert_eq!(
            parse(b"filter-result|1234|ABCDEF|disconnect|421 bye"),
            r(Verdict::Disconnect(b"421 bye"))
        );
        assert_eq!(
            parse(b"filter-result|1234|abcdef|rewrite|<a@b>"),
            r(Verdict::Rewrite(b"<a@b>"))
        );
        assert_eq!(
            parse(b"filter-result|1234|abcdef|report|seen"),
            r(Verdict::Report(b"seen"))
        );
        for bad in [
            &b"filter-result|1234|abcdef|proceed|x"[..],
            b"filter-result|1234|abcdef|reject",
            b"filter-result|1234|abcdef|accept",
            b"filter-result|1234|abcdef",
            b"filter-result|1234",
            b"filter-result|12345678901234567|abcdef|proceed",
            b"filter-result||abcdef|proceed",
            b"filter-result|xyz|abcdef|proceed",
            b"filter-result|-1|abcdef|proceed",
            b"filter-result|+1|abcdef|proceed",
            b"filter-results|1|2|proceed",
        ] {
            assert!(parse(bad).is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn data_lines_and_reports() {
        assert_eq!(
            parse(b"filter-dataline|1|2|..a|b"),
            Ok(Line::DataLine {
                sid: 1,
                token: 2,
                line: b"..a|b"
            })
        );
        assert_eq!(
            parse(b"filter-dataline|1|2|"),
            Ok(Line::DataLine {
                sid: 1,
                token: 2,
                line: b""
            })
        );
        assert!(parse(b"filter-dataline|1|2").is_err());
        assert_eq!(
            parse(b"report|1700000000.123456|smtp-in|00000000000000ff|spam score 7"),
            Ok(Line::Report {
                sid: 0xff,
                text: b"spam score 7"
            })
        );
        assert!(parse(b"report|1700000000.12345|smtp-in|ff|x").is_err());
        assert!(parse(b"report|1700000000|smtp-in|ff|x").is_err());
        assert!(parse(b"report|1.123456|smtp-out|ff|x").is_err());
        let long = [b'a'; MAX_LINE + 1];
        assert_eq!(parse(&long), Err(TextError::TooLong));
    }

    #[test]
    fn formats() {
        let ts = Stamp {
            secs: 1700000000,
            micros: 42,
        };
        let mut out = Vec::new();
        config(&mut out, "1.0", 300, "mx.example.org");
        assert_eq!(
            out,
            b"config|smtpd-version|1.0\nconfig|protocol|0.7\nconfig|smtp-session-timeout|300\n\
config|subsystem|smtp-in\nconfig|admd|mx.example.org\nconfig|ready\n"
        );
        out.clear();
        filter(&mut out, ts, "connect", 1, 2, &[b"host|x", b"192.0.2.1"]);
        filter(&mut out, ts, "data", 1, 2, &[]);
        filter(&mut out, ts, "data-line", 1, 2, &[b"a|b\r\nc"]);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "filter|0.7|1700000000.000042|smtp-in|connect|0000000000000001|0000000000000002|host x|192.0.2.1\n\
filter|0.7|1700000000.000042|smtp-in|data|0000000000000001|0000000000000002|\n\
filter|0.7|1700000000.000042|smtp-in|data-line|0000000000000001|0000000000000002|a|b  c\n"
        );
        out.clear();
        report(&mut out, ts, "link-disconnect", 0xab, &[]);
        report(
            &mut out,
            ts,
            "tx-mail",
            0xab,
            &[b"0000beef", b"ok", b"<a|b@c>"],
        );
        assert_eq!(
            String::from_utf8_lossy(&out),
            "report|0.7|1700000000.000042|smtp-in|link-disconnect|00000000000000ab\n\
report|0.7|1700000000.000042|smtp-in|tx-mail|00000000000000ab|0000beef|ok|<a|b@c>\n"
        );
    }
}
