//! The scheduler: which envelope to try when. Pure: no files, no clock (times are Unix
//! seconds passed in by the caller).
//!
//! Each envelope is tried, and on a temporary failure tried again after
//! `base * retries²` seconds (10 s for local delivery, 400 s for relaying), until it
//! expires at `ctime + ttl` and is bounced. The index lives in memory and is rebuilt
//! from the spool at start.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Retry base for local deliveries, seconds.
pub const LOCAL_BASE: u64 = 10;
/// Retry base for relayed deliveries, seconds.
pub const REMOTE_BASE: u64 = 400;

/// Where an envelope stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Waiting for its time.
    Pending,
    /// Handed to a delivery agent.
    Inflight,
    /// Held (quarantined) until scheduled by hand.
    Held,
}

/// The scheduler's view of one envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// When it is next due.
    pub due: u64,
    /// Attempts so far.
    pub retry: u32,
    /// When it was queued.
    pub ctime: u64,
    /// When it expires.
    pub expire: u64,
    /// Local delivery (else relay).
    pub local: bool,
    /// Where it stands.
    pub state: RunState,
    /// Delay warnings already sent.
    pub warnings: u32,
}

/// What to do after a temporary failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterTempfail {
    /// Try again at this time.
    RetryAt(u64),
    /// The envelope expired: bounce it.
    Expired,
}

/// What [`Scheduler::take_due_by`] does with a due envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Take it: it is in flight from now.
    Take,
    /// Leave it due, and look at the next.
    Skip,
    /// Leave it and every other due envelope.
    Stop,
}

/// The in-memory schedule.
#[derive(Debug, Default)]
pub struct Scheduler {
    entries: HashMap<u64, Scheduled>,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    inflight: usize,
}

/// The delay before attempt `retry + 1`.
pub fn backoff(local: bool, retry: u32) -> u64 {
    let base = if local { LOCAL_BASE } else { REMOTE_BASE };
    base.saturating_mul(u64::from(retry).saturating_mul(u64::from(retry)))
}

impl Scheduler {
    /// An empty schedule.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of envelopes known.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no envelope is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Envelopes handed out and not yet answered.
    pub fn inflight(&self) -> usize {
        self.inflight
    }

    /// The entry of an envelope.
    pub fn get(&self, evpid: u64) -> Option<&Scheduled> {
        self.entries.get(&evpid)
    }

    /// Every envelope id, sorted.
    pub fn ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.entries.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Adds an envelope (new, or read back from the spool at start).
    pub fn insert(&mut self, evpid: u64, entry: Scheduled) {
        if entry.state == RunState::Pending {
            self.heap.push(Reverse((entry.due, evpid)));
        }
        if let Some(old) = self.entries.insert(evpid, entry) {
            if old.state == RunState::Inflight {
                self.inflight -= 1;
            }
        }
    }

    /// A new envelope due at once.
    pub fn add_new(&mut self, evpid: u64, ctime: u64, ttl: u64, local: bool, now: u64) {
        self.insert(
            evpid,
            Scheduled {
                due: now,
                retry: 0,
                ctime,
                expire: ctime.saturating_add(ttl),
                local,
                state: RunState::Pending,
                warnings: 0,
            },
        );
    }

