//! How an envelope is delivered, decided from its action in the configuration: a
//! request to the parent (local delivery), a recipient for an outgoing session on a
//! route (LMTP, relay), or an outcome without trying (the action is gone, the
//! destination cannot be delivered by it).

use crate::config::relay::{Relay, RelayTls};
use crate::config::{Config, Method};
use crate::mail::delivery::Dest;
use crate::mda::Outcome;
use crate::nexthop::Proto;
use crate::nexthop::Route;
use crate::nexthop::{RelayUrl, Security, Target};
use crate::privsep::{DeliverReq, LocalKind};
use crate::queue::envelope::Envelope;

/// What to do with a due envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// Hand it to the parent (the request's `id` and `len` are the caller's to fill).
    Local(DeliverReq),
    /// Give this recipient address to a session on the route.
    Mta(Route, String),
    /// Do not try: apply this outcome.
    Fail(Outcome),
}

/// Whether an action's envelopes go through an outgoing session (LMTP, relay), else
/// through the parent. `None` (the action is gone) goes through neither: it fails at
/// dispatch, counted with the parent's.
pub fn via_session(cfg: &Config, action: &str) -> bool {
    cfg.actions
        .iter()
        .any(|a| a.name == action && matches!(a.method, Method::Lmtp { .. } | Method::Relay(_)))
}

/// Whether an action's envelopes are delivered by the mda agent (every method but
/// relay: LMTP included), for `pause mda|mta` and the retry base.
pub fn is_local(cfg: &Config, action: &str) -> bool {
    cfg.actions
        .iter()
        .find(|a| a.name == action)
        .is_none_or(|a| a.method.is_local())
}

/// The lifetime of an action's envelopes, in seconds.
pub fn ttl(cfg: &Config, action: &str) -> u64 {
    cfg.actions
        .iter()
        .find(|a| a.name == action)
        .and_then(|a| a.ttl)
        .unwrap_or(cfg.queue.ttl)
        .as_secs()
}

/// Decides how `env` is delivered. `default_user` runs file and pipe destinations that
/// name no user of their own when the action names none either.
pub fn plan(cfg: &Config, default_user: &str, env: &Envelope) -> Plan {
    let Some(action) = cfg.actions.iter().find(|a| a.name == env.action) else {
        let why = format!("no action named {:?} in the configuration", env.action);
        return Plan::Fail(Outcome::TempFail(why));
    };
    let Some(dest) = Dest::decode(&env.dest) else {
        return Plan::Fail(Outcome::PermFail(format!("bad destination {:?}", env.dest)));
    };
    let run_as = |u: &str| action.user.clone().unwrap_or_else(|| u.to_string());
    let default_user = || {
        Some(env.user.clone())
            .filter(|u| !u.is_empty())
            .or_else(|| action.user.clone())
            .unwrap_or_else(|| default_user.to_string())
    };
    let (kind, user) = match (&dest, &action.method) {
        (Dest::User(u), Method::Maildir { path, junk }) => (
            LocalKind::Maildir {
                path: path.clone(),
                junk: *junk,
            },
            run_as(u),
        ),
        (Dest::User(u), Method::Mbox) => (LocalKind::Mbox, run_as(u)),
        (Dest::User(u), Method::Mda(cmd)) => (LocalKind::Mda(cmd.clone()), run_as(u)),
        (Dest::File(p), _) => (LocalKind::File(p.clone()), default_user()),
        (Dest::Pipe(c), _) => (LocalKind::Pipe(c.clone()), default_user()),
        (Dest::User(_), Method::ForwardOnly) if env.no_forward => {
            return Plan::Fail(Outcome::PermFail(
                "forwarding loop: the .forward leads back to its user".into(),
            ));
        }
        (Dest::User(u), Method::ForwardOnly) => (LocalKind::ForwardOnly, u.clone()),
        (Dest::User(_), Method::ExpandOnly) => {
            return Plan::Fail(Outcome::PermFail(
                "no mailbox delivery for this action (expand-only or forward-only)".into(),
            ));
        }
        (Dest::User(u), Method::Lmtp { dest, rcpt_to }) => {
            let rcpt = if *rcpt_to {
                env.rcpt.clone()
            } else {
                u.clone()
            };
            return mta(&action.name, dest, 24, Proto::Lmtp, &cfg.hostname, rcpt);
        }
        (Dest::Relay(addr), Method::Relay(r)) => return relay(cfg, &action.name, r, addr),
        (Dest::User(_), Method::Relay(r)) => return relay(cfg, &action.name, r, &env.rcpt),
        (Dest::Relay(_), _) => {
            return Plan::Fail(Outcome::PermFail(
                "a relay destination under an action that does not relay".into(),
            ));
        }
    };
    // The address delivered, for the `%{dest}` formats: the recipient itself when it
    // names this user (so a sub-address survives), else the user at the recipient's
    // domain.
    let dest_addr = match (&dest, env.rcpt.rsplit_once('@')) {
        (Dest::User(u), Some((l, d))) => {
            let base = crate::ruleset::strip_subaddress(l, cfg.smtp.sub_addr_delim);
            if base.eq_ignore_ascii_case(u) {
                env.rcpt.clone()
            } else {
                format!("{u}@{d}")
            }
        }
        (Dest::User(u), None) => u.clone(),
        _ => env.rcpt.clone(),
    };
    Plan::Local(DeliverReq {
        id: 0,
        kind,
        user,
        sender: env.sender.clone(),
        rcpt: env.rcpt.clone(),
        dest: dest_addr,
        subaddr_delim: cfg.smtp.sub_addr_delim,
        forward: matches!(dest, Dest::User(_)) && !env.no_forward,
        len: 0,
        userbase: action.userbase.filter(|_| matches!(dest, Dest::User(_))),
        account: None,
    })
}

