//! Filter pipes in the loop: attaching a (re)started filter's socket, reading what it
//! sent a bounded amount per turn, writing what it is sent, its deadlines, and failing
//! it (its sessions fail closed, the parent restarts it).

use super::{Endpoint, Server, FIRST_SLOT};
use crate::config::FilterKind;
use crate::filter::chain::Step;
use crate::filter::pipe::TextSetup;
use crate::filter::pipe::{FilterPipe, PipeState, OUT_MAX};
use crate::filter::report::Report;
use mio::{Interest, Token};
use std::os::fd::OwnedFd;
use std::time::Instant;

impl Server {
    /// Registers the filters' sockets handed over by the parent at start.
    pub(super) fn add_filters(&mut self, fds: Vec<(usize, OwnedFd)>) -> std::io::Result<()> {
        self.pipes = vec![None; self.cfg.filters.len()];
        for (id, fd) in fds {
            self.attach_filter(id, fd)?;
        }
        Ok(())
    }

    /// Takes a (re)started filter's socket.
    pub(super) fn attach_filter(&mut self, id: usize, fd: OwnedFd) -> std::io::Result<()> {
        let (name, timeout, only) = match self.cfg.filters.get(id).map(|f| (&f.name, &f.kind)) {
            Some((
                n,
                FilterKind::Proc {
                    timeout, opensmtpd, ..
                },
            )) => (n.clone(), *timeout, *opensmtpd),
            _ => return Ok(()),
        };
        let key = match self.pipes.get(id).copied().flatten() {
            Some(key) => {
                if let Some(Endpoint::Filter(p)) = self.slab.get_mut(key) {
                    if let Some(s) = p.sock.as_mut() {
                        let _ = self.poll.registry().deregister(s);
                    }
                    p.replace(fd)?;
                }
                key
            }
            None => {
                let mut hello = Vec::new();
                crate::filter::text::config(
                    &mut hello,
                    env!("CARGO_PKG_VERSION"),
                    self.cfg.smtp.timeout.as_secs(),
                    self.cfg.admd.as_deref().unwrap_or(&self.cfg.hostname),
                );
                let text = TextSetup { hello, only };
                let p = FilterPipe::new(id, &name, Some(fd), timeout, Some(text))?;
                let key = self.slab.insert(Endpoint::Filter(Box::new(p)));
                self.pipes[id] = Some(key);
                key
            }
        };
        if let Some(Endpoint::Filter(p)) = self.slab.get_mut(key) {
            if let Some(s) = p.sock.as_mut() {
                self.poll.registry().register(
                    s,
                    Token(key + FIRST_SLOT),
                    Interest::READABLE | Interest::WRITABLE,
                )?;
            }
        }
        Ok(())
    }

    /// The pipe of filter process `fid`.
    pub(super) fn pipe(&self, fid: usize) -> Option<&FilterPipe> {
        match self
            .pipes
            .get(fid)
            .copied()
            .flatten()
            .and_then(|k| self.slab.get(k))
        {
            Some(Endpoint::Filter(p)) => Some(p),
            _ => None,
        }
    }

    /// The pipe of filter process `fid`, to change.
    pub(super) fn pipe_mut(&mut self, fid: usize) -> Option<&mut FilterPipe> {
        match self
            .pipes
            .get(fid)
            .copied()
            .flatten()
            .and_then(|k| self.slab.get_mut(k))
        {
            Some(Endpoint::Filter(p)) => Some(p),
            _ => None,
        }
    }

