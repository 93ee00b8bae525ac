//! A reload in the engine (see `privsep/reload.rs` for the parent's side).
//!
//! The parent sends the new listeners' sockets, the new filter and table processes'
//! sockets, then the files it read for the new configuration (a memfd). A thread
//! parses the configuration from those files (`files::replay`: the engine opens no
//! file for it), numbers its filters as the parent did and lets unchanged table
//! processes keep their clients; the loop then applies it in one step at a turn:
//!
//! - a session keeps the configuration it started under (`Conn::cfg`), so its rules,
//!   tables and filters stay what they were; new sessions get the new one;
//! - listeners are matched by address: kept ones keep their sockets (and their
//!   queue of connections), removed ones close, new ones open;
//! - filter pipes are kept by filter id, which means the same definition in every
//!   configuration; the processes of new ones attach;
//! - the limits (`max-sessions`, the connection rate, control clients), the queue
//!   manager's and the spool I/O thread's configuration, the TLS setup follow.
//!
//! The outcome goes back to the parent, to the control clients that asked
//! (`smtpctl reload`), and to `smtpd_config_reloads_total`.

use super::{Endpoint, Server, FIRST_SLOT};
use crate::config::reload::{align_filters, listen_addrs, share_backends};
use crate::config::{Config, Origin, METRICS_LISTENER};
use crate::privsep::reload as msg;
use crate::tls::TlsSetup;
use mio::net::TcpListener;
use mio::{Interest, Token};
use std::io::Read;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::sync::Arc;

/// A configuration parsed off the loop, with its listeners' TLS.
type Parsed = Result<(Config, TlsSetup), String>;

/// What the engine holds of reloads between loop turns.
#[derive(Default)]
pub(super) struct Reloading {
    /// Where the configuration comes from (set at start).
    origin: Option<Origin>,
    /// Sockets of the listeners the next configuration adds.
    listeners: Vec<std::net::TcpListener>,
    /// Sockets of its new filter processes, by filter id.
    filters: Vec<(usize, OwnedFd)>,
    /// Sockets of its new table processes, by table id.
    tables: Vec<(usize, OwnedFd)>,
    /// The latest generation the parent sent.
    gen: u64,
    /// The parse in progress: its generation and where its outcome arrives.
    parse: Option<(u64, mpsc::Receiver<Parsed>)>,
    /// Control clients waiting for the outcome (slab key, generation).
    waiting: Vec<(usize, u64)>,
}

impl Server {
    /// Where the configuration was read from at start, for reloads.
    pub fn set_origin(&mut self, origin: Origin) {
        self.reloading.origin = Some(origin);
    }

    /// `smtpctl reload` from control client `key`: the parent is asked, the client
    /// waits for the outcome.
    pub(super) fn reload_request(&mut self, key: usize) {
        let Some(Endpoint::Control(c)) = self.slab.get_mut(key) else {
            return;
        };
        if self.parent.is_none() {
            c.out
                .extend_from_slice(b"error: no privileged process to reload\n");
            return;
        }
        c.waiting = true;
        self.reloading.waiting.push((key, c.gen));
        self.ask_parent(&[msg::REQUEST]);
    }

    /// A message of a reload from the parent: `'L'`, `'f'`, `'t'`, `'C'` or `'E'`.
    pub(super) fn reload_message(&mut self, m: &[u8], fd: Option<OwnedFd>) {
        let r = &mut self.reloading;
        match (m.first().copied(), fd) {
            (Some(msg::NEW_LISTENER), Some(fd)) => r.listeners.push(fd.into()),
            (Some(msg::NEW_FILTER), Some(fd)) => match crate::privsep::decode_filter_id(m) {
                Some(id) => r.filters.push((id, fd)),
                None => log::warn!("reload: malformed filter handover ignored"),
            },
            (Some(msg::NEW_TABLE), Some(fd)) => match crate::privsep::decode_filter_id(m) {
                Some(id) => r.tables.push((id, fd)),
                None => log::warn!("reload: malformed table handover ignored"),
            },
            (Some(msg::CONFIG), Some(fd)) => match msg::decode_config(m) {
                Some(gen) => self.parse_config(gen, fd),
                None => log::warn!("reload: malformed configuration message ignored"),
            },
            (Some(msg::FAILED), _) => {
                let why = String::from_utf8_lossy(&m[1..]).into_owned();
                self.reload_failed(&why);
            }
            _ => log::warn!("reload: malformed message from the parent ignored"),
        }
    }

