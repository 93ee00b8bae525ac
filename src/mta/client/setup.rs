//! The start of a session, up to the first MAIL: the greeting, EHLO (or LHLO) and the
//! HELO fallback, STARTTLS (RFC 3207) and AUTH (RFC 4954).
//!
//! A greeting other than 220 ends the session (QUIT); so do EHLO and HELO refused. A
//! server that refuses EHLO with a 5yz gets HELO, and is offered no extension. With
//! TLS wanted and STARTTLS offered, the client sends STARTTLS, hands the handshake to
//! the glue on 220 ([`Step::StartTls`]) and, once [`Client::tls_done`] says it is
//! done, forgets what the server said and greets it again (RFC 3207 §4.2). TLS
//! required and not offered, refused or failed ends the session. Credentials go only
//! over TLS: PLAIN when the server offers it (with the initial response), LOGIN
//! otherwise; a refusal (535) ends the session, every recipient deferred with the
//! reply. No line of the exchange is ever shown: [`Step::SendSecret`].

use super::ehlo::{server_name, Caps};
use super::{Client, ServerReply, State, Step, TlsMode};
use crate::mail::auth::Secret;
use crate::mail::base64;
use crate::mail::TlsFacts;
use crate::mda::Outcome;
use crate::nexthop::Proto;

/// Where an AUTH exchange stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthStep {
    /// `AUTH PLAIN <response>` sent.
    Plain,
    /// `AUTH LOGIN` sent: the user name is asked next.
    Login,
    /// The user name sent: the password is asked next.
    LoginUser,
    /// The password sent.
    LoginPassword,
}

/// What a log or trace shows of an AUTH line with credentials.
const HIDDEN: &str = "(hidden)";

impl Client {
    /// The handshake of a session with TLS from the first byte (`Ok`), or of
    /// STARTTLS, is over. On success the server is greeted again; a failure ends the
    /// session (the connection is unusable).
    pub fn tls_done(&mut self, r: Result<TlsFacts, String>) -> Vec<Step> {
        let mut out = Vec::new();
        if !matches!(self.state, State::TlsWait | State::TlsConnect) {
            return out;
        }
        match r {
            Ok(facts) => {
                self.tls = Some(facts);
                if self.state == State::TlsConnect {
                    self.state = State::Greeting;
                } else {
                    // RFC 3207 §4.2: what the server said before counts no more.
                    self.caps = Caps::default();
                    self.hello(&mut out);
                }
            }
            Err(why) => {
                let name = self.server_or("the server");
                let o = Outcome::TempFail(format!("4.7.5 TLS with {name} failed: {why}"));
                self.end_session(o, false, &mut out);
            }
        }
        out
    }

    /// The server's name for a message, or `none` when it gave none.
    pub(super) fn server_or<'a>(&'a self, none: &'a str) -> &'a str {
        if self.server.is_empty() {
            none
        } else {
            &self.server
        }
    }

    fn hello(&mut self, out: &mut Vec<Step>) {
        let verb = match self.proto {
            Proto::Smtp => "EHLO",
            Proto::Lmtp => "LHLO",
        };
        out.push(Step::Send(format!("{verb} {}", self.helo)));
        self.state = State::Ehlo;
    }

    pub(super) fn on_greeting(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        if r.code != 220 {
            // A 4yz or 5yz greeting: this server takes nothing now; another may.
            let o = Outcome::TempFail(format!("greeting: {}", r.line()));
            return self.end_session(o, true, out);
        }
        self.server = server_name(r);
        self.hello(out);
    }

    pub(super) fn on_ehlo(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        if r.positive() {
            return self.greeted(r, Caps::parse(r), out);
        }
        if (500..600).contains(&r.code) && self.proto == Proto::Smtp && self.tls.is_none() {
            // RFC 5321 §3.2: a server without extensions; HELO then.
            out.push(Step::Send(format!("HELO {}", self.helo)));
            self.state = State::Helo;
            return;
        }
        let o = Outcome::TempFail(format!("EHLO: {}", r.line()));
        self.end_session(o, true, out);
    }

