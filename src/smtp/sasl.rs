//! The SASL side of SMTP AUTH (RFC 4954): the PLAIN message (RFC 4616), the LOGIN
//! prompts, and what of an AUTH line may be logged; base64 (RFC 4648) is
//! `crate::mail::base64`, shared with the relay client.

use crate::mail::auth::{Credentials, Secret, MAX_CREDENTIAL};
use std::borrow::Cow;

pub use crate::mail::base64::{decode, encode};

/// Octets of an AUTH command line or of an exchange line, CR LF not counted (RFC 4954
/// §4 raises the command line limit to 12288 octets for AUTH).
pub const MAX_LINE: usize = 12288;

/// The mechanisms offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// draft-murchison-sasl-login: user name and password, each after a prompt.
    Login,
}

impl Mechanism {
    /// The mechanism named `name` (without regard to case), if it is offered.
    pub fn named(name: &str) -> Option<Mechanism> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Some(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Some(Mechanism::Login)
        } else {
            None
        }
    }
}

/// The EHLO keyword line.
pub const EHLO_KEYWORD: &str = "AUTH PLAIN LOGIN";
/// LOGIN's prompt for the user name: base64 of "Username:".
pub const LOGIN_USER_PROMPT: &str = "VXNlcm5hbWU6";
/// LOGIN's prompt for the password: base64 of "Password:".
pub const LOGIN_PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

/// Why a PLAIN message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PlainError {
    /// Not `authzid NUL authcid NUL passwd`, or a user name that is not UTF-8.
    Malformed,
    /// An identity or the password is empty or longer than 255 octets, or the
    /// authorization identity is another user than the authentication identity:
    /// refused as bad credentials, without a check.
    Refused(String),
}

/// Reads a PLAIN message (RFC 4616 §2): `[authzid] NUL authcid NUL passwd`.
pub fn plain(msg: Vec<u8>) -> Result<Credentials, PlainError> {
    let msg = Secret::new(msg);
    let mut parts = msg.expose().splitn(3, |&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainError::Malformed);
    };
    if password.contains(&0) {
        return Err(PlainError::Malformed);
    }
    let (Ok(authzid), Ok(user)) = (std::str::from_utf8(authzid), std::str::from_utf8(authcid))
    else {
        return Err(PlainError::Malformed);
    };
    let user = user.to_string();
    if user.is_empty()
        || user.len() > MAX_CREDENTIAL
        || password.is_empty()
        || password.len() > MAX_CREDENTIAL
        || (!authzid.is_empty() && authzid != user)
    {
        return Err(PlainError::Refused(user));
    }
    Ok(Credentials {
        user,
        password: Secret::new(password.to_vec()),
    })
}

/// What replaces the credentials of SMTP AUTH in logs and filters' protocol reports.
pub const HIDDEN: &[u8] = b"(hidden)";

/// A SASL mechanism name (RFC 4422 §3.1): 1 to 20 of `A-Z 0-9 - _`, in any case here.
fn is_mechanism(s: &[u8]) -> bool {
    (1..=20).contains(&s.len())
        && s.iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_')
}

