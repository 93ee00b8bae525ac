//! The socket glue of an MTA-STS policy fetch (RFC 8461 §3.3): TLS on port 443 of
//! `mta-sts.DOMAIN`, the certificate checked by PKIX for that name, the GET that
//! `https.rs` writes, its response read within its limits, the policy parsed.
//!
//! Nothing here waits: the loop resolves the host (the answers come through
//! [`PolicyFetch::answer`]), connects to one address after the other
//! ([`PolicyFetch::next_addr`], [`PolicyFetch::attempt`]), calls
//! [`PolicyFetch::pump`] on the socket's events and ends the fetch at its deadline.
//! An attempt that fails before the first byte of a response (refused, reset, a
//! failed handshake) gives way to the next address; one that failed later ends the
//! fetch.

use super::https::{self, Progress, Response, MAX_BODY, MAX_HEAD};
use super::sts::Policy;
use crate::dns::{DnsError, DnsResult, Qtype, Rdata};
use crate::stream::Stream;
use crate::tls::client::{client_conn, ClientTls, Verify};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The policy host's port.
pub const PORT: u16 = 443;
/// Addresses of the policy host tried at most.
pub const MAX_ADDRS: usize = 4;
/// Bytes of a response read at most, chunk framing included: past this, the server
/// is only wasting the fetch's time.
const MAX_READ: usize = 2 * (MAX_HEAD + MAX_BODY);
/// Reads and writes in one call of [`PolicyFetch::pump`] at most.
const ROUNDS: usize = 256;

/// Where a fetch stands after its socket moved.
#[derive(Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Waiting for the socket.
    More,
    /// The policy.
    Policy(Policy),
    /// The attempt failed: why, and whether it failed before any byte of a response
    /// came (another address of the host may serve).
    Failed {
        /// Why.
        why: String,
        /// Nothing was read yet.
        next: bool,
    },
}

/// One fetch of a domain's policy.
pub struct PolicyFetch {
    /// The recipient domain.
    pub domain: String,
    /// The id of the `_mta-sts` TXT record that asked for it.
    pub id: String,
    /// Generation, for its deadline and its DNS answers.
    pub gen: u64,
    /// The socket of the current attempt.
    pub sock: Option<Stream>,
    /// The TLS configuration: versions, suites and roots of the relay action.
    config: Arc<ClientTls>,
    /// Answers still to come for the host's addresses (AAAA, A).
    pending: u8,
    v6: Vec<IpAddr>,
    v4: Vec<IpAddr>,
    /// Why a lookup failed (not NXDOMAIN or NODATA).
    dns_failure: Option<String>,
    /// The addresses left to try.
    addrs: VecDeque<IpAddr>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The address of the current attempt.
    pub addr: Option<SocketAddr>,
    request: Vec<u8>,
    sent: usize,
    response: Response,
    read: usize,
    buf: Vec<u8>,
}

impl PolicyFetch {
    /// A fetch of `domain`'s policy, asked by the TXT id `id`, not resolved yet: both
    /// AAAA and A answers are awaited.
    pub fn new(domain: &str, id: &str, config: Arc<ClientTls>, gen: u64) -> PolicyFetch {
        PolicyFetch {
            domain: domain.to_string(),
            id: id.to_string(),
            gen,
            sock: None,
            config,
            pending: 2,
            v6: Vec::new(),
            v4: Vec::new(),
            dns_failure: None,
            addrs: VecDeque::new(),
            last_error: None,
            addr: None,
            request: https::request(domain),
            sent: 0,
            response: Response::new(),
            read: 0,
            buf: vec![0; 16 * 1024],
        }
    }

    /// The host that serves the policy.
    pub fn host(&self) -> String {
        https::policy_host(&self.domain)
    }

