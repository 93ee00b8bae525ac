//! Internationalized domain names: the punycode of RFC 3492 and the two forms of a
//! label (RFC 5890): the U-label as written (`bücher`) and the A-label of the DNS
//! (`xn--bcher-kva`).
//!
//! Two names of one domain compare equal in their A-label form, lower-cased
//! ([`to_ascii`], [`same_domain`]): that is how tables, rules and the DNS see a
//! domain. A U-label is lower-cased (Unicode's mapping) before it is encoded. There is
//! no Unicode normalization (std has no tables for it): a name and the key it should
//! match must use the same composed or decomposed form. An A-label counts as one only
//! when it decodes and encodes back to itself.

/// RFC 3492 §5: the parameters of punycode.
const BASE: u32 = 36;
const TMIN: u32 = 1;
const TMAX: u32 = 26;
const SKEW: u32 = 38;
const DAMP: u32 = 700;
const INITIAL_BIAS: u32 = 72;
const INITIAL_N: u32 = 128;

/// The prefix of an A-label (RFC 5890 §2.3.2.1), lower-case.
const ACE: &str = "xn--";
/// Octets in a label (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;
/// Octets in a domain name; RFC 5321 §4.5.3.1.2 allows 255.
const MAX_NAME: usize = 255;

/// RFC 3492 §6.1.
fn adapt(delta: u32, points: u32, first: bool) -> u32 {
    let mut delta = if first { delta / DAMP } else { delta / 2 };
    delta += delta / points;
    let mut k = 0;
    while delta > ((BASE - TMIN) * TMAX) / 2 {
        delta /= BASE - TMIN;
        k += BASE;
    }
    k + (BASE - TMIN + 1) * delta / (delta + SKEW)
}

/// The threshold of digit position `k` (RFC 3492 §6.2, §6.3).
fn threshold(k: u32, bias: u32) -> u32 {
    if k <= bias {
        TMIN
    } else if k >= bias + TMAX {
        TMAX
    } else {
        k - bias
    }
}

/// The basic code point of digit `d` (0..36), lower-case.
fn digit_char(d: u32) -> char {
    match d {
        0..=25 => char::from(b'a' + d as u8),
        _ => char::from(b'0' + (d - 26) as u8),
    }
}

/// The value of a basic code point as a digit.
fn digit_value(b: u8) -> Option<u32> {
    match b {
        b'a'..=b'z' => Some(u32::from(b - b'a')),
        b'A'..=b'Z' => Some(u32::from(b - b'A')),
        b'0'..=b'9' => Some(u32::from(b - b'0') + 26),
        _ => None,
    }
}

/// Punycode of `input` (RFC 3492 §6.3), without the `xn--` prefix; `None` on
/// overflow.
pub fn encode(input: &str) -> Option<String> {
    let points: Vec<u32> = input.chars().map(u32::from).collect();
    let mut out: String = input.chars().filter(char::is_ascii).collect();
    let basic = out.len() as u32;
    if basic > 0 {
        out.push('-');
    }
    let (mut n, mut delta, mut bias, mut handled) = (INITIAL_N, 0u32, INITIAL_BIAS, basic);
    while (handled as usize) < points.len() {
        let m = points.iter().copied().filter(|&c| c >= n).min()?;
        delta = delta.checked_add((m - n).checked_mul(handled + 1)?)?;
        n = m;
        for &c in &points {
            if c < n {
                delta = delta.checked_add(1)?;
            } else if c == n {
                let mut q = delta;
                let mut k = BASE;
                loop {
                    let t = threshold(k, bias);
                    if q < t {
                        break;
                    }
                    out.push(digit_char(t + (q - t) % (BASE - t)));
                    q = (q - t) / (BASE - t);
                    k += BASE;
                }
                out.push(digit_char(q));
                bias = adapt(delta, handled + 1, handled == basic);
                delta = 0;
                handled += 1;
            }
        }
        delta = delta.checked_add(1)?;
        n = n.checked_add(1)?;
    }
    Some(out)
}

/// The code points that punycode `input` (without `xn--`) stands for (RFC 3492
/// §6.2); `None` when it is not valid punycode.
pub fn decode(input: &str) -> Option<String> {
    if !input.is_ascii() {
        return None;
    }
    let (basic, digits) = match input.rfind('-') {
        Some(at) => (&input[..at], &input[at + 1..]),
        None => ("", input),
    };
    let mut out: Vec<char> = basic.chars().collect();
    let (mut n, mut i, mut bias) = (INITIAL_N, 0u32, INITIAL_BIAS);
    let mut bytes = digits.bytes();
    let mut left = digits.len();
    while left > 0 {
        let old = i;
        let mut w = 1u32;
        let mut k = BASE;
        loop {
            let d = digit_value(bytes.next()?)?;
            left -= 1;
            i = i.checked_add(d.checked_mul(w)?)?;
            let t = threshold(k, bias);
            if d < t {
                break;
            }
            w = w.checked_mul(BASE - t)?;
            k += BASE;
        }
        let len = out.len() as u32 + 1;
        bias = adapt(i - old, len, old == 0);
        n = n.checked_add(i / len)?;
        i %= len;
        // Basic code points may only come from the basic part.
        let c = char::from_u32(n).filter(|c| !c.is_ascii())?;
        out.insert(i as usize, c);
        i += 1;
    }
    Some(out.into_iter().collect())
}

