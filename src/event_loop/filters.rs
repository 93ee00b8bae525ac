//! Filter chains in the loop: a session's query goes through each filter of its chain
//! in order; the first refusal wins; a filter that is down or late fails the sessions
//! waiting on it (fail closed) and is restarted by the parent.

use super::{Entry, Server};
use crate::config::{BuiltinDecision, Check, FilterKind, Matcher};
use crate::filter::pipe::{Answer, Fit, Lines, PipeState, OUT_DATA_MAX};
use crate::smtp::conn::Report;
use crate::smtp::reply::Reply;
use crate::smtp::session::{FilterQuery, FilterVerdict, Phase};
use crate::table::{address_matches, domain_matches, ip_matches};
use smtpd_filter::codec::{event, Frame};
use std::time::Instant;

/// A session's progress through its chain for one query.
#[derive(Debug)]
pub(super) struct ChainRun {
    key: usize,
    gen: u64,
    chain: Vec<usize>,
    pos: usize,
    phase: Phase,
    param: String,
    rewrite: Option<String>,
    junk: bool,
    /// End-of-message edits gathered from the chain, in order.
    edits: Vec<crate::filter::pipe::Edit>,
}

impl ChainRun {
    /// Whether the run waits on filter `fid`.
    pub(super) fn waits_on(&self, fid: usize) -> bool {
        self.chain.get(self.pos) == Some(&fid)
    }

    /// The phase of the query.
    pub(super) fn phase(&self) -> Phase {
        self.phase
    }
}

/// Facts about a session that built-in filters check.
struct Facts {
    addr: Option<std::net::IpAddr>,
    helo: String,
    sender: String,
    hostname: Option<String>,
    fcrdns: bool,
}

impl Server {
    /// Events a listener's chain may want to decide (every answerable one when the
    /// chain has a filter process, whose registration is not known in advance).
    pub(super) fn chain_hooks(&self, head: Option<usize>) -> (Vec<usize>, u32) {
        let Some(head) = head else {
            return (Vec::new(), 0);
        };
        let chain = self.cfg.filter_chain(head);
        let mut hooks = 0;
        for &id in &chain {
            match &self.cfg.filters[id].kind {
                FilterKind::Proc { .. } => hooks |= event::ANSWERED,
                FilterKind::Builtin(b) => hooks |= b.phase,
                FilterKind::Chain(_) => {}
            }
        }
        (chain, hooks)
    }

    /// Starts the chain for a query a session just made.
    pub(super) fn start_chain(&mut self, key: usize, q: FilterQuery, now: Instant) {
        let Some(Entry::Smtp(conn)) = self.slab.get(key) else {
            return;
        };
        let (sid, gen, chain) = (conn.id(), conn.gen, conn.chain.clone());
        self.chains.insert(
            sid,
            ChainRun {
                key,
                gen,
                chain,
                pos: 0,
                phase: q.phase,
                param: q.param,
                rewrite: None,
                junk: false,
                edits: Vec::new(),
            },
        );
        self.advance(sid, now);
    }

    fn facts(&self, key: usize) -> Facts {
        match self.slab.get(key) {
            Some(Entry::Smtp(c)) => {
                let (addr, helo, sender) = c.facts();
                Facts {
                    addr,
                    helo,
                    sender,
                    hostname: c.hostname().map(str::to_string),
                    fcrdns: c.fcrdns,
                }
            }
            _ => Facts {
                addr: None,
                helo: String::new(),
                sender: String::new(),
                hostname: None,
                fcrdns: false,
            },
        }
    }

