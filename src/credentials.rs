//! Checking SMTP AUTH credentials: against a table of crypt(3) hashes (`listen on ...
//! auth <table>`, on a lookup thread), or against the system's accounts (`auth` alone,
//! in a child of the privileged parent, which can read the shadow database).
//!
//! A check costs what crypt(3) costs (4 ms for SHA-512 crypt, 35 ms for yescrypt, 85
//! ms for bcrypt at cost 10), so it never runs on the loop. The time it takes does not
//! tell whether the user exists: an unknown user's password is hashed all the same,
//! with the setting of a hash of the same kind (the table's first, or the system's
//! default method), and the hashes are compared in constant time.

use crate::mail::address::Mailbox;
use crate::mail::auth::{AuthResult, Credentials, Secret};
use crate::sys::crypt;
use crate::table::{Service, Table, TableError};
use std::sync::OnceLock;

/// Whether `s` has the form of a crypt(3) hash: `$id$...` (yescrypt, SHA-crypt,
/// bcrypt, MD5...) or traditional DES (13 characters of `./0-9A-Za-z`).
pub fn is_crypt_hash(s: &str) -> bool {
    let des = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'/';
    if let Some(rest) = s.strip_prefix('$') {
        return rest.len() >= 3
            && rest.contains('$')
            && rest.bytes().all(|c| c.is_ascii_graphic() && c != b':');
    }
    s.len() == 13 && s.bytes().all(des)
}

/// The hash of a credentials table value: `HASH`, or `USER:HASH` as OpenSMTPD's tables
/// may hold it (the user part is not used: the key is the user). `None` when the value
/// is no hash.
pub fn table_hash(value: &str) -> Option<&str> {
    let v = value.trim();
    if is_crypt_hash(v) {
        return Some(v);
    }
    v.split_once(':')
        .map(|(_, h)| h.trim())
        .filter(|h| is_crypt_hash(h))
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
fn same(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

/// Whether `password` hashes to `hash` (every method the system's libcrypt knows).
pub fn verify(password: &[u8], hash: &str) -> bool {
    match crypt::crypt(password, hash) {
        Some(h) => {
            let ok = same(h.as_bytes(), hash.as_bytes());
            let mut h = h.into_bytes();
            crypt::wipe(&mut h);
            ok
        }
        None => false,
    }
}

/// A hash of the system's default method, made once: what an unknown user's password
/// is checked against when nothing better is at hand.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        crypt::gensalt(None)
            .or_else(|| crypt::gensalt(Some("$6$")))
            .and_then(|s| crypt::crypt(b"no such user", &s))
            .unwrap_or_default()
    })
}

/// Makes the hash unknown users are checked against now, so that a process forked
/// afterwards for a check (the parent's children) does not pay for it in the time of
/// its answer.
pub fn warm_up() {
    let _ = dummy_hash();
}

/// Checks `password` for `user` against a credentials table (keys without regard to
/// case). An unknown user, or an entry that holds no hash, costs the same time as a
/// wrong password. A table process that cannot answer is a temporary failure.
pub fn check_table(table: &Table, user: &str, password: &Secret) -> AuthResult {
    let value = match table.lookup(Service::Credentials, user) {
        Ok(v) => v,
        Err(e) => {
            log::warn!("smtp authentication: {e}");
            return AuthResult::TempFail;
        }
    };
    match value.as_deref().and_then(table_hash) {
        Some(hash) if verify(password.expose(), hash) => AuthResult::Ok,
        Some(_) => AuthResult::PermFail,
        None => {
            let entries = table.entries();
            let first = entries
                .keys()
                .find_map(|k| entries.get(k).and_then(table_hash));
            let like = match first {
                Some(h) => h,
                None => dummy_hash(),
            };
            let _ = verify(password.expose(), like);
            AuthResult::PermFail
        }
    }
}

