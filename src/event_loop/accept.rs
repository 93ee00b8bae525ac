//! Listening and accepting: the SMTP listeners' limits (sessions, sessions and new
//! connections by address), the descriptor budget shared with the control socket, the
//! pause after a failed accept, and the set-up of a new session (its limits, filter
//! chain and TLS), from a listener or the local socket.
//!
//! The listeners are edge-triggered: a listener left with connections in its backlog
//! gets no new event for them. Whenever accepting stops early (descriptors short, or
//! accept(2) failed), the loop revisits every listener itself once it may go on.

use super::deadlines::Due;
use super::limits::{FD_RESERVE, FD_RESERVE_PRIVILEGED};
use super::{Endpoint, Server, FIRST_SLOT};
use crate::config::TlsMode;
use crate::filter::report::Report;
use crate::mail::peer::Peer;
use crate::mail::reply::Reply;
use crate::proxy::Endpoints;
use crate::smtp::conn::{Conn, Reason};
use crate::smtp::session::{Limits, Session};
use crate::stream::Stream;
use mio::net::TcpStream;
use mio::{Interest, Token};
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// How long accepting stops after accept(2) failed (out of descriptors, most often).
const ACCEPT_PAUSE: Duration = Duration::from_secs(1);
/// Descriptors a new SMTP session needs: its socket, and the message file it will
/// open when its client sends a message.
pub(super) const SESSION_FDS: usize = 2;

impl Server {
    /// Descriptors the endpoints hold: one for each (listener, session, control
    /// client, outgoing session, filter pipe), plus the message files of outgoing
    /// sessions and of the sessions receiving or committing a message.
    pub(super) fn fds_held(&self) -> usize {
        self.slab.len() + self.msg_files + self.mta_conns
    }

    /// Whether accepting may go on: not paused, and `need` descriptors to spare
    /// beyond `reserve`.
    fn may_accept(&mut self, need: usize, reserve: usize) -> bool {
        if self.accept_paused.is_some() {
            return false;
        }
        self.fds.room(self.fds_held(), need, reserve)
    }

    /// Deals with a failed accept(2); true when accepting must stop for now.
    pub(super) fn accept_failed(&mut self, what: &str, e: &io::Error, now: Instant) -> bool {
        match e.kind() {
            io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted => false,
            _ => {
                // EMFILE, ENFILE, ENOBUFS...: try again in a moment, every listener.
                log::warn!(
                    "{what}: accept failed: {e}; accepting again in {}s",
                    ACCEPT_PAUSE.as_secs()
                );
                self.accept_paused = Some(now + ACCEPT_PAUSE);
                self.timers.add(now + ACCEPT_PAUSE, super::Due::Accept);
                true
            }
        }
    }

    /// When accepting paused or ran short of descriptors, revisits the listeners once
    /// it may go on.
    pub(super) fn resume_accepting(&mut self, now: Instant) {
        if let Some(t) = self.accept_paused {
            if now < t {
                return;
            }
            self.accept_paused = None;
            self.starved_tcp = true;
            self.starved_control = true;
        }
        let held = self.fds_held();
        if self.starved_tcp && self.fds.room(held, SESSION_FDS, FD_RESERVE) {
            self.starved_tcp = false;
            if !self.paused_smtp && self.stopping.is_none() {
                let keys: Vec<usize> = self
                    .slab
                    .iter()
                    .filter_map(|(k, e)| matches!(e, Endpoint::Listener { .. }).then_some(k))
                    .collect();
                for key in keys {
                    self.accept(key, now);
                }
            }
        }
        let held = self.fds_held();
        if self.starved_control && self.fds.room(held, 1, FD_RESERVE_PRIVILEGED) {
            self.starved_control = false;
            self.accept_control(now);
        }
    }