    /// Events on a filter's socket, or input left from its last turn: reads a bounded
    /// amount, at most once per loop turn, and keeps the pipe in the backlog while
    /// input is left.
    pub(super) fn filter_io(&mut self, key: usize, now: Instant) {
        let mut answers = Vec::new();
        let turn = self.turn;
        let (fid, result, became_ready) = match self.slab.get_mut(key) {
            Some(Endpoint::Filter(p)) if p.read_turn != turn && p.sock.is_some() => {
                p.read_turn = turn;
                let was = p.state;
                let _ = p.flush();
                let r = p.read(now, &mut answers);
                let ready =
                    was == PipeState::Handshake && matches!(p.state, PipeState::Ready { .. });
                (p.id, r, ready)
            }
            _ => return,
        };
        if result == Ok(true) {
            self.pipe_backlog.push(key);
        }
        let running = |s: &Server| s.pipe(fid).is_some_and(|p| p.sock.is_some());
        for (sid, answer) in answers {
            if !running(self) {
                // Failed by an earlier answer of the batch: the rest means nothing.
                return;
            }
            self.on_answer(fid, sid, answer, now);
        }
        if !running(self) {
            return;
        }
        if became_ready {
            // Sessions that waited for the registration go on.
            let waiting: Vec<u64> = match self.slab.get_mut(key) {
                Some(Endpoint::Filter(p)) => p.waiting.drain().map(|(s, _)| s).collect(),
                _ => Vec::new(),
            };
            for sid in waiting {
                self.resume_chain(sid, now);
            }
        }
        if let Err(e) = result {
            self.filter_failed(fid, &e, now);
        }
    }

    /// A filter died, spoke garbage or was late: the sessions waiting on it fail, and
    /// the parent restarts it.
    pub(super) fn filter_failed(&mut self, fid: usize, why: &str, now: Instant) {
        let name = self
            .cfg
            .filters
            .get(fid)
            .map(|f| f.name.clone())
            .unwrap_or_default();
        if crate::config::reload::filters_in_use(&self.cfg).contains(&fid) {
            log::warn!("filter {name}: {why}; failing its sessions and restarting it");
        } else {
            // A reload retired it: the parent stopped it after a grace.
            log::info!("filter {name}: {why}; no longer used, its sessions fail");
        }
        let waiting = match self
            .pipes
            .get(fid)
            .copied()
            .flatten()
            .and_then(|k| self.slab.get_mut(k))
        {
            Some(Endpoint::Filter(p)) => {
                if let Some(s) = p.sock.as_mut() {
                    let _ = self.poll.registry().deregister(s);
                }
                p.kill()
            }
            _ => Vec::new(),
        };
        self.ask_parent(&crate::privsep::encode_filter_kill(fid));
        // The runs waiting on it end, failed closed; sessions of this filter that are
        // mid-chain elsewhere are caught when their chain reaches it (it is dead now).
        // What else waited on it was the end of a message's lines.
        let mut steps = Vec::new();
        self.chains.fail_filter(fid, &mut steps);
        let mut sids = waiting;
        sids.sort_unstable();
        sids.dedup();
        for sid in sids {
            if !self.chains.running(sid)
                && !steps
                    .iter()
                    .any(|s| matches!(s, Step::Done(d) if d.sid == sid))
            {
                self.data_failed(sid, now);
            }
        }
        self.run_steps(steps, now);
        // Messages whose lines go through this filter fail too.
        let in_data: Vec<u64> = self
            .slab
            .iter()
            .filter_map(|(_, e)| match e {
                Endpoint::Smtp(c) if c.filters.data_chain.contains(&fid) => Some(c.id()),
                _ => None,
            })
            .collect();
        for sid in in_data {
            self.data_failed(sid, now);
        }
    }

    /// Writes the frames queued for each filter during this loop turn.
    /// A filter that lets more than [`OUT_MAX`] wait is failed: it does not read.
    /// Sessions held back by a filter that took its input go on.
    pub(super) fn flush_pipes(&mut self, now: Instant) {
        let mut failed = Vec::new();
        for fid in 0..self.pipes.len() {
            if let Some(p) = self.pipe_mut(fid) {
                if p.has_output() {
                    if let Err(e) = p.flush() {
                        failed.push((p.id, format!("write: {e}")));
                    } else if p.unsent() > OUT_MAX {
                        let n = p.unsent();
                        failed.push((
                            p.id,
                            format!("did not read what it was sent: {n} octets waiting"),
                        ));
                    }
                }
            }
        }
        for (fid, why) in failed {
            self.filter_failed(fid, &why, now);
        }
        self.release_held(now);
    }

