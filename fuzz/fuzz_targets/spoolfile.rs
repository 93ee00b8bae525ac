//! A spool message file read back: its trailer and its block of envelopes, from arbitrary
//! bytes. Nothing may panic, a trailer accepted must describe the file exactly, and the
//! envelopes accepted must survive an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::queue::spool::{decode_envelopes, encode_envelopes, parse_trailer, TRAILER_LEN};

fuzz_target!(|data: &[u8]| {
    let mut block = data;
    if data.len() >= TRAILER_LEN {
        let (head, trailer) = data.split_at(data.len() - TRAILER_LEN);
        if let Ok((len, env_len)) = parse_trailer(trailer, data.len() as u64) {
            assert_eq!(
                len as usize + env_len,
                head.len(),
                "trailer does not add up"
            );
            block = &head[len as usize..];
        }
    }
    let Ok(envs) = decode_envelopes(block) else {
        return;
    };
    let again = decode_envelopes(&encode_envelopes(&envs))
        .unwrap_or_else(|e| panic!("re-decoding encoded envelopes failed: {e}"));
    assert_eq!(again, envs, "round trip changed the envelopes");
});
