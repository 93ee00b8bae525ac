//! The subject of an X.509 certificate (RFC 5280 §4.1.2.6) as one line, the way
//! OpenSSL prints it (`/C=XX/O=Org/CN=name`, for logs and the Received header), or as
//! an RFC 4514 string (`CN=name,O=Org,C=XX`, for filters): read from the DER bytes
//! with a small reader that never trusts a length. The same reader finds the subject
//! public key info for DANE (`spki`). The certificate comes from a peer: a bad
//! encoding only yields `None`.

/// One DER element at the start of `input`: its tag, its contents and what follows
/// it; `None` when a length runs past the input or takes more than 4 octets. Also used
/// by filter-dkim for the keys it reads and publishes.
pub fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The contents of the element at the start of `input` if it has `tag`.
fn expect(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    match element(input)? {
        (t, body, rest) if t == tag => Some((body, rest)),
        _ => None,
    }
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// Short names of the attribute types OpenSSL abbreviates.
const NAMES: &[(&[u8], &str)] = &[
    (&[0x55, 0x04, 0x03], "CN"),
    (&[0x55, 0x04, 0x05], "serialNumber"),
    (&[0x55, 0x04, 0x06], "C"),
    (&[0x55, 0x04, 0x07], "L"),
    (&[0x55, 0x04, 0x08], "ST"),
    (&[0x55, 0x04, 0x0a], "O"),
    (&[0x55, 0x04, 0x0b], "OU"),
    (
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
        "DC",
    ),
    (
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
        "emailAddress",
    ),
];

/// An object identifier in dotted form.
fn dotted(oid: &[u8]) -> String {
    let mut parts: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    for &b in oid {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            parts.push(v);
            v = 0;
        }
    }
    let mut out = String::new();
    if let Some(&first) = parts.first() {
        let (a, b) = match first {
            0..=39 => (0, first),
            40..=79 => (1, first - 40),
            _ => (2, first - 80),
        };
        out = format!("{a}.{b}");
    }
    for p in parts.iter().skip(1) {
        out.push_str(&format!(".{p}"));
    }
    out
}

