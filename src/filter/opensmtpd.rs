//! OpenSMTPD's filters in the chain's vocabulary: the questions the chain asks (binary
//! frames) and the reports observers get ([`Report`]) as lines of its protocol
//! ([`super::text`]), and its verdicts as [`Decision`]s. Pure: the pipe
//! (`filter/pipe_text.rs`) keeps the tokens and does the I/O.

use super::answer::Decision;
use super::report::{AuthResult, Report, TextReport};
use super::text::{self, report as ev, Stamp, Verdict};
use smtpd_filter::codec::{event, Frame};

/// The phase of OpenSMTPD's protocol that asks `frame`, if it is a question.
pub fn phase_of(frame: &Frame) -> Option<&'static str> {
    Some(match frame {
        Frame::Connect { .. } => "connect",
        Frame::Helo(_) => "helo",
        Frame::Ehlo(_) => "ehlo",
        Frame::Auth { .. } => "auth",
        Frame::Mail(_) => "mail-from",
        Frame::Rcpt(_) => "rcpt-to",
        Frame::Data => "data",
        Frame::Eom(_) => "commit",
        _ => return None,
    })
}

/// The events of the binary protocol a phase registration stands for: the phases the
/// daemon asks (`data-line` is the message's lines); 0 for those it never asks
/// (`starttls`, `rset`, `quit`, `noop`, `help`, `wiz`).
pub fn phase_event(phase: &str) -> u32 {
    match phase {
        "connect" => event::CONNECT,
        "helo" => event::HELO,
        "ehlo" => event::EHLO,
        "auth" => event::AUTH,
        "mail-from" => event::MAIL,
        "rcpt-to" => event::RCPT,
        "data" => event::DATA,
        "data-line" => event::DATA_LINES,
        "commit" => event::EOM,
        _ => 0,
    }
}

/// The client's address as OpenSMTPD's `connect` question gives it: `ADDR`, `[V6]` or
/// `local`, from `ADDR:PORT` or `[V6]:PORT`.
fn address_only(a: &str) -> &str {
    match a.parse::<std::net::SocketAddr>() {
        Ok(_) => a.rsplit_once(':').map_or(a, |(ip, _)| ip),
        Err(_) => a,
    }
}

/// Writes the question `frame` asks, with its token; `false` when it is none.
pub fn question(out: &mut Vec<u8>, ts: Stamp, sid: u64, token: u64, frame: &Frame) -> bool {
    let Some(phase) = phase_of(frame) else {
        return false;
    };
    match frame {
        Frame::Connect {
            remote, hostname, ..
        } => {
            let remote = String::from_utf8_lossy(remote);
            let rdns: &[u8] = if hostname.is_empty() {
                b"<unknown>"
            } else {
                hostname
            };
            let src = address_only(&remote).as_bytes();
            text::filter(out, ts, phase, sid, token, &[rdns, src]);
        }
        Frame::Helo(p) | Frame::Ehlo(p) | Frame::Mail(p) | Frame::Rcpt(p) => {
            text::filter(out, ts, phase, sid, token, &[p]);
        }
        // The mechanism only: OpenSMTPD would pass the rest of the AUTH line, which may
        // hold credentials; they never reach a filter here.
        Frame::Auth { mechanism, .. } => text::filter(out, ts, phase, sid, token, &[mechanism]),
        _ => text::filter(out, ts, phase, sid, token, &[]),
    }
    true
}

/// Writes a message line for a data filter, dot-stuffed as on the wire; `None` for the
/// end (a lone dot).
pub fn data_line(out: &mut Vec<u8>, ts: Stamp, sid: u64, token: u64, line: Option<&[u8]>) {
    match line {
        Some(l) if l.first() == Some(&b'.') => {
            let mut stuffed = Vec::with_capacity(l.len() + 1);
            stuffed.push(b'.');
            stuffed.extend_from_slice(l);
            text::filter(out, ts, "data-line", sid, token, &[&stuffed]);
        }
        Some(l) => text::filter(out, ts, "data-line", sid, token, &[l]),
        None => text::filter(out, ts, "data-line", sid, token, &[b"."]),
    }
}

