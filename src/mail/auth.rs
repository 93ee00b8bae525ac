//! The nouns of SMTP AUTH (RFC 4954): a password that never shows in a log, the
//! credentials a client gave, and the outcome of checking them.

use std::fmt;

/// Octets a user name or password may have (RFC 4616 §2 for PLAIN; applied to LOGIN
/// too).
pub const MAX_CREDENTIAL: usize = 255;

/// A password: printed as `(secret)` by `Debug`, overwritten with zeros when dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps `bytes` (taken, not copied).
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }

    /// The password's octets, for the one function that checks them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("(secret)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            *b = 0;
        }
        std::hint::black_box(&mut self.0);
    }
}

/// What a client authenticates with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The authentication identity (user name) as the client gave it.
    pub user: String,
    /// The password.
    pub password: Secret,
}

/// The outcome of a credentials check; the words are those of the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// The credentials are good.
    Ok,
    /// They are not.
    PermFail,
    /// They could not be checked (the backend failed).
    TempFail,
}

impl AuthResult {
    /// `ok`, `permfail` or `tempfail`.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthResult::Ok => "ok",
            AuthResult::PermFail => "permfail",
            AuthResult::TempFail => "tempfail",
        }
    }
}

/// A user name as one word of a log line: every octet outside `!`..`~`, and `\`, as
/// `\xNN`, so that the line stays one line and `key=value` words stay apart.
pub fn log_word(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'\\' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_print() {
        let c = Credentials {
            user: "bob".into(),
            password: Secret::new(b"hunter2".to_vec()),
        };
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("(secret)"),
            "{shown}"
        );
        assert_eq!(c.password.expose(), b"hunter2");
    }

    #[test]
    fn user_names_in_logs_are_one_word() {
        assert_eq!(log_word("bob@example.org"), "bob@example.org");
        assert_eq!(log_word("a b\\c\n"), "a\\x20b\\x5cc\\x0a");
        assert_eq!(log_word("é"), "\\xc3\\xa9");
    }
}
