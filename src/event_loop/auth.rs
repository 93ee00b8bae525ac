//! SMTP AUTH answers, on their way to the sessions: a failure's answer waits, longer
//! with each failure of the client's address (`limits::AuthFailures`), so that
//! guessing passwords is slow from one address whatever the sessions it opens.

use super::deadlines::Due;
use super::{Endpoint, Server};
use crate::mail::auth::AuthResult;
use std::time::Instant;

impl Server {
    /// The answer to the AUTH of the session at `key` (slab key, generation): a
    /// failure's waits for its penalty, the others go on at once. An answer for a
    /// session that is gone is dropped.
    pub(super) fn auth_answered(&mut self, key: (u64, u64), result: AuthResult, now: Instant) {
        let (Ok(slot), gen) = (usize::try_from(key.0), key.1) else {
            return;
        };
        let addr = match self.slab.get(slot) {
            Some(Endpoint::Smtp(c)) if c.gen == gen => c.client_addr(),
            _ => return,
        };
        if let (AuthResult::PermFail, Some(ip)) = (result, addr) {
            let delay = self.auth_failures.fail(ip, now);
            self.with_conn(slot, Some(gen), |conn, _| conn.hold_auth(result));
            self.timers.add(now + delay, Due::Auth { key: slot, gen });
            return;
        }
        let ours = self.with_conn(slot, Some(gen), |conn, ctx| conn.on_auth(ctx, result, now));
        if ours.is_some() {
            self.after_conn(slot, now);
        }
    }

    /// The penalty of the AUTH failure of the session at `key` is over.
    pub(super) fn auth_due(&mut self, key: usize, gen: u64, now: Instant) {
        let ours = self.with_conn(key, Some(gen), |conn, ctx| conn.release_auth(ctx, now));
        if ours.is_some() {
            self.after_conn(key, now);
        }
    }
}
