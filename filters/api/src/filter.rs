//! The Rust glue: register the callbacks you want, then [`Filter::run`].
//!
//! ```no_run
//! use smtpd_filter::{Decision, Filter};
//! Filter::new("no-spammer")
//!     .on_mail(|_ctx, sender| {
//!         if sender.ends_with("@spammer.example") {
//!             Decision::Reject(550, "5.7.1 go away".into())
//!         } else {
//!             Decision::Proceed
//!         }
//!     })
//!     .run()
//!     .expect("filter protocol");
//! ```
//! Callbacks get a [`Ctx`] whose `session` keys the filter's own per-session state.
//! One answer per event; a callback must not block, since the other sessions wait
//! meanwhile and the daemon gives each answer a deadline. A callback that waits for
//! something (a DNS answer, a service) returns [`Ctx::later`] and answers with
//! [`Ctx::answer`] from the callback of a descriptor or a timer it set up:
//!
//! ```no_run
//! use smtpd_filter::{Decision, Filter};
//! use std::time::Duration;
//! Filter::new("slow")
//!     .on_mail(|ctx, _sender| {
//!         let session = ctx.session;
//!         ctx.timer(Duration::from_millis(100), move |ctx| {
//!             ctx.answer(session, Decision::Proceed)
//!         });
//!         ctx.later()
//!     })
//!     .run()
//!     .expect("filter protocol");
//! ```

use crate::codec::{self, event, Decoder, Frame};
use crate::ctx::{Answer, Ctx, Interest, Ready};
use crate::pending::{Pending, WatchChange};
use crate::preamble::Preamble;
use crate::verdict::Decision;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, RawFd};
use std::time::Instant;

/// What a connection event tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Our address (`ip:port`, or `local`).
    pub local: String,
    /// The client's address.
    pub remote: String,
    /// The client's host name, or empty.
    pub hostname: String,
}

/// What a TLS report tells: the facts of a session's completed handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// The protocol version, as `TLSv1.3`.
    pub version: String,
    /// The cipher suite's IANA name, as `TLS_AES_256_GCM_SHA384`.
    pub cipher: String,
    /// The cipher's key length in bits.
    pub bits: u16,
    /// The server name the client asked for, or empty.
    pub sni: String,
    /// The subject of the client's verified certificate, or empty.
    pub subject: String,
}

/// Who authenticated, and how: what AUTH asks and AUTH_RESULT reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    /// The SASL mechanism, as `PLAIN` or `LOGIN`.
    pub mechanism: String,
    /// The authentication identity the client gave (never its password).
    pub user: String,
}

type StrAnswer = Box<dyn FnMut(&mut Ctx, &str) -> Answer>;
type ConnectAnswer = Box<dyn FnMut(&mut Ctx, &Connect) -> Answer>;
type SizeAnswer = Box<dyn FnMut(&mut Ctx, u64) -> Answer>;
type Notice = Box<dyn FnMut(&mut Ctx, &str)>;
type TlsNotice = Box<dyn FnMut(&mut Ctx, &Tls)>;
type AuthAnswer = Box<dyn FnMut(&mut Ctx, &Auth) -> Answer>;
type AuthNotice = Box<dyn FnMut(&mut Ctx, &Auth, &str)>;
type Plain = Box<dyn FnMut(&mut Ctx)>;
type PlainAnswer = Box<dyn FnMut(&mut Ctx) -> Answer>;
type LineFn = Box<dyn FnMut(&mut Ctx, &[u8], &mut Vec<Vec<u8>>)>;
type EndFn = Box<dyn FnMut(&mut Ctx, &mut Vec<Vec<u8>>)>;

/// A filter under construction: callbacks, then [`Filter::run`].
#[derive(Default)]
pub struct Filter {
    name: String,
    connect: Option<ConnectAnswer>,
    helo: Option<StrAnswer>,
    ehlo: Option<StrAnswer>,
    auth: Option<AuthAnswer>,
    mail: Option<StrAnswer>,
    rcpt: Option<StrAnswer>,
    data: Option<PlainAnswer>,
    data_line: Option<LineFn>,
    data_end: Option<EndFn>,
    eom: Option<SizeAnswer>,
    commit: Option<Notice>,
    rollback: Option<Plain>,
    disconnect: Option<Plain>,
    tls: Option<TlsNotice>,
    auth_result: Option<AuthNotice>,
    pub(crate) pending: Pending,
    wire: Wire,
}