    /// Whether the data chain of the session at `key` has a backed-up filter: the
    /// session holds its lines (and stops reading) until it drains.
    pub(super) fn data_chain_congested(&self, key: usize) -> bool {
        match self.slab.get(key) {
            Some(Endpoint::Smtp(c)) => c
                .filters
                .data_chain
                .iter()
                .any(|&f| self.pipe(f).is_some_and(|p| p.congested())),
            _ => false,
        }
    }

    /// Sessions held back by a backed-up filter go on once it drained (or failed,
    /// which empties their data chain).
    fn release_held(&mut self, now: Instant) {
        for (key, gen) in std::mem::take(&mut self.held) {
            if !matches!(self.slab.get(key), Some(Endpoint::Smtp(c)) if c.gen == gen) {
                continue;
            }
            if self.data_chain_congested(key) {
                self.held.push((key, gen));
                continue;
            }
            // Its lines go out, and it reads again: it stopped without having seen
            // the end of its input, for which no readiness event will come.
            self.after_conn(key, now);
            self.with_conn(key, Some(gen), |conn, ctx| conn.pump(ctx, now));
            self.after_conn(key, now);
            self.pump_more(key, now);
        }
    }

    /// Arms a deadline for each filter pipe whose next deadline is earlier than the
    /// one armed (filter processes are few: this touches no other endpoint).
    pub(super) fn arm_filter_timers(&mut self) {
        for fid in 0..self.pipes.len() {
            let Some(p) = self.pipe_mut(fid) else {
                continue;
            };
            let Some(at) = p.next_deadline() else {
                continue;
            };
            if p.armed.is_none_or(|t| at < t) {
                p.armed = Some(at);
                self.timers.add(at, super::Due::Filter(fid));
            }
        }
    }

    /// A deadline of filter `fid` came: it is failed if it did not answer, or did not
    /// read, in time.
    pub(super) fn filter_due(&mut self, fid: usize, now: Instant) {
        let Some(p) = self.pipe_mut(fid) else {
            return;
        };
        p.armed = None;
        p.prune_gone(now);
        if p.decide_due(now) {
            log::info!(
                "filter {}: silent at start, taken for a filter of OpenSMTPD's protocol",
                p.name
            );
            return;
        }
        let why = if p.overdue(now) {
            "did not answer in time".to_string()
        } else if p.write_stalled(now) {
            let t = p.timeout.as_secs_f64();
            format!("did not read what it was sent for {t} s")
        } else {
            return;
        };
        self.filter_failed(fid, &why, now);
    }

    /// A session ends: its filters stop waiting for lines of its message.
    pub(super) fn filters_session_left(&mut self, key: usize, now: Instant) {
        let (sid, chain) = match self.slab.get(key) {
            Some(Endpoint::Smtp(c)) => (c.id(), c.filters.chain.clone()),
            _ => return,
        };
        for fid in chain {
            if let Some(p) = self.pipe_mut(fid) {
                p.session_left(sid, now);
            }
        }
    }

    /// Tells the filters of a session's chain that observe it about an event.
    pub(super) fn report(&mut self, key: usize, r: &Report) {
        let (sid, chain) = match self.slab.get(key) {
            Some(Endpoint::Smtp(c)) if !c.filters.chain.is_empty() => {
                (c.id(), c.filters.chain.clone())
            }
            _ => return,
        };
        for fid in chain {
            if let Some(Endpoint::Filter(p)) = self
                .pipes
                .get(fid)
                .copied()
                .flatten()
                .and_then(|k| self.slab.get_mut(k))
            {
                p.report(sid, r);
            }
        }
    }
}
