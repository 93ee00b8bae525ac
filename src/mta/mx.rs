//! From a domain to the addresses to try, in order: its mail exchangers (RFC 5321
//! §5.1, null MX of RFC 7505), then each exchanger's addresses and, where DANE applies
//! (RFC 7672 §2.2), its TLSA records. (A smarthost's name is resolved by
//! `event_loop/mta.rs`, with the search list of resolv.conf.)
//!
//! A pure machine: it asks questions and takes their answers; the loop's resolver
//! carries them. Every way a lookup fails ends in an outcome with the enhanced status
//! code RFC 3463 gives it: NXDOMAIN `5.1.2`, null MX `5.1.10`, no address `5.4.4`, an
//! exchanger that is this host `5.4.6`, a temporary failure `4.4.3`.

use crate::dns::{DnsError, DnsResult, Qtype, Rdata};
use crate::mda::Outcome;
use std::collections::HashMap;
use std::net::IpAddr;

/// Exchangers whose addresses are looked up at most.
pub const MAX_HOSTS: usize = 10;
/// Addresses tried at most, over every exchanger.
pub const MAX_ADDRS: usize = 10;

/// A question for the resolver.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    /// The name, without the final dot.
    pub name: String,
    /// The type.
    pub qtype: Qtype,
}

pub use crate::tls::dane::Tlsa;

/// What DANE says of one exchanger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dane {
    /// Not applicable: DANE is off, or the DNS answers were not authenticated, or the
    /// host publishes no TLSA records.
    None,
    /// Authenticated TLSA records: TLS is mandatory, authenticated by them (RFC 7672
    /// §2.2; when none is usable, TLS is still mandatory).
    Tlsa {
        /// The TLSA base domain, for SNI and DANE-TA name checks.
        base: String,
        /// The records.
        records: Vec<Tlsa>,
    },
}

/// An address to connect to, with what it takes to trust it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The exchanger's (or smarthost's) name, as the MX record or URL gives it.
    pub host: String,
    /// Its address.
    pub addr: IpAddr,
    /// The MX preference (0 for a smarthost or an implicit MX).
    pub pref: u16,
    /// DANE's verdict for this host.
    pub dane: Dane,
}

/// What the machine needs to know of this host and the action.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The port (25 for MX delivery).
    pub port: u16,
    /// Look up TLSA records where the answers are authenticated.
    pub dane: bool,
    /// Names of this host: an exchanger with one of them is this host.
    pub my_names: Vec<String>,
    /// Addresses this host accepts mail on (port 25): an exchanger with one is this
    /// host.
    pub my_addrs: Vec<IpAddr>,
    /// `backup [mx NAME]`: the name this host has among the exchangers.
    pub backup: Option<String>,
}

/// The next thing to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// Ask these questions (their answers come through [`RouteResolver::answer`]).
    Ask(Vec<Question>),
    /// Wait for the answers already asked.
    Wait,
    /// The addresses to try, in order, or the outcome of every recipient.
    Done(Result<Vec<Candidate>, Outcome>),
}

/// The addresses of one family for a host, whether they were authenticated, and the
/// name they are owned by (after CNAMEs); or why there are none.
type Addrs = Result<(Vec<IpAddr>, bool, String), DnsError>;

/// One exchanger being resolved.
#[derive(Debug)]
struct Host {
    name: String,
    pref: u16,
    /// Answers for AAAA and A: `None` until they come.
    v6: Option<Addrs>,
    v4: Option<Addrs>,
    /// TLSA: `None` while not asked or not answered; the names asked in order.
    tlsa: Option<Dane>,
    tlsa_names: Vec<String>,
    /// A TLSA lookup failed: the host cannot be used (RFC 7672 §2.2: never downgrade).
    tlsa_failed: Option<String>,
}

/// Resolves one route's destination.
#[derive(Debug)]
pub struct RouteResolver {
    domain: String,
    settings: Settings,
    seed: u64,
    /// The MX answer was authenticated.
    mx_secure: bool,
    hosts: Vec<Host>,
    asked: HashMap<Question, ()>,
    done: bool,
}

impl RouteResolver {
    /// Resolves the mail exchangers of `domain`.
    pub fn mx(domain: &str, settings: Settings, seed: u64) -> (RouteResolver, Progress) {
        let mut r = RouteResolver::new(domain, settings, seed);
        let q = r.ask(domain, Qtype::Mx);
        (r, Progress::Ask(q))
    }

    fn new(domain: &str, settings: Settings, seed: u64) -> RouteResolver {
        RouteResolver {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            settings,
            seed,
            mx_secure: false,
            hosts: Vec::new(),
            asked: HashMap::new(),
            done: false,
        }
    }

    fn ask(&mut self, name: &str, qtype: Qtype) -> Vec<Question> {
        let q = Question {
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            qtype,
        };
        if self.asked.insert(q.clone(), ()).is_some() {
            return Vec::new();
        }
        vec![q]
    }

