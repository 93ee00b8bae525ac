//! smtpd: an SMTP daemon in the spirit of OpenSMTPD.
//!
//! The binary is a thin layer over this library so that tests and fuzz targets reach
//! the same code. The architecture is described in ARCHITECTURE.md.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod config;
pub mod control;
pub mod crashpoint;
pub mod credentials;
pub mod dns;
pub mod event_loop;
pub mod expand;
pub mod files;
pub mod filter;
pub mod format;
pub mod linebuf;
pub mod logger;
pub mod lookup;
pub mod mail;
pub mod mda;
pub mod metrics;
pub mod mta;
pub mod nexthop;
pub mod privsep;
pub mod proxy;
pub mod queue;
pub mod ruleset;
pub mod smtp;
pub mod srs;
pub mod stream;
pub mod submit;
pub mod sys;
pub mod table;
#[cfg(test)]
mod testutil;
pub mod timer;
pub mod tls;
pub mod tools;
pub mod worker;
