//! The filter's machine: frames from the daemon in, frames to it and jobs out. It
//! knows which sessions are internal (the local socket, an internal network, or
//! authenticated), passes every message line back at once (the daemon's own frame,
//! copied), and hashes the body as the lines go by; the end of a message becomes a
//! job, which the signing or the verifying threads finish (`jobs.rs`). No I/O.

use crate::canon::{BodyHash, Canon};
use crate::config::Config;
use crate::header::{Header, HeaderError};
use crate::sign::{self, Unsigned};
use crate::tags::{Signature, Unusable};
use crate::verify::{self, Verdict};
use smtpd_filter::codec::{self, event, Frame};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// The field the results are written in.
pub const RESULTS_FIELD: &str = "Authentication-Results";

/// A signature of a message to verify.
#[derive(Debug)]
pub enum SigItem {
    /// It could not be read.
    Unusable(Box<Unusable>),
    /// Read, and its body hashed.
    Ready {
        /// Its field in the header.
        field: usize,
        /// Its tags.
        sig: Box<Signature>,
        /// The body's hash as it says to compute it.
        body_hash: Vec<u8>,
        /// The canonical body's length.
        body_len: u64,
    },
}

/// What is left to do at the end of a message, off the reading thread.
#[derive(Debug)]
pub enum Job {
    /// Sign (the costly part), then add the fields and let the message through.
    Sign {
        /// The session.
        session: u64,
        /// One signature per key.
        sigs: Vec<Unsigned>,
    },
    /// Look the keys up, verify, then add the results and let the message through.
    Verify {
        /// The session.
        session: u64,
        /// The header of the message.
        header: Header,
        /// Its signatures, in order.
        sigs: Vec<SigItem>,
        /// The Authentication-Results fields of ours to delete, by their number among
        /// those fields (1 = first), last first.
        delete: Vec<u32>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    Sign,
    Verify,
    Pass,
}

/// A DKIM-Signature field read, or why it could not be.
type Parsed = Result<Box<Signature>, Box<Unusable>>;

/// Message being received.
struct Message {
    plan: Plan,
    header: Header,
    in_body: bool,
    broken: Option<HeaderError>,
    /// Body hashes by (canonicalization, l=).
    bodies: Vec<(Canon, Option<u64>, BodyHash)>,
    /// Verify: (field, tags or why not, index in `bodies`).
    sigs: Vec<(usize, Parsed, usize)>,
    /// Sign: the domain whose keys sign.
    domain: Option<String>,
}

#[derive(Default)]
struct Session {
    internal: bool,
    msg: Option<Message>,
}

/// The state of every session.
pub struct Machine {
    cfg: Arc<Config>,
    sessions: HashMap<u64, Session>,
}

/// Appends an edit or an answer.
fn put(session: u64, f: &Frame<'_>, out: &mut Vec<u8>) {
    codec::encode(session, f, out);
}

/// Appends the results edits and PROCEED.
pub fn answer_results(session: u64, value: &str, delete: &[u32], out: &mut Vec<u8>) {
    for &index in delete {
        let f = Frame::ChangeHeader {
            index,
            name: RESULTS_FIELD.as_bytes(),
            value: b"",
        };
        put(session, &f, out);
    }
    let f = Frame::InsertHeader {
        index: 0,
        name: RESULTS_FIELD.as_bytes(),
        value: value.as_bytes(),
    };
    put(session, &f, out);
    put(session, &Frame::Proceed, out);
}

/// The address of a CONNECT's `remote` (`192.0.2.1:25`, `[2001:db8::1]:25`).
fn remote_ip(remote: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(remote).ok()?;
    let host = s.rsplit_once(':').map_or(s, |(h, _)| h);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

impl Machine {
    /// A machine with no session.
    pub fn new(cfg: Arc<Config>) -> Machine {
        Machine {
            cfg,
            sessions: HashMap::new(),
        }
    }

    /// The events to register: (hooks, reports). CONNECT and AUTH_RESULT only when
    /// they decide something.
    pub fn events(&self) -> (u32, u32) {
        let mut hooks = event::DATA_LINES | event::EOM;
        let mut reports = event::ROLLBACK | event::DISCONNECT;
        if self.cfg.signs() && !self.cfg.sign_all {
            hooks |= event::CONNECT;
            reports |= event::AUTH_RESULT;
        }
        (hooks, reports)
    }

    /// Sessions known (tests).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Handles one frame of the daemon, `raw` its bytes: answers and lines go to
    /// `out`; the end of a message may give a job. `now` is the time in seconds.
    pub fn frame(
        &mut self,
        sid: u64,
        f: &Frame<'_>,
        raw: &[u8],
        now: u64,
        out: &mut Vec<u8>,
    ) -> Option<Job> {
        match f {
            Frame::Connect { local, remote, .. } => {
                let internal = self.cfg.sign_all
                    || *local == b"local"
                    || *remote == b"local"
                    || remote_ip(remote)
                        .is_some_and(|ip| self.cfg.internal.iter().any(|n| n.contains(ip)));
                self.sessions.insert(
                    sid,
                    Session {
                        internal,
                        msg: None,
                    },
                );
                put(sid, &Frame::Proceed, out);
            }
            Frame::AuthResult { result, .. } if *result == b"ok" => {
                self.session(sid).internal = true;
            }
            Frame::DataLines(lines) => {
                out.extend_from_slice(raw);
                let cfg = self.cfg.clone();
                let s = self.session(sid);
                let internal = s.internal;
                let msg = s.msg.get_or_insert_with(|| Message::new(&cfg, internal));
                for l in lines {
                    msg.line(&cfg, l, now);
                }
            }
            Frame::DataEnd => out.extend_from_slice(raw),
            Frame::Eom(_) => {
                let cfg = self.cfg.clone();
                let s = self.session(sid);
                let internal = s.internal;
                let msg = s.msg.take().unwrap_or_else(|| Message::new(&cfg, internal));
                return msg.end(&cfg, sid, now, out);
            }
            Frame::Rollback => {
                if let Some(s) = self.sessions.get_mut(&sid) {
                    s.msg = None;
                }
            }
            Frame::Disconnect => {
                self.sessions.remove(&sid);
            }
            // Events it did not register are let through, should they come.
            Frame::Helo(_)
            | Frame::Ehlo(_)
            | Frame::Starttls
            | Frame::Auth { .. }
            | Frame::Mail(_)
            | Frame::Rcpt(_)
            | Frame::Data => put(sid, &Frame::Proceed, out),
            _ => {}
        }
        None
    }

    /// A session, made when its CONNECT was not seen (the filter was restarted):
    /// internal only with `-a`.
    fn session(&mut self, sid: u64) -> &mut Session {
        let all = self.cfg.sign_all;
        self.sessions.entry(sid).or_insert_with(|| Session {
            internal: all,
            msg: None,
        })
    }
}

impl Message {
    fn new(cfg: &Config, internal: bool) -> Message {
        let plan = match (internal, cfg.signs(), cfg.verifies()) {
            (true, true, _) => Plan::Sign,
            (false, _, true) => Plan::Verify,
            _ => Plan::Pass,
        };
        Message {
            plan,
            header: Header::default(),
            in_body: false,
            broken: None,
            bodies: Vec::new(),
            sigs: Vec::new(),
            domain: None,
        }
    }

    fn line(&mut self, cfg: &Config, line: &[u8], now: u64) {
        if self.plan == Plan::Pass || self.broken.is_some() {
            return;
        }
        if self.in_body {
            for (_, _, b) in &mut self.bodies {
                b.line(line);
            }
        } else if line.is_empty() {
            self.end_header(cfg, now);
        } else if let Err(e) = self.header.push_line(line) {
            self.broken = Some(e);
        }
    }

    /// The header is whole: what to hash in the body.
    fn end_header(&mut self, cfg: &Config, now: u64) {
        self.in_body = true;
        match self.plan {
            Plan::Sign => match self.header.from_domain() {
                Some(d) if !cfg.keys_for(&d).is_empty() => {
                    let c = cfg.sign.body_canon;
                    self.bodies.push((c, None, BodyHash::new(c, None)));
                    self.domain = Some(d);
                }
                _ => self.plan = Plan::Pass,
            },
            Plan::Verify => {
                let fields: Vec<usize> = self
                    .header
                    .named("dkim-signature")
                    .take(cfg.max_signatures)
                    .collect();
                for i in fields {
                    let value = String::from_utf8_lossy(self.header.value(i));
                    match Signature::parse(&value, now) {
                        Ok(sig) => {
                            let key = (sig.body_canon, sig.length);
                            let at = match self.bodies.iter().position(|(c, l, _)| (*c, *l) == key)
                            {
                                Some(at) => at,
                                None => {
                                    self.bodies
                                        .push((key.0, key.1, BodyHash::new(key.0, key.1)));
                                    self.bodies.len() - 1
                                }
                            };
                            self.sigs.push((i, Ok(Box::new(sig)), at));
                        }
                        Err(u) => self.sigs.push((i, Err(u), 0)),
                    }
                }
            }
            Plan::Pass => {}
        }
    }

    fn end(mut self, cfg: &Config, sid: u64, now: u64, out: &mut Vec<u8>) -> Option<Job> {
        if !self.in_body && self.broken.is_none() && self.plan != Plan::Pass {
            self.end_header(cfg, now);
        }
        let delete = self.own_results(cfg);
        match (self.plan, self.broken) {
            (Plan::Pass, _) => put(sid, &Frame::Proceed, out),
            (Plan::Sign, Some(e)) => {
                eprintln!("{sid:016x} not signed: {}", why(e));
                put(sid, &Frame::Proceed, out);
            }
            (Plan::Verify, Some(e)) => {
                let v = Verdict {
                    outcome: verify::Outcome::PermError,
                    reason: Some(why(e).into()),
                    domain: None,
                    selector: None,
                    algorithm: None,
                    b_text: None,
                    identity: None,
                };
                answer_results(sid, &verify::results(&cfg.authserv_id, &[v]), &delete, out);
            }
            (Plan::Sign, None) => {
                let Some((_, _, body)) = self.bodies.pop() else {
                    put(sid, &Frame::Proceed, out);
                    return None;
                };
                let hash = body.finish().0;
                let domain = self.domain.as_deref().unwrap_or_default();
                let sigs = cfg
                    .keys_for(domain)
                    .iter()
                    .map(|k| sign::prepare(&self.header, hash.as_ref(), k, &cfg.sign, now))
                    .collect();
                return Some(Job::Sign { session: sid, sigs });
            }
            (Plan::Verify, None) => {
                if self.sigs.is_empty() {
                    answer_results(sid, &verify::results(&cfg.authserv_id, &[]), &delete, out);
                    return None;
                }
                let hashes: Vec<(Vec<u8>, u64)> = self
                    .bodies
                    .into_iter()
                    .map(|(_, _, b)| {
                        let (d, n) = b.finish();
                        (d.as_ref().to_vec(), n)
                    })
                    .collect();
                let sigs = self
                    .sigs
                    .into_iter()
                    .map(|(field, sig, at)| match sig {
                        Err(u) => SigItem::Unusable(u),
                        Ok(sig) => SigItem::Ready {
                            field,
                            sig,
                            body_hash: hashes[at].0.clone(),
                            body_len: hashes[at].1,
                        },
                    })
                    .collect();
                return Some(Job::Verify {
                    session: sid,
                    header: self.header,
                    sigs,
                    delete,
                });
            }
        }
        None
    }

    /// The Authentication-Results fields that claim to be ours (RFC 8601 §5: a
    /// forgery, to delete), by their number, last first.
    fn own_results(&self, cfg: &Config) -> Vec<u32> {
        if self.plan != Plan::Verify {
            return Vec::new();
        }
        let mut own: Vec<u32> = self
            .header
            .named("authentication-results")
            .enumerate()
            .filter(|&(_, i)| {
                verify::authserv_id_of(self.header.value(i)).eq_ignore_ascii_case(&cfg.authserv_id)
            })
            .map(|(n, _)| n as u32 + 1)
            .collect();
        own.reverse();
        own
    }
}

fn why(e: HeaderError) -> &'static str {
    match e {
        HeaderError::Malformed => "malformed header",
        HeaderError::TooLarge => "header too large",
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
