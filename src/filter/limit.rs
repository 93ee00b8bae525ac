//! Allowances for what a filter may send unasked: a count of events in windows of time.
//!
//! A window opens at the first event after the previous one closed and lasts a fixed
//! time; the events of a window are counted against its allowance.

use std::time::{Duration, Instant};

/// At most `max` events per window of `len`.
#[derive(Debug, Clone)]
pub struct Allowance {
    max: u32,
    len: Duration,
    start: Option<Instant>,
    n: u32,
}

impl Allowance {
    /// An allowance of `max` events in each window of `len`.
    pub const fn new(max: u32, len: Duration) -> Allowance {
        Allowance {
            max,
            len,
            start: None,
            n: 0,
        }
    }

    /// Counts an event at `now`: true while the window's count stays within the
    /// allowance.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.len)
        {
            self.start = Some(now);
            self.n = 0;
        }
        self.n = self.n.saturating_add(1);
        self.n <= self.max
    }

    /// Events counted in the current window.
    pub fn count(&self) -> u32 {
        self.n
    }

    /// The length of a window.
    pub fn window(&self) -> Duration {
        self.len
    }

    /// Forgets the events counted so far.
    pub fn reset(&mut self) {
        self.start = None;
        self.n = 0;
    }
}

/// Log lines of one filter: at most `max` per window; the others are counted and the
/// count is logged once they can be again.
#[derive(Debug, Clone)]
pub struct LogLimit {
    allowance: Allowance,
    dropped: u64,
}

impl LogLimit {
    /// At most `max` lines per window of `len`.
    pub const fn new(max: u32, len: Duration) -> LogLimit {
        LogLimit {
            allowance: Allowance::new(max, len),
            dropped: 0,
        }
    }

    /// Whether a line at `now` may be logged. When it may and lines were dropped before
    /// it, their number comes with it (and is reset), to be logged first.
    pub fn admit(&mut self, now: Instant) -> (bool, u64) {
        if self.allowance.admit(now) {
            (true, std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            (false, 0)
        }
    }

    /// Lines dropped and not yet reported (reset): for a last report when the filter
    /// goes away.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }
}

/// Frames queued at most for a filter that has not registered yet.
pub const EARLY_MAX_FRAMES: usize = 4096;
/// Bytes queued at most for a filter that has not registered yet.
pub const EARLY_MAX_BYTES: usize = 1 << 20;

/// Reports for a filter that has not registered yet (a session's TLS handshake can end
/// before it did), kept in order within bounds, and handed over once it says what it
/// observes.
#[derive(Debug, Default)]
pub struct Early {
    frames: Vec<(u32, Vec<u8>)>,
    bytes: usize,
    dropped: u64,
}

impl Early {
    /// Keeps an encoded frame of event `ev`; beyond the bounds it is dropped and
    /// counted.
    pub fn push(&mut self, ev: u32, frame: Vec<u8>) {
        if self.frames.len() >= EARLY_MAX_FRAMES || self.bytes + frame.len() > EARLY_MAX_BYTES {
            self.dropped += 1;
            return;
        }
        self.bytes += frame.len();
        self.frames.push((ev, frame));
    }

    /// The frames of the events in `wanted`, in order, appended to `out`; returns how
    /// many were dropped for want of room. Empties the queue.
    pub fn take(&mut self, wanted: u32, out: &mut Vec<u8>) -> u64 {
        for (ev, f) in self.frames.drain(..) {
            if ev & wanted != 0 {
                out.extend_from_slice(&f);
            }
        }
        self.bytes = 0;
        std::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowance_per_window() {
        let t0 = Instant::now();
        let mut a = Allowance::new(3, Duration::from_secs(10));
        assert!(a.admit(t0));
        assert!(a.admit(t0 + Duration::from_secs(1)));
        assert!(a.admit(t0 + Duration::from_secs(9)));
        assert!(!a.admit(t0 + Duration::from_secs(9)));
        assert_eq!(a.count(), 4);
        // A new window opens with the first event 10 s after the last one opened.
        assert!(a.admit(t0 + Duration::from_secs(10)));
        assert_eq!(a.count(), 1);
        a.reset();
        assert_eq!(a.count(), 0);
        for _ in 0..3 {
            assert!(a.admit(t0 + Duration::from_secs(30)));
        }
        assert!(!a.admit(t0 + Duration::from_secs(39)));
    }

    #[test]
    fn allowance_survives_a_clock_that_does_not_move() {
        let t0 = Instant::now();
        let mut a = Allowance::new(2, Duration::from_secs(1));
        let over = (0..1000).filter(|_| !a.admit(t0)).count();
        assert_eq!(over, 998);
    }

    #[test]
    fn log_limit_reports_what_it_dropped() {
        let t0 = Instant::now();
        let mut l = LogLimit::new(2, Duration::from_secs(10));
        assert_eq!(l.admit(t0), (true, 0));
        assert_eq!(l.admit(t0), (true, 0));
        assert_eq!(l.admit(t0), (false, 0));
        assert_eq!(l.admit(t0 + Duration::from_secs(5)), (false, 0));
        // The next window: the line goes out, after the count of the dropped ones.
        assert_eq!(l.admit(t0 + Duration::from_secs(10)), (true, 2));
        assert_eq!(l.admit(t0 + Duration::from_secs(11)), (true, 0));
        assert_eq!(l.admit(t0 + Duration::from_secs(11)), (false, 0));
        assert_eq!(l.take_dropped(), 1);
        assert_eq!(l.take_dropped(), 0);
    }

    #[test]
    fn early_reports_are_kept_in_order_within_bounds() {
        let mut e = Early::default();
        e.push(1, b"a".to_vec());
        e.push(2, b"b".to_vec());
        e.push(1, b"c".to_vec());
        let mut out = Vec::new();
        assert_eq!(e.take(1, &mut out), 0);
        assert_eq!(out, b"ac");
        for _ in 0..EARLY_MAX_FRAMES + 3 {
            e.push(1, vec![0]);
        }
        out.clear();
        assert_eq!(e.take(1, &mut out), 3);
        assert_eq!(out.len(), EARLY_MAX_FRAMES);
        e.push(1, vec![0; EARLY_MAX_BYTES + 1]);
        assert_eq!(e.take(1, &mut out), 1);
    }
}
