//! Base64 (RFC 4648 §4) as DKIM uses it: `b=`, `bh=` and `p=` values. Decoding skips
//! folding white space (RFC 6376 §3.5: FWS may appear anywhere in a base64 value).

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Appends the base64 form of `data` to `out`, padded.
pub fn encode_into(data: &[u8], out: &mut String) {
    out.reserve(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
}

/// The base64 form of `data`, padded.
pub fn encode(data: &[u8]) -> String {
    let mut s = String::new();
    encode_into(data, &mut s);
    s
}

fn value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    } as u32)
}

/// Decodes `text`, ignoring space, tab, CR and LF; `None` for any other character
/// outside the alphabet, padding in the middle, or a length that is not whole.
pub fn decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits, mut pad) = (0u32, 0u32, 0usize);
    for &c in text {
        if matches!(c, b' ' | b'\t' | b'\r' | b'\n') {
            continue;
        }
        if c == b'=' {
            pad += 1;
            continue;
        }
        if pad > 0 {
            return None;
        }
        acc = (acc << 6) | value(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Leftover bits must be the zero padding of a whole final group.
    let whole = match bits {
        0 => pad == 0,
        2 => pad <= 1 && acc == 0,
        4 => pad <= 2 && acc == 0,
        _ => false,
    };
    whole.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        let v: [(&str, &str); 7] = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, b64) in v {
            assert_eq!(encode(plain.as_bytes()), b64);
            assert_eq!(decode(b64.as_bytes()).as_deref(), Some(plain.as_bytes()));
        }
    }

    #[test]
    fn folding_white_space_is_skipped_and_garbage_refused() {
        assert_eq!(decode(b"Zm9v\r\n\tYmFy").as_deref(), Some(&b"foobar"[..]));
        assert_eq!(decode(b"Zm 9v Yg = ="), Some(b"foob".to_vec()));
        assert_eq!(decode(b"Zm9v!"), None);
        assert_eq!(decode(b"Zg==Zg=="), None);
        assert_eq!(decode(b"Z"), None);
        // Non-zero padding bits.
        assert_eq!(decode(b"Zh=="), None);
    }
}
