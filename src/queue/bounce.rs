//! Delivery status notifications (RFC 3464), also known as bounces.
//!
//! [`render`] builds a complete `multipart/report` message (RFC 6522) from facts the
//! caller gathered: what happened to each recipient, the dates to print and the ids to
//! use. Nothing here reads a clock or touches the spool; the only input read is the
//! original message, from any [`BufRead`].
//!
//! The report has three parts:
//!
//! 1. a `text/plain` explanation for humans;
//! 2. a `message/delivery-status` part for programs: a per-message block, then one
//!    block per recipient;
//! 3. the original message as `message/rfc822`, or only its header section as
//!    `text/rfc822-headers` when the sender asked for headers (`RET=HDRS`) or the
//!    message is larger than the caller's limit.
//!
//! Everything taken from the envelope comes from a remote client, so no value may end
//! a header line: control characters become spaces in header fields, and in the
//! delivery-status part (which must stay 7-bit) anything outside printable ASCII is
//! written as a `+XX` escape (addresses) or a `?` (free text). Output lines end with a
//! bare LF, like the spool.

use std::io::{self, BufRead, Read};

use super::envelope::Envelope;

/// Longest value, in bytes, that a generated field or text line may carry. Longer
/// values are cut, which keeps every generated line far below the 998-octet limit.
const MAX_VALUE: usize = 900;

/// Generated header lines are folded at spaces to stay within this width when possible.
const FOLD_WIDTH: usize = 78;

/// What a notification reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// Delivery failed for good; the message is given up on.
    Failed,
    /// Delivery has not succeeded yet and is still being retried.
    Delayed,
    /// Delivery succeeded (a NOTIFY=SUCCESS report).
    Delivered,
    /// Handed to a server that does not do DSN (a NOTIFY=SUCCESS report, RFC 3461
    /// §6.2.3): no further report is to be expected.
    Relayed,
}

impl DsnKind {
    /// The value of the `Action:` field for this kind.
    pub fn action(self) -> &'static str {
        match self {
            DsnKind::Failed => "failed",
            DsnKind::Delayed => "delayed",
            DsnKind::Delivered => "delivered",
            DsnKind::Relayed => "relayed",
        }
    }

    /// The `Subject:` of a notification of this kind.
    pub fn subject(self) -> &'static str {
        match self {
            DsnKind::Failed => "Undelivered Mail Returned to Sender",
            DsnKind::Delayed => "Delayed Mail (still being retried)",
            DsnKind::Delivered => "Successful Mail Delivery Report",
            DsnKind::Relayed => "Relayed Mail Report",
        }
    }

    /// The status used when a recipient's own status is missing or malformed.
    fn default_status(self) -> &'static str {
        match self {
            DsnKind::Failed => "5.0.0",
            DsnKind::Delayed => "4.0.0",
            DsnKind::Delivered | DsnKind::Relayed => "2.0.0",
        }
    }
}

/// What to report about one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RcptReport {
    /// The recipient as given in RCPT TO.
    pub rcpt: String,
    /// The DSN ORCPT parameter as received (`type;xtext`), or empty. It is printed
    /// with its xtext decoded, as RFC 3461 section 6.3 asks.
    pub orcpt: String,
    /// Enhanced status code (RFC 3463), e.g. `5.1.1`; see [`status_of`].
    pub status: String,
    /// `type; text`, e.g. `smtp; 550 5.1.1 mailbox unknown`, or empty; see
    /// [`diagnostic_of`]. A value without a type gets one.
    pub diagnostic: String,
    /// Date of the last delivery attempt (RFC 5322 format), or empty.
    pub last_attempt: String,
    /// For delayed reports: the date after which retries stop (RFC 5322 format).
    pub will_retry_until: Option<String>,
    /// The server that took the message (a host name), for `Remote-MTA`, or empty.
    pub remote_mta: String,
}

