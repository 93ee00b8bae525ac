//! A session's filter chain, as a pure machine: queries and filter decisions in, the
//! frames to send and the chain's verdicts out. No socket, no pipe, no clock: the
//! engine's loop carries out the [`Step`]s and feeds back what the filters say.
//!
//! ```text
//! start(query) --> next filter of the chain:
//!     built-in, for this phase ----> its checks hold? its decision : next
//!     process, registered, hooked -> Ask ............ decision --> next / Done
//!     process, registered, not ----> next
//!     process, registering --------> AwaitRegistration .. resume --> (same filter)
//!     process, down ---------------> Done(unavailable)
//! end of the chain ----------------> Done(Proceed { rewrite, junk }, edits, data chain)
//! ```
//! The first refusal wins: a reject, tempfail or disconnect ends the run. A filter
//! that answers out of turn or out of place, or gives an invalid rewrite, gets
//! [`Step::Fail`]: the loop fails it, and the runs waiting on it end through
//! [`Chains::fail_filter`] (fail closed).

use super::answer::{Decision, Edit};
use crate::config::{BuiltinDecision, Check, Config, FilterKind, Matcher};
use crate::filter::phase::{FilterQuery, FilterVerdict, Phase};
use crate::mail::reply::Reply;
use crate::table::{address_matches, domain_matches, ip_matches};
use smtpd_filter::codec::{event, Frame};
use std::collections::HashMap;
use std::net::IpAddr;

/// A filter: its index in the configuration.
pub type FilterId = usize;

/// How a filter process stands, as the loop sees its pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Registered, answering these events.
    Ready {
        /// The events it answers, and DATA_LINES when it passes message lines.
        hooks: u32,
    },
    /// Started, not registered yet.
    Registering,
    /// Not running.
    Down,
}

/// What the chain knows of the session: the facts built-in filters check, and those
/// the CONNECT event carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The client's address; `None` on the local socket.
    pub addr: Option<IpAddr>,
    /// Our address, as CONNECT gives it.
    pub local: String,
    /// The client's address, as CONNECT gives it.
    pub remote: String,
    /// The client's reverse DNS name, when known.
    pub hostname: Option<String>,
    /// The reverse name resolves back to the address.
    pub fcrdns: bool,
    /// The HELO/EHLO name so far.
    pub helo: String,
    /// The sender of the open transaction.
    pub sender: String,
    /// The user the client authenticated as, once it did.
    pub auth: Option<String>,
}

/// An event to send to a filter process, owned until it is framed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// CONNECT: local and remote address, host name.
    Connect(String, String, String),
    /// HELO name.
    Helo(String),
    /// EHLO name.
    Ehlo(String),
    /// AUTH: mechanism and user.
    Auth(String, String),
    /// MAIL FROM address.
    Mail(String),
    /// RCPT TO address.
    Rcpt(String),
    /// DATA.
    Data,
    /// End of message, with its size.
    Eom(u64),
}

impl Event {
    /// The frame of the event.
    pub fn frame(&self) -> Frame<'_> {
        match self {
            Event::Connect(l, r, h) => Frame::Connect {
                local: l.as_bytes(),
                remote: r.as_bytes(),
                hostname: h.as_bytes(),
            },
            Event::Helo(s) => Frame::Helo(s.as_bytes()),
            Event::Ehlo(s) => Frame::Ehlo(s.as_bytes()),
            Event::Auth(m, u) => Frame::Auth {
                mechanism: m.as_bytes(),
                user: u.as_bytes(),
            },
            Event::Mail(s) => Frame::Mail(s.as_bytes()),
            Event::Rcpt(s) => Frame::Rcpt(s.as_bytes()),
            Event::Data => Frame::Data,
            Event::Eom(n) => Frame::Eom(*n),
        }
    }
}

/// What the loop must do for the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send `event` to filter process `fid` for session `sid`, and wait for its answer.
    Ask {
        /// The filter.
        fid: FilterId,
        /// The session.
        sid: u64,
        /// The event.
        event: Event,
    },
    /// Filter `fid` has not registered yet: the session waits for it, within its
    /// deadline; [`Chains::resume`] goes on once it registered.
    AwaitRegistration {
        /// The filter.
        fid: FilterId,
        /// The session.
        sid: u64,
    },
    /// The chain decided.
    Done(Decided),
    /// Filter `fid` broke the protocol: the loop fails it and has it restarted.
    Fail {
        /// The filter.
        fid: FilterId,
        /// Why, for the log.
        why: String,
    },
}

/// What the chain decided for a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The session.
    pub sid: u64,
    /// The verdict.
    pub verdict: FilterVerdict,
    /// End-of-message edits of the chain, in order (only at the end of a message, to
    /// be applied before the verdict).
    pub edits: Vec<Edit>,
    /// After DATA: the filters the message's lines go through, in order.
    pub data_chain: Vec<FilterId>,
}