    /// Moves a chain run forward until it waits on a filter process or ends.
    pub(super) fn advance(&mut self, sid: u64, now: Instant) {
        loop {
            let Some(run) = self.chains.get(&sid) else {
                return;
            };
            let ev = run.phase.event();
            let Some(&fid) = run.chain.get(run.pos) else {
                let run = self.chains.remove(&sid);
                if let Some(mut run) = run {
                    if run.phase == Phase::Eom && !run.edits.is_empty() {
                        let edits = std::mem::take(&mut run.edits);
                        let r = self
                            .with_conn(run.key, Some(run.gen), |c, _| c.take_eom_edits(edits))
                            .unwrap_or(Ok(()));
                        if let Err(e) = r {
                            log::warn!("{sid:016x} filter edit refused: {e}");
                            let v = FilterVerdict::Reject(Reply::new(
                                451,
                                "4.3.0",
                                "Temporary failure in a filter, try again later",
                            ));
                            return self.deliver_verdict(run.key, run.gen, v, now);
                        }
                    }
                    if run.phase == Phase::Data {
                        // The message's lines go through the filters that asked for them.
                        let data_chain: Vec<usize> = run
                            .chain
                            .iter()
                            .copied()
                            .filter(|&f| {
                                self.pipe(f).is_some_and(|p| {
                                    p.hooks().is_some_and(|h| h & event::DATA_LINES != 0)
                                })
                            })
                            .collect();
                        for &f in &data_chain {
                            if let Some(p) = self.pipe_mut(f) {
                                p.start_lines(sid);
                            }
                        }
                        if let Some(Entry::Smtp(c)) = self.slab.get_mut(run.key) {
                            c.data_chain = data_chain;
                        }
                    }
                    let v = FilterVerdict::Proceed {
                        rewrite: run.rewrite,
                        junk: run.junk,
                    };
                    self.deliver_verdict(run.key, run.gen, v, now);
                }
                return;
            };
            match self.cfg.filters.get(fid).map(|f| f.kind.clone()) {
                Some(FilterKind::Builtin(b)) => {
                    let mut decided = None;
                    if b.phase == ev {
                        let facts = self.facts(run.key);
                        let holds = b
                            .checks
                            .iter()
                            .all(|(neg, c)| self.check(c, &facts, run.phase, &run.param) != *neg);
                        if holds {
                            decided = Some(b.decision.clone());
                        }
                    }
                    let Some(run) = self.chains.get_mut(&sid) else {
                        return;
                    };
                    run.pos += 1;
                    match decided {
                        None => {}
                        Some(BuiltinDecision::Bypass) => run.pos = run.chain.len(),
                        Some(BuiltinDecision::Junk) => run.junk = true,
                        Some(BuiltinDecision::Rewrite(v)) => {
                            run.param = v.clone();
                            run.rewrite = Some(v);
                        }
                        Some(BuiltinDecision::Reject(t)) => {
                            return self.end_chain(
                                sid,
                                FilterVerdict::Reject(config_reply(&t)),
                                now,
                            )
                        }
                        Some(BuiltinDecision::Disconnect(t)) => {
                            return self.end_chain(
                                sid,
                                FilterVerdict::Disconnect(config_reply(&t)),
                                now,
                            )
                        }
                    }
                }
                Some(FilterKind::Proc { .. }) => {
                    let pipe_key = self.pipes.get(fid).copied().flatten();
                    let state = match pipe_key.and_then(|k| self.slab.get(k)) {
                        Some(Entry::Filter(p)) => p.state,
                        _ => PipeState::Dead,
                    };
                    match state {
                        PipeState::Ready { hooks, .. } if hooks & ev == 0 => {
                            if let Some(run) = self.chains.get_mut(&sid) {
                                run.pos += 1;
                            }
                        }
                        PipeState::Ready { .. } => {
                            let frame_owned = self.event_frame(sid);
                            if let (Some(k), Some(f)) = (pipe_key, frame_owned) {
                                if let Some(Entry::Filter(p)) = self.slab.get_mut(k) {
                                    p.ask(sid, &f.as_frame(), now);
                                }
                            }
                            return;
                        }
                        PipeState::Handshake => {
                            // Not registered yet: wait for it, within its deadline.
                            if let Some(Entry::Filter(p)) =
                                pipe_key.and_then(|k| self.slab.get_mut(k))
                            {
                                p.waiting.insert(sid, now + p.timeout);
                            }
                            return;
                        }
                        PipeState::Dead => {
                            let name = self.cfg.filters[fid].name.clone();
                            log::warn!(
                                "{sid:016x} filter {name} is not running: failing the command"
                            );
                            let v = unavailable(self.chains.get(&sid).map(|r| r.phase));
                            return self.end_chain(sid, v, now);
                        }
                    }
                }
                _ => {
                    if let Some(run) = self.chains.get_mut(&sid) {
                        run.pos += 1;
                    }
                }
            }
        }
    }

