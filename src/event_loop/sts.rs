//! MTA-STS (RFC 8461) from the loop's side: what each recipient domain's policy is.
//!
//! An outgoing session to a domain's exchangers asks the `_mta-sts` TXT record beside
//! the MX lookup (`mta.rs`) and hands its id here ([`Server::sts_lookup`]). The state
//! of each domain is kept in memory ([`Policies`], bounded): the policy cached in the
//! spool (`QUEUE/sts/DOMAIN`, read and written by the spool I/O thread, read the first
//! time the domain is used), the sessions waiting, the fetch in progress. `sts::refresh`
//! decides: no policy, the cached one, or a fetch. A fetch is an endpoint of the slab
//! (`mta/fetch.rs`): AAAA and A of `mta-sts.DOMAIN` through the resolver, TLS to port
//! 443 checked by PKIX for that name with the roots of the relay action (its `ca`, else
//! the system's), the GET, a deadline of one minute (§3.3). The sessions of a domain
//! share one fetch. A failed fetch keeps a cached policy that has not expired, else
//! there is none (§5.1), and the same id is not fetched again for a while.

use super::deadlines::Due;
use super::dns::DnsWaiter;
use super::{unix_now, Endpoint, Server, FIRST_SLOT};
use crate::dns::{DnsResult, Qtype, Rdata};
use crate::mta::fetch::{PolicyFetch, Pumped};
use crate::mta::plan::{sts_check, StsCheck};
use crate::mta::sts::{self, CacheEntry, Policy, Refresh};
use crate::queue::io::IoJob;
use crate::stream::Stream;
use mio::{Interest, Token};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Domains whose state is kept in memory at most.
const MAX_DOMAINS: usize = 1000;
/// How long a fetch may take (RFC 8461 §3.3 suggests one minute).
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// After a failed fetch, how long the same policy id is not fetched again (seconds).
const FETCH_RETRY: u64 = 300;

/// MTA-STS for one outgoing session to a domain's exchangers.
#[derive(Debug)]
pub(super) struct StsWait {
    /// The recipient domain, lowercase, without a final dot.
    pub(super) domain: String,
    /// The policy once known (`Some(None)`: the domain has none).
    pub(super) policy: Option<Option<Policy>>,
}

impl StsWait {
    /// Waits for the policy of `domain`.
    pub(super) fn new(domain: &str) -> StsWait {
        StsWait {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            policy: None,
        }
    }

    /// What the policy asks of an attempt to the exchanger `host`.
    pub(super) fn check(&self, host: &str) -> StsCheck {
        sts_check(self.policy.as_ref().and_then(Option::as_ref), host)
    }
}

/// The id the `_mta-sts` TXT answer gives, if it announces a policy; a failed lookup
/// gives none (a cached policy that has not expired still serves, §5.1).
pub(super) fn txt_answer(domain: &str, result: &DnsResult) -> Option<String> {
    match result {
        Ok(a) => {
            let records: Vec<Vec<u8>> = a
                .records
                .iter()
                .filter_map(|r| match r {
                    Rdata::Txt(t) => Some(t.clone()),
                    _ => None,
                })
                .collect();
            sts::txt_id(&records)
        }
        Err(e) => {
            log::debug!("mta-sts domain={domain} TXT lookup: {e}");
            None
        }
    }
}

/// The policy state of the domains outgoing sessions went to.
#[derive(Debug, Default)]
pub(super) struct Policies {
    domains: HashMap<String, Domain>,
    /// Lookups so far, to find the domain used least recently.
    tick: u64,
}

/// What the spool's cache gave for a domain.
#[derive(Debug)]
enum Cache {
    /// Not read yet.
    Unread,
    /// Being read by the spool I/O thread.
    Reading,
    /// Read: the entry, or none.
    Read(Option<CacheEntry>),
}

/// A session waiting for a domain's policy.
#[derive(Debug)]
struct Waiter {
    session: u64,
    /// The id its TXT lookup gave.
    id: Option<String>,
    /// Its relay action, whose TLS configuration a fetch uses.
    action: String,
}

#[derive(Debug)]
struct Domain {
    cache: Cache,
    waiting: Vec<Waiter>,
    /// The fetch in progress: its slab key.
    fetch: Option<usize>,
    /// The id whose fetch failed last, and when (Unix seconds).
    failed: Option<(String, u64)>,
    /// The tick of its last lookup.
    used: u64,
}

impl Policies {
    /// The state of `domain`, made when new; the least recently used idle domain goes
    /// when there are too many.
    fn domain(&mut self, domain: &str) -> &mut Domain {
        self.tick += 1;
        if !self.domains.contains_key(domain) && self.domains.len() >= MAX_DOMAINS {
            let idle = self
                .domains
                .iter()
                .filter(|(_, d)| d.waiting.is_empty() && d.fetch.is_none())
                .filter(|(_, d)| matches!(d.cache, Cache::Read(_)))
                .min_by_key(|(_, d)| d.used)
                .map(|(k, _)| k.clone());
            if let Some(k) = idle {
                self.domains.remove(&k);
            }
        }
        let d = self
            .domains
            .entry(domain.to_string())
            .or_insert_with(|| Domain {
                cache: Cache::Unread,
                waiting: Vec::new(),
                fetch: None,
                failed: None,
                used: 0,
            });
        d.used = self.tick;
        d
    }
}

