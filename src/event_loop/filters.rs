//! Filter chains in the loop: the routing around the pure chain machine
//! ([`crate::filter::chain`]). A session's query starts a run; the machine's steps are
//! carried out here, in a work list rather than by recursion: questions go to filter
//! pipes, verdicts to sessions, whose next query (a pipelined command) starts the next
//! run. Message lines go from the session through each data filter to the spool.

use super::{Endpoint, Server};
use crate::config::FilterKind;
use crate::filter::chain::{Chains, Decided, Facts, FilterId, ProcState, Step, View};
use crate::filter::phase::{FilterQuery, FilterVerdict, Phase};
use crate::filter::pipe::{Answer, Fit, Lines, PipeState, OUT_DATA_MAX};
use crate::filter::report::{Report, TextReport};
use crate::mail::reply::Reply;
use smtpd_filter::codec::event;
use std::collections::VecDeque;
use std::time::Instant;

/// How the chain machine sees filter process `fid`, from its pipe.
fn proc_state(pipes: &[Option<usize>], slab: &slab::Slab<Endpoint>, fid: FilterId) -> ProcState {
    match pipes.get(fid).copied().flatten().and_then(|k| slab.get(k)) {
        Some(Endpoint::Filter(p)) => match p.state {
            PipeState::Ready { hooks, .. } => ProcState::Ready { hooks },
            PipeState::Handshake => ProcState::Registering,
            PipeState::Dead => ProcState::Down,
        },
        _ => ProcState::Down,
    }
}

/// OpenSMTPD's name of a phase in its `filter-response` report.
fn response_phase(p: Phase) -> &'static str {
    match p {
        Phase::Connect => "connected",
        Phase::Helo => "helo",
        Phase::Ehlo => "ehlo",
        Phase::Auth { .. } => "auth",
        Phase::Mail => "mail-from",
        Phase::Rcpt => "rcpt-to",
        Phase::Data => "data",
        Phase::Eom => "commit",
    }
}