/// What of a command line may be logged or shown to filters. A line of an AUTH
/// exchange (`in_exchange`: the answer to a 334) is hidden whole, but for a lone `*`
/// that cancels it; an AUTH command keeps its verb and mechanism, and whatever follows
/// them, or a word that is no mechanism (a credential sent bare), is hidden.
pub fn redact(line: &[u8], in_exchange: bool) -> Cow<'_, [u8]> {
    if in_exchange {
        return match line {
            b"*" => Cow::Borrowed(line),
            _ => Cow::Borrowed(HIDDEN),
        };
    }
    let blank = |b: &u8| *b == b' ' || *b == b'\t';
    let is_auth =
        line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"AUTH") && line.get(4).is_none_or(blank);
    let rest = match line.get(5..) {
        Some(rest) if is_auth => rest,
        _ => return Cow::Borrowed(line),
    };
    let end = rest.iter().position(blank).unwrap_or(rest.len());
    let (mechanism, after) = rest.split_at(end);
    if is_mechanism(mechanism) && after.iter().all(blank) {
        return Cow::Borrowed(line);
    }
    let mut out = line[..5].to_vec();
    if is_mechanism(mechanism) {
        out.extend_from_slice(mechanism);
        out.push(b' ');
    }
    out.extend_from_slice(HIDDEN);
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [
            &b""[..],
            b"a",
            b"ab",
            b"abc",
            b"abcd",
            b"\0bob\0pass",
            &[255u8; 7],
        ] {
            let e = encode(s);
            assert_eq!(decode(e.as_bytes()).as_deref(), Some(s), "{e}");
        }
        assert_eq!(encode(b"Username:"), LOGIN_USER_PROMPT);
        assert_eq!(encode(b"Password:"), LOGIN_PASSWORD_PROMPT);
        assert_eq!(
            decode(b"AGJvYgBwYXNz").as_deref(),
            Some(&b"\0bob\0pass"[..])
        );
    }

    #[test]
    fn plain_messages() {
        let c = plain(b"\0bob\0pass".to_vec()).unwrap();
        assert_eq!(
            (c.user.as_str(), c.password.expose()),
            ("bob", &b"pass"[..])
        );
        let c = plain(b"bob\0bob\0pa\xffss".to_vec()).unwrap();
        assert_eq!(c.password.expose(), b"pa\xffss");
        assert_eq!(plain(b"bob\0pass".to_vec()), Err(PlainError::Malformed));
        assert_eq!(plain(b"\0bob\0pa\0ss".to_vec()), Err(PlainError::Malformed));
        assert_eq!(plain(b"\0\xff\0pass".to_vec()), Err(PlainError::Malformed));
        assert_eq!(
            plain(b"root\0bob\0pass".to_vec()),
            Err(PlainError::Refused("bob".into()))
        );
        assert_eq!(
            plain(b"\0bob\0".to_vec()),
            Err(PlainError::Refused("bob".into()))
        );
        let long = [&b"\0bob\0"[..], &[b'x'; 256]].concat();
        assert_eq!(plain(long), Err(PlainError::Refused("bob".into())));
        let every: Vec<u8> = [&b"\0bob\0"[..], &(1..=255).collect::<Vec<u8>>()].concat();
        assert_eq!(plain(every).map(|c| c.password.expose().len()), Ok(255));
    }

    #[test]
    fn what_is_logged() {
        assert_eq!(
            &*redact(b"AUTH PLAIN AGJvYgBwYXNz", false),
            b"AUTH PLAIN (hidden)"
        );
        assert_eq!(&*redact(b"auth login Ym9i", false), b"auth login (hidden)");
        assert_eq!(&*redact(b"AUTH PLAIN", false), b"AUTH PLAIN");
        assert_eq!(&*redact(b"MAIL FROM:<a@b.c>", false), b"MAIL FROM:<a@b.c>");
        assert_eq!(&*redact(b"cGFzcw==", true), b"(hidden)");
        assert_eq!(&*redact(b"", true), b"(hidden)");
        assert_eq!(&*redact(b"*", true), b"*");
        assert_eq!(&*redact(b"auth plain =", false), b"auth plain (hidden)");
        assert_eq!(
            &*redact(b"AUTH\tLOGIN\tYWxpY2U=", false),
            b"AUTH\tLOGIN (hidden)"
        );
        assert_eq!(&*redact(b"AUTH PLAIN  ", false), b"AUTH PLAIN  ");
        assert_eq!(&*redact(b"AUTH", false), b"AUTH");
        // A "mechanism" that is no mechanism may be a credential sent bare.
        assert_eq!(
            &*redact(b"AUTH AGFsaWNlAHNlY3JldA==", false),
            b"AUTH (hidden)"
        );
        assert_eq!(&*redact(b"AUTHORIZE me", false), b"AUTHORIZE me");
    }
}
