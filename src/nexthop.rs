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
    /// The mail exchangers of a domain (RFC 5321 §5.1), port 25.
    Mx(String),
}

/// How a connection is protected, from the relay URL's scheme and the action's `tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// Never TLS: `smtp+notls://`, LMTP.
    Plain,
    /// STARTTLS when the server offers it, plain text otherwise: `smtp://`, MX delivery.
    Opportunistic,
    /// STARTTLS or no delivery: `smtp+tls://`, `tls`.
    StartTls,
    /// TLS from the first byte: `smtps://`.
    Implicit,
}

/// A relay URL: `[scheme://][label@]host[:port]`, `lmtp://host[:port]` or a socket path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayUrl {
    /// Where to connect.
    pub target: Target,
    /// SMTP or LMTP, when the scheme says.
    pub proto: Option<Proto>,
    /// What the scheme asks of TLS.
    pub security: Security,
    /// The `label@` naming the credentials in the action's `auth` table.
    pub label: Option<String>,
}

impl RelayUrl {
    /// Parses a relay URL (`smtp://`, `smtp+tls://`, `smtp+notls://`, `smtps://`,
    /// `lmtp://`, or none) with an optional `label@`; `default_port` when none is given
    /// and the scheme implies none.
    pub fn parse(s: &str, default_port: u16) -> Result<RelayUrl, String> {
        let (scheme, rest) = match s.split_once("://") {
            Some((p, r)) => (Some(p), r),
            None => (None, s),
        };
        let (proto, security, port) = match scheme {
            None => (None, Security::Opportunistic, default_port),
            Some("smtp") => (Some(Proto::Smtp), Security::Opportunistic, 25),
            Some("smtp+tls") => (Some(Proto::Smtp), Security::StartTls, 25),
            Some("smtp+notls") => (Some(Proto::Smtp), Security::Plain, 25),
            Some("smtps") => (Some(Proto::Smtp), Security::Implicit, 465),
            Some("lmtp") => (Some(Proto::Lmtp), Security::Plain, 24),
            Some(p) => return Err(format!("unsupported protocol {p:?}")),
        };
        let (label, rest) = match rest.split_once('@') {
            Some((l, r)) if !rest.starts_with('/') => {
                if l.is_empty()
                    || !l
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                {
                    return Err(format!("bad label {l:?}"));
                }
                (Some(l.to_string()), r)
            }
            _ => (None, rest),
        };
        if label.is_some() && proto == Some(Proto::Lmtp) {
            return Err("lmtp:// takes no label".into());
        }
        let target = Target::parse_host(rest, port, s)?;
        let security = match (&target, proto) {
            (Target::Unix(_), _) | (_, Some(Proto::Lmtp)) => Security::Plain,
            _ => security,
        };
        Ok(RelayUrl {
            target,
            proto,
            security,
            label,
        })
    }
}

impl Target {
    /// Parses an LMTP destination (`host:port`, `[addr]:port`, `/path`) or a relay URL
    /// (`smtp://host[:port]`, `lmtp://host[:port]`); `default_port` when none is given.
    pub fn parse(s: &str, default_port: u16) -> Result<(Target, Option<Proto>), String> {
        let url = RelayUrl::parse(s, default_port)?;
        if url.label.is_some() {
            return Err(format!("no label expected in {s:?}"));
        }
        Ok((url.target, url.proto))
    }

    /// Parses `host[:port]`, `[addr][:port]` or `/path`; `s` is the whole text, for
    /// messages.
    fn parse_host(rest: &str, default_port: u16, s: &str) -> Result<Target, String> {
        if rest.starts_with('/') {
            return Ok(Target::Unix(rest.to_string()));
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
        Ok(Target::Tcp(host.to_string(), port))
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
/// protocol, the name said in EHLO/LHLO and the TLS asked for. Envelopes of the same
/// route share connections; those of one message on a route share transactions.
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
    /// What TLS the route asks for.
    pub security: Security,
    /// The label naming the credentials of the smarthost, from its URL.
    pub label: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Result<RelayUrl, String> {
        RelayUrl::parse(s, 25)
    }

    #[test]
    fn relay_urls_of_every_scheme() {
        let tcp = |h: &str, p| Target::Tcp(h.into(), p);
        let cases = [
            (
                "smtp://mx.example.org",
                tcp("mx.example.org", 25),
                Security::Opportunistic,
            ),
            (
                "mx.example.org:2525",
                tcp("mx.example.org", 2525),
                Security::Opportunistic,
            ),
            (
                "smtp+tls://mx.example.org",
                tcp("mx.example.org", 25),
                Security::StartTls,
            ),
            ("smtp+notls://[::1]:26", tcp("::1", 26), Security::Plain),
            (
                "smtps://mx.example.org",
                tcp("mx.example.org", 465),
                Security::Implicit,
            ),
            (
                "smtps://192.0.2.1:4650",
                tcp("192.0.2.1", 4650),
                Security::Implicit,
            ),
            ("lmtp://127.0.0.1", tcp("127.0.0.1", 24), Security::Plain),
            (
                "lmtp:///run/lmtp.sock",
                Target::Unix("/run/lmtp.sock".into()),
                Security::Plain,
            ),
        ];
        for (s, target, security) in cases {
            let u = url(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                (u.target, u.security, u.label),
                (target, security, None),
                "{s}"
            );
        }
        let u = url("smtp+tls://bob-1@relay.example.net:587").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(u.label.as_deref(), Some("bob-1"));
        assert_eq!(u.target, tcp("relay.example.net", 587));
        for bad in [
            "ftp://x",
            "smtp://@x",
            "smtp://a b@x",
            "lmtp://l@x",
            "smtp://",
            "smtp://[::1",
            "smtp://x:port",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
        // Only a name needs the resolver.
        assert_eq!(Target::Mx("example.org".into()).host_to_resolve(), None);
    }
}
