//! The queue: envelopes and the on-disk spool.

pub mod envelope;
pub mod spool;
