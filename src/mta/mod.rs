//! Outgoing sessions: LMTP to a local server, SMTP to a relay host or to the mail
//! exchangers of a domain.

pub mod client;
pub mod conn;
pub mod hosts;
pub mod mx;
pub mod wire;