/// A directory string's value, decoded.
fn text(tag: u8, bytes: &[u8]) -> String {
    match tag {
        // BMPString: UTF-16 big-endian.
        0x1e => {
            let units: Vec<u16> = bytes
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// A value as OpenSSL's one line shows it: control characters and backslashes escaped.
fn oneline_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() || c == '\\' {
            for b in c.to_string().bytes() {
                out.push_str(&format!("\\x{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A value as RFC 4514 §2.4 escapes it: the special characters with a backslash, a
/// leading `#` or space and a trailing space too, control characters as `\XX` hex.
fn rfc4514_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            c if c.is_control() => {
                for b in c.to_string().bytes() {
                    out.push_str(&format!("\\{b:02X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// The fields of a DER certificate's TBSCertificate from its subject on (subject,
/// subjectPublicKeyInfo, ...); `None` when it does not parse.
fn from_subject(cert: &[u8]) -> Option<&[u8]> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    // [0] version, optional.
    let tbs = match element(tbs)? {
        (0xa0, _, rest) => rest,
        _ => tbs,
    };
    // Serial number, signature algorithm, issuer, validity.
    let mut rest = tbs;
    for _ in 0..4 {
        rest = element(rest)?.2;
    }
    Some(rest)
}

/// The SubjectPublicKeyInfo of a DER certificate, whole (its SEQUENCE tag and length
/// included), as DANE's selector 1 hashes it (RFC 6698 §2.1.2); `None` when it does
/// not parse.
pub fn spki(cert: &[u8]) -> Option<&[u8]> {
    let rest = element(from_subject(cert)?)?.2;
    let (tag, _, after) = element(rest)?;
    (tag == SEQUENCE).then(|| &rest[..rest.len() - after.len()])
}

/// The relative distinguished names of a DER certificate's subject, in the order of
/// the certificate, each a list of (type name, value); `None` when it does not parse.
fn subject_rdns(cert: &[u8]) -> Option<Vec<Vec<(String, String)>>> {
    let (mut rdns, _) = expect(from_subject(cert)?, SEQUENCE)?;
    let mut out = Vec::new();
    while !rdns.is_empty() {
        let (mut set, next) = expect(rdns, SET)?;
        rdns = next;
        let mut rdn = Vec::new();
        while !set.is_empty() {
            let (attr, next) = expect(set, SEQUENCE)?;
            set = next;
            let (oid, rest) = expect(attr, OID)?;
            let (tag, v, _) = element(rest)?;
            let name = NAMES
                .iter()
                .find(|(o, _)| *o == oid)
                .map_or_else(|| dotted(oid), |(_, n)| (*n).to_string());
            rdn.push((name, text(tag, v)));
        }
        out.push(rdn);
    }
    Some(out)
}

/// The subject of a DER certificate as `/TYPE=value/...`; `None` when it does not
/// parse.
pub fn subject_line(cert: &[u8]) -> Option<String> {
    let mut out = String::new();
    for (name, v) in subject_rdns(cert)?.iter().flatten() {
        out.push_str(&format!("/{name}={}", oneline_value(v)));
    }
    Some(out)
}

/// The subject of a DER certificate as an RFC 4514 string: the last RDN first, RDNs
/// joined by `,`, the values of one by `+`; `None` when it does not parse.
pub fn subject_rfc4514(cert: &[u8]) -> Option<String> {
    let rdns: Vec<String> = subject_rdns(cert)?
        .iter()
        .rev()
        .map(|rdn| {
            let parts: Vec<String> = rdn
                .iter()
                .map(|(name, v)| format!("{name}={}", rfc4514_value(v)))
                .collect();
            parts.join("+")
        })
        .collect();
    Some(rdns.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A DER element.
    fn der(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if body.len() < 0x80 {
            v.push(body.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(body);
        v
    }

    fn attr(oid: &[u8], tag: u8, value: &[u8]) -> Vec<u8> {
        let mut a = der(OID, oid);
        a.extend(der(tag, value));
        der(SET, &der(SEQUENCE, &a))
    }

    fn cert(subject: &[u8]) -> Vec<u8> {
        let mut tbs = der(0xa0, &der(0x02, &[2]));
        tbs.extend(der(0x02, &[1, 2, 3]));
        tbs.extend(der(SEQUENCE, &der(OID, &[0x2a, 0x86, 0x48])));
        tbs.extend(der(SEQUENCE, &attr(&[0x55, 4, 3], 0x0c, b"Issuer")));
        tbs.extend(der(SEQUENCE, &[]));
        tbs.extend(der(SEQUENCE, subject));
        tbs.extend(der(SEQUENCE, &[0; 200]));
        let mut c = der(SEQUENCE, &tbs);
        c.extend(der(SEQUENCE, &[]));
        der(SEQUENCE, &c)
    }

    #[test]
    fn subjects() {
        let mut s = attr(&[0x55, 4, 6], 0x13, b"XX");
        s.extend(attr(&[0x55, 4, 10], 0x0c, b"Test Org"));
        s.extend(attr(&[0x55, 4, 3], 0x0c, b"client.test"));
        s.extend(attr(&[0x2b, 6, 1, 4, 1, 0x82, 0x37], 0x0c, b"a\nb\\"));
        s.extend(attr(&[0x55, 4, 11], 0x1e, &[0, b'U', 0, b'n']));
        assert_eq!(
            subject_line(&cert(&s)).as_deref(),
            Some("/C=XX/O=Test Org/CN=client.test/1.3.6.1.4.1.311=a\\x0Ab\\x5C/OU=Un")
        );
        assert_eq!(subject_line(&cert(&[])).as_deref(), Some(""));
        assert_eq!(
            subject_rfc4514(&cert(&s)).as_deref(),
            Some("OU=Un,1.3.6.1.4.1.311=a\\0Ab\\\\,CN=client.test,O=Test Org,C=XX")
        );
        let s = attr(&[0x55, 4, 3], 0x0c, b" #a,b+c ");
        assert_eq!(
            subject_rfc4514(&cert(&s)).as_deref(),
            Some("CN=\\ #a\\,b\\+c\\ ")
        );
    }

    #[test]
    fn public_key_info() {
        let c = cert(&attr(&[0x55, 4, 3], 0x0c, b"x"));
        // The test certificate's SubjectPublicKeyInfo is a SEQUENCE of 200 zeros.
        let want = der(SEQUENCE, &[0; 200]);
        assert_eq!(spki(&c), Some(&want[..]));
        for n in 0..c.len() {
            let _ = spki(&c[..n]);
        }
        assert_eq!(spki(b""), None);
    }

    #[test]
    fn bad_encodings_are_none() {
        let good = cert(&attr(&[0x55, 4, 3], 0x0c, b"x"));
        for n in 0..good.len() {
            // Every truncation parses to None or to something, never panics.
            let _ = subject_line(&good[..n]);
        }
        assert_eq!(subject_line(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(subject_line(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(subject_line(b""), None);
    }
}
