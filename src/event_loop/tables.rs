//! Table processes seen from the loop: their sockets handed over by the parent, the
//! requests to kill the ones that stopped answering, `smtpctl update table`, and the
//! relay secrets a table process holds.
//!
//! The loop never asks a table process: the lookup threads do (`table/backend.rs`).
//! It only passes sockets on, hands a reload to a lookup thread, whose answer goes back
//! to the control client that asked, and holds an outgoing session whose credentials
//! (a relay's `auth` table) a lookup thread fetches before it connects.

use super::{Endpoint, Server};
use crate::config::Config;
use crate::lookup::Job;
use crate::mda::Outcome;
use crate::nexthop::Route;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

/// Lets each table process's client ask the parent, over `parent`, to kill the
/// process when it stops answering (the parent then starts it again).
pub(super) fn watch(cfg: &Config, parent: Option<&Arc<OwnedFd>>) {
    let Some(parent) = parent else { return };
    for t in &cfg.tables {
        if let Some(b) = t.backend() {
            let parent = parent.clone();
            let msg = crate::privsep::encode_table_kill(&t.name);
            b.on_broken(move || {
                if let Err(e) = crate::sys::send_msg(parent.as_raw_fd(), &msg, None) {
                    log::warn!("table: cannot reach the parent: {e}");
                }
            });
        }
    }
}

impl Server {
    /// The parent restarted table `id`'s process: its client takes the socket.
    pub(super) fn table_handed(&mut self, id: usize, fd: OwnedFd) {
        match self.cfg.tables.get(id).and_then(|t| t.backend()) {
            Some(b) => b.install(fd),
            None => log::warn!("table: a socket for table {id}, which has no process"),
        }
    }

    /// `smtpctl update table NAME` from control client `key`: the reload runs on a
    /// lookup thread and the client waits for its line.
    pub(super) fn update_table(&mut self, key: usize, name: &str) {
        let Some(Endpoint::Control(c)) = self.slab.get_mut(key) else {
            return;
        };
        let Some(id) = self.cfg.tables.iter().position(|t| t.name == name) else {
            c.out
                .extend_from_slice(format!("error: no table '{name}'\n").as_bytes());
            return;
        };
        let gen = c.gen;
        if self
            .lookups
            .submit_under((key, gen), Job::Reload(id), &self.cfg)
        {
            c.waiting = true;
        } else {
            c.out.extend_from_slice(b"error: no lookup thread\n");
        }
    }

    /// The outcome of a reload, for the control client that asked (if still there).
    pub(super) fn table_updated(
        &mut self,
        (key, gen): (usize, u64),
        result: Result<String, String>,
        now: Instant,
    ) {
        let line = match &result {
            Ok(m) => {
                log::info!("control: {m}");
                format!("{m}\n")
            }
            Err(e) => {
                log::warn!("control: {e}");
                format!("error: {e}\n")
            }
        };
        match self.slab.get_mut(key) {
            Some(Endpoint::Control(c)) if c.gen == gen => {
                c.out.extend_from_slice(line.as_bytes());
                c.waiting = false;
            }
            _ => return,
        }
        self.control_io(key, now);
    }

    /// Whether outgoing session `key` (generation `gen`) on `route` waits for its
    /// credentials: its relay's `auth` table is a process, asked now by a lookup
    /// thread.
    pub(super) fn mta_secret_wait(&mut self, key: usize, gen: u64, route: &Route) -> bool {
        let Some(label) = route.label.clone() else {
            return false;
        };
        let table = self
            .cfg
            .actions
            .iter()
            .find(|a| a.name == route.action)
            .and_then(|a| match &a.method {
                crate::config::Method::Relay(r) => r.auth,
                _ => None,
            });
        let Some(t) = table.filter(|&t| self.cfg.tables.get(t).is_some_and(|t| !t.in_memory()))
        else {
            return false;
        };
        if !self
            .lookups
            .submit_under((key, gen), Job::Secret(t, label), &self.cfg)
        {
            if let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) {
                conn.fail_all(Outcome::TempFail(
                    "no lookup thread for the relay's secret".into(),
                ));
            }
            self.mta_after(key);
            return true;
        }
        true
    }

    /// The relay secret of session `key`: it connects with it (or without AUTH when the
    /// table has none for its label); when the table could not answer, its jobs are
    /// deferred.
    pub(super) fn mta_secret(
        &mut self,
        (key, gen): (usize, u64),
        result: Result<Option<String>, String>,
        now: Instant,
    ) {
        let Some(Endpoint::Mta(conn)) = self.slab.get_mut(key) else {
            return;
        };
        if conn.gen != gen {
            return;
        }
        let session = conn.session;
        match result {
            Ok(value) => conn.set_auth(value.as_deref().and_then(super::mta::secret_of)),
            Err(e) => {
                conn.fail_all(Outcome::TempFail(format!("relay secret: {e}")));
                self.mta_routing.remove(&session);
                return self.mta_after(key);
            }
        }
        if let Some(r) = self.mta_routing.remove(&session) {
            self.mta_route(session, r, now);
        }
    }
}
