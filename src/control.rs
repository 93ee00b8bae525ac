//! The control socket (`QUEUE/smtpd.sock`) and the `smtpctl` client.
//!
//! A client sends one command line; the daemon answers with text lines and closes, except
//! for `monitor` (a line a second until the client leaves) and `smtp`, after which the
//! connection is an SMTP session from the local socket (how `sendmail` submits mail).
//! Only root and the daemon's own user may steer the queue; anyone may submit mail.

use crate::queue::envelope::Envelope;
use crate::queue::spool::Spool;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub use crate::queue::spool::SOCKET_NAME;

/// A parsed control command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `show queue`.
    ShowQueue,
    /// `show envelope EVPID`.
    ShowEnvelope(u64),
    /// `show message ID`.
    ShowMessage(u32),
    /// `show stats`.
    ShowStats,
    /// `show routes`: outgoing destinations and their health.
    ShowRoutes,
    /// `show hosts`: server addresses outgoing sessions used.
    ShowHosts,
    /// `show mta-sts`: the MTA-STS policies of the domains relayed to.
    ShowMtaSts,
    /// `show metrics`: the counters in Prometheus's text format.
    ShowMetrics,
    /// `schedule domain DOMAIN`: the envelopes for a domain now, its routes reopened.
    ScheduleDomain(String),
    /// `schedule ID|all`.
    Schedule(Target),
    /// `remove ID|all`.
    Remove(Target),
    /// `pause mda|mta|smtp`.
    Pause(Agent),
    /// `resume mda|mta|smtp`.
    Resume(Agent),
    /// `log brief|verbose`.
    Log(bool),
    /// `monitor`.
    Monitor,
    /// `smtp`: the rest of the connection is an SMTP session.
    Smtp,
    /// `update table NAME`: the table read again (a table process told to).
    UpdateTable(String),
    /// `reload`: smtpd.conf read again and put in force for new sessions.
    Reload,
}

/// Envelopes a command applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every envelope.
    All,
    /// One envelope.
    Envelope(u64),
    /// Every envelope of a message.
    Message(u32),
}

/// What `pause`/`resume` act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    /// Local deliveries.
    Mda,
    /// Relaying.
    Mta,
    /// Accepting SMTP connections.
    Smtp,
}

impl Target {
    /// Whether the envelope is targeted.
    pub fn matches(&self, evpid: u64) -> bool {
        match *self {
            Target::All => true,
            Target::Envelope(e) => e == evpid,
            Target::Message(m) => (evpid >> 32) as u32 == m,
        }
    }
}

fn parse_target(s: &str) -> Option<Target> {
    if s == "all" {
        return Some(Target::All);
    }
    match s.len() {
        16 => u64::from_str_radix(s, 16).ok().map(Target::Envelope),
        1..=8 => u32::from_str_radix(s, 16).ok().map(Target::Message),
        _ => None,
    }
}