    /// Whether a built-in check holds; `param` is the phase's own value (the sender
    /// being given at MAIL, the recipient at RCPT).
    fn check(&self, c: &Check, f: &Facts, phase: Phase, param: &str) -> bool {
        let m = |m: &Matcher, test: &dyn Fn(&str) -> bool| match m {
            Matcher::Value(v) => test(v),
            Matcher::Table(t) => self.cfg.tables[*t].keys().any(test),
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
                .is_some_and(|h| m(x, &|p| domain_matches(p, h))),
            Check::Fcrdns => f.fcrdns,
            Check::Src(x) => f.addr.is_some_and(|ip| m(x, &|p| ip_matches(p, ip))),
            Check::Helo(x) => {
                let helo = if matches!(phase, Phase::Helo | Phase::Ehlo) {
                    param
                } else {
                    &f.helo
                };
                m(x, &|p| domain_matches(p, helo))
            }
            Check::MailFrom(x) => {
                let sender = if phase == Phase::Mail {
                    param
                } else {
                    &f.sender
                };
                let (l, d) = split(sender);
                m(x, &|p| address_matches(p, &l, &d))
            }
            Check::RcptTo(x) => {
                if phase != Phase::Rcpt {
                    return false;
                }
                let (l, d) = split(param);
                m(x, &|p| address_matches(p, &l, &d))
            }
        }
    }

    /// The protocol event for a run's current query.
    fn event_frame(&self, sid: u64) -> Option<OwnedEvent> {
        let run = self.chains.get(&sid)?;
        Some(match run.phase {
            Phase::Connect => {
                let (local, remote, host) = match self.slab.get(run.key) {
                    Some(Entry::Smtp(c)) => {
                        let (l, r) = c.addresses();
                        (l, r, c.hostname().unwrap_or("").to_string())
                    }
                    _ => (String::new(), String::new(), String::new()),
                };
                OwnedEvent::Connect(local, remote, host)
            }
            Phase::Helo => OwnedEvent::Helo(run.param.clone()),
            Phase::Ehlo => OwnedEvent::Ehlo(run.param.clone()),
            Phase::Mail => OwnedEvent::Mail(run.param.clone()),
            Phase::Rcpt => OwnedEvent::Rcpt(run.param.clone()),
            Phase::Data => OwnedEvent::Data,
            Phase::Eom => OwnedEvent::Eom(run.param.parse().unwrap_or(0)),
        })
    }

    pub(super) fn end_chain(&mut self, sid: u64, v: FilterVerdict, now: Instant) {
        if let Some(run) = self.chains.remove(&sid) {
            self.deliver_verdict(run.key, run.gen, v, now);
        }
    }

    fn deliver_verdict(&mut self, key: usize, gen: u64, v: FilterVerdict, now: Instant) {
        self.with_conn(key, Some(gen), |conn, ctx| {
            conn.on_filter_verdict(ctx, v, now)
        });
        self.after_conn(key, now);
    }

    /// Whether filter `fid` may observe protocol lines or rollbacks (true while it has
    /// not registered yet).
    pub(super) fn filter_observes(&self, fid: usize) -> bool {
        match self.cfg.filters.get(fid).map(|f| &f.kind) {
            Some(FilterKind::Proc { .. }) => match self.pipe(fid).map(|p| p.state) {
                Some(PipeState::Ready { reports, .. }) => {
                    reports & (event::PROTOCOL | event::ROLLBACK) != 0
                }
                _ => true,
            },
            _ => false,
        }
    }

    /// Starts a chain when the session made a new query, and sends the message lines
    /// it gathered to its first data filter.
    pub(super) fn after_conn(&mut self, key: usize, now: Instant) {
        let congested = self.data_chain_congested(key);
        let (q, batch, sid, gen, first, reports) = match self.slab.get_mut(key) {
            Some(Entry::Smtp(c)) => (
                c.take_filter_query(),
                if congested { None } else { c.take_data_batch() },
                c.id(),
                c.gen,
                c.data_chain.first().copied(),
                c.take_reports(),
            ),
            _ => return,
        };
        if congested && !self.held.contains(&(key, gen)) {
            // Its lines wait (and it stops reading) until the filter drains.
            self.held.push((key, gen));
        }
        for r in reports {
            match r {
                Report::Protocol(dir, line) => {
                    self.report(key, &Frame::Protocol { dir, line: &line })
                }
                Report::Rollback => self.report(key, &Frame::Rollback),
            }
        }
        if let (Some((lines, end)), Some(fid)) = (batch, first) {
            self.send_lines(fid, sid, &lines, end, now);
            if let Some(Entry::Smtp(c)) = self.slab.get_mut(key) {
                c.return_data_batch(lines);
            }
        }
        if let Some(q) = q {
            self.start_chain(key, q, now);
        }
    }

