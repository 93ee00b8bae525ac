//! The SMTP server: command parsing, replies, the session machine and its socket glue.

pub mod command;
pub mod conn;
pub mod filtering;
pub mod sasl;
pub mod session;
