//! Connections of `proxy-v2` listeners before their session: each waits, as an
//! endpoint of its own, for the PROXY protocol header its proxy sends first (parsed
//! by `crate::proxy`), within [`HEADER_TIMEOUT`]. The socket is read with MSG_PEEK
//! first, so that no octet after the header is taken: what follows is the client's
//! (its SMTP commands, or the ClientHello of an `smtps` listener), and stays in the
//! socket for the session. Nothing is sent before the header is whole and valid; an
//! invalid one, a timeout or a close ends the connection without a word, logged.
//!
//! Once the header is read the connection is admitted as any other, with the client
//! the header names: the limits of sessions and connections by address apply to it,
//! never to the proxy (but for LOCAL and UNKNOWN headers, which name none).
//!
//! ```text
//! accept --> Endpoint::Proxy --header--> admit(client) --> tcp_session --> Endpoint::Smtp
//!                 |  invalid, closed, timeout: closed, `smtp proxy-failed`
//! ```

use super::deadlines::Due;
use super::{accept::canonical, Endpoint, Server, FIRST_SLOT};
use crate::mail::auth::log_word;
use crate::mail::reply::Reply;
use crate::proxy::{self, Endpoints, Header, MAX_HEADER};
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long a proxy has to send its header once connected.
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection of a `proxy-v2` listener whose header is not read yet.
pub(super) struct ProxyConn {
    /// The socket; `None` once it went to its session.
    pub(super) sock: Option<TcpStream>,
    /// Generation, for its deadline.
    pub(super) gen: u64,
    /// The listener's index in the configuration.
    lidx: usize,
    /// The proxy's end (canonical).
    from: SocketAddr,
    /// The header's octets so far.
    buf: Vec<u8>,
}

impl ProxyConn {
    /// The index of the listener it came to.
    pub(super) fn listener(&self) -> usize {
        self.lidx
    }

    /// Its listener has another index in a reloaded configuration.
    pub(super) fn set_listener(&mut self, idx: usize) {
        self.lidx = idx;
    }
}

/// The proxy a session came through and what its header said.
pub(super) struct Via {
    /// The proxy's end of the connection (canonical).
    pub(super) proxy: SocketAddr,
    /// The header.
    pub(super) header: Header,
}

impl Via {
    /// Both ends the header named, canonical (IPv4-mapped IPv6 addresses as IPv4);
    /// `None` for LOCAL and UNKNOWN.
    pub(super) fn endpoints(&self) -> Option<Endpoints> {
        self.header.addrs.map(|e| Endpoints {
            src: SocketAddr::new(canonical(e.src.ip()), e.src.port()),
            dst: SocketAddr::new(canonical(e.dst.ip()), e.dst.port()),
        })
    }

    /// The client the session serves: the header's source, else the proxy.
    fn client(&self) -> SocketAddr {
        self.endpoints().map_or(self.proxy, |e| e.src)
    }

    /// The words the `connected` log line gets: the proxy, the header's kind, and the
    /// TLS the proxy terminated.
    pub(super) fn log_words(&self) -> String {
        let kind = match (self.header.version, self.header.addrs.is_some()) {
            (1, true) => "v1",
            (1, false) => "v1-unknown",
            (_, true) => "v2",
            (_, false) => "v2-local",
        };
        let mut out = format!(" proxy={} proxy-header={kind}", self.proxy);
        if let Some(t) = &self.header.tls {
            let word = |v: &Option<String>| v.as_deref().map_or("unknown".into(), log_word);
            out.push_str(&format!(
                " proxy-tls={} proxy-cipher={} proxy-client-cert={}",
                word(&t.version),
                word(&t.cipher),
                if t.client_cert { "verified" } else { "none" }
            ));
        }
        out
    }
}

/// Where reading a header stands.
enum Progress {
    /// More is to come.
    Wait,
    /// The header is whole, and read to its last octet only.
    Done(Header),
    /// The connection must be closed, for this reason.
    Fail(String),
}

