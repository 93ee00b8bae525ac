//! The next hop of an outgoing session, as the configuration names it and the queue
//! plans it: the protocol, the server (a host and port, or a socket) and the route a
//! connection carries. Pure data and parsing: the outgoing sessions connect.

use std::net::IpAddr;

/// SMTP (relay) or LMTP (RFC 2033).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// SMTP with EHLO.
    Smtp,
    /// LMTP with LHLO.
    Lmtp,
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A TCP host and port.
    Tcp(String, u16),
    /// A unix socket path.
    Unix(String),
}

impl Target {
    /// Parses an LMTP destination (`host:port`, `[addr]:port`, `/path`) or a relay URL
    /// (`smtp://host[:port]`, `lmtp://host[:port]`); `default_port` when none is given.
    pub fn parse(s: &str, default_port: u16) -> Result<(Target, Option<Proto>), String> {
        let (proto, rest, default_port) = match s.split_once("://") {
            Some(("smtp", r)) => (Some(Proto::Smtp), r, 25),
            Some(("lmtp", r)) => (Some(Proto::Lmtp), r, 24),
            Some((p, _)) => return Err(format!("unsupported protocol {p:?}")),
            None => (None, s, default_port),
        };
        if rest.starts_with('/') {
            return Ok((Target::Unix(rest.to_string()), proto));
        }
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r.split_once(']').ok_or("unbalanced '['")?;
            match after.strip_prefix(':') {
                Some(p) => (h, p.parse().map_err(|_| format!("bad port {p:?}"))?),
                None if after.is_empty() => (h, default_port),
                None => return Err(format!("bad destination {s:?}")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => {
                    (h, p.parse().map_err(|_| format!("bad port {p:?}"))?)
                }
                _ => (rest, default_port),
            }
        };
        if host.is_empty() {
            return Err(format!("no host in {s:?}"));
        }
        Ok((Target::Tcp(host.to_string(), port), proto))
    }

    /// The host name to resolve before connecting; `None` for a unix socket or an
    /// address literal, which need no lookup.
    pub fn host_to_resolve(&self) -> Option<(&str, u16)> {
        match self {
            Target::Tcp(h, port) if h.parse::<IpAddr>().is_err() => Some((h, *port)),
            _ => None,
        }
    }
}

/// Where the recipients of one outgoing connection go: the action, its server, the
/// protocol and the name said in EHLO/LHLO. Envelopes of the same route share
/// connections; those of one message on a route share transactions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// The action's name.
    pub action: String,
    /// The server.
    pub target: Target,
    /// SMTP or LMTP.
    pub proto: Proto,
    /// The name given in EHLO/LHLO.
    pub helo: String,
}
