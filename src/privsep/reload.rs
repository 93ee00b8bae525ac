//! A reload in the parent (SIGHUP, or `smtpctl reload` relayed by the engine).
//!
//! ```text
//! parent: read smtpd.conf again, recording every file read (files::record)
//!         check: what cannot change live (the spool), TLS files, new listeners bound
//!         start the new filter and table processes
//!    |    'L' + socket (each new listener), 'f'/'t' id + socket (each new process),
//!    v    'C' generation + memfd (the files read)
//! engine: parse the same configuration from those files, off the loop; apply it
//!    |    'c' generation + outcome
//!    v
//! parent: commit (the processes no longer used stop after a grace), or undo
//! ```
//!
//! A reload that fails anywhere leaves the daemon on the configuration it had, and
//! says why, with the file and line of a parse error. One reload is in flight at a
//! time; a request that comes meanwhile runs once it is over.

use super::{filter_spec, table_spec};
use crate::config::reload::{align_filters, check, filters_in_use, listen_addrs};
use crate::config::{Config, Origin, METRICS_LISTENER};
use crate::filter::supervisor::{self, ProcSpec, Role, Running};
use crate::sys;
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// How long a filter or table process that a reload retired keeps running, for the
/// sessions that still use it, before it is told to stop (SIGTERM).
pub const RETIRE_GRACE: Duration = Duration::from_secs(5);

/// Parent -> engine: a listener of the configuration that follows. `'L'` + socket.
pub const NEW_LISTENER: u8 = b'L';
/// Parent -> engine: a filter process of the configuration that follows.
/// `'f'` id + socket.
pub const NEW_FILTER: u8 = b'f';
/// Parent -> engine: a table process of the configuration that follows.
/// `'t'` id + socket.
pub const NEW_TABLE: u8 = b't';
/// Parent -> engine: the configuration: `'C'` generation + memfd of the files read.
pub const CONFIG: u8 = b'C';
/// Parent -> engine: the reload failed: `'E'` + why.
pub const FAILED: u8 = b'E';
/// Engine -> parent: reload (`smtpctl reload`). `'H'`.
pub const REQUEST: u8 = b'H';
/// Engine -> parent: the outcome: `'c'` generation + `'1'` or `'0'` + why.
pub const APPLIED: u8 = b'c';

/// Longest error text sent over the channel.
const MAX_WHY: usize = 4096;

/// A reload whose configuration the engine has not applied yet.
struct Pending {
    gen: u64,
    cfg: Config,
    spawned: Vec<Running>,
}

/// The parent's side of reloads: the configuration in force and the reload in
/// flight.
pub struct Reloader {
    origin: Origin,
    cfg: Config,
    gen: u64,
    pending: Option<Pending>,
    again: bool,
    /// Processes retired by a reload, and when they are told to stop.
    retiring: Vec<(Running, Option<Instant>)>,
}

/// An engine -> parent message of a reload: `'c'`.
pub fn encode_applied(gen: u64, result: &Result<(), String>) -> Vec<u8> {
    let mut v = vec![APPLIED];
    v.extend_from_slice(&gen.to_be_bytes());
    match result {
        Ok(()) => v.push(b'1'),
        Err(e) => {
            v.push(b'0');
            v.extend_from_slice(truncate(e).as_bytes());
        }
    }
    v
}

/// The generation and outcome of an `'c'` message.
pub fn decode_applied(b: &[u8]) -> Option<(u64, Result<(), String>)> {
    let gen = u64::from_be_bytes(b.get(1..9)?.try_into().ok()?);
    match b.get(9)? {
        b'1' if b.len() == 10 => Some((gen, Ok(()))),
        b'0' => Some((gen, Err(String::from_utf8_lossy(&b[10..]).into_owned()))),
        _ => None,
    }
}

/// A `'C'` message's generation.
pub fn decode_config(b: &[u8]) -> Option<u64> {
    if b.len() != 9 || b[0] != CONFIG {
        return None;
    }
    Some(u64::from_be_bytes(b[1..9].try_into().ok()?))
}