/// A line a data filter returned: `None` for the end (a lone dot), else the line
/// with its dot-stuffing undone.
pub fn returned_line(line: &[u8]) -> Option<&[u8]> {
    match line {
        b"." => None,
        [b'.', rest @ ..] if rest.first() == Some(&b'.') => Some(rest),
        l => Some(l),
    }
}

/// A reply a filter gave (`CODE TEXT`): its code and text. A code out of 400..=599,
/// or a reply that is not `CODE TEXT`, comes back as code 0, which the chain refuses
/// (the session gets a 421).
fn reply(r: &[u8]) -> (u16, String) {
    let s = String::from_utf8_lossy(r);
    let code = s
        .get(..3)
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (400..=599).contains(c));
    match (code, s.get(3..4)) {
        (Some(code), Some(" ")) => (code, s[4..].to_string()),
        (Some(code), None) => (code, String::new()),
        _ => (0, s.into_owned()),
    }
}

/// The decision a verdict stands for in `phase`, or why it breaks the protocol. A
/// `report` verdict goes on; its text is for the log. A 421 closes the session, as
/// OpenSMTPD does.
pub fn decision(v: &Verdict, phase: &str) -> Result<Decision, String> {
    Ok(match v {
        Verdict::Proceed | Verdict::Report(_) => Decision::Proceed,
        Verdict::Junk if phase == "commit" => return Err("junk at the commit phase".into()),
        Verdict::Junk => Decision::Junk,
        Verdict::Reject(r) | Verdict::Disconnect(r) => {
            let (code, t) = reply(r);
            let close = matches!(v, Verdict::Disconnect(_)) || code == 421;
            if close && code != 0 {
                Decision::Disconnect(code, t)
            } else {
                Decision::Reject(code, t)
            }
        }
        Verdict::Rewrite(r) => {
            let v = String::from_utf8_lossy(r);
            let v = match phase {
                // Addresses come back in brackets, as OpenSMTPD's checks read them.
                "mail-from" | "rcpt-to" => v
                    .strip_prefix('<')
                    .and_then(|a| a.strip_suffix('>'))
                    .unwrap_or(&v)
                    .to_string(),
                _ => v.into_owned(),
            };
            Decision::Rewrite(v)
        }
    })
}

/// The events of OpenSMTPD's protocol a report stands for.
pub fn report_events(r: &Report) -> u32 {
    match r {
        Report::Protocol(b'<', _) => ev::PROTOCOL_CLIENT,
        Report::Protocol(..) => ev::PROTOCOL_SERVER,
        Report::Rollback(Some(_)) => ev::TX_ROLLBACK | ev::TX_RESET,
        Report::Rollback(None) => 0,
        Report::Tls(_) => ev::LINK_TLS,
        Report::Auth { .. } => ev::LINK_AUTH,
        Report::Commit { .. } => ev::TX_ENVELOPE | ev::TX_COMMIT | ev::TX_RESET,
        Report::Disconnect => ev::LINK_DISCONNECT,
        Report::Text(t) => match t {
            TextReport::Connect { .. } => ev::LINK_CONNECT,
            TextReport::Greeting(_) => ev::LINK_GREETING,
            TextReport::Identify { .. } => ev::LINK_IDENTIFY,
            TextReport::TxBegin(_) => ev::TX_BEGIN,
            TextReport::TxMail(..) => ev::TX_MAIL,
            TextReport::TxRcpt(..) => ev::TX_RCPT,
            TextReport::TxData(..) => ev::TX_DATA,
            TextReport::TxRollback(_) => ev::TX_ROLLBACK | ev::TX_RESET,
            TextReport::DataEnd => ev::PROTOCOL_CLIENT,
            TextReport::FilterResponse(..) => ev::FILTER_RESPONSE,
            TextReport::FilterReport(..) => ev::FILTER_REPORT,
            TextReport::Timeout => ev::TIMEOUT,
        },
    }
}

