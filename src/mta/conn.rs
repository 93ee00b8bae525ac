//! The socket glue of an outgoing SMTP/LMTP session: connects, moves replies into the
//! [`Client`] and streams the spooled message with CR LF line ends and dot-stuffing.

use super::client::{Client, Proto, ReplyParser, Step};
use super::wire::{Encoder, MAX_LINE};
use crate::linebuf::{Line, LineBuf};
use crate::mda::Outcome;
use crate::queue::envelope::Envelope;
use crate::stream::Stream;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Instant;

/// Unsent bytes above which no more of the body is read.
const OUT_HIGH: usize = 64 * 1024;
/// Longest reply line accepted.
const MAX_REPLY_LINE: usize = 4096;

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A TCP host and port.
    Tcp(String, u16),
    /// A unix socket path.
    Unix(String),
}

impl Target {
    /// Parses an LMTP destination (`host:port`, `[addr]:port`, `/path`) or a relay URL
    /// (`smtp://host[:port]`, `lmtp://host[:port]`); `default_port` when none is given.
    pub fn parse(s: &str, default_port: u16) -> Result<(Target, Option<Proto>), String> {
        let (proto, rest, default_port) = match s.split_once("://") {
            Some(("smtp", r)) => (Some(Proto::Smtp), r, 25),
            Some(("lmtp", r)) => (Some(Proto::Lmtp), r, 24),
            Some((p, _)) => return Err(format!("unsupported protocol {p:?}")),
            None => (None, s, default_port),
        };
        if rest.starts_with('/') {
            return Ok((Target::Unix(rest.to_string()), proto));
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
        Ok((Target::Tcp(host.to_string(), port), proto))
    }

    /// Starts a non-blocking connection.
    pub fn connect(&self) -> io::Result<Stream> {
        match self {
            Target::Unix(p) => Ok(Stream::Unix(mio::net::UnixStream::connect(p)?)),
            Target::Tcp(h, port) => {
                let addr: SocketAddr =
                    (h.as_str(), *port)
                        .to_socket_addrs()?
                        .next()
                        .ok_or_else(|| {
                            io::Error::new(io::ErrorKind::NotFound, format!("{h}: no address"))
                        })?;
                Ok(Stream::Tcp(mio::net::TcpStream::connect(addr)?))
            }
        }
    }
}

/// One outgoing connection delivering one message.
pub struct MtaConn {
    /// The socket.
    pub sock: Stream,
    /// Generation, as for SMTP sessions.
    pub gen: u64,
    /// When the session times out.
    pub deadline: Instant,
    /// The envelopes delivered, in recipient order.
    pub envs: Vec<Envelope>,
    client: Client,
    parser: ReplyParser,
    inbuf: LineBuf,
    out: Vec<u8>,
    body: Option<BufReader<io::Take<File>>>,
    encoder: Encoder,
    error: Option<String>,
    closed: bool,
}

impl MtaConn {
    /// Wraps a connection in progress.
    pub fn new(
        sock: Stream,
        gen: u64,
        deadline: Instant,
        client: Client,
        body: io::Take<File>,
        envs: Vec<Envelope>,
    ) -> MtaConn {
        // Lines are folded for an SMTP server, kept intact for local LMTP.
        let encoder = Encoder::new(match client.proto() {
            Proto::Smtp => Some(MAX_LINE),
            Proto::Lmtp => None,
        });
        MtaConn {
            sock,
            gen,
            deadline,
            envs,
            client,
            parser: ReplyParser::default(),
            inbuf: LineBuf::new(MAX_REPLY_LINE * 2),
            out: Vec::new(),
            body: Some(BufReader::new(body)),
            encoder,
            error: None,
            closed: false,
        }
    }

    /// Whether the session is over (results can be taken).
    pub fn finished(&self) -> bool {
        self.closed
    }