/// One query's way through the chain.
#[derive(Debug)]
struct Run {
    chain: Vec<FilterId>,
    pos: usize,
    phase: Phase,
    param: String,
    rewrite: Option<String>,
    junk: bool,
    edits: Vec<Edit>,
    facts: Facts,
}

/// What the machine reads of the rest of the daemon: the configuration (filters,
/// tables) and how each filter process stands.
pub struct View<'a> {
    /// The configuration.
    pub cfg: &'a Config,
    /// How a filter process stands.
    pub state: &'a dyn Fn(FilterId) -> ProcState,
}

/// The runs in progress, one per session at most.
#[derive(Debug, Default)]
pub struct Chains {
    runs: HashMap<u64, Run>,
}

/// The verdict when a filter is down: the session ends before it is identified, else
/// the command is deferred.
pub fn unavailable(phase: Phase) -> FilterVerdict {
    match phase {
        Phase::Connect | Phase::Helo | Phase::Ehlo => FilterVerdict::Disconnect(Reply::new(
            421,
            "4.3.0",
            "Service temporarily unavailable, closing connection",
        )),
        _ => FilterVerdict::Reject(Reply::new(
            451,
            "4.3.0",
            "Temporary failure in a filter, try again later",
        )),
    }
}

/// A filter's reply: a 4xx or 5xx code and printable text; else `None`.
fn filter_reply(code: u16, text: &str) -> Option<Reply> {
    if !(400..=599).contains(&code) || text.len() > 400 || text.chars().any(|c| c.is_control()) {
        return None;
    }
    let text = if text.is_empty() {
        "Rejected by filter".to_string()
    } else {
        text.to_string()
    };
    Some(Reply::new(code, "", text))
}

/// A reply written in smtpd.conf (`"550 5.7.1 text"`), checked by the parser.
fn config_reply(s: &str) -> Reply {
    let code = s.get(..3).and_then(|c| c.parse().ok()).unwrap_or(550);
    Reply::new(code, "", s.get(4..).unwrap_or("").to_string())
}

/// What the client gets instead of a filter's invalid reply (the session is closed).
fn invalid_reply() -> Reply {
    Reply::new(421, "4.3.0", "Internal error, closing connection")
}

impl Chains {
    /// An empty set of runs.
    pub fn new() -> Chains {
        Chains::default()
    }

    /// Whether session `sid` has a run in progress.
    pub fn running(&self, sid: u64) -> bool {
        self.runs.contains_key(&sid)
    }

    /// Starts the chain `chain` for a query session `sid` just made.
    pub fn start(
        &mut self,
        sid: u64,
        chain: Vec<FilterId>,
        q: FilterQuery,
        facts: Facts,
        view: &View,
        out: &mut Vec<Step>,
    ) {
        debug_assert!(!self.runs.contains_key(&sid), "two queries at once");
        let run = Run {
            chain,
            pos: 0,
            phase: q.phase,
            param: q.param,
            rewrite: None,
            junk: false,
            edits: Vec::new(),
            facts,
        };
        self.runs.insert(sid, run);
        self.advance(sid, view, out);
    }

    /// Goes on after the filter the session waited for registered.
    pub fn resume(&mut self, sid: u64, view: &View, out: &mut Vec<Step>) {
        self.advance(sid, view, out);
    }

    /// The session ended: its run, if any, is dropped.
    pub fn end(&mut self, sid: u64) {
        self.runs.remove(&sid);
    }

    /// Filter `fid` failed: every run waiting on it ends, failed closed.
    pub fn fail_filter(&mut self, fid: FilterId, out: &mut Vec<Step>) {
        let mut sids: Vec<u64> = self
            .runs
            .iter()
            .filter(|(_, r)| r.chain.get(r.pos) == Some(&fid))
            .map(|(&s, _)| s)
            .collect();
        sids.sort_unstable();
        for sid in sids {
            if let Some(run) = self.runs.remove(&sid) {
                out.push(done(sid, unavailable(run.phase)));
            }
        }
    }

    /// An end-of-message edit from filter `fid` for session `sid`: kept for the end of
    /// the chain; it is still that filter's turn.
    pub fn on_edit(&mut self, fid: FilterId, sid: u64, e: Edit, out: &mut Vec<Step>) {
        let Some(run) = self.turn_of(fid, sid, out) else {
            return;
        };
        if run.phase != Phase::Eom {
            return out.push(fail(fid, "answer out of place".into()));
        }
        run.edits.push(e);
    }

