//! What a binary filter drops at the start of its input: the configuration lines of
//! OpenSMTPD's protocol.

/// Drops the configuration lines of OpenSMTPD's protocol at the start of what the
/// daemon sends: a daemon that heard nothing from a filter for a second takes it for one
/// of OpenSMTPD's and sends them (smtpd-filters(7), "OpenSMTPD filters"). They start
/// with `c`, a frame with a zero byte, and all come before READY.
#[derive(Debug, Default)]
pub struct Preamble {
    buf: Vec<u8>,
    done: bool,
}

impl Preamble {
    /// Takes bytes read from the daemon; returns those to decode.
    pub fn filter<'a>(&'a mut self, input: &'a [u8]) -> &'a [u8] {
        if self.done {
            return input;
        }
        self.buf.extend_from_slice(input);
        let mut start = 0;
        while self.buf.get(start) == Some(&b'c') {
            match self.buf[start..].iter().position(|&b| b == b'\n') {
                Some(i) => start += i + 1,
                None => break,
            }
        }
        if start == self.buf.len() || self.buf[start] == b'c' {
            self.buf.drain(..start);
            return &[];
        }
        self.done = true;
        &self.buf[start..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{encode, Frame, VERSION};

    #[test]
    fn configuration_lines_before_the_first_frame_are_dropped() {
        let mut ready = Vec::new();
        encode(
            0,
            &Frame::Ready {
                version: VERSION,
                max_frame: 4096,
                timeout_ms: 1,
            },
            &mut ready,
        );
        let mut wire = b"config|smtpd-version|1\nconfig|protocol|0.7\nconfig|ready\n".to_vec();
        wire.extend_from_slice(&ready);
        // Split at every byte.
        for cut in 0..wire.len() {
            let mut p = Preamble::default();
            let mut got = p.filter(&wire[..cut]).to_vec();
            got.extend_from_slice(p.filter(&wire[cut..]));
            assert_eq!(got, ready, "cut at {cut}");
        }
        let mut p = Preamble::default();
        assert_eq!(p.filter(&ready), &ready[..]);
        assert_eq!(p.filter(b"config|x\n"), b"config|x\n");
    }
}
