//! `Envelope::decode` on arbitrary bytes: it must never panic, and whatever it accepts
//! must survive an encode/decode round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::queue::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    let Ok(e) = Envelope::decode(data) else {
        return;
    };
    let text = e.encode();
    match Envelope::decode(text.as_bytes()) {
        Ok(again) => assert_eq!(
            again, e,
            "round trip changed the envelope; encoded:\n{text}"
        ),
        Err(err) => panic!("re-decoding an encoded envelope failed: {err}; encoded:\n{text}"),
    }
    // Encoding is canonical: a second round gives the same text.
    assert_eq!(
        Envelope::decode(text.as_bytes()).map(|e| e.encode()),
        Ok(text)
    );
});
