//! The bookkeeping behind the engine's connection limits, without sockets or clock:
//! control clients by user, new connections by address and minute, and descriptors.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Places that root and the engine's own user have beyond either control limit.
pub(super) const PRIVILEGED_RESERVE: usize = 4;

/// Why a control client is turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ControlRefusal {
    /// `max-clients` clients are connected.
    Total(usize),
    /// `max-clients-per-user` clients of this user are connected.
    PerUser(usize),
}

/// Control clients (local SMTP sessions included) by user id.
#[derive(Debug)]
pub(super) struct ControlSlots {
    max_total: usize,
    max_per_user: usize,
    total: usize,
    by_uid: HashMap<u32, usize>,
}

impl ControlSlots {
    /// New limits (a reload); the clients connected stay.
    pub(super) fn set_limits(&mut self, max_total: usize, max_per_user: usize) {
        self.max_total = max_total;
        self.max_per_user = max_per_user;
    }

    pub(super) fn new(max_total: usize, max_per_user: usize) -> Self {
        ControlSlots {
            max_total,
            max_per_user,
            total: 0,
            by_uid: HashMap::new(),
        }
    }

    /// Takes a place for a client of `uid`, if the limits allow it; a `privileged` user
    /// may go [`PRIVILEGED_RESERVE`] past both.
    pub(super) fn admit(&mut self, uid: u32, privileged: bool) -> Result<(), ControlRefusal> {
        let extra = if privileged { PRIVILEGED_RESERVE } else { 0 };
        if self.total >= self.max_total + extra {
            return Err(ControlRefusal::Total(self.max_total));
        }
        let n = self.by_uid.entry(uid).or_insert(0);
        if *n >= self.max_per_user + extra {
            return Err(ControlRefusal::PerUser(self.max_per_user));
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// Gives back the place of a client of `uid`.
    pub(super) fn release(&mut self, uid: u32) {
        if let Some(n) = self.by_uid.get_mut(&uid) {
            *n -= 1;
            self.total -= 1;
            if *n == 0 {
                self.by_uid.remove(&uid);
            }
        }
    }

    /// Clients connected.
    #[cfg(test)]
    pub(super) fn total(&self) -> usize {
        self.total
    }
}

/// Addresses [`RateTable`] keeps at most.
pub(super) const RATE_TABLE_MAX: usize = 16384;
/// The period of [`RateTable`]'s counts (also how often it is pruned while it holds
/// addresses).
pub(super) const RATE_WINDOW: Duration = Duration::from_secs(60);

/// New connections by address in the current minute of each address.
#[derive(Debug)]
pub(super) struct RateTable {
    /// Connections allowed in a minute; 0 is no limit.
    limit: usize,
    capacity: usize,
    /// Start of each address's minute and its connections so far.
    counts: HashMap<IpAddr, (Instant, usize)>,
    /// No pruning before this.
    next_prune: Option<Instant>,
}

impl RateTable {
    pub(super) fn new(limit: usize, capacity: usize) -> Self {
        RateTable {
            limit,
            capacity,
            counts: HashMap::new(),
            next_prune: None,
        }
    }

    /// A new limit (a reload); the counts so far stay.
    pub(super) fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
    }

    /// Counts a new connection from `ip`; false when it is over the limit. An address
    /// that finds the table full of addresses still in their minute is not counted.
    pub(super) fn hit(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.limit == 0 {
            return true;
        }
        if !self.counts.contains_key(&ip) && self.counts.len() >= self.capacity {
            self.prune(now);
            if self.counts.len() >= self.capacity {
                return true;
            }
        }
        let (start, n) = self.counts.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(*start) >= RATE_WINDOW {
            (*start, *n) = (now, 0);
        }
        *n += 1;
        *n <= self.limit
    }

    /// Drops the addresses whose minute is over; does the work at most once a second.
    pub(super) fn prune(&mut self, now: Instant) {
        if self.counts.is_empty() || self.next_prune.is_some_and(|t| now < t) {
            return;
        }
        self.next_prune = Some(now + Duration::from_secs(1));
        self.counts
            .retain(|_, (start, _)| now.saturating_duration_since(*start) < RATE_WINDOW);
    }

    /// Whether no address is remembered (nothing to prune).
    pub(super) fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Addresses remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.counts.len()
    }
}

/// Addresses [`AuthFailures`] keeps at most.
pub(super) const AUTH_TABLE_MAX: usize = 16384;
/// One failure of an address is forgiven per this much time without a new one.
pub(super) const AUTH_DECAY: Duration = Duration::from_secs(60);
/// The delay of an address's first failure; it doubles with each failure it still
/// counts, up to [`AUTH_DELAY_MAX`].
pub(super) const AUTH_DELAY_MIN: Duration = Duration::from_millis(500);
/// The longest delay of a failure's answer.
pub(super) const AUTH_DELAY_MAX: Duration = Duration::from_secs(8);