    /// An answer for the host's addresses: `None` while one is still to come, then
    /// `Ok` when there are addresses to try (IPv6 first), or why there are none.
    pub fn answer(&mut self, qtype: Qtype, result: DnsResult) -> Option<Result<(), String>> {
        if self.pending == 0 {
            return None;
        }
        self.pending -= 1;
        match result {
            Ok(a) => {
                for rd in a.records {
                    match rd {
                        Rdata::Addr(ip @ IpAddr::V6(_)) => self.v6.push(ip),
                        Rdata::Addr(ip @ IpAddr::V4(_)) => self.v4.push(ip),
                        _ => {}
                    }
                }
            }
            Err(DnsError::NxDomain { .. }) => {}
            Err(e @ (DnsError::TempFail(_) | DnsError::PermFail(_))) => {
                self.dns_failure = Some(format!("{} {}: {e}", self.host(), qtype.as_str()));
            }
        }
        if self.pending > 0 {
            return None;
        }
        self.addrs = self
            .v6
            .iter()
            .chain(self.v4.iter())
            .copied()
            .take(MAX_ADDRS)
            .collect();
        if !self.addrs.is_empty() {
            return Some(Ok(()));
        }
        Some(Err(match &self.dns_failure {
            Some(e) => format!("cannot resolve {e}"),
            None => format!("{} has no address", self.host()),
        }))
    }

    /// The next address to connect to.
    pub fn next_addr(&mut self) -> Option<SocketAddr> {
        self.addrs.pop_front().map(|ip| SocketAddr::new(ip, PORT))
    }

    /// Starts an attempt on `sock` (connecting to `addr`): TLS at once, for the
    /// policy host's name, the request queued behind the handshake.
    pub fn attempt(&mut self, mut sock: Stream, addr: SocketAddr) -> Result<(), String> {
        self.addr = Some(addr);
        let host = self.host();
        let verify = Verify::Pkix {
            roots: None,
            names: vec![host.clone()],
        };
        let (conn, outcome) = client_conn(&self.config, Some(&host), verify)?;
        sock.start_client_tls(conn, outcome)
            .map_err(|e| format!("TLS: {e}"))?;
        self.sock = Some(sock);
        self.sent = 0;
        self.read = 0;
        self.response = Response::new();
        Ok(())
    }

    /// The attempt failed: why, and whether another address may be tried.
    fn failed(&self, why: String) -> Pumped {
        Pumped::Failed {
            why,
            next: self.read == 0,
        }
    }

    /// The body is complete: the policy, or why it is none.
    fn done(&self) -> Pumped {
        let body = self.response.body().unwrap_or_default();
        match Policy::parse(body) {
            Ok(p) => Pumped::Policy(p),
            Err(e) => self.failed(format!("bad policy: {e}")),
        }
    }

    /// Moves bytes until the socket would block: the request out, the response in.
    pub fn pump(&mut self) -> Pumped {
        let Some(sock) = self.sock.as_mut() else {
            return self.failed("no connection".into());
        };
        if let Some(Ok(Some(e)) | Err(e)) = sock.tcp().map(|t| t.take_error()) {
            return self.failed(format!("connection: {e}"));
        }
        let quiet = |e: &io::Error| {
            matches!(
                e.kind(),
                io::ErrorKind::WouldBlock
                    | io::ErrorKind::NotConnected
                    | io::ErrorKind::Interrupted
            )
        };
        for _ in 0..ROUNDS {
            // rustls keeps the request until the handshake is over.
            if self.sent < self.request.len() {
                match sock.write(&self.request[self.sent..]) {
                    Ok(n) => self.sent += n,
                    Err(e) if quiet(&e) => {}
                    Err(e) => return self.failed(format!("write: {e}")),
                }
            }
            match sock.flush_records() {
                Ok(()) => {}
                Err(e) if quiet(&e) => {}
                Err(e) => return self.failed(format!("write: {e}")),
            }
            let handshaking = sock.handshaking();
            let n = match sock.read(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if quiet(&e) => return Pumped::More,
                Err(e) if handshaking => return self.failed(format!("TLS: {e}")),
                Err(e) => return self.failed(format!("read: {e}")),
            };
            if n == 0 {
                if handshaking {
                    return self.failed("TLS: connection closed in the handshake".into());
                }
                return match self.response.eof() {
                    Ok(_) => self.done(),
                    Err(e) => self.failed(e.to_string()),
                };
            }
            self.read += n;
            if self.read > MAX_READ {
                return self.failed(format!("response over {MAX_READ} bytes"));
            }
            match self.response.feed(&self.buf[..n]) {
                Ok(Progress::Done) => return self.done(),
                Ok(Progress::More) => {}
                Err(e) => return self.failed(e.to_string()),
            }
        }
        // A server dribbling bytes: what it sends next wakes the fetch again.
        Pumped::More
    }
}
