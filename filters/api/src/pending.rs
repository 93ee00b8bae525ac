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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Decoder, Frame};
    use std::time::Duration;

    fn frames(out: &[u8]) -> Vec<(u64, String)> {
        let mut d = Decoder::new();
        d.feed(out);
        let mut v = Vec::new();
        while let Ok(Some((s, f))) = d.next_frame() {
            v.push((s, format!("{f:?}")));
        }
        v
    }

    #[test]
    fn answers_go_to_waiting_sessions_only() {
        let now = Instant::now();
        let mut p = Pending::default();
        let mut out = Vec::new();
        p.defer(1, vec![Edit::AddHeader("X-A".into(), "1".into())]);
        p.defer(2, Vec::new());
        p.defer(3, Vec::new());
        p.ended(3);
        assert_eq!(p.waiting(), 2);
        let mut ctx = p.ctx(0);
        ctx.answer(2, Decision::Proceed);
        ctx.answer_with_edits(
            1,
            Decision::Proceed,
            vec![Edit::AddHeader("X-B".into(), "2".into())],
        );
        ctx.answer(1, Decision::Junk); // answered already: dropped
        ctx.answer(3, Decision::Proceed); // ended: dropped silently
        p.apply(ctx, now, &mut out);
        let got = frames(&out);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], (2, format!("{:?}", Frame::Proceed)));
        assert_eq!((got[1].0, got[2].0, got[3].0), (1, 1, 1));
        let header = |name: &'static [u8], value: &'static [u8]| {
            format!("{:?}", Frame::AddHeader { name, value })
        };
        assert_eq!(got[1].1, header(b"X-A", b"1"));
        assert_eq!(got[2].1, header(b"X-B", b"2"));
        assert_eq!(p.waiting(), 0);
    }

    #[test]
    fn timers_run_in_order_and_cancelled_ones_never() {
        let now = Instant::now();
        let mut p = Pending::default();
        let mut ctx = p.ctx(0);
        let late = ctx.timer(Duration::from_millis(20), |_| {});
        let gone = ctx.timer(Duration::from_millis(5), |_| panic!("cancelled"));
        ctx.timer(Duration::from_millis(10), |_| {});
        ctx.cancel_timer(gone);
        p.apply(ctx, now, &mut Vec::new());
        assert_eq!(p.next_due(), Some(now + Duration::from_millis(10)));
        assert!(p.take_due(now + Duration::from_millis(9)).is_none());
        assert!(p.take_due(now + Duration::from_millis(10)).is_some());
        assert_eq!(p.next_due(), Some(now + Duration::from_millis(20)));
        // Ids keep growing across callbacks.
        let mut ctx = p.ctx(0);
        assert!(ctx.timer(Duration::ZERO, |_| {}) > late);
    }
}
