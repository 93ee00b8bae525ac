//! TCP sockets the standard library cannot make: a listener with the options the
//! daemon sets, and a connection from a chosen source address.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, RawFd};

/// A fresh non-blocking TCP socket of `addr`'s family.
fn socket(addr: &SocketAddr) -> io::Result<RawFd> {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket(2) call; the caller owns the fd it returns.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// `addr` as a sockaddr and its length.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data large enough for either family.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_in fits in sockaddr_storage and has its alignment.
            let sin = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: sockaddr_in6 fits in sockaddr_storage and has its alignment.
            let sin6 = unsafe {
                &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

fn bind(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (ss, len) = sockaddr(addr);
    // SAFETY: ss holds a valid address of `len` bytes.
    if unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn setopt(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the option value points to a c_int that lives across the call.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A listening socket on `addr`: non-blocking, SO_REUSEADDR, IPv6 only for an IPv6
/// address.
pub fn listen_tcp(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let fd = socket(&addr)?;
    // SAFETY: fd is a fresh socket nobody else owns; the listener closes it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    setopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR)?;
    if addr.is_ipv6() {
        setopt(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)?;
    }
    bind(fd, &addr)?;
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(fd, backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(listener)
}

/// Starts a non-blocking connection to `dst` from the address `src` (any port); the
/// connection completes later, as with `mio::net::TcpStream::connect`.
pub fn connect_from(src: IpAddr, dst: SocketAddr) -> io::Result<std::net::TcpStream> {
    if src.is_ipv4() != dst.is_ipv4() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("source {src} and destination {dst} are of different families"),
        ));
    }
    let fd = socket(&dst)?;
    // SAFETY: fd is a fresh socket nobody else owns; the stream closes it.
    let stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    bind(fd, &SocketAddr::new(src, 0))?;
    let (ss, len) = sockaddr(&dst);
    // SAFETY: ss holds a valid address of `len` bytes.
    let r = unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) };
    if r != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_from_a_chosen_address() {
        let l = listen_tcp("127.0.0.1:0".parse().unwrap_or_else(|_| panic!()), 4)
            .unwrap_or_else(|e| panic!("{e}"));
        let to = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let src: IpAddr = "127.0.0.2".parse().unwrap_or_else(|_| panic!());
        let _c = connect_from(src, to).unwrap_or_else(|e| panic!("{e}"));
        l.set_nonblocking(false).unwrap_or_else(|e| panic!("{e}"));
        let (_, peer) = l.accept().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(peer.ip(), src);
        assert!(connect_from("::1".parse().unwrap_or_else(|_| panic!()), to).is_err());
    }
}