    pub(super) fn on_helo(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        if r.positive() {
            return self.greeted(r, Caps::default(), out);
        }
        let o = Outcome::TempFail(format!("HELO: {}", r.line()));
        self.end_session(o, true, out);
    }

    /// The server took EHLO or HELO: STARTTLS, AUTH, or mail.
    fn greeted(&mut self, r: &ServerReply, caps: Caps, out: &mut Vec<Step>) {
        self.caps = caps;
        let name = server_name(r);
        if !name.is_empty() {
            self.server = name;
        }
        if self.tls.is_none() && self.opts.tls != TlsMode::Off {
            if self.caps.starttls {
                out.push(Step::Send("STARTTLS".into()));
                self.state = State::StartTls;
                return;
            }
            if self.opts.tls == TlsMode::Required {
                let name = self.server_or("the server");
                let o = Outcome::TempFail(format!("4.7.4 TLS not offered by {name}"));
                return self.end_session(o, true, out);
            }
        }
        self.authenticate(out);
    }

    pub(super) fn on_starttls(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        if r.code == 220 {
            out.push(Step::StartTls);
            self.state = State::TlsWait;
        } else if self.opts.tls == TlsMode::Required {
            let o = Outcome::TempFail(format!("STARTTLS: {}", r.line()));
            self.end_session(o, true, out);
        } else {
            // Opportunistic: in plain text then.
            self.authenticate(out);
        }
    }

    /// AUTH when the session has credentials, else ready for mail.
    fn authenticate(&mut self, out: &mut Vec<Step>) {
        let Some((user, password)) = &self.opts.auth else {
            return self.next(out);
        };
        let name = self.server_or("the server");
        let why = if self.tls.is_none() {
            format!("4.7.0 credentials for {name} go only over TLS, and TLS is not on")
        } else if self.caps.offers_auth("PLAIN") {
            // RFC 4616: authorization identity (none), user, password; RFC 4954 §4:
            // the initial response on the command line.
            let msg = Secret::new([b"\0", user.as_bytes(), b"\0", password.as_bytes()].concat());
            let line = format!("AUTH PLAIN {}", base64::encode(msg.expose()));
            out.push(Step::SendSecret {
                line: Secret::new(line.into_bytes()),
                shown: "AUTH PLAIN (hidden)",
            });
            self.state = State::Auth(AuthStep::Plain);
            return;
        } else if self.caps.offers_auth("LOGIN") {
            out.push(Step::Send("AUTH LOGIN".into()));
            self.state = State::Auth(AuthStep::Login);
            return;
        } else {
            format!("4.7.0 {name} offers no AUTH PLAIN or LOGIN")
        };
        self.end_session(Outcome::TempFail(why), true, out);
    }

    pub(super) fn on_auth(&mut self, step: AuthStep, r: &ServerReply, out: &mut Vec<Step>) {
        let secret = |s: &str| Step::SendSecret {
            line: Secret::new(base64::encode(s.as_bytes()).into_bytes()),
            shown: HIDDEN,
        };
        match (step, r.code) {
            (AuthStep::Plain | AuthStep::LoginPassword, 235) => self.next(out),
            (AuthStep::Login, 334) => {
                let user = self.opts.auth.as_ref().map(|(u, _)| u.as_str());
                out.push(secret(user.unwrap_or_default()));
                self.state = State::Auth(AuthStep::LoginUser);
            }
            (AuthStep::LoginUser, 334) => {
                let password = self.opts.auth.as_ref().map(|(_, p)| p.as_str());
                out.push(secret(password.unwrap_or_default()));
                self.state = State::Auth(AuthStep::LoginPassword);
            }
            _ => {
                // 535 (bad credentials) or anything else: the relay takes no mail
                // from us now; deferred, so that fixed credentials deliver it.
                let o = Outcome::TempFail(format!("AUTH: {}", r.line()));
                self.end_session(o, true, out);
            }
        }
    }
}