/// Parses a command line. Words may be abbreviated to a unique prefix (`sh q`).
pub fn parse(line: &str) -> Result<Command, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let pick = |w: &str, choices: &[&'static str]| -> Result<&'static str, String> {
        let hits: Vec<&&str> = choices.iter().filter(|c| c.starts_with(w)).collect();
        match hits.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("unknown word '{w}'")),
            _ => Err(format!("ambiguous word '{w}'")),
        }
    };
    let verb = pick(
        words.first().copied().unwrap_or(""),
        &[
            "show", "schedule", "remove", "pause", "resume", "log", "monitor", "smtp", "update",
            "reload",
        ],
    )?;
    let arg = |i: usize| {
        words
            .get(i)
            .copied()
            .ok_or_else(|| format!("{verb}: argument missing"))
    };
    let target = |i: usize| -> Result<Target, String> {
        let a = arg(i)?;
        parse_target(a).ok_or_else(|| format!("invalid id '{a}'"))
    };
    let agent = |i: usize| -> Result<Agent, String> {
        Ok(match pick(arg(i)?, &["mda", "mta", "smtp"])? {
            "mda" => Agent::Mda,
            "mta" => Agent::Mta,
            _ => Agent::Smtp,
        })
    };
    let cmd = match verb {
        "show" => match pick(
            arg(1)?,
            &[
                "queue", "envelope", "message", "stats", "routes", "hosts", "mta-sts", "metrics",
            ],
        )? {
            "queue" => Command::ShowQueue,
            "envelope" => match target(2)? {
                Target::Envelope(e) => Command::ShowEnvelope(e),
                _ => return Err("show envelope: an envelope id (16 hex digits) is needed".into()),
            },
            "message" => match target(2)? {
                Target::Envelope(e) => Command::ShowMessage((e >> 32) as u32),
                Target::Message(m) => Command::ShowMessage(m),
                Target::All => return Err("show message: an id is needed".into()),
            },
            "routes" => Command::ShowRoutes,
            "hosts" => Command::ShowHosts,
            "mta-sts" => Command::ShowMtaSts,
            "metrics" => Command::ShowMetrics,
            _ => Command::ShowStats,
        },
        "schedule" if words.get(1) == Some(&"domain") => {
            let d = arg(2)?;
            if !crate::mail::address::valid_domain(d) {
                return Err(format!("invalid domain '{d}'"));
            }
            Command::ScheduleDomain(d.to_ascii_lowercase())
        }
        "schedule" => Command::Schedule(target(1)?),
        "remove" => Command::Remove(target(1)?),
        "pause" => Command::Pause(agent(1)?),
        "resume" => Command::Resume(agent(1)?),
        "log" => Command::Log(pick(arg(1)?, &["brief", "verbose"])? == "verbose"),
        "monitor" => Command::Monitor,
        "reload" => Command::Reload,
        "update" => {
            pick(arg(1)?, &["table"])?;
            Command::UpdateTable(arg(2)?.to_string())
        }
        _ => Command::Smtp,
    };
    let used = match cmd {
        Command::ShowEnvelope(_)
        | Command::ShowMessage(_)
        | Command::ScheduleDomain(_)
        | Command::UpdateTable(_) => 3,
        Command::Monitor | Command::Smtp | Command::Reload => 1,
        _ => 2,
    };
    if words.len() > used {
        return Err(format!("unexpected '{}'", words[used]));
    }
    Ok(cmd)
}

/// One `show queue` line: `EVPID|SENDER|RCPT|DEST|ACTION|CTIME|LAST-TRY|RETRY|STATE|ERROR`.
pub fn queue_line(e: &Envelope, state: &str) -> String {
    let clean = |s: &str| s.replace(['|', '\n', '\r'], " ");
    format!(
        "{:016x}|{}|{}|{}|{}|{}|{}|{}|{}|{}",
        e.evpid,
        clean(&e.sender),
        clean(&e.rcpt),
        clean(&e.dest),
        clean(&e.action),
        e.ctime,
        e.last_try,
        e.retry,
        state,
        clean(&e.errorline)
    )
}

/// `show queue` read straight from the spool (the daemon is not running).
pub fn show_queue_offline(spool_root: &Path) -> io::Result<String> {
    let spool = Spool::at(spool_root);
    let mut out = String::new();
    for (msgid, envs) in spool.load_all()? {
        match envs {
            Ok(envs) => {
                for e in envs {
                    out.push_str(&queue_line(&e, "offline"));
                    out.push('\n');
                }
            }
            Err(err) => out.push_str(&format!("{msgid:08x}|corrupt: {err}\n")),
        }
    }
    Ok(out)
}

/// The control socket path for a spool.
pub fn socket_path(spool_root: &Path) -> PathBuf {
    spool_root.join(SOCKET_NAME)
}

