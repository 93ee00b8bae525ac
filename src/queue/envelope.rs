//! Envelope files: one per recipient, a typed and escaped text format.
//!
//! ```text
//! smtpd-envelope 1
//! evpid 1a2b3c4d5e6f7081
//! sender a@example.org
//! ...
//! ```
//! Each line is a known key, one space and a value in which every byte outside
//! `!`..`~` and every `%` is written `%XX`. A value therefore never holds a space, a
//! line end or anything a client could use to add a line of its own (the CVE-2020-8794
//! lesson). Reading is strict: an unknown or repeated key, a missing one or a bad escape
//! makes the whole file corrupt. Keys added since version 1 are optional, and written
//! only when they say something (`smtputf8 1`): an envelope of an older daemon reads as
//! it did, and one that needs none of them is what an older daemon wrote.

use std::fmt::Write as _;

/// Version written in the first line.
pub const VERSION: u32 = 1;
/// The bits of the keys every envelope has.
const REQUIRED: u32 = (1 << 21) - 1;
/// The bit of the first optional key.
const OPTIONAL: u32 = 21;
const MAGIC: &str = "smtpd-envelope";

/// One recipient of one message, as stored in the spool.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// Envelope id: the message id in the high 32 bits.
    pub evpid: u64,
    /// Creation time, seconds since the epoch.
    pub ctime: u64,
    /// MAIL FROM, empty for `<>`.
    pub sender: String,
    /// RCPT TO as given.
    pub rcpt: String,
    /// Resolved destination: a user name, an alias value or an address.
    pub dest: String,
    /// Name of the action that delivers it.
    pub action: String,
    /// Listener tag, empty for none.
    pub tag: String,
    /// HELO/EHLO name of the client.
    pub helo: String,
    /// Client address, or `local`.
    pub client: String,
    /// Our name on the listener.
    pub hostname: String,
    /// `BODY=8BITMIME` was given.
    pub body_8bit: bool,
    /// The message needs SMTPUTF8 (RFC 6531): the client gave it, or an address is
    /// UTF-8.
    pub smtputf8: bool,
    /// REQUIRETLS (RFC 8689): relayed over verified TLS only, to a server that offers
    /// REQUIRETLS.
    pub requiretls: bool,
    /// `BODY=BINARYMIME` was given (RFC 3030): the body is stored as it came and goes
    /// on only with BDAT.
    pub body_binary: bool,
    /// DSN NOTIFY bits (0 when absent).
    pub dsn_notify: u8,
    /// DSN RET: `FULL`, `HDRS` or empty.
    pub dsn_ret: String,
    /// DSN ENVID (xtext), or empty.
    pub dsn_envid: String,
    /// DSN ORCPT (`type;xtext`), or empty.
    pub dsn_orcpt: String,
    /// Delivery attempts so far.
    pub retry: u32,
    /// Time of the last attempt, 0 for none.
    pub last_try: u64,
    /// The last error, empty for none.
    pub errorline: String,
    /// The account to deliver as, overriding the action's (set for destinations
    /// taken from a user's `.forward`); empty for none.
    pub user: String,
    /// Deliver to the mailbox without reading `.forward` (it led here).
    pub no_forward: bool,
    /// Held in the queue (quarantined by a filter) until scheduled by hand.
    pub held: bool,
    /// Delay notices sent about it (recorded before each is queued).
    pub warnings: u32,
}

/// A fresh envelope id for message `msgid`, distinct from those in `taken`.
pub fn new_evpid(msgid: u32, taken: &[u64]) -> u64 {
    loop {
        let id = (u64::from(msgid) << 32) | u64::from(crate::sys::random_u64() as u32);
        if id as u32 != 0 && !taken.contains(&id) {
            return id;
        }
    }
}

impl Envelope {
    /// The message id this envelope belongs to.
    pub fn msgid(&self) -> u32 {
        (self.evpid >> 32) as u32
    }

