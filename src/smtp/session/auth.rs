//! SMTP AUTH in the session (RFC 4954), PLAIN (RFC 4616) and LOGIN.
//!
//! ```text
//!  Ready --AUTH PLAIN--> 334 --message--------------------> [Auth] --on_auth--> 235 / 535 / 454
//!  Ready --AUTH LOGIN--> 334 user? --name--> 334 password? --password--> [Auth]
//!        --AUTH mech initial-response------------------------^ (or to the next prompt)
//!  an exchange line "*" --> 501 5.7.0; not base64 --> 501 5.5.2; over 12288 octets --> 500 5.5.6
//! ```
//!
//! AUTH is offered on the listeners with `auth` or `auth-optional`, and only once TLS
//! protects the session (PLAIN and LOGIN send the password in clear): before that the
//! EHLO reply does not list it and AUTH gets `538 5.7.11`. A listener without AUTH
//! answers `503 5.5.1`. The credentials are not checked here: the session asks
//! ([`Action::Authenticate`]) and waits in a named pending state, taking no input,
//! until [`Session::on_auth`] brings the answer (a lookup thread checks a table, the
//! privileged parent the system's accounts; the glue delays a failure's answer).
//! After `max_auth_failures` wrong credentials the session is closed with 421.

use super::{Action, Pending, Session, State};
use crate::config::{AuthMode, ListenerAuth, TableId};
use crate::filter::phase::{FilterVerdict, Phase};
use crate::lookup::{AuthCheck, SenderQuery, SenderUser};
use crate::mail::address::Mailbox;
use crate::mail::auth::{log_word, AuthResult, Credentials, Secret, MAX_CREDENTIAL};
use crate::mail::reply::Reply;
use crate::smtp::sasl::{self, Mechanism, PlainError};
use std::borrow::Cow;

/// A session's AUTH state.
#[derive(Debug, Default)]
pub(super) struct AuthState {
    /// What the listener offers.
    policy: ListenerAuth,
    /// Wrong credentials so far.
    failures: usize,
    /// The exchange waiting for the client's next line, if any.
    exchange: Option<Exchange>,
}

/// What the client's next line answers.
#[derive(Debug)]
enum Exchange {
    /// `334 `: the PLAIN message.
    Plain,
    /// `334 VXNlcm5hbWU6`: LOGIN's user name.
    LoginUser,
    /// `334 UGFzc3dvcmQ6`: LOGIN's password for this user.
    LoginPassword(String),
}

impl Exchange {
    /// The mechanism's name, as filters are told it.
    fn mechanism(&self) -> &'static str {
        match self {
            Exchange::Plain => "PLAIN",
            Exchange::LoginUser | Exchange::LoginPassword(_) => "LOGIN",
        }
    }
}

/// The user of a local submission, known by the control socket's peer credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalUser {
    /// The user id.
    pub uid: u32,
    /// Whether its senders are checked (not root, not the daemon's user).
    pub checked: bool,
    /// The socket's `senders` table.
    pub senders: Option<TableId>,
}

impl Session {
    /// Sets what the listener offers of SMTP AUTH.
    pub fn set_auth(&mut self, policy: ListenerAuth) {
        self.auth.policy = policy;
    }

    /// The user the client authenticated as, once it did.
    pub fn auth_user(&self) -> Option<&str> {
        self.client.auth.as_deref()
    }

    /// Whether the next line is a line of an AUTH exchange (never a command).
    pub fn in_auth_exchange(&self) -> bool {
        self.auth.exchange.is_some()
    }

    /// The longest command line to take, given the configured `default` (CR LF not
    /// counted): an AUTH line may be longer while AUTH can be used.
    pub fn command_limit(&self, default: usize) -> usize {
        if self.auth.exchange.is_some() || self.auth_offered() {
            default.max(sasl::MAX_LINE)
        } else {
            default
        }
    }

