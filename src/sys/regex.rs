//! POSIX extended regular expressions through the C library's regcomp(3) and
//! regexec(3), as OpenSMTPD matches its `regex` conditions, behind a safe type.
//!
//! A pattern that starts with `(?i)` is compared without regard to case (that prefix
//! is OpenSMTPD's, not POSIX's, and is taken off before compiling). Matching is a
//! search: the pattern may match anywhere in the string unless it is anchored with
//! `^` and `$`.

use std::ffi::{CStr, CString};
use std::fmt;
use std::os::raw::c_char;

/// A compiled regular expression.
pub struct Regex {
    /// The compiled form; boxed so that its address never changes (glibc keeps
    /// pointers into it).
    re: Box<libc::regex_t>,
    /// The pattern as written, `(?i)` included.
    pattern: String,
}

// SAFETY: a compiled regex_t is only read by regexec(3), which POSIX makes safe to call
// from several threads at once on one compiled expression (glibc takes the
// expression's own lock inside); it is freed once, by Drop, when nothing else holds it.
unsafe impl Send for Regex {}
// SAFETY: see above: `is_match` only reads the compiled expression through regexec.
unsafe impl Sync for Regex {}

impl Regex {
    /// Compiles `pattern` as a POSIX extended regular expression; the error is the C
    /// library's message.
    pub fn new(pattern: &str) -> Result<Regex, String> {
        let (body, icase) = match pattern.strip_prefix("(?i)") {
            Some(rest) => (rest, true),
            None => (pattern, false),
        };
        let c = CString::new(body).map_err(|_| "a NUL character in the pattern".to_string())?;
        let mut flags = libc::REG_EXTENDED | libc::REG_NOSUB;
        if icase {
            flags |= libc::REG_ICASE;
        }
        // SAFETY: regex_t is plain data that regcomp fills in; all-zero is a valid
        // starting value for it.
        let mut re: Box<libc::regex_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `re` points to writable memory of the right type, `c` is a valid
        // NUL-terminated string that outlives the call.
        let rc = unsafe { libc::regcomp(&mut *re, c.as_ptr(), flags) };
        if rc != 0 {
            let mut buf = [0 as c_char; 256];
            // SAFETY: regerror writes at most `buf.len()` bytes, NUL-terminated, into
            // `buf`; `re` is the expression regcomp just failed on, which regerror may
            // read. A failed regcomp leaves nothing to free.
            unsafe { libc::regerror(rc, &*re, buf.as_mut_ptr(), buf.len()) };
            // SAFETY: regerror NUL-terminated what it wrote into `buf`.
            let msg = unsafe { CStr::from_ptr(buf.as_ptr()) };
            return Err(msg.to_string_lossy().into_owned());
        }
        Ok(Regex {
            re,
            pattern: pattern.to_string(),
        })
    }

    /// Whether the expression matches somewhere in `s`. A string holding a NUL
    /// character never matches.
    pub fn is_match(&self, s: &str) -> bool {
        let Ok(c) = CString::new(s) else {
            return false;
        };
        // SAFETY: `self.re` was compiled by regcomp and is freed only by Drop; with
        // REG_NOSUB no match array is written (nmatch 0, pmatch null); `c` is a valid
        // NUL-terminated string that outlives the call.
        unsafe { libc::regexec(&*self.re, c.as_ptr(), 0, std::ptr::null_mut(), 0) == 0 }
    }

    /// The pattern as written.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl Drop for Regex {
    fn drop(&mut self) {
        // SAFETY: `self.re` was compiled successfully (a failed compilation never makes
        // a `Regex`), and this is the only place it is freed.
        unsafe { libc::regfree(&mut *self.re) };
    }
}

impl fmt::Debug for Regex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Regex({:?})", self.pattern)
    }
}

impl PartialEq for Regex {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for Regex {}

#[cfg(test)]
mod tests {
    use super::Regex;

    #[test]
    fn extended_syntax_search_and_case() {
        let re = Regex::new("^(alice|bob)\\+[a-z]+@example\\.(org|net)$").unwrap();
        assert!(re.is_match("alice+lists@example.org"));
        assert!(!re.is_match("Alice+lists@example.org"));
        assert!(!re.is_match("carol+x@example.org"));
        // A search: unanchored patterns match anywhere.
        assert!(Regex::new("spam").unwrap().is_match("xxspamxx"));
        let ci = Regex::new("(?i)^ALICE@").unwrap();
        assert!(ci.is_match("alice@example.org"));
        assert_eq!(ci.pattern(), "(?i)^ALICE@");
        assert!(!ci.is_match("x\0alice@"));
        // GNU's class escapes keep their case meaning.
        let s = Regex::new("^\\S+$").unwrap();
        assert!(s.is_match("abc"));
        assert!(!s.is_match("a c"));
    }

    #[test]
    fn errors_are_the_c_library_s() {
        let e = Regex::new("a(b").unwrap_err();
        assert!(!e.is_empty(), "{e}");
        assert!(Regex::new("a[").is_err());
        assert!(Regex::new("a\0b").is_err());
    }

    #[test]
    fn shared_across_threads() {
        let re = std::sync::Arc::new(Regex::new("^[0-9]+$").unwrap());
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let re = re.clone();
                std::thread::spawn(move || (0..200).all(|n| re.is_match(&format!("{i}{n}"))))
            })
            .collect();
        for h in handles {
            assert!(h.join().unwrap_or(false));
        }
    }
}
