//! The refusals of OpenSMTPD statements and options this server does not have: each
//! says why, and what to write instead (man/smtpd.conf.5, COMPATIBILITY, lists them).

/// `queue compression`.
pub(super) const QUEUE_COMPRESSION: &str = "'queue compression' is not supported: messages \
     stay in the spool only until they are delivered; remove the line (see 'queue \
     encryption' to keep their content unreadable on disk)";

/// `relay host <table>`.
pub(super) const RELAY_HOST_TABLE: &str = "'host <table>' (several smarthosts) is not \
     supported: give one URL, or 'domain <table>' for a smarthost per recipient domain";

/// `relay ... filter NAME`.
pub(super) const RELAY_FILTER: &str = "'filter' on a relay action is not supported: \
     filters see incoming sessions only; attach it to 'listen on' instead";

/// `scheduler limit ...`.
pub(super) const SCHEDULER: &str = "'scheduler' is not supported: the queue manager has no \
     such batches; local deliveries are bounded by 'mda limit max-session' and outgoing \
     connections by 'mta limit'";

/// `filter NAME phase ... report "TEXT"`.
pub(super) const BUILTIN_REPORT: &str = "the 'report' decision of built-in filters is not \
     supported: use 'reject', 'disconnect', 'rewrite', 'junk' or 'bypass', or a filter \
     process that logs what it sees";

/// The message for a phase of a built-in filter the parser does not know.
pub(super) fn unknown_phase(p: &str) -> String {
    match p {
        "auth" => "phase 'auth' is not supported for built-in filters: check 'auth' in the \
                   mail-from phase instead"
            .to_string(),
        "data-line" | "quit" | "rset" | "noop" => format!(
            "phase '{p}' is not supported for built-in filters (nor by OpenSMTPD's): the \
             phases are connect, helo, ehlo, mail-from, rcpt-to, data and commit"
        ),
        _ => format!("unknown phase '{p}'"),
    }
}

/// The message for a statement keyword the parser does not know.
pub(super) fn unknown_statement(kw: &str) -> String {
    match kw {
        "scheduler" => SCHEDULER.to_string(),
        _ => format!("unknown keyword '{kw}'"),
    }
}

/// Why a limit name of OpenSMTPD's `statement limit` is refused, or `None` when
/// OpenSMTPD does not know it either.
pub(super) fn limit_refusal(statement: &str, name: &str) -> Option<String> {
    let why = match (statement, name) {
        ("mda", "max-session-per-user") => {
            "the deliveries of one user are not counted apart; 'mda limit max-session' \
             bounds them all"
        }
        ("mda", "task-hiwat" | "task-lowat" | "task-release") => {
            "local deliveries are not handed out in tasks"
        }
        (
            "mta",
            "max-conn-per-source"
            | "max-conn-per-connector"
            | "max-conn-per-relay"
            | "max-conn-per-domain",
        ) => {
            "outgoing connections are counted per destination ('max-conn-per-route') and \
             per server address ('max-conn-per-host') only"
        }
        (
            "mta",
            "conn-delay-host"
            | "conn-delay-route"
            | "conn-delay-source"
            | "conn-delay-connector"
            | "conn-delay-relay"
            | "conn-delay-domain"
            | "reconn-delay-route"
            | "session-transaction-delay",
        ) => {
            "connections are not delayed on purpose: failures suspend a destination as \
             smtpd.conf(5) describes under 'Outgoing connections'"
        }
        ("mta", "session-keepalive") => {
            "an outgoing session sends QUIT as soon as no message waits for its destination, \
             instead of staying open idle"
        }
        ("mta", "max-failures-per-session") => {
            "a session ends at its first failure that is not one recipient's"
        }
        ("mta", "task-hiwat" | "task-lowat" | "task-release") => {
            "envelopes are not handed out in tasks"
        }
        ("mta", "inet4" | "inet6") => {
            "connections use the addresses of both families; give 'src' to an action to \
             choose the address they leave from"
        }
        _ => return None,
    };
    Some(format!("{statement} limit {name} is not supported: {why}"))
}

#[cfg(test)]
mod tests {
    use super::limit_refusal;

    #[test]
    fn only_opensmtpd_names_get_a_reason() {
        assert!(limit_refusal("mta", "conn-delay-route").is_some());
        assert!(limit_refusal("mda", "task-release").is_some());
        assert!(limit_refusal("mta", "made-up").is_none());
        assert!(limit_refusal("smtp", "max-session-per-user").is_none());
    }
}