impl Domain {
    /// The cached policy while it has not expired.
    fn unexpired(&self, now: u64) -> Option<Policy> {
        match &self.cache {
            Cache::Read(Some(e)) if !e.expired(now) => Some(e.policy.clone()),
            _ => None,
        }
    }
}

impl Server {
    /// Session `session` (of relay action `action`) wants the policy of `domain`, whose
    /// TXT record gave `id`; the answer comes through `Server::mta_sts_known`.
    pub(super) fn sts_lookup(
        &mut self,
        session: u64,
        domain: &str,
        action: &str,
        id: Option<String>,
        now: Instant,
    ) {
        let unix = unix_now();
        let d = self.sts.domain(domain);
        let waiter = Waiter {
            session,
            id,
            action: action.to_string(),
        };
        let entry = match &d.cache {
            Cache::Unread => {
                d.cache = Cache::Reading;
                d.waiting.push(waiter);
                let domain = domain.to_string();
                return self.spool_job(IoJob::StsRead { domain });
            }
            Cache::Reading => return d.waiting.push(waiter),
            Cache::Read(e) => e,
        };
        let policy = match sts::refresh(entry.as_ref(), waiter.id.as_deref(), unix) {
            Refresh::NoPolicy => None,
            Refresh::UseCached => entry.as_ref().map(|e| e.policy.clone()),
            Refresh::Fetch if d.fetch.is_some() => return d.waiting.push(waiter),
            Refresh::Fetch => {
                let id = waiter.id.clone().unwrap_or_default();
                let recent = d
                    .failed
                    .as_ref()
                    .is_some_and(|(f, at)| *f == id && unix < at + FETCH_RETRY);
                if recent {
                    d.unexpired(unix)
                } else {
                    d.waiting.push(waiter);
                    return self.sts_fetch_start(domain, &id, action, now);
                }
            }
        };
        self.mta_sts_known(session, policy, now);
    }

    /// The spool's cache of `domain` was read.
    pub(super) fn sts_cache_read(
        &mut self,
        domain: &str,
        result: Result<Option<CacheEntry>, String>,
        now: Instant,
    ) {
        let Some(d) = self.sts.domains.get_mut(domain) else {
            return;
        };
        let entry = result.unwrap_or_else(|e| {
            log::warn!("mta-sts domain={domain} cache unreadable, ignored: {e}");
            None
        });
        d.cache = Cache::Read(entry);
        self.sts_wake(domain, now);
    }

    /// The sessions waiting for `domain` look again (the cache was read, a fetch ended).
    fn sts_wake(&mut self, domain: &str, now: Instant) {
        let Some(d) = self.sts.domains.get_mut(domain) else {
            return;
        };
        for w in std::mem::take(&mut d.waiting) {
            self.sts_lookup(w.session, domain, &w.action, w.id, now);
        }
    }

    /// Starts fetching `domain`'s policy for the TXT id `id` with the TLS of relay
    /// action `action`: the policy host is resolved first.
    fn sts_fetch_start(&mut self, domain: &str, id: &str, action: &str, now: Instant) {
        let Some(config) = self.tls.relays.get(action).cloned() else {
            return self.sts_fetched(domain, id, Err("no TLS for this action".into()), now);
        };
        let gen = self.next_gen;
        self.next_gen += 1;
        let fetch = PolicyFetch::new(domain, id, config, gen);
        let host = fetch.host();
        let key = self.slab.insert(Endpoint::Sts(Box::new(fetch)));
        if let Some(d) = self.sts.domains.get_mut(domain) {
            d.fetch = Some(key);
        }
        self.timers
            .add(now + FETCH_TIMEOUT, Due::Endpoint { key, gen });
        log::debug!("mta-sts domain={domain} id={id} fetching from {host}");
        for qtype in [Qtype::Aaaa, Qtype::A] {
            self.dns_ask(&host, qtype, DnsWaiter::Sts { key, gen }, now);
        }
    }

    /// An answer for the policy host of fetch `key`.
    pub(super) fn sts_fetch_dns(
        &mut self,
        key: usize,
        gen: u64,
        qtype: Qtype,
        result: DnsResult,
        now: Instant,
    ) {
        let Some(Endpoint::Sts(f)) = self.slab.get_mut(key) else {
            return;
        };
        if f.gen != gen {
            return;
        }
        match f.answer(qtype, result) {
            None => {}
            Some(Ok(())) => self.sts_connect(key, now),
            Some(Err(why)) => self.sts_fetch_end(key, Err(why), now),
        }
    }