/// A verdict as OpenSMTPD's `filter-response` report gives it.
fn response(v: &FilterVerdict) -> String {
    match v {
        FilterVerdict::Proceed {
            rewrite: Some(r), ..
        } => format!("rewrite|{r}"),
        FilterVerdict::Proceed { junk: true, .. } => "junk".into(),
        FilterVerdict::Proceed { .. } | FilterVerdict::Discard => "proceed".into(),
        FilterVerdict::Reject(r) => format!("reject|{}", r.summary()),
        FilterVerdict::Disconnect(r) => format!("disconnect|{}", r.summary()),
    }
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

    /// What the chain needs to know of the session at `key` for a query of `phase`
    /// (the addresses only for CONNECT, which sends them).
    fn facts(&self, key: usize, phase: Phase) -> Facts {
        let Some(Endpoint::Smtp(c)) = self.slab.get(key) else {
            return Facts::default();
        };
        let (addr, helo, sender) = c.facts();
        let (local, remote) = match phase {
            Phase::Connect => c.addresses(),
            _ => (String::new(), String::new()),
        };
        Facts {
            addr,
            local,
            remote,
            hostname: c.hostname().map(str::to_string),
            fcrdns: c.fcrdns,
            helo,
            sender,
            auth: c.auth_user().map(str::to_string),
        }
    }

    /// Starts the chain for a query the session at `key` just made, and carries out
    /// what follows.
    pub(super) fn start_chain(&mut self, key: usize, q: FilterQuery, now: Instant) {
        let mut steps = Vec::new();
        self.start_run(key, q, &mut steps);
        self.run_steps(steps, now);
    }

    /// Starts a run of the session at `key`'s chain; its first steps go to `steps`.
    fn start_run(&mut self, key: usize, q: FilterQuery, steps: &mut Vec<Step>) {
        let Some(Endpoint::Smtp(conn)) = self.slab.get(key) else {
            return;
        };
        let (sid, chain) = (conn.id(), conn.filters.chain.clone());
        let facts = self.facts(key, q.phase);
        if q.phase == Phase::Connect {
            // OpenSMTPD's filters are told of the connection before its question.
            let r = Report::Text(TextReport::Connect {
                rdns: facts.hostname.clone(),
                fcrdns: facts.fcrdns,
                src: facts.remote.clone(),
                dest: facts.local.clone(),
            });
            self.report(key, &r);
        }
        self.with_chains(|chains, view| chains.start(sid, chain, q, facts, view, steps));
    }

    /// Runs `f` on the chain machine with its view of the configuration and pipes.
    fn with_chains<R>(&mut self, f: impl FnOnce(&mut Chains, &View) -> R) -> R {
        let Server {
            chains,
            cfg,
            pipes,
            slab,
            ..
        } = self;
        let state = |fid| proc_state(pipes, slab, fid);
        f(chains, &View { cfg, state: &state })
    }

    /// Goes on with session `sid`'s run after the filter it waited for registered.
    pub(super) fn resume_chain(&mut self, sid: u64, now: Instant) {
        let mut steps = Vec::new();
        self.with_chains(|chains, view| chains.resume(sid, view, &mut steps));
        self.run_steps(steps, now);
    }

    /// Carries out the chain machine's steps, and those they lead to, in order.
    pub(super) fn run_steps(&mut self, steps: Vec<Step>, now: Instant) {
        let mut todo: VecDeque<Step> = steps.into();
        while let Some(step) = todo.pop_front() {
            match step {
                Step::Ask { fid, sid, event } => {
                    if let Some(p) = self.pipe_mut(fid) {
                        p.ask(sid, &event.frame(), now);
                    }
                }
                Step::AwaitRegistration { fid, sid } => {
                    if let Some(p) = self.pipe_mut(fid) {
                        let deadline = now + p.timeout;
                        p.waiting.insert(sid, deadline);
                    }
                }
                Step::Fail { fid, why } => self.filter_failed(fid, &why, now),
                Step::Done(d) => {
                    let Some(&(key, gen)) = self.session_keys.get(&d.sid) else {
                        continue;
                    };
                    self.conclude(key, gen, d, now);
                    // The session's next query (a pipelined command) starts the next
                    // run here, not by recursion.
                    if let Some(q) = self.conn_outputs(key, now) {
                        let mut more = Vec::new();
                        self.start_run(key, q, &mut more);
                        todo.extend(more);
                    }
                }
            }
        }
    }

    /// Hands the chain's verdict to the session: the end-of-message edits applied
    /// first (a failure to apply them defers the message), the data chain set up
    /// after DATA.
    fn conclude(&mut self, key: usize, gen: u64, d: Decided, now: Instant) {
        let Decided {
            sid,
            mut verdict,
            edits,
            data_chain,
        } = d;
        if !edits.is_empty() {
            let r = self
                .with_conn(key, Some(gen), |c, _| c.take_eom_edits(edits))
                .unwrap_or(Ok(()));
            if let Err(e) = r {
                log::warn!("{sid:016x} filter edit refused: {e}");
                verdict = FilterVerdict::Reject(Reply::new(
                    451,
                    "4.3.0",
                    "Temporary failure in a filter, try again later",
                ));
            }
        }
        let asked = match self.slab.get(key) {
            Some(Endpoint::Smtp(c)) if c.gen == gen => c.filters.asked,
            _ => None,
        };
        if let Some(phase) = asked {
            let r = Report::Text(TextReport::FilterResponse(
                response_phase(phase),
                response(&verdict),
            ));
            self.report(key, &r);
        }
        if !data_chain.is_empty() {
            for &f in &data_chain {
                if let Some(p) = self.pipe_mut(f) {
                    p.start_lines(sid);
                }
            }
            if let Some(Endpoint::Smtp(c)) = self.slab.get_mut(key) {
                c.filters.data_chain = data_chain;
            }
        }
        self.with_conn(key, Some(gen), |conn, ctx| {
            conn.on_filter_verdict(ctx, verdict, now)
        });
    }

    /// Whether filter `fid` may observe protocol lines or rollbacks, or what OpenSMTPD's
    /// reports derive from them (true while it has not registered yet).
    pub(super) fn filter_observes(&self, fid: usize) -> bool {
        match self.cfg.filters.get(fid).map(|f| &f.kind) {
            Some(FilterKind::Proc { .. }) => self.pipe(fid).is_none_or(|p| p.observes()),
            _ => false,
        }
    }

    /// Starts a chain when the session made a new query, and sends the message lines
    /// it gathered to its first data filter.
    pub(super) fn after_conn(&mut self, key: usize, now: Instant) {
        if let Some(q) = self.conn_outputs(key, now) {
            self.start_chain(key, q, now);
        }
    }

    /// Sends what the session at `key` produced for its filters (reports, message
    /// lines); returns the query it made, if any, for the caller to run.
    fn conn_outputs(&mut self, key: usize, now: Instant) -> Option<FilterQuery> {
        let congested = self.data_chain_congested(key);
        let (q, batch, sid, gen, first, reports) = match self.slab.get_mut(key) {
            Some(Endpoint::Smtp(c)) => (
                c.take_filter_query(),
                if congested {
                    None
                } else {
                    c.filters.take_batch()
                },
                c.id(),
                c.gen,
                c.filters.data_chain.first().copied(),
                c.filters.take_reports(),
            ),
            _ => return None,
        };
        if congested && !self.held.contains(&(key, gen)) {
            // Its lines wait (and it stops reading) until the filter drains.
            self.held.push((key, gen));
        }
        for r in reports {
            self.report(key, &r);
        }
        if let (Some((lines, end)), Some(fid)) = (batch, first) {
            self.send_lines(fid, sid, &lines, end, now);
            if let Some(Endpoint::Smtp(c)) = self.slab.get_mut(key) {
                c.filters.return_batch(lines);
            }
        }
        q
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
                p.pass_lines(sid, std::mem::take(&mut refs));
                bytes = 0;
            }
            bytes += l.len() + 2;
            refs.push(l);
        }
        if !refs.is_empty() {
            p.pass_lines(sid, refs);
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
        // The limits the session started under (a reload may have changed them since).
        let (next, cfg) = match self.slab.get(key) {
            Some(Endpoint::Smtp(c)) if c.gen == gen => {
                let cfg = c.cfg.clone().unwrap_or_else(|| self.cfg.clone());
                match c.filters.data_chain.iter().position(|&f| f == fid) {
                    Some(i) => (c.filters.data_chain.get(i + 1).copied(), cfg),
                    None => return, // the message already failed
                }
            }
            _ => return,
        };
        // The text line limit, when one is set, holds for what the filters return too.
        let max_line = match cfg.smtp.max_text_line {
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
                let max = cfg.smtp.max_message_size;
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
        let mut steps = Vec::new();
        match a {
            Answer::DataLines(lines) => return self.on_data_answer(fid, sid, Some(lines), now),
            Answer::DataEnd => return self.on_data_answer(fid, sid, None, now),
            Answer::Edit(e) => self.chains.on_edit(fid, sid, e, &mut steps),
            Answer::Decision(d) => {
                self.with_chains(|chains, view| chains.on_decision(fid, sid, d, view, &mut steps))
            }
        }
        self.run_steps(steps, now);
    }
}
