//! Filters: standalone programs started once with the daemon that see every SMTP phase
//! through the binary protocol of smtpd-filters(7) (codec in `filters/api`), or through
//! OpenSMTPD's text protocol (`text.rs`, `opensmtpd.rs`, `pipe_text.rs`).

pub mod answer;
pub mod chain;
pub mod limit;
pub mod opensmtpd;
pub mod phase;
pub mod pipe;
pub mod pipe_text;
pub mod report;
pub mod supervisor;
pub mod text;
pub mod track;