    /// The outcome of each envelope.
    pub fn outcomes(&self) -> Vec<Outcome> {
        let fallback = Outcome::TempFail(
            self.error
                .clone()
                .unwrap_or_else(|| "connection closed before the end of the session".into()),
        );
        self.client.outcomes(&fallback)
    }

    /// Gives up (timeout): every recipient without a verdict is deferred.
    pub fn abort(&mut self, why: &str) {
        self.error.get_or_insert_with(|| why.to_string());
        self.closed = true;
    }

    /// Moves bytes until the socket would block.
    pub fn pump(&mut self, now: Instant, timeout: std::time::Duration) {
        loop {
            if self.closed {
                return;
            }
            let mut progress = false;
            // Replies.
            loop {
                match self.inbuf.next_line(MAX_REPLY_LINE) {
                    Line::Partial => break,
                    Line::TooLong => return self.abort("reply line too long"),
                    Line::Complete { bytes, .. } => {
                        progress = true;
                        match self.parser.feed(bytes) {
                            Err(e) => return self.abort(&e),
                            Ok(None) => {}
                            Ok(Some(reply)) => {
                                for step in self.client.on_reply(&reply) {
                                    match step {
                                        Step::Send(cmd) => {
                                            self.out.extend_from_slice(cmd.as_bytes());
                                            self.out.extend_from_slice(b"\r\n");
                                        }
                                        Step::SendBody => {}
                                        Step::Close => {
                                            let _ = self.flush();
                                            self.closed = true;
                                            return;
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            // Body.
            if self.client.in_body() {
                progress |= self.fill_body();
            }
            match self.flush() {
                Ok(p) => progress |= p,
                Err(e) => return self.abort(&format!("write: {e}")),
            }
            // Read.
            match self.sock.read(self.inbuf.space()) {
                Ok(0) => {
                    self.error
                        .get_or_insert_with(|| "connection closed by the server".into());
                    self.closed = true;
                    return;
                }
                Ok(n) => {
                    self.inbuf.filled(n);
                    self.deadline = now + timeout;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => progress = true,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                Err(e) => return self.abort(&format!("connection: {e}")),
            }
            if !progress {
                return;
            }
        }
    }

    /// Adds message content to the output while it is below the high-water mark.
    fn fill_body(&mut self) -> bool {
        let Some(body) = self.body.as_mut() else {
            return false;
        };
        let mut progress = false;
        while self.out.len() < OUT_HIGH {
            let n = match body.fill_buf() {
                Ok([]) => {
                    self.encoder.finish(&mut self.out);
                    self.body = None;
                    self.client.body_sent();
                    return true;
                }
                Ok(chunk) => {
                    self.encoder.push(chunk, &mut self.out);
                    chunk.len()
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.abort(&format!("reading the message: {e}"));
                    return false;
                }
            };
            body.consume(n);
            progress = true;
        }
        progress
    }

    fn flush(&mut self) -> io::Result<bool> {
        let mut progress = false;
        while !self.out.is_empty() {
            match self.sock.write(&self.out) {
                Ok(0) => break,
                Ok(n) => {
                    self.out.drain(..n);
                    progress = true;
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::NotConnected =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            Target::parse("127.0.0.1:24", 24),
            Ok((Target::Tcp("127.0.0.1".into(), 24), None))
        );
        assert_eq!(
            Target::parse("/run/lmtp", 24),
            Ok((Target::Unix("/run/lmtp".into()), None))
        );
        assert_eq!(
            Target::parse("smtp://[::1]:2525", 25),
            Ok((Target::Tcp("::1".into(), 2525), Some(Proto::Smtp)))
        );
        assert_eq!(
            Target::parse("lmtp://mx.example.org", 24),
            Ok((Target::Tcp("mx.example.org".into(), 24), Some(Proto::Lmtp)))
        );
        assert!(Target::parse("smtps://x", 25).is_err());
        assert!(Target::parse(":25", 25).is_err());
    }
}
