//! The one mio loop: listeners, SMTP connections, signals, the commit waker, timers.
//!
//! Every token above [`FIRST_SLOT`] indexes the slab of endpoints. Handlers tolerate
//! spurious and stale events; endpoints are removed only between event batches.

use crate::config::Config;
use crate::queue::spool::{Committer, Spool};
use crate::ruleset;
use crate::smtp::command::Mailbox;
use crate::smtp::conn::{Conn, Ctx, Reason};
use crate::smtp::reply::Reply;
use crate::smtp::session::{Client, Limits, MatchCtx, Policy, Session};
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIGNAL: Token = Token(0);
const WAKER: Token = Token(1);
/// Tokens below this are reserved.
const FIRST_SLOT: usize = 16;
/// How long a stopping daemon waits for commits in flight.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Fraction of the spool's filesystem kept free (as OpenSMTPD: 5%).
const MIN_FREE_PERCENT: u64 = 5;

enum Entry {
    Listener { sock: TcpListener, idx: usize },
    Smtp(Box<Conn>),
}

/// The recipient policy backed by the configuration and the spool's free space.
struct ConfigPolicy<'a> {
    cfg: &'a Config,
    spool: &'a Spool,
}

impl Policy for ConfigPolicy<'_> {
    fn has_space(&mut self, size: u64) -> bool {
        match crate::sys::disk_space(self.spool.root()) {
            Ok((free, total)) => free >= size.saturating_add(total / 100 * MIN_FREE_PERCENT),
            Err(e) => {
                log::warn!("queue: statvfs failed: {e}");
                true
            }
        }
    }
    fn resolve(&mut self, ctx: &MatchCtx, rcpt: &Mailbox) -> Result<(usize, String), Reply> {
        ruleset::resolve(self.cfg, ctx, rcpt)
    }
}

/// The daemon's engine.
pub struct Server {
    cfg: Arc<Config>,
    poll: Poll,
    slab: Slab<Entry>,
    spool: Spool,
    committer: Committer,
    _waker: Arc<Waker>,
    signal_fd: RawFd,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    per_addr: HashMap<IpAddr, usize>,
    sessions: usize,
    max_sessions: usize,
    next_gen: u64,
    stopping: Option<Instant>,
    closing: Vec<usize>,
    signals: Vec<i32>,
}