    /// The run of session `sid` when it is filter `fid`'s turn. `None` when the session
    /// left meanwhile (a late answer is nothing), or, with a [`Step::Fail`], when it is
    /// another filter's turn.
    fn turn_of(&mut self, fid: FilterId, sid: u64, out: &mut Vec<Step>) -> Option<&mut Run> {
        let run = self.runs.get_mut(&sid)?;
        if run.chain.get(run.pos) != Some(&fid) {
            out.push(fail(
                fid,
                format!("answered session {sid:016x} out of turn"),
            ));
            return None;
        }
        Some(run)
    }

    /// A decision of filter `fid` for session `sid`.
    pub fn on_decision(
        &mut self,
        fid: FilterId,
        sid: u64,
        d: Decision,
        view: &View,
        out: &mut Vec<Step>,
    ) {
        let Some(run) = self.turn_of(fid, sid, out) else {
            return;
        };
        let phase = run.phase;
        let name = view.cfg.filters.get(fid).map_or("?", |f| f.name.as_str());
        let invalid = |code, text: &str| {
            log::warn!(
                "{sid:016x} filter {name} sent an invalid reply {code} {text:?}: 421 instead"
            );
            FilterVerdict::Disconnect(invalid_reply())
        };
        let verdict = match d {
            Decision::Proceed => None,
            Decision::Junk => {
                run.junk = true;
                None
            }
            Decision::Rewrite(v) => {
                if !matches!(phase, Phase::Helo | Phase::Ehlo | Phase::Mail | Phase::Rcpt)
                    || v.is_empty()
                    || v.len() > 255
                    || v.bytes().any(|b| b.is_ascii_control())
                {
                    return out.push(fail(fid, "invalid rewrite".into()));
                }
                run.param = v.clone();
                run.rewrite = Some(v);
                None
            }
            // An invalid reply closes the session, whatever the filter meant.
            Decision::Reject(code, text) => Some(
                filter_reply(code, &text)
                    .map_or_else(|| invalid(code, &text), FilterVerdict::Reject),
            ),
            Decision::Tempfail(text) => {
                let clean: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
                let text = match clean.is_empty() {
                    true => "Temporary failure, try again later".to_string(),
                    false => clean,
                };
                Some(match phase {
                    Phase::Connect => FilterVerdict::Disconnect(Reply::new(421, "4.7.0", text)),
                    // RFC 4954 §6: a temporary authentication failure.
                    Phase::Auth { .. } => FilterVerdict::Reject(Reply::new(454, "4.7.0", text)),
                    _ => FilterVerdict::Reject(Reply::new(451, "4.7.0", text)),
                })
            }
            Decision::Disconnect(code, text) => Some(
                filter_reply(code, &text)
                    .map_or_else(|| invalid(code, &text), FilterVerdict::Disconnect),
            ),
            Decision::Discard if phase == Phase::Eom => Some(FilterVerdict::Discard),
            Decision::Discard => return out.push(fail(fid, "answer out of place".into())),
        };
        match verdict {
            Some(v) => {
                self.runs.remove(&sid);
                out.push(done(sid, v));
            }
            None => {
                run.pos += 1;
                self.advance(sid, view, out);
            }
        }
    }

    /// Moves a run forward until it waits on a filter process or ends.
    fn advance(&mut self, sid: u64, view: &View, out: &mut Vec<Step>) {
        let (cfg, state) = (view.cfg, view.state);
        loop {
            let Some(run) = self.runs.get_mut(&sid) else {
                return;
            };
            let ev = run.phase.event();
            let Some(&fid) = run.chain.get(run.pos) else {
                let Some(run) = self.runs.remove(&sid) else {
                    return;
                };
                return out.push(finish(sid, run, state));
            };
            match cfg.filters.get(fid).map(|f| &f.kind) {
                Some(FilterKind::Builtin(b)) => {
                    run.pos += 1;
                    if b.phase != ev {
                        continue;
                    }
                    let holds = b
                        .checks
                        .iter()
                        .all(|(neg, c)| check(cfg, c, &run.facts, run.phase, &run.param) != *neg);
                    let v = match (holds, &b.decision) {
                        (false, _) => continue,
                        (true, BuiltinDecision::Bypass) => {
                            run.pos = run.chain.len();
                            continue;
                        }
                        (true, BuiltinDecision::Junk) => {
                            run.junk = true;
                            continue;
                        }
                        (true, BuiltinDecision::Rewrite(v)) => {
                            run.param = v.clone();
                            run.rewrite = Some(v.clone());
                            continue;
                        }
                        (true, BuiltinDecision::Reject(t)) => {
                            FilterVerdict::Reject(config_reply(t))
                        }
                        (true, BuiltinDecision::Disconnect(t)) => {
                            FilterVerdict::Disconnect(config_reply(t))
                        }
                    };
                    self.runs.remove(&sid);
                    return out.push(done(sid, v));
                }
                Some(FilterKind::Proc { .. }) => match state(fid) {
                    ProcState::Ready { hooks } if hooks & ev == 0 => run.pos += 1,
                    ProcState::Ready { .. } => {
                        let event = event_of(run);
                        return out.push(Step::Ask { fid, sid, event });
                    }
                    ProcState::Registering => {
                        return out.push(Step::AwaitRegistration { fid, sid });
                    }
                    ProcState::Down => {
                        let name = cfg.filters.get(fid).map_or("?", |f| f.name.as_str());
                        log::warn!("{sid:016x} filter {name} is not running: failing the command");
                        let phase = run.phase;
                        self.runs.remove(&sid);
                        return out.push(done(sid, unavailable(phase)));
                    }
                },
                _ => run.pos += 1,
            }
        }
    }
}

