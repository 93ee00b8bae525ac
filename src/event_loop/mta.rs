//! Outgoing sessions from the loop's side: where each goes and how it gets there.
//!
//! A session's destination is resolved first: a domain's mail exchangers through
//! `mta/mx.rs` (MX, then AAAA and A of each, then TLSA where DANE applies), a
//! smarthost's name through /etc/hosts, then AAAA and A with the search domains of
//! resolv.conf (a name of the configuration, not a mail domain). The addresses found
//! are tried in order: one whose server refused or failed recently is skipped
//! (`mta/hosts.rs`), as is one with `max-conn-per-host` connections already; an
//! attempt that fails before its first MAIL command goes on to the next address, and
//! one that failed in an opportunistic TLS handshake is made again in plain text.
//!
//! For a domain's exchangers, the `_mta-sts` TXT record is asked beside the MX
//! record, and the domain's MTA-STS policy found (`sts.rs`); the first attempt waits
//! for both. A policy in `enforce` mode keeps only the exchangers it lists, each
//! attempt with TLS verified for the exchanger's name (`mta/plan.rs`).

use super::dns::DnsWaiter;
use super::sts::{txt_answer, StsWait};
use super::{unix_now, Endpoint, Server, FIRST_SLOT};
use crate::config::relay::{Relay, RelayTls};
use crate::config::{Matcher, Method};
use crate::dns::{DnsError, DnsResult, Qtype, Rdata};
use crate::mta::conn::{MtaConn, Setup, TlsPlan};
use crate::mta::mx::{Candidate, Dane, Progress, Question, RouteResolver, Settings};
use crate::mta::plan::{self, StsCheck};
use crate::mta::sts::Policy;
use crate::nexthop::{Route, Target};
use crate::stream::Stream;
use mio::{Interest, Token};
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// The tag of answers for a route resolver (others are search-list indices).
const ROUTE_TAG: u32 = u32::MAX;
/// The tag of the `_mta-sts` TXT answer.
const STS_TAG: u32 = u32::MAX - 1;

/// Where an outgoing session stands on its way to a server.
#[derive(Debug)]
pub(super) struct Routing {
    /// The slab key of the session.
    key: usize,
    route: Route,
    /// The mail exchangers being resolved.
    resolver: Option<RouteResolver>,
    /// A smarthost's name being resolved.
    lookup: Option<HostLookup>,
    /// The addresses left to try.
    candidates: VecDeque<Candidate>,
    /// The address of the attempt in progress.
    current: Option<Candidate>,
    /// The next attempt is the current address again, in plain text.
    plain_next: bool,
    /// Why the last address could not be used.
    last_error: Option<String>,
    /// MTA-STS, for a domain's exchangers: the policy awaited, then the one in force.
    sts: Option<StsWait>,
}

/// A smarthost name being resolved.
#[derive(Debug)]
struct HostLookup {
    host: String,
    /// The names to try (search domains), and the one asked now.
    names: Vec<String>,
    current: usize,
    /// Answers still to come for the current name.
    pending: u8,
    v6: Vec<IpAddr>,
    v4: Vec<IpAddr>,
    /// A failure seen on the way (not NXDOMAIN or NODATA).
    failure: Option<String>,
}

impl Server {
    /// The relay options of `route`'s action, if it relays.
    fn relay_of(&self, route: &Route) -> Option<&Relay> {
        self.cfg
            .actions
            .iter()
            .find(|a| a.name == route.action)
            .and_then(|a| match &a.method {
                Method::Relay(r) => Some(&**r),
                _ => None,
            })
    }