/// Whether `c` may stand in a U-label here: letters, digits and hyphens of ASCII, and
/// any character above it but controls, spaces, the replacement character, the
/// ideographic and full-width full stops (label separators to UTS #46) and
/// noncharacters. The finer rules of RFC 5892 need Unicode's tables.
fn u_label_char(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '-';
    }
    let cp = u32::from(c);
    !(c.is_control()
        || c.is_whitespace()
        || matches!(c, '\u{FFFD}' | '\u{3002}' | '\u{FF0E}' | '\u{FF61}')
        || (0xFDD0..=0xFDEF).contains(&cp)
        || cp & 0xFFFE == 0xFFFE)
}

/// A label lower-cased: ASCII's mapping for ASCII, Unicode's otherwise.
fn lower(label: &str) -> String {
    if label.is_ascii() {
        label.to_ascii_lowercase()
    } else {
        label.chars().flat_map(char::to_lowercase).collect()
    }
}

/// `domain` lower-cased: ASCII's mapping for ASCII, Unicode's for U-labels.
pub fn lowercase(domain: &str) -> String {
    lower(domain)
}

/// The A-label of a non-ASCII label (already lower-cased), when it is a U-label.
fn a_label(label: &str) -> Option<String> {
    let b = label.as_bytes();
    if label.is_ascii()
        || !label.chars().all(u_label_char)
        || label.starts_with('-')
        || label.ends_with('-')
        // RFC 5891 §4.2.3.1: hyphens in the third and fourth places are reserved.
        || (b.len() >= 4 && &b[2..4] == b"--")
    {
        return None;
    }
    let a = format!("{ACE}{}", encode(label)?);
    (a.len() <= MAX_LABEL).then_some(a)
}

/// The U-label of an A-label, lower-cased; `None` when `label` is not a valid
/// A-label (it does not decode, or does not encode back to itself).
fn u_label(label: &str) -> Option<String> {
    let puny = label.get(ACE.len()..)?;
    let u = decode(puny).filter(|u| !u.is_ascii())?;
    let back = a_label(&lower(&u))?;
    back.eq_ignore_ascii_case(label).then(|| lower(&u))
}

/// Whether `label` starts with `xn--`, in any case.
fn is_ace(label: &str) -> bool {
    label.len() > ACE.len() && label.as_bytes()[..ACE.len()].eq_ignore_ascii_case(ACE.as_bytes())
}

/// `domain` lower-cased with its U-labels as A-labels: the form in which names of one
/// domain are equal. An address literal is only lower-cased. `None` when a non-ASCII
/// label is not a U-label, or the name grows past 255 octets.
pub fn to_ascii(domain: &str) -> Option<String> {
    if domain.is_ascii() {
        return Some(domain.to_ascii_lowercase());
    }
    if domain.starts_with('[') {
        return None;
    }
    let mut out = String::with_capacity(domain.len() + 8);
    for (i, label) in domain.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        match label.is_ascii() {
            true => out.push_str(&label.to_ascii_lowercase()),
            false => out.push_str(&a_label(&lower(label))?),
        }
    }
    (out.len() <= MAX_NAME).then_some(out)
}

/// `domain` lower-cased with its A-labels as U-labels, for a table that keys domains
/// as people write them. A label that is not a valid A-label stays as it is; `None`
/// when a non-ASCII label is not a U-label.
pub fn to_unicode(domain: &str) -> Option<String> {
    if domain.starts_with('[') {
        return Some(domain.to_ascii_lowercase());
    }
    let mut out = String::with_capacity(domain.len());
    for (i, label) in domain.split('.').enumerate() {
        if i > 0 {
            out.push('.');
        }
        if !label.is_ascii() {
            let l = lower(label);
            a_label(&l)?;
            out.push_str(&l);
        } else if let Some(u) = is_ace(label).then(|| u_label(label)).flatten() {
            out.push_str(&u);
        } else {
            out.push_str(&label.to_ascii_lowercase());
        }
    }
    Some(out)
}

/// `domain` as [`to_ascii`] has it, borrowed when it is ASCII (only case then
/// differs, which every comparison here ignores); as it is when it cannot be
/// converted.
pub fn ascii_form(domain: &str) -> std::borrow::Cow<'_, str> {
    match domain.is_ascii() {
        true => std::borrow::Cow::Borrowed(domain),
        false => to_ascii(domain).map_or(std::borrow::Cow::Borrowed(domain), Into::into),
    }
}