    /// The reload failed (in the parent, or here): the new sockets sent for it go.
    fn reload_failed(&mut self, why: &str) {
        let r = &mut self.reloading;
        r.listeners.clear();
        r.filters.clear();
        r.tables.clear();
        self.counters.reloads[1] += 1;
        self.answer_waiting(&format!("error: {why}\n"));
    }

    /// Starts the parse of configuration `gen` from the files in `fd`, on a thread.
    fn parse_config(&mut self, gen: u64, fd: OwnedFd) {
        let Some(origin) = self.reloading.origin.clone() else {
            self.finish_reload(
                gen,
                Err("the engine does not know the configuration's origin".into()),
            );
            return;
        };
        let old = self.cfg.clone();
        let waker = self._waker.clone();
        let (tx, rx) = mpsc::channel();
        self.reloading.gen = gen;
        self.reloading.parse = Some((gen, rx));
        let spawned = std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                let r = parse(std::fs::File::from(fd), &origin, &old);
                let _ = tx.send(r);
                let _ = waker.wake();
            });
        if let Err(e) = spawned {
            self.reloading.parse = None;
            self.finish_reload(gen, Err(format!("cannot start a thread: {e}")));
        }
    }

    /// Takes the outcome of a parse, if one finished (every loop turn).
    pub(super) fn reload_turn(&mut self) {
        let Some((gen, rx)) = &self.reloading.parse else {
            return;
        };
        let gen = *gen;
        let parsed = match rx.try_recv() {
            Ok(p) => p,
            Err(mpsc::TryRecvError::Empty) => return,
            Err(mpsc::TryRecvError::Disconnected) => Err("the reload thread failed".into()),
        };
        self.reloading.parse = None;
        // An older parse that finished late is dropped: a newer one follows.
        if gen != self.reloading.gen {
            return;
        }
        let r = match self.stopping {
            Some(_) => Err("smtpd is stopping".into()),
            None => parsed.and_then(|(cfg, tls)| self.apply(cfg, tls)),
        };
        self.finish_reload(gen, r);
    }

    /// Tells the parent and the waiting control clients how reload `gen` went.
    fn finish_reload(&mut self, gen: u64, r: Result<(), String>) {
        self.ask_parent(&msg::encode_applied(gen, &r));
        match &r {
            Ok(()) => {
                self.counters.reloads[0] += 1;
                log::info!(
                    "smtpd: configuration reloaded from {}",
                    self.cfg.path.display()
                );
                self.answer_waiting("configuration reloaded\n");
            }
            Err(e) => {
                self.reload_failed(e);
                log::warn!("smtpd: reload failed, the configuration in force is kept: {e}");
            }
        }
    }

    fn answer_waiting(&mut self, line: &str) {
        for (key, gen) in std::mem::take(&mut self.reloading.waiting) {
            if let Some(Endpoint::Control(c)) = self.slab.get_mut(key) {
                if c.gen == gen {
                    c.out.extend_from_slice(line.as_bytes());
                    c.waiting = false;
                    self.control_io(key, std::time::Instant::now());
                }
            }
        }
    }

    /// Puts `new` in force for new sessions. Fails, changing nothing, when a socket
    /// of a new listener is missing.
    fn apply(&mut self, new: Config, tls: TlsSetup) -> Result<(), String> {
        let want = listen_addrs(&new, METRICS_LISTENER);
        let have: Vec<(usize, SocketAddr)> = self
            .slab
            .iter()
            .filter_map(|(k, e)| match e {
                Endpoint::Listener { sock, .. } => sock.local_addr().ok().map(|a| (k, a)),
                _ => None,
            })
            .collect();
        let fresh: Vec<(std::net::TcpListener, SocketAddr)> =
            std::mem::take(&mut self.reloading.listeners)
                .into_iter()
                .filter_map(|s| s.local_addr().ok().map(|a| (s, a)))
                .collect();
        for (addr, _) in &want {
            if !have.iter().any(|(_, a)| a == addr) && !fresh.iter().any(|(_, a)| a == addr) {
                return Err(format!("no socket for the new listener on {addr}"));
            }
        }
        // Listener index changes, for the connections waiting for a PROXY header.
        let mut moved = Vec::new();
        for (key, addr) in have {
            let idx = want.iter().find(|(a, _)| *a == addr).map(|(_, i)| *i);
            match (self.slab.get_mut(key), idx) {
                (Some(Endpoint::Listener { idx: old, .. }), Some(i)) => {
                    moved.push((*old, i));
                    *old = i;
                }
                (Some(Endpoint::Listener { sock, idx: old }), None) => {
                    let _ = self.poll.registry().deregister(sock);
                    log::info!("smtpd no longer listening on {addr}");
                    moved.push((*old, usize::MAX));
                    self.slab.remove(key);
                }
                _ => {}
            }
        }
        for (sock, addr) in fresh {
            let Some(&(_, idx)) = want.iter().find(|(a, _)| *a == addr) else {
                continue;
            };
            if let Err(e) = sock.set_nonblocking(true) {
                log::warn!("smtpd cannot listen on {addr}: {e}");
                continue;
            }
            let key = self.slab.insert(Endpoint::Listener {
                sock: TcpListener::from_std(sock),
                idx,
            });
            if let Some(Endpoint::Listener { sock, .. }) = self.slab.get_mut(key) {
                match self.poll.registry().register(
                    sock,
                    Token(key + FIRST_SLOT),
                    Interest::READABLE,
                ) {
                    Ok(()) => log::info!("smtpd listening on {addr}"),
                    Err(e) => {
                        log::warn!("smtpd cannot listen on {addr}: {e}");
                        self.slab.remove(key);
                    }
                }
            }
        }
        self.proxies_moved(&moved);
        let cfg = Arc::new(new);
        self.cfg = cfg.clone();
        self.tls = tls;
        self.queue.set_config(cfg.clone());
        if self
            .io
            .submit(crate::queue::io::IoJob::Config(cfg.clone()))
            .is_err()
        {
            log::warn!("reload: the spool I/O thread is gone");
        }
        // Filter ids only grow: the pipes kept stay where they are.
        self.pipes.resize(cfg.filters.len(), None);
        for (id, fd) in std::mem::take(&mut self.reloading.filters) {
            if let Err(e) = self.attach_filter(id, fd) {
                log::warn!("filter {id}: cannot attach: {e}");
            }
        }
        for (id, fd) in std::mem::take(&mut self.reloading.tables) {
            self.table_handed(id, fd);
        }
        super::tables::watch(&cfg, self.parent.as_ref());
        self.max_sessions = super::max_sessions(&cfg, self.fds.limit);
        self.rates.set_limit(cfg.smtp.max_connection_rate);
        self.ctl_slots
            .set_limits(cfg.control.max_clients, cfg.control.max_clients_per_user);
        self.rdns = cfg.needs_rdns();
        Ok(())
    }

    /// Connections waiting for their PROXY header follow their listener's new index;
    /// those of a listener that went are closed.
    fn proxies_moved(&mut self, moved: &[(usize, usize)]) {
        let mut close = Vec::new();
        for (key, e) in self.slab.iter_mut() {
            if let Endpoint::Proxy(p) = e {
                match moved.iter().find(|(old, _)| *old == p.listener()) {
                    Some((_, usize::MAX)) | None => close.push(key),
                    Some((_, new)) => p.set_listener(*new),
                }
            }
        }
        self.closing.extend(close);
    }
}

/// Reads the files the parent sent, parses the configuration from them, numbers its
/// filters after `old`'s and lets it share `old`'s table processes, and builds its TLS.
fn parse(file: std::fs::File, origin: &Origin, old: &Config) -> Parsed {
    let mut bytes = Vec::new();
    file.take(crate::files::MAX_BUNDLE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("the configuration's files: {e}"))?;
    let bundle = crate::files::Bundle::decode(&bytes)
        .ok_or("the configuration's files came malformed from the parent")?;
    crate::files::replay(bundle, || {
        let mut cfg = origin.load().map_err(|e| e.to_string())?;
        crate::config::reload::check(old, &cfg)?;
        align_filters(&mut cfg, old);
        share_backends(&mut cfg, old);
        let tls = crate::tls::load(&cfg).map_err(|e| e.to_string())?;
        Ok((cfg, tls))
    })
}
