//! The UTF-8 address parser and the IDNA conversions on arbitrary input: nothing may
//! panic; an address the parser takes passes the crate's validators, and its domain
//! converts to A-labels and back to itself; punycode decodes what it encoded; a table
//! finds a key it holds, in either form of its domain.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::mail::address::{parse_address, valid_domain, valid_utf8_domain, valid_utf8_local};
use smtpd::mail::idna;
use smtpd::table::Entries;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(p) = idna::encode(s) {
        assert_eq!(idna::decode(&p).as_deref(), Some(s), "punycode of {s:?}: {p:?}");
    }
    if let Some(u) = idna::decode(s) {
        let again = idna::encode(&u).and_then(|p| idna::decode(&p));
        assert_eq!(again.as_deref(), Some(u.as_str()), "decoded {s:?}");
    }
    if let Some(a) = idna::to_ascii(s) {
        assert!(a.is_ascii(), "to_ascii({s:?}) = {a:?}");
        assert_eq!(idna::to_ascii(&a).as_deref(), Some(a.as_str()));
        assert!(idna::same_domain(s, &a), "{s:?} and {a:?}");
    }
    let _ = idna::to_unicode(s);
    let _ = idna::other_form(s);
    if let Some(m) = parse_address(s, true) {
        if m.is_null() || m.domain.is_empty() {
            return;
        }
        assert!(valid_utf8_local(&m.local), "local part {:?}", m.local);
        assert!(valid_utf8_domain(&m.domain), "domain {:?}", m.domain);
        let a = idna::to_ascii(&m.domain);
        let a = a.unwrap_or_else(|| panic!("domain {:?} has no A-labels", m.domain));
        assert!(valid_domain(&a), "A-labels {a:?} of {:?}", m.domain);
        if !m.domain.starts_with('[') {
            // Back to U-labels: the domain's own U-label form, whichever form it
            // was given in (an A-label such as xn--fffh1aabaojj comes back decoded).
            assert_eq!(idna::to_unicode(&a), idna::to_unicode(&m.domain), "{a:?}");
        }
        let key = m.to_string();
        let t = Entries::new(vec![(key.clone(), "v".into())]);
        assert_eq!(t.get(&key), Some("v"), "{key:?}");
        assert_eq!(t.get(&format!("{}@{a}", m.local)), Some("v"), "{key:?} as {a:?}");
    }
});