/// The reading side of the protocol: frames decoded so far, READY seen.
#[derive(Default)]
struct Wire {
    dec: Decoder,
    pre: Preamble,
    ready: bool,
}

macro_rules! setter {
    ($(#[$doc:meta])* $name:ident, $field:ident, $arg:ty) => {
        $(#[$doc])*
        pub fn $name<A: Into<Answer>>(
            mut self,
            mut f: impl FnMut(&mut Ctx, $arg) -> A + 'static,
        ) -> Self {
            self.$field = Some(Box::new(move |c: &mut Ctx, a: $arg| -> Answer { f(c, a).into() }));
            self
        }
    };
}

impl Filter {
    /// A filter that calls itself `name` in the daemon's logs.
    pub fn new(name: &str) -> Self {
        Filter {
            name: name.to_string(),
            ..Filter::default()
        }
    }

    /// Called for each new session, before the greeting.
    pub fn on_connect<A: Into<Answer>>(
        mut self,
        mut f: impl FnMut(&mut Ctx, &Connect) -> A + 'static,
    ) -> Self {
        self.connect = Some(Box::new(move |c: &mut Ctx, a: &Connect| -> Answer {
            f(c, a).into()
        }));
        self
    }

    setter!(
        /// Called for HELO, with its name.
        on_helo, helo, &str
    );
    setter!(
        /// Called for EHLO, with its name.
        on_ehlo, ehlo, &str
    );
    /// Called when a client's credentials were accepted, before the 235 reply: a
    /// refusal keeps the session unauthenticated (TEMPFAIL is answered 454).
    pub fn on_auth<A: Into<Answer>>(
        mut self,
        mut f: impl FnMut(&mut Ctx, &Auth) -> A + 'static,
    ) -> Self {
        self.auth = Some(Box::new(move |c: &mut Ctx, a: &Auth| -> Answer {
            f(c, a).into()
        }));
        self
    }

    setter!(
        /// Called for MAIL FROM, with the address (empty for `<>`).
        on_mail, mail, &str
    );
    setter!(
        /// Called for RCPT TO, with the address.
        on_rcpt, rcpt, &str
    );

    /// Called for DATA, before the 354.
    pub fn on_data<A: Into<Answer>>(mut self, mut f: impl FnMut(&mut Ctx) -> A + 'static) -> Self {
        self.data = Some(Box::new(move |c: &mut Ctx| -> Answer { f(c).into() }));
        self
    }

    /// Called for each line of the message (dot-unstuffed, no line end); push the
    /// lines to keep or add to `out` (leave it empty to drop the line).
    pub fn on_data_line(
        mut self,
        f: impl FnMut(&mut Ctx, &[u8], &mut Vec<Vec<u8>>) + 'static,
    ) -> Self {
        self.data_line = Some(Box::new(f));
        self
    }

    /// Called after the last line; lines pushed to `out` are appended to the message.
    pub fn on_data_end(mut self, f: impl FnMut(&mut Ctx, &mut Vec<Vec<u8>>) + 'static) -> Self {
        self.data_end = Some(Box::new(f));
        self
    }

    /// Called at the end of the message, with its size; edits made through the
    /// [`Ctx`] apply if the decision lets the message through.
    pub fn on_eom<A: Into<Answer>>(
        mut self,
        mut f: impl FnMut(&mut Ctx, u64) -> A + 'static,
    ) -> Self {
        self.eom = Some(Box::new(move |c: &mut Ctx, n: u64| -> Answer {
            f(c, n).into()
        }));
        self
    }

    /// Watches `fd` from the start (see [`Ctx::watch`]), as a descriptor opened
    /// before [`Filter::run`] needs.
    pub fn watch(
        mut self,
        fd: RawFd,
        interest: Interest,
        f: impl FnMut(&mut Ctx, Ready) + 'static,
    ) -> Self {
        self.pending
            .changes
            .push(WatchChange::Watch(fd, interest, Box::new(f)));
        self
    }

    /// Told when a message was committed, with its id.
    pub fn on_commit(mut self, f: impl FnMut(&mut Ctx, &str) + 'static) -> Self {
        self.commit = Some(Box::new(f));
        self
    }

    /// Told when a transaction was abandoned.
    pub fn on_rollback(mut self, f: impl FnMut(&mut Ctx) + 'static) -> Self {
        self.rollback = Some(Box::new(f));
        self
    }

    /// Told when a session ended.
    pub fn on_disconnect(mut self, f: impl FnMut(&mut Ctx) + 'static) -> Self {
        self.disconnect = Some(Box::new(f));
        self
    }

    /// Told when a session's TLS handshake completed (before its next command).
    pub fn on_tls(mut self, f: impl FnMut(&mut Ctx, &Tls) + 'static) -> Self {
        self.tls = Some(Box::new(f));
        self
    }

    /// Told how an AUTH exchange ended: `ok`, `permfail` or `tempfail` (take any other
    /// value as a failure).
    pub fn on_auth_result(mut self, f: impl FnMut(&mut Ctx, &Auth, &str) + 'static) -> Self {
        self.auth_result = Some(Box::new(f));
        self
    }

    fn hooks(&self) -> (u32, u32) {
        let mut h = 0;
        let mut r = 0;
        let set = |on: bool, bit: u32, dst: &mut u32| {
            if on {
                *dst |= bit;
            }
        };
        set(self.connect.is_some(), event::CONNECT, &mut h);
        set(self.helo.is_some(), event::HELO, &mut h);
        set(self.ehlo.is_some(), event::EHLO, &mut h);
        set(self.auth.is_some(), event::AUTH, &mut h);
        set(self.mail.is_some(), event::MAIL, &mut h);
        set(self.rcpt.is_some(), event::RCPT, &mut h);
        set(self.data.is_some(), event::DATA, &mut h);
        set(
            self.data_line.is_some() || self.data_end.is_some(),
            event::DATA_LINES,
            &mut h,
        );
        set(self.eom.is_some(), event::EOM, &mut h);
        set(self.commit.is_some(), event::COMMIT, &mut r);
        set(self.rollback.is_some(), event::ROLLBACK, &mut r);
        // DISCONNECT always: it forgets a session whose answer is pending.
        r |= event::DISCONNECT;
        set(self.tls.is_some(), event::TLS, &mut r);
        set(self.auth_result.is_some(), event::AUTH_RESULT, &mut r);
        (h, r)
    }

    /// Speaks the protocol on standard input and output until the daemon closes it,
    /// serving the filter's descriptors and timers meanwhile.
    pub fn run(self) -> io::Result<()> {
        let input = io::stdin().as_fd().try_clone_to_owned()?;
        let output = io::stdout().as_fd().try_clone_to_owned()?;
        self.run_fd(input, output)
    }

    /// Speaks the protocol on any reader and writer (for tests). Answers given later
    /// from other events' callbacks are served; descriptors and timers are not.
    pub fn run_on(mut self, mut r: impl Read, mut w: impl Write) -> io::Result<()> {
        let mut out = Vec::new();
        self.start(&mut out);
        w.write_all(&out)?;
        w.flush()?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            out.clear();
            self.feed(&buf[..n], &mut out)?;
            w.write_all(&out)?;
            w.flush()?;
        }
    }

    /// The REGISTER frame, into `out`.
    pub(crate) fn start(&mut self, out: &mut Vec<u8>) {
        let (hooks, reports) = self.hooks();
        codec::encode(
            0,
            &Frame::Register {
                version: codec::VERSION,
                hooks,
                reports,
                name: self.name.as_bytes(),
            },
            out,
        );
    }

    /// Takes bytes from the daemon: every whole frame is handled, answers go to `out`.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let mut wire = std::mem::take(&mut self.wire);
        let r = self.feed_wire(&mut wire, bytes, out);
        self.wire = wire;
        r
    }

    fn feed_wire(&mut self, wire: &mut Wire, bytes: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        wire.dec.feed(wire.pre.filter(bytes));
        loop {
            let (sid, frame) = match wire.dec.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            };
            if !wire.ready {
                ready_timeout(&frame)?;
                wire.ready = true;
                continue;
            }
            self.dispatch(sid, frame, out);
        }
    }

    /// How many events wait for an answer given later.
    pub fn waiting(&self) -> usize {
        self.pending.waiting()
    }

    fn dispatch(&mut self, sid: u64, frame: Frame<'_>, out: &mut Vec<u8>) {
        let mut ctx = self.pending.ctx(sid);
        let answer = self.call(sid, frame, &mut ctx, out);
        match answer {
            None => {}
            Some(Answer::Later) => self.pending.defer(sid, std::mem::take(&mut ctx.edits)),
            Some(Answer::Now(decision)) => {
                for e in &ctx.edits {
                    e.encode(sid, out);
                }
                codec::encode(sid, &decision.frame(), out);
            }
        }
        self.pending.apply(ctx, Instant::now(), out);
    }

    /// Calls the callback of `frame`: the answer of an answered event (Proceed when
    /// no callback is registered), `None` for the others.
    fn call(
        &mut self,
        sid: u64,
        frame: Frame<'_>,
        ctx: &mut Ctx,
        out: &mut Vec<u8>,
    ) -> Option<Answer> {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let answer = match frame {
            Frame::Connect {
                local,
                remote,
                hostname,
            } => {
                let c = Connect {
                    local: text(local),
                    remote: text(remote),
                    hostname: text(hostname),
                };
                self.connect.as_mut().map(|f| f(ctx, &c))
            }
            Frame::Helo(s) => self.helo.as_mut().map(|f| f(ctx, &text(s))),
            Frame::Ehlo(s) => self.ehlo.as_mut().map(|f| f(ctx, &text(s))),
            Frame::Auth { mechanism, user } => {
                let a = Auth {
                    mechanism: text(mechanism),
                    user: text(user),
                };
                self.auth.as_mut().map(|f| f(ctx, &a))
            }
            Frame::Mail(s) => self.mail.as_mut().map(|f| f(ctx, &text(s))),
            Frame::Rcpt(s) => self.rcpt.as_mut().map(|f| f(ctx, &text(s))),
            Frame::Data => self.data.as_mut().map(|f| f(ctx)),
            Frame::DataLines(lines) => {
                let mut kept: Vec<Vec<u8>> = Vec::with_capacity(lines.len());
                for l in lines {
                    match self.data_line.as_mut() {
                        Some(f) => f(ctx, l, &mut kept),
                        None => kept.push(l.to_vec()),
                    }
                }
                if !kept.is_empty() {
                    for chunk in kept.chunks(1024) {
                        let refs: Vec<&[u8]> = chunk.iter().map(|v| v.as_slice()).collect();
                        codec::encode(sid, &Frame::DataLines(refs), out);
                    }
                }
                return None;
            }
            Frame::DataEnd => {
                let mut extra = Vec::new();
                if let Some(f) = self.data_end.as_mut() {
                    f(ctx, &mut extra);
                }
                if !extra.is_empty() {
                    let refs: Vec<&[u8]> = extra.iter().map(|v| v.as_slice()).collect();
                    codec::encode(sid, &Frame::DataLines(refs), out);
                }
                codec::encode(sid, &Frame::DataEnd, out);
                return None;
            }
            Frame::Eom(size) => self.eom.as_mut().map(|f| f(ctx, size)),
            Frame::Commit(id) => {
                if let Some(f) = self.commit.as_mut() {
                    f(ctx, &text(id));
                }
                return None;
            }
            Frame::Rollback => {
                if let Some(f) = self.rollback.as_mut() {
                    f(ctx);
                }
                return None;
            }
            Frame::Disconnect => {
                self.pending.ended(sid);
                if let Some(f) = self.disconnect.as_mut() {
                    f(ctx);
                }
                return None;
            }
            Frame::Tls {
                version,
                cipher,
                bits,
                sni,
                subject,
            } => {
                if let Some(f) = self.tls.as_mut() {
                    let t = Tls {
                        version: text(version),
                        cipher: text(cipher),
                        bits,
                        sni: text(sni),
                        subject: text(subject),
                    };
                    f(ctx, &t);
                }
                return None;
            }
            Frame::AuthResult {
                mechanism,
                user,
                result,
            } => {
                if let Some(f) = self.auth_result.as_mut() {
                    let a = Auth {
                        mechanism: text(mechanism),
                        user: text(user),
                    };
                    f(ctx, &a, &text(result));
                }
                return None;
            }
            _ => return None,
        };
        Some(answer.unwrap_or(Answer::Now(Decision::Proceed)))
    }
}

