//! The glue of SMTP AUTH: the credentials go to a lookup thread (a table) or to the
//! privileged parent (the system's accounts), never checked on the loop; the answer
//! comes back through the server, which delays a failure's (see
//! `event_loop/auth.rs`) before the session hears it.

use super::*;
use crate::lookup::AuthCheck;
use crate::mail::auth::AuthResult;
use std::os::fd::AsRawFd;

impl Conn {
    /// Hands the session's credentials to whoever checks them; when nobody can, the
    /// session hears a temporary failure at once.
    pub(super) fn authenticate(&mut self, ctx: &mut Ctx, check: AuthCheck) {
        let asked = match check.table {
            Some(_) => ctx.lookups.submit_under(
                (ctx.key, self.gen),
                crate::lookup::Job::Auth(check),
                ctx.cfg,
            ),
            None => match ctx.parent {
                Some(fd) => {
                    let key = (ctx.key as u64, self.gen);
                    let msg = crate::credentials::encode_system_check(key, &check.credentials);
                    crate::sys::send_msg(fd.as_raw_fd(), msg.expose(), None)
                        .inspect_err(|e| {
                            log::warn!("{:016x} smtp cannot reach the parent: {e}", self.id())
                        })
                        .is_ok()
                }
                None => false,
            },
        };
        if !asked {
            self.session
                .on_auth(AuthResult::TempFail, &mut self.actions);
        }
    }

    /// The answer to the session's AUTH, after the penalty of a failure: the session
    /// goes on.
    pub fn on_auth(&mut self, ctx: &mut Ctx, result: AuthResult, now: Instant) {
        let line = self.lookup_line.take();
        self.session.on_auth(result, &mut self.actions);
        self.run_actions(ctx, line.as_deref());
        self.pump(ctx, now);
    }

    /// Holds the answer to the session's AUTH until [`Conn::release_auth`].
    pub fn hold_auth(&mut self, result: AuthResult) {
        self.held_auth = Some(result);
    }

    /// The penalty is over: the held answer goes to the session.
    pub fn release_auth(&mut self, ctx: &mut Ctx, now: Instant) {
        if let Some(r) = self.held_auth.take() {
            self.on_auth(ctx, r, now);
        }
    }

    /// The client's address, for the penalty of its AUTH failures.
    pub fn client_addr(&self) -> Option<IpAddr> {
        self.session.client().addr
    }
}
