//! One SMTP client session, blocking, over TCP: in plaintext until STARTTLS, or over TLS
//! from the first byte. Every reply is read whole and its code checked; every read and
//! write has a time limit.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use rustls::{ClientConnection, StreamOwned};

use crate::tls::Client;
use crate::Error;

/// Time limit of a connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time limit of every read and write on a connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest reply taken (a multi-line EHLO reply is well under 1 KiB).
const MAX_REPLY: usize = 64 * 1024;

/// A session's transport.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// What was negotiated: protocol version, cipher suite, key exchange group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// e.g. `TLSv1_3`
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`
    pub suite: String,
    /// e.g. `X25519`
    pub group: String,
}

/// A connected SMTP client session.
pub struct Session {
    stream: Stream,
    buf: Vec<u8>,
}

fn tcp(addr: SocketAddr) -> Result<TcpStream, Error> {
    let s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| Error(format!("connect {addr}: {e}")))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    // whole commands and messages are written at once: no small segment may wait for
    // the peer's delayed acknowledgement
    s.set_nodelay(true)?;
    Ok(s)
}

/// Makes the TLS handshake on `sock` and checks it completed.
fn handshake(
    client: &Client,
    mut sock: TcpStream,
) -> Result<StreamOwned<ClientConnection, TcpStream>, Error> {
    let mut conn = ClientConnection::new(client.config.clone(), client.name.clone())?;
    // complete_io returns once the handshake is done, or with the error that ended it
    conn.complete_io(&mut sock)
        .map_err(|e| Error(format!("TLS handshake: {e}")))?;
    if conn.is_handshaking() {
        return Err(Error("TLS handshake did not complete".into()));
    }
    Ok(StreamOwned::new(conn, sock))
}

impl Session {
    /// Connects in plaintext (the greeting is not read yet).
    pub fn connect(addr: SocketAddr) -> Result<Session, Error> {
        Ok(Session {
            stream: Stream::Plain(tcp(addr)?),
            buf: Vec::with_capacity(1024),
        })
    }

    /// Connects and makes the TLS handshake at once (implicit TLS, RFC 8314); the
    /// greeting is not read yet.
    pub fn connect_tls(addr: SocketAddr, client: &Client) -> Result<Session, Error> {
        let s = handshake(client, tcp(addr)?)?;
        Ok(Session {
            stream: Stream::Tls(Box::new(s)),
            buf: Vec::with_capacity(1024),
        })
    }

    /// Reads one reply, all its lines; returns its code and its text.
    pub fn reply(&mut self) -> Result<(u16, String), Error> {
        let mut start = 0;
        loop {
            while let Some(n) = self.buf[start..].windows(2).position(|w| w == b"\r\n") {
                let line = &self.buf[start..start + n];
                let code = parse_code(line)?;
                start += n + 2;
                if line.get(3) != Some(&b'-') {
                    let text = String::from_utf8_lossy(&self.buf[..start]).into_owned();
                    self.buf.drain(..start);
                    return Ok((code, text));
                }
            }
            if self.buf.len() > MAX_REPLY {
                return Err(Error(format!("reply longer than {MAX_REPLY} bytes")));
            }
            let mut chunk = [0u8; 4096];
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| Error(format!("reading a reply: {e}")))?;
            if n == 0 {
                return Err(Error("connection closed by the server".into()));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one reply and checks its code; `what` names it in the error.
    pub fn expect(&mut self, code: u16, what: &str) -> Result<String, Error> {
        let (c, text) = self.reply()?;
        if c != code {
            return Err(Error(format!(
                "{what}: expected {code}, got: {}",
                text.trim_end()
            )));
        }
        Ok(text)
    }

    /// Sends `bytes` whole.
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| Error(format!("writing: {e}")))
    }

    /// Sends a command line and checks the code of its reply.
    pub fn command(&mut self, line: &str, code: u16) -> Result<String, Error> {
        self.send(format!("{line}\r\n").as_bytes())?;
        self.expect(code, line)
    }

    /// Greeting (220), EHLO, STARTTLS (220), the handshake, EHLO again (250): the
    /// session is then protected by TLS.
    pub fn starttls(mut self, client: &Client, helo: &str) -> Result<Session, Error> {
        self.expect(220, "greeting")?;
        let ehlo = self.command(&format!("EHLO {helo}"), 250)?;
        if !ehlo.lines().any(|l| {
            l.get(4..)
                .is_some_and(|k| k.eq_ignore_ascii_case("STARTTLS"))
        }) {
            return Err(Error(format!("STARTTLS not offered: {}", ehlo.trim_end())));
        }
        self.command("STARTTLS", 220)?;
        if !self.buf.is_empty() {
            return Err(Error("data after the 220 to STARTTLS".into()));
        }
        let sock = match self.stream {
            Stream::Plain(s) => s,
            Stream::Tls(_) => return Err(Error("STARTTLS inside TLS".into())),
        };
        let mut s = Session {
            stream: Stream::Tls(Box::new(handshake(client, sock)?)),
            buf: self.buf,
        };
        s.command(&format!("EHLO {helo}"), 250)?;
        Ok(s)
    }

    /// What the handshake negotiated (None before TLS).
    pub fn tls_facts(&self) -> Option<TlsFacts> {
        let Stream::Tls(s) = &self.stream else {
            return None;
        };
        let c = &s.conn;
        Some(TlsFacts {
            version: c
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            suite: c
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            group: c
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default(),
        })
    }

    /// QUIT and its 221.
    pub fn quit(mut self) -> Result<(), Error> {
        self.command("QUIT", 221)?;
        if let Stream::Tls(s) = &mut self.stream {
            s.conn.send_close_notify();
            // the server may have closed already: the alert is a courtesy
            let _ = s.flush();
        }
        Ok(())
    }
}

/// The code of a reply line: three digits, then a space, a hyphen or the end.
fn parse_code(line: &[u8]) -> Result<u16, Error> {
    let ok = line.len() >= 3
        && line[..3].iter().all(u8::is_ascii_digit)
        && matches!(line.get(3), None | Some(b' ') | Some(b'-'));
    if !ok {
        return Err(Error(format!(
            "not an SMTP reply: {:?}",
            String::from_utf8_lossy(line)
        )));
    }
    Ok(line[..3]
        .iter()
        .fold(0u16, |a, d| a * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::parse_code;

    #[test]
    fn reply_codes() {
        assert_eq!(parse_code(b"250 ok").ok(), Some(250));
        assert_eq!(parse_code(b"250-PIPELINING").ok(), Some(250));
        assert_eq!(parse_code(b"354").ok(), Some(354));
        assert!(parse_code(b"25").is_err());
        assert!(parse_code(b"2x0 no").is_err());
        assert!(parse_code(b"250:no").is_err());
    }
}