    /// Sends lines (and the end marker) of a session's message to a data filter.
    fn send_lines(&mut self, fid: usize, sid: u64, lines: &Lines, end: bool, now: Instant) {
        let Some(p) = self.pipe_mut(fid) else {
            return self.data_failed(sid, now);
        };
        if p.hooks().is_none() {
            return self.data_failed(sid, now);
        }
        // Frames stay well under the largest frame: at most 1024 lines or 256 KiB each.
        let mut refs: Vec<&[u8]> = Vec::new();
        let mut bytes = 0;
        for l in lines.iter() {
            if refs.len() == 1024 || bytes + l.len() > 256 * 1024 {
                p.pass_lines(sid, &Frame::DataLines(std::mem::take(&mut refs)));
                bytes = 0;
            }
            bytes += l.len() + 2;
            refs.push(l);
        }
        if !refs.is_empty() {
            p.pass_lines(sid, &Frame::DataLines(refs));
        }
        if end {
            p.ask_end(sid, now);
        }
    }

    /// A session's data filter failed: its message will be refused.
    pub(super) fn data_failed(&mut self, sid: u64, now: Instant) {
        let Some(&(key, gen)) = self.session_keys.get(&sid) else {
            return;
        };
        self.with_conn(key, Some(gen), |conn, ctx| {
            conn.on_data_filter_failed(ctx, now)
        });
        self.after_conn(key, now);
    }

    /// Lines (or the end) from data filter `fid`: on to the next one, or to the spool.
    fn on_data_answer(&mut self, fid: usize, sid: u64, lines: Option<Lines>, now: Instant) {
        // Beyond twice what a message may hold the filter is in a loop (a message that
        // merely grew past the limit is refused with 552 by `store_filtered`).
        let cap = self.cfg.smtp.max_message_size.saturating_mul(2);
        if self.pipe(fid).is_some_and(|p| p.returned(sid) > cap) {
            let why = format!("returned more than {cap} octets for one message");
            return self.filter_failed(fid, &why, now);
        }
        let Some(&(key, gen)) = self.session_keys.get(&sid) else {
            return;
        };
        let next = match self.slab.get(key) {
            Some(Entry::Smtp(c)) if c.gen == gen => {
                match c.data_chain.iter().position(|&f| f == fid) {
                    Some(i) => c.data_chain.get(i + 1).copied(),
                    None => return, // the message already failed
                }
            }
            _ => return,
        };
        // The text line limit, when one is set, holds for what the filters return too.
        let max_line = match self.cfg.smtp.max_text_line {
            0 => usize::MAX,
            n => n - 2,
        };
        if let Some(lines) = &lines {
            if lines
                .iter()
                .any(|l| l.len() > max_line || memchr::memchr3(b'\r', b'\n', 0, l).is_some())
            {
                return self.filter_failed(
                    fid,
                    "sent a message line with CR, LF, NUL or over the text line limit",
                    now,
                );
            }
        }
        match (next, lines) {
            (Some(n), Some(lines)) => {
                // The next filter does not keep up: the message fails rather than
                // queue without bound. (The client is held back while a filter of the
                // chain is backed up, but a filter may return a whole message at once.)
                let behind = self.pipe(n).map_or(0, |p| p.unsent());
                if behind > OUT_DATA_MAX {
                    let name = &self.cfg.filters[n].name;
                    log::warn!("{sid:016x} filter {name} has {behind} octets it has not read: message refused");
                    return self.data_failed(sid, now);
                }
                self.send_lines(n, sid, &lines, false, now)
            }
            (Some(n), None) => self.send_lines(n, sid, &Lines::default(), true, now),
            (None, lines) => {
                let max = self.cfg.smtp.max_message_size;
                self.with_conn(key, Some(gen), |conn, ctx| match lines {
                    Some(l) => conn.store_filtered(ctx.spool, &l, max),
                    None => conn.on_filtered_end(ctx, now),
                });
                self.after_conn(key, now);
            }
        }
    }

