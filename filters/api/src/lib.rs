//! The smtpd filter protocol: the one codec shared by the daemon and by filters written
//! in Rust. The protocol is specified in smtpd-filters(7).
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod codec;
pub mod filter;
pub mod preamble;
pub mod verdict;

pub use codec::{Decoder, Frame, WireError, VERSION as PROTOCOL_VERSION};
pub use filter::{Auth, Connect, Ctx, Filter, Tls};
pub use verdict::{Decision, Edit};