/// Writes the report lines of `r` for the events in `wanted`.
pub fn report(out: &mut Vec<u8>, ts: Stamp, sid: u64, r: &Report, wanted: u32) {
    let mut put = |bit: u32, name: &str, fields: &[&[u8]]| {
        if wanted & bit != 0 {
            text::report(out, ts, name, sid, fields);
        }
    };
    let id = |m: u32| format!("{m:08x}");
    match r {
        Report::Protocol(b'<', line) => put(ev::PROTOCOL_CLIENT, "protocol-client", &[line]),
        Report::Protocol(_, text) => {
            // One report per line of a reply, as OpenSMTPD sends them.
            for l in text.split(|&b| b == b'\n') {
                let l = l.strip_suffix(b"\r").unwrap_or(l);
                put(ev::PROTOCOL_SERVER, "protocol-server", &[l]);
            }
        }
        Report::Rollback(Some(m)) | Report::Text(TextReport::TxRollback(m)) => {
            put(ev::TX_ROLLBACK, "tx-rollback", &[id(*m).as_bytes()]);
            put(ev::TX_RESET, "tx-reset", &[id(*m).as_bytes()]);
        }
        Report::Rollback(None) => {}
        Report::Tls(t) => {
            let s = format!("{}:{}:{}", t.version, t.cipher, t.bits);
            put(ev::LINK_TLS, "link-tls", &[s.as_bytes()]);
        }
        Report::Auth { user, result, .. } => {
            let r: &[u8] = match result {
                AuthResult::Ok => b"pass",
                AuthResult::Permfail => b"fail",
                AuthResult::Tempfail => b"error",
            };
            put(ev::LINK_AUTH, "link-auth", &[r, user.as_bytes()]);
        }
        Report::Commit {
            msgid,
            size,
            evpids,
        } => {
            for e in evpids {
                let e = format!("{e:016x}");
                put(
                    ev::TX_ENVELOPE,
                    "tx-envelope",
                    &[msgid.as_bytes(), e.as_bytes()],
                );
            }
            let size = size.to_string();
            put(
                ev::TX_COMMIT,
                "tx-commit",
                &[msgid.as_bytes(), size.as_bytes()],
            );
            put(ev::TX_RESET, "tx-reset", &[msgid.as_bytes()]);
        }
        Report::Disconnect => put(ev::LINK_DISCONNECT, "link-disconnect", &[]),
        Report::Text(t) => match t {
            TextReport::Connect {
                rdns,
                fcrdns,
                src,
                dest,
            } => {
                let rdns = rdns.as_deref().unwrap_or("<unknown>");
                let fcrdns: &[u8] = if *fcrdns { b"pass" } else { b"fail" };
                let (src, dest) = match src.as_str() {
                    "local" => ("unix:/var/run/smtpd.sock", "unix:/var/run/smtpd.sock"),
                    _ => (src.as_str(), dest.as_str()),
                };
                let f: [&[u8]; 4] = [rdns.as_bytes(), fcrdns, src.as_bytes(), dest.as_bytes()];
                put(ev::LINK_CONNECT, "link-connect", &f);
            }
            TextReport::Greeting(name) => {
                put(ev::LINK_GREETING, "link-greeting", &[name.as_bytes()])
            }
            TextReport::Identify { method, name } => put(
                ev::LINK_IDENTIFY,
                "link-identify",
                &[method.as_bytes(), name.as_bytes()],
            ),
            TextReport::TxBegin(m) => put(ev::TX_BEGIN, "tx-begin", &[id(*m).as_bytes()]),
            TextReport::TxMail(m, result, a) => put(
                ev::TX_MAIL,
                "tx-mail",
                &[id(*m).as_bytes(), result.as_bytes(), a.as_bytes()],
            ),
            TextReport::TxRcpt(m, result, a) => put(
                ev::TX_RCPT,
                "tx-rcpt",
                &[id(*m).as_bytes(), result.as_bytes(), a.as_bytes()],
            ),
            TextReport::TxData(m, result) => put(
                ev::TX_DATA,
                "tx-data",
                &[id(*m).as_bytes(), result.as_bytes()],
            ),
            TextReport::DataEnd => put(ev::PROTOCOL_CLIENT, "protocol-client", &[b"."]),
            // With the rollback above.
            TextReport::TxRollback(_) => {}
            TextReport::FilterResponse(phase, response) => put(
                ev::FILTER_RESPONSE,
                "filter-response",
                &[phase.as_bytes(), response.as_bytes()],
            ),
            TextReport::FilterReport(name, text) => put(
                ev::FILTER_REPORT,
                "filter-report",
                &[b"proc", name.as_bytes(), text.as_bytes()],
            ),
            TextReport::Timeout => put(ev::TIMEOUT, "timeout", &[]),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::report::TlsFacts;

    const TS: Stamp = Stamp {
        secs: 1700000000,
        micros: 5,
    };

    fn lines(r: &Report) -> Vec<String> {
        let mut out = Vec::new();
        report(&mut out, TS, 0xab, r, text::report::ALL);
        assert_eq!(report_events(r) != 0, !out.is_empty(), "{r:?}");
        String::from_utf8_lossy(&out)
            .lines()
            .map(|l| {
                l.strip_prefix("report|0.7|1700000000.000005|smtp-in|")
                    .unwrap_or(l)
                    .replace("|00000000000000ab", "")
            })
            .collect()
    }

    #[test]
    fn reports_in_the_format_of_protocol_0_7() {
        let connect = Report::Text(TextReport::Connect {
            rdns: None,
            fcrdns: false,
            src: "192.0.2.1:40000".into(),
            dest: "[::1]:25".into(),
        });
        assert_eq!(
            lines(&connect),
            ["link-connect|<unknown>|fail|192.0.2.1:40000|[::1]:25"]
        );
        let local = Report::Text(TextReport::Connect {
            rdns: Some("localhost".into()),
            fcrdns: true,
            src: "local".into(),
            dest: "local".into(),
        });
        assert_eq!(
            lines(&local),
            ["link-connect|localhost|pass|unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock"]
        );
        assert_eq!(
            lines(&Report::Protocol(b'>', b"250-a\r\n250 b".to_vec())),
            ["protocol-server|250-a", "protocol-server|250 b"]
        );
        let tls = TlsFacts::new("TLSv1_3", "TLS13_AES_256_GCM_SHA384", None, None);
        assert_eq!(
            lines(&Report::Tls(tls)),
            ["link-tls|TLSv1.3:TLS_AES_256_GCM_SHA384:256"]
        );
        let auth = Report::Auth {
            mechanism: "PLAIN".into(),
            user: "alice".into(),
            result: AuthResult::Permfail,
        };
        assert_eq!(lines(&auth), ["link-auth|fail|alice"]);
        let commit = Report::Commit {
            msgid: "0000beef".into(),
            size: 1234,
            evpids: vec![0xbeef_0000_0001],
        };
        assert_eq!(
            lines(&commit),
            [
                "tx-envelope|0000beef|0000beef00000001",
                "tx-commit|0000beef|1234",
                "tx-reset|0000beef"
            ]
        );
        assert_eq!(
            lines(&Report::Rollback(Some(0xbeef))),
            ["tx-rollback|0000beef", "tx-reset|0000beef"]
        );
        assert!(lines(&Report::Rollback(None)).is_empty());
        let mail = Report::Text(TextReport::TxMail(1, "ok", "<a@b> SIZE=10".into()));
        assert_eq!(lines(&mail), ["tx-mail|00000001|ok|<a@b> SIZE=10"]);
        assert_eq!(lines(&Report::Disconnect), ["link-disconnect"]);
        assert_eq!(lines(&Report::Text(TextReport::Timeout)), ["timeout"]);
        let fr = Report::Text(TextReport::FilterResponse(
            "rcpt-to",
            "reject|550 no".into(),
        ));
        assert_eq!(lines(&fr), ["filter-response|rcpt-to|reject|550 no"]);
        // Only what was registered.
        let mut out = Vec::new();
        report(&mut out, TS, 1, &commit, text::report::TX_COMMIT);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }

    #[test]
    fn questions_and_lines() {
        let mut out = Vec::new();
        let c = Frame::Connect {
            local: b"127.0.0.1:25",
            remote: b"[::1]:4000",
            hostname: b"",
        };
        assert!(question(&mut out, TS, 1, 2, &c));
        assert!(question(&mut out, TS, 1, 2, &Frame::Mail(b"a@b")));
        assert!(question(&mut out, TS, 1, 2, &Frame::Eom(10)));
        let auth = Frame::Auth {
            mechanism: b"PLAIN",
            user: b"alice",
        };
        assert!(question(&mut out, TS, 1, 2, &auth));
        assert!(!question(&mut out, TS, 1, 2, &Frame::Rollback));
        data_line(&mut out, TS, 1, 2, Some(b".hidden"));
        data_line(&mut out, TS, 1, 2, None);
        let s = String::from_utf8_lossy(&out).replace("0.7|1700000000.000005|smtp-in|", "");
        let s = s.replace("|0000000000000001|0000000000000002", "");
        assert_eq!(
            s,
            "filter|connect|<unknown>|[::1]\nfilter|mail-from|a@b\nfilter|commit|\n\
filter|auth|PLAIN\nfilter|data-line|..hidden\nfilter|data-line|.\n"
        );
        assert_eq!(returned_line(b"."), None);
        assert_eq!(returned_line(b".."), Some(&b"."[..]));
        assert_eq!(returned_line(b"..x"), Some(&b".x"[..]));
        assert_eq!(returned_line(b".x"), Some(&b".x"[..]));
        assert_eq!(returned_line(b""), Some(&b""[..]));
        assert_eq!(address_only("192.0.2.1:25"), "192.0.2.1");
        assert_eq!(address_only("local"), "local");
    }

    #[test]
    fn verdicts_become_decisions() {
        let d = |v, p| decision(&v, p);
        assert_eq!(d(Verdict::Proceed, "helo"), Ok(Decision::Proceed));
        assert_eq!(d(Verdict::Report(b"x"), "helo"), Ok(Decision::Proceed));
        assert_eq!(d(Verdict::Junk, "data"), Ok(Decision::Junk));
        assert!(d(Verdict::Junk, "commit").is_err());
        assert_eq!(
            d(Verdict::Reject(b"550 5.7.1 no"), "rcpt-to"),
            Ok(Decision::Reject(550, "5.7.1 no".into()))
        );
        assert_eq!(
            d(Verdict::Reject(b"421 go away"), "rcpt-to"),
            Ok(Decision::Disconnect(421, "go away".into()))
        );
        assert_eq!(
            d(Verdict::Disconnect(b"554 bye"), "connect"),
            Ok(Decision::Disconnect(554, "bye".into()))
        );
        // Not a reply: the chain refuses code 0 (421 to the client).
        assert_eq!(
            d(Verdict::Reject(b"250 fine"), "helo"),
            Ok(Decision::Reject(0, "250 fine".into()))
        );
        assert_eq!(
            d(Verdict::Disconnect(b"55x"), "helo"),
            Ok(Decision::Reject(0, "55x".into()))
        );
        assert_eq!(
            d(Verdict::Rewrite(b"<x@y>"), "mail-from"),
            Ok(Decision::Rewrite("x@y".into()))
        );
        assert_eq!(
            d(Verdict::Rewrite(b"name"), "helo"),
            Ok(Decision::Rewrite("name".into()))
        );
    }
}