fn mta(action: &str, dest: &str, port: u16, proto: Proto, helo: &str, rcpt: String) -> Plan {
    match Target::parse(dest, port) {
        Ok((target, p)) => Plan::Mta(
            Route {
                action: action.to_string(),
                target,
                proto: p.unwrap_or(proto),
                helo: helo.to_string(),
                security: Security::Plain,
                label: None,
            },
            rcpt,
        ),
        Err(e) => Plan::Fail(Outcome::PermFail(format!("destination {dest:?}: {e}"))),
    }
}

/// The route of a relayed recipient: the action's smarthost, the one its `domain`
/// table gives for the recipient's domain, else the domain's mail exchangers.
fn relay(cfg: &Config, action: &str, r: &Relay, rcpt: &str) -> Plan {
    let domain = rcpt
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default();
    let by_domain = r
        .domain
        .and_then(|t| cfg.tables.get(t))
        .and_then(|t| t.entries().get(&domain).map(str::to_string));
    let url = match (&r.host, by_domain) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(u)) => match RelayUrl::parse(&u, 25) {
            Ok(url) => Some(url),
            Err(e) => {
                return Plan::Fail(Outcome::TempFail(format!(
                    "451 4.3.5 relay URL for {domain} in the domain table: {e}"
                )))
            }
        },
        (None, None) => None,
    };
    let demand = |s: Security| match (s, r.tls) {
        (Security::Opportunistic, RelayTls::Verify | RelayTls::NoVerify) => Security::StartTls,
        (s, _) => s,
    };
    let route = match url {
        Some(url) => Route {
            action: action.to_string(),
            target: url.target,
            proto: url.proto.unwrap_or(Proto::Smtp),
            helo: r.helo.clone().unwrap_or_else(|| cfg.hostname.clone()),
            security: demand(url.security),
            label: url.label,
        },
        None if domain.is_empty() => {
            return Plan::Fail(Outcome::PermFail(format!(
                "550 5.1.2 no domain in {rcpt:?} to relay to"
            )))
        }
        // The DNS knows a domain by its A-labels (RFC 5891 §5).
        None => Route {
            action: action.to_string(),
            target: Target::Mx(match crate::mail::idna::to_ascii(&domain) {
                Some(a) => a,
                None => {
                    return Plan::Fail(Outcome::PermFail(format!(
                        "553 5.1.2 {domain:?} has a label that is not a U-label"
                    )))
                }
            }),
            proto: Proto::Smtp,
            helo: r.helo.clone().unwrap_or_else(|| cfg.hostname.clone()),
            security: demand(Security::Opportunistic),
            label: None,
        },
    };
    Plan::Mta(route, rcpt.to_string())
}
