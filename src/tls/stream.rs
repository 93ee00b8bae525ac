//! The TLS record layer of a session, under its line buffers: reads records from the
//! non-blocking socket and hands out plaintext, takes plaintext and writes records,
//! always until the socket would block. The session above sees plaintext only; the
//! glue asks [`TlsStream::handshaking`] and [`TlsStream::wants_write`] to know what
//! to wait for.
//!
//! The same layer serves both sides: the server of an SMTP session (a rustls
//! `ServerConnection`, the client speaks first) and the client of an outgoing one (a
//! `ClientConnection` from `tls::client`, whose ClientHello is queued at once: the
//! glue flushes it right after the switch).

use super::client::{Outcome, TlsClientFacts};
use super::subject::{subject_line, subject_rfc4514};
use crate::config::tls::Suite;
use crate::mail::TlsFacts;
use mio::net::TcpStream;
use rustls::{ClientConnection, Connection, ProtocolVersion, ServerConfig, ServerConnection};
use std::io::{self, Read, Write};
use std::sync::Arc;

/// A TCP connection with TLS on it.
pub struct TlsStream {
    sock: TcpStream,
    tls: Connection,
    /// What the certificate verifier of a client connection recorded; `None` on the
    /// server side.
    outcome: Option<Outcome>,
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
            .field("client", &self.outcome.is_some())
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
            tls: Connection::Server(tls),
            outcome: None,
            dead: false,
            closed: false,
        })
    }

    /// Starts the client side of a handshake on `sock` with `tls` (from
    /// `tls::client::client_conn`, whose verifier records in `outcome`). The
    /// ClientHello waits in [`TlsStream::wants_write`]: flush it.
    pub fn client(sock: TcpStream, tls: ClientConnection, outcome: Outcome) -> TlsStream {
        TlsStream {
            sock,
            tls: Connection::Client(tls),
            outcome: Some(outcome),
            dead: false,
            closed: false,
        }
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

    /// The server name the client asked for, on the server side.
    fn sni(&self) -> Option<String> {
        match &self.tls {
            Connection::Server(s) => s.server_name().map(str::to_string),
            Connection::Client(_) => None,
        }
    }

    /// What the established session is: version, cipher, SNI, and the subject of the
    /// client's certificate when one was verified. `None` during the handshake and
    /// on the client side ([`TlsStream::client_facts`]).
    pub fn facts(&self) -> Option<TlsFacts> {
        if self.tls.is_handshaking() || self.outcome.is_some() {
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
            sni: self.sni(),
            subject: self.subject(subject_line),
        })
    }

    /// What an established client session is: version, cipher, how the server was
    /// authenticated, its certificate's subject. `None` during the handshake and on
    /// the server side.
    pub fn client_facts(&self) -> Option<TlsClientFacts> {
        TlsClientFacts::of(&self.tls, self.outcome.as_ref()?)
    }

    /// What filters are told of a server session: the suite's IANA name and the
    /// verified client certificate's subject as an RFC 4514 string, once the
    /// handshake is done; `None` on the client side.
    pub fn report_names(&self) -> Option<(&'static str, Option<String>)> {
        if self.tls.is_handshaking() || self.outcome.is_some() {
            return None;
        }
        let suite = self.suite().map_or("unknown", |s| s.iana_name());
        Some((suite, self.subject(subject_rfc4514)))
    }
}

impl Read for TlsStream {
    /// Plaintext from the peer. `Ok(0)` is the end: `close_notify`, or the TCP
    /// connection closed. An error of the TLS layer (a failed handshake, a bad record,
    /// a refused certificate) is `InvalidData` with rustls's reason; its alert is sent
    /// first.
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
    /// Takes plaintext for the peer and writes the records it makes. Plaintext given
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

#[cfg(test)]
mod tests {
    use crate::config::tls::{Suite, TlsVersion};
    use crate::stream::Stream;
    use crate::tls::client::{client_conn, ClientTls, Verified, Verify};
    use crate::tls::testcerts::{leaf, server_config};
    use mio::net::TcpStream;
    use rustls::RootCertStore;
    use std::io::{self, Read, Write};
    use std::sync::Arc;