impl RcptReport {
    /// Builds the report for one envelope from its recipient, ORCPT and last error.
    ///
    /// `will_retry_until` is kept only for [`DsnKind::Delayed`].
    pub fn from_envelope(
        env: &Envelope,
        kind: DsnKind,
        last_attempt: &str,
        will_retry_until: Option<&str>,
    ) -> RcptReport {
        let status = match kind {
            DsnKind::Failed => status_of(&env.errorline, true),
            DsnKind::Delayed => status_of(&env.errorline, false),
            DsnKind::Delivered | DsnKind::Relayed => {
                let s = status_of(&env.errorline, false);
                if s.starts_with('2') {
                    s
                } else {
                    "2.0.0".to_string()
                }
            }
        };
        RcptReport {
            rcpt: env.rcpt.clone(),
            orcpt: env.dsn_orcpt.clone(),
            status,
            diagnostic: diagnostic_of(&env.errorline),
            last_attempt: last_attempt.to_string(),
            will_retry_until: match kind {
                DsnKind::Delayed => will_retry_until.map(str::to_string),
                _ => None,
            },
            remote_mta: String::new(),
        }
    }
}

/// Everything needed to write one notification.
#[derive(Debug, Clone)]
pub struct Dsn<'a> {
    /// What is being reported.
    pub kind: DsnKind,
    /// Our host name, for `Reporting-MTA: dns; ...`.
    pub reporting_mta: &'a str,
    /// Domain of the `From: MAILER-DAEMON@...` address.
    pub from_host: &'a str,
    /// The original envelope sender, who receives the report. Must not be empty:
    /// nothing is ever reported to the null sender.
    pub to: &'a str,
    /// The `Date:` of the report (RFC 5322 format).
    pub date: &'a str,
    /// The `Message-ID:` of the report, without angle brackets.
    pub message_id: &'a str,
    /// The MIME boundary to use. It is adjusted if it is unusable or if it occurs in
    /// the content.
    pub boundary: &'a str,
    /// The DSN ENVID parameter as received (xtext), or empty.
    pub envid: &'a str,
    /// When the original message arrived (RFC 5322 format), or empty.
    pub arrival_date: &'a str,
    /// Return the whole message rather than its header section; see [`return_full`].
    pub ret_full: bool,
    /// The recipients reported on; at least one.
    pub rcpts: &'a [RcptReport],
}

/// Whether a notification of `kind` should carry the whole original message, given
/// the envelope's DSN RET value (`FULL`, `HDRS` or empty).
///
/// Only failures return the content, and only when the sender did not ask for headers.
/// Delay and success reports carry the headers alone.
pub fn return_full(kind: DsnKind, dsn_ret: &str) -> bool {
    kind == DsnKind::Failed && !dsn_ret.eq_ignore_ascii_case("HDRS")
}

/// The enhanced status code (RFC 3463) for an error line.
///
/// `550 5.1.1 mailbox unknown` gives `5.1.1`, as does `550-5.1.1 ...` or
/// `5.1.1 ...`. When the reply code and the enhanced code disagree on the class,
/// the reply code wins (`550 4.2.2` gives `5.2.2`). A reply code without an enhanced
/// code gives `X.0.0` for its class. A line with no code at all (a local error text)
/// gives `5.0.0` when `permanent`, else `4.0.0`.
pub fn status_of(errorline: &str, permanent: bool) -> String {
    let line = errorline.trim_start();
    let (basic, rest) = match reply_code(line) {
        Some(class) => (Some(class), line[3..].trim_start_matches([' ', '\t', '-'])),
        None => (None, line),
    };
    let token = rest.split_ascii_whitespace().next().unwrap_or("");
    if let Some((class, subject, detail)) = parse_enhanced(token) {
        let class = basic.unwrap_or(class);
        return format!("{}.{subject}.{detail}", class as char);
    }
    match basic {
        Some(class) => format!("{}.0.0", class as char),
        None if permanent => "5.0.0".to_string(),
        None => "4.0.0".to_string(),
    }
}

/// The `Diagnostic-Code` value for an error line: `smtp; ...` for an SMTP reply,
/// `x-unix; ...` for anything else (a local error), empty for an empty line.
pub fn diagnostic_of(errorline: &str) -> String {
    let line = errorline.trim();
    if line.is_empty() {
        String::new()
    } else if reply_code(line).is_some() {
        format!("smtp; {line}")
    } else {
        format!("x-unix; {line}")
    }
}