    /// Takes the answer to a question asked; answers to anything else are ignored.
    pub fn answer(&mut self, q: &Question, r: DnsResult) -> Progress {
        if self.done || self.asked.remove(q).is_none() {
            return Progress::Wait;
        }
        let ask = match q.qtype {
            Qtype::Mx => self.on_mx(r),
            Qtype::A | Qtype::Aaaa => self.on_addr(q, r),
            Qtype::Tlsa => self.on_tlsa(q, r),
            _ => Ok(Vec::new()),
        };
        let ask = match ask {
            Ok(a) => a,
            Err(outcome) => {
                self.done = true;
                return Progress::Done(Err(outcome));
            }
        };
        if !ask.is_empty() {
            return Progress::Ask(ask);
        }
        if !self.asked.is_empty() {
            return Progress::Wait;
        }
        self.done = true;
        Progress::Done(self.candidates())
    }

    fn on_mx(&mut self, r: DnsResult) -> Result<Vec<Question>, Outcome> {
        let d = self.domain.clone();
        let answer = match r {
            Ok(a) => a,
            Err(DnsError::NxDomain { .. }) => {
                return Err(Outcome::PermFail(format!(
                    "550 5.1.2 domain {d} does not exist"
                )))
            }
            Err(DnsError::PermFail(e)) => {
                return Err(Outcome::PermFail(format!(
                    "550 5.1.2 cannot look up the mail exchangers of {d}: {e}"
                )))
            }
            Err(DnsError::TempFail(e)) => {
                return Err(Outcome::TempFail(format!(
                    "451 4.4.3 MX lookup for {d} failed: {e}"
                )))
            }
        };
        self.mx_secure = answer.secure;
        let mut mx: Vec<(u16, String)> = answer
            .records
            .into_iter()
            .filter_map(|r| match r {
                Rdata::Mx(p, h) => Some((p, h.trim_end_matches('.').to_ascii_lowercase())),
                _ => None,
            })
            .collect();
        if mx.is_empty() {
            // No MX records: the domain itself, preference 0 (RFC 5321 §5.1).
            mx.push((0, d.clone()));
        } else if mx.iter().all(|(_, h)| h.is_empty()) {
            return Err(Outcome::PermFail(format!(
                "556 5.1.10 domain {d} accepts no mail (null MX)"
            )));
        }
        mx.retain(|(_, h)| !h.is_empty());
        let ordered = order(mx, self.seed);
        let ordered = self.below_me(ordered)?;
        let mut ask = Vec::new();
        for (pref, host) in ordered.into_iter().take(MAX_HOSTS) {
            ask.extend(self.ask(&host, Qtype::Aaaa));
            ask.extend(self.ask(&host, Qtype::A));
            self.hosts.push(Host::new(&host, pref));
        }
        Ok(ask)
    }

    /// Drops the exchangers this host prefers itself to, or ties with (RFC 5321 §5.1):
    /// those at or after its own preference when it is among them by name.
    fn below_me(&self, mx: Vec<(u16, String)>) -> Result<Vec<(u16, String)>, Outcome> {
        let me = |h: &str| {
            self.settings
                .my_names
                .iter()
                .chain(self.settings.backup.iter())
                .any(|n| n.eq_ignore_ascii_case(h))
        };
        let Some(mine) = mx.iter().filter(|(_, h)| me(h)).map(|(p, _)| *p).min() else {
            return Ok(mx);
        };
        let kept: Vec<_> = mx.into_iter().filter(|(p, _)| *p < mine).collect();
        if kept.is_empty() {
            return Err(self.loops());
        }
        Ok(kept)
    }

    fn loops(&self) -> Outcome {
        Outcome::PermFail(format!(
            "554 5.4.6 mail for {} loops back to myself",
            self.domain
        ))
    }

    fn on_addr(&mut self, q: &Question, r: DnsResult) -> Result<Vec<Question>, Outcome> {
        let r = r.map(|a| {
            let addrs = a
                .records
                .iter()
                .filter_map(|r| match r {
                    Rdata::Addr(ip) if usable(*ip) => Some(*ip),
                    _ => None,
                })
                .collect();
            (addrs, a.secure, a.name)
        });
        let dane = self.settings.dane && self.mx_secure;
        let port = self.settings.port;
        let mut ask = Vec::new();
        for i in 0..self.hosts.len() {
            let h = &mut self.hosts[i];
            if h.name != q.name {
                continue;
            }
            match q.qtype {
                Qtype::A => h.v4 = Some(r.clone()),
                _ => h.v6 = Some(r.clone()),
            }
            let (Some(v6), Some(v4)) = (&h.v6, &h.v4) else {
                continue;
            };
            // TLSA only where the addresses were authenticated (either family will do).
            let secure = [v6, v4]
                .iter()
                .any(|r| matches!(r, Ok((a, true, _)) if !a.is_empty()));
            if !dane || !secure {
                h.tlsa = Some(Dane::None);
                continue;
            }
            // The name after CNAMEs first, then the name itself (RFC 7672 §2.2.2).
            let mut names: Vec<String> = [v6, v4]
                .iter()
                .filter_map(|r| r.as_ref().ok().map(|(_, _, n)| n.clone()))
                .filter(|n| !n.is_empty() && *n != h.name)
                .take(1)
                .collect();
            names.push(h.name.clone());
            h.tlsa_names = names;
            let first = format!("_{port}._tcp.{}", h.tlsa_names[0]);
            ask.extend(self.ask(&first, Qtype::Tlsa));
        }
        Ok(ask)
    }

