//! Signing (RFC 6376 §5): the `h=` list of a message, the DKIM-Signature field
//! without its `b=` value and the data its signature covers, folded so that the
//! daemon writes it as signed.

use crate::canon::{self, Canon};
use crate::header::Header;
use crate::keys::SigningKey;
use smtpd::mail::base64;
use std::sync::Arc;

/// The field a signature is written in.
pub const FIELD: &str = "DKIM-Signature";

/// The header fields signed by default, when present (RFC 6376 §5.4.1's list, with
/// Message-ID and the MIME fields).
pub const DEFAULT_HEADERS: &[&str] = &[
    "from",
    "reply-to",
    "subject",
    "date",
    "to",
    "cc",
    "resent-date",
    "resent-from",
    "resent-to",
    "resent-cc",
    "in-reply-to",
    "references",
    "list-id",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// The fields signed once more than they appear, so that none can be added (§8.15).
pub const DEFAULT_OVERSIGN: &[&str] = &["from"];

/// How messages are signed.
#[derive(Debug, Clone)]
pub struct SignConfig {
    /// `c=` header algorithm.
    pub header_canon: Canon,
    /// `c=` body algorithm.
    pub body_canon: Canon,
    /// The names of the fields signed when present, lowercase.
    pub headers: Vec<String>,
    /// The names signed once more than they appear (even when absent), lowercase.
    pub oversign: Vec<String>,
    /// Seconds from `t=` to `x=`, if signatures expire.
    pub expire: Option<u64>,
}

/// One key of the key table.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// `d=`, lowercase.
    pub domain: String,
    /// `s=`.
    pub selector: String,
    /// The private key.
    pub key: Arc<SigningKey>,
}

/// A signature made but for its cryptography: the field's value up to `b=`, and the
/// data to sign.
#[derive(Debug)]
pub struct Unsigned {
    value: String,
    data: Vec<u8>,
    key: Arc<SigningKey>,
}

/// The `h=` list: each configured name as many times as the header has it, and the
/// oversigned ones once more.
pub fn h_list(header: &Header, cfg: &SignConfig) -> Vec<String> {
    let mut out = Vec::new();
    for name in &cfg.headers {
        let n = header.named(name).count() + usize::from(cfg.oversign.contains(name));
        out.extend(std::iter::repeat_n(name.clone(), n));
    }
    for name in &cfg.oversign {
        if !cfg.headers.contains(name) {
            out.push(name.clone());
        }
    }
    out
}

/// Builds a value line by line, folding before a piece that would pass the width.
struct Folder {
    out: String,
    col: usize,
}

const WIDTH: usize = 78;

impl Folder {
    fn new() -> Folder {
        Folder {
            out: String::with_capacity(512),
            col: FIELD.len() + 2,
        }
    }

    /// Appends `piece`, after a space (`sep`) or glued to what is before.
    fn push(&mut self, piece: &str, sep: bool) {
        let extra = usize::from(sep && !self.out.is_empty());
        if !self.out.is_empty() && self.col + extra + piece.len() > WIDTH {
            self.out.push_str("\r\n\t");
            self.col = 8;
        } else if extra == 1 {
            self.out.push(' ');
            self.col += 1;
        }
        self.out.push_str(piece);
        self.col += piece.len();
    }
}

