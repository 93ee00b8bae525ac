//! OpenSMTPD 6's table protocol: imsg frames over the socket on the program's standard
//! input, as the `table-*` programs of opensmtpd-extras 6.x expect them (Debian 12).
//!
//! A frame is a 16-byte header (type u32, length u16 counting the header, flags u16,
//! peer id u32, pid u32) and a payload, in the host's byte order and C sizes (`int`
//! 4 bytes, `size_t` the pointer's width), packed. Requests go one at a time and each
//! gets one `OK` frame back: empty for OPEN, an `int` for UPDATE and CHECK, an `int`
//! and, when it is 1, the NUL-terminated value for LOOKUP. CHECK and LOOKUP carry the
//! service (an `int`, OpenSMTPD's bit), a count of parameters (a `size_t`, always 0
//! here) and the NUL-terminated key. (FETCH, for a relay's source addresses, is never
//! sent: those tables are read by the loop, in memory.) Pure: bytes in, bytes out.

/// Reply type: every answer of a table program.
pub const OK: u32 = 0;
/// Opens the table: `u32` version and the name in `LINE_MAX` bytes.
pub const OPEN: u32 = 2;
/// Asks the table to read its configuration and data again.
pub const UPDATE: u32 = 4;
/// Whether a key is there.
pub const CHECK: u32 = 5;
/// The value of a key.
pub const LOOKUP: u32 = 6;

/// The version OPEN announces (`PROC_TABLE_API_VERSION`).
const VERSION: u32 = 2;
/// `LINE_MAX` of glibc and OpenBSD: the size of OPEN's name field.
const NAME_FIELD: usize = 2048;
/// The header's size.
pub const HEADER: usize = 16;
/// The largest frame (`MAX_IMSGSIZE`).
pub const MAX_FRAME: usize = 16384;

/// A frame of `kind` carrying `payload`.
fn frame(kind: u32, payload: &[u8]) -> Vec<u8> {
    let len = HEADER + payload.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&(len.min(usize::from(u16::MAX)) as u16).to_ne_bytes());
    out.extend_from_slice(&0u16.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&std::process::id().to_ne_bytes());
    out.extend_from_slice(payload);
    out
}

/// OPEN for the table `name` (cut to the field, NUL-padded).
pub fn open(name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + NAME_FIELD);
    p.extend_from_slice(&VERSION.to_ne_bytes());
    let n = name.len().min(NAME_FIELD - 1);
    p.extend_from_slice(&name.as_bytes()[..n]);
    p.resize(4 + NAME_FIELD, 0);
    frame(OPEN, &p)
}

/// UPDATE.
pub fn update() -> Vec<u8> {
    frame(UPDATE, &[])
}

/// CHECK or LOOKUP of `key` for the service `bit`. `None` when the key holds a NUL or
/// the frame would be too large.
pub fn query(kind: u32, bit: u32, key: &str) -> Option<Vec<u8>> {
    if key.contains('\0') {
        return None;
    }
    let mut p = Vec::with_capacity(4 + std::mem::size_of::<usize>() + key.len() + 1);
    p.extend_from_slice(&(bit as i32).to_ne_bytes());
    p.extend_from_slice(&0usize.to_ne_bytes());
    p.extend_from_slice(key.as_bytes());
    p.push(0);
    (HEADER + p.len() <= MAX_FRAME).then(|| frame(kind, &p))
}

