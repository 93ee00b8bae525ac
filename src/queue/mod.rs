//! The queue: envelopes and the on-disk spool.

pub mod bounce;
pub mod commit;
pub mod edit;
pub mod envelope;
pub mod forward;
pub mod free;
pub mod io;
pub mod manager;
pub mod masquerade;
pub mod notice;
pub mod rewrite;
pub mod scheduler;
pub mod seal;
pub mod spool;
pub mod tidy;
