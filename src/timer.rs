//! One deadline structure for the engine: a min-heap of `(when, what)`.
//!
//! The loop sleeps until the earliest deadline and, when it wakes, takes the ones that
//! are due. Entries are never removed early: what a key stands for (a session of some
//! generation, a filter pipe, the queue) is checked when its deadline comes, and a
//! deadline that moved later is simply pushed again then. So an endpoint keeps at most
//! one entry per reason, and the heap never needs a search.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Deadlines keyed by `K`.
#[derive(Debug)]
pub struct Timers<K: Ord> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
}

impl<K: Ord> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
        }
    }
}

impl<K: Ord + Copy> Timers<K> {
    /// No deadline yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a deadline for `key` at `when`.
    pub fn add(&mut self, when: Instant, key: K) {
        self.heap.push(Reverse((when, key)));
    }

    /// The earliest deadline, if any.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// How long the loop may sleep from `now`: until the earliest deadline, at most
    /// `cap`, and not at all when one is already due.
    pub fn sleep(&self, now: Instant, cap: Duration) -> Duration {
        self.next()
            .map_or(cap, |t| t.saturating_duration_since(now).min(cap))
    }

    /// Takes the key of a deadline that is due at `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<K> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => self.heap.pop().map(|Reverse((_, k))| k),
            _ => None,
        }
    }

    /// Deadlines held (due or not).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no deadline is held.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_in_order_and_only_when_due() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Timers::new();
        t.add(t0 + 3 * s, 'c');
        t.add(t0 + s, 'a');
        t.add(t0 + 2 * s, 'b');
        assert_eq!(t.next(), Some(t0 + s));
        assert_eq!(t.sleep(t0, 10 * s), s);
        assert_eq!(t.sleep(t0, s / 2), s / 2);
        assert_eq!(t.pop_due(t0), None);
        assert_eq!(t.pop_due(t0 + 2 * s), Some('a'));
        assert_eq!(t.pop_due(t0 + 2 * s), Some('b'));
        assert_eq!(t.pop_due(t0 + 2 * s), None);
        assert_eq!(t.sleep(t0 + 5 * s, s), Duration::ZERO);
        assert_eq!((t.len(), t.is_empty()), (1, false));
        assert_eq!(t.pop_due(t0 + 5 * s), Some('c'));
        assert!(t.is_empty());
        assert_eq!(Timers::<u8>::new().sleep(t0, s), s);
    }
}