    fn on_tlsa(&mut self, q: &Question, r: DnsResult) -> Result<Vec<Question>, Outcome> {
        let port = self.settings.port;
        let mut ask = Vec::new();
        for i in 0..self.hosts.len() {
            let h = &mut self.hosts[i];
            let Some(pos) = h
                .tlsa_names
                .iter()
                .position(|n| format!("_{port}._tcp.{n}") == q.name)
            else {
                continue;
            };
            if h.tlsa.is_some() {
                continue;
            }
            match &r {
                Ok(a) if a.secure && !a.records.is_empty() => {
                    let records = a
                        .records
                        .iter()
                        .filter_map(|r| match r {
                            Rdata::Tlsa {
                                usage,
                                selector,
                                mtype,
                                data,
                            } => Some(Tlsa {
                                usage: *usage,
                                selector: *selector,
                                mtype: *mtype,
                                data: data.clone(),
                            }),
                            _ => None,
                        })
                        .collect();
                    h.tlsa = Some(Dane::Tlsa {
                        base: h.tlsa_names[pos].clone(),
                        records,
                    });
                }
                // Insecure, or no records: the next name, else no DANE.
                Ok(_) | Err(DnsError::NxDomain { .. }) => {
                    if let Some(next) = h.tlsa_names.get(pos + 1).cloned() {
                        let name = format!("_{port}._tcp.{next}");
                        ask.extend(self.ask(&name, Qtype::Tlsa));
                    } else {
                        h.tlsa = Some(Dane::None);
                    }
                }
                Err(DnsError::TempFail(e) | DnsError::PermFail(e)) => {
                    h.tlsa_failed = Some(format!("TLSA lookup for {}: {e}", h.name));
                    h.tlsa = Some(Dane::None);
                }
            }
        }
        Ok(ask)
    }

    /// Every answer is in: the addresses in order, without this host's.
    fn candidates(&self) -> Result<Vec<Candidate>, Outcome> {
        let mut out: Vec<Candidate> = Vec::new();
        let mut temp: Option<String> = None;
        let mut mine: Option<u16> = None;
        for h in &self.hosts {
            let mut addrs = Vec::new();
            for r in [&h.v6, &h.v4].into_iter().flatten() {
                match r {
                    Ok((a, _, _)) => addrs.extend(a.iter().copied()),
                    Err(DnsError::TempFail(e)) => {
                        temp.get_or_insert(format!("address of {}: {e}", h.name));
                    }
                    Err(_) => {}
                }
            }
            if addrs.iter().any(|a| self.settings.my_addrs.contains(a)) {
                mine = Some(mine.map_or(h.pref, |m| m.min(h.pref)));
                continue;
            }
            if let Some(e) = &h.tlsa_failed {
                temp.get_or_insert(e.clone());
                continue;
            }
            let dane = h.tlsa.clone().unwrap_or(Dane::None);
            for addr in addrs {
                out.push(Candidate {
                    host: h.name.clone(),
                    addr,
                    pref: h.pref,
                    dane: dane.clone(),
                });
            }
        }
        if let Some(m) = mine {
            out.retain(|c| c.pref < m);
            if out.is_empty() {
                return Err(self.loops());
            }
        }
        out.truncate(MAX_ADDRS);
        if !out.is_empty() {
            return Ok(out);
        }
        let d = &self.domain;
        Err(match temp {
            Some(e) => Outcome::TempFail(format!("451 4.4.3 no usable address for {d}: {e}")),
            None => Outcome::PermFail(format!(
                "550 5.4.4 no address for the mail exchangers of {d}"
            )),
        })
    }
}

impl Host {
    fn new(name: &str, pref: u16) -> Host {
        Host {
            name: name.trim_end_matches('.').to_ascii_lowercase(),
            pref,
            v6: None,
            v4: None,
            tlsa: None,
            tlsa_names: Vec::new(),
            tlsa_failed: None,
        }
    }
}

/// Orders exchangers by preference, those of equal preference in a random order
/// (RFC 5321 §5.1) drawn from `seed`.
pub fn order(mut mx: Vec<(u16, String)>, seed: u64) -> Vec<(u16, String)> {
    let mut x = seed | 1;
    let mut keyed: Vec<(u16, u64, String)> = mx
        .drain(..)
        .map(|(p, h)| {
            // xorshift64: a different key per record from one seed.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (p, x, h)
        })
        .collect();
    keyed.sort();
    // A host listed twice keeps its best preference.
    let mut seen = std::collections::HashSet::new();
    keyed
        .into_iter()
        .filter(|(_, _, h)| seen.insert(h.clone()))
        .map(|(p, _, h)| (p, h))
        .collect()
}

/// Whether mail may go to this address: not unspecified, multicast or broadcast.
fn usable(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    }
}

#[cfg(test)]
#[path = "mx_tests.rs"]
mod tests;
