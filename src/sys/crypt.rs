//! The system's crypt(3) (libxcrypt, `-lcrypt`) and shadow password database, behind
//! safe functions. Every call here is thread-safe: `crypt_rn` and `crypt_gensalt_rn`
//! work in buffers of the caller, `getspnam_r` too.
//!
//! In a static build against musl (target `x86_64-unknown-linux-musl`), crypt is musl's
//! `crypt_r`: MD5, SHA-256, SHA-512 and bcrypt hashes, not yescrypt; new settings are
//! SHA-512 ones (`$6$`) made here.

use std::ffi::{CStr, CString};
#[cfg(not(target_env = "musl"))]
use std::os::raw::c_ulong;
use std::os::raw::{c_char, c_int, c_void};
use std::sync::{Condvar, Mutex};

/// Size of libxcrypt's `struct crypt_data` (crypt.h: `CRYPT_DATA_INTERNAL_SIZE` and the
/// fields around it add up to 32768 octets).
const CRYPT_DATA_SIZE: usize = 32768;
/// Longest setting string `crypt_gensalt_rn` writes (crypt.h `CRYPT_GENSALT_OUTPUT_SIZE`).
#[cfg(not(target_env = "musl"))]
const GENSALT_OUTPUT_SIZE: usize = 192;

#[cfg(not(target_env = "musl"))]
#[link(name = "crypt")]
extern "C" {
    fn crypt_rn(
        phrase: *const c_char,
        setting: *const c_char,
        data: *mut c_void,
        size: c_int,
    ) -> *mut c_char;
    fn crypt_gensalt_rn(
        prefix: *const c_char,
        count: c_ulong,
        rbytes: *const c_char,
        nrbytes: c_int,
        output: *mut c_char,
        output_size: c_int,
    ) -> *mut c_char;
}

#[cfg(target_env = "musl")]
extern "C" {
    fn crypt_r(phrase: *const c_char, setting: *const c_char, data: *mut c_void) -> *mut c_char;
}

/// musl's `crypt_r` with a work area larger than its `struct crypt_data` (260 octets).
///
/// # Safety
/// As for `crypt_rn`: NUL-terminated strings and a buffer of `size` octets.
#[cfg(target_env = "musl")]
unsafe fn crypt_rn(
    phrase: *const c_char,
    setting: *const c_char,
    data: *mut c_void,
    _size: c_int,
) -> *mut c_char {
    // SAFETY: the caller's buffer is larger than musl's struct crypt_data.
    unsafe { crypt_r(phrase, setting, data) }
}

/// Hashes computed at once in a process, at most. yescrypt, Debian's default method,
/// works in 16 MiB of memory per hash: AUTH attempts spread over every lookup thread
/// would take that much per thread, and a few hundred guessing clients would make the
/// engine grow by a hundred MiB. Two keep both cores of a small host busy; further
/// checks wait their turn, which costs them no more than the cores would anyway.
pub const MAX_AT_ONCE: usize = 2;

/// Counts the hashes being computed; see [`MAX_AT_ONCE`].
struct Gate {
    busy: Mutex<usize>,
    freed: Condvar,
}

static GATE: Gate = Gate {
    busy: Mutex::new(0),
    freed: Condvar::new(),
};

/// A place among the [`MAX_AT_ONCE`] hashes computed at once, given back when dropped.
struct Turn;

impl Turn {
    fn wait() -> Turn {
        let mut busy = GATE.busy.lock().unwrap_or_else(|e| e.into_inner());
        while *busy >= MAX_AT_ONCE {
            busy = GATE.freed.wait(busy).unwrap_or_else(|e| e.into_inner());
        }
        *busy += 1;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut busy = GATE.busy.lock().unwrap_or_else(|e| e.into_inner());
        *busy = busy.saturating_sub(1);
        GATE.freed.notify_one();
    }
}

/// The hash of `phrase` with `setting` (a hash or a setting from [`gensalt`]), or `None`
/// when the setting is invalid or unsupported, or the phrase holds a NUL. The work
/// area, which holds the phrase for a while, is zeroed before it is freed.
pub fn crypt(phrase: &[u8], setting: &str) -> Option<String> {
    let phrase = CString::new(phrase).ok()?;
    let setting = CString::new(setting).ok()?;
    let turn = Turn::wait();
    let mut data = vec![0u8; CRYPT_DATA_SIZE];
    // SAFETY: both strings are NUL-terminated and live across the call; data is a
    // zeroed buffer of the size given, which crypt_rn uses as its struct crypt_data.
    let out = unsafe {
        crypt_rn(
            phrase.as_ptr(),
            setting.as_ptr(),
            data.as_mut_ptr().cast(),
            CRYPT_DATA_SIZE as c_int,
        )
    };
    let hash = if out.is_null() {
        None
    } else {
        // SAFETY: on success crypt_rn returns a NUL-terminated string inside data,
        // which is still alive here.
        let s = unsafe { CStr::from_ptr(out) };
        // libxcrypt's failure token starts with '*'; a hash never does.
        s.to_str()
            .ok()
            .filter(|h| !h.starts_with('*'))
            .map(str::to_string)
    };
    drop(turn);
    wipe(&mut data);
    let mut phrase = phrase.into_bytes();
    wipe(&mut phrase);
    hash
}

