//! Known, reported daemon bugs that the targets can step around so that a run looks for
//! new ones. Off by default: set `SMTPD_FUZZ_SKIP_KNOWN=1` to skip them. Remove an entry
//! once src/ is fixed.
#![allow(dead_code)]

use std::sync::OnceLock;

/// Whether known bugs are to be skipped (`SMTPD_FUZZ_SKIP_KNOWN=1`).
pub fn skip() -> bool {
    static SKIP: OnceLock<bool> = OnceLock::new();
    *SKIP.get_or_init(|| std::env::var_os("SMTPD_FUZZ_SKIP_KNOWN").is_some_and(|v| v == "1"))
}

/// K1: `split_path` (src/smtp/command.rs) slices `rest[..keyword.len()]` without
/// checking for a char boundary: `MAIL FROM\u{e9}` or `RCPT TO\u{e9}` panics.
pub fn k1_split_path_panic(line: &[u8]) -> bool {
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let (verb, rest) = line.split_once(' ').unwrap_or((line, ""));
    let kw = if verb.eq_ignore_ascii_case("MAIL") {
        "FROM:"
    } else if verb.eq_ignore_ascii_case("RCPT") {
        "TO:"
    } else {
        return false;
    };
    rest.len() >= kw.len() && !rest.is_char_boundary(kw.len())
}

/// K2: `parse_path` lower-cases the domain, turning an accepted `[IPv6:...]` literal
/// into `[ipv6:...]`, which `valid_domain` (case-sensitive tag) refuses.
pub fn k2_ipv6_tag_lowercased(domain: &str) -> bool {
    domain.starts_with("[ipv6:")
}

/// K3: the EHLO/HELO reply's first line ("<name> Hello <helo> [addr], pleased to meet
/// you") exceeds 512 octets when the listener's host name is long (> ~180 octets) and
/// the client sends a 255-octet HELO name.
pub const K3_LONG_SERVER_NAME: bool = true;
