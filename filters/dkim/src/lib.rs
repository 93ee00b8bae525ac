//! filter-dkim: DKIM signing (RFC 6376, with Ed25519 from RFC 8463) of the messages of
//! internal sessions, and verification of the others with an Authentication-Results
//! header field (RFC 8601), as a filter of smtpd's protocol (smtpd-filters(7)). See
//! filter-dkim(8).
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod canon;
pub mod config;
pub mod dns;
pub mod header;
pub mod jobs;
pub mod keys;
pub mod machine;
pub mod sign;
pub mod tags;
pub mod verify;