/// `key` (an address, `@domain`, or a domain) with its domain in the other form: as
/// A-labels when it has U-labels, as U-labels when it has A-labels; `None` when it
/// has neither, or its domain cannot be converted. The local part is lower-cased.
pub fn other_form(key: &str) -> Option<String> {
    let (local, domain) = match key.rfind('@') {
        Some(at) => key.split_at(at + 1),
        None => ("", key),
    };
    let other = match domain.is_ascii() {
        false => to_ascii(domain)?,
        true if domain.split('.').any(is_ace) => to_unicode(domain)?,
        true => return None,
    };
    (!other.eq_ignore_ascii_case(domain)).then(|| format!("{}{other}", local.to_ascii_lowercase()))
}

/// Whether `a` and `b` name the same domain, U-labels and A-labels alike, without
/// regard to case. A name that cannot be converted is only equal to itself (ASCII
/// case aside).
pub fn same_domain(a: &str, b: &str) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    if a.is_ascii() && b.is_ascii() {
        return false;
    }
    match (to_ascii(a), to_ascii(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Whether `label` (non-ASCII) is a U-label that fits in a domain: for the address
/// parser.
pub fn valid_u_label(label: &str) -> bool {
    !label.is_ascii() && a_label(&lower(label)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3492_samples() {
        // RFC 3492 §7.1: (A) Arabic, (B) simplified Chinese, (L) Japanese with ASCII,
        // (S) ASCII with hyphens; and the common names.
        let samples = [
            (
                "\u{644}\u{64A}\u{647}\u{645}\u{627}\u{628}\u{62A}\u{643}\u{644}\u{645}\u{648}\u{634}\u{639}\u{631}\u{628}\u{64A}\u{61F}",
                "egbpdaj6bu4bxfgehfvwxn",
            ),
            (
                "\u{4ED6}\u{4EEC}\u{4E3A}\u{4EC0}\u{4E48}\u{4E0D}\u{8BF4}\u{4E2D}\u{6587}",
                "ihqwcrb4cv8a8dqg056pqjye",
            ),
            (
                "3\u{5E74}B\u{7D44}\u{91D1}\u{516B}\u{5148}\u{751F}",
                "3B-ww4c5e180e575a65lsy2b",
            ),
            ("-> $1.00 <-", "-> $1.00 <--"),
            ("bücher", "bcher-kva"),
            ("münchen", "mnchen-3ya"),
            ("пример", "e1afmkfd"),
        ];
        for (u, p) in samples {
            assert_eq!(encode(u).as_deref(), Some(p), "{u}");
            assert_eq!(decode(p).as_deref(), Some(u), "{p}");
        }
    }

    #[test]
    fn domains_compare_in_either_form() {
        assert_eq!(
            to_ascii("Bücher.Example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            to_ascii("BÜCHER.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(
            to_unicode("XN--BCHER-KVA.example").as_deref(),
            Some("bücher.example")
        );
        assert!(same_domain("bücher.example", "xn--bcher-kva.EXAMPLE"));
        assert!(same_domain("xn--bcher-kva.example", "BÜCHER.example"));
        assert!(!same_domain("bucher.example", "bücher.example"));
        assert!(same_domain("a.example", "A.example"));
        assert!(!same_domain("a.example", "b.example"));
        assert_eq!(to_ascii("[192.0.2.1]").as_deref(), Some("[192.0.2.1]"));
        assert_eq!(
            other_form("Jörg@Bücher.example").as_deref(),
            Some("jörg@xn--bcher-kva.example")
        );
        assert_eq!(
            other_form("@xn--bcher-kva.example").as_deref(),
            Some("@bücher.example")
        );
        assert_eq!(
            other_form("bücher.example").as_deref(),
            Some("xn--bcher-kva.example")
        );
        assert_eq!(other_form("user@example.org"), None);
        assert_eq!(other_form("xn--zz-.example"), None);
        assert_eq!(ascii_form("bücher.example"), "xn--bcher-kva.example");
        assert!(matches!(
            ascii_form("A.example"),
            std::borrow::Cow::Borrowed("A.example")
        ));
    }

    #[test]
    fn what_is_not_a_label() {
        for bad in [
            "bü b.example",
            "bü\u{7}cher.example",
            "bü-.example",
            "-bü.example",
            "büc\u{3002}her.example",
            "bü\u{FFFD}.example",
            "ab--ü.example",
            "bü_cher.example",
        ] {
            assert_eq!(to_ascii(bad), None, "{bad:?}");
            assert!(
                !valid_u_label(bad.split('.').next().unwrap_or("")),
                "{bad:?}"
            );
        }
        // Over 63 octets as an A-label.
        assert_eq!(to_ascii(&"ü".repeat(60)), None);
        // An A-label that is not one stays as it is, and is not a U-label's twin.
        assert_eq!(
            to_unicode("xn--zz-.example").as_deref(),
            Some("xn--zz-.example")
        );
        assert_eq!(u_label("xn--bcher-kvA"), Some("bücher".into()));
        // Case does not matter in an A-label, as in the DNS.
        assert_eq!(u_label("XN--Bcher-kva"), Some("bücher".into()));
        // Punycode of ASCII alone is no A-label.
        assert_eq!(u_label("xn--abc-"), None);
        assert_eq!(decode("99999999999999"), None);
        assert_eq!(decode("a-"), Some("a".into()));
        assert_eq!(decode("ü"), None);
    }
}
