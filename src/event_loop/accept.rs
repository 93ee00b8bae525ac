//! Listening and accepting: the SMTP listeners' limits (sessions, sessions and new
//! connections by address).

use super::{Entry, Server};
use crate::smtp::reply::Reply;
use crate::stream::Stream;
use std::io::{self, Write};
use std::net::IpAddr;
use std::time::Instant;

impl Server {
    pub(super) fn accept(&mut self, key: usize, now: Instant) {
        loop {
            let (stream, peer, lidx) = match self.slab.get(key) {
                Some(Entry::Listener { sock, idx }) => match sock.accept() {
                    Ok((s, addr)) => (s, addr, *idx),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // EMFILE and friends: try again on the next event.
                        log::warn!("smtpd accept failed: {e}");
                        return;
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
                if let Some(Entry::Smtp(c)) = self.slab.get(k) {
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

/// Creates the control socket in the spool (mode 0666: anyone may submit mail; the
/// daemon checks the peer's uid before it obeys a command).
pub fn bind_control(spool_root: &std::path::Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = crate::control::socket_path(spool_root);
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{}: another smtpd is running on this spool", path.display()),
        ));
    }
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}