    /// Serializes the envelope.
    pub fn encode(&self) -> String {
        let mut s = format!("{MAGIC} {VERSION}\n");
        let mut put = |k: &str, v: &str| {
            s.push_str(k);
            s.push(' ');
            escape_into(&mut s, v);
            s.push('\n');
        };
        put("evpid", &format!("{:016x}", self.evpid));
        put("ctime", &self.ctime.to_string());
        put("sender", &self.sender);
        put("rcpt", &self.rcpt);
        put("dest", &self.dest);
        put("action", &self.action);
        put("tag", &self.tag);
        put("helo", &self.helo);
        put("client", &self.client);
        put("hostname", &self.hostname);
        put(
            "body",
            match (self.body_binary, self.body_8bit) {
                (true, _) => "binarymime",
                (false, true) => "8bitmime",
                (false, false) => "7bit",
            },
        );
        put("dsn-notify", &self.dsn_notify.to_string());
        put("dsn-ret", &self.dsn_ret);
        put("dsn-envid", &self.dsn_envid);
        put("dsn-orcpt", &self.dsn_orcpt);
        put("retry", &self.retry.to_string());
        put("last-try", &self.last_try.to_string());
        put("errorline", &self.errorline);
        put("user", &self.user);
        put("no-forward", if self.no_forward { "1" } else { "0" });
        put("held", if self.held { "1" } else { "0" });
        if self.smtputf8 {
            put("smtputf8", "1");
        }
        if self.requiretls {
            put("requiretls", "1");
        }
        if self.warnings != 0 {
            put("warnings", &self.warnings.to_string());
        }
        s
    }

    /// Parses an envelope; any deviation is an error.
    pub fn decode(text: &[u8]) -> Result<Envelope, String> {
        let text = std::str::from_utf8(text).map_err(|_| "not UTF-8".to_string())?;
        let mut lines = text.split_terminator('\n');
        let first = lines.next().ok_or("empty file")?;
        if first != format!("{MAGIC} {VERSION}") {
            return Err(format!("bad header line {first:?}"));
        }
        let mut e = Envelope::default();
        let mut seen = 0u32;
        for line in lines {
            let (k, v) = line
                .split_once(' ')
                .ok_or_else(|| format!("bad line {line:?}"))?;
            let v = unescape(v).ok_or_else(|| format!("bad value for {k}"))?;
            let num = |v: &str| v.parse::<u64>().map_err(|_| format!("bad number for {k}"));
            let bit = match k {
                "evpid" => {
                    e.evpid = u64::from_str_radix(&v, 16).map_err(|_| "bad evpid".to_string())?;
                    0
                }
                "ctime" => {
                    e.ctime = num(&v)?;
                    1
                }
                "sender" => {
                    e.sender = v;
                    2
                }
                "rcpt" => {
                    e.rcpt = v;
                    3
                }
                "dest" => {
                    e.dest = v;
                    4
                }
                "action" => {
                    e.action = v;
                    5
                }
                "tag" => {
                    e.tag = v;
                    6
                }
                "helo" => {
                    e.helo = v;
                    7
                }
                "client" => {
                    e.client = v;
                    8
                }
                "hostname" => {
                    e.hostname = v;
                    9
                }
                "body" => {
                    (e.body_8bit, e.body_binary) = match v.as_str() {
                        "7bit" => (false, false),
                        "8bitmime" => (true, false),
                        "binarymime" => (false, true),
                        _ => return Err("bad body".into()),
                    };
                    10
                }
                "dsn-notify" => {
                    e.dsn_notify = u8::try_from(num(&v)?).map_err(|_| "bad dsn-notify")?;
                    11
                }
                "dsn-ret" => {
                    if !matches!(v.as_str(), "" | "FULL" | "HDRS") {
                        return Err("bad dsn-ret".into());
                    }
                    e.dsn_ret = v;
                    12
                }
                "dsn-envid" => {
                    e.dsn_envid = v;
                    13
                }
                "dsn-orcpt" => {
                    e.dsn_orcpt = v;
                    14
                }
                "retry" => {
                    e.retry = u32::try_from(num(&v)?).map_err(|_| "bad retry")?;
                    15
                }
                "last-try" => {
                    e.last_try = num(&v)?;
                    16
                }
                "errorline" => {
                    e.errorline = v;
                    17
                }
                "user" => {
                    e.user = v;
                    18
                }
                "no-forward" => {
                    e.no_forward = match v.as_str() {
                        "0" => false,
                        "1" => true,
                        _ => return Err("bad no-forward".into()),
                    };
                    19
                }
                "held" => {
                    e.held = match v.as_str() {
                        "0" => false,
                        "1" => true,
                        _ => return Err("bad held".into()),
                    };
                    20
                }
                "smtputf8" => {
                    e.smtputf8 = match v.as_str() {
                        "0" => false,
                        "1" => true,
                        _ => return Err("bad smtputf8".into()),
                    };
                    OPTIONAL
                }
                "requiretls" => {
                    e.requiretls = match v.as_str() {
                        "0" => false,
                        "1" => true,
                        _ => return Err("bad requiretls".into()),
                    };
                    OPTIONAL + 1
                }
                "warnings" => {
                    e.warnings = u32::try_from(num(&v)?).map_err(|_| "bad warnings")?;
                    OPTIONAL + 2
                }
                other => return Err(format!("unknown key {other:?}")),
            };
            if seen & (1 << bit) != 0 {
                return Err(format!("repeated key {k:?}"));
            }
            seen |= 1 << bit;
        }
        if seen & REQUIRED != REQUIRED {
            return Err("missing keys".into());
        }
        if e.rcpt.is_empty() || e.evpid == 0 {
            return Err("empty recipient or id".into());
        }
        Ok(e)
    }
}

