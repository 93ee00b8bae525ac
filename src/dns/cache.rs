//! Answers kept for their TTL, keyed by (name in lowercase, type).
//!
//! Positive answers and NXDOMAIN/NODATA are kept (negative ones for the negative TTL of
//! the answer, RFC 2308); temporary failures never are. Every TTL is capped at a day.
//! The cache is bounded in entries and in bytes: past either bound the entry nearest its
//! expiry goes first (expired ones are always nearest).

use super::{Answer, DnsError, DnsResult, Qtype, Rdata};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// The longest an answer is kept.
pub const MAX_TTL: u32 = 86_400;

type Key = (String, Qtype);

#[derive(Debug)]
struct Entry {
    result: DnsResult,
    expires: Instant,
    seq: u64,
    bytes: usize,
}

/// The cache.
#[derive(Debug)]
pub struct Cache {
    map: HashMap<Key, Entry>,
    /// Keys by expiry (and insertion, to tell equal expiries apart).
    by_expiry: BTreeMap<(Instant, u64), Key>,
    seq: u64,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

/// What an entry costs, roughly: its key, records and bookkeeping.
fn cost(name: &str, r: &DnsResult) -> usize {
    let records = match r {
        Ok(a) => {
            a.records
                .iter()
                .map(|d| match d {
                    Rdata::Addr(_) => 24,
                    Rdata::Mx(_, h) | Rdata::Name(h) => 32 + h.len(),
                    Rdata::Txt(t) => 32 + t.len(),
                    Rdata::Tlsa { data, .. } => 40 + data.len(),
                })
                .sum::<usize>()
                + a.name.len()
        }
        Err(_) => 0,
    };
    128 + 2 * name.len() + records
}

impl Cache {
    /// An empty cache of at most `max_entries` entries and about `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> Cache {
        Cache {
            map: HashMap::new(),
            by_expiry: BTreeMap::new(),
            seq: 0,
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes held, as counted against the bound.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Forgets everything (the nameservers changed).
    pub fn clear(&mut self) {
        self.map.clear();
        self.by_expiry.clear();
        self.bytes = 0;
    }

    fn remove(&mut self, key: &Key) {
        if let Some(e) = self.map.remove(key) {
            self.by_expiry.remove(&(e.expires, e.seq));
            self.bytes -= e.bytes;
        }
    }

    /// The answer to (`name`, `qtype`) (`name` normalized) if it is still valid at
    /// `now`, its TTL lowered to what is left.
    pub fn get(&mut self, name: &str, qtype: Qtype, now: Instant) -> Option<DnsResult> {
        let key = (name.to_string(), qtype);
        let e = self.map.get(&key)?;
        if e.expires <= now {
            self.remove(&key);
            return None;
        }
        let left = u32::try_from(e.expires.duration_since(now).as_secs()).unwrap_or(MAX_TTL);
        Some(match &e.result {
            Ok(a) => Ok(Answer {
                ttl: left,
                ..a.clone()
            }),
            Err(err) => Err(err.clone()),
        })
    }

    /// Keeps `result` for `ttl` seconds (capped), unless it is a temporary or permanent
    /// failure or the TTL is zero.
    pub fn put(&mut self, name: &str, qtype: Qtype, result: &DnsResult, ttl: u32, now: Instant) {
        if ttl == 0 || matches!(result, Err(DnsError::TempFail(_) | DnsError::PermFail(_))) {
            return;
        }
        let key = (name.to_string(), qtype);
        self.remove(&key);
        let bytes = cost(name, result);
        if bytes > self.max_bytes || self.max_entries == 0 {
            return;
        }
        while self.map.len() >= self.max_entries || self.bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = self.by_expiry.pop_first() else {
                break;
            };
            if let Some(e) = self.map.remove(&oldest) {
                self.bytes -= e.bytes;
            }
        }
        let expires = now + Duration::from_secs(u64::from(ttl.min(MAX_TTL)));
        self.seq += 1;
        self.by_expiry.insert((expires, self.seq), key.clone());
        self.bytes += bytes;
        self.map.insert(
            key,
            Entry {
                result: result.clone(),
                expires,
                seq: self.seq,
                bytes,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(ttl: u32) -> DnsResult {
        Ok(Answer {
            name: "h.example".into(),
            records: vec![Rdata::Addr([192, 0, 2, 1].into())],
            secure: false,
            ttl,
        })
    }

    #[test]
    fn ttls_and_negative_answers() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Cache::new(100, 1 << 20);
        c.put("h.example", Qtype::A, &answer(60), 60, t0);
        assert!(c.get("h.example", Qtype::Aaaa, t0).is_none());
        assert!(matches!(c.get("h.example", Qtype::A, t0 + 10 * s), Some(Ok(a)) if a.ttl == 50));
        assert!(c.get("h.example", Qtype::A, t0 + 60 * s).is_none());
        assert!(c.is_empty(), "an expired entry goes when seen");
        let nx = Err(DnsError::NxDomain { secure: false });
        c.put("no.example", Qtype::A, &nx, 30, t0);
        assert_eq!(c.get("no.example", Qtype::A, t0 + s), Some(nx));
        for keep_not in [
            Err(DnsError::TempFail("x".into())),
            Err(DnsError::PermFail("y".into())),
        ] {
            c.put("f.example", Qtype::A, &keep_not, 30, t0);
            assert!(c.get("f.example", Qtype::A, t0).is_none());
        }
        c.put("zero.example", Qtype::A, &answer(0), 0, t0);
        assert!(c.get("zero.example", Qtype::A, t0).is_none());
        // A week is cut to a day.
        c.put("long.example", Qtype::A, &answer(604_800), 604_800, t0);
        assert!(c.get("long.example", Qtype::A, t0 + 86_399 * s).is_some());
        assert!(c.get("long.example", Qtype::A, t0 + 86_400 * s).is_none());
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = Cache::new(3, 1 << 20);
        for (i, ttl) in [(0, 50u32), (1, 10), (2, 30), (3, 40)] {
            c.put(&format!("h{i}.example"), Qtype::A, &answer(ttl), ttl, t0);
        }
        assert_eq!(c.len(), 3);
        // h1 expired nearest: it went.
        assert!(c.get("h1.example", Qtype::A, t0 + s).is_none());
        assert!(c.get("h0.example", Qtype::A, t0 + s).is_some());
        // Replacing an entry does not count twice.
        c.put("h0.example", Qtype::A, &answer(5), 5, t0);
        assert_eq!(c.len(), 3);
        let one = c.bytes() / 3;
        let mut c = Cache::new(1000, one * 2 + one / 2);
        for i in 0..10 {
            c.put(&format!("h{i}.example"), Qtype::A, &answer(60), 60 + i, t0);
            assert!(c.bytes() <= one * 2 + one / 2);
        }
        assert_eq!(c.len(), 2);
        assert!(c.get("h9.example", Qtype::A, t0).is_some());
        c.clear();
        assert_eq!((c.len(), c.bytes()), (0, 0));
    }
}