/// Renders the notification described by `dsn` as a complete message with LF line
/// ends.
///
/// `original` is the spooled message (LF line ends, dot-unstuffed). It is returned in
/// full when `dsn.ret_full` is set and it is at most `max_body` bytes long; otherwise
/// only its header section (up to the first empty line) is returned. When any part
/// holds 8-bit data the result says `Content-Transfer-Encoding: 8bit`; the caller can
/// check `is_ascii()` on the result to choose BODY=8BITMIME.
///
/// Fails with `InvalidInput` when `dsn.to` is empty or `dsn.rcpts` is, and with the
/// reader's error when reading fails.
pub fn render(dsn: &Dsn, original: &mut dyn BufRead, max_body: usize) -> io::Result<Vec<u8>> {
    if dsn.to.trim().is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no delivery report is sent to the null sender",
        ));
    }
    if dsn.rcpts.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a delivery report needs at least one recipient",
        ));
    }
    let (returned, full) = read_original(original, dsn.ret_full, max_body)?;
    let returned_mode = match (full, dsn.ret_full) {
        (true, _) => Returned::Full,
        (false, true) => Returned::HeadersTooLarge,
        (false, false) => Returned::Headers,
    };

    let text = human_text(dsn, returned_mode);
    let status = delivery_status(dsn);

    let mut third_head = String::new();
    if full {
        push_field(&mut third_head, "Content-Type", "message/rfc822");
        push_field(&mut third_head, "Content-Description", "Original message");
    } else {
        push_field(&mut third_head, "Content-Type", "text/rfc822-headers");
        push_field(
            &mut third_head,
            "Content-Description",
            "Original message headers",
        );
    }
    if !returned.is_ascii() {
        push_field(&mut third_head, "Content-Transfer-Encoding", "8bit");
    }

    let boundary = pick_boundary(
        dsn.boundary,
        &[text.as_bytes(), status.as_bytes(), &returned],
    );

    let mut head = String::new();
    let from = format!(
        "Mail Delivery System <MAILER-DAEMON@{}>",
        clean_host(dsn.from_host)
    );
    push_field(&mut head, "From", &from);
    push_field(&mut head, "To", &format!("<{}>", clean_text(dsn.to.trim())));
    push_field(&mut head, "Subject", dsn.kind.subject());
    push_field(&mut head, "Date", &clean_text(dsn.date));
    push_field(
        &mut head,
        "Message-ID",
        &format!("<{}>", clean_msgid(dsn.message_id)),
    );
    push_field(&mut head, "Auto-Submitted", "auto-replied");
    push_field(&mut head, "MIME-Version", "1.0");
    push_field(
        &mut head,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    let eight_bit = !text.is_ascii() || !returned.is_ascii();
    if eight_bit {
        push_field(&mut head, "Content-Transfer-Encoding", "8bit");
    }
    head.push('\n');
    head.push_str("This is a MIME-formatted delivery status notification.\n");

    let mut out = Vec::with_capacity(head.len() + text.len() + status.len() + returned.len() + 512);
    out.extend_from_slice(head.as_bytes());

    // Part 1: for humans.
    open_part(&mut out, &boundary);
    let mut part = String::new();
    let charset = if text.is_ascii() { "us-ascii" } else { "utf-8" };
    push_field(
        &mut part,
        "Content-Type",
        &format!("text/plain; charset={charset}"),
    );
    push_field(&mut part, "Content-Description", "Notification");
    if !text.is_ascii() {
        push_field(&mut part, "Content-Transfer-Encoding", "8bit");
    }
    part.push('\n');
    part.push_str(&text);
    out.extend_from_slice(part.as_bytes());

    // Part 2: for programs.
    open_part(&mut out, &boundary);
    let mut part = String::new();
    push_field(&mut part, "Content-Type", "message/delivery-status");
    push_field(&mut part, "Content-Description", "Delivery report");
    part.push('\n');
    part.push_str(&status);
    out.extend_from_slice(part.as_bytes());

    // Part 3: what was sent.
    open_part(&mut out, &boundary);
    out.extend_from_slice(third_head.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&returned);
    if returned.last().is_some_and(|&b| b != b'\n') {
        out.push(b'\n');
    }

    // The line end before a delimiter belongs to the delimiter, hence the extra one.
    out.extend_from_slice(format!("\n--{boundary}--\n").as_bytes());
    Ok(out)
}