/// Prepares the signature of a message with `entry`: `body_hash` is the hash of its
/// canonical body, `now` the time in seconds since the epoch.
pub fn prepare(
    header: &Header,
    body_hash: &[u8],
    entry: &KeyEntry,
    cfg: &SignConfig,
    now: u64,
) -> Unsigned {
    let h = h_list(header, cfg);
    let mut f = Folder::new();
    f.push("v=1;", false);
    f.push(&format!("a={};", entry.key.algorithm().as_str()), true);
    f.push(
        &format!(
            "c={}/{};",
            cfg.header_canon.as_str(),
            cfg.body_canon.as_str()
        ),
        true,
    );
    f.push(&format!("d={};", entry.domain), true);
    f.push(&format!("s={};", entry.selector), true);
    f.push(&format!("t={now};"), true);
    if let Some(x) = cfg.expire {
        f.push(&format!("x={};", now + x), true);
    }
    for (i, name) in h.iter().enumerate() {
        let piece = match (i == 0, i + 1 == h.len()) {
            (true, true) => format!("h={name};"),
            (true, false) => format!("h={name}:"),
            (false, true) => format!("{name};"),
            (false, false) => format!("{name}:"),
        };
        f.push(&piece, i == 0);
    }
    let mut bh = String::from("bh=");
    bh.push_str(&base64::encode(body_hash));
    bh.push(';');
    f.push(&bh, true);
    f.push("b=", true);
    let value = f.out;

    let mut data = Vec::with_capacity(1024);
    for i in header.select(&h) {
        canon::header_field(cfg.header_canon, header.field(i), &mut data);
    }
    let own = format!("{FIELD}: {value}");
    canon::header_field(cfg.header_canon, own.as_bytes(), &mut data);
    data.truncate(data.len() - 2);
    Unsigned {
        value,
        data,
        key: entry.key.clone(),
    }
}

impl Unsigned {
    /// The data the signature covers (tests).
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Signs: the field's whole value, `b=` folded in lines of at most 76 characters.
    pub fn sign(self) -> Result<String, String> {
        let sig = self.key.sign(&self.data)?;
        let b = base64::encode(&sig);
        let mut value = self.value;
        value.reserve(b.len() + b.len() / 64 * 3);
        let col = value
            .rsplit_once('\t')
            .map_or(FIELD.len() + 2 + value.len(), |(_, l)| l.len() + 8);
        let mut rest = b.as_str();
        let mut room = WIDTH.saturating_sub(col);
        while !rest.is_empty() {
            if room == 0 {
                value.push_str("\r\n\t");
                room = WIDTH - 8;
            }
            let n = room.min(rest.len());
            value.push_str(&rest[..n]);
            rest = &rest[n..];
            room = 0;
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SignConfig {
        SignConfig {
            header_canon: Canon::Relaxed,
            body_canon: Canon::Relaxed,
            headers: DEFAULT_HEADERS.iter().map(|s| s.to_string()).collect(),
            oversign: vec!["from".into()],
            expire: Some(3600),
        }
    }

    fn header(lines: &[&str]) -> Header {
        let mut h = Header::default();
        for l in lines {
            h.push_line(l.as_bytes()).unwrap();
        }
        h
    }

    #[test]
    fn h_lists_name_each_field_and_oversign_from() {
        let h = header(&[
            "From: a@x.example",
            "To: b@y",
            "To: c@z",
            "Subject: s",
            "X-Other: 1",
        ]);
        assert_eq!(h_list(&h, &cfg()), ["from", "from", "subject", "to", "to"]);
        let mut c = cfg();
        c.oversign = vec!["from".into(), "x-new".into()];
        c.headers = vec!["from".into()];
        assert_eq!(h_list(&h, &c), ["from", "from", "x-new"]);
    }

    #[test]
    fn a_signature_is_folded_and_covers_what_it_says() {
        let key = SigningKey::from_pem(crate::keys::tests::ED25519.as_bytes()).unwrap();
        let entry = KeyEntry {
            domain: "example.org".into(),
            selector: "sel".into(),
            key: Arc::new(key),
        };
        let h = header(&["From: a@example.org", "Subject:  hi  there"]);
        let u = prepare(&h, &[0u8; 32], &entry, &cfg(), 1_700_000_000);
        let data = String::from_utf8(u.data().to_vec()).unwrap();
        assert!(data.starts_with("from:a@example.org\r\nsubject:hi there\r\ndkim-signature:v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.org; s=sel; t=1700000000; x=1700003600; h=from:from:subject; bh=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=; b="), "{data}");
        assert!(data.ends_with("b="));
        let value = u.sign().unwrap();
        for line in format!("{FIELD}: {value}").split("\r\n") {
            assert!(line.len() <= WIDTH, "{line:?}");
        }
        let parsed = crate::tags::Signature::parse(&value, 1_700_000_001).unwrap();
        assert_eq!(parsed.signature.len(), 64);
        assert_eq!(parsed.headers, ["from", "from", "subject"]);
        assert_eq!(parsed.expiration, Some(1_700_003_600));
    }
}
