//! Outgoing sessions: LMTP to a local server, SMTP to a relay host or to the mail
//! exchangers of a domain (`mx.rs`), what is known of their servers (`hosts.rs`);
//! MTA-STS policies (`sts.rs`) and their HTTPS fetch (`https.rs`, `fetch.rs`), how
//! each attempt protects itself (`plan.rs`).

pub mod client;
pub mod conn;
pub mod fetch;
pub mod hosts;
pub mod https;
pub mod mx;
pub mod plan;
pub mod sts;
pub mod wire;