    /// An answer of filter `fid` for session `sid`: ignored (and counted) when nobody
    /// asked for it, else taken by the session's chain or message.
    pub(super) fn on_answer(&mut self, fid: usize, sid: u64, a: Answer, now: Instant) {
        let Some(p) = self.pipe_mut(fid) else {
            return;
        };
        match p.settle(sid, &a, now) {
            Fit::Asked => {}
            Fit::Gone => return,
            Fit::Unrequested => {
                if let Some(n) = p.unrequested(now) {
                    let why = format!(
                        "sent {n} answers nobody asked for within {} s (the last for session {sid:016x})",
                        p.unrequested_window().as_secs()
                    );
                    self.filter_failed(fid, &why, now);
                }
                return;
            }
        }
        match a {
            Answer::DataLines(lines) => return self.on_data_answer(fid, sid, Some(lines), now),
            Answer::DataEnd => return self.on_data_answer(fid, sid, None, now),
            _ => {}
        }
        let Some(run) = self.chains.get_mut(&sid) else {
            return; // the session left meanwhile
        };
        if run.chain.get(run.pos) != Some(&fid) {
            let why = format!("answered session {sid:016x} out of turn");
            return self.filter_failed(fid, &why, now);
        }
        let phase = run.phase;
        match a {
            Answer::Proceed => run.pos += 1,
            Answer::Junk => {
                run.junk = true;
                run.pos += 1;
            }
            Answer::Rewrite(v) => {
                if !matches!(phase, Phase::Helo | Phase::Ehlo | Phase::Mail | Phase::Rcpt)
                    || v.is_empty()
                    || v.len() > 255
                    || v.bytes().any(|b| b.is_ascii_control())
                {
                    return self.filter_failed(fid, "invalid rewrite", now);
                }
                run.param = v.clone();
                run.rewrite = Some(v);
                run.pos += 1;
            }
            Answer::Reject(code, text) => {
                let v = match filter_reply(code, &text) {
                    Some(r) => FilterVerdict::Reject(r),
                    None => {
                        let name = &self.cfg.filters[fid].name;
                        log::warn!("{sid:016x} filter {name} sent an invalid reply {code} {text:?}: 421 instead");
                        FilterVerdict::Disconnect(Reply::new(
                            421,
                            "4.3.0",
                            "Internal error, closing connection",
                        ))
                    }
                };
                return self.end_chain(sid, v, now);
            }
            Answer::Tempfail(text) => {
                let clean: String = text.chars().filter(|c| !c.is_control()).take(200).collect();
                let text = if clean.is_empty() {
                    "Temporary failure, try again later".to_string()
                } else {
                    clean
                };
                let v = if phase == Phase::Connect {
                    FilterVerdict::Disconnect(Reply::new(421, "4.7.0", text))
                } else {
                    FilterVerdict::Reject(Reply::new(451, "4.7.0", text))
                };
                return self.end_chain(sid, v, now);
            }
            Answer::Disconnect(code, text) => {
                let r = filter_reply(code, &text).unwrap_or_else(|| {
                    let name = &self.cfg.filters[fid].name;
                    log::warn!("{sid:016x} filter {name} sent an invalid reply {code} {text:?}: 421 instead");
                    Reply::new(421, "4.3.0", "Internal error, closing connection")
                });
                return self.end_chain(sid, FilterVerdict::Disconnect(r), now);
            }
            Answer::Edit(e) if phase == Phase::Eom => {
                // Edits come before the filter's decision; it is still this one's turn
                // (the pipe still waits, with a new deadline).
                run.edits.push(e);
                return;
            }
            Answer::Discard if phase == Phase::Eom => {
                return self.end_chain(sid, FilterVerdict::Discard, now);
            }
            Answer::DataLines(_) | Answer::DataEnd | Answer::Edit(_) | Answer::Discard => {
                return self.filter_failed(fid, "answer out of place", now);
            }
        }
        self.advance(sid, now);
    }
}

/// An event frame with owned strings.
enum OwnedEvent {
    Connect(String, String, String),
    Helo(String),
    Ehlo(String),
    Mail(String),
    Rcpt(String),
    Data,
    Eom(u64),
}

impl OwnedEvent {
    fn as_frame(&self) -> Frame<'_> {
        match self {
            OwnedEvent::Connect(l, r, h) => Frame::Connect {
                local: l.as_bytes(),
                remote: r.as_bytes(),
                hostname: h.as_bytes(),
            },
            OwnedEvent::Helo(s) => Frame::Helo(s.as_bytes()),
            OwnedEvent::Ehlo(s) => Frame::Ehlo(s.as_bytes()),
            OwnedEvent::Mail(s) => Frame::Mail(s.as_bytes()),
            OwnedEvent::Rcpt(s) => Frame::Rcpt(s.as_bytes()),
            OwnedEvent::Data => Frame::Data,
            OwnedEvent::Eom(n) => Frame::Eom(*n),
        }
    }
}

/// The verdict when a filter is down: the session ends before it is identified, else
/// the command is deferred.
pub(super) fn unavailable(phase: Option<Phase>) -> FilterVerdict {
    match phase {
        Some(Phase::Connect | Phase::Helo | Phase::Ehlo) | None => {
            FilterVerdict::Disconnect(Reply::new(
                421,
                "4.3.0",
                "Service temporarily unavailable, closing connection",
            ))
        }
        Some(_) => FilterVerdict::Reject(Reply::new(
            451,
            "4.3.0",
            "Temporary failure in a filter, try again later",
        )),
    }
}

/// A filter's reply: a 4xx or 5xx code and printable text; else None.
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
