//! Verification (RFC 6376 §6): one signature of a message whose body hash is known,
//! its key looked up, and the result as an Authentication-Results header field says
//! it (RFC 8601, `header.b` from RFC 6008).

use crate::canon;
use crate::header::Header;
use crate::keys;
use crate::tags::{self, KeyRecord, Signature, Unusable};

/// What a key lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Txt {
    /// The TXT records of the name, each with its strings joined.
    Records(Vec<Vec<u8>>),
    /// The name has no TXT record (NXDOMAIN or NODATA).
    None,
    /// No answer could be had: try later.
    TempFail(String),
}

/// Where keys come from: the DNS, or a table in tests.
pub trait KeySource {
    /// The TXT records of `name`.
    fn txt(&self, name: &str) -> Txt;
}

/// The `dkim` results of RFC 8601 §2.7.1 this verifier gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The signature verified.
    Pass,
    /// It did not: the body hash or the signature does not match.
    Fail,
    /// The key could not be looked up for now.
    TempError,
    /// The signature or its key cannot be used.
    PermError,
}

impl Outcome {
    /// The result's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::TempError => "temperror",
            Outcome::PermError => "permerror",
        }
    }
}

/// The verdict on one signature, with what the results tell about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The result.
    pub outcome: Outcome,
    /// Why, for anything but a pass.
    pub reason: Option<String>,
    /// `d=`.
    pub domain: Option<String>,
    /// `s=`.
    pub selector: Option<String>,
    /// `a=`.
    pub algorithm: Option<String>,
    /// `b=` without white space.
    pub b_text: Option<String>,
    /// `i=`.
    pub identity: Option<String>,
}

impl Verdict {
    /// The permerror of a signature that could not be read.
    pub fn unusable(u: &Unusable) -> Verdict {
        Verdict {
            outcome: Outcome::PermError,
            reason: Some(u.reason.clone()),
            domain: u.domain.clone(),
            selector: u.selector.clone(),
            algorithm: u.algorithm.clone(),
            b_text: u.b_text.clone(),
            identity: None,
        }
    }
}

/// Checks signature `sig`, read from field `field` of `header`, given the hash and the
/// length of the body canonicalized as it says (`body_len` counts every canonical
/// octet, hashed or not).
pub fn verify(
    header: &Header,
    field: usize,
    sig: &Signature,
    body_hash: &[u8],
    body_len: u64,
    keys: &dyn KeySource,
) -> Verdict {
    let mut v = Verdict {
        outcome: Outcome::Pass,
        reason: None,
        domain: Some(sig.domain.clone()),
        selector: Some(sig.selector.clone()),
        algorithm: Some(sig.algorithm.as_str().to_string()),
        b_text: Some(sig.b_text.clone()),
        identity: sig.identity.clone(),
    };
    let mut give = |outcome, reason: &str| {
        v.outcome = outcome;
        v.reason = Some(reason.to_string());
        v.clone()
    };
    if sig.length.is_some_and(|l| l > body_len) {
        return give(Outcome::Fail, "l= is longer than the body");
    }
    if body_hash != sig.body_hash.as_slice() {
        return give(Outcome::Fail, "body hash did not verify");
    }
    let name = format!("{}._domainkey.{}", sig.selector, sig.domain);
    let records = match keys.txt(&name) {
        Txt::Records(r) => r,
        Txt::None => return give(Outcome::PermError, "no key for signature"),
        Txt::TempFail(why) => {
            return give(Outcome::TempError, &format!("key lookup failed: {why}"))
        }
    };
    // RFC 6376 §3.6.2.2: several records are an error of the domain's; take the first
    // that is a key record.
    let mut first_error = None;
    let mut key = None;
    for r in &records {
        match KeyRecord::parse(&String::from_utf8_lossy(r)) {
            Ok(k) => {
                key = Some(k);
                break;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some(key) = key else {
        let why = first_error.unwrap_or_else(|| "no key record".into());
        return give(Outcome::PermError, &format!("bad key record: {why}"));
    };
    if key.public_key.is_empty() {
        return give(Outcome::PermError, "key revoked");
    }
    if key.key_type != sig.algorithm.key_type() {
        return give(Outcome::PermError, "the key's k= does not match a=");
    }
    if key.strict {
        let idom = sig
            .identity
            .as_deref()
            .and_then(|i| i.rsplit_once('@'))
            .map(|(_, d)| d);
        if idom.is_some_and(|d| !d.eq_ignore_ascii_case(&sig.domain)) {
            return give(
                Outcome::PermError,
                "the key's t=s forbids a subdomain in i=",
            );
        }
    }
    let mut data = Vec::with_capacity(1024);
    for i in header.select(&sig.headers) {
        canon::header_field(sig.header_canon, header.field(i), &mut data);
    }
    canon::header_field(
        sig.header_canon,
        &tags::without_b_value(header.field(field)),
        &mut data,
    );
    data.truncate(data.len() - 2);
    match keys::verify(sig.algorithm, &key.public_key, &data, &sig.signature) {
        Ok(true) => v,
        Ok(false) => give(Outcome::Fail, "signature did not verify"),
        Err(why) => give(Outcome::PermError, &why),
    }
}

/// Whether a property value is an RFC 2045 token, or must be quoted.
fn token(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// Whether a property value may stand unquoted as `[local-part] "@" domain-name`
/// (RFC 8601 §2.2, `pvalue`): what `header.i` usually holds.
fn address(v: &str) -> bool {
    let Some((local, domain)) = v.split_once('@') else {
        return false;
    };
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b);
    local.bytes().all(atext)
        && !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn push_value(out: &mut String, v: &str) {
    if token(v) || address(v) {
        out.push_str(v);
    } else {
        out.push('"');
        for c in v.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            if !c.is_control() {
                out.push(c);
            }
        }
        out.push('"');
    }
}

/// The value of an Authentication-Results field (RFC 8601 §2.2) for these verdicts:
/// `dkim=none` when there is none. Each result on its own line.
pub fn results(authserv_id: &str, verdicts: &[Verdict]) -> String {
    let mut out = String::with_capacity(128 + 160 * verdicts.len());
    out.push_str(authserv_id);
    out.push(';');
    if verdicts.is_empty() {
        out.push_str(" dkim=none");
        return out;
    }
    for (n, v) in verdicts.iter().enumerate() {
        if n > 0 {
            out.push(';');
        }
        out.push_str("\r\n\tdkim=");
        out.push_str(v.outcome.as_str());
        if let Some(r) = &v.reason {
            out.push_str(" reason=");
            push_value(&mut out, r);
        }
        let props = [
            ("header.d", v.domain.as_deref()),
            ("header.i", v.identity.as_deref()),
            ("header.s", v.selector.as_deref()),
            ("header.a", v.algorithm.as_deref()),
            // RFC 6008: the first eight characters of b= tell signatures apart.
            (
                "header.b",
                v.b_text.as_deref().map(|b| &b[..b.len().min(8)]),
            ),
        ];
        for (name, value) in props {
            if let Some(val) = value.filter(|s| !s.is_empty()) {
                out.push(' ');
                out.push_str(name);
                out.push('=');
                push_value(&mut out, val);
            }
        }
    }
    out
}

/// The authserv-id of an Authentication-Results value: its first word, comments
/// left out.
pub fn authserv_id_of(value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    let mut depth = 0u32;
    let mut id = String::new();
    for c in text.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            ';' => break,
            c if c.is_whitespace() => {
                if !id.is_empty() {
                    break;
                }
            }
            c => id.push(c),
        }
    }
    id
}

#[cfg(test)]
#[path = "verify_tests.rs"]
mod tests;