    pub(super) fn accept(&mut self, key: usize, now: Instant) {
        loop {
            if !self.may_accept(SESSION_FDS, FD_RESERVE) {
                self.starved_tcp = true;
                return;
            }
            let (stream, peer, lidx) = match self.slab.get(key) {
                Some(Endpoint::Listener { idx, .. })
                    if *idx == super::metrics::METRICS_LISTENER =>
                {
                    return self.metrics_accept(key, now);
                }
                Some(Endpoint::Listener { sock, idx }) => match sock.accept() {
                    Ok((s, addr)) => (s, addr, *idx),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        if self.accept_failed("smtpd", &e, now) {
                            return;
                        }
                        continue;
                    }
                },
                _ => return,
            };
            let mut stream = stream;
            if self.cfg.listeners.get(lidx).is_some_and(|l| l.proxy_v2) {
                // The client is known once the proxy's header is read.
                self.proxy_accept(stream, peer, lidx, now);
                continue;
            }
            let client = SocketAddr::new(canonical(peer.ip()), peer.port());
            if self.admit(&mut stream, client.ip(), now) {
                self.tcp_session(stream, client, lidx, None, now);
            }
        }
    }

    /// Applies the limits of sessions and new connections to a connection of client
    /// `ip`, which counts toward its rate, refused or not; false when it was refused
    /// with a 421.
    pub(super) fn admit(&mut self, stream: &mut TcpStream, ip: IpAddr, now: Instant) -> bool {
        let rate_ok = self.rates.hit(ip, now);
        let per_addr = self.cfg.smtp.max_sessions_per_address;
        let refusal = if self.tcp_sessions >= self.max_sessions {
            Some((Reply::TOO_MANY_SESSIONS, "max-sessions"))
        } else if per_addr > 0 && self.per_addr.get(&ip).is_some_and(|&n| n >= per_addr) {
            Some((Reply::TOO_MANY_FROM_ADDRESS, "max-sessions-per-address"))
        } else if !rate_ok {
            Some((Reply::CONNECTION_RATE, "max-connection-rate"))
        } else {
            None
        };
        let Some((reply, reason)) = refusal else {
            return true;
        };
        self.counters.refused_connection(reason);
        refuse(stream, &reply);
        log::info!("smtp refused address={ip} reason={reason}");
        false
    }

    /// Starts the session of an admitted TCP connection from `client` on listener
    /// `lidx`, and logs it; `via` is the proxy it came through and what its header
    /// said, on a `proxy-v2` listener.
    pub(super) fn tcp_session(
        &mut self,
        stream: TcpStream,
        client: SocketAddr,
        lidx: usize,
        via: Option<&super::proxy::Via>,
        now: Instant,
    ) {
        let _ = stream.set_nodelay(true);
        let ends = via.and_then(|v| v.endpoints());
        let stream = Stream::Tcp(stream);
        let Some(k) = self.new_session(stream, Some(client.ip()), Some(lidx), ends, now) else {
            return;
        };
        if let Some(Endpoint::Smtp(c)) = self.slab.get(k) {
            let (ip, port) = (client.ip(), client.port());
            let proxy = via.map(|v| v.log_words()).unwrap_or_default();
            log::info!(
                "{:016x} smtp connected address={ip} port={port}{proxy}",
                c.id()
            );
        }
        // The greeting goes out when the socket reports writable.
    }

    /// A new SMTP session on `stream` (from listener `lidx`, or the local socket when
    /// `None`): its filter chain, limits and TLS, registered; its slab key, or `None`
    /// when it could not be set up. `proxied`: both ends as a PROXY header named them
    /// (canonical), for filters and `hostnames`.
    pub(super) fn new_session(
        &mut self,
        mut stream: Stream,
        ip: Option<IpAddr>,
        lidx: Option<usize>,
        proxied: Option<Endpoints>,
        now: Instant,
    ) -> Option<usize> {
        let listener = lidx.and_then(|i| self.cfg.listeners.get(i));
        let options = listener.map_or(self.cfg.socket.options, |l| l.options);
        // `hostnames <t>`: the name for the local address the connection came to (the
        // proxy's, when a PROXY header named it).
        let by_address = options.hostnames.and_then(|t| {
            let local = match (&stream, proxied) {
                (_, Some(e)) => e.dst.ip(),
                (Stream::Tcp(s), None) => canonical(s.local_addr().ok()?.ip()),
                _ => return None,
            };
            self.cfg
                .tables
                .get(t)?
                .entries()
                .get(&local.to_string())
                .map(str::to_string)
        });
        let client = Peer {
            addr: ip,
            local: ip.is_none_or(|ip| ip.is_loopback()),
            server_name: by_address
                .or_else(|| listener.and_then(|l| l.hostname.clone()))
                .unwrap_or_else(|| self.cfg.hostname.clone()),
            tag: match listener {
                Some(l) => l.tag.clone(),
                None => self.cfg.socket.tag.clone(),
            },
            hostname: None,
            tls: false,
            auth: None,
        };
        let limits = Limits {
            max_message_size: self.cfg.smtp.max_message_size,
            max_rcpt: self.cfg.smtp.max_rcpt,
            max_mails: self.cfg.smtp.max_mails,
            max_errors: self.cfg.smtp.max_errors,
            max_hops: self.cfg.smtp.max_hops,
            max_text_line: self.cfg.smtp.max_text_line,
            max_command_line: self.cfg.smtp.max_command_line,
            max_auth_failures: self.cfg.smtp.max_auth_failures,
        };
        let head = match listener {
            Some(l) => l.filter,
            None => self.cfg.socket_filter,
        };
        let (chain, hooks) = self.chain_hooks(head);
        let id = crate::sys::random_u64();
        let mut actions = Vec::new();
        let mut session = Session::new(id, client, limits, hooks, &mut actions);
        if let Some(l) = listener {
            session.set_auth(l.auth);
        }
        session.set_options(options);
        let gen = self.next_gen;
        self.next_gen += 1;
        let mut deadline = now + self.cfg.smtp.timeout;
        let tls = listener.and_then(|l| l.tls.as_ref()).map(|t| t.mode);
        let tls_cfg = lidx.and_then(|i| self.tls.listener(i));
        if let (Some(TlsMode::Smtps), Some(c)) = (tls, &tls_cfg) {
            // RFC 8314: TLS from the first byte; the greeting follows the handshake.
            if let Err(e) = stream.start_tls(c.clone()) {
                log::warn!("smtpd cannot start TLS on a connection: {e}");
                return None;
            }
            deadline = now
                + self
                    .cfg
                    .smtp
                    .timeout
                    .min(crate::smtp::conn::HANDSHAKE_TIMEOUT);
        }
        let max_line = self.cfg.smtp.max_command_line;
        let mut conn = Conn::new(stream, gen, ip, session, actions, deadline, max_line);
        conn.cfg = Some(self.cfg.clone());
        conn.proxied = proxied.map(|e| (e.dst, e.src));
        if let (Some(mode @ (TlsMode::Starttls | TlsMode::Require)), Some(c)) = (tls, tls_cfg) {
            conn.offer_starttls(c, mode == TlsMode::Require);
        }
        // Protocol lines and rollbacks are gathered only when a filter of the chain may
        // observe them (a filter process, whose registration may still come).
        conn.filters.observe = chain.iter().any(|&f| self.filter_observes(f));
        conn.filters.chain = chain;
        // The configuration checks the client's reverse DNS: look it up first.
        let lookup = self.rdns && ip.is_some();
        conn.hold = lookup;
        let key = self.slab.insert(Endpoint::Smtp(Box::new(conn)));
        if let Some(Endpoint::Smtp(conn)) = self.slab.get_mut(key) {
            if let Err(e) = self.poll.registry().register(
                &mut conn.sock,
                Token(key + FIRST_SLOT),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                log::warn!("smtpd cannot register a connection: {e}");
                self.slab.remove(key);
                return None;
            }
        }
        self.sessions += 1;
        self.counters.sessions += 1;
        if ip.is_some() {
            self.tcp_sessions += 1;
        }
        self.session_keys.insert(id, (key, gen));
        if let Some(ip) = ip {
            *self.per_addr.entry(ip).or_insert(0) += 1;
        }
        self.timers.add(deadline, Due::Endpoint { key, gen });
        if let (true, Some(ip)) = (lookup, ip) {
            self.start_rdns(key, gen, ip, now);
        }
        self.after_conn(key, now);
        Some(key)
    }

    /// Removes the endpoints closed during the turn, between event batches: a session's
    /// last reports, its file and its counts per address and per user given back.
    pub(super) fn reap(&mut self) {
        for key in std::mem::take(&mut self.closing) {
            if let Some(Endpoint::Smtp(conn)) = self.slab.get(key) {
                let id = conn.id();
                self.chains.end(id);
                self.session_keys.remove(&id);
                let last = match self.slab.get_mut(key) {
                    Some(Endpoint::Smtp(c)) => c.filters.take_final_reports(),
                    _ => Vec::new(),
                };
                for r in &last {
                    self.report(key, r);
                }
                self.report(key, &Report::Disconnect);
                self.filters_session_left(key, Instant::now());
            }
            match self.slab.get_mut(key) {
                Some(Endpoint::Smtp(conn)) => {
                    let reason = conn.finished().unwrap_or(Reason::Timeout);
                    let _ = self.poll.registry().deregister(&mut conn.sock);
                    if conn.holds_file() {
                        self.msg_files = self.msg_files.saturating_sub(1);
                    }
                    conn.release(&self.spool);
                    let _ = conn.sock.flush();
                    let (id, ip, uid) = (conn.id(), conn.peer, conn.uid);
                    self.slab.remove(key);
                    self.sessions -= 1;
                    if let Some(uid) = uid {
                        self.ctl_slots.release(uid);
                    }
                    if let Some(ip) = ip {
                        self.tcp_sessions -= 1;
                        if let Some(n) = self.per_addr.get_mut(&ip) {
                            *n -= 1;
                            if *n == 0 {
                                self.per_addr.remove(&ip);
                            }
                        }
                    }
                    log::info!("{id:016x} smtp disconnected reason={}", reason.as_str());
                }
                Some(Endpoint::Control(c)) => {
                    let _ = self.poll.registry().deregister(&mut c.sock);
                    let uid = c.uid;
                    self.slab.remove(key);
                    self.ctl_slots.release(uid);
                }
                Some(Endpoint::Dns(_)) => self.dns_reap(key),
                Some(Endpoint::Proxy(_)) => self.proxy_reap(key),
                Some(Endpoint::Http(c)) => {
                    let _ = self.poll.registry().deregister(&mut c.sock);
                    self.slab.remove(key);
                    self.http_conns -= 1;
                }
                _ => {}
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses are shown and counted as IPv4.
pub(super) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Best-effort 421 on a connection we will not serve.
pub(super) fn refuse(stream: &mut TcpStream, reply: &Reply) {
    let mut out = Vec::new();
    reply.render(&mut out);
    let _ = stream.write(&out);
}

/// Binds every listener of the configuration, with its index in `cfg.listeners`.
/// Done before the daemon detaches so that errors reach the terminal.
pub fn bind_listeners(
    cfg: &crate::config::Config,
) -> io::Result<Vec<(std::net::TcpListener, usize)>> {
    let mut out = Vec::new();
    for (idx, l) in cfg.listeners.iter().enumerate() {
        for addr in &l.addrs {
            let sock = crate::sys::listen_tcp(*addr, 1024)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            log::info!("smtpd listening on {addr}");
            out.push((sock, idx));
        }
    }
    for addr in cfg.metrics.iter().flat_map(|m| &m.addrs) {
        let sock = crate::sys::listen_tcp(*addr, 64)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
        log::info!("smtpd serving metrics on {addr}");
        out.push((sock, super::metrics::METRICS_LISTENER));
    }
    Ok(out)
}

/// Fails when a daemon answers on the control socket of the spool at `spool_root`: the
/// spool is in use, and start-up must not touch it (it removes `incoming/` and moves
/// what it does not expect).
pub fn refuse_if_running(spool_root: &std::path::Path) -> io::Result<()> {
    let path = crate::control::socket_path(spool_root);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{}: another smtpd is running on this spool", path.display()),
        ));
    }
    Ok(())
}

/// Creates the control socket in the spool (mode 0666: anyone may submit mail; the
/// daemon checks the peer's uid before it obeys a command).
pub fn bind_control(spool_root: &std::path::Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    refuse_if_running(spool_root)?;
    let path = crate::control::socket_path(spool_root);
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}