    /// What a session of `route` is given once: its EHLO name, credentials and
    /// MAIL FROM.
    fn mta_setup(&self, route: &Route) -> Setup {
        let relay = self.relay_of(route);
        // A table in memory; a table process is asked by a lookup thread before the
        // session connects (`tables.rs`).
        let auth = match (relay.and_then(|r| r.auth), &route.label) {
            (Some(t), Some(label)) => self
                .cfg
                .tables
                .get(t)
                .and_then(|t| t.entries().get(label).and_then(secret_of)),
            _ => None,
        };
        Setup {
            helo: route.helo.clone(),
            auth,
            mail_from: relay.and_then(|r| r.mail_from.clone()),
            srs_key: relay
                .filter(|r| r.srs)
                .and_then(|_| self.cfg.srs.key.clone()),
        }
    }

    /// Starts outgoing session `session`: its destination is resolved, then it
    /// connects.
    pub(super) fn mta_start(&mut self, session: u64, route: Route, now: Instant) {
        let gen = self.next_gen;
        self.next_gen += 1;
        let setup = self.mta_setup(&route);
        let conn = MtaConn::new(
            session,
            gen,
            route.clone(),
            now + self.cfg.mta.timeout,
            setup,
        );
        let key = self.slab.insert(Endpoint::Mta(Box::new(conn)));
        self.mta_keys.insert(session, key);
        self.mta_conns += 1;
        let r = Routing {
            key,
            route: route.clone(),
            resolver: None,
            lookup: None,
            candidates: VecDeque::new(),
            current: None,
            plain_next: false,
            last_error: None,
            sts: None,
        };
        self.mta_routing.insert(session, r);
        if self.mta_secret_wait(key, gen, &route) {
            // Routed once the relay's credentials are known (`mta_secret`).
            return;
        }
        if let Some(r) = self.mta_routing.remove(&session) {
            self.mta_route(session, r, now);
        }
    }

    /// Resolves session `session`'s destination, then connects.
    pub(super) fn mta_route(&mut self, session: u64, mut r: Routing, now: Instant) {
        let route = r.route.clone();
        match &route.target {
            Target::Unix(_) => {
                self.mta_routing.insert(session, r);
                self.mta_try(session, now)
            }
            Target::Tcp(h, _) => {
                let ips = match h.parse::<IpAddr>() {
                    Ok(ip) => vec![ip],
                    Err(_) => self.dns.hosts(h),
                };
                if ips.is_empty() {
                    r.lookup = Some(HostLookup {
                        host: h.clone(),
                        names: self.dns.candidates(h),
                        current: 0,
                        pending: 0,
                        v6: Vec::new(),
                        v4: Vec::new(),
                        failure: None,
                    });
                    self.mta_routing.insert(session, r);
                    return self.mta_ask_host(session, now);
                }
                r.candidates = candidates_of(h, &ips);
                self.mta_routing.insert(session, r);
                self.mta_try(session, now)
            }
            Target::Mx(domain) => {
                let settings = self.mx_settings(&route);
                let (resolver, progress) =
                    RouteResolver::mx(domain, settings, crate::sys::random_u64());
                r.resolver = Some(resolver);
                let sts = self.relay_of(&route).is_some_and(|a| a.mta_sts)
                    && crate::mta::sts::valid_domain(domain.trim_end_matches('.'));
                if sts {
                    r.sts = Some(StsWait::new(domain));
                }
                self.mta_routing.insert(session, r);
                if sts {
                    let name = format!("_mta-sts.{}", domain.trim_end_matches('.'));
                    let waiter = DnsWaiter::Mta {
                        session,
                        tag: STS_TAG,
                    };
                    self.dns_ask(&name, Qtype::Txt, waiter, now);
                }
                self.mta_progress(session, progress, now);
            }
        }
    }

