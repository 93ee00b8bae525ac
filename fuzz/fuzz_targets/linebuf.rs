//! `LineBuf` against a reference splitter.
//!
//! Input: `cap:u16le max_a:u16le max_b:u16le seed:u16le` then the stream. The stream is
//! fed in chunk sizes drawn from `seed`; after each read every available line is taken,
//! as `smtp::conn` does. The reference splits the stream at CR LF only; each `Complete`
//! must be the next reference line (bare flag = holds a CR or LF), each `TooLong` must
//! stand for the next reference line and that line must really be too long (over the
//! max in force, or too big for the buffer), and once the whole stream is read every
//! CR LF-terminated line has been reported exactly once.
//!
//! When the high bit of the seed's last byte is set, the stream is read as message
//! content with `next_text` instead: the pieces of each line, joined, must be the next
//! reference line, only the first piece says `first` and only the last says `last`, no
//! piece is larger than the buffer, and the bare flags together tell whether the line
//! holds a CR or LF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::linebuf::{Line, LineBuf, Text};

struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        // xorshift32; the state is never 0.
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

/// The stream split at every CR LF: (terminated lines, unterminated tail).
fn reference(input: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < input.len() {
        if input[i] == b'\r' && input[i + 1] == b'\n' {
            lines.push(&input[start..i]);
            start = i + 2;
            i += 2;
        } else {
            i += 1;
        }
    }
    (lines, &input[start..])
}

fn u16le(b: &[u8]) -> usize {
    usize::from(u16::from_le_bytes([b[0], b[1]]))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    // At least 2: `LineBuf::space` compacts only while the free tail is under half the
    // buffer, so a 1-byte buffer never compacts once its byte was taken, and stalls.
    let cap = 2 + u16le(&data[0..2]) % 2047;
    let max_a = u16le(&data[2..4]) % (cap + 64);
    let max_b = u16le(&data[4..6]) % (cap + 64);
    let mut rng = Rng(u32::from(u16::from_le_bytes([data[6], data[7]])) | 0x1_0000);
    let input = &data[8..];
    if data[7] & 0x80 != 0 {
        return content(input, cap, &mut rng);
    }

    let (lines, tail) = reference(input);
    let min_max = max_a.min(max_b);
    let mut lb = LineBuf::new(cap);
    let mut pos = 0; // bytes of input handed to the buffer
    let mut seen = 0; // reference lines accounted for
    let mut tail_reported = false;

    loop {
        // Take every line that is there, switching between the two limits the way the
        // glue switches between command and text limits.
        loop {
            let max = if rng.next() & 1 == 0 { max_a } else { max_b };
            let line = lb.next_line(max);
            let done = matches!(line, Line::Partial);
            match line {
                Line::Partial => {}
                Line::Complete { bytes, bare } => {
                    assert!(
                        bytes.len() <= max,
                        "line of {} bytes over max {max}",
                        bytes.len()
                    );
                    assert!(
                        !bytes.windows(2).any(|w| w == b"\r\n"),
                        "Complete line holds CR LF: {bytes:?}"
                    );
                    assert!(
                        seen < lines.len(),
                        "Complete line {bytes:?} beyond the input's CR LFs"
                    );
                    assert_eq!(bytes, lines[seen], "line {seen} differs from the reference");
                    let want_bare = bytes.iter().any(|&b| b == b'\r' || b == b'\n');
                    assert_eq!(bare, want_bare, "bare flag of line {seen} {bytes:?}");
                    seen += 1;
                }
                Line::TooLong => {
                    let (len, what) = if seen < lines.len() {
                        (lines[seen].len(), "line")
                    } else {
                        assert!(!tail_reported, "two TooLong for the unterminated tail");
                        tail_reported = true;
                        (tail.len(), "unterminated tail")
                    };
                    assert!(
                        len > min_max || len + 1 >= cap,
                        "TooLong for {what} {seen} of {len} bytes (max {min_max}, cap {cap})"
                    );
                    if seen < lines.len() {
                        seen += 1;
                    }
                }
            }
            if done {
                break;
            }
        }
        if pos == input.len() {
            break;
        }
        pos += read(&mut lb, &input[pos..], cap, &mut rng);
    }
    // Everything was read and drained: every terminated line has been reported.
    assert_eq!(
        seen,
        lines.len(),
        "terminated lines not reported (cap {cap}, max {max_a}/{max_b})"
    );
});

/// One read of 1..=cap bytes (often small, sometimes a whole buffer); returns the count.
fn read(lb: &mut LineBuf, input: &[u8], cap: usize, rng: &mut Rng) -> usize {
    let want = match rng.next() % 4 {
        0 => 1 + rng.next() as usize % 4,
        1 => 1 + rng.next() as usize % 32,
        _ => 1 + rng.next() as usize % cap,
    };
    let space = lb.space();
    assert!(
        !space.is_empty(),
        "no space to read into, yet no line to take"
    );
    let n = space.len().min(want).min(input.len());
    space[..n].copy_from_slice(&input[..n]);
    lb.filled(n);
    assert!(lb.pending() <= cap);
    n
}

/// The stream read as message content with `next_text`.
fn content(input: &[u8], cap: usize, rng: &mut Rng) {
    let (lines, tail) = reference(input);
    let mut lb = LineBuf::new(cap);
    let mut pos = 0;
    let mut seen = 0;
    let mut line = Vec::new();
    let mut bad = false;
    let mut in_line = false;
    loop {
        while let Text::Piece {
            bytes,
            first,
            last,
            bare,
        } = lb.next_text()
        {
            assert!(bytes.len() <= cap, "piece larger than the buffer");
            assert_eq!(first, !in_line, "first flag of a piece of line {seen}");
            line.extend_from_slice(bytes);
            // A piece that does not end its line may belong to the unterminated tail.
            let whole = lines.get(seen).copied().unwrap_or(tail);
            assert!(
                whole.starts_with(&line),
                "pieces of line {seen} differ from the reference"
            );
            assert!(
                seen < lines.len() || !last,
                "a line end beyond the input's CR LFs"
            );
            bad |= bare;
            in_line = !last;
            if last {
                assert_eq!(line, lines[seen], "line {seen} differs from the reference");
                let want_bare = line.iter().any(|&b| b == b'\r' || b == b'\n');
                assert_eq!(bad, want_bare, "bare flags of line {seen}");
                line.clear();
                bad = false;
                seen += 1;
            } else {
                assert!(!bytes.is_empty(), "empty piece that does not end its line");
            }
        }
        if pos == input.len() {
            break;
        }
        pos += read(&mut lb, &input[pos..], cap, rng);
    }
    assert_eq!(
        seen,
        lines.len(),
        "terminated lines not reported (cap {cap})"
    );
}
