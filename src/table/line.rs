//! The line protocol of table processes of OpenSMTPD 7.6 and later (smtpd-tables(7)).
//!
//! ```text
//! smtpd -> table   config|smtpd-version|V  config|protocol|0.1  config|tablename|NAME
//!                  config|ready
//! table -> smtpd   register|SERVICE ... register|ready
//! smtpd -> table   table|0.1|SEC.USEC|NAME|check|SERVICE|ID|KEY
//!                  table|0.1|SEC.USEC|NAME|lookup|SERVICE|ID|KEY
//!                  table|0.1|SEC.USEC|NAME|update|ID
//! table -> smtpd   check-result|ID|found|not-found|error[|MSG]
//!                  lookup-result|ID|found|VALUE  (or not-found, error[|MSG])
//!                  update-result|ID|ok|error[|MSG]
//! ```
//! Only the last field may hold `|`; no field holds a line end. `fetch` (a relay's
//! source addresses) is never asked: those tables are read by the loop, in memory.
//! Pure: text in, text out.

use super::Service;

/// The protocol's version.
pub const VERSION: &str = "0.1";

/// The handshake smtpd sends first.
pub fn handshake(table: &str) -> String {
    format!(
        "config|smtpd-version|{}\nconfig|protocol|{VERSION}\nconfig|tablename|{table}\nconfig|ready\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// A line of the table's registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Register {
    /// It serves this service.
    Service(Service),
    /// A service smtpd does not ask (`auth`, `regex`, `none`...).
    Other,
    /// The end of the registration.
    Ready,
}

/// Reads a registration line.
pub fn register(line: &str) -> Result<Register, String> {
    let what = line
        .strip_prefix("register|")
        .ok_or_else(|| format!("not a registration: {:?}", line))?;
    if what == "ready" {
        return Ok(Register::Ready);
    }
    if let Some(s) = Service::ALL.into_iter().find(|s| s.name() == what) {
        return Ok(Register::Service(s));
    }
    match what {
        "none" | "regex" | "auth" => Ok(Register::Other),
        _ => Err(format!("unknown service {what:?}")),
    }
}

/// What is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op<'a> {
    /// Whether the key is there.
    Check(Service, &'a str),
    /// The key's value.
    Lookup(Service, &'a str),
    /// Read the data again.
    Update,
}

impl Op<'_> {
    /// The operation's word.
    pub fn word(&self) -> &'static str {
        match self {
            Op::Check(..) => "check",
            Op::Lookup(..) => "lookup",
            Op::Update => "update",
        }
    }
}

/// The request line of `op` with `id`, at `now` (seconds and microseconds since the
/// epoch). `None` when the key holds a line end, which the protocol cannot carry.
pub fn request(table: &str, op: Op<'_>, id: &str, now: (u64, u32)) -> Option<String> {
    let head = format!(
        "table|{VERSION}|{}.{:06}|{table}|{}",
        now.0,
        now.1,
        op.word()
    );
    match op {
        Op::Check(s, key) | Op::Lookup(s, key) => {
            if key.contains(['\r', '\n']) {
                return None;
            }
            Some(format!("{head}|{}|{id}|{key}\n", s.name()))
        }
        Op::Update => Some(format!("{head}|{id}\n")),
    }
}

/// The table's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// `found` (a check), `found|VALUE` (a lookup), `ok` (an update).
    Found(Option<String>),
    /// `not-found`.
    NotFound,
    /// `error`, with the table's message.
    Error(String),
}