/// Failed SMTP AUTH by client address, across sessions: how long the answer to the
/// next failure waits. The count decays by one per [`AUTH_DECAY`] without a failure.
/// When the table is full, addresses whose count decayed to nothing go; if none did,
/// the address whose last failure is the oldest is forgotten.
#[derive(Debug)]
pub(super) struct AuthFailures {
    capacity: usize,
    /// Failures still counted, and when the count was last brought up to date.
    counts: HashMap<IpAddr, (u32, Instant)>,
}

impl AuthFailures {
    pub(super) fn new(capacity: usize) -> Self {
        AuthFailures {
            capacity: capacity.max(1),
            counts: HashMap::new(),
        }
    }

    /// The count of `entry` at `now`, after its decay.
    fn decayed((n, at): (u32, Instant), now: Instant) -> u32 {
        let periods = now.saturating_duration_since(at).as_secs() / AUTH_DECAY.as_secs();
        n.saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX))
    }

    /// Counts a failure from `ip`; returns how long its answer waits.
    pub(super) fn fail(&mut self, ip: IpAddr, now: Instant) -> Duration {
        if !self.counts.contains_key(&ip) && self.counts.len() >= self.capacity {
            self.counts.retain(|_, e| Self::decayed(*e, now) > 0);
            if self.counts.len() >= self.capacity {
                let oldest = self.counts.iter().min_by_key(|(_, e)| e.1).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.counts.remove(&k);
                }
            }
        }
        let e = self.counts.entry(ip).or_insert((0, now));
        let n = Self::decayed(*e, now).saturating_add(1);
        *e = (n, now);
        auth_delay(n)
    }

    /// Addresses remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.counts.len()
    }
}

/// The delay of the answer to an address's `n`th counted failure.
pub(super) fn auth_delay(n: u32) -> Duration {
    let doublings = n.saturating_sub(1).min(16);
    (AUTH_DELAY_MIN * (1u32 << doublings)).min(AUTH_DELAY_MAX)
}

/// Descriptors kept free for what is opened for a moment: a message handed to the
/// parent for delivery, a message or envelope read for `smtpctl`, a refused connection.
pub(super) const FD_RESERVE: usize = 32;
/// The part of [`FD_RESERVE`] only root's and the engine's own control clients may use.
pub(super) const FD_RESERVE_PRIVILEGED: usize = 8;

/// The descriptor limit and what the engine holds, counted as the engine opens and
/// closes things; what it held at start is measured once.
#[derive(Debug, Clone, Copy)]
pub(super) struct FdBudget {
    /// RLIMIT_NOFILE, read at start.
    pub(super) limit: usize,
    /// Descriptors open at start that no endpoint accounts for.
    pub(super) base: usize,
}

impl FdBudget {
    /// Whether `need` more descriptors fit while `held` are held by endpoints and
    /// `reserve` stay free.
    pub(super) fn room(&self, held: usize, need: usize, reserve: usize) -> bool {
        self.base + held + need + reserve <= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failures_grow_the_delay_and_decay() {
        let t0 = Instant::now();
        let a = IpAddr::from([192, 0, 2, 1]);
        let mut f = AuthFailures::new(2);
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(f.fail(a, t0)), 500);
        assert_eq!(ms(f.fail(a, t0)), 1000);
        assert_eq!(ms(f.fail(a, t0)), 2000);
        for _ in 0..10 {
            f.fail(a, t0);
        }
        assert_eq!(f.fail(a, t0), AUTH_DELAY_MAX);
        // Another address starts from the bottom.
        let b = IpAddr::from([192, 0, 2, 2]);
        assert_eq!(ms(f.fail(b, t0)), 500);
        // One failure forgiven per minute: b's is gone after a minute.
        assert_eq!(ms(f.fail(b, t0 + AUTH_DECAY)), 500);
        assert_eq!(ms(f.fail(b, t0 + AUTH_DECAY + AUTH_DECAY / 2)), 1000);
        // A full table makes room: b's counts decayed away, a's did not.
        let c = IpAddr::from([192, 0, 2, 3]);
        let later = t0 + AUTH_DECAY * 5;
        assert_eq!(ms(f.fail(c, later)), 500);
        assert_eq!(f.len(), 2);
        let second = Duration::from_secs(1);
        assert_eq!(f.fail(a, later + second), AUTH_DELAY_MAX);
        // Nothing decayed: the oldest goes (c, whose last failure is before a's).
        let d = IpAddr::from([192, 0, 2, 4]);
        assert_eq!(ms(f.fail(d, later + second * 2)), 500);
        assert_eq!(f.len(), 2);
        assert_eq!(f.fail(a, later + second * 3), AUTH_DELAY_MAX);
        assert_eq!(ms(f.fail(c, later + second * 4)), 500);
    }

