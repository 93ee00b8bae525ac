//! The glue's bookkeeping of work left for later: events answered later, sessions
//! that ended with an answer pending, and timers. Pure: no I/O, the time is given.

use crate::codec;
use crate::ctx::{Ctx, Effect, Interest, TimerFn, TimerId, WatchFn};
use crate::verdict::{Decision, Edit};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::RawFd;
use std::time::Instant;

/// How many ended sessions are remembered, to drop their late answers silently.
const GONE: usize = 1024;

/// A descriptor to watch or forget, for the loop.
pub(crate) enum WatchChange {
    Watch(RawFd, Interest, WatchFn),
    Unwatch(RawFd),
}

/// Events left for later, and timers.
#[derive(Default)]
pub(crate) struct Pending {
    /// Sessions whose event waits for its answer, with the edits made so far.
    waiting: HashMap<u64, Vec<Edit>>,
    /// Sessions that ended while their answer was pending, newest last.
    gone: VecDeque<u64>,
    next_timer: u64,
    timers: BTreeMap<(Instant, TimerId), TimerFn>,
    due: HashMap<TimerId, Instant>,
    /// Watches asked for, for the loop to apply.
    pub(crate) changes: Vec<WatchChange>,
}

impl Pending {
    /// A context for a callback of `session`.
    pub(crate) fn ctx(&self, session: u64) -> Ctx {
        Ctx::new(session, self.next_timer)
    }

    /// The event of `session` is answered later; `edits` go with its answer.
    pub(crate) fn defer(&mut self, session: u64, edits: Vec<Edit>) {
        self.waiting.insert(session, edits);
    }

    /// `session` ended: an answer still pending is not wanted any more.
    pub(crate) fn ended(&mut self, session: u64) {
        if self.waiting.remove(&session).is_some() {
            if self.gone.len() == GONE {
                self.gone.pop_front();
            }
            self.gone.push_back(session);
        }
    }

    /// How many events wait for their answer.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Does what a callback handed over, at `now`; answers go to `out`.
    pub(crate) fn apply(&mut self, ctx: Ctx, now: Instant, out: &mut Vec<u8>) {
        self.next_timer = self.next_timer.max(ctx.next_timer);
        for e in ctx.effects {
            match e {
                Effect::Answer {
                    session,
                    decision,
                    edits,
                } => self.answer(session, &decision, &edits, out),
                Effect::Timer { id, after, f } => {
                    let at = now + after;
                    self.timers.insert((at, id), f);
                    self.due.insert(id, at);
                }
                Effect::Cancel(id) => {
                    if let Some(at) = self.due.remove(&id) {
                        self.timers.remove(&(at, id));
                    }
                }
                Effect::Watch { fd, interest, f } => {
                    self.changes.push(WatchChange::Watch(fd, interest, f))
                }
                Effect::Unwatch(fd) => self.changes.push(WatchChange::Unwatch(fd)),
            }
        }
    }

    fn answer(&mut self, session: u64, decision: &Decision, edits: &[Edit], out: &mut Vec<u8>) {
        let Some(mut kept) = self.waiting.remove(&session) else {
            if !self.gone.contains(&session) {
                eprintln!("filter: answer for session {session:016x}, which has no event waiting: dropped");
            }
            return;
        };
        kept.extend_from_slice(edits);
        for e in &kept {
            e.encode(session, out);
        }
        codec::encode(session, &decision.frame(), out);
    }

    /// When the first timer is due, if any.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.timers.keys().next().map(|(at, _)| *at)
    }

    /// Takes the first timer due at `now`, if any.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<TimerFn> {
        let (&(at, id), _) = self.timers.iter().next()?;
        if at > now {
            return None;
        }
        self.due.remove(&id);
        self.timers.remove(&(at, id))
    }
}
