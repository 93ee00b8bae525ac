//! `proxy::parse` on arbitrary bytes: it must never panic, and its verdicts must be
//! those of a reader fed the same bytes in pieces.
//!
//! - A header is at most the bytes given and at most `MAX_HEADER` (a v1 line at most
//!   `V1_MAX`), and the same header is read from exactly its own octets, whatever
//!   follows them; any shorter prefix asks for more.
//! - "More" is never the answer once `MAX_HEADER` octets are there, and a prefix of
//!   input that asks for more asks for more.
//! - A verdict on a prefix (a header or a refusal) stands for the whole input: the
//!   first byte picks the prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::proxy::{parse, MAX_HEADER, V1_MAX};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    match &whole {
        Ok(Some((n, h))) => {
            let n = *n;
            assert!(n <= data.len() && n <= MAX_HEADER, "header of {n} octets");
            if h.version == 1 {
                assert!(n <= V1_MAX, "v1 header of {n} octets");
            }
            assert_eq!(parse(&data[..n]), whole, "the header alone");
            for k in [0, n / 2, n.saturating_sub(1)] {
                if k < n {
                    assert_eq!(parse(&data[..k]), Ok(None), "prefix of {k} of {n}");
                }
            }
        }
        Ok(None) => {
            assert!(data.len() < MAX_HEADER, "no verdict on {} octets", data.len());
            if let Some(last) = data.len().checked_sub(1) {
                assert_eq!(parse(&data[..last]), Ok(None), "a shorter prefix");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    let Some(&pick) = data.first() else {
        return;
    };
    let k = usize::from(pick) * data.len() / 256;
    match parse(&data[..k]) {
        Ok(None) => {}
        Ok(Some(h)) => assert_eq!(whole, Ok(Some(h)), "a header read from {k} octets"),
        Err(e) => assert_eq!(whole, Err(e), "a refusal on {k} octets"),
    }
});