/// The daemon's answer to a filter's REGISTER, the first frame it reads: READY's
/// answer deadline in milliseconds, or the error that ends the filter (REFUSED, or any
/// other frame before READY). For filters that read their frames themselves.
pub fn ready_timeout(frame: &Frame) -> io::Result<u32> {
    match frame {
        Frame::Ready { timeout_ms, .. } => Ok(*timeout_ms),
        Frame::Refused(why) => Err(io::Error::other(format!(
            "refused by the daemon: {}",
            String::from_utf8_lossy(why)
        ))),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "event before READY",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::rc::Rc;

    /// Runs `f` on the daemon's `frames` (after READY); returns what it wrote.
    fn exchange(f: Filter, frames: &[(u64, Frame)]) -> Vec<(u64, Vec<u8>)> {
        let mut input = Vec::new();
        let ready = Frame::Ready {
            version: 1,
            max_frame: 1 << 20,
            timeout_ms: 30000,
        };
        codec::encode(0, &ready, &mut input);
        for (sid, fr) in frames {
            codec::encode(*sid, fr, &mut input);
        }
        let mut out = Vec::new();
        f.run_on(&input[..], &mut out).expect("the exchange");
        let mut d = Decoder::new();
        d.feed(&out);
        let mut got = Vec::new();
        while let Some((sid, fr)) = d.next_frame().expect("frames") {
            let mut one = Vec::new();
            codec::encode(sid, &fr, &mut one);
            got.push((sid, one));
        }
        got
    }

    fn bytes(sid: u64, f: &Frame) -> (u64, Vec<u8>) {
        let mut one = Vec::new();
        codec::encode(sid, f, &mut one);
        (sid, one)
    }

    #[test]
    fn tls_and_auth_reach_their_callbacks() {
        let seen = Rc::new(RefCell::new(Vec::new()));
        let (a, b, c) = (seen.clone(), seen.clone(), seen.clone());
        let f = Filter::new("t")
            .on_tls(move |ctx, t| a.borrow_mut().push(format!("{:x} {t:?}", ctx.session)))
            .on_auth(move |_, x| {
                b.borrow_mut()
                    .push(format!("auth {} {}", x.mechanism, x.user));
                match x.user.as_str() {
                    "mallory" => Decision::Reject(535, "5.7.8 no".into()),
                    _ => Decision::Proceed,
                }
            })
            .on_auth_result(move |_, x, r| {
                c.borrow_mut()
                    .push(format!("result {} {} {r}", x.mechanism, x.user))
            });
        let tls = Frame::Tls {
            version: b"TLSv1.3",
            cipher: b"TLS_AES_128_GCM_SHA256",
            bits: 128,
            sni: b"mx.example.org",
            subject: b"",
        };
        let auth = |user| Frame::Auth {
            mechanism: b"PLAIN",
            user,
        };
        let result = Frame::AuthResult {
            mechanism: b"LOGIN",
            user: b"bob",
            result: b"permfail",
        };
        let got = exchange(
            f,
            &[
                (7, tls),
                (7, auth(b"alice")),
                (8, auth(b"mallory")),
                (8, result),
            ],
        );
        let register = Frame::Register {
            version: codec::VERSION,
            hooks: event::AUTH,
            reports: event::TLS | event::AUTH_RESULT | event::DISCONNECT,
            name: b"t",
        };
        let reject = Frame::Reject {
            code: 535,
            text: b"5.7.8 no",
        };
        assert_eq!(
            got,
            vec![
                bytes(0, &register),
                bytes(7, &Frame::Proceed),
                bytes(8, &reject)
            ]
        );
        assert_eq!(
            *seen.borrow(),
            [
                "7 Tls { version: \"TLSv1.3\", cipher: \"TLS_AES_128_GCM_SHA256\", bits: 128, \
                 sni: \"mx.example.org\", subject: \"\" }",
                "auth PLAIN alice",
                "auth PLAIN mallory",
                "result LOGIN bob permfail",
            ]
        );
    }

    #[test]
    fn reports_not_registered_are_ignored_and_auth_proceeds_by_default() {
        let f = Filter::new("t").on_mail(|_, _| Decision::Proceed);
        let tls = Frame::Tls {
            version: b"TLSv1.2",
            cipher: b"x",
            bits: 0,
            sni: b"",
            subject: b"",
        };
        let auth = Frame::Auth {
            mechanism: b"PLAIN",
            user: b"u",
        };
        let got = exchange(f, &[(1, tls), (1, auth)]);
        assert_eq!(got.len(), 2, "REGISTER, then one answer");
        assert_eq!(got[1], bytes(1, &Frame::Proceed));
    }
}
