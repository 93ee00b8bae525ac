//! How each attempt of an outgoing session protects itself, and which exchangers an
//! MTA-STS policy lets a session try: pure, from the route, the exchanger, the
//! action's `tls`, and what DANE and MTA-STS said of the destination.
//!
//! The order of precedence: the route's scheme first (LMTP and `smtp+notls://` are
//! plain text); then DANE, for an exchanger with authenticated TLSA records (RFC 7672;
//! MTA-STS never overrides it, RFC 8461 §2); then an MTA-STS policy in `enforce` mode
//! (TLS required, the certificate checked by PKIX for the exchanger's name, §4.2);
//! then the action's `tls` option; opportunistic TLS otherwise. A policy in `testing`
//! mode changes nothing but asks that an attempt it would have refused be reported.

use super::conn::TlsPlan;
use super::mx::{Candidate, Dane};
use super::sts::{Mode, Policy};
use crate::config::relay::RelayTls;
use crate::mda::Outcome;
use crate::nexthop::{Proto, Route, Security, Target};
use crate::tls::client::{ClientTls, Verify};
use std::net::IpAddr;
use std::sync::Arc;

/// What MTA-STS asks of one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StsCheck {
    /// Nothing: no policy, a policy of mode `none`, or not MX delivery.
    #[default]
    Nothing,
    /// `testing`, an exchanger the policy lists: TLS whose certificate would not pass
    /// PKIX for its name is reported.
    Report,
    /// `testing`, an exchanger the policy does not list: the attempt is reported, as
    /// one `enforce` would not make.
    Unlisted,
    /// `enforce`: TLS whose certificate passes PKIX for the exchanger's name, or no
    /// delivery.
    Require,
}

/// What `policy` asks of an attempt to the exchanger `host`.
pub fn sts_check(policy: Option<&Policy>, host: &str) -> StsCheck {
    match policy {
        Some(p) if p.mode == Mode::Enforce => StsCheck::Require,
        Some(p) if p.mode == Mode::Testing && p.lists(host) => StsCheck::Report,
        Some(p) if p.mode == Mode::Testing => StsCheck::Unlisted,
        _ => StsCheck::Nothing,
    }
}

/// The addresses of `domain`'s exchangers a session may try under `policy`: under
/// `enforce` only those of the exchangers it lists (RFC 8461 §4.1), DANE ones
/// included; none of them is a temporary failure of every recipient, so that the
/// mail waits for the domain to mend its policy or its MX records. Any other policy
/// keeps them all.
pub fn sts_filter(
    domain: &str,
    candidates: Vec<Candidate>,
    policy: Option<&Policy>,
) -> Result<Vec<Candidate>, Outcome> {
    let Some(p) = policy.filter(|p| p.mode == Mode::Enforce) else {
        return Ok(candidates);
    };
    let kept: Vec<Candidate> = candidates
        .into_iter()
        .filter(|c| p.lists(&c.host))
        .collect();
    if kept.is_empty() {
        return Err(Outcome::TempFail(format!(
            "451 4.7.5 MTA-STS: no exchanger of {domain} matches its policy"
        )));
    }
    Ok(kept)
}

/// How an attempt to `c` on `route` protects itself (`None`: plain text), given the
/// action's `tls` option and client configuration (`None`: the action has no TLS
/// configuration, so plain text) and what MTA-STS asks of it.
pub fn tls_plan(
    route: &Route,
    c: &Candidate,
    tls: RelayTls,
    config: Option<Arc<ClientTls>>,
    sts: StsCheck,
) -> Option<TlsPlan> {
    if route.proto == Proto::Lmtp || route.security == Security::Plain {
        return None;
    }
    let config = config?;
    let on_connect = route.security == Security::Implicit;
    let is_name = c.host.parse::<IpAddr>().is_err();
    let sni = is_name.then(|| c.host.clone());
    if let Dane::Tlsa { base, records } = &c.dane {
        let tlsa = records.clone();
        let mut names = vec![base.clone()];
        if let Target::Mx(d) = &route.target {
            names.push(d.clone());
        }
        return Some(TlsPlan {
            config,
            verify: Verify::Dane { tlsa, names },
            sni: Some(base.clone()),
            required: true,
            on_connect,
            policy: "dane",
            sts_report: false,
        });
    }
    let names = if is_name {
        vec![c.host.clone()]
    } else {
        Vec::new()
    };
    if sts == StsCheck::Require {
        // The roots of the action: the system's, or those of its `ca`.
        return Some(TlsPlan {
            config,
            verify: Verify::Pkix { roots: None, names },
            sni,
            required: true,
            on_connect,
            policy: "mta-sts",
            sts_report: false,
        });
    }
    let required = route.security != Security::Opportunistic;
    let (verify, policy) = match tls {
        RelayTls::Verify => (Verify::Pkix { roots: None, names }, "pkix"),
        _ => (
            Verify::Opportunistic { names },
            if required { "encrypt" } else { "opportunistic" },
        ),
    };
    Some(TlsPlan {
        config,
        verify,
        sni,
        required,
        on_connect,
        policy,
        sts_report: sts == StsCheck::Report,
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
