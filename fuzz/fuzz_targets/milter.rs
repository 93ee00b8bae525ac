//! The milter protocol codec of the milter bridge on arbitrary bytes, as a milter
//! could send them: packets are split off a buffer in chunks of a size the first byte
//! picks, and each is decoded as an option negotiation, a response or a reply code. It
//! never panics, a packet never claims more than the buffer holds, and decoding
//! consumes exactly the bytes of whole packets.
#![no_main]

use filter_milter::milter::{next_packet, parse_optneg, parse_replycode, parse_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let mut buf = Vec::new();
    let mut taken = 0usize;
    for chunk in stream.chunks(usize::from(split) + 1) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match next_packet(&mut buf) {
                Ok(Some((command, body))) => {
                    assert_eq!(before - buf.len(), body.len() + 5, "packet length");
                    taken += body.len() + 5;
                    let _ = parse_optneg(&body);
                    let _ = parse_response(command, &body);
                    let _ = parse_replycode(&body);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
    assert!(taken + buf.len() == stream.len(), "bytes lost or made up");
});