/// Sends one command and copies the answer to `out`; the answer's first line starting
/// with `error:` makes the result an error.
pub fn request(socket: &Path, line: &str, out: &mut dyn Write) -> io::Result<bool> {
    let mut s = UnixStream::connect(socket)?;
    send_command(&mut s, line)?;
    let mut r = BufReader::new(s);
    let mut ok = true;
    let mut first = true;
    let mut buf = String::new();
    loop {
        buf.clear();
        if r.read_line(&mut buf)? == 0 {
            break;
        }
        if first && buf.starts_with("error:") {
            ok = false;
        }
        first = false;
        out.write_all(buf.as_bytes())?;
        out.flush()?;
    }
    Ok(ok)
}

/// Sends a command line. A daemon that turned the connection away has written its one
/// line and closed the connection: the write then fails with EPIPE, and the line is
/// still there to be read.
pub fn send_command(s: &mut UnixStream, line: &str) -> io::Result<()> {
    let sent = s
        .write_all(line.as_bytes())
        .and_then(|()| s.write_all(b"\n"));
    match sent {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e),
        _ => Ok(()),
    }
}

/// Reads at most `max` bytes of a command line from a blocking reader (for tests).
pub fn read_line_bounded(r: &mut dyn Read, max: usize) -> io::Result<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while buf.len() < max {
        if r.read(&mut byte)? == 0 || byte[0] == b'\n' {
            break;
        }
        buf.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&buf)
        .trim_end_matches('\r')
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        assert_eq!(parse("show queue"), Ok(Command::ShowQueue));
        assert_eq!(parse("sh q"), Ok(Command::ShowQueue));
        assert_eq!(
            parse("show envelope 0123456789abcdef"),
            Ok(Command::ShowEnvelope(0x0123456789abcdef))
        );
        assert_eq!(
            parse("show message 01234567"),
            Ok(Command::ShowMessage(0x01234567))
        );
        assert_eq!(parse("schedule all"), Ok(Command::Schedule(Target::All)));
        assert_eq!(
            parse("schedule domain Example.ORG"),
            Ok(Command::ScheduleDomain("example.org".into()))
        );
        assert!(parse("schedule domain").is_err());
        assert!(parse("schedule domain a..b").is_err());
        assert!(parse("schedule domain a.b c").is_err());
        assert_eq!(parse("show routes"), Ok(Command::ShowRoutes));
        assert_eq!(parse("sh h"), Ok(Command::ShowHosts));
        assert_eq!(parse("show mta-sts"), Ok(Command::ShowMtaSts));
        assert_eq!(parse("sh mt"), Ok(Command::ShowMtaSts));
        assert_eq!(parse("show metrics"), Ok(Command::ShowMetrics));
        assert_eq!(parse("sh met"), Ok(Command::ShowMetrics));
        assert!(parse("sh me 01234567").is_err());
        assert_eq!(
            parse("sh mes 01234567"),
            Ok(Command::ShowMessage(0x01234567))
        );
        assert!(parse("sh m 01234567").is_err(), "message or mta-sts");
        assert_eq!(
            parse("remove 1a2b3c4d"),
            Ok(Command::Remove(Target::Message(0x1a2b3c4d)))
        );
        assert_eq!(parse("pause mda"), Ok(Command::Pause(Agent::Mda)));
        assert_eq!(parse("resume sm"), Ok(Command::Resume(Agent::Smtp)));
        assert_eq!(parse("log verbose"), Ok(Command::Log(true)));
        assert_eq!(parse("monitor"), Ok(Command::Monitor));
        assert_eq!(parse("reload"), Ok(Command::Reload));
        assert!(parse("reload now").is_err());
        assert_eq!(
            parse("update table users"),
            Ok(Command::UpdateTable("users".into()))
        );
        assert_eq!(
            parse("up t Users"),
            Ok(Command::UpdateTable("Users".into()))
        );
        assert!(parse("update table").is_err());
        assert!(parse("update tables x y").is_err());
        assert!(parse("s q").is_err_and(|e| e.contains("ambiguous")));
        assert!(parse("show queue extra").is_err());
        assert!(parse("remove xyz").is_err());
        assert!(parse("").is_err());
        assert!(Target::Message(0x1a2b3c4d).matches(0x1a2b3c4d_00000001));
        assert!(!Target::Envelope(5).matches(6));
    }
}