impl Server {
    /// Prepares the loop over listeners bound by [`bind_listeners`]; starts the sync
    /// thread (call it after daemonizing: threads do not survive fork).
    pub fn new(
        cfg: Arc<Config>,
        spool: Spool,
        listeners: Vec<(std::net::TcpListener, usize)>,
    ) -> io::Result<Server> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let w = waker.clone();
        let committer = Committer::start(move || {
            let _ = w.wake();
        })?;
        let mut slab = Slab::new();
        for (sock, idx) in listeners {
            let key = slab.insert(Entry::Listener {
                sock: TcpListener::from_std(sock),
                idx,
            });
            if let Some(Entry::Listener { sock, .. }) = slab.get_mut(key) {
                poll.registry()
                    .register(sock, Token(key + FIRST_SLOT), Interest::READABLE)?;
            }
        }
        let nofile = crate::sys::raise_nofile();
        let max_sessions = if cfg.smtp.max_sessions > 0 {
            cfg.smtp.max_sessions
        } else {
            // Each session may hold a socket and a message file.
            (nofile.saturating_sub(64) / 2).max(16) as usize
        };
        Ok(Server {
            cfg,
            poll,
            slab,
            spool,
            committer,
            _waker: waker,
            signal_fd: -1,
            timers: BinaryHeap::new(),
            per_addr: HashMap::new(),
            sessions: 0,
            max_sessions,
            next_gen: 1,
            stopping: None,
            closing: Vec::new(),
            signals: Vec::new(),
        })
    }

    /// Runs until SIGTERM or SIGINT and the sessions in flight are done.
    pub fn run(&mut self) -> io::Result<()> {
        self.signal_fd = crate::sys::signal_pipe()?;
        self.poll
            .registry()
            .register(&mut SourceFd(&self.signal_fd), SIGNAL, Interest::READABLE)?;
        let mut events = Events::with_capacity(512);
        loop {
            let now = Instant::now();
            if let Some(t) = self.stopping {
                if self.sessions == 0 || now >= t {
                    break;
                }
            }
            let timeout = self
                .timers
                .peek()
                .map(|Reverse((t, _, _))| t.saturating_duration_since(now))
                .map(|d| d.min(Duration::from_secs(1)))
                .or(Some(Duration::from_secs(1)));
            match self.poll.poll(&mut events, timeout) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => r?,
            }
            let now = Instant::now();
            for ev in events.iter() {
                match ev.token() {
                    SIGNAL => self.on_signal(),
                    WAKER => self.on_commits(now),
                    Token(t) if t >= FIRST_SLOT => {
                        self.dispatch(t - FIRST_SLOT, ev.is_readable() || ev.is_read_closed(), ev.is_writable() || ev.is_write_closed(), now)
                    }
                    t => log::warn!("event on unused reserved token {t:?}"),
                }
            }
            // Commits may finish between a wake and the poll; take them every turn.
            self.on_commits(now);
            self.expire_timers(now);
            self.reap();
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
                libc::SIGHUP => log::info!("smtpd SIGHUP: reloading is not supported, ignored"),
                _ => {}
            }
        }
    }

    /// Stops accepting, ends idle sessions with 421, lets commits in flight finish.
    fn stop(&mut self) {
        self.stopping = Some(Instant::now() + STOP_GRACE);
        let keys: Vec<usize> = self.slab.iter().map(|(k, _)| k).collect();
        for key in keys {
            match self.slab.get_mut(key) {
                Some(Entry::Listener { sock, .. }) => {
                    let _ = self.poll.registry().deregister(sock);
                    self.slab.remove(key);
                }
                Some(Entry::Smtp(conn)) => {
                    if !conn.committing() {
                        let mut policy = ConfigPolicy { cfg: &self.cfg, spool: &self.spool };
                        let mut ctx = Ctx {
                            cfg: &self.cfg,
                            spool: &self.spool,
                            committer: &self.committer,
                            policy: &mut policy,
                            key,
                        };
                        conn.close_with(&mut ctx, Reply::SHUTDOWN, Reason::Shutdown);
                        if conn.finished().is_some() {
                            self.closing.push(key);
                        }
                    }
                }
                None => {}
            }
        }
        self.reap();
    }

    fn dispatch(&mut self, key: usize, readable: bool, writable: bool, now: Instant) {
        match self.slab.get_mut(key) {
            Some(Entry::Listener { .. }) => self.accept(key, now),
            Some(Entry::Smtp(conn)) => {
                conn.ready(readable, writable);
                let mut policy = ConfigPolicy { cfg: &self.cfg, spool: &self.spool };
                let mut ctx = Ctx {
                    cfg: &self.cfg,
                    spool: &self.spool,
                    committer: &self.committer,
                    policy: &mut policy,
                    key,
                };
                conn.pump(&mut ctx, now);
                if conn.finished().is_some() {
                    self.closing.push(key);
                }
            }
            None => {}
        }
    }

    fn accept(&mut self, key: usize, now: Instant) {
        loop {
            let (sock, idx) = match self.slab.get(key) {
                Some(Entry::Listener { sock, idx }) => match sock.accept() {
                    Ok((s, addr)) => ((s, addr), *idx),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // EMFILE and friends: try again on the next event.
                        log::warn!("smtpd accept failed: {e}");
                        return;
                    }
                },
                _ => return,
            };
            let ((mut stream, peer), lidx) = (sock, idx);
            let ip = canonical(peer.ip());
            if self.sessions >= self.max_sessions {
                refuse(&mut stream, &Reply::TOO_MANY_SESSIONS);
                log::info!("smtp refused address={ip} reason=max-sessions");
                continue;
            }
            let limit = self.cfg.smtp.max_sessions_per_address;
            let count = self.per_addr.get(&ip).copied().unwrap_or(0);
            if limit > 0 && count >= limit {
                refuse(&mut stream, &Reply::TOO_MANY_FROM_ADDRESS);
                log::info!("smtp refused address={ip} reason=max-sessions-per-address");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let listener = &self.cfg.listeners[lidx];
            let client = Client {
                addr: Some(ip),
                local: ip.is_loopback(),
                server_name: listener.hostname.clone().unwrap_or_else(|| self.cfg.hostname.clone()),
                tag: listener.tag.clone(),
            };
            let limits = Limits {
                max_message_size: self.cfg.smtp.max_message_size,
                max_rcpt: self.cfg.smtp.max_rcpt,
                max_mails: self.cfg.smtp.max_mails,
                max_errors: self.cfg.smtp.max_errors,
                max_hops: self.cfg.smtp.max_hops,
            };
            let id = crate::sys::random_u64();
            let mut actions = Vec::new();
            let session = Session::new(id, client, limits, &mut actions);
            let gen = self.next_gen;
            self.next_gen += 1;
            let deadline = now + self.cfg.smtp.timeout;
            let conn = Conn::new(stream, gen, ip, session, actions, deadline);
            let ckey = self.slab.insert(Entry::Smtp(Box::new(conn)));
            if let Some(Entry::Smtp(conn)) = self.slab.get_mut(ckey) {
                if let Err(e) = self.poll.registry().register(
                    &mut conn.sock,
                    Token(ckey + FIRST_SLOT),
                    Interest::READABLE | Interest::WRITABLE,
                ) {
                    log::warn!("smtpd cannot register a connection: {e}");
                    self.slab.remove(ckey);
                    continue;
                }
            }
            self.sessions += 1;
            *self.per_addr.entry(ip).or_insert(0) += 1;
            self.timers.push(Reverse((deadline, ckey, gen)));
            log::info!("{id:016x} smtp connected address={ip} port={}", peer.port());
            // The greeting goes out when the socket reports writable.
        }
    }

    fn on_commits(&mut self, now: Instant) {
        for done in self.committer.take_done() {
            let (key, gen) = done.key;
            match self.slab.get_mut(key) {
                Some(Entry::Smtp(conn)) if conn.gen == gen => {
                    let mut policy = ConfigPolicy { cfg: &self.cfg, spool: &self.spool };
                    let mut ctx = Ctx {
                        cfg: &self.cfg,
                        spool: &self.spool,
                        committer: &self.committer,
                        policy: &mut policy,
                        key,
                    };
                    conn.on_committed(&mut ctx, done.msgid, done.result, now);
                    if self.stopping.is_some() {
                        conn.close_with(&mut ctx, Reply::SHUTDOWN, Reason::Shutdown);
                    }
                    if conn.finished().is_some() {
                        self.closing.push(key);
                    }
                }
                _ => match done.result {
                    Ok(()) => log::info!("smtp message msgid={:08x} committed after its client left", done.msgid),
                    Err(e) => log::warn!("smtp commit of {:08x} failed after its client left: {e}", done.msgid),
                },
            }
        }
    }

    fn expire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((t, key, gen))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(Entry::Smtp(conn)) = self.slab.get_mut(key) else {
                continue;
            };
            if conn.gen != gen {
                continue;
            }
            if conn.deadline > now || conn.committing() {
                let next = conn.deadline.max(now + Duration::from_secs(1));
                self.timers.push(Reverse((next, key, gen)));
                continue;
            }
            let mut policy = ConfigPolicy { cfg: &self.cfg, spool: &self.spool };
            let mut ctx = Ctx {
                cfg: &self.cfg,
                spool: &self.spool,
                committer: &self.committer,
                policy: &mut policy,
                key,
            };
            conn.close_with(&mut ctx, Reply::TIMEOUT, Reason::Timeout);
            // A client that does not read its 421 is not waited for.
            self.closing.push(key);
        }
    }

    fn reap(&mut self) {
        for key in std::mem::take(&mut self.closing) {
            let Some(Entry::Smtp(conn)) = self.slab.get_mut(key) else {
                continue;
            };
            let reason = conn.finished().unwrap_or(Reason::Timeout);
            let _ = self.poll.registry().deregister(&mut conn.sock);
            conn.release(&self.spool);
            let _ = conn.sock.flush();
            let (id, ip) = (conn.id(), conn.peer);
            self.slab.remove(key);
            self.sessions -= 1;
            if let Some(n) = self.per_addr.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    self.per_addr.remove(&ip);
                }
            }
            log::info!("{id:016x} smtp disconnected reason={}", reason.as_str());
        }
    }
}

/// IPv4-mapped IPv6 addresses are shown and counted as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Best-effort 421 on a connection we will not serve.
fn refuse(stream: &mut mio::net::TcpStream, reply: &Reply) {
    let mut out = Vec::new();
    reply.render(&mut out);
    let _ = stream.write(&out);
}

/// Binds every listener of the configuration, with its index in `cfg.listeners`.
/// Done before the daemon detaches so that errors reach the terminal.
pub fn bind_listeners(cfg: &Config) -> io::Result<Vec<(std::net::TcpListener, usize)>> {
    let mut out = Vec::new();
    for (idx, l) in cfg.listeners.iter().enumerate() {
        for addr in &l.addrs {
            let sock = crate::sys::listen_tcp(*addr, 1024)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))?;
            log::info!("smtpd listening on {addr}");
            out.push((sock, idx));
        }
    }
    Ok(out)
}
