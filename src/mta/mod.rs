//! Outgoing sessions: LMTP to a local server, SMTP to a relay host or to the mail
//! exchangers of a domain (`mx.rs`), what is known of their servers (`hosts.rs`);
//! MTA-STS policies (`sts.rs`) and their HTTPS fetch (`https.rs`).

pub mod client;
pub mod conn;
pub mod hosts;
pub mod https;
pub mod mx;
pub mod sts;
pub mod wire;
