//! The metrics listener (`metrics` in smtpd.conf): a client sends one HTTP request,
//! `GET /metrics`, and gets the counters in Prometheus's text format, then the
//! connection closes. A scrape is formatted from what the engine holds, on the loop,
//! with no lock: it never waits for mail and mail never waits for it beyond that.
//! `smtpctl show metrics` prints the same text.

use super::*;
use crate::metrics::Exposition;
use mio::net::TcpStream;
use std::io::Read;

/// The `idx` of a listener of metrics among [`Endpoint::Listener`]s.
pub(super) use crate::config::METRICS_LISTENER;
/// Clients of the metrics listener at once; more are closed at once.
const MAX_CLIENTS: usize = 8;
/// The longest request head read.
const MAX_REQUEST: usize = 8192;
/// The time a client has to send its request and read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of the metrics listener.
pub(super) struct HttpConn {
    pub(super) sock: TcpStream,
    pub(super) gen: u64,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    answered: bool,
}

/// The answer to a request head: status line and body.
fn respond(head: &[u8], scrape: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut words = line.split(|&b| b == b' ');
    let (method, target, version) = (words.next(), words.next(), words.next());
    let path = target.map(|t| t.split(|&b| b == b'?').next().unwrap_or_default());
    let (status, body, kind) = match (method, path, version) {
        (_, _, Some(v)) if !v.starts_with(b"HTTP/1.") => {
            ("400 Bad Request", "bad request\n".to_string(), "text/plain")
        }
        (Some(b"GET" | b"HEAD"), Some(b"/metrics" | b"/"), Some(_)) => (
            "200 OK",
            scrape(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        (Some(b"GET" | b"HEAD"), Some(_), Some(_)) => (
            "404 Not Found",
            "not found: ask /metrics\n".to_string(),
            "text/plain",
        ),
        (Some(_), Some(_), Some(_)) => (
            "405 Method Not Allowed",
            "only GET and HEAD\n".to_string(),
            "text/plain",
        ),
        _ => ("400 Bad Request", "bad request\n".to_string(), "text/plain"),
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != Some(b"HEAD") {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// Reads what a client sent: its request head once whole (or once too long), `None`
/// while more is to come, `Err` when the client left.
fn read_head(c: &mut HttpConn) -> Result<Option<Vec<u8>>, ()> {
    let mut buf = [0u8; 2048];
    loop {
        match c.sock.read(&mut buf) {
            Ok(0) => return Err(()),
            Ok(n) => {
                c.inbuf.extend_from_slice(&buf[..n]);
                if c.inbuf.len() > MAX_REQUEST || head_end(&c.inbuf).is_some() {
                    return Ok(Some(std::mem::take(&mut c.inbuf)));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}

/// Where a request head ends, if it came whole.
fn head_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| memchr::memmem::find(buf, b"\n\n").map(|i| i + 2))
}

impl Server {
    /// Accepts clients of the metrics listener `key`.
    pub(super) fn metrics_accept(&mut self, key: usize, now: Instant) {
        loop {
            let sock = match self.slab.get(key) {
                Some(Endpoint::Listener { sock, .. }) => match sock.accept() {
                    Ok((s, _)) => s,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        if self.accept_failed("metrics", &e, now) {
                            return;
                        }
                        continue;
                    }
                },
                _ => return,
            };
            // Mail comes first: no descriptor of the sessions' reserve goes to a scrape.
            if self.http_conns >= MAX_CLIENTS || !self.fds.room(self.fds_held(), 1, 64) {
                log::info!("metrics refused a client: too many at once");
                continue;
            }
            let gen = self.next_gen;
            self.next_gen += 1;
            let key = self.slab.insert(Endpoint::Http(Box::new(HttpConn {
                sock,
                gen,
                inbuf: Vec::new(),
                out: Vec::new(),
                sent: 0,
                answered: false,
            })));
            if let Some(Endpoint::Http(c)) = self.slab.get_mut(key) {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if self
                    .poll
                    .registry()
                    .register(&mut c.sock, Token(key + FIRST_SLOT), interest)
                    .is_err()
                {
                    self.slab.remove(key);
                    continue;
                }
            }
            self.http_conns += 1;
            self.timers
                .add(now + CLIENT_TIMEOUT, Due::Endpoint { key, gen });
        }
    }

    /// Reads a client's request, answers it, closes once the answer is sent.
    pub(super) fn http_io(&mut self, key: usize, _now: Instant) {
        let head = match self.slab.get_mut(key) {
            Some(Endpoint::Http(c)) if !c.answered => match read_head(c) {
                Ok(Some(head)) => Some(head),
                Ok(None) => return,
                Err(()) => return self.closing.push(key),
            },
            Some(Endpoint::Http(_)) => None,
            _ => return,
        };
        if let Some(head) = head {
            let out = if head_end(&head).is_some() {
                respond(&head, || self.scrape())
            } else {
                respond(b"", String::new)
            };
            if let Some(Endpoint::Http(c)) = self.slab.get_mut(key) {
                c.out = out;
                c.answered = true;
            }
        }
        let Some(Endpoint::Http(c)) = self.slab.get_mut(key) else {
            return;
        };
        while c.sent < c.out.len() {
            match c.sock.write(&c.out[c.sent..]) {
                Ok(0) => break,
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        self.closing.push(key);
    }

    /// The counters and gauges, in Prometheus's text format.
    pub(super) fn scrape(&self) -> String {
        let mut e = Exposition::new();
        let now = unix_now();
        e.single(
            "smtpd_start_time_seconds",
            "gauge",
            "When the engine started, in seconds since the epoch.",
            self.started,
        );
        self.scrape_smtp(&mut e);
        self.scrape_queue(&mut e, now);
        self.scrape_filters(&mut e);
        let c = &self.counters;
        e.family(
            "smtpd_tls_handshakes_total",
            "counter",
            "TLS handshakes, by side (server: SMTP sessions; client: outgoing sessions that ended) and result.",
        );
        for (side, counts) in [("server", c.tls), ("client", c.tls_out)] {
            for (result, n) in ["ok", "failed"].iter().zip(counts) {
                e.sample(
                    "smtpd_tls_handshakes_total",
                    &[("side", side), ("result", result)],
                    n,
                );
            }
        }
        let d = self.dns.counts();
        e.family(
            "smtpd_dns_queries_total",
            "counter",
            "DNS questions answered, by result.",
        );
        for (result, n) in [
            ("cached", d.cached),
            ("answered", d.answered),
            ("nxdomain", d.nxdomain),
            ("tempfail", d.tempfail),
            ("permfail", d.permfail),
        ] {
            e.sample("smtpd_dns_queries_total", &[("result", result)], n);
        }
        e.finish()
    }

    fn scrape_smtp(&self, e: &mut Exposition) {
        let c = &self.counters;
        e.single(
            "smtpd_sessions_open",
            "gauge",
            "SMTP sessions open, local ones included.",
            self.sessions,
        );
        e.single(
            "smtpd_config_reloads_total",
            "counter",
            "Reloads of the configuration applied (SIGHUP, smtpctl reload).",
            c.reloads[0],
        );
        e.single(
            "smtpd_config_reload_failures_total",
            "counter",
            "Reloads of the configuration refused; the one in force was kept.",
            c.reloads[1],
        );
        e.single(
            "smtpd_sessions_total",
            "counter",
            "SMTP sessions started, local ones included.",
            c.sessions,
        );
        e.family(
            "smtpd_connections_refused_total",
            "counter",
            "Connections refused before a session began, by the limit that refused them.",
        );
        for reason in [
            "max-sessions",
            "max-sessions-per-address",
            "max-connection-rate",
            "proxy-header",
        ] {
            let n = c.refused_connections.get(reason).copied().unwrap_or(0);
            e.sample("smtpd_connections_refused_total", &[("reason", reason)], n);
        }
        e.single(
            "smtpd_messages_accepted_total",
            "counter",
            "Messages committed to the queue (the 250 after the message).",
            c.messages,
        );
        e.family(
            "smtpd_replies_refused_total",
            "counter",
            "Negative SMTP replies, by the command they answer (message: the end of the content) and code.",
        );
        for ((phase, code), n) in &c.refusals {
            let code = code.to_string();
            e.sample(
                "smtpd_replies_refused_total",
                &[("phase", phase), ("code", &code)],
                n,
            );
        }
        e.family(
            "smtpd_auth_total",
            "counter",
            "SMTP AUTH exchanges with credentials, by result.",
        );
        for (result, n) in ["ok", "failed"].iter().zip(c.auth) {
            e.sample("smtpd_auth_total", &[("result", result)], n);
        }
    }

    fn scrape_queue(&self, e: &mut Exposition, now: u64) {
        let s = &self.queue.stats;
        e.single(
            "smtpd_queue_envelopes",
            "gauge",
            "Envelopes in the queue.",
            self.queue.len(),
        );
        e.single(
            "smtpd_queue_inflight",
            "gauge",
            "Envelopes being delivered.",
            self.queue.inflight(),
        );
        let age = self.queue.oldest().map_or(0, |t| now.saturating_sub(t));
        e.single(
            "smtpd_queue_oldest_seconds",
            "gauge",
            "Age of the oldest envelope in the queue (0 when it is empty).",
            age,
        );
        e.single(
            "smtpd_mta_sessions_open",
            "gauge",
            "Outgoing SMTP and LMTP sessions open.",
            self.mta_conns,
        );
        e.family(
            "smtpd_deliveries_total",
            "counter",
            "Delivery attempts, by method (relay-mx, relay-host: relays by MX or to a host) and result.",
        );
        for ((method, result), n) in &s.by_method {
            e.sample(
                "smtpd_deliveries_total",
                &[("method", method), ("result", result)],
                n,
            );
        }
        for (name, help, n) in [
            ("smtpd_expired_total", "Envelopes that expired.", s.expired),
            (
                "smtpd_bounces_total",
                "Delivery status notifications generated.",
                s.bounces,
            ),
            (
                "smtpd_removed_total",
                "Envelopes removed with smtpctl remove.",
                s.removed,
            ),
        ] {
            e.single(name, "counter", help, n);
        }
    }

    fn scrape_filters(&self, e: &mut Exposition) {
        // The filters in force: one a reload superseded may bear its successor's name.
        let pipes: Vec<&crate::filter::pipe::FilterPipe> =
            crate::config::reload::filters_in_use(&self.cfg)
                .into_iter()
                .filter_map(|fid| self.pipes.get(fid).copied().flatten())
                .filter_map(|k| match self.slab.get(k) {
                    Some(Endpoint::Filter(p)) => Some(&**p),
                    _ => None,
                })
                .collect();
        e.family(
            "smtpd_filter_answer_seconds",
            "histogram",
            "Time a filter process took to answer a question.",
        );
        for p in &pipes {
            e.histogram(
                "smtpd_filter_answer_seconds",
                &[("filter", &p.name)],
                &p.latency,
            );
        }
        e.family(
            "smtpd_filter_restarts_total",
            "counter",
            "Filter processes that took over from one that died.",
        );
        for p in &pipes {
            e.sample(
                "smtpd_filter_restarts_total",
                &[("filter", &p.name)],
                p.restarts,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(head: &[u8]) -> String {
        String::from_utf8_lossy(&respond(head, || "x 1\n".into())).into_owned()
    }

    #[test]
    fn requests_get_their_status() {
        let ok = answer(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 4\r\n") && ok.ends_with("\r\n\r\nx 1\n"));
        assert!(answer(b"GET /metrics?x=1 HTTP/1.0\n\n").starts_with("HTTP/1.1 200"));
        let head = answer(b"HEAD /metrics HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(answer(b"GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(answer(b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        assert!(answer(b"GET /metrics\r\n\r\n").starts_with("HTTP/1.1 400"));
        assert!(answer(b"GET /metrics SMTP/1.0\r\n\r\n").starts_with("HTTP/1.1 400"));
        assert!(answer(b"").starts_with("HTTP/1.1 400"));
    }

    #[test]
    fn heads_end_at_a_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
