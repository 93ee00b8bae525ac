//! Outgoing sessions: LMTP to a local server, SMTP to a relay host; MTA-STS
//! policies (`sts.rs`).

pub mod client;
pub mod conn;
pub mod sts;
pub mod wire;

//END