/// How much of the original is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returned {
    /// The whole message.
    Full,
    /// The header section, because the sender asked for no more.
    Headers,
    /// The header section, because the message was too large to return.
    HeadersTooLarge,
}

/// Reads what is to be returned of the original; the flag says whether it is all of it.
fn read_original(
    rd: &mut dyn BufRead,
    want_full: bool,
    max_body: usize,
) -> io::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    if want_full {
        let limit = u64::try_from(max_body)
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        Read::take(&mut *rd, limit).read_to_end(&mut buf)?;
        if buf.len() <= max_body {
            return Ok((buf, true));
        }
    }
    // Cut at the first empty line, reading more if it has not been seen yet.
    let mut from = 0;
    loop {
        if let Some(end) = header_end(&buf, from) {
            buf.truncate(end);
            break;
        }
        from = buf.len().saturating_sub(1);
        if rd.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
    }
    Ok((buf, false))
}

/// Length of the header section in `buf` (last header line end included, empty line
/// excluded), searching for the empty line from `from` on.
fn header_end(buf: &[u8], from: usize) -> Option<usize> {
    if buf.first() == Some(&b'\n') {
        return Some(0);
    }
    memchr::memmem::find(buf.get(from..)?, b"\n\n").map(|p| from + p + 1)
}

/// The explanation for humans.
fn human_text(dsn: &Dsn, returned: Returned) -> String {
    let mut t = String::new();
    t.push_str("This report was generated by the mail system at ");
    t.push_str(&clean_host(dsn.reporting_mta));
    t.push_str(".\n\n");
    let intro = match dsn.kind {
        DsnKind::Failed => {
            "Your message could not be delivered to the recipients listed below.\n\
             The mail system has given up and will make no further attempts.\n"
        }
        DsnKind::Delayed => {
            "Your message has not reached the recipients listed below yet.\n\
             Delivery is still being retried, so there is no need to send it again.\n\
             You will get another report if the mail system finally gives up.\n"
        }
        DsnKind::Delivered => {
            "Your message was delivered to the recipients listed below, as you\n\
             asked to be told.\n"
        }
        DsnKind::Relayed => {
            "Your message was handed over for the recipients listed below, as you\n\
             asked to be told of its delivery. The server that took it does not\n\
             send delivery reports, so this is the last report you will get about\n\
             it unless it fails further on.\n"
        }
    };
    t.push_str(intro);
    for r in dsn.rcpts {
        t.push('\n');
        t.push_str("  <");
        t.push_str(&clean_text(&r.rcpt));
        t.push_str(">\n");
        let diag = clean_text(strip_diag_type(r.diagnostic.trim()));
        let status = status_or_default(&r.status, dsn.kind);
        if diag.is_empty() {
            t.push_str(&format!("      status {status}\n"));
        } else {
            t.push_str(&format!("      status {status}: {diag}\n"));
        }
        if !r.remote_mta.is_empty() {
            let host = clean_host(&r.remote_mta);
            t.push_str(&format!("      handed to {host}\n"));
        }
        if dsn.kind == DsnKind::Delayed {
            if let Some(until) = r
                .will_retry_until
                .as_deref()
                .filter(|s| !s.trim().is_empty())
            {
                t.push_str(&format!(
                    "      retries continue until {}\n",
                    clean_text(until)
                ));
            }
        }
    }
    t.push('\n');
    t.push_str(match returned {
        Returned::Full => "A machine-readable report follows, then a copy of your message.\n",
        Returned::Headers => {
            "A machine-readable report follows, then the headers of your message.\n"
        }
        Returned::HeadersTooLarge => {
            "A machine-readable report follows, then the headers of your message;\n\
             the message itself was too large to be sent back in full.\n"
        }
    });
    t
}

