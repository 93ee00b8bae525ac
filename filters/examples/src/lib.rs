//! Example filters for smtpd, one binary each under `src/bin/`.
#![deny(missing_docs)]
