//! Outgoing sessions: LMTP to a local server, SMTP to a relay host; MTA-STS
//! policies (`sts.rs`) and their HTTPS fetch (`https.rs`).

pub mod client;
pub mod conn;
pub mod https;
pub mod sts;
pub mod wire;

//END
