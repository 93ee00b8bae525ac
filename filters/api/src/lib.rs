//! The smtpd filter protocol: the one codec shared by the daemon and by filters written
//! in Rust. The protocol is specified in smtpd-filters(7).
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod codec;
pub mod ctx;
mod event_loop;
pub mod filter;
mod pending;
pub mod preamble;
pub mod sys;
pub mod verdict;

pub use codec::{Decoder, Frame, WireError, VERSION as PROTOCOL_VERSION};
pub use ctx::{Answer, Ctx, Interest, Ready, TimerId};
pub use filter::{Auth, Connect, Filter, Tls};
pub use verdict::{Decision, Edit};
