//! A delivery status notification (`queue::bounce`) built from arbitrary parts: the
//! recipient's error line, ORCPT and addresses, the envelope's DSN values and the
//! original message. Whatever they hold, rendering must not panic, and the notice
//! must keep the promises of the module: LF line ends, every generated line within
//! the 998-octet limit, the MIME boundary absent from the returned content, and the
//! status code well formed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::queue::bounce::{self, Dsn, DsnKind, RcptReport};
use smtpd::queue::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    // Fields are separated by NUL; the last one is the original message.
    let mut parts = data.splitn(8, |&b| b == 0);
    let mut field = || String::from_utf8_lossy(parts.next().unwrap_or(b"")).into_owned();
    let (selector, errorline, orcpt, rcpt, to, envid, boundary) = (
        field(),
        field(),
        field(),
        field(),
        field(),
        field(),
        field(),
    );
    let original = parts.next().unwrap_or(b"");
    let kind = match selector.bytes().next().unwrap_or(0) % 4 {
        0 => DsnKind::Failed,
        1 => DsnKind::Delayed,
        2 => DsnKind::Delivered,
        _ => DsnKind::Relayed,
    };
    let ret_full = bounce::return_full(kind, selector.get(1..).unwrap_or(""));

    let status = bounce::status_of(&errorline, true);
    let fields: Vec<&str> = status.split('.').collect();
    assert!(
        fields.len() == 3
            && fields
                .iter()
                .all(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit())),
        "malformed status {status:?} from {errorline:?}"
    );

    let env = Envelope {
        rcpt,
        dsn_orcpt: orcpt,
        errorline,
        ..Envelope::default()
    };
    let report = RcptReport::from_envelope(&env, kind, "Mon, 7 Dec 2026 10:00:00 +0000", Some("x"));
    let rcpts = [report];
    let dsn = Dsn {
        kind,
        reporting_mta: "mx.example.org",
        from_host: "example.org",
        to: &to,
        date: "Mon, 7 Dec 2026 10:00:00 +0000",
        message_id: "notice.1@example.org",
        boundary: &boundary,
        envid: &envid,
        arrival_date: "",
        ret_full,
        rcpts: &rcpts,
    };
    let max_body = 4096;
    let Ok(out) = bounce::render(&dsn, &mut &original[..], max_body) else {
        return;
    };
    // Four lines start with the boundary: three parts opened, one close; no line of
    // the returned content does (RFC 2046 section 5.1.1).
    let text = String::from_utf8_lossy(&out);
    // The boundary, from the Content-Type field of the unfolded header section.
    let head = text.split("\n\n").next().unwrap_or("");
    let unfolded = head.replace("\n ", " ").replace("\n\t", "\t");
    let b = unfolded
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: multipart/report;"))
        .and_then(|v| v.split_once("boundary=\"").map(|(_, rest)| rest))
        .and_then(|v| v.split('"').next())
        .map(str::to_string);
    let Some(b) = b else {
        panic!("no multipart/report Content-Type field in:\n{head}");
    };
    let marker = format!("--{b}");
    let starts = text.lines().filter(|l| l.starts_with(&marker)).count();
    assert_eq!(
        starts, 4,
        "a line of the content starts with the boundary {b:?}"
    );
    // Everything up to the third part's content is generated: LF line ends and
    // lines within 998 octets.
    let at_line = format!("\n{marker}");
    let third = text.match_indices(&at_line).nth(2).map_or(0, |(i, _)| i);
    let generated = &out[..third];
    assert!(!generated.contains(&b'\r'), "a CR in a generated line");
    for line in generated.split(|&c| c == b'\n') {
        assert!(line.len() <= 998, "generated line of {} octets", line.len());
    }
});