    /// What MX selection needs to know of this host and the action.
    fn mx_settings(&self, route: &Route) -> Settings {
        let relay = self.relay_of(route);
        let mut my_names = vec![self.cfg.hostname.clone()];
        my_names.extend(self.cfg.listeners.iter().filter_map(|l| l.hostname.clone()));
        let my_addrs = self
            .cfg
            .listeners
            .iter()
            .flat_map(|l| l.addrs.iter())
            .filter(|a| a.port() == 25)
            .map(|a| a.ip())
            .collect();
        Settings {
            port: 25,
            dane: relay.is_some_and(|r| r.dane),
            my_names,
            my_addrs,
            backup: relay
                .and_then(|r| r.backup.clone())
                .map(|b| b.unwrap_or_else(|| self.cfg.hostname.clone())),
        }
    }

    /// Asks what the route resolver wants, or takes its verdict.
    fn mta_progress(&mut self, session: u64, progress: Progress, now: Instant) {
        match progress {
            Progress::Wait => {}
            Progress::Ask(questions) => {
                for q in questions {
                    let waiter = DnsWaiter::Mta {
                        session,
                        tag: ROUTE_TAG,
                    };
                    self.dns_ask(&q.name, q.qtype, waiter, now);
                }
            }
            Progress::Done(Ok(candidates)) => {
                let Some(r) = self.mta_routing.get_mut(&session) else {
                    return;
                };
                r.resolver = None;
                let list: Vec<String> = candidates
                    .iter()
                    .map(|c| format!("{}[{}]", c.host, c.addr))
                    .collect();
                log::debug!(
                    "{session:016x} mta route {:?}: {}",
                    r.route.target,
                    list.join(" ")
                );
                r.candidates = candidates.into();
                if r.sts.as_ref().is_some_and(|w| w.policy.is_none()) {
                    return; // the policy comes in `mta_sts_known`
                }
                self.mta_resolved(session, now);
            }
            Progress::Done(Err(outcome)) => {
                let Some(r) = self.mta_routing.remove(&session) else {
                    return;
                };
                if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(r.key) {
                    conn.fail_all(outcome);
                }
                self.mta_after(r.key);
            }
        }
    }

    /// An answer for outgoing session `session`: for its route resolver
    /// ([`ROUTE_TAG`]), else for the search-list name `tag` of its smarthost.
    pub(super) fn mta_dns(
        &mut self,
        session: u64,
        tag: u32,
        name: &str,
        qtype: Qtype,
        result: DnsResult,
        now: Instant,
    ) {
        let Some(r) = self.mta_routing.get_mut(&session) else {
            return; // the session ended meanwhile
        };
        if tag == STS_TAG {
            let Some(domain) = r.sts.as_ref().map(|w| w.domain.clone()) else {
                return;
            };
            let id = txt_answer(&domain, &result);
            let action = r.route.action.clone();
            return self.sts_lookup(session, &domain, &action, id, now);
        }
        if tag == ROUTE_TAG {
            let Some(resolver) = r.resolver.as_mut() else {
                return;
            };
            let q = Question {
                name: name.to_string(),
                qtype,
            };
            let progress = resolver.answer(&q, result);
            return self.mta_progress(session, progress, now);
        }
        let Some(l) = r.lookup.as_mut() else {
            return;
        };
        if tag as usize != l.current || l.pending == 0 {
            return;
        }
        l.pending -= 1;
        match result {
            Ok(a) => {
                for rd in a.records {
                    match rd {
                        Rdata::Addr(ip @ IpAddr::V6(_)) => l.v6.push(ip),
                        Rdata::Addr(ip @ IpAddr::V4(_)) => l.v4.push(ip),
                        _ => {}
                    }
                }
            }
            Err(DnsError::NxDomain { .. }) => {}
            Err(e @ (DnsError::TempFail(_) | DnsError::PermFail(_))) => {
                log::debug!("mta host {name} {}: {e}", qtype.as_str());
                l.failure = Some(e.to_string());
            }
        }
        if l.pending > 0 {
            return;
        }
        if !l.v6.is_empty() || !l.v4.is_empty() {
            let ips: Vec<IpAddr> = l.v6.iter().chain(l.v4.iter()).copied().collect();
            let host = l.host.clone();
            log::debug!("mta host {host} resolved: {ips:?}");
            r.candidates = candidates_of(&host, &ips);
            r.lookup = None;
            return self.mta_try(session, now);
        }
        l.current += 1;
        if l.current < l.names.len() {
            return self.mta_ask_host(session, now);
        }
        let why = match &l.failure {
            Some(e) => format!("cannot resolve {}: {e}", l.host),
            None => format!("cannot resolve {}: no address", l.host),
        };
        let key = r.key;
        self.mta_routing.remove(&session);
        self.mta_abort(key, &why);
    }

