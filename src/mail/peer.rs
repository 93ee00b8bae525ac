//! What the rules match a recipient against: facts about the client (fixed at
//! connect time but for its reverse DNS name and its authentication), and the
//! transaction's HELO name and sender.

use super::address::Mailbox;
use std::net::IpAddr;

/// Facts about the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The client's address; `None` for the local socket.
    pub addr: Option<IpAddr>,
    /// Loopback or local socket (`from local`).
    pub local: bool,
    /// Our name on this listener.
    pub server_name: String,
    /// The listener's tag.
    pub tag: Option<String>,
    /// The client's reverse DNS name, when it was looked up and found.
    pub hostname: Option<String>,
    /// The session uses TLS (`match tls`): from the first byte, or since STARTTLS.
    pub tls: bool,
    /// The user the client authenticated as (SMTP AUTH), once it did.
    pub auth: Option<String>,
}

/// The context a recipient is matched in.
#[derive(Debug)]
pub struct MatchCtx<'a> {
    /// The client.
    pub client: &'a Peer,
    /// The HELO/EHLO name.
    pub helo: &'a str,
    /// MAIL FROM.
    pub sender: &'a Mailbox,
}
