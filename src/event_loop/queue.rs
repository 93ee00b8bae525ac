//! The loop's side of the queue manager (`queue::manager`): performs its actions
//! through the spool I/O thread, the parent channel and outgoing sessions (whose host
//! names `mta.rs` resolves), and hands it their completions. Nothing is decided here.

use super::{unix_now, Endpoint, Server};
use crate::filter::report::Report;
use crate::mail::reply::Reply;
use crate::privsep::{DeliverRes, MAX_MSG};
use crate::queue::io::{IoDone, IoJob};
use crate::queue::manager::Effect;
use crate::smtp::conn::Reason;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

/// Rounds of actions and immediate completions taken in one go at most (each round
/// comes from completions of the previous one; they end well before).
const ROUNDS: usize = 16;

impl Server {
    /// Performs what the queue manager asked for, until it asks nothing more.
    pub(super) fn queue_actions(&mut self, now: Instant) {
        for _ in 0..ROUNDS {
            let actions = self.queue.take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                self.queue_action(a, now);
            }
        }
    }

    fn queue_action(&mut self, a: Effect, now: Instant) {
        match a {
            Effect::Log(level, line) => log::log!(level, "{line}"),
            Effect::Deliver(d) => self.spool_job(IoJob::Deliver(d)),
            Effect::Write(w) => self.spool_job(IoJob::Write(w)),
            Effect::Bounce(n) => self.spool_job(IoJob::Bounce(n, unix_now())),
            Effect::Expand(f) => self.spool_job(IoJob::Expand(f)),
            Effect::Connect { session, route } => self.mta_start(session, route, now),
            Effect::Send {
                session,
                msgid,
                job,
            } => {
                let Some(&key) = self.mta_keys.get(&session) else {
                    return;
                };
                let id = job.id;
                if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
                    conn.push(job);
                }
                self.spool_job(IoJob::Open {
                    session,
                    job: id,
                    msgid,
                });
                self.mta_after(key);
            }
            Effect::Quit { session } => {
                let Some(&key) = self.mta_keys.get(&session) else {
                    return;
                };
                let timeout = self.cfg.mta.timeout;
                if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
                    conn.quit();
                    conn.pump(now, timeout);
                }
                self.mta_after(key);
            }
        }
    }

    /// Hands a job to the spool I/O thread (when it is gone, the job fails at once).
    pub(super) fn spool_job(&mut self, job: IoJob) {
        if let Err(job) = self.io.submit(job) {
            self.io_done(job.fail("the spool thread is gone"));
        }
    }

    /// Takes the spool I/O thread's completions.
    pub(super) fn on_io(&mut self, now: Instant) {
        for done in self.io.take_done() {
            self.io_done(done);
        }
        self.queue_actions(now);
    }

    fn io_done(&mut self, done: IoDone) {
        let now = unix_now();
        match done {
            IoDone::Handed { id, result } => self.queue.handed(id, result, now),
            IoDone::Configured => {}
            IoDone::Written { id, result } => self.queue.written(id, result, now),
            IoDone::Expanded { evpid, dests } => self.queue.expanded(evpid, dests, now),
            IoDone::Bounced {
                evpid,
                kind,
                to,
                result,
            } => self.queue.bounced(evpid, kind, &to, result, now),
            IoDone::StsRead { domain, result } => {
                self.sts_cache_read(&domain, result, Instant::now())
            }
            IoDone::StsWritten { domain, result } => {
                if let Err(e) = result {
                    log::warn!("mta-sts domain={domain} cannot write its cache: {e}");
                }
            }
            IoDone::Opened {
                session,
                job,
                result,
            } => {
                let Some(&key) = self.mta_keys.get(&session) else {
                    return;
                };
                let timeout = self.cfg.mta.timeout;
                if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
                    conn.body(job, result);
                    conn.pump(Instant::now(), timeout);
                }
                self.mta_after(key);
            }
        }
    }

    /// Reads results and filter sockets from the parent; false when it is gone.
    pub(super) fn on_parent(
        &mut self,
        handed: &mut Vec<(usize, OwnedFd)>,
        auths: &mut Vec<((u64, u64), crate::mail::auth::AuthResult)>,
    ) -> bool {
        let Some(fd) = self.parent.as_ref().map(|p| p.as_raw_fd()) else {
            return false;
        };
        let mut buf = vec![0u8; MAX_MSG];
        loop {
            match crate::sys::recv_msg(fd, &mut buf) {
                Ok((0, _)) => {
                    log::error!("queue: the parent process is gone");
                    self.parent = None;
                    return false;
                }
                Ok((n, Some(fd))) if buf.first() == Some(&b'F') => {
                    match crate::privsep::decode_filter_id(&buf[..n]) {
                        Some(id) => handed.push((id, fd)),
                        None => log::warn!("queue: malformed filter handover ignored"),
                    }
                }
                Ok((n, Some(fd))) if buf.first() == Some(&b'T') => {
                    match std::str::from_utf8(&buf[1..n]) {
                        Ok(name) => match self.cfg.tables.iter().position(|t| t.name == name) {
                            Some(id) => self.table_handed(id, fd),
                            None => log::warn!("table: a socket for {name}, which is no more"),
                        },
                        Err(_) => log::warn!("queue: malformed table handover ignored"),
                    }
                }
                Ok((n, fd)) if matches!(buf.first(), Some(b'L' | b'f' | b't' | b'C' | b'E')) => {
                    self.reload_message(&buf[..n], fd)
                }
                Ok((n, _)) if buf.first() == Some(&b'a') => {
                    match crate::credentials::decode_system_answer(&buf[..n]) {
                        Some(a) => auths.push(a),
                        None => log::warn!("queue: malformed AUTH answer from the parent ignored"),
                    }
                }
                Ok((n, _)) => match DeliverRes::decode(&buf[..n]) {
                    Some(res) => {
                        crate::crashpoint::hit("deliver-reported");
                        self.queue.local_result(res.id, res.outcome, unix_now())
                    }
                    None => log::warn!("queue: malformed result from the parent ignored"),
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::error!("queue: parent channel: {e}");
                    return false;
                }
            }
        }
    }

    /// Sends a message to the parent (filter kill requests).
    pub(super) fn ask_parent(&self, msg: &[u8]) {
        if let Some(fd) = self.parent.as_ref().map(|p| p.as_raw_fd()) {
            if let Err(e) = crate::sys::send_msg(fd, msg, None) {
                log::warn!("queue: cannot reach the parent: {e}");
            }
        }
    }

    /// The commit thread's results: the queue takes the envelopes, each session its
    /// 250 (or failure), and pipelined commands after the dot go on.
    pub(super) fn on_commits(&mut self, now: Instant) {
        let mut pending_after = Vec::new();
        for done in self.committer.take_done() {
            let (key, gen) = done.key;
            let ours = matches!(self.slab.get(key), Some(Endpoint::Smtp(c)) if c.gen == gen);
            if done.result.is_ok() {
                self.queue.committed(&done.envs, unix_now());
                if ours {
                    let size = match self.slab.get_mut(key) {
                        Some(Endpoint::Smtp(c)) => {
                            c.filters.committed();
                            c.tx_size()
                        }
                        _ => 0,
                    };
                    let r = Report::Commit {
                        msgid: format!("{:08x}", done.msgid),
                        size,
                        evpids: done.envs.iter().map(|e| e.evpid).collect(),
                    };
                    self.report(key, &r);
                }
            }
            if !ours {
                match done.result {
                    Ok(()) => log::info!(
                        "smtp message msgid={:08x} committed after its client left",
                        done.msgid
                    ),
                    Err(e) => log::warn!("queue: commit of {:08x} failed: {e}", done.msgid),
                }
                continue;
            }
            let stopping = self.stopping.is_some();
            let (msgid, result) = (done.msgid, done.result);
            let revoke = self.with_conn(key, Some(gen), |conn, ctx| {
                let revoke = conn.on_committed(ctx, msgid, result, now);
                if stopping {
                    conn.close_with(ctx, Reply::SHUTDOWN, Reason::Shutdown);
                }
                revoke
            });
            if revoke == Some(false) {
                crate::crashpoint::hit("commit-replied");
            }
            if revoke == Some(true) {
                let ids: Vec<u64> = done.envs.iter().map(|e| e.evpid).collect();
                self.queue.remove_by_hand(&ids);
            }
            // Pipelined commands after the dot may need the filter chain.
            pending_after.push(key);
        }
        for key in pending_after {
            self.after_conn(key, now);
        }
        self.queue_actions(now);
    }
}
