//! Listening and accepting: the SMTP listeners' limits (sessions, sessions and new
//! connections by address), the descriptor budget shared with the control socket, and
//! the pause after a failed accept.
//!
//! The listeners are edge-triggered: a listener left with connections in its backlog
//! gets no new event for them. Whenever accepting stops early (descriptors short, or
//! accept(2) failed), the loop revisits every listener itself once it may go on.

use super::limits::{FD_RESERVE, FD_RESERVE_PRIVILEGED};
use super::{Endpoint, Server};
use crate::mail::reply::Reply;
use crate::stream::Stream;
use std::io::{self, Write};
use std::net::IpAddr;
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
            let ip = canonical(peer.ip());
            // Every connection counts toward the rate, refused ones included.
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
            if let Some((reply, reason)) = refusal {
                refuse(&mut stream, &reply);
                log::info!("smtp refused address={ip} reason={reason}");
                continue;
            }
            let _ = stream.set_nodelay(true);
            if let Some(k) = self.new_session(Stream::Tcp(stream), Some(ip), Some(lidx), now) {
                if let Some(Endpoint::Smtp(c)) = self.slab.get(k) {
                    log::info!(
                        "{:016x} smtp connected address={ip} port={}",
                        c.id(),
                        peer.port()
                    );
                }
            }
            // The greeting goes out when the socket reports writable.
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
fn refuse(stream: &mut mio::net::TcpStream, reply: &Reply) {
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
