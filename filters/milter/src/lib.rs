//! The milter bridge's pieces, as a library for its binary (`filter-milter`) and its
//! fuzz target: the milter protocol codec (v6), the message as milters see it, the
//! connection to one milter and the per-session bridge.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod conn;
pub mod message;
pub mod milter;
pub mod session;