/// Reads the answer line to `op` asked with `id` (without its line end). An error when
/// the line is not that answer: the table is out of step.
pub fn answer(line: &str, op: Op<'_>, id: &str) -> Result<Answer, String> {
    let rest = line
        .strip_prefix(op.word())
        .and_then(|r| r.strip_prefix("-result|"))
        .and_then(|r| r.strip_prefix(id))
        .and_then(|r| r.strip_prefix('|'))
        .ok_or_else(|| format!("unexpected answer {line:?}"))?;
    if let Some(msg) = rest.strip_prefix("error") {
        if msg.is_empty() || msg.starts_with('|') {
            return Ok(Answer::Error(
                msg.strip_prefix('|').unwrap_or(msg).to_string(),
            ));
        }
    }
    match (op, rest) {
        (Op::Update, "ok") => Ok(Answer::Found(None)),
        (Op::Update, _) => Err(format!("unexpected answer {line:?}")),
        (Op::Check(..), "found") => Ok(Answer::Found(None)),
        (_, "not-found") => Ok(Answer::NotFound),
        (Op::Lookup(..), r) => match r.strip_prefix("found|") {
            Some(v) if !v.is_empty() => Ok(Answer::Found(Some(v.to_string()))),
            _ => Err(format!("unexpected answer {line:?}")),
        },
        (Op::Check(..), _) => Err(format!("unexpected answer {line:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_and_the_registration() {
        let h = handshake("devs");
        assert!(h.starts_with("config|smtpd-version|"));
        assert!(h.ends_with("config|protocol|0.1\nconfig|tablename|devs\nconfig|ready\n"));
        assert_eq!(
            register("register|alias"),
            Ok(Register::Service(Service::Alias))
        );
        assert_eq!(register("register|auth"), Ok(Register::Other));
        assert_eq!(register("register|ready"), Ok(Register::Ready));
        assert!(register("register|bogus").is_err());
        assert!(register("hello").is_err());
    }

    #[test]
    fn requests_as_smtpd_tables_7_shows_them() {
        let now = (1713795103, 314423);
        assert_eq!(
            request(
                "devs",
                Op::Check(Service::NetAddr, "192.168.0.7"),
                "e5862859",
                now
            )
            .as_deref(),
            Some("table|0.1|1713795103.314423|devs|check|netaddr|e5862859|192.168.0.7\n")
        );
        assert_eq!(
            request("devs", Op::Update, "478ff0d2", (1713795097, 394049)).as_deref(),
            Some("table|0.1|1713795097.394049|devs|update|478ff0d2\n")
        );
        assert_eq!(
            request("devs", Op::Lookup(Service::Source, "k"), "1", (1, 2)).as_deref(),
            Some("table|0.1|1.000002|devs|lookup|source|1|k\n")
        );
        assert_eq!(
            request("d", Op::Lookup(Service::Alias, "a\nb"), "1", now),
            None
        );
    }

    #[test]
    fn answers() {
        let look = Op::Lookup(Service::UserInfo, "op");
        assert_eq!(
            answer(
                "lookup-result|f993c74|found|1000:1000:/home/op",
                look,
                "f993c74"
            ),
            Ok(Answer::Found(Some("1000:1000:/home/op".into())))
        );
        assert_eq!(
            answer("lookup-result|f993c74|found|a|b", look, "f993c74"),
            Ok(Answer::Found(Some("a|b".into())))
        );
        assert_eq!(
            answer("lookup-result|1|not-found", look, "1"),
            Ok(Answer::NotFound)
        );
        assert_eq!(
            answer("lookup-result|1|error|db down", look, "1"),
            Ok(Answer::Error("db down".into()))
        );
        assert!(answer("lookup-result|2|not-found", look, "1").is_err());
        assert!(answer("check-result|1|found", look, "1").is_err());
        assert!(answer("lookup-result|1|found|", look, "1").is_err());
        assert!(answer("lookup-result|1|found", look, "1").is_err());
        let check = Op::Check(Service::Domain, "x");
        assert_eq!(
            answer("check-result|1|found", check, "1"),
            Ok(Answer::Found(None))
        );
        assert!(answer("check-result|1|maybe", check, "1").is_err());
        assert_eq!(
            answer("update-result|9|error", Op::Update, "9"),
            Ok(Answer::Error(String::new()))
        );
        assert_eq!(
            answer("update-result|9|ok", Op::Update, "9"),
            Ok(Answer::Found(None))
        );
        assert!(answer("update-result|9|errors", Op::Update, "9").is_err());
    }
}