/// Checks `password` for the system account `user` through the shadow database (root
/// only). A locked or unknown account costs the same time as a wrong password; a
/// database that cannot be read is a temporary failure.
pub fn check_system(user: &str, password: &Secret) -> AuthResult {
    if crate::sys::geteuid() != 0 {
        log::warn!("smtp authentication: system accounts need smtpd to be started as root");
        return AuthResult::TempFail;
    }
    let hash = match crypt::shadow_hash(user) {
        Ok(h) => h,
        Err(e) => {
            log::warn!("smtp authentication: cannot read the shadow database: {e}");
            return AuthResult::TempFail;
        }
    };
    match hash.as_deref().filter(|h| is_crypt_hash(h)) {
        Some(h) if verify(password.expose(), h) => AuthResult::Ok,
        Some(_) => AuthResult::PermFail,
        None => {
            let _ = verify(password.expose(), dummy_hash());
            AuthResult::PermFail
        }
    }
}

/// Whether `sender` is a local user's own: the null sender, or the login name (a
/// sub-address after `delim` ignored, letters compared without case) at one of
/// `domains`. What `sendmail` gives without `-f` is always one.
pub fn is_own_sender(login: &str, sender: &Mailbox, domains: &[&str], delim: char) -> bool {
    if sender.is_null() {
        return true;
    }
    let local = match sender.local.find(delim) {
        Some(i) if i > 0 => &sender.local[..i],
        _ => sender.local.as_str(),
    };
    local.eq_ignore_ascii_case(login)
        && domains
            .iter()
            .any(|d| !d.is_empty() && d.eq_ignore_ascii_case(&sender.domain))
}

/// Whether `user` may give `sender` in MAIL FROM by the `senders` table: the user's
/// entry lists addresses (`user@domain`, `@domain`, `user`, or `@` for any, `<>`
/// included), separated by commas. A sub-address of the sender is ignored unless the
/// listed address has one, as OpenSMTPD does. An error when a table process could not
/// answer.
pub fn may_send_as(
    senders: &Table,
    user: &str,
    sender: &Mailbox,
    delim: char,
) -> Result<bool, TableError> {
    let Some(list) = senders.lookup(Service::MailAddrMap, user)? else {
        return Ok(false);
    };
    Ok(list
        .split(',')
        .map(|a| a.trim().trim_start_matches('<').trim_end_matches('>'))
        .filter(|a| !a.is_empty())
        .any(|a| {
            if a == "@" {
                return true;
            }
            if sender.is_null() {
                return false;
            }
            let (local, domain) = match a.rsplit_once('@') {
                Some((l, d)) => (l, Some(d)),
                None => (a, None),
            };
            if domain.is_some_and(|d| !crate::table::domain_matches(d, &sender.domain)) {
                return false;
            }
            if local.is_empty() {
                return true;
            }
            // The sub-address starts at the delimiter, unless the local part does.
            let given = match sender.local.find(delim) {
                Some(i) if i > 0 && !local.contains(delim) => &sender.local[..i],
                _ => sender.local.as_str(),
            };
            given.eq_ignore_ascii_case(local)
        }))
}

/// The engine's question to the parent about a system account, on the parent
/// channel: `'A' key generation user password` (lengths as u32). The buffer holds the
/// password: it is a [`Secret`], zeroed when dropped.
pub fn encode_system_check(key: (u64, u64), c: &Credentials) -> Secret {
    let mut out = Vec::with_capacity(25 + c.user.len() + c.password.expose().len());
    out.push(b'A');
    out.extend_from_slice(&key.0.to_be_bytes());
    out.extend_from_slice(&key.1.to_be_bytes());
    for part in [c.user.as_bytes(), c.password.expose()] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    Secret::new(out)
}

/// Reads what [`encode_system_check`] wrote.
pub fn decode_system_check(b: &[u8]) -> Option<((u64, u64), Credentials)> {
    let rest = b.strip_prefix(b"A")?;
    let key = (
        u64::from_be_bytes(rest.get(..8)?.try_into().ok()?),
        u64::from_be_bytes(rest.get(8..16)?.try_into().ok()?),
    );
    let mut rest = &rest[16..];
    let mut part = || -> Option<&[u8]> {
        let n = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let p = rest.get(4..4 + n)?;
        rest = &rest[4 + n..];
        Some(p)
    };
    let user = String::from_utf8(part()?.to_vec()).ok()?;
    let password = Secret::new(part()?.to_vec());
    if !rest.is_empty() {
        return None;
    }
    Some((key, Credentials { user, password }))
}

