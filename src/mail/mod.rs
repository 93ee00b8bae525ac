//! The nouns of mail, on the ground floor: envelope addresses and their syntax, ESMTP
//! parameters, SMTP replies, the facts a recipient is matched against, the facts of a TLS session, and the
//! destinations a recipient expands to. Every room above uses them; they use nothing
//! but the standard library.

pub mod address;
pub mod auth;
pub mod base64;
pub mod delivery;
pub mod idna;
pub mod params;
pub mod peer;
pub mod reply;
pub mod tls;

pub use address::Mailbox;
pub use delivery::{Delivery, Dest};
pub use peer::{MatchCtx, Peer};
pub use reply::Reply;
pub use tls::TlsFacts;