/// Reads what the proxy sent, never past the header: each round peeks at what the
/// socket holds, and takes only the octets the parser counts as header.
fn read_header(sock: &TcpStream, buf: &mut Vec<u8>) -> Progress {
    let mut peeked = [0u8; MAX_HEADER];
    loop {
        let room = MAX_HEADER - buf.len();
        let n = match sock.peek(&mut peeked[..room]) {
            Ok(0) if buf.is_empty() => return Progress::Fail("closed before the header".into()),
            Ok(0) => return Progress::Fail("closed within the header".into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Wait,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Progress::Fail(format!("read error: {e}")),
        };
        let have = buf.len();
        buf.extend_from_slice(&peeked[..n]);
        let (take, header) = match proxy::parse(buf) {
            Ok(None) if buf.len() >= MAX_HEADER => {
                return Progress::Fail("header too long".into());
            }
            Ok(None) => (n, None),
            Ok(Some((len, h))) => (len.saturating_sub(have), Some(h)),
            Err(e) => return Progress::Fail(e.to_string()),
        };
        buf.truncate(have + take);
        if let Err(e) = consume(sock, take) {
            return Progress::Fail(format!("read error: {e}"));
        }
        if let Some(h) = header {
            return Progress::Done(h);
        }
    }
}

/// Takes `n` octets the socket was seen to hold.
fn consume(mut sock: &TcpStream, mut n: usize) -> io::Result<()> {
    let mut sink = [0u8; 512];
    while n > 0 {
        let want = n.min(sink.len());
        match sock.read(&mut sink[..want]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(got) => n -= got,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Server {
    /// A connection accepted on `proxy-v2` listener `lidx` from `peer`: it waits for
    /// its header. Connections waiting count toward `max-sessions` with the sessions.
    pub(super) fn proxy_accept(
        &mut self,
        mut sock: TcpStream,
        peer: SocketAddr,
        lidx: usize,
        now: Instant,
    ) {
        let from = SocketAddr::new(canonical(peer.ip()), peer.port());
        if self.tcp_sessions + self.proxy_pending >= self.max_sessions {
            self.counters.refused_connection("max-sessions");
            super::accept::refuse(&mut sock, &Reply::TOO_MANY_SESSIONS);
            log::info!("smtp refused address={} reason=max-sessions", from.ip());
            return;
        }
        let gen = self.next_gen;
        self.next_gen += 1;
        let key = self.slab.insert(Endpoint::Proxy(Box::new(ProxyConn {
            sock: Some(sock),
            gen,
            lidx,
            from,
            buf: Vec::new(),
        })));
        if let Some(Endpoint::Proxy(c)) = self.slab.get_mut(key) {
            let registered = c.sock.as_mut().map(|s| {
                self.poll
                    .registry()
                    .register(s, Token(key + FIRST_SLOT), Interest::READABLE)
            });
            if let Some(Err(e)) = registered {
                log::warn!("smtpd cannot register a connection: {e}");
                self.slab.remove(key);
                return;
            }
        }
        self.proxy_pending += 1;
        self.timers
            .add(now + HEADER_TIMEOUT, Due::Endpoint { key, gen });
    }

    /// Reads the header of the connection at `key`; once it is whole the session
    /// starts, for the client it names.
    pub(super) fn proxy_io(&mut self, key: usize, now: Instant) {
        let Some(Endpoint::Proxy(c)) = self.slab.get_mut(key) else {
            return;
        };
        let Some(sock) = c.sock.as_ref() else {
            return;
        };
        let header = match read_header(sock, &mut c.buf) {
            Progress::Wait => return,
            Progress::Done(h) => h,
            Progress::Fail(why) => return self.proxy_failed(key, &why),
        };
        let (lidx, proxy) = (c.lidx, c.from);
        let Some(mut sock) = c.sock.take() else {
            return;
        };
        // The session registers the socket anew, under its own key.
        let _ = self.poll.registry().deregister(&mut sock);
        self.closing.push(key);
        let via = Via { proxy, header };
        let client = via.client();
        if self.admit(&mut sock, client.ip(), now) {
            self.tcp_session(sock, client, lidx, Some(&via), now);
        }
    }

    /// The connection at `key` failed to give a header: it is closed, and logged.
    fn proxy_failed(&mut self, key: usize, why: &str) {
        if let Some(Endpoint::Proxy(c)) = self.slab.get(key) {
            log::info!(
                "smtp proxy-failed address={} port={} reason=\"{}\"",
                c.from.ip(),
                c.from.port(),
                why.escape_default()
            );
        }
        self.counters.refused_connection("proxy-header");
        self.closing.push(key);
    }

    /// The deadline of the connection at `key` came: a header still missing fails.
    pub(super) fn proxy_due(&mut self, key: usize) {
        if let Some(Endpoint::Proxy(c)) = self.slab.get(key) {
            if c.sock.is_some() {
                let why = format!("no header within {} s", HEADER_TIMEOUT.as_secs());
                self.proxy_failed(key, &why);
            }
        }
    }

    /// Removes the connection at `key` (at the end of a loop turn).
    pub(super) fn proxy_reap(&mut self, key: usize) {
        if let Some(Endpoint::Proxy(c)) = self.slab.get_mut(key) {
            if let Some(s) = c.sock.as_mut() {
                let _ = self.poll.registry().deregister(s);
            }
            self.slab.remove(key);
            self.proxy_pending -= 1;
        }
    }
}