/// A new random setting for `prefix` (`"$6$"` or `"$5$"`), or SHA-512's when `None`;
/// the cost is the method's default (musl's crypt has no yescrypt).
#[cfg(target_env = "musl")]
pub fn gensalt(prefix: Option<&str>) -> Option<String> {
    const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let prefix = match prefix {
        None | Some("$6$") => "$6$",
        Some("$5$") => "$5$",
        Some(_) => return None,
    };
    let mut random = [0u8; 16];
    // SAFETY: random is a writable buffer of the length given.
    let n = unsafe { libc::getrandom(random.as_mut_ptr().cast(), random.len(), 0) };
    if n != random.len() as isize {
        return None;
    }
    let salt: String = random
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(b % 64)]))
        .collect();
    Some(format!("{prefix}{salt}"))
}

/// A new random setting for `prefix` (`"$y$"`, `"$6$"`, ...), or for the system's
/// default method (yescrypt on Debian) when `None`; the cost is the method's default.
#[cfg(not(target_env = "musl"))]
pub fn gensalt(prefix: Option<&str>) -> Option<String> {
    let prefix = match prefix {
        Some(p) => Some(CString::new(p).ok()?),
        None => None,
    };
    let mut out = vec![0u8; GENSALT_OUTPUT_SIZE];
    // SAFETY: prefix is NULL or a NUL-terminated string alive across the call; rbytes
    // NULL asks libxcrypt for random bytes itself; out is a buffer of the size given.
    let r = unsafe {
        crypt_gensalt_rn(
            prefix.as_ref().map_or(std::ptr::null(), |p| p.as_ptr()),
            0,
            std::ptr::null(),
            0,
            out.as_mut_ptr().cast(),
            GENSALT_OUTPUT_SIZE as c_int,
        )
    };
    if r.is_null() {
        return None;
    }
    // SAFETY: on success the setting is a NUL-terminated string in out.
    let s = unsafe { CStr::from_ptr(r) };
    s.to_str()
        .ok()
        .filter(|s| !s.starts_with('*'))
        .map(str::to_string)
}

/// The password hash of `user` in the shadow database (getspnam_r(3)); `Err` when the
/// database cannot be read (not root), `Ok(None)` when there is no such user.
pub fn shadow_hash(user: &str) -> std::io::Result<Option<String>> {
    let Ok(name) = CString::new(user) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: spwd is plain data, zero is a valid bit pattern for it.
        let mut sp: libc::spwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::spwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the strings in sp point into
        // buf, which outlives their use below.
        let r = unsafe {
            libc::getspnam_r(
                name.as_ptr(),
                &mut sp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if r == libc::ERANGE && buf.len() < 1 << 20 {
            let n = buf.len() * 4;
            wipe(&mut buf);
            buf = vec![0u8; n];
            continue;
        }
        let out = if r == 0 && !result.is_null() && !sp.sp_pwdp.is_null() {
            // SAFETY: on success sp_pwdp is a NUL-terminated string inside buf.
            let h = unsafe { CStr::from_ptr(sp.sp_pwdp) };
            Ok(Some(h.to_string_lossy().into_owned()))
        } else if r == 0 || r == libc::ENOENT {
            Ok(None)
        } else {
            Err(std::io::Error::from_raw_os_error(r))
        };
        wipe(&mut buf);
        return out;
    }
}

/// Overwrites a buffer that held a password or a hash before it is freed.
pub fn wipe(b: &mut [u8]) {
    for x in b.iter_mut() {
        *x = 0;
    }
    std::hint::black_box(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_made_here_verify() {
        for prefix in [None, Some("$y$"), Some("$6$"), Some("$2b$")] {
            let setting = gensalt(prefix).unwrap_or_else(|| panic!("{prefix:?}"));
            if let Some(p) = prefix {
                assert!(setting.starts_with(p), "{setting}");
            }
            let h = crypt(b"secret", &setting).unwrap();
            assert_eq!(crypt(b"secret", &h).as_deref(), Some(h.as_str()));
            assert_ne!(crypt(b"Secret", &h).as_deref(), Some(h.as_str()));
        }
    }

    #[test]
    fn hashes_are_computed_two_at_a_time_at_most() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        use std::sync::Arc;
        let now = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (now, most) = (now.clone(), most.clone());
                std::thread::spawn(move || {
                    let _turn = Turn::wait();
                    let n = now.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(n, SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    now.fetch_sub(1, SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Other tests of this process may hold a turn meanwhile: never more in all.
        assert!(most.load(SeqCst) <= MAX_AT_ONCE, "{most:?}");
        assert!(most.load(SeqCst) >= 1);
        // Hashing still works with every turn given back.
        let h = crypt(b"secret", "$6$saltsalt").unwrap();
        assert!(h.starts_with("$6$saltsalt$"), "{h}");
    }

    #[test]
    fn bad_settings_and_phrases_fail() {
        assert_eq!(crypt(b"x", "$nope$abc"), None);
        assert_eq!(crypt(b"x", "*"), None);
        assert_eq!(crypt(b"a\0b", "$6$salt"), None);
        assert_eq!(gensalt(Some("$nope$")), None);
    }

    #[test]
    fn shadow_of_a_missing_user() {
        // Root reads the database; others may get an error, never a hash.
        match shadow_hash("no-such-user-here") {
            Ok(h) => assert_eq!(h, None),
            Err(_) => assert_ne!(crate::sys::geteuid(), 0),
        }
    }
}