/// Takes one whole frame off the front of `buf`: its type and payload. `Ok(None)` when
/// more bytes are needed; an error when the header is impossible.
pub fn take(buf: &mut Vec<u8>) -> Result<Option<(u32, Vec<u8>)>, String> {
    if buf.len() < HEADER {
        return Ok(None);
    }
    let word = |at: usize| u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
    let kind = word(0);
    let len = usize::from(u16::from_ne_bytes([buf[4], buf[5]]));
    if !(HEADER..=MAX_FRAME).contains(&len) {
        return Err(format!("bad frame length {len}"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let payload = buf[HEADER..len].to_vec();
    buf.drain(..len);
    Ok(Some((kind, payload)))
}

/// The `int` answer of UPDATE or CHECK.
pub fn int(payload: &[u8]) -> Result<i32, String> {
    let b: [u8; 4] = payload
        .try_into()
        .map_err(|_| format!("answer of {} bytes, 4 expected", payload.len()))?;
    Ok(i32::from_ne_bytes(b))
}

/// The answer of LOOKUP: the `int`, and with 1 the value.
pub fn value(payload: &[u8]) -> Result<(i32, Option<String>), String> {
    let (head, rest) = payload
        .split_at_checked(4)
        .ok_or_else(|| "answer too short".to_string())?;
    let r = int(head)?;
    if r != 1 {
        if !rest.is_empty() {
            return Err("bytes after a negative answer".into());
        }
        return Ok((r, None));
    }
    match rest.split_last() {
        Some((&0, v)) if !v.contains(&0) => Ok((1, Some(String::from_utf8_lossy(v).into_owned()))),
        _ => Err("value not NUL-terminated".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(f: &[u8]) -> (u32, usize) {
        (
            u32::from_ne_bytes([f[0], f[1], f[2], f[3]]),
            usize::from(u16::from_ne_bytes([f[4], f[5]])),
        )
    }

    #[test]
    fn requests_have_the_c_layout() {
        let o = open("creds");
        assert_eq!(header(&o), (OPEN, 16 + 4 + 2048));
        assert_eq!(o.len(), 16 + 4 + 2048);
        assert_eq!(&o[16..20], &2u32.to_ne_bytes());
        assert_eq!(&o[20..26], b"creds\0");
        let q = query(LOOKUP, 0x4, "bob").unwrap_or_default();
        let sz = std::mem::size_of::<usize>();
        assert_eq!(header(&q), (LOOKUP, 16 + 4 + sz + 4));
        assert_eq!(&q[16..20], &4i32.to_ne_bytes());
        assert_eq!(&q[20..20 + sz], &vec![0u8; sz][..]);
        assert_eq!(&q[20 + sz..], b"bob\0");
        assert_eq!(header(&update()), (UPDATE, 16));
        assert_eq!(query(CHECK, 2, "a\0b"), None);
        assert_eq!(query(CHECK, 2, &"x".repeat(MAX_FRAME)), None);
    }

    #[test]
    fn answers_are_read_whole_and_strictly() {
        let mut ok = frame(OK, &1i32.to_ne_bytes());
        let mut v = 1i32.to_ne_bytes().to_vec();
        v.extend_from_slice(b"bob@example.org, carol@example.org\0");
        ok.extend_from_slice(&frame(OK, &v));
        // Fed a byte at a time, both frames come out, in order.
        let mut buf = Vec::new();
        let mut got = Vec::new();
        for b in ok {
            buf.push(b);
            if let Ok(Some(f)) = take(&mut buf) {
                got.push(f);
            }
        }
        assert!(buf.is_empty());
        assert_eq!(got.len(), 2);
        assert_eq!(int(&got[0].1), Ok(1));
        assert_eq!(
            value(&got[1].1),
            Ok((1, Some("bob@example.org, carol@example.org".into())))
        );
        assert_eq!(value(&0i32.to_ne_bytes()), Ok((0, None)));
        assert_eq!(value(&(-1i32).to_ne_bytes()), Ok((-1, None)));
        let mut unterminated = 1i32.to_ne_bytes().to_vec();
        unterminated.extend_from_slice(b"x");
        assert!(value(&unterminated).is_err());
        unterminated.extend_from_slice(b"\0y\0");
        assert!(value(&unterminated).is_err());
        assert!(int(&[1, 0]).is_err());
        let mut bad = frame(OK, &[]);
        bad[4..6].copy_from_slice(&3u16.to_ne_bytes());
        assert!(take(&mut bad).is_err());
    }
}