    /// Two ends of a loopback TCP connection, non-blocking.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        server.set_nonblocking(true).unwrap();
        (TcpStream::from_std(server), TcpStream::from_std(client))
    }

    /// Plaintext read from `s` into `into`, until it would block.
    fn read_some(s: &mut Stream, into: &mut Vec<u8>) {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => return,
                Ok(n) => into.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// Moves records both ways until `want` bytes of plaintext came out of `to`
    /// (which read them from `from`), or gives up.
    fn pump(from: &mut Stream, to: &mut Stream, want: usize) -> Vec<u8> {
        let mut got = Vec::new();
        for _ in 0..2000 {
            for s in [&mut *from, &mut *to] {
                match s.flush_records() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("flush: {e}"),
                }
            }
            read_some(to, &mut got);
            let mut ignored = Vec::new();
            read_some(from, &mut ignored);
            assert!(ignored.is_empty());
            if got.len() >= want && !from.handshaking() && !to.handshaking() {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        panic!("no progress: {got:?}");
    }

    #[test]
    fn client_and_server_over_loopback() {
        let cert = leaf(&["mx.example.test"], None, false);
        let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
        let scfg = server_config(vec![cert.der()], cert.key_der(), &versions);
        let (s, c) = pair();
        let (mut server, mut client) = (Stream::Tcp(s), Stream::Tcp(c));
        server.start_tls(scfg.clone()).unwrap();
        let roots = Arc::new(RootCertStore::empty());
        let cfg = ClientTls::new(&TlsVersion::ALL, &Suite::ALL, roots, None).unwrap();
        let verify = Verify::Opportunistic { names: vec![] };
        let (conn, outcome) = client_conn(&cfg, Some("mx.example.test"), verify).unwrap();
        client.start_client_tls(conn, outcome).unwrap();
        // The ClientHello waits to be flushed.
        assert!(client.wants_write());
        assert!(client.handshaking());

        // Plaintext written during the handshake goes once it is done.
        client.write_all(b"EHLO relay.example.test\r\n").unwrap();
        assert_eq!(
            pump(&mut client, &mut server, 25),
            b"EHLO relay.example.test\r\n"
        );
        server.write_all(b"250 mx.example.test\r\n").unwrap();
        assert_eq!(
            pump(&mut server, &mut client, 21),
            b"250 mx.example.test\r\n"
        );

        let facts = client.tls_client_facts().unwrap();
        assert_eq!(facts.version, "TLSv1.3");
        assert_eq!(facts.verified, Verified::No);
        assert_eq!(facts.peer_subject.as_deref(), Some("/CN=mx.example.test"));
        assert_eq!(client.tls_facts(), None);
        assert_eq!(client.tls_report_names(), None);
        let sfacts = server.tls_facts().unwrap();
        assert_eq!(sfacts.sni.as_deref(), Some("mx.example.test"));
        assert_eq!(sfacts.subject, None);
        assert!(server.tls_client_facts().is_none());
        assert!(client.tcp().is_some());

        // TLS starts on plain TCP only; the stream is kept.
        let (conn, outcome) =
            client_conn(&cfg, None, Verify::Opportunistic { names: vec![] }).unwrap();
        let e = client.start_client_tls(conn, outcome).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        assert!(client.tls_client_facts().is_some());

        // close_notify ends the peer's reading.
        client.close_notify();
        client.flush_records().unwrap();
        let mut rest = Vec::new();
        let mut ended = false;
        for _ in 0..2000 {
            let mut buf = [0u8; 64];
            match server.read(&mut buf) {
                Ok(0) => {
                    ended = true;
                    break;
                }
                Ok(n) => rest.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(1))
                }
                Err(e) => panic!("read: {e}"),
            }
        }
        assert!(ended && rest.is_empty());
    }
}
