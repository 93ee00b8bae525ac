//! The parameters of MAIL FROM and RCPT TO the client gives, each only when the server
//! announced its extension: SIZE (RFC 1870), BODY=8BITMIME (RFC 6152) or BINARYMIME
//! (RFC 3030), SMTPUTF8 (RFC
//! 6531), and the DSN parameters RET, ENVID, NOTIFY and ORCPT (RFC 3461), whose values
//! are xtext (RFC 3461 §4).

use super::ehlo::Caps;
use super::{Job, Rcpt};
use crate::mail::address::valid_xtext;
use crate::mail::params::notify;

/// Octets of an ENVID value at most (RFC 3461 §4.4 limits the whole to 100 characters).
const MAX_ENVID: usize = 100;
/// Octets of an ORCPT address at most, as xtext (RFC 3461 §4.2 allows 500).
const MAX_ORCPT: usize = 500;

/// xtext of `raw` (RFC 3461 §4): `+`, `=` and every octet outside `!`..`~` as `+XX`.
pub fn xtext(raw: &[u8]) -> String {
    let mut s = String::with_capacity(raw.len());
    for &b in raw {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("+{b:02X}"));
        }
    }
    s
}

/// A stored value as xtext: kept when it is xtext already (as the server side stores
/// what a client gave), encoded otherwise.
fn as_xtext(stored: &str) -> String {
    if valid_xtext(stored) {
        stored.to_string()
    } else {
        xtext(stored.as_bytes())
    }
}

/// The parameters of MAIL FROM for `job`: `size` is the message's, `eight_bit` whether
/// its content has 8-bit octets as far as is known, `utf8` whether the message needs
/// SMTPUTF8 (received with it, or an address is not ASCII), `dsn` whether DSN parameters are passed on at all.
pub fn mail(job: &Job, caps: &Caps, size: u64, eight_bit: bool, utf8: bool, dsn: bool) -> String {
    let mut p = String::new();
    if caps.size.is_some() {
        p.push_str(&format!(" SIZE={size}"));
    }
    if job.body_binary {
        // Only ever sent to a server that offers it (`Client::refusal`).
        p.push_str(" BODY=BINARYMIME");
    } else if eight_bit && caps.eightbitmime {
        p.push_str(" BODY=8BITMIME");
    }
    if utf8 && caps.smtputf8 {
        p.push_str(" SMTPUTF8");
    }
    if job.requiretls && caps.requiretls {
        p.push_str(" REQUIRETLS");
    }
    if caps.dsn && dsn {
        if job.ret.eq_ignore_ascii_case("FULL") || job.ret.eq_ignore_ascii_case("HDRS") {
            p.push_str(&format!(" RET={}", job.ret.to_ascii_uppercase()));
        }
        let envid = as_xtext(&job.envid);
        if !envid.is_empty() && envid.len() <= MAX_ENVID {
            p.push_str(&format!(" ENVID={envid}"));
        }
    }
    p
}

/// The parameters of RCPT TO for `r`, when the server takes DSN parameters.
pub fn rcpt(r: &Rcpt, caps: &Caps, dsn: bool) -> String {
    if !caps.dsn || !dsn {
        return String::new();
    }
    let mut p = String::new();
    let n = r.notify;
    if n & notify::NEVER != 0 {
        p.push_str(" NOTIFY=NEVER");
    } else if n != 0 {
        let words: Vec<&str> = [
            (notify::SUCCESS, "SUCCESS"),
            (notify::FAILURE, "FAILURE"),
            (notify::DELAY, "DELAY"),
        ]
        .iter()
        .filter(|(bit, _)| n & bit != 0)
        .map(|(_, w)| *w)
        .collect();
        p.push_str(&format!(" NOTIFY={}", words.join(",")));
    }
    // The address the recipient was first given as: the one stored, else the one
    // received here (RFC 3461 §4.2 lets a relay add it).
    let orcpt = match r.orcpt.split_once(';') {
        Some((kind, addr))
            if !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') =>
        {
            Some(format!("{kind};{}", as_xtext(addr)))
        }
        _ if r.original.is_ascii() && !r.original.is_empty() => {
            Some(format!("rfc822;{}", xtext(r.original.as_bytes())))
        }
        _ => None,
    };
    if let Some(o) = orcpt.filter(|o| o.len() <= MAX_ORCPT) {
        p.push_str(&format!(" ORCPT={o}"));
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(dsn: bool) -> Caps {
        Caps {
            size: Some(1000),
            eightbitmime: true,
            dsn,
            smtputf8: true,
            ..Caps::default()
        }
    }

    fn job() -> Job {
        Job {
            id: 1,
            msgid: 2,
            sender: "s@x".into(),
            rcpts: Vec::new(),
            body_8bit: false,
            smtputf8: false,
            requiretls: false,
            body_binary: false,
            ret: "hdrs".into(),
            envid: "QQ+2Bx".into(),
        }
    }

    #[test]
    fn xtext_encoding() {
        assert_eq!(xtext(b"a+b=c d\xc3\xa9"), "a+2Bb+3Dc+20d+C3+A9");
        assert_eq!(xtext(b"user@example.org"), "user@example.org");
        assert!(valid_xtext(&xtext(&(0u8..=255).collect::<Vec<_>>())));
        assert_eq!(as_xtext("a+2Bb"), "a+2Bb");
        assert_eq!(as_xtext("a b"), "a+20b");
    }

    #[test]
    fn mail_parameters_follow_the_offer() {
        assert_eq!(
            mail(&job(), &caps(true), 123, true, true, true),
            " SIZE=123 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2Bx"
        );
        assert_eq!(
            mail(&job(), &caps(false), 123, false, false, true),
            " SIZE=123"
        );
        assert_eq!(mail(&job(), &Caps::default(), 123, true, true, true), "");
        // No DSN parameters over LMTP.
        assert_eq!(mail(&job(), &caps(true), 1, false, false, false), " SIZE=1");
        let mut j = job();
        j.ret.clear();
        j.envid = "x".repeat(101);
        assert_eq!(mail(&j, &caps(true), 1, false, false, true), " SIZE=1");
        // Values never carry a space, whatever the envelope holds.
        j.envid = "a b\r\nRCPT".into();
        assert_eq!(
            mail(&j, &caps(true), 1, false, false, true),
            " SIZE=1 ENVID=a+20b+0D+0ARCPT"
        );
    }

    #[test]
    fn rcpt_parameters() {
        let mut r = Rcpt {
            addr: "a@b".into(),
            notify: notify::SUCCESS | notify::DELAY,
            orcpt: "rfc822;A+2Bx@b".into(),
            original: "a+x@b".into(),
        };
        assert_eq!(
            rcpt(&r, &caps(true), true),
            " NOTIFY=SUCCESS,DELAY ORCPT=rfc822;A+2Bx@b"
        );
        assert_eq!(rcpt(&r, &caps(false), true), "");
        assert_eq!(rcpt(&r, &caps(true), false), "");
        r.notify = notify::NEVER;
        r.orcpt.clear();
        // No ORCPT stored: the address received here.
        assert_eq!(
            rcpt(&r, &caps(true), true),
            " NOTIFY=NEVER ORCPT=rfc822;a+2Bx@b"
        );
        r.notify = 0;
        r.orcpt = "bad type;x".into();
        r.original = "\u{e9}@b".into();
        assert_eq!(rcpt(&r, &caps(true), true), "");
    }
}
