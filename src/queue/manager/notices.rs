//! The manager's forward files and notifications: a user's forward file expanded into
//! new envelopes, and the notices (bounces, delay and success reports) queued for a
//! sender.

use super::{notify_wants, Effect, ForwardFile, Manager, Notice, State};
use crate::mail::params::notify;
use crate::mda::Outcome;
use crate::queue::bounce::DsnKind;
use crate::queue::envelope::{new_evpid, Envelope};
use crate::queue::forward::NewDest;
use log::Level;

impl Manager {
    /// Asks for the destinations of a user's forward file.
    pub(super) fn forward(&mut self, evpid: u64, items: Vec<String>, now: u64) {
        let Some(slot) = self.envs.get(&evpid) else {
            return;
        };
        let owner = match crate::mail::delivery::Dest::decode(&slot.env.dest) {
            Some(crate::mail::delivery::Dest::User(u)) => u,
            _ => {
                let o = Outcome::PermFail("forward from a non-user destination".into());
                return self.finish(evpid, o, now);
            }
        };
        if !self.cfg.actions.iter().any(|a| a.name == slot.env.action) {
            return self.finish(evpid, Outcome::TempFail("action gone".into()), now);
        }
        let env = slot.env.clone();
        self.set_state(evpid, State::Expanding);
        self.out
            .push(Effect::Expand(ForwardFile { env, owner, items }));
    }

    /// The destinations of a forward file: they replace the user's envelope, in one
    /// durable write; none is a permanent failure.
    pub fn expanded(&mut self, evpid: u64, dests: Result<Vec<NewDest>, String>, now: u64) {
        let Some(slot) = self.envs.get(&evpid) else {
            return;
        };
        if slot.state != State::Expanding {
            return;
        }
        let owner = slot
            .env
            .dest
            .strip_prefix("user:")
            .unwrap_or_default()
            .to_string();
        let dests = match dests {
            Ok(d) => d,
            // A lookup failed for now: the delivery, forward file included, is tried
            // again, rather than mail lost to a table that could not answer.
            Err(why) => return self.finish(evpid, Outcome::TempFail(why), now),
        };
        if dests.is_empty() {
            let why = format!("the .forward of {owner} names no usable destination");
            return self.finish(evpid, Outcome::PermFail(why), now);
        }
        let line = format!(
            "{evpid:016x} forward of {owner} to {} destination(s)",
            dests.len()
        );
        let base = slot.env.clone();
        let msgid = base.msgid();
        let mut taken = self
            .msgs
            .get(&msgid)
            .map(|m| m.evpids.clone())
            .unwrap_or_default();
        for d in dests {
            let id = new_evpid(msgid, &taken);
            taken.push(id);
            let env = Envelope {
                evpid: id,
                dest: d.dest.encode(),
                action: d.action,
                user: d.user,
                no_forward: d.no_forward,
                retry: 0,
                last_try: 0,
                errorline: String::new(),
                ..base.clone()
            };
            self.insert(env, State::Adding);
        }
        self.log(Level::Info, line);
        self.remove(evpid);
        self.dirty(msgid, true);
    }

    /// A notification about `evpid` was queued (its envelopes, to schedule), or not.
    pub fn bounced(
        &mut self,
        evpid: u64,
        kind: DsnKind,
        to: &str,
        r: Result<(u32, Vec<Envelope>), String>,
        now: u64,
    ) {
        match r {
            Ok((msgid, envs)) => {
                self.stats.bounces += 1;
                self.log(
                    Level::Info,
                    format!(
                        "{evpid:016x} bounce msgid={msgid:08x} kind={} to=<{to}>",
                        kind.action()
                    ),
                );
                self.committed(&envs, now);
            }
            Err(e) => self.log(
                Level::Warn,
                format!("{evpid:016x} bounce to <{to}> not queued: {e}"),
            ),
        }
    }

    /// Queues a notification of `kind` about `evpid` to its sender, if wanted.
    pub(super) fn bounce(&mut self, evpid: u64, kind: DsnKind) {
        let Some(env) = self.envs.get(&evpid).map(|s| s.env.clone()) else {
            return;
        };
        let wanted = match kind {
            DsnKind::Failed => notify::FAILURE,
            DsnKind::Delayed => notify::DELAY,
            DsnKind::Delivered | DsnKind::Relayed => notify::SUCCESS,
        };
        if env.sender.is_empty() {
            let line = format!("{evpid:016x} bounce not sent: the sender is <>");
            return self.log(Level::Info, line);
        }
        if !notify_wants(&env, wanted) {
            let line = format!("{evpid:016x} bounce not sent: NOTIFY excludes it");
            return self.log(Level::Info, line);
        }
        // A notice of failure or success reports an envelope whose removal follows: it
        // is committed before that; a delay notice after the write that records it
        // (smtpd.8, Crash points).
        self.out.push(Effect::Bounce(Notice {
            env,
            kind,
            hold: true,
            more: Vec::new(),
            remote_mta: String::new(),
        }));
    }
}