/// The body of the `message/delivery-status` part.
fn delivery_status(dsn: &Dsn) -> String {
    let mut s = String::new();
    push_field(
        &mut s,
        "Reporting-MTA",
        &format!("dns; {}", clean_host(dsn.reporting_mta)),
    );
    if !dsn.envid.is_empty() {
        push_field(
            &mut s,
            "Original-Envelope-Id",
            &ds_escape(&xtext_decode(dsn.envid)),
        );
    }
    if !dsn.arrival_date.trim().is_empty() {
        push_field(&mut s, "Arrival-Date", &ds_text(dsn.arrival_date));
    }
    for r in dsn.rcpts {
        s.push('\n');
        if !r.orcpt.is_empty() {
            let (kind, value) = match r.orcpt.split_once(';') {
                Some((k, v)) if is_type_name(k.trim()) => (k.trim(), v),
                _ => ("rfc822", r.orcpt.as_str()),
            };
            push_field(
                &mut s,
                "Original-Recipient",
                &format!("{kind};{}", ds_escape(&xtext_decode(value.trim()))),
            );
        }
        push_field(
            &mut s,
            "Final-Recipient",
            &format!("rfc822; {}", ds_escape(r.rcpt.as_bytes())),
        );
        push_field(&mut s, "Action", dsn.kind.action());
        push_field(&mut s, "Status", &status_or_default(&r.status, dsn.kind));
        if !r.remote_mta.is_empty() {
            let host = clean_host(&r.remote_mta);
            push_field(&mut s, "Remote-MTA", &format!("dns; {host}"));
        }
        let diag = r.diagnostic.trim();
        if !diag.is_empty() {
            let diag = if has_diag_type(diag) {
                diag.to_string()
            } else {
                diagnostic_of(diag)
            };
            push_field(&mut s, "Diagnostic-Code", &ds_text(&diag));
        }
        if !r.last_attempt.trim().is_empty() {
            push_field(&mut s, "Last-Attempt-Date", &ds_text(&r.last_attempt));
        }
        if dsn.kind == DsnKind::Delayed {
            if let Some(until) = r
                .will_retry_until
                .as_deref()
                .filter(|s| !s.trim().is_empty())
            {
                push_field(&mut s, "Will-Retry-Until", &ds_text(until));
            }
        }
    }
    s
}

/// Starts a body part: the delimiter line, preceded by the line end it owns.
fn open_part(out: &mut Vec<u8>, boundary: &str) {
    out.extend_from_slice(format!("\n--{boundary}\n").as_bytes());
}

/// A boundary derived from `wanted` that starts no line of any part.
fn pick_boundary(wanted: &str, parts: &[&[u8]]) -> String {
    // RFC 2046 boundary characters, without the space, and room for a suffix.
    let mut base: String = wanted
        .chars()
        .filter(|&c| c.is_ascii_alphanumeric() || "'()+_,-./:=?".contains(c))
        .take(60)
        .collect();
    if base.is_empty() {
        base.push_str("dsn-report-boundary");
    }
    let mut candidate = base.clone();
    let mut n: u64 = 0;
    while parts.iter().any(|p| starts_a_line(p, &candidate)) {
        n += 1;
        candidate = format!("{base}={n}");
    }
    candidate
}

/// Whether some line of `data` starts with `--boundary`.
fn starts_a_line(data: &[u8], boundary: &str) -> bool {
    let delim = format!("--{boundary}");
    data.starts_with(delim.as_bytes())
        || memchr::memmem::find(data, format!("\n{delim}").as_bytes()).is_some()
}

/// Appends `name: value` and a line end, folding at spaces when the line gets long.
/// `value` must hold no control characters.
fn push_field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push(':');
    let mut col = name.len() + 1;
    let mut first = true;
    for word in value.split(' ') {
        if first {
            first = false;
            out.push(' ');
            col += 1;
        } else if !word.is_empty() && col + 1 + word.len() > FOLD_WIDTH && col > name.len() + 2 {
            out.push_str("\n ");
            col = 1;
        } else {
            out.push(' ');
            col += 1;
        }
        out.push_str(word);
        col += word.len();
    }
    out.push('\n');
}

