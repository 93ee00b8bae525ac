//! The smtpd filter protocol.
//!
//! This crate will hold the one codec of the compact binary filter protocol, shared by
//! the daemon and by filters written in Rust. For now it holds the protocol constants
//! the daemon and filters agree on.
#![deny(missing_docs)]

/// Version of the filter protocol spoken by this crate.
pub const PROTOCOL_VERSION: u16 = 1;

#[cfg(test)]
mod tests {
    #[test]
    fn version_is_one() {
        assert_eq!(super::PROTOCOL_VERSION, 1);
    }
}
