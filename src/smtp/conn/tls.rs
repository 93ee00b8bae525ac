//! The TLS side of a connection: the switch after STARTTLS's 220, the handshake's
//! deadline, and telling the session (and the log) once TLS is up or has failed.
//!
//! The record layer itself is `crate::tls::stream`, under the line buffer: the session
//! only ever sees plaintext lines.

use super::*;
use crate::filter::report::TlsFacts as TlsReport;
use std::sync::Arc;
use std::time::Duration;

/// The longest a TLS handshake may take, unless the session timeout is shorter. Input
/// during the handshake does not extend it.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

impl Conn {
    /// Lets the session offer STARTTLS with this listener's TLS configuration
    /// (`required`: `tls-require`).
    pub fn offer_starttls(&mut self, cfg: Arc<rustls::ServerConfig>, required: bool) {
        self.tls_config = Some(cfg);
        self.session.offer_starttls(required);
    }

    /// The connection starts with a handshake (`smtps`, or after STARTTLS): it must be
    /// done within the handshake timeout.
    pub fn handshake_deadline(&mut self, timeout: Duration, now: Instant) {
        self.deadline = now + timeout.min(HANDSHAKE_TIMEOUT);
        self.rearm = true;
    }

    /// Whether the deadline moved earlier than the one armed: the caller arms it.
    pub fn take_rearm(&mut self) -> bool {
        std::mem::take(&mut self.rearm)
    }

    /// The TLS session's facts, once it is up.
    pub fn tls(&self) -> Option<&crate::mail::TlsFacts> {
        self.session.tls()
    }

    /// After STARTTLS's 220 was written: TLS starts on the socket. What the client sent
    /// after its STARTTLS line, before the handshake, is dropped unread
    /// (CVE-2011-0411) and logged.
    pub(super) fn switch_to_tls(&mut self, ctx: &mut Ctx, now: Instant) {
        self.starttls = false;
        let dropped = self.inbuf.pending();
        if dropped > 0 {
            log::info!(
                "{:016x} smtp starttls-injection discarded={dropped} reason=\"input after STARTTLS before the handshake\"",
                self.id()
            );
        }
        self.inbuf.clear();
        let Some(cfg) = self.tls_config.clone() else {
            return self.abort(ctx, Reason::Error);
        };
        if let Err(e) = self.sock.start_tls(cfg) {
            log::warn!("{:016x} smtp cannot start TLS: {e}", self.id());
            return self.abort(ctx, Reason::Error);
        }
        self.handshake_deadline(ctx.cfg.smtp.timeout, now);
        // The ClientHello may be in the socket already.
        self.readable = true;
    }

    /// Tells the session once the handshake is done; true if it just was.
    pub(super) fn check_tls(&mut self, ctx: &mut Ctx, now: Instant) -> bool {
        if self.tls_up || self.sock.handshaking() {
            return false;
        }
        let Some(facts) = self.sock.tls_facts() else {
            return false;
        };
        self.tls_up = true;
        ctx.counters.tls[0] += 1;
        log::info!(
            "{:016x} smtp tls version={} cipher={} bits={} sni={} client-cert={}",
            self.id(),
            facts.version,
            facts.cipher,
            facts.bits,
            facts.sni.as_deref().unwrap_or("none"),
            facts.subject.as_deref().map_or_else(
                || "none".to_string(),
                |s| format!("\"{}\"", esc(s.as_bytes()))
            )
        );
        self.deadline = now + ctx.cfg.smtp.timeout;
        if let Some((suite, subject)) = self.sock.tls_report_names() {
            let sni = facts.sni.as_deref();
            let report = TlsReport::new(facts.version, suite, sni, subject.as_deref());
            self.filters.report_tls(report);
        }
        self.session.on_tls(facts);
        true
    }

    /// Logs a handshake that ended before it was done.
    pub(super) fn tls_failed(&self, ctx: &mut Ctx, reason: &str) {
        ctx.counters.tls[1] += 1;
        log::info!(
            "{:016x} smtp tls-failed reason=\"{}\"",
            self.id(),
            esc(reason.as_bytes())
        );
    }
}