fn escape_into(out: &mut String, v: &str) {
    for &b in v.as_bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c if c.is_ascii_graphic() => {
                out.push(c);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Envelope {
        Envelope {
            evpid: 0x1234_5678_9abc_def0,
            ctime: 1_700_000_000,
            sender: "a@example.org".into(),
            rcpt: "\"x y\"@example.org".into(),
            dest: "bob".into(),
            action: "local".into(),
            helo: "evil\r\naction: |/bin/sh".into(),
            client: "192.0.2.1".into(),
            hostname: "mx".into(),
            dsn_notify: 3,
            dsn_ret: "HDRS".into(),
            errorline: "550 5.1.1 100% no".into(),
            ..Envelope::default()
        }
    }

    #[test]
    fn round_trip_and_injection() {
        let e = sample();
        let text = e.encode();
        assert_eq!(text.lines().filter(|l| l.starts_with("action ")).count(), 1);
        assert!(text.contains("helo evil%0D%0Aaction:%20|/bin/sh\n"));
        assert_eq!(Envelope::decode(text.as_bytes()), Ok(e));
        assert_eq!(sample().msgid(), 0x1234_5678);
    }

    #[test]
    fn smtputf8_is_optional() {
        let mut e = sample();
        let old = e.encode();
        assert!(!old.contains("smtputf8"));
        assert_eq!(Envelope::decode(old.as_bytes()), Ok(e.clone()));
        e.smtputf8 = true;
        e.rcpt = "jörg@bücher.example".into();
        let text = e.encode();
        assert!(text.ends_with("held 0\nsmtputf8 1\n"), "{text}");
        assert!(
            text.contains("rcpt j%C3%B6rg@b%C3%BCcher.example\n"),
            "{text}"
        );
        assert_eq!(Envelope::decode(text.as_bytes()), Ok(e));
        for bad in ["smtputf8 2\n", "smtputf8 1\nsmtputf8 1\n"] {
            let b = format!("{old}{bad}");
            assert!(Envelope::decode(b.as_bytes()).is_err(), "{b}");
        }
        assert!(Envelope::decode(format!("{old}smtputf8 0\n").as_bytes()).is_ok());
        let mut r = Envelope::decode(old.as_bytes()).unwrap_or_default();
        r.requiretls = true;
        let text = r.encode();
        assert!(text.ends_with("held 0\nrequiretls 1\n"), "{text}");
        assert_eq!(Envelope::decode(text.as_bytes()), Ok(r));
        assert!(Envelope::decode(format!("{old}requiretls 2\n").as_bytes()).is_err());
    }

    #[test]
    fn strict_decoding() {
        let good = sample().encode();
        let bad = [
            good.replacen("smtpd-envelope 1", "smtpd-envelope 2", 1),
            good.replacen("dest bob\n", "", 1),
            good.replacen("dest bob\n", "dest bob\ndest eve\n", 1),
            good.replacen("dest bob\n", "dest b b\n", 1),
            good.replacen("dest bob\n", "dest %zz\n", 1),
            good.replacen("dest bob\n", "mda-exec x\n", 1),
            good.replacen("retry 0", "retry -1", 1),
        ];
        for b in bad {
            assert!(Envelope::decode(b.as_bytes()).is_err(), "{b}");
        }
    }
}