fn truncate(s: &str) -> &str {
    let mut n = s.len().min(MAX_WHY);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// The same process, whatever its id.
fn same_process(a: &ProcSpec, b: &ProcSpec) -> bool {
    a.name == b.name
        && a.role == b.role
        && a.command == b.command
        && a.user == b.user
        && a.group == b.group
        && a.chroot == b.chroot
}

impl Reloader {
    /// The parent's reloads of the configuration `cfg`, read from `origin`.
    pub fn new(origin: Origin, cfg: Config) -> Reloader {
        Reloader {
            origin,
            cfg,
            gen: 0,
            pending: None,
            again: false,
            retiring: Vec::new(),
        }
    }

    /// Starts a reload (SIGHUP or the engine's request); one in flight runs again
    /// after it.
    pub fn start(&mut self, chan: RawFd, procs: &[Running]) {
        if self.pending.is_some() {
            self.again = true;
            return;
        }
        log::info!("smtpd: reloading the configuration");
        if let Err(e) = self.prepare(chan, procs) {
            log::warn!("smtpd: reload failed, the configuration in force is kept: {e}");
            let mut msg = vec![FAILED];
            msg.extend_from_slice(truncate(&e).as_bytes());
            if let Err(e) = sys::send_msg(chan, &msg, None) {
                log::warn!("parent: cannot tell the engine: {e}");
            }
        }
    }

    fn prepare(&mut self, chan: RawFd, procs: &[Running]) -> Result<(), String> {
        let (read, bundle) = crate::files::record(|| {
            let cfg = self.origin.load()?;
            crate::tls::load(&cfg)?;
            Ok::<_, crate::config::ConfigError>(cfg)
        });
        let mut new = read.map_err(|e| e.to_string())?;
        check(&self.cfg, &new)?;
        align_filters(&mut new, &self.cfg);
        // The new addresses are bound here, as root; one that cannot be fails it all.
        let old = listen_addrs(&self.cfg, METRICS_LISTENER);
        let mut socks = Vec::new();
        for (addr, idx) in listen_addrs(&new, METRICS_LISTENER) {
            if old.iter().any(|(a, _)| *a == addr) || socks.iter().any(|(a, _)| *a == addr) {
                continue;
            }
            let backlog = if idx == METRICS_LISTENER { 64 } else { 1024 };
            let s = sys::listen_tcp(addr, backlog)
                .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            socks.push((addr, s));
        }
        // The processes the new configuration adds.
        let mut specs = Vec::new();
        for id in filters_in_use(&new) {
            let running = procs
                .iter()
                .any(|r| r.spec.role == Role::Filter && r.spec.id == id);
            if let Some(spec) = new.filters.get(id).and_then(|f| filter_spec(id, f)) {
                if !running {
                    specs.push(spec);
                }
            }
        }
        for (id, t) in new.tables.iter().enumerate() {
            if let Some(spec) = table_spec(id, t) {
                if !procs.iter().any(|r| same_process(&r.spec, &spec)) {
                    specs.push(spec);
                }
            }
        }
        let mut spawned = Vec::new();
        let mut ends = Vec::new();
        for spec in specs {
            match supervisor::spawn(&spec) {
                Ok((pid, engine_end, err)) => {
                    log::info!("{} {} started, pid {pid}", spec.what(), spec.name);
                    ends.push((spec.role == Role::Filter, spec.id, engine_end));
                    spawned.push(Running::new(spec, pid, err));
                }
                Err(e) => {
                    let why = format!("{} {}: cannot start: {e}", spec.what(), spec.name);
                    self.retire(spawned, true);
                    return Err(why);
                }
            }
        }
        let sent = self.send(chan, &socks, &ends, &bundle);
        drop(socks);
        drop(ends);
        if let Err(e) = sent {
            self.retire(spawned, true);
            return Err(format!("cannot reach the engine: {e}"));
        }
        self.pending = Some(Pending {
            gen: self.gen,
            cfg: new,
            spawned,
        });
        Ok(())
    }

    /// Sends the new listeners, the new processes' sockets and the files read.
    fn send(
        &mut self,
        chan: RawFd,
        socks: &[(std::net::SocketAddr, std::net::TcpListener)],
        ends: &[(bool, usize, OwnedFd)],
        bundle: &crate::files::Bundle,
    ) -> std::io::Result<()> {
        for (_, s) in socks {
            sys::send_msg(chan, &[NEW_LISTENER], Some(s.as_raw_fd()))?;
        }
        for (filter, id, fd) in ends {
            let mut msg = vec![if *filter { NEW_FILTER } else { NEW_TABLE }];
            msg.extend_from_slice(&(*id as u64).to_be_bytes());
            sys::send_msg(chan, &msg, Some(fd.as_raw_fd()))?;
        }
        let encoded = bundle.encode();
        if encoded.len() > crate::files::MAX_BUNDLE {
            return Err(std::io::Error::other(
                "the configuration's files are too large",
            ));
        }
        let mut f = sys::memfd(c"smtpd-config")?;
        f.write_all(&encoded)?;
        f.rewind()?;
        self.gen += 1;
        let mut msg = vec![CONFIG];
        msg.extend_from_slice(&self.gen.to_be_bytes());
        sys::send_msg(chan, &msg, Some(f.as_raw_fd()))
    }

    /// The engine applied generation `gen` (or failed to): the reload is committed,
    /// the processes it no longer uses retired; or undone.
    pub fn applied(&mut self, msg: &[u8], procs: &mut Vec<Running>, chan: RawFd) {
        let Some((gen, result)) = decode_applied(msg) else {
            log::warn!("parent: malformed reload outcome from the engine ignored");
            return;
        };
        let Some(p) = self.pending.take_if(|p| p.gen == gen) else {
            return;
        };
        match result {
            Ok(()) => {
                let used = filters_in_use(&p.cfg);
                let mut kept = Vec::new();
                let mut gone = Vec::new();
                for mut r in procs.drain(..) {
                    let keep = match r.spec.role {
                        Role::Filter => used.contains(&r.spec.id),
                        Role::TableExec | Role::TableProgram(_) => {
                            match p.cfg.tables.iter().enumerate().find_map(|(i, t)| {
                                table_spec(i, t).filter(|s| same_process(s, &r.spec))
                            }) {
                                Some(s) => {
                                    r.spec.id = s.id;
                                    true
                                }
                                None => false,
                            }
                        }
                    };
                    if keep {
                        kept.push(r);
                    } else {
                        gone.push(r);
                    }
                }
                kept.extend(p.spawned);
                *procs = kept;
                self.retire(gone, false);
                self.cfg = p.cfg;
                log::debug!("parent: reload {gen} committed");
            }
            Err(e) => {
                log::warn!(
                    "smtpd: reload failed in the engine, the configuration in force is kept: {e}"
                );
                self.retire(p.spawned, true);
            }
        }
        if std::mem::take(&mut self.again) {
            self.start(chan, procs);
        }
    }

    /// Stops `procs`: at once, or after [`RETIRE_GRACE`].
    fn retire(&mut self, procs: Vec<Running>, now: bool) {
        for r in procs {
            let Some(pid) = r.pid else { continue };
            if now {
                sys::kill(pid, libc::SIGTERM);
                self.retiring.push((r, None));
            } else {
                log::info!(
                    "{} {} no longer used, stopping in {}s",
                    r.spec.what(),
                    r.spec.name,
                    RETIRE_GRACE.as_secs()
                );
                self.retiring.push((r, Some(Instant::now() + RETIRE_GRACE)));
            }
        }
    }

    /// Tells the retired processes whose grace is over to stop; the next such
    /// moment, if any.
    pub fn tick(&mut self, now: Instant) -> Option<Instant> {
        for (r, at) in &mut self.retiring {
            if at.is_some_and(|t| t <= now) {
                if let Some(pid) = r.pid {
                    sys::kill(pid, libc::SIGTERM);
                }
                *at = None;
            }
        }
        self.retiring.iter().filter_map(|(_, at)| *at).min()
    }

    /// A child exited: true when it was a retired process.
    pub fn reaped(&mut self, pid: i32) -> bool {
        let Some(i) = self.retiring.iter().position(|(r, _)| r.pid == Some(pid)) else {
            return false;
        };
        let (mut r, _) = self.retiring.swap_remove(i);
        supervisor::drain_stderr(&mut r);
        log::info!("{} {} stopped", r.spec.what(), r.spec.name);
        true
    }

    /// Stops every retired process (the daemon is stopping).
    pub fn stop_all(&mut self) {
        for (r, _) in self.retiring.drain(..) {
            if let Some(pid) = r.pid {
                sys::kill(pid, libc::SIGTERM);
            }
        }
        if let Some(p) = self.pending.take() {
            for r in p.spawned {
                if let Some(pid) = r.pid {
                    sys::kill(pid, libc::SIGTERM);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        assert_eq!(
            decode_applied(&encode_applied(7, &Ok(()))),
            Some((7, Ok(())))
        );
        let e = Err("smtpd.conf:3: syntax error".to_string());
        assert_eq!(decode_applied(&encode_applied(9, &e)), Some((9, e)));
        assert_eq!(decode_applied(b"c1234"), None);
        let long = Err("é".repeat(MAX_WHY));
        let (_, r) = decode_applied(&encode_applied(1, &long)).unwrap();
        assert!(r.unwrap_err().len() <= MAX_WHY);
        let mut c = vec![CONFIG];
        c.extend_from_slice(&5u64.to_be_bytes());
        assert_eq!(decode_config(&c), Some(5));
        assert_eq!(decode_config(&c[..5]), None);
    }
}
