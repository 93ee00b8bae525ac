//! A connected stream socket: TCP from the network, TCP with TLS on it, or unix from
//! the local socket. Reads and writes are plaintext in every case; the TLS variant
//! does its record layer underneath (`tls/stream.rs`), as the server of an SMTP
//! session or as the client of an outgoing one.

use crate::mail::TlsFacts;
use crate::tls::client::{Outcome, TlsClientFacts};
use crate::tls::stream::TlsStream;
use mio::event::Source;
use mio::net::{TcpStream, UnixStream};
use mio::{Interest, Registry, Token};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// The socket of a session.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A TCP connection with TLS: from the first byte (`smtps`) or since STARTTLS,
    /// on either side.
    Tls(Box<TlsStream>),
    /// A connection on the local socket.
    Unix(UnixStream),
    /// The socket was lost while it changed hands (TLS could not start on it).
    Gone,
}

fn gone() -> io::Error {
    io::Error::from(io::ErrorKind::NotConnected)
}

impl Stream {
    /// Starts the server side of TLS on a TCP connection: the next bytes in both
    /// directions are records.
    pub fn start_tls(&mut self, cfg: Arc<rustls::ServerConfig>) -> io::Result<()> {
        self.upgrade(|sock| TlsStream::new(sock, cfg))
    }

    /// Starts the client side of TLS on a TCP connection, after the server's 220 to
    /// STARTTLS or at once for implicit TLS: the next bytes in both directions are
    /// records. `tls` and `outcome` come from `tls::client::client_conn`. The
    /// ClientHello is queued: call [`Stream::flush_records`] next.
    pub fn start_client_tls(
        &mut self,
        tls: rustls::ClientConnection,
        outcome: Outcome,
    ) -> io::Result<()> {
        self.upgrade(|sock| Ok(TlsStream::client(sock, tls, outcome)))
    }

    /// Puts TLS on a plain TCP connection; anything else is refused and kept.
    fn upgrade(&mut self, tls: impl FnOnce(TcpStream) -> io::Result<TlsStream>) -> io::Result<()> {
        match std::mem::replace(self, Stream::Gone) {
            Stream::Tcp(sock) => {
                *self = Stream::Tls(Box::new(tls(sock)?));
                Ok(())
            }
            other => {
                *self = other;
                Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "TLS starts on a plain TCP connection only",
                ))
            }
        }
    }

    /// Whether a TLS handshake is going on.
    pub fn handshaking(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.handshaking())
    }

    /// The facts of an established server TLS session; `None` without TLS, during the
    /// handshake, or on the client side.
    pub fn tls_facts(&self) -> Option<TlsFacts> {
        match self {
            Stream::Tls(t) => t.facts(),
            _ => None,
        }
    }

    /// The facts of an established client TLS session; `None` without TLS, during the
    /// handshake, or on the server side.
    pub fn tls_client_facts(&self) -> Option<TlsClientFacts> {
        match self {
            Stream::Tls(t) => t.client_facts(),
            _ => None,
        }
    }

    /// The TLS session's suite by its IANA name and the verified client certificate's
    /// subject (RFC 4514), for filters ([`TlsStream::report_names`]).
    pub fn tls_report_names(&self) -> Option<(&'static str, Option<String>)> {
        match self {
            Stream::Tls(t) => t.report_names(),
            _ => None,
        }
    }

    /// Whether TLS records wait to be written.
    pub fn wants_write(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.wants_write())
    }

    /// Writes waiting TLS records; `WouldBlock` when the socket is full.
    pub fn flush_records(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(t) => t.flush_records(),
            _ => Ok(()),
        }
    }

    /// Queues TLS's `close_notify` before the connection is closed.
    pub fn close_notify(&mut self) {
        if let Stream::Tls(t) = self {
            t.close_notify();
        }
    }

    /// The TCP socket, if it is one.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Tls(t) => Some(t.sock()),
            Stream::Unix(_) | Stream::Gone => None,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
            Stream::Unix(s) => s.read(buf),
            Stream::Gone => Err(gone()),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
            Stream::Unix(s) => s.write(buf),
            Stream::Gone => Err(gone()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Tls(t) => t.flush(),
            Stream::Unix(s) => s.flush(),
            Stream::Gone => Ok(()),
        }
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.register(r, t, i),
            Stream::Tls(s) => s.sock_mut().register(r, t, i),
            Stream::Unix(s) => s.register(r, t, i),
            Stream::Gone => Err(gone()),
        }
    }
    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.reregister(r, t, i),
            Stream::Tls(s) => s.sock_mut().reregister(r, t, i),
            Stream::Unix(s) => s.reregister(r, t, i),
            Stream::Gone => Err(gone()),
        }
    }
    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.deregister(r),
            Stream::Tls(s) => s.sock_mut().deregister(r),
            Stream::Unix(s) => s.deregister(r),
            Stream::Gone => Ok(()),
        }
    }
}
