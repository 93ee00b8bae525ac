//! The queue manager's writes: each message's envelope set goes to the spool I/O
//! thread whole, one write in flight per message; changes made meanwhile wait for it.

use super::{Effect, EnvWrite, Level, Manager, State};

/// A message's envelopes and its writes.
#[derive(Debug, Default)]
pub(super) struct Msg {
    /// Its envelopes, in the order they came (those being removed included).
    pub(super) evpids: Vec<u64>,
    /// The write in flight.
    pub(super) writing: Option<u64>,
    /// Changed since the last write was made.
    pub(super) dirty: bool,
    /// The next write must be durable.
    pub(super) durable: bool,
}

/// A write in flight: what it settles.
#[derive(Debug)]
pub(super) struct WriteRec {
    pub(super) msgid: u32,
    pub(super) removed: Vec<u64>,
    pub(super) added: Vec<u64>,
}

impl Manager {
    /// Marks a message changed: written at the next [`Manager::take_actions`], or once
    /// its write in flight is done; `durable` when the write must reach the disk.
    pub(super) fn dirty(&mut self, msgid: u32, durable: bool) {
        if let Some(m) = self.msgs.get_mut(&msgid) {
            m.durable |= durable;
            if !m.dirty {
                m.dirty = true;
                self.dirty.push(msgid);
            }
        }
    }

    /// Writes every dirty message that has no write in flight.
    pub(super) fn flush_writes(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for msgid in dirty {
            let Some(m) = self.msgs.get_mut(&msgid) else {
                continue;
            };
            if m.writing.is_some() {
                self.dirty.push(msgid);
                continue;
            }
            let id = self.next_id;
            self.next_id += 1;
            let (mut envs, mut removed, mut added) = (Vec::new(), Vec::new(), Vec::new());
            for evpid in &m.evpids {
                let Some(s) = self.envs.get(evpid) else {
                    continue;
                };
                match s.state {
                    State::Removing => removed.push(*evpid),
                    State::Adding => {
                        added.push(*evpid);
                        envs.push(s.env.clone());
                    }
                    _ => envs.push(s.env.clone()),
                }
            }
            let durable = m.durable;
            m.writing = Some(id);
            m.dirty = false;
            m.durable = false;
            self.out.push(Effect::Write(EnvWrite {
                id,
                msgid,
                envs,
                durable,
                removed: removed.clone(),
            }));
            self.writes.insert(
                id,
                WriteRec {
                    msgid,
                    removed,
                    added,
                },
            );
        }
    }

    /// Write `id` is done (or failed: the envelopes in memory stay the truth, and the
    /// spool catches up at the message's next write; a failed removal leaves the
    /// envelope to be delivered again after a restart).
    pub fn written(&mut self, id: u64, r: Result<(), String>, now: u64) {
        let Some(w) = self.writes.remove(&id) else {
            return;
        };
        if let Err(e) = &r {
            let line = match w.removed.first() {
                Some(evpid) if w.added.is_empty() => {
                    format!("queue: cannot remove {evpid:016x}: {e}")
                }
                _ => format!("queue: cannot update message {:08x}: {e}", w.msgid),
            };
            self.log(Level::Warn, line);
        }
        for evpid in &w.removed {
            self.envs.remove(evpid);
        }
        for evpid in w.added {
            if let Some(env) = self.envs.get(&evpid).map(|s| s.env.clone()) {
                self.schedule_at(&env, now);
                self.set_state(evpid, State::Queued);
            }
        }
        if let Some(m) = self.msgs.get_mut(&w.msgid) {
            m.writing = None;
            m.evpids.retain(|e| !w.removed.contains(e));
            if m.evpids.is_empty() && !m.dirty {
                self.msgs.remove(&w.msgid);
            }
        }
    }
}