/// The parent's answer: `'a' key generation result` (0 ok, 1 permfail, 2 tempfail).
pub fn encode_system_answer(key: (u64, u64), r: AuthResult) -> Vec<u8> {
    let mut out = vec![b'a'];
    out.extend_from_slice(&key.0.to_be_bytes());
    out.extend_from_slice(&key.1.to_be_bytes());
    out.push(match r {
        AuthResult::Ok => 0,
        AuthResult::PermFail => 1,
        AuthResult::TempFail => 2,
    });
    out
}

/// Reads what [`encode_system_answer`] wrote.
pub fn decode_system_answer(b: &[u8]) -> Option<((u64, u64), AuthResult)> {
    if b.len() != 18 || b[0] != b'a' {
        return None;
    }
    let key = (
        u64::from_be_bytes(b[1..9].try_into().ok()?),
        u64::from_be_bytes(b[9..17].try_into().ok()?),
    );
    let r = match b[17] {
        0 => AuthResult::Ok,
        1 => AuthResult::PermFail,
        2 => AuthResult::TempFail,
        _ => return None,
    };
    Some((key, r))
}

/// A new hash of `password` for a credentials table: yescrypt (the system's default
/// method), else SHA-512 crypt when the library has no default.
pub fn encrypt(password: &[u8]) -> Option<String> {
    crypt::gensalt(None)
        .and_then(|s| crypt::crypt(password, &s))
        .or_else(|| crypt::gensalt(Some("$6$")).and_then(|s| crypt::crypt(password, &s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `mkpasswd -m yescrypt|sha512crypt|bcrypt`, `openssl passwd -6` and
    // Python's crypt module, for the password "correct horse".
    const MADE_ELSEWHERE: &[&str] = &[
        "$y$j9T$.Yl7mOMqTuglHybKwdg6D1$z517WuLJgaeyZsfvX1/.dJvvBZW.gi/nGN3zQ/Op707",
        "$6$HSYp2QZQZNO7ztiv$sv9JoXhE4BcNdCVOnCm58f0xUN48gCnrrZonuESlqNCzE94ZjaAySxqJ1y7YGNUhINoA5o8kg4PY0DTOveQqV.",
        "$2b$05$NlN2kRBSBtn8TkiOD42CreDJV35Rq.Qfg1XZB7tKxAv7nIRdayAoe",
        "$6$wupqMKI.5Nd/nfGE$Xp3ayXrVKO7Rd39lUEdRVzSvWeaw2RTg5lvcCr5IfFnnmLY3LlUuDim4UOfRwMrMY4HIQYQ7UDuzwYMZLKv7W.",
        "$2b$04$zucEbTyYQfhmGwbXOtHLgeDqFhoPA6.8ZyQElfdgzof6gxSsytSq2",
        "$1$3o.chXKC$vU.X1RaIwJqH11xD31qic1",
    ];

    fn secret(s: &[u8]) -> Secret {
        Secret::new(s.to_vec())
    }

    #[test]
    fn hashes_of_other_tools_verify() {
        for h in MADE_ELSEWHERE {
            assert!(is_crypt_hash(h), "{h}");
            assert!(verify(b"correct horse", h), "{h}");
            assert!(!verify(b"correct horse ", h), "{h}");
            assert!(!verify(b"", h), "{h}");
        }
    }

    #[test]
    fn table_entries() {
        let t = Table::new(
            "creds",
            vec![
                ("Bob".into(), MADE_ELSEWHERE[0].into()),
                ("carol".into(), format!("carol:{}", MADE_ELSEWHERE[1])),
                ("dave".into(), "plaintext".into()),
            ],
        );
        let good = secret(b"correct horse");
        assert_eq!(check_table(&t, "bob", &good), AuthResult::Ok);
        assert_eq!(check_table(&t, "BOB", &good), AuthResult::Ok);
        assert_eq!(check_table(&t, "carol", &good), AuthResult::Ok);
        assert_eq!(
            check_table(&t, "carol", &secret(b"wrong")),
            AuthResult::PermFail
        );
        assert_eq!(
            check_table(&t, "dave", &secret(b"plaintext")),
            AuthResult::PermFail
        );
        assert_eq!(check_table(&t, "nobody", &good), AuthResult::PermFail);
        assert_eq!(
            check_table(&Table::default(), "bob", &good),
            AuthResult::PermFail
        );
    }

    #[test]
    fn every_octet_but_nul_is_a_password() {
        let password: Vec<u8> = (1..=255).collect();
        let h = encrypt(&password).unwrap();
        assert!(h.starts_with("$y$") || h.starts_with("$6$"), "{h}");
        assert!(verify(&password, &h));
        assert!(!verify(&password[1..], &h));
    }

    #[test]
    fn system_accounts_need_root() {
        let r = check_system("no-such-user-here", &secret(b"x"));
        match crate::sys::geteuid() {
            0 => assert_eq!(r, AuthResult::PermFail),
            _ => assert_eq!(r, AuthResult::TempFail),
        }
    }

    #[test]
    fn hash_forms() {
        assert!(is_crypt_hash("abJnggxhB/yWI"));
        assert!(!is_crypt_hash("secret"));
        assert!(!is_crypt_hash("$$"));
        assert!(!is_crypt_hash("$6$a b$c"));
        assert_eq!(table_hash(" u:abJnggxhB/yWI "), Some("abJnggxhB/yWI"));
        assert_eq!(table_hash("u:secret"), None);
    }

    #[test]
    fn senders() {
        let t = Table::new(
            "senders",
            vec![
                (
                    "bob".into(),
                    "bob@example.org, <@example.net>, bob+lists@example.com".into(),
                ),
                ("carol".into(), "carol".into()),
                ("admin".into(), "@".into()),
            ],
        );
        let mb = |s: &str| match s.split_once('@') {
            Some((l, d)) => Mailbox {
                local: l.into(),
                domain: d.into(),
            },
            None => Mailbox::default(),
        };
        let may = |u: &str, s: &str| may_send_as(&t, u, &mb(s), '+') == Ok(true);
        assert!(may("bob", "bob@example.org"));
        assert!(may("BOB", "Bob+x@Example.org"));
        assert!(may("bob", "anyone@example.net"));
        assert!(may("bob", "bob+lists@example.com"));
        assert!(!may("bob", "bob@example.com"));
        assert!(!may("bob", "bob+other@example.com"));
        assert!(!may("bob", "alice@example.org"));
        assert!(!may("bob", "bob@sub.example.org"));
        assert!(!may("bob", ""));
        assert!(may("carol", "carol@anywhere.example"));
        assert!(!may("carol", "bob@anywhere.example"));
        assert!(may("admin", "x@y.example") && may("admin", ""));
        assert!(!may("dave", "dave@example.org"));
    }

    #[test]
    fn own_senders_of_local_users() {
        let mb = |l: &str, d: &str| Mailbox {
            local: l.into(),
            domain: d.into(),
        };
        let own = |s: &Mailbox| is_own_sender("alice", s, &["mx.example.org", "localhost"], '+');
        assert!(own(&Mailbox::default()));
        assert!(own(&mb("alice", "mx.example.org")));
        assert!(own(&mb("Alice+lists", "MX.example.org")));
        assert!(own(&mb("alice", "localhost")));
        assert!(!own(&mb("alice", "example.org")));
        assert!(!own(&mb("bob", "mx.example.org")));
        assert!(!own(&mb("alicex", "mx.example.org")));
        assert!(!own(&mb("+alice", "mx.example.org")));
        assert!(!is_own_sender("alice", &mb("alice", ""), &[""], '+'));
    }

    #[test]
    fn parent_messages() {
        let c = Credentials {
            user: "bob".into(),
            password: Secret::new((1..=255).collect()),
        };
        let m = encode_system_check((7, 9), &c);
        assert_eq!(decode_system_check(m.expose()), Some(((7, 9), c)));
        assert_eq!(
            decode_system_check(&m.expose()[..m.expose().len() - 1]),
            None
        );
        for r in [AuthResult::Ok, AuthResult::PermFail, AuthResult::TempFail] {
            let a = encode_system_answer((1, u64::MAX), r);
            assert_eq!(decode_system_answer(&a), Some(((1, u64::MAX), r)));
        }
        assert_eq!(decode_system_answer(b"a"), None);
    }

    #[test]
    fn comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
        assert!(same(b"", b""));
    }
}
