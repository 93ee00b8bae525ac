//! The TLS record layer of a server session, under its line buffers: reads records
//! from the non-blocking socket and hands out plaintext, takes plaintext and writes
//! records, always until the socket would block. The session above sees plaintext
//! only; the glue asks [`TlsStream::handshaking`] and [`TlsStream::wants_write`] to
//! know what to wait for.

use super::subject::{subject_line, subject_rfc4514};
use crate::config::tls::Suite;
use crate::mail::TlsFacts;
use mio::net::TcpStream;
use rustls::{ProtocolVersion, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// A TCP connection with TLS on it.
pub struct TlsStream {
    sock: TcpStream,
    tls: ServerConnection,
    /// A write to the socket failed: what is left can never be sent.
    dead: bool,
    /// `close_notify` was queued.
    closed: bool,
}

impl std::fmt::Debug for TlsStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsStream")
            .field("sock", &self.sock)
            .field("handshaking", &self.tls.is_handshaking())
            .finish()
    }
}

impl TlsStream {
    /// Starts the server side of a handshake on `sock`, whose next bytes are the
    /// client's ClientHello.
    pub fn new(sock: TcpStream, cfg: Arc<ServerConfig>) -> io::Result<TlsStream> {
        let tls = ServerConnection::new(cfg).map_err(io::Error::other)?;
        Ok(TlsStream {
            sock,
            tls,
            dead: false,
            closed: false,
        })
    }

    /// The socket.
    pub fn sock(&self) -> &TcpStream {
        &self.sock
    }

    /// The socket, to register it.
    pub fn sock_mut(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    /// Whether the handshake is still going on.
    pub fn handshaking(&self) -> bool {
        self.tls.is_handshaking()
    }

    /// Whether records wait to be written to the socket.
    pub fn wants_write(&self) -> bool {
        !self.dead && self.tls.wants_write()
    }

    /// Whether more records are wanted from the socket.
    pub fn wants_read(&self) -> bool {
        self.tls.wants_read()
    }

    /// Writes records until none is left; `WouldBlock` when the socket is full.
    pub fn flush_records(&mut self) -> io::Result<()> {
        while self.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    self.dead = true;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Queues the `close_notify` alert (once); [`TlsStream::flush_records`] sends it.
    pub fn close_notify(&mut self) {
        if !self.closed && !self.tls.is_handshaking() {
            self.closed = true;
            self.tls.send_close_notify();
        }
    }

    /// The negotiated suite, once the handshake is done.
    fn suite(&self) -> Option<Suite> {
        self.tls
            .negotiated_cipher_suite()
            .and_then(|s| super::suite_of(s.suite()))
    }

    /// The subject of the client's certificate, in the form `show` gives it. A
    /// certificate is only asked for, and so only present, when `verify` requires one
    /// that verified.
    fn subject(&self, show: fn(&[u8]) -> Option<String>) -> Option<String> {
        self.tls
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| show(c).unwrap_or_default())
    }

    /// What the established session is: version, cipher, SNI, and the subject of the
    /// client's certificate when one was verified. `None` during the handshake.
    pub fn facts(&self) -> Option<TlsFacts> {
        if self.tls.is_handshaking() {
            return None;
        }
        let version = match self.tls.protocol_version()? {
            ProtocolVersion::TLSv1_3 => "TLSv1.3",
            ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "unknown",
        };
        let suite = self.suite();
        Some(TlsFacts {
            version,
            cipher: suite.map_or("unknown", |s| s.name()),
            bits: suite.map_or(0, |s| s.bits()),
            sni: self.tls.server_name().map(str::to_string),
            subject: self.subject(subject_line),
        })
    }

    /// What filters are told of the session: the suite's IANA name and the verified
    /// client certificate's subject as an RFC 4514 string, once the handshake is done.
    pub fn report_names(&self) -> Option<(&'static str, Option<String>)> {
        if self.tls.is_handshaking() {
            return None;
        }
        let suite = self.suite().map_or("unknown", |s| s.iana_name());
        Some((suite, self.subject(subject_rfc4514)))
    }
}

impl Read for TlsStream {
    /// Plaintext from the client. `Ok(0)` is the end: `close_notify`, or the TCP
    /// connection closed. An error of the TLS layer (a failed handshake, a bad record)
    /// is `InvalidData` with rustls's reason; its alert is sent first.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // No plaintext buffered: more records are needed.
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => return Ok(0),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // The alert that tells the client why.
                let _ = self.flush_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake messages to send; a full socket is retried when it drains.
            match self.flush_records() {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl Write for TlsStream {
    /// Takes plaintext for the client and writes the records it makes. Plaintext given
    /// during the handshake is sent once it is done. `WouldBlock` when earlier records
    /// still fill the socket.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.flush_records()?;
        let n = self.tls.writer().write(buf)?;
        match self.flush_records() {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_records()
    }
}
