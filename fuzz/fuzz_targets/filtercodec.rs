//! The filter protocol's decoder on arbitrary bytes, fed in chunks of a size the first
//! byte picks: it never panics; every frame it yields encodes back to the same bytes'
//! worth (decoding the encoding gives the frame again); decisions and edits convert
//! to their owned types and back without loss.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd_filter::codec::{self, Decoder, Frame};
use smtpd_filter::{Decision, Edit};

fn check(sid: u64, f: &Frame) {
    let mut out = Vec::new();
    codec::encode(sid, f, &mut out);
    let mut again = Decoder::new();
    again.feed(&out);
    match again.next_frame() {
        Ok(Some((s, g))) => {
            assert_eq!(s, sid, "session id changed by a round trip");
            assert_eq!(&g, f, "frame changed by a round trip");
        }
        other => panic!("the encoding of {f:?} does not decode: {other:?}"),
    }
    if let Some(d) = Decision::from_frame(f) {
        assert_eq!(Decision::from_frame(&d.frame()), Some(d));
    }
    if let Some(e) = Edit::from_frame(f) {
        let mut out = Vec::new();
        e.encode(sid, &mut out);
        let mut d = Decoder::new();
        d.feed(&out);
        let back = match d.next_frame() {
            Ok(Some((_, g))) => Edit::from_frame(&g),
            _ => None,
        };
        assert_eq!(back, Some(e));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let mut d = Decoder::new();
    for chunk in stream.chunks(usize::from(split) + 1) {
        d.feed(chunk);
        loop {
            match d.next_frame() {
                Ok(Some((sid, f))) => check(sid, &f),
                Ok(None) => break,
                // After an error the stream is unusable, by contract.
                Err(_) => return,
            }
        }
        assert!(d.pending() <= stream.len());
    }
});
