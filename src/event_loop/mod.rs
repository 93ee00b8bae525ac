//! The one mio loop: listeners, SMTP sessions, the control socket, the parent channel,
//! signals, the waker of the commit, lookup and spool I/O threads, the DNS resolver's
//! sockets (`dns.rs`), timers, and the queue manager's actions (`queue.rs`).
//!
//! Every token from `FIRST_SLOT` on indexes the slab of endpoints. Handlers tolerate
//! spurious and stale events; endpoints are removed only between event batches.

use crate::config::Config;
use crate::mail::reply::Reply;
use crate::mta::conn::MtaConn;
use crate::queue::io::{IoDone, IoJob};
use crate::queue::manager::Manager;
use crate::queue::spool::{Committer, Spool};
use crate::smtp::conn::{Conn, Ctx, Reason};
use crate::timer::Timers;
use crate::worker::Worker;
use deadlines::Due;
use dns::Dns;
use limits::{ControlSlots, FdBudget, RateTable};
use mio::net::{TcpListener, UnixListener, UnixStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::collections::HashMap;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod accept;
mod auth;
mod ctl;
mod deadlines;
mod dns;
mod filter_pipes;
mod filters;
mod limits;
mod lookups;
mod metrics;
mod mta;
mod proxy;
mod queue;
mod rdns;
mod reload;
mod sts;
mod tables;

pub use accept::{bind_control, bind_listeners, refuse_if_running};

const SIGNAL: Token = Token(0);
const WAKER: Token = Token(1);
const PARENT: Token = Token(2);
const CONTROL: Token = Token(3);
/// Tokens below this are reserved.
const FIRST_SLOT: usize = 16;
/// The longest the loop sleeps when no deadline is near.
const IDLE_SLEEP: Duration = Duration::from_secs(3600);
/// How long a stopping daemon waits for commits in flight.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Longest control command line.
const CONTROL_LINE: usize = 1024;

/// A control socket client.
struct ControlConn {
    sock: UnixStream,
    /// Generation, for its timer.
    gen: u64,
    uid: u32,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    monitor: bool,
    done: bool,
    /// Answered by a lookup thread (`update table`): open until then.
    waiting: bool,
}

enum Endpoint {
    Listener {
        sock: TcpListener,
        idx: usize,
    },
    Smtp(Box<Conn>),
    /// A connection of a `proxy-v2` listener until its PROXY header is read.
    Proxy(Box<proxy::ProxyConn>),
    Control(Box<ControlConn>),
    Mta(Box<MtaConn>),
    Filter(Box<crate::filter::pipe::FilterPipe>),
    /// A socket of the DNS resolver.
    Dns(Box<dns::DnsSock>),
    /// The HTTPS fetch of an MTA-STS policy.
    Sts(Box<crate::mta::fetch::PolicyFetch>),
    /// A client of the metrics listener.
    Http(Box<metrics::HttpConn>),
}

/// The daemon's engine.
pub struct Server {
    cfg: Arc<Config>,
    poll: Poll,
    slab: Slab<Endpoint>,
    spool: Spool,
    committer: Committer,
    /// The lookup threads: recipient expansion, the spool's room, message rewrites.
    lookups: crate::lookup::Lookups,
    /// The queue manager.
    queue: Manager,
    /// The spool I/O thread, which performs the queue manager's spool work.
    io: Worker<IoJob, IoDone>,
    /// The channel to the parent (shared with the spool I/O thread, which sends the
    /// delivery requests).
    parent: Option<Arc<OwnedFd>>,
    /// Slab key of each outgoing session, by the queue manager's session id.
    mta_keys: HashMap<u64, usize>,
    /// Host names of outgoing sessions being resolved, by session id.
    mta_routing: HashMap<u64, mta::Routing>,
    control: Option<UnixListener>,
    _waker: Arc<Waker>,
    signal_fd: RawFd,
    /// Every deadline of the engine.
    timers: Timers<Due>,
    /// When the queue manager's next due envelope is armed in `timers`.
    queue_armed: Option<Instant>,
    /// A monitor line is armed in `timers`.
    monitor_armed: bool,
    /// Control clients that monitor (slab key and generation; checked when used).
    monitors: Vec<(usize, u64)>,
    /// Pruning the connection-rate table is armed in `timers`.
    prune_armed: bool,
    per_addr: HashMap<IpAddr, usize>,
    /// New connections by address, for `max-connection-rate`.
    rates: RateTable,
    /// Failed SMTP AUTH by address, for the penalty of the next ones.
    auth_failures: limits::AuthFailures,
    /// SMTP sessions, local ones included.
    sessions: usize,
    /// SMTP sessions on the listeners (what `max-sessions` limits).
    tcp_sessions: usize,
    /// Connections of `proxy-v2` listeners waiting for their header.
    proxy_pending: usize,
    max_sessions: usize,
    /// Control clients by user, local SMTP sessions included.
    ctl_slots: ControlSlots,
    /// Outgoing sessions (each holds a message file).
    mta_conns: usize,
    /// SMTP sessions that hold a message file (counted as they change).
    msg_files: usize,
    /// The descriptor limit and what was open at start.
    fds: FdBudget,
    /// Accepting stopped after a failed accept(2), until then.
    accept_paused: Option<Instant>,
    /// A listener stopped accepting for want of descriptors: revisit it when some are
    /// free.
    starved_tcp: bool,
    /// Likewise for the control socket.
    starved_control: bool,
    next_gen: u64,
    stopping: Option<Instant>,
    paused_smtp: bool,
    closing: Vec<usize>,
    signals: Vec<i32>,
    /// Slab key of each filter process's pipe, by filter id.
    pipes: Vec<Option<usize>>,
    /// Loop turns so far: a filter pipe is read at most once per turn.
    turn: u64,
    /// Filter pipes with input left after their last read (a read takes a bounded
    /// amount): they are read again next turn, with no readiness event to wait for.
    pipe_backlog: Vec<usize>,
    /// SMTP sessions (slab key, generation) that used up their reads of a turn with
    /// input maybe left: pumped again next turn (fairness among clients).
    smtp_backlog: Vec<(usize, u64)>,
    /// SMTP sessions (slab key, generation) whose message lines wait for a backed-up
    /// data filter; they read again once it drained.
    held: Vec<(usize, u64)>,
    /// Chain runs in progress, by session id.
    chains: crate::filter::chain::Chains,
    /// Slab key and generation of each SMTP session, by session id.
    session_keys: HashMap<u64, (usize, u64)>,
    /// The DNS resolver: reverse DNS of clients, host names of outgoing sessions.
    dns: Dns,
    /// The configuration checks the clients' reverse DNS.
    rdns: bool,
    /// The server addresses outgoing sessions use.
    hosts: crate::mta::hosts::Hosts,
    /// The MTA-STS policies of the domains outgoing sessions went to.
    sts: sts::Policies,
    /// The TLS configuration of each listener (keys read before the fork).
    tls: crate::tls::TlsSetup,
    /// What the SMTP side counted.
    counters: crate::metrics::SmtpCounters,
    /// Clients of the metrics listener.
    http_conns: usize,
    /// When the engine started (seconds since the epoch).
    started: u64,
    /// Reloads: the origin of the configuration, what the parent sent for the next.
    reloading: reload::Reloading,
}

/// `max-sessions`, or what the descriptor limit allows (a session may hold a socket
/// and a message file).
fn max_sessions(cfg: &Config, nofile: usize) -> usize {
    if cfg.smtp.max_sessions > 0 {
        cfg.smtp.max_sessions
    } else {
        (nofile.saturating_sub(64) / 2).max(16)
    }
}

impl Server {
    /// Prepares the loop over listeners bound by [`bind_listeners`] (with their TLS
    /// configurations), the control socket and the parent channel; starts the sync
    /// thread (call it after forking: threads do not survive fork) and reads the queue
    /// back from the spool.
    pub fn new(
        cfg: Arc<Config>,
        tls: crate::tls::TlsSetup,
        spool: Spool,
        listeners: Vec<(std::net::TcpListener, usize)>,
        control: Option<std::os::unix::net::UnixListener>,
        parent: Option<OwnedFd>,
        filter_fds: Vec<(usize, OwnedFd)>,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let w = waker.clone();
        let committer = Committer::start(&spool, move || {
            let _ = w.wake();
        })?;
        // One waker per poll: the lookup threads share it with the commit thread.
        let w = waker.clone();
        let lookups = crate::lookup::Lookups::start(cfg.clone(), spool.clone(), move || {
            let _ = w.wake();
        })?;
        let parent = parent.map(Arc::new);
        tables::watch(&cfg, parent.as_ref());
        let w = waker.clone();
        let io = crate::queue::io::start(&spool, cfg.clone(), parent.clone(), move || {
            let _ = w.wake();
        })?;
        let mut slab = Slab::new();
        for (sock, idx) in listeners {
            let key = slab.insert(Endpoint::Listener {
                sock: TcpListener::from_std(sock),
                idx,
            });
            if let Some(Endpoint::Listener { sock, .. }) = slab.get_mut(key) {
                poll.registry()
                    .register(sock, Token(key + FIRST_SLOT), Interest::READABLE)?;
            }
        }
        let control = match control {
            Some(l) => {
                l.set_nonblocking(true)?;
                let mut l = UnixListener::from_std(l);
                poll.registry()
                    .register(&mut l, CONTROL, Interest::READABLE)?;
                Some(l)
            }
            None => None,
        };
        if let Some(fd) = parent.as_ref().map(|p| p.as_raw_fd()) {
            poll.registry()
                .register(&mut SourceFd(&fd), PARENT, Interest::READABLE)?;
        }
        // File and pipe destinations naming no user run as the engine's user.
        let default_user = if crate::sys::geteuid() == 0 {
            crate::config::UNPRIVILEGED_USER.to_string()
        } else {
            crate::sys::getpwuid_name().unwrap_or_default()
        };
        let queue = Manager::new(cfg.clone(), default_user);
        let nofile = crate::sys::raise_nofile();
        let max_sessions = max_sessions(&cfg, usize::try_from(nofile).unwrap_or(usize::MAX));
        let mut server = Server {
            rates: RateTable::new(cfg.smtp.max_connection_rate, limits::RATE_TABLE_MAX),
            auth_failures: limits::AuthFailures::new(limits::AUTH_TABLE_MAX),
            ctl_slots: ControlSlots::new(cfg.control.max_clients, cfg.control.max_clients_per_user),
            cfg,
            poll,
            slab,
            spool,
            committer,
            lookups,
            queue,
            io,
            parent,
            mta_keys: HashMap::new(),
            mta_routing: HashMap::new(),
            control,
            _waker: waker,
            signal_fd: -1,
            timers: Timers::new(),
            per_addr: HashMap::new(),
            sessions: 0,
            tcp_sessions: 0,
            proxy_pending: 0,
            max_sessions,
            mta_conns: 0,
            msg_files: 0,
            fds: FdBudget {
                limit: usize::try_from(nofile).unwrap_or(usize::MAX),
                base: 0,
            },
            accept_paused: None,
            starved_tcp: false,
            starved_control: false,
            next_gen: 1,
            stopping: None,
            paused_smtp: false,
            closing: Vec::new(),
            signals: Vec::new(),
            queue_armed: None,
            monitor_armed: false,
            monitors: Vec::new(),
            prune_armed: false,
            pipes: Vec::new(),
            turn: 0,
            pipe_backlog: Vec::new(),
            smtp_backlog: Vec::new(),
            held: Vec::new(),
            chains: crate::filter::chain::Chains::new(),
            session_keys: HashMap::new(),
            dns: Dns::new(Instant::now()),
            rdns: false,
            hosts: crate::mta::hosts::Hosts::default(),
            sts: sts::Policies::default(),
            tls,
            counters: crate::metrics::SmtpCounters::default(),
            http_conns: 0,
            started: unix_now(),
            reloading: reload::Reloading::default(),
        };
        server.rdns = server.cfg.needs_rdns();
        server.add_filters(filter_fds)?;
        let n = server.load_queue()?;
        if n > 0 {
            log::info!("queue: {n} envelope(s) read back from the spool");
        }
        Ok(server)
    }

    /// Reads the queue back from the spool at start; a message whose envelopes cannot
    /// be read goes to corrupt/.
    fn load_queue(&mut self) -> io::Result<usize> {
        let now = unix_now();
        let mut n = 0;
        for (msgid, envs) in self.spool.load_all()? {
            match envs {
                Ok(envs) => {
                    n += envs.len();
                    self.queue.load(envs, now);
                }
                Err(e) => {
                    log::warn!("queue: message {msgid:08x} unreadable ({e}): moved to corrupt/");
                    let _ = self.spool.quarantine_corrupt(msgid);
                }
            }
        }
        Ok(n)
    }

    /// Runs until SIGTERM or SIGINT and the sessions in flight are done.
    pub fn run(&mut self) -> io::Result<()> {
        self.signal_fd = crate::sys::signal_pipe()?;
        self.poll.registry().register(
            &mut SourceFd(&self.signal_fd),
            SIGNAL,
            Interest::READABLE,
        )?;
        // What is open now and is no endpoint's: the poll, the waker, the spool, the
        // parent channel, the signal pipe, standard streams.
        self.fds.base = crate::sys::open_fds(self.fds.limit as u64).saturating_sub(self.slab.len());
        let mut events = Events::with_capacity(512);
        loop {
            let now = Instant::now();
            if let Some(t) = self.stopping {
                // What the queue manager wrote is on disk before the daemon exits.
                let spool_idle = !self.queue.writing() && self.io.pending() == 0;
                if (self.sessions == 0 && spool_idle) || now >= t {
                    break;
                }
            }
            if self.stopping.is_none() {
                self.queue.run(unix_now());
            }
            self.queue_actions(now);
            self.arm_timers(now);
            // Sleep until the next deadline; filters with input left and DNS answers
            // waiting for their turn go on at once.
            let idle = self.pipe_backlog.is_empty() && self.smtp_backlog.is_empty();
            let timeout = match idle && !self.dns.has_done() {
                true => self.timers.sleep(now, IDLE_SLEEP),
                false => Duration::ZERO,
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            }
            let now = Instant::now();
            self.turn += 1;
            let backlog = std::mem::take(&mut self.pipe_backlog);
            let smtp_backlog = std::mem::take(&mut self.smtp_backlog);
            for ev in events.iter() {
                match ev.token() {
                    SIGNAL => self.on_signal(),
                    WAKER => {
                        self.on_commits(now);
                        self.on_lookups(now);
                        self.on_io(now);
                    }
                    PARENT => {
                        let (mut handed, mut auths) = (Vec::new(), Vec::new());
                        let alive = self.on_parent(&mut handed, &mut auths);
                        for (key, result) in auths {
                            self.auth_answered(key, result, now);
                        }
                        self.queue_actions(now);
                        if !alive {
                            log::error!("smtpd: lost the parent process, stopping");
                            self.stop();
                        }
                        for (id, fd) in handed {
                            if let Err(e) = self.attach_filter(id, fd) {
                                log::warn!("filter {id}: cannot attach: {e}");
                            }
                        }
                    }
                    CONTROL => self.accept_control(now),
                    Token(t) if t >= FIRST_SLOT => {
                        let key = t - FIRST_SLOT;
                        if ev.is_error() || (ev.is_read_closed() && ev.is_write_closed()) {
                            if let Some(Endpoint::Smtp(conn)) = self.slab.get_mut(key) {
                                conn.hung_up();
                            }
                        }
                        self.dispatch(
                            key,
                            ev.is_readable() || ev.is_read_closed(),
                            ev.is_writable() || ev.is_write_closed(),
                            now,
                        )
                    }
                    t => log::warn!("event on unused reserved token {t:?}"),
                }
            }
            // Filters that had more to say than one turn takes, and no new event.
            for key in backlog {
                self.filter_io(key, now);
            }
            // Clients that had more to send than one turn's share.
            for (key, gen) in smtp_backlog {
                if let Some(Endpoint::Smtp(c)) = self.slab.get_mut(key) {
                    if c.gen == gen {
                        c.unqueue();
                        self.dispatch(key, false, false, now);
                    }
                }
            }
            // Commits and lookups may finish between a wake and the poll; take them
            // every turn.
            self.on_commits(now);
            self.on_lookups(now);
            self.on_io(now);
            self.reload_turn();
            self.expire_timers(now);
            // DNS answers, cached ones included, reach their waiters here.
            self.dns_turn(now);
            self.reap();
            // Last: what this turn gave the filters (DISCONNECT reports of the sessions
            // just reaped too) goes out now, not at some later wake.
            self.flush_pipes(now);
            if self.starved_tcp || self.starved_control {
                self.resume_accepting(now);
            }
        }
        log::info!("smtpd exiting");
        Ok(())
    }

    fn on_signal(&mut self) {
        crate::sys::read_signals(self.signal_fd, &mut self.signals);
        for sig in std::mem::take(&mut self.signals) {
            match sig {
                libc::SIGTERM | libc::SIGINT if self.stopping.is_none() => {
                    log::info!("smtpd received signal {sig}, stopping");
                    self.stop();
                }
                // The parent reloads; a SIGHUP sent to every process (pkill) reloads once.
                libc::SIGHUP => log::debug!("smtpd SIGHUP: the parent process reloads"),
                _ => {}
            }
        }
    }

    /// Runs `f` on SMTP session `key` (of generation `gen`, when given) with its context,
    /// then queues the session for removal if it is done. `None` when there is no such
    /// session.
    fn with_conn<R>(
        &mut self,
        key: usize,
        gen: Option<u64>,
        f: impl FnOnce(&mut Conn, &mut Ctx) -> R,
    ) -> Option<R> {
        let Server {
            slab,
            closing,
            cfg,
            spool,
            committer,
            lookups,
            msg_files,
            timers,
            parent,
            counters,
            smtp_backlog,
            ..
        } = self;
        let Some(Endpoint::Smtp(conn)) = slab.get_mut(key) else {
            return None;
        };
        if gen.is_some_and(|g| g != conn.gen) {
            return None;
        }
        let cfg = conn.cfg.clone().unwrap_or_else(|| cfg.clone());
        let mut ctx = Ctx {
            cfg: &cfg,
            spool,
            committer,
            lookups,
            key,
            parent: parent.as_deref(),
            counters,
        };
        let had_file = conn.holds_file();
        // A bug in the session's handling ends that session, not the daemon.
        let r = match std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut *conn, &mut ctx))) {
            Ok(r) => Some(r),
            Err(_) => {
                log::error!(
                    "{:016x} smtp internal error: the session is closed",
                    conn.id()
                );
                conn.on_bug(spool);
                None
            }
        };
        match (had_file, conn.holds_file()) {
            (false, true) => *msg_files += 1,
            (true, false) => *msg_files = msg_files.saturating_sub(1),
            _ => {}
        }
        if conn.take_rearm() {
            // A handshake's deadline, earlier than the one armed.
            timers.add(conn.deadline, Due::Endpoint { key, gen: conn.gen });
        }
        if conn.take_backlog() {
            smtp_backlog.push((key, conn.gen));
        }
        if conn.finished().is_some() {
            closing.push(key);
        }
        r
    }

    /// Stops accepting, ends idle sessions with 421, lets commits in flight finish.
    fn stop(&mut self) {
        let grace = Instant::now() + STOP_GRACE;
        self.stopping = Some(grace);
        self.timers.add(grace, Due::Stop);
        if let Some(mut l) = self.control.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.slab.get_mut(key) {
                Some(Endpoint::Listener { sock, .. }) => {
                    let _ = self.poll.registry().deregister(sock);
                    self.slab.remove(key);
                }
                Some(Endpoint::Smtp(conn)) if !conn.committing() => {
                    self.with_conn(key, None, |conn, ctx| {
                        conn.close_with(ctx, Reply::SHUTDOWN, Reason::Shutdown)
                    });
                }
                Some(Endpoint::Control(_) | Endpoint::Http(_) | Endpoint::Proxy(_)) => {
                    self.closing.push(key)
                }
                _ => {}
            }
        }
        self.reap();
    }

    /// Handles events of endpoint `key`. A bug (a panic) in its handling stays with
    /// that endpoint: a session is closed with a 421, a filter is failed and restarted,
    /// an outgoing session's envelopes are retried later, a control client is dropped.
    fn dispatch(&mut self, key: usize, readable: bool, writable: bool, now: Instant) {
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.dispatch_unguarded(key, readable, writable, now)
        }));
        if caught.is_err() {
            self.contain_bug(key, now);
        }
    }

    /// After a caught panic in the handling of endpoint `key`: ends what it was doing.
    fn contain_bug(&mut self, key: usize, now: Instant) {
        match self.slab.get_mut(key) {
            Some(Endpoint::Smtp(conn)) => {
                log::error!(
                    "{:016x} smtp internal error: the session is closed",
                    conn.id()
                );
                self.chains.end(conn.id());
                conn.on_bug(&self.spool);
                self.closing.push(key);
            }
            Some(Endpoint::Filter(p)) => {
                let fid = p.id;
                self.filter_failed(fid, "internal error while handling it", now);
            }
            Some(Endpoint::Mta(_)) => {
                log::error!("mta internal error: the session is abandoned");
                self.mta_abort(key, "internal error");
                self.queue_actions(now);
            }
            Some(Endpoint::Control(_)) => {
                log::error!("control internal error: the client is dropped");
                self.closing.push(key);
            }
            Some(Endpoint::Listener { .. }) => log::error!("smtpd internal error while accepting"),
            Some(Endpoint::Dns(_)) => {
                log::error!("dns internal error: the query's try fails");
                self.dns_bug(key, now);
            }
            Some(Endpoint::Sts(_)) => {
                log::error!("mta-sts internal error: the fetch fails");
                self.sts_fetch_end(key, Err("internal error".into()), now);
            }
            Some(Endpoint::Http(_)) => {
                log::error!("metrics internal error: the client is dropped");
                self.closing.push(key);
            }
            Some(Endpoint::Proxy(_)) => {
                log::error!("smtp internal error while reading a PROXY header");
                self.closing.push(key);
            }
            None => {}
        }
    }

    fn dispatch_unguarded(&mut self, key: usize, readable: bool, writable: bool, now: Instant) {
        match self.slab.get_mut(key) {
            Some(Endpoint::Listener { .. }) => self.accept(key, now),
            Some(Endpoint::Smtp(_)) => {
                self.with_conn(key, None, |conn, ctx| {
                    conn.ready(readable, writable);
                    conn.pump(ctx, now);
                });
                self.after_conn(key, now);
                self.pump_more(key, now);
            }
            Some(Endpoint::Filter(_)) => self.filter_io(key, now),
            Some(Endpoint::Control(_)) => self.control_io(key, now),
            Some(Endpoint::Mta(conn)) => {
                conn.pump(now, self.cfg.mta.timeout);
                self.mta_after(key);
                self.queue_actions(now);
            }
            Some(Endpoint::Dns(_)) => self.dns_sock_io(key, now),
            Some(Endpoint::Sts(_)) => {
                self.sts_io(key, now);
                self.queue_actions(now);
            }
            Some(Endpoint::Http(_)) => self.http_io(key, now),
            Some(Endpoint::Proxy(_)) => self.proxy_io(key, now),
            None => {}
        }
    }

    /// A session whose message lines went to a filter may have more input, for which
    /// no readiness event will come: it goes on (a bounded number of rounds).
    fn pump_more(&mut self, key: usize, now: Instant) {
        for _ in 0..64 {
            let more = self.with_conn(key, None, |conn, ctx| {
                let more = conn.has_more();
                if more {
                    conn.pump(ctx, now);
                }
                more
            });
            if more != Some(true) {
                break;
            }
            self.after_conn(key, now);
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