    /// The earliest due time of a pending envelope.
    pub fn next_due(&mut self) -> Option<u64> {
        while let Some(&Reverse((due, evpid))) = self.heap.peek() {
            match self.entries.get(&evpid) {
                Some(e) if e.state == RunState::Pending && e.due == due => return Some(due),
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Takes up to `max` envelopes due at `now` (local ones only when `local`, relayed
    /// ones only when `remote`), marking them in flight.
    pub fn take_due(&mut self, now: u64, max: usize, local: bool, remote: bool) -> Vec<u64> {
        let mut n = 0;
        self.take_due_by(now, |_, e| {
            if n == max {
                Pick::Stop
            } else if (e.local && !local) || (!e.local && !remote) {
                Pick::Skip
            } else {
                n += 1;
                Pick::Take
            }
        })
    }

    /// Takes the envelopes due at `now`, in order of due time, that `pick` takes,
    /// marking them in flight.
    pub fn take_due_by(
        &mut self,
        now: u64,
        mut pick: impl FnMut(u64, &Scheduled) -> Pick,
    ) -> Vec<u64> {
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        while let Some(&Reverse((due, evpid))) = self.heap.peek() {
            if due > now {
                break;
            }
            self.heap.pop();
            let Some(e) = self.entries.get_mut(&evpid) else {
                continue;
            };
            if e.state != RunState::Pending || e.due != due {
                continue;
            }
            match pick(evpid, e) {
                Pick::Take => {}
                Pick::Skip => {
                    skipped.push(Reverse((due, evpid)));
                    continue;
                }
                Pick::Stop => {
                    skipped.push(Reverse((due, evpid)));
                    break;
                }
            }
            e.state = RunState::Inflight;
            self.inflight += 1;
            out.push(evpid);
        }
        self.heap.extend(skipped);
        out
    }

    /// The envelope was delivered, bounced or removed: forget it.
    pub fn remove(&mut self, evpid: u64) -> Option<Scheduled> {
        let e = self.entries.remove(&evpid)?;
        if e.state == RunState::Inflight {
            self.inflight -= 1;
        }
        Some(e)
    }

    /// A temporary failure at `now`: reschedule, or report expiry.
    pub fn tempfail(&mut self, evpid: u64, now: u64) -> Option<AfterTempfail> {
        let e = self.entries.get_mut(&evpid)?;
        if e.state == RunState::Inflight {
            self.inflight -= 1;
        }
        e.retry += 1;
        let at = now.saturating_add(backoff(e.local, e.retry));
        if now >= e.expire {
            e.state = RunState::Held;
            return Some(AfterTempfail::Expired);
        }
        e.due = at.min(e.expire);
        e.state = RunState::Pending;
        self.heap.push(Reverse((e.due, evpid)));
        Some(AfterTempfail::RetryAt(e.due))
    }

    /// Makes envelopes due now (`smtpctl schedule`); returns how many.
    pub fn schedule(&mut self, ids: &[u64], now: u64) -> usize {
        let mut n = 0;
        for id in ids {
            if let Some(e) = self.entries.get_mut(id) {
                if e.state != RunState::Inflight {
                    e.state = RunState::Pending;
                    e.due = now;
                    self.heap.push(Reverse((now, *id)));
                    n += 1;
                }
            }
        }
        n
    }

    /// Holds an envelope until it is scheduled by hand.
    pub fn hold(&mut self, evpid: u64) {
        if let Some(e) = self.entries.get_mut(&evpid) {
            if e.state == RunState::Inflight {
                self.inflight -= 1;
            }
            e.state = RunState::Held;
        }
    }

    /// Envelopes pending for at least `after` seconds whose `warnings` count is below
    /// `n`: the caller sends a delay notice and calls [`Scheduler::warned`].
    pub fn needs_warning(&self, evpid: u64, now: u64, intervals: &[u64]) -> bool {
        self.entries.get(&evpid).is_some_and(|e| {
            intervals
                .get(e.warnings as usize)
                .is_some_and(|&after| now >= e.ctime.saturating_add(after))
        })
    }

    /// Records that a delay notice was sent.
    pub fn warned(&mut self, evpid: u64) {
        if let Some(e) = self.entries.get_mut(&evpid) {
            e.warnings += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_quadratically() {
        assert_eq!(backoff(true, 1), 10);
        assert_eq!(backoff(true, 3), 90);
        assert_eq!(backoff(false, 2), 1600);
    }

    #[test]
    fn due_retry_expire() {
        let mut s = Scheduler::new();
        s.add_new(1, 1000, 100, true, 1000);
        s.add_new(2, 1000, 100, false, 1000);
        assert_eq!(s.next_due(), Some(1000));
        assert_eq!(s.take_due(999, 10, true, true), Vec::<u64>::new());
        // Relaying paused: only the local one goes.
        assert_eq!(s.take_due(1000, 10, true, false), vec![1]);
        assert_eq!(s.inflight(), 1);
        assert_eq!(s.tempfail(1, 1001), Some(AfterTempfail::RetryAt(1011)));
        assert_eq!(s.inflight(), 0);
        assert_eq!(s.take_due(1005, 10, true, true), vec![2]);
        assert_eq!(s.take_due(1011, 10, true, true), vec![1]);
        assert_eq!(s.tempfail(1, 1011), Some(AfterTempfail::RetryAt(1051)));
        assert_eq!(s.take_due(1051, 10, true, true), vec![1]);
        // The next retry would be past expiry: capped at it, then expired.
        assert_eq!(s.tempfail(1, 1051), Some(AfterTempfail::RetryAt(1100)));
        assert_eq!(s.take_due(1100, 10, true, true), vec![1]);
        assert_eq!(s.tempfail(1, 1100), Some(AfterTempfail::Expired));
        assert!(s.remove(1).is_some());
        assert!(s.remove(2).is_some());
        assert_eq!(s.inflight(), 0);
        assert!(s.is_empty());
    }

    #[test]
    fn schedule_by_hand_and_warnings() {
        let mut s = Scheduler::new();
        s.add_new(7, 0, 1_000_000, false, 0);
        assert_eq!(s.take_due(0, 1, true, true), vec![7]);
        assert_eq!(s.tempfail(7, 0), Some(AfterTempfail::RetryAt(400)));
        assert_eq!(s.schedule(&[7, 8], 5), 1);
        assert_eq!(s.next_due(), Some(5));
        assert!(!s.needs_warning(7, 100, &[14400]));
        assert!(s.needs_warning(7, 14400, &[14400]));
        s.warned(7);
        assert!(!s.needs_warning(7, 99999, &[14400]));
    }
}