/// Cuts `s` to at most [`MAX_VALUE`] bytes, on a character boundary.
fn cap(s: &str) -> &str {
    if s.len() <= MAX_VALUE {
        return s;
    }
    let mut end = MAX_VALUE;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Header-safe text: control characters and line separators become spaces, the
/// ends are trimmed and the length is capped. UTF-8 is kept (RFC 6532).
fn clean_text(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| {
            if c.is_control() || c == '\u{2028}' || c == '\u{2029}' {
                ' '
            } else {
                c
            }
        })
        .collect();
    cap(cleaned.trim()).to_string()
}

/// A host name for generated fields: only characters a host name or address literal
/// may hold.
fn clean_host(s: &str) -> String {
    let h: String = s
        .chars()
        .filter(|&c| c.is_ascii_alphanumeric() || ".-_:[]".contains(c))
        .collect();
    if h.is_empty() {
        "localhost".to_string()
    } else {
        cap(&h).to_string()
    }
}

/// A message id without brackets, spaces or controls.
fn clean_msgid(s: &str) -> String {
    let id: String = s
        .chars()
        .filter(|&c| c.is_ascii_graphic() && c != '<' && c != '>')
        .collect();
    cap(&id).to_string()
}

/// Free text for the delivery-status part: 7-bit, no controls.
fn ds_text(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| match c {
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        })
        .collect();
    cap(t.trim()).to_string()
}

/// An address or id for the delivery-status part: bytes outside printable ASCII
/// (space included) are written `+XX`.
fn ds_escape(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len());
    for &c in b {
        if (b' '..=b'~').contains(&c) {
            s.push(c as char);
        } else {
            s.push_str(&format!("+{c:02X}"));
        }
    }
    cap(s.trim()).to_string()
}

/// Decodes xtext (RFC 3461 section 4); a `+` not followed by two hex digits is kept.
fn xtext_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// A 2xx-5xx reply code at the start of `line`, followed by a space, a dash or the
/// end: returns its class digit.
fn reply_code(line: &str) -> Option<u8> {
    let b = line.as_bytes();
    let ok = b.len() >= 3
        && matches!(b[0], b'2'..=b'5')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && b.get(3).is_none_or(|c| matches!(c, b' ' | b'\t' | b'-'));
    if ok {
        b.first().copied()
    } else {
        None
    }
}

/// Parses `class.subject.detail`, returning the class digit and the two numbers.
fn parse_enhanced(token: &str) -> Option<(u8, u16, u16)> {
    let mut it = token.split('.');
    let class = it.next()?;
    let subject = it.next()?;
    let detail = it.next()?;
    if it.next().is_some() {
        return None;
    }
    let class = match class.as_bytes() {
        [c @ (b'2' | b'4' | b'5')] => *c,
        _ => return None,
    };
    let num = |s: &str| {
        if (1..=3).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse::<u16>().ok()
        } else {
            None
        }
    };
    Some((class, num(subject)?, num(detail)?))
}

/// `status` if it is a well-formed enhanced code, else the default for `kind`.
fn status_or_default(status: &str, kind: DsnKind) -> String {
    match parse_enhanced(status.trim()) {
        Some((class, subject, detail)) => format!("{}.{subject}.{detail}", class as char),
        None => kind.default_status().to_string(),
    }
}

/// Whether `s` is an address or diagnostic type name (`rfc822`, `smtp`, `x-unix`).
fn is_type_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

/// Whether a diagnostic already starts with `type;`.
fn has_diag_type(diag: &str) -> bool {
    diag.split_once(';')
        .is_some_and(|(t, _)| is_type_name(t.trim()))
}

/// The text of a diagnostic without its `type;` prefix.
fn strip_diag_type(diag: &str) -> &str {
    match diag.split_once(';') {
        Some((t, rest)) if is_type_name(t.trim()) => rest.trim_start(),
        _ => diag,
    }
}

#[cfg(test)]
#[path = "bounce_tests.rs"]
mod tests;
