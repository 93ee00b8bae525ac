//! What the queue manager counts: the counters of `smtpctl show stats`, `monitor` and
//! the metrics, and the method an envelope's delivery is counted under.

use crate::config::Config;
use crate::queue::envelope::Envelope;

/// Counters for `smtpctl show stats` and `monitor`.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Envelopes delivered.
    pub delivered: u64,
    /// Temporary failures.
    pub tempfail: u64,
    /// Permanent failures.
    pub permfail: u64,
    /// Envelopes expired.
    pub expired: u64,
    /// Bounces generated.
    pub bounces: u64,
    /// Envelopes removed by hand.
    pub removed: u64,
    /// Delivery outcomes by method (`maildir`, `relay-mx`, ...) and result (`ok`,
    /// `tempfail`, `permfail`).
    pub by_method: std::collections::BTreeMap<(&'static str, &'static str), u64>,
}

/// The method label of an envelope's delivery, for [`Stats::by_method`].
pub(super) fn method_label(cfg: &Config, env: &Envelope) -> &'static str {
    use crate::config::model::Method;
    use crate::mail::delivery::Dest;
    match Dest::decode(&env.dest) {
        Some(Dest::File(_)) => return "file",
        Some(Dest::Pipe(_)) => return "pipe",
        _ => {}
    }
    match cfg
        .actions
        .iter()
        .find(|a| a.name == env.action)
        .map(|a| &a.method)
    {
        Some(Method::Maildir { .. }) => "maildir",
        Some(Method::Mbox) => "mbox",
        Some(Method::Mda(_)) => "mda",
        Some(Method::Lmtp { .. }) => "lmtp",
        Some(Method::Relay(r)) if r.host.is_some() => "relay-host",
        Some(Method::Relay(_)) => "relay-mx",
        _ => "other",
    }
}
