//! The loop's side of the queue manager (`queue::manager`): performs its actions
//! through the spool I/O thread, the parent channel and outgoing sessions (whose host
//! names `mta.rs` resolves), and hands it their completions. Nothing is decided here.

use super::{unix_now, Endpoint, Server, FIRST_SLOT, MTA_TIMEOUT};
use crate::mta::conn::MtaConn;
use crate::privsep::{DeliverRes, MAX_MSG};
use crate::queue::io::{IoDone, IoJob};
use crate::queue::manager::Effect;
use mio::{Interest, Token};
use std::net::SocketAddr;
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
                if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
                    conn.quit();
                    conn.pump(now, MTA_TIMEOUT);
                }
                self.mta_after(key);
            }
        }
    }

    /// Hands a job to the spool I/O thread (when it is gone, the job fails at once).
    fn spool_job(&mut self, job: IoJob) {
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
            IoDone::Written { id, result } => self.queue.written(id, result, now),
            IoDone::Expanded { evpid, dests } => self.queue.expanded(evpid, dests, now),
            IoDone::Bounced {
                evpid,
                kind,
                to,
                result,
            } => self.queue.bounced(evpid, kind, &to, result, now),
            IoDone::Opened {
                session,
                job,
                result,
            } => {
                let Some(&key) = self.mta_keys.get(&session) else {
                    return;
                };
                if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
                    conn.body(job, result);
                    conn.pump(Instant::now(), MTA_TIMEOUT);
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
                Ok((n, _)) if buf.first() == Some(&b'a') => {
                    match crate::credentials::decode_system_answer(&buf[..n]) {
                        Some(a) => auths.push(a),
                        None => log::warn!("queue: malformed AUTH answer from the parent ignored"),
                    }
                }
                Ok((n, _)) => match DeliverRes::decode(&buf[..n]) {
                    Some(res) => self.queue.local_result(res.id, res.outcome, unix_now()),
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

    /// Starts outgoing session `session`: a host name is resolved first (`mta.rs`).
    fn mta_start(&mut self, session: u64, route: crate::nexthop::Route, now: Instant) {
        let gen = self.next_gen;
        self.next_gen += 1;
        let deadline = now + MTA_TIMEOUT;
        let lookup = route
            .target
            .host_to_resolve()
            .map(|(h, p)| (h.to_string(), p));
        let needs_tls = matches!(
            route.security,
            crate::nexthop::Security::StartTls | crate::nexthop::Security::Implicit
        );
        let conn = MtaConn::new(session, gen, route, deadline);
        let key = self.slab.insert(Endpoint::Mta(Box::new(conn)));
        self.mta_keys.insert(session, key);
        self.mta_conns += 1;
        if needs_tls {
            return self.mta_abort(key, "451 4.7.5 TLS is required and not available yet");
        }
        match lookup {
            Some((host, port)) => self.mta_resolve(key, session, &host, port, now),
            None => self.mta_connect(key, None, now),
        }
    }

    /// Connects session `key` (to `addr` when its host name was resolved).
    pub(super) fn mta_connect(&mut self, key: usize, addr: Option<SocketAddr>, now: Instant) {
        let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) else {
            return;
        };
        let r = crate::mta::conn::connect(&conn.target, addr).and_then(|mut sock| {
            self.poll.registry().register(
                &mut sock,
                Token(key + FIRST_SLOT),
                Interest::READABLE | Interest::WRITABLE,
            )?;
            Ok(sock)
        });
        match r {
            Ok(sock) => {
                conn.sock = Some(sock);
                conn.pump(now, MTA_TIMEOUT);
                self.mta_after(key);
            }
            Err(e) => {
                let why = format!("cannot connect to {:?}: {e}", conn.target);
                self.mta_abort(key, &why);
            }
        }
    }

    /// Gives up session `key` with `why`.
    pub(super) fn mta_abort(&mut self, key: usize, why: &str) {
        if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
            conn.abort(why);
        }
        self.mta_after(key);
    }

    /// Hands the manager what session `key` finished, and drops the session when it is
    /// over.
    pub(super) fn mta_after(&mut self, key: usize) {
        let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) else {
            return;
        };
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
        self.mta_keys.remove(&conn.session);
        self.mta_lookups.remove(&conn.session);
        if let Some(sock) = conn.sock.as_mut() {
            let _ = self.poll.registry().deregister(sock);
        }
        let why = conn
            .error()
            .unwrap_or("the session ended before its jobs")
            .to_string();
        self.queue
            .session_closed(conn.session, done, &why, !conn.failed_before_mail(), now);
    }
}
