//! Load generators for `bench/run` (see bench/README.md): Postfix's smtp-source speaks
//! neither TLS nor BDAT, so the TLS and BDAT phases drive the servers with these. They
//! are not part of smtpd.
//!
//! - `tls-source`: smtp-source's options (`-d -s -m -l -M -f -t`), every session over
//!   STARTTLS; each message's 250 checked.
//! - `tls-handshakes`: full TLS handshakes against an implicit-TLS (smtps) port, a new
//!   connection each, for a bounded time; each ends with the 220 greeting.
//! - `tls-hold`: opens N sessions that completed STARTTLS and EHLO, and holds them
//!   (the memory measure).
//! - `chunk-source`: smtp-source's options in plain text, each message sent with DATA
//!   or with BDAT (RFC 3030): the `bdat` phase.
//!
//! Threads, blocking sockets with time limits, no async runtime. The certificate is not
//! verified (the benchmark's is self-signed) but the handshake is: the server's
//! signature, the Finished messages, and a reply read through the protected channel.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod message;
pub mod smtp;
pub mod source;
pub mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::process::ExitCode;

/// A failure, in words; the tools print it and exit with status 1.
#[derive(Debug)]
pub struct Error(pub String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error(e.to_string())
    }
}

impl From<rustls::Error> for Error {
    fn from(e: rustls::Error) -> Error {
        Error(format!("TLS: {e}"))
    }
}

/// A tool's `main`: calls `run` with the arguments; prints what it returns (if not empty)
/// and exits with status 0, or prints the error after the tool's name on stderr and
/// exits with status 1.
pub fn main(tool: &str, run: fn(&[String]) -> Result<String, Error>) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{tool}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `HOST:PORT`; only loopback addresses are taken (the benchmark never sends
/// elsewhere).
pub fn loopback_addr(s: &str) -> Result<SocketAddr, Error> {
    let a: SocketAddr = s
        .parse()
        .map_err(|_| Error(format!("{s}: not an IP:PORT address")))?;
    if !a.ip().is_loopback() {
        return Err(Error(format!("{s}: not a loopback address")));
    }
    Ok(a)
}

/// Parses a number option, naming the option in the error.
pub fn number<T: std::str::FromStr>(opt: &str, v: Option<&String>) -> Result<T, Error> {
    v.and_then(|s| s.parse().ok())
        .ok_or_else(|| Error(format!("{opt}: a number is needed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback() {
        assert!(loopback_addr("127.0.0.1:25").is_ok());
        assert!(loopback_addr("[::1]:25").is_ok());
        assert!(loopback_addr("192.0.2.1:25").is_err());
        assert!(loopback_addr("localhost:25").is_err());
    }

    #[test]
    fn numbers() {
        assert_eq!(number::<u32>("-s", Some(&"20".to_string())).ok(), Some(20));
        assert!(number::<u32>("-s", Some(&"x".to_string())).is_err());
        assert!(number::<u32>("-s", None).is_err());
    }
}
