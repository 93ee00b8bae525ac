//! Answers of the lookup threads (`crate::lookup`), routed to the sessions (and control
//! clients) that asked.

use super::Server;
use crate::lookup::Answer;
use std::time::Instant;

impl Server {
    /// Hands finished lookups to their sessions; an answer for a session that is gone
    /// is dropped (a rewritten message with it).
    pub(super) fn on_lookups(&mut self, now: Instant) {
        for done in self.lookups.take_done() {
            let (key, gen) = done.key;
            match done.answer {
                Answer::Session(a) => {
                    let ours =
                        self.with_conn(key, Some(gen), |conn, ctx| conn.on_lookup(ctx, a, now));
                    if ours.is_some() {
                        // The answer may let a filter query or pipelined commands on.
                        self.after_conn(key, now);
                    }
                }
                Answer::Auth(r) => self.auth_answered((key as u64, gen), r, now),
                Answer::Reloaded(r) => self.table_updated((key, gen), r, now),
                Answer::Secret(r) => self.mta_secret((key, gen), r, now),
                Answer::Edited { msgid, result } => {
                    let taken = self.with_conn(key, Some(gen), |conn, ctx| {
                        conn.on_edited(ctx, msgid, result, now)
                    });
                    if taken != Some(true) {
                        log::info!("queue: message {msgid:08x} dropped: its session is gone");
                        self.spool.discard(msgid);
                    }
                    self.after_conn(key, now);
                }
            }
        }
    }
}