fn done(sid: u64, verdict: FilterVerdict) -> Step {
    Step::Done(Decided {
        sid,
        verdict,
        edits: Vec::new(),
        data_chain: Vec::new(),
    })
}

fn fail(fid: FilterId, why: String) -> Step {
    Step::Fail { fid, why }
}

/// The end of a run that went through the whole chain: go on, with what the chain
/// gathered; after DATA, the message's lines go through the filters that asked for them.
fn finish(sid: u64, run: Run, state: &dyn Fn(FilterId) -> ProcState) -> Step {
    let data_chain = match run.phase {
        Phase::Data => run
            .chain
            .iter()
            .copied()
            .filter(|&f| matches!(state(f), ProcState::Ready { hooks } if hooks & event::DATA_LINES != 0))
            .collect(),
        _ => Vec::new(),
    };
    Step::Done(Decided {
        sid,
        verdict: FilterVerdict::Proceed {
            rewrite: run.rewrite,
            junk: run.junk,
        },
        edits: run.edits,
        data_chain,
    })
}

/// The protocol event of a run's query.
fn event_of(run: &Run) -> Event {
    match run.phase {
        Phase::Connect => Event::Connect(
            run.facts.local.clone(),
            run.facts.remote.clone(),
            run.facts.hostname.clone().unwrap_or_default(),
        ),
        Phase::Helo => Event::Helo(run.param.clone()),
        Phase::Ehlo => Event::Ehlo(run.param.clone()),
        Phase::Auth { mechanism } => Event::Auth(mechanism.to_string(), run.param.clone()),
        Phase::Mail => Event::Mail(run.param.clone()),
        Phase::Rcpt => Event::Rcpt(run.param.clone()),
        Phase::Data => Event::Data,
        Phase::Eom => Event::Eom(run.param.parse().unwrap_or(0)),
    }
}

/// Whether a built-in check holds; `param` is the phase's own value (the sender being
/// given at MAIL, the recipient at RCPT).
fn check(cfg: &Config, c: &Check, f: &Facts, phase: Phase, param: &str) -> bool {
    let m = |m: &Matcher, subject: &str, test: &dyn Fn(&str) -> bool| {
        m.holds(&cfg.tables, subject, test)
    };
    let split = |a: &str| -> (String, String) {
        match a.rsplit_once('@') {
            Some((l, d)) => (l.to_string(), d.to_string()),
            None => (a.to_string(), String::new()),
        }
    };
    match c {
        Check::Rdns(None) => f.hostname.is_some(),
        Check::Rdns(Some(x)) => f
            .hostname
            .as_deref()
            .is_some_and(|h| m(x, h, &|p| domain_matches(p, h))),
        Check::Fcrdns => f.fcrdns,
        Check::Src(x) => f
            .addr
            .is_some_and(|ip| m(x, &ip.to_string(), &|p| ip_matches(p, ip))),
        Check::Helo(x) => {
            let helo = match phase {
                Phase::Helo | Phase::Ehlo => param,
                _ => &f.helo,
            };
            m(x, helo, &|p| domain_matches(p, helo))
        }
        Check::MailFrom(x) => {
            let sender = if phase == Phase::Mail {
                param
            } else {
                &f.sender
            };
            let (l, d) = split(sender);
            m(x, sender, &|p| address_matches(p, &l, &d))
        }
        Check::RcptTo(x) => {
            if phase != Phase::Rcpt {
                return false;
            }
            let (l, d) = split(param);
            m(x, param, &|p| address_matches(p, &l, &d))
        }
        Check::Auth(x) => f.auth.as_deref().is_some_and(|u| {
            x.as_ref()
                .is_none_or(|x| m(x, u, &|p| p.eq_ignore_ascii_case(u)))
        }),
    }
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