    /// What of a line the client sent may be logged or shown to filters: never an AUTH
    /// response, nor its base64.
    pub fn loggable<'a>(&self, line: &'a [u8]) -> Cow<'a, [u8]> {
        sasl::redact(line, self.auth.exchange.is_some())
    }

    /// Whether the EHLO reply lists AUTH: the listener offers it, TLS is active and
    /// the client has not authenticated.
    pub(super) fn auth_offered(&self) -> bool {
        self.auth.policy.mode != AuthMode::Off && self.tls.is_some() && self.client.auth.is_none()
    }

    /// A command line longer than `max_command_line` is refused unless it is an AUTH
    /// line and AUTH can be used.
    pub(super) fn too_long(&self, line: &[u8]) -> bool {
        let auth = line
            .get(..5)
            .is_some_and(|v| v.eq_ignore_ascii_case(b"AUTH "));
        line.len() > self.limits.max_command_line.saturating_sub(2)
            && !(auth && self.auth_offered())
    }

    /// MAIL on an `auth` listener before AUTH (RFC 4954 §6: 530 5.7.0).
    pub(super) fn mail_needs_auth(&self) -> bool {
        self.auth.policy.mode == AuthMode::Required && self.client.auth.is_none()
    }

    /// The `AUTH` command.
    pub(super) fn auth(&mut self, mech: &str, initial: Option<&str>, out: &mut Vec<Action>) {
        let refusal = if self.auth.policy.mode == AuthMode::Off {
            Some(Reply::AUTH_NOT_ENABLED)
        } else if self.client.auth.is_some() {
            Some(Reply::AUTH_ALREADY)
        } else if self.state == State::Mail {
            Some(Reply::AUTH_IN_TRANSACTION)
        } else if self.state != State::Ready || !self.esmtp {
            Some(Reply::NEED_EHLO)
        } else if Mechanism::named(mech).is_none() {
            Some(Reply::AUTH_UNKNOWN_MECHANISM)
        } else if self.tls.is_none() {
            Some(Reply::AUTH_NEEDS_TLS)
        } else {
            None
        };
        if let Some(r) = refusal {
            return self.fail(r, out);
        }
        let exchange = match Mechanism::named(mech) {
            Some(Mechanism::Plain) => Exchange::Plain,
            _ => Exchange::LoginUser,
        };
        match initial {
            None => self.prompt(exchange, out),
            // RFC 4954 §4: "=" is an initial response that is empty.
            Some("=") => self.response(exchange, Vec::new(), out),
            Some(b64) => match sasl::decode(b64.as_bytes()) {
                Some(data) => self.response(exchange, data, out),
                None => self.fail(Reply::AUTH_BAD_BASE64, out),
            },
        }
    }

    /// A line of the exchange.
    pub(super) fn auth_line(&mut self, line: &[u8], out: &mut Vec<Action>) {
        let Some(exchange) = self.auth.exchange.take() else {
            return;
        };
        if line == b"*" {
            return self.fail(Reply::AUTH_CANCELLED, out);
        }
        match sasl::decode(line) {
            Some(data) => self.response(exchange, data, out),
            None => self.fail(Reply::AUTH_BAD_BASE64, out),
        }
    }

    /// A line the line buffer refused, in an exchange: the exchange ends. False when
    /// there is none.
    pub(super) fn auth_bad_line(&mut self, reply: Reply, out: &mut Vec<Action>) -> bool {
        if self.auth.exchange.take().is_none() {
            return false;
        }
        let r = match reply == Reply::LINE_TOO_LONG {
            true => Reply::AUTH_LINE_TOO_LONG,
            false => reply,
        };
        self.fail(r, out);
        true
    }

    fn prompt(&mut self, exchange: Exchange, out: &mut Vec<Action>) {
        let text = match exchange {
            Exchange::Plain => "",
            Exchange::LoginUser => sasl::LOGIN_USER_PROMPT,
            Exchange::LoginPassword(_) => sasl::LOGIN_PASSWORD_PROMPT,
        };
        out.push(Action::Reply(Reply::new(334, "", text)));
        self.auth.exchange = Some(exchange);
    }

    /// The client's decoded answer to `exchange`.
    fn response(&mut self, exchange: Exchange, data: Vec<u8>, out: &mut Vec<Action>) {
        let mechanism = exchange.mechanism();
        match exchange {
            Exchange::Plain => match sasl::plain(data) {
                Ok(c) => self.check(c, mechanism, out),
                Err(PlainError::Malformed) => self.fail(Reply::AUTH_MALFORMED, out),
                Err(PlainError::Refused(user)) => {
                    self.auth_result(user, mechanism, AuthResult::PermFail, out)
                }
            },
            Exchange::LoginUser => match String::from_utf8(data) {
                Ok(u) if !u.is_empty() && u.len() <= MAX_CREDENTIAL && !u.contains('\0') => {
                    self.prompt(Exchange::LoginPassword(u), out)
                }
                _ => self.fail(Reply::AUTH_MALFORMED, out),
            },
            Exchange::LoginPassword(user) => {
                let password = Secret::new(data);
                let p = password.expose();
                if p.is_empty() || p.len() > MAX_CREDENTIAL || p.contains(&0) {
                    return self.auth_result(user, mechanism, AuthResult::PermFail, out);
                }
                self.check(Credentials { user, password }, mechanism, out)
            }
        }
    }

    /// Asks for the credentials to be checked; the answer comes through `on_auth`.
    fn check(&mut self, credentials: Credentials, mechanism: &'static str, out: &mut Vec<Action>) {
        self.pending = Some(Pending::Auth {
            user: credentials.user.clone(),
            mechanism,
        });
        out.push(Action::Authenticate(AuthCheck {
            table: self.auth.policy.table,
            credentials,
        }));
    }

    /// The answer to [`Action::Authenticate`].
    pub fn on_auth(&mut self, result: AuthResult, out: &mut Vec<Action>) {
        if self.state == State::Quit {
            // Closed meanwhile (timeout, shutdown).
            return;
        }
        match self.pending.take() {
            Some(Pending::Auth { user, mechanism }) => {
                self.auth_result(user, mechanism, result, out)
            }
            other => {
                debug_assert!(false, "AUTH answer without a pending check");
                self.pending = other;
            }
        }
    }

    fn auth_result(
        &mut self,
        user: String,
        mechanism: &'static str,
        result: AuthResult,
        out: &mut Vec<Action>,
    ) {
        // Accepted credentials go to the filters that asked for AUTH first.
        if result == AuthResult::Ok {
            let pending = Pending::AuthFilter {
                user: user.clone(),
                mechanism,
            };
            if self.ask(Phase::Auth { mechanism }, user.clone(), pending, out) {
                return;
            }
        }
        self.auth_done(user, mechanism, result, out)
    }

    /// The end of an exchange whose credentials were checked (and, when accepted,
    /// passed the filters): the log line, the reply and the report to filters.
    fn auth_done(
        &mut self,
        user: String,
        mechanism: &'static str,
        result: AuthResult,
        out: &mut Vec<Action>,
    ) {
        log::info!(
            "{:016x} smtp authentication user={} result={}",
            self.id,
            log_word(&user),
            result.as_str()
        );
        let reply = match result {
            AuthResult::Ok => Reply::AUTH_OK,
            AuthResult::TempFail => Reply::AUTH_TEMPFAIL,
            AuthResult::PermFail => Reply::AUTH_FAILED,
        };
        let code = reply.code;
        let report = |user| Action::AuthReport {
            mechanism,
            user,
            code,
        };
        match result {
            AuthResult::Ok => {
                self.client.auth = Some(user.clone());
                out.push(Action::Reply(reply));
                out.push(report(user));
            }
            AuthResult::TempFail => self.fail_then(reply, Some(report(user)), out),
            AuthResult::PermFail => {
                self.auth.failures += 1;
                if self.auth.failures >= self.limits.max_auth_failures {
                    out.push(Action::Reply(reply));
                    out.push(report(user));
                    return self.close(Reply::AUTH_TOO_MANY_FAILURES, out);
                }
                self.fail_then(reply, Some(report(user)), out);
            }
        }
    }

    /// The filters' verdict on accepted credentials: PROCEED (or JUNK, which marks the
    /// session) lets the 235 go; a refusal is the reply instead, and the client stays
    /// unauthenticated.
    pub(super) fn auth_filtered(
        &mut self,
        user: String,
        mechanism: &'static str,
        v: FilterVerdict,
        out: &mut Vec<Action>,
    ) {
        let refusal = match v {
            FilterVerdict::Proceed { junk, .. } => {
                self.junk |= junk;
                None
            }
            FilterVerdict::Discard => None,
            FilterVerdict::Reject(r) => Some((r, false)),
            FilterVerdict::Disconnect(r) => Some((r, true)),
        };
        let Some((r, disconnect)) = refusal else {
            return self.auth_done(user, mechanism, AuthResult::Ok, out);
        };
        log::info!(
            "{:016x} smtp authentication user={} result=filtered",
            self.id,
            log_word(&user)
        );
        let report = Action::AuthReport {
            mechanism,
            user,
            code: r.code,
        };
        if disconnect || r.code == 421 {
            self.close(r, out);
            // After the reply, before the close.
            let at = out
                .iter()
                .rposition(|a| matches!(a, Action::Close))
                .unwrap_or(out.len());
            out.insert(at, report);
        } else {
            self.fail_then(r, Some(report), out);
        }
    }

    /// Records the user of a local submission (the control socket's peer): its uid
    /// goes in the Received header; with `checked` (a user other than root and the
    /// daemon's own), its senders are checked, with `senders` (the socket's table)
    /// adding to the user's own addresses.
    pub fn set_local_user(&mut self, uid: u32, checked: bool, senders: Option<TableId>) {
        self.local_user = Some(LocalUser {
            uid,
            checked,
            senders,
        });
    }

    /// The uid of a local submission's user, when the session is one.
    pub fn local_uid(&self) -> Option<u32> {
        self.local_user.as_ref().map(|l| l.uid)
    }

    /// The check of `sender`: a plain local user's, or an authenticated user's
    /// against the `senders` table.
    pub(super) fn sender_query(&self, sender: &Mailbox) -> Option<SenderQuery> {
        if let Some(l) = self.local_user.as_ref().filter(|l| l.checked) {
            return Some(SenderQuery {
                table: l.senders,
                user: SenderUser::Local {
                    uid: l.uid,
                    server_name: self.client.server_name.clone(),
                },
                sender: sender.clone(),
            });
        }
        Some(SenderQuery {
            table: Some(self.auth.policy.senders?),
            user: SenderUser::Auth(self.client.auth.clone()?),
            sender: sender.clone(),
        })
    }

    /// With `senders <t> masquerade`, the address the From header of the open
    /// message gets: the sender of an authenticated user (not `<>`).
    pub fn masquerade(&self) -> Option<String> {
        let p = &self.auth.policy;
        let sender = &self.tx.as_ref()?.sender;
        (p.masquerade && p.senders.is_some() && self.client.auth.is_some() && !sender.is_null())
            .then(|| sender.to_string())
    }

    /// The protocol of the Received header (RFC 3848, RFC 6531 §4.3).
    pub(super) fn received_protocol(&self) -> &'static str {
        let tls = self.tls.is_some();
        let utf8 = self.tx.as_ref().is_some_and(|t| t.params.smtputf8);
        crate::mail::tls::received_protocol(self.esmtp, tls, self.client.auth.is_some(), utf8)
    }

    /// With `received-auth`, the comment naming the user in the Received header
    /// (octets that a comment may not hold become `?`), else nothing.
    pub(super) fn received_auth(&self) -> String {
        match (&self.client.auth, self.auth.policy.received_auth) {
            (Some(u), true) => {
                let name: String = u
                    .chars()
                    .map(|c| match c {
                        '(' | ')' | '\\' => '?',
                        c if c.is_ascii_graphic() => c,
                        _ => '?',
                    })
                    .collect();
                format!(" (auth=yes user={name})")
            }
            _ => String::new(),
        }
    }
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