    #[test]
    fn control_slots_cap_each_user_and_all() {
        let mut s = ControlSlots::new(5, 2);
        assert_eq!(s.admit(1000, false), Ok(()));
        assert_eq!(s.admit(1000, false), Ok(()));
        assert_eq!(s.admit(1000, false), Err(ControlRefusal::PerUser(2)));
        assert_eq!(s.admit(1001, false), Ok(()));
        assert_eq!(s.admit(1001, false), Ok(()));
        assert_eq!(s.admit(1002, false), Ok(()));
        assert_eq!(s.total(), 5);
        assert_eq!(s.admit(1003, false), Err(ControlRefusal::Total(5)));
        // Root has its reserve past both limits, and no more.
        for _ in 0..PRIVILEGED_RESERVE {
            assert_eq!(s.admit(0, true), Ok(()));
        }
        assert_eq!(s.admit(0, true), Err(ControlRefusal::Total(5)));
        s.release(1000);
        assert_eq!(s.admit(1003, false), Err(ControlRefusal::Total(5)));
        for _ in 0..PRIVILEGED_RESERVE {
            s.release(0);
        }
        assert_eq!(s.admit(1003, false), Ok(()));
        // A user without a place gives nothing back.
        s.release(4242);
        assert_eq!(s.total(), 5);
    }

    #[test]
    fn privileged_user_reserve_applies_per_user_too() {
        let mut s = ControlSlots::new(100, 1);
        assert_eq!(s.admit(0, true), Ok(()));
        for _ in 0..PRIVILEGED_RESERVE {
            assert_eq!(s.admit(0, true), Ok(()));
        }
        assert_eq!(s.admit(0, true), Err(ControlRefusal::PerUser(1)));
    }

    #[test]
    fn rate_counts_each_address_for_a_minute() {
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"));
        let b: IpAddr = "192.0.2.2".parse().unwrap_or_else(|e| panic!("{e}"));
        let mut r = RateTable::new(3, 100);
        assert!((0..3).all(|_| r.hit(a, t0)));
        assert!(!r.hit(a, t0 + Duration::from_secs(30)));
        assert!(r.hit(b, t0 + Duration::from_secs(30)));
        // Refused connections count: still refused late in the minute.
        assert!(!r.hit(a, t0 + Duration::from_secs(59)));
        // The first connection after the minute starts the next one.
        assert!(r.hit(a, t0 + Duration::from_secs(60)));
        assert!(r.hit(a, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn no_rate_limit_keeps_nothing() {
        let mut r = RateTable::new(0, 10);
        let a: IpAddr = "192.0.2.1".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!((0..1000).all(|_| r.hit(a, Instant::now())));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn full_rate_table_prunes_then_lets_new_addresses_in_uncounted() {
        let t0 = Instant::now();
        let ip = |i: u8| IpAddr::from([192, 0, 2, i]);
        let mut r = RateTable::new(1, 3);
        for i in 1..=3 {
            assert!(r.hit(ip(i), t0));
        }
        // Full of addresses in their minute: a fourth is let in, not remembered.
        assert!(r.hit(ip(4), t0 + Duration::from_secs(1)));
        assert!(r.hit(ip(4), t0 + Duration::from_secs(2)));
        assert_eq!(r.len(), 3);
        // Known addresses are still counted.
        assert!(!r.hit(ip(1), t0 + Duration::from_secs(2)));
        // Once their minute is over, the old entries make room.
        let later = t0 + Duration::from_secs(61);
        assert!(r.hit(ip(4), later));
        assert!(!r.hit(ip(4), later));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn prune_drops_expired_entries_at_most_once_a_second() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut r = RateTable::new(5, 10);
        r.hit(IpAddr::from([192, 0, 2, 1]), t0);
        r.hit(IpAddr::from([192, 0, 2, 2]), ms(30_000));
        r.prune(ms(59_500));
        assert_eq!(r.len(), 2);
        // The first entry's minute is over, but the last pruning was less than a
        // second ago.
        r.prune(ms(60_200));
        assert_eq!(r.len(), 2);
        r.prune(ms(61_000));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn budget_keeps_the_reserve() {
        let b = FdBudget {
            limit: 100,
            base: 20,
        };
        assert!(b.room(40, 8, FD_RESERVE));
        assert!(!b.room(41, 8, FD_RESERVE));
        assert!(b.room(65, 2, FD_RESERVE_PRIVILEGED));
    }
}
