//! Outgoing sessions: LMTP to a local server, SMTP to a relay host.

pub mod client;
pub mod conn;
pub mod wire;

//END
