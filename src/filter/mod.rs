//! Filters: standalone programs started once with the daemon that see every SMTP phase
//! through the binary protocol of smtpd-filters(7) (codec in `filters/api`).

pub mod answer;
pub mod chain;
pub mod limit;
pub mod phase;
pub mod pipe;
pub mod report;
pub mod supervisor;