    /// The MTA-STS policy of session `session`'s domain is known (`None`: it has
    /// none); the first attempt starts if the exchangers are known too.
    pub(super) fn mta_sts_known(&mut self, session: u64, policy: Option<Policy>, now: Instant) {
        let Some(r) = self.mta_routing.get_mut(&session) else {
            return;
        };
        let Some(w) = r.sts.as_mut().filter(|w| w.policy.is_none()) else {
            return;
        };
        w.policy = Some(policy);
        if r.resolver.is_none() {
            self.mta_resolved(session, now);
        }
    }

    /// The exchangers of session `session` are known, and its MTA-STS policy if it has
    /// one: the policy keeps those it lets the session try, then the first attempt
    /// starts.
    fn mta_resolved(&mut self, session: u64, now: Instant) {
        let Some(r) = self.mta_routing.get_mut(&session) else {
            return;
        };
        if let Some(StsWait {
            domain,
            policy: Some(policy),
        }) = &r.sts
        {
            let list = std::mem::take(&mut r.candidates).into();
            match plan::sts_filter(domain, list, policy.as_ref()) {
                Ok(kept) => r.candidates = kept.into(),
                Err(outcome) => {
                    let key = r.key;
                    self.mta_routing.remove(&session);
                    if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
                        conn.fail_all(outcome);
                    }
                    return self.mta_after(key);
                }
            }
        }
        self.mta_try(session, now);
    }

    /// Asks AAAA and A of a smarthost's current search-list name.
    fn mta_ask_host(&mut self, session: u64, now: Instant) {
        let Some(l) = self
            .mta_routing
            .get_mut(&session)
            .and_then(|r| r.lookup.as_mut())
        else {
            return;
        };
        let Some(name) = l.names.get(l.current).cloned() else {
            return;
        };
        l.pending = 2;
        let tag = l.current as u32;
        for qtype in [Qtype::Aaaa, Qtype::A] {
            self.dns_ask(&name, qtype, DnsWaiter::Mta { session, tag }, now);
        }
    }

    /// Connects session `session` to its next usable address, or gives up.
    fn mta_try(&mut self, session: u64, now: Instant) {
        let Some(mut r) = self.mta_routing.remove(&session) else {
            return;
        };
        let key = r.key;
        if let (Target::Unix(path), None) = (&r.route.target, &r.current) {
            let path = path.clone();
            r.current = Some(Candidate {
                host: path.clone(),
                addr: IpAddr::from([0, 0, 0, 0]),
                pref: 0,
                dane: Dane::None,
            });
            self.mta_routing.insert(session, r);
            let sock = mio::net::UnixStream::connect(&path).map(Stream::Unix);
            return self.mta_attempt(session, sock, &path, path.clone(), None, false, now);
        }
        let limit = self.mta_limit(&r.route);
        let unix = unix_now();
        let next = if r.plain_next {
            r.plain_next = false;
            r.current.clone().map(|c| (c, true))
        } else {
            let mut found = None;
            while let Some(c) = r.candidates.pop_front() {
                match self.hosts.may_connect(c.addr, limit, unix) {
                    Ok(()) => {
                        found = Some((c, false));
                        break;
                    }
                    Err(why) => {
                        log::info!("{session:016x} mta skipped {why}");
                        r.last_error = Some(why);
                    }
                }
            }
            found
        };
        let Some((c, plain)) = next else {
            let why = r
                .last_error
                .clone()
                .unwrap_or_else(|| "no usable address".into());
            if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
                conn.may_retry = false;
                conn.give_up(&why);
            }
            return self.mta_after(key);
        };
        let port = match &r.route.target {
            Target::Tcp(_, p) => *p,
            _ => 25,
        };
        let addr = SocketAddr::new(c.addr, port);
        let check = r
            .sts
            .as_ref()
            .map_or(StsCheck::Nothing, |w| w.check(&c.host));
        if check == StsCheck::Unlisted {
            let domain = r.sts.as_ref().map_or("", |w| w.domain.as_str());
            log::info!(
                "{session:016x} mta sts-testing host={} address={addr} reason=\"not an exchanger of the policy of {domain}\"",
                c.host
            );
        }
        let plan = if plain {
            None
        } else {
            self.tls_plan(&r.route, &c, check)
        };
        let fallback = plan.as_ref().is_some_and(|p| !p.required);
        let more = !r.candidates.is_empty() || fallback;
        let src = self.mta_source(&r.route, addr);
        let helo = self.mta_helo(&r.route, src);
        if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
            conn.set_helo(&helo);
        }
        let sock = Self::mta_socket(src, addr);
        let host = c.host.clone();
        self.hosts.connecting(c.addr, &host, unix);
        r.current = Some(c);
        self.mta_routing.insert(session, r);
        self.mta_attempt(session, sock, &host, addr.to_string(), plan, more, now);
    }

    /// The connection limit per address for `route`'s destination.
    fn mta_limit(&self, route: &Route) -> usize {
        let domain = match &route.target {
            Target::Mx(d) => Some(d.as_str()),
            _ => None,
        };
        self.cfg.mta.limits_for(domain).max_conn_per_host
    }

    /// The source address for `addr` from the action's `src`, of that family, when
    /// it names one.
    fn mta_source(&self, route: &Route, addr: SocketAddr) -> Option<IpAddr> {
        let m = self.relay_of(route)?.src.as_ref()?;
        let list: Vec<IpAddr> = match m {
            Matcher::Value(v) => v.parse().ok().into_iter().collect(),
            Matcher::Table(t) => self
                .cfg
                .tables
                .get(*t)
                .map(|t| t.entries().keys().filter_map(|k| k.parse().ok()).collect())
                .unwrap_or_default(),
            // The parser takes no regular expression here.
            Matcher::Regex(_) => Vec::new(),
        };
        list.into_iter().find(|ip| ip.is_ipv4() == addr.is_ipv4())
    }

    /// The EHLO name for a connection from `src`: the action's `helo-src` table's, else
    /// the route's.
    fn mta_helo(&self, route: &Route, src: Option<IpAddr>) -> String {
        let by_src = self
            .relay_of(route)
            .and_then(|r| r.helo_src)
            .zip(src)
            .and_then(|(t, ip)| {
                self.cfg
                    .tables
                    .get(t)?
                    .entries()
                    .get(&ip.to_string())
                    .map(str::to_string)
            });
        by_src.unwrap_or_else(|| route.helo.clone())
    }

    /// A socket connecting to `addr`, from `src` when given.
    fn mta_socket(src: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<Stream> {
        let tcp = match src {
            Some(src) => mio::net::TcpStream::from_std(crate::sys::connect_from(src, addr)?),
            None => mio::net::TcpStream::connect(addr)?,
        };
        Ok(Stream::Tcp(tcp))
    }

    /// How an attempt to `c` on `route` protects itself (`mta/plan.rs`); `None` for
    /// plain text.
    fn tls_plan(&self, route: &Route, c: &Candidate, sts: StsCheck) -> Option<TlsPlan> {
        let tls = self.relay_of(route).map_or(RelayTls::Default, |r| r.tls);
        let config = self.tls.relays.get(&route.action).cloned();
        plan::tls_plan(route, c, tls, config, sts)
    }

    /// Starts an attempt of session `session` on `sock` (or fails it).
    #[allow(clippy::too_many_arguments)]
    fn mta_attempt(
        &mut self,
        session: u64,
        sock: std::io::Result<Stream>,
        host: &str,
        address: String,
        plan: Option<TlsPlan>,
        more: bool,
        now: Instant,
    ) {
        let Some(&key) = self.mta_keys.get(&session) else {
            return;
        };
        let timeout = self.cfg.mta.timeout;
        let sock = sock.and_then(|mut s| {
            self.poll.registry().register(
                &mut s,
                Token(key + FIRST_SLOT),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(s)
        });
        let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) else {
            return;
        };
        conn.may_retry = more;
        conn.deadline = now + timeout;
        let gen = conn.gen;
        self.timers
            .add(now + timeout, super::deadlines::Due::Endpoint { key, gen });
        let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) else {
            return;
        };
        match sock {
            Ok(sock) => {
                conn.attempt(sock, host, address, plan);
                conn.pump(now, timeout);
            }
            Err(e) => conn.abort(&format!("cannot connect to {host} [{address}]: {e}")),
        }
        self.mta_after(key);
    }

    /// Gives up session `key` with `why`.
    pub(super) fn mta_abort(&mut self, key: usize, why: &str) {
        if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
            conn.abort(why);
        }
        self.mta_after(key);
    }

    /// Hands the manager what session `key` finished; starts its next attempt when
    /// this one failed before MAIL, and drops the session when it is over.
    pub(super) fn mta_after(&mut self, key: usize) {
        let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) else {
            return;
        };
        let session = conn.session;
        if let Some((why, tls_failed, sock)) = conn.retry() {
            if let Some(mut sock) = sock {
                let _ = self.poll.registry().deregister(&mut sock);
            }
            let unix = unix_now();
            if let Some(r) = self.mta_routing.get_mut(&session) {
                if let Some(c) = &r.current {
                    self.hosts.released(c.addr, Err(&why), unix);
                }
                r.plain_next = tls_failed;
                r.last_error = Some(why);
            }
            return self.mta_try(session, Instant::now());
        }
        let done = conn.take_done();
        let now = unix_now();
        if !conn.finished() {
            for d in done {
                self.queue.job_done(d, now);
            }
            return;
        }
        let Some(Endpoint::Mta(mut conn)) = self.slab.try_remove(key) else {
            return;
        };
        self.mta_conns -= 1;
        for (sum, n) in self.counters.tls_out.iter_mut().zip(conn.tls_counts) {
            *sum += n;
        }
        self.mta_keys.remove(&conn.session);
        if let Some(sock) = conn.sock.as_mut() {
            let _ = self.poll.registry().deregister(sock);
        }
        let why = conn
            .error()
            .unwrap_or("the session ended before its jobs")
            .to_string();
        if let Some(c) = self
            .mta_routing
            .remove(&conn.session)
            .and_then(|r| r.current)
        {
            let result = if conn.served() {
                Ok(())
            } else {
                Err(why.as_str())
            };
            self.hosts.released(c.addr, result, now);
        }
        self.queue
            .session_closed(conn.session, done, &why, !conn.failed_before_mail(), now);
    }
}

/// The user and password of a relay secret, `user:password`.
pub(super) fn secret_of(value: &str) -> Option<(String, String)> {
    value
        .split_once(':')
        .map(|(u, p)| (u.to_string(), p.to_string()))
}

/// The addresses of a smarthost, in the order found.
fn candidates_of(host: &str, ips: &[IpAddr]) -> VecDeque<Candidate> {
    ips.iter()
        .map(|&addr| Candidate {
            host: host.to_string(),
            addr,
            pref: 0,
            dane: Dane::None,
        })
        .collect()
}