    /// Connects fetch `key` to its next address, or ends it.
    fn sts_connect(&mut self, key: usize, now: Instant) {
        loop {
            let Some(Endpoint::Sts(f)) = self.slab.get_mut(key) else {
                return;
            };
            if let Some(mut sock) = f.sock.take() {
                let _ = self.poll.registry().deregister(&mut sock);
            }
            let Some(addr) = f.next_addr() else {
                let why = f.last_error.take().unwrap_or_else(|| "no address".into());
                return self.sts_fetch_end(key, Err(why), now);
            };
            let r = mio::net::TcpStream::connect(addr)
                .map_err(|e| e.to_string())
                .and_then(|mut s| {
                    let token = Token(key + FIRST_SLOT);
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    self.poll
                        .registry()
                        .register(&mut s, token, interest)
                        .map_err(|e| e.to_string())?;
                    Ok(s)
                });
            let Some(Endpoint::Sts(f)) = self.slab.get_mut(key) else {
                return;
            };
            match r.and_then(|s| f.attempt(Stream::Tcp(s), addr)) {
                Ok(()) => return self.sts_io(key, now),
                Err(e) => f.last_error = Some(format!("{addr}: {e}")),
            }
        }
    }

    /// Events on fetch `key`'s socket.
    pub(super) fn sts_io(&mut self, key: usize, now: Instant) {
        let Some(Endpoint::Sts(f)) = self.slab.get_mut(key) else {
            return;
        };
        match f.pump() {
            Pumped::More => {}
            Pumped::Policy(p) => self.sts_fetch_end(key, Ok(p), now),
            Pumped::Failed { why, next: true } => {
                f.last_error = Some(match f.addr {
                    Some(a) => format!("{a}: {why}"),
                    None => why,
                });
                self.sts_connect(key, now);
            }
            Pumped::Failed { why, next: false } => self.sts_fetch_end(key, Err(why), now),
        }
    }

    /// The deadline of fetch `key` (generation `gen`) came.
    pub(super) fn sts_due(&mut self, key: usize, gen: u64, now: Instant) {
        if matches!(self.slab.get(key), Some(Endpoint::Sts(f)) if f.gen == gen) {
            let why = format!("no policy within {}s", FETCH_TIMEOUT.as_secs());
            self.sts_fetch_end(key, Err(why), now);
        }
    }

    /// Ends fetch `key` with what it got (also after a bug in its handling).
    pub(super) fn sts_fetch_end(&mut self, key: usize, r: Result<Policy, String>, now: Instant) {
        let Some(Endpoint::Sts(mut f)) = self.slab.try_remove(key) else {
            return;
        };
        if let Some(sock) = f.sock.as_mut() {
            let _ = self.poll.registry().deregister(sock);
        }
        if let Some(d) = self.sts.domains.get_mut(&f.domain) {
            d.fetch = None;
        }
        self.sts_fetched(&f.domain, &f.id, r, now);
    }

    /// What a fetch of `domain`'s policy for the TXT id `id` got: a policy is cached,
    /// in memory and in the spool; a failure keeps the cached policy while it has not
    /// expired. The sessions waiting look again.
    fn sts_fetched(&mut self, domain: &str, id: &str, r: Result<Policy, String>, now: Instant) {
        let unix = unix_now();
        let Some(d) = self.sts.domains.get_mut(domain) else {
            return;
        };
        match r {
            Ok(policy) => {
                log::info!(
                    "mta-sts policy domain={domain} id={id} mode={} max_age={} mx={}",
                    policy.mode.as_str(),
                    policy.max_age,
                    policy.mx.join(",")
                );
                let entry = CacheEntry {
                    fetched: unix,
                    id: id.to_string(),
                    policy,
                };
                d.cache = Cache::Read(Some(entry.clone()));
                d.failed = None;
                let domain = domain.to_string();
                self.spool_job(IoJob::StsWrite {
                    domain: domain.clone(),
                    entry,
                });
                self.sts_wake(&domain, now);
            }
            Err(why) => {
                let kept = match d.unexpired(unix) {
                    Some(_) => "cached",
                    None => "none",
                };
                log::info!(
                    "mta-sts fetch-failed domain={domain} id={id} policy={kept} reason={why:?}"
                );
                d.failed = Some((id.to_string(), unix));
                self.sts_wake(domain, now);
            }
        }
    }

    /// `show mta-sts`: one line per domain whose policy is known or being fetched.
    pub(super) fn sts_text(&self, now: u64) -> String {
        let mut lines: Vec<String> = Vec::new();
        for (domain, d) in &self.sts.domains {
            let mut line = match &d.cache {
                Cache::Read(Some(e)) => {
                    let left = (e.fetched + e.policy.max_age).saturating_sub(now);
                    let expiry = match left {
                        0 => "expired".to_string(),
                        n => format!("expires={n}s"),
                    };
                    format!(
                        "{domain} mode={} id={} max_age={} {expiry} mx={}",
                        e.policy.mode.as_str(),
                        e.id,
                        e.policy.max_age,
                        e.policy.mx.join(",")
                    )
                }
                _ if d.fetch.is_some() => domain.clone(),
                _ => continue,
            };
            if d.fetch.is_some() {
                line.push_str(" fetching");
            }
            lines.push(line);
        }
        lines.sort();
        lines.iter().map(|l| format!("{l}\n")).collect()
    }
}
