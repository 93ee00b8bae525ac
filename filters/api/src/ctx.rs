//! What a callback gets: its session, the edits it makes at end of message, and the
//! work it hands to the glue's loop (answers given later, timers, descriptors).

use crate::verdict::{Decision, Edit};
use std::os::fd::RawFd;
use std::time::Duration;

/// What a callback of an answered event returns: its decision now, or later.
///
/// Callbacks may return a [`Decision`] (it converts into `Answer::Now`), or
/// [`Ctx::later`] to answer afterwards with [`Ctx::answer`] from another callback: a
/// timer's, a descriptor's or another session's event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Answer {
    /// The decision, sent when the callback returns.
    Now(Decision),
    /// Nothing now: the filter answers this session's event later.
    Later,
}

impl From<Decision> for Answer {
    fn from(d: Decision) -> Answer {
        Answer::Now(d)
    }
}

/// A timer set with [`Ctx::timer`], to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TimerId(pub(crate) u64);

/// What a descriptor is watched for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// Call back when it can be read (or has an error, or was hung up).
    pub read: bool,
    /// Call back when it can be written.
    pub write: bool,
}

impl Interest {
    /// Readable.
    pub const READ: Interest = Interest {
        read: true,
        write: false,
    };
    /// Writable.
    pub const WRITE: Interest = Interest {
        read: false,
        write: true,
    };
    /// Both.
    pub const BOTH: Interest = Interest {
        read: true,
        write: true,
    };
}

/// What a watched descriptor is ready for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready {
    /// It can be read, or has an error, or was hung up.
    pub readable: bool,
    /// It can be written.
    pub writable: bool,
}

/// The callback of a timer: runs once, with a [`Ctx`] of session 0.
pub type TimerFn = Box<dyn FnOnce(&mut Ctx)>;
/// The callback of a watched descriptor, with a [`Ctx`] of session 0.
pub type WatchFn = Box<dyn FnMut(&mut Ctx, Ready)>;

/// Work a callback hands to the glue, done when it returns.
pub(crate) enum Effect {
    Answer {
        session: u64,
        decision: Decision,
        edits: Vec<Edit>,
    },
    Timer {
        id: TimerId,
        after: Duration,
        f: TimerFn,
    },
    Cancel(TimerId),
    Watch {
        fd: RawFd,
        interest: Interest,
        f: WatchFn,
    },
    Unwatch(RawFd),
}

/// The session an event belongs to, the edits made at end of message, and the
/// filter's own work for the glue's loop.
pub struct Ctx {
    /// The daemon's session id (0 in the callbacks of timers and descriptors).
    pub session: u64,
    pub(crate) edits: Vec<Edit>,
    pub(crate) effects: Vec<Effect>,
    pub(crate) next_timer: u64,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("session", &self.session)
            .field("edits", &self.edits)
            .finish_non_exhaustive()
    }
}

impl Ctx {
    pub(crate) fn new(session: u64, next_timer: u64) -> Ctx {
        Ctx {
            session,
            edits: Vec::new(),
            effects: Vec::new(),
            next_timer,
        }
    }

    /// At end of message: append a header.
    pub fn add_header(&mut self, name: &str, value: &str) {
        self.edits.push(Edit::AddHeader(name.into(), value.into()));
    }
    /// At end of message: insert a header at `index` (0 = first).
    pub fn insert_header(&mut self, index: u32, name: &str, value: &str) {
        self.edits
            .push(Edit::InsertHeader(index, name.into(), value.into()));
    }
    /// At end of message: change the `index`-th (1-based) header called `name`; an
    /// empty value deletes it.
    pub fn change_header(&mut self, index: u32, name: &str, value: &str) {
        self.edits
            .push(Edit::ChangeHeader(index, name.into(), value.into()));
    }
    /// At end of message: replace the body (lines ending in LF or CR LF).
    pub fn replace_body(&mut self, body: &[u8]) {
        self.edits.push(Edit::ReplaceBody(body.to_vec()));
    }
    /// At end of message: add a recipient.
    pub fn add_rcpt(&mut self, addr: &str) {
        self.edits.push(Edit::AddRcpt(addr.into()));
    }
    /// At end of message: remove a recipient.
    pub fn del_rcpt(&mut self, addr: &str) {
        self.edits.push(Edit::DelRcpt(addr.into()));
    }
    /// At end of message: change the sender.
    pub fn change_from(&mut self, addr: &str) {
        self.edits.push(Edit::ChangeFrom(addr.into()));
    }
    /// At end of message: hold the message in the queue.
    pub fn quarantine(&mut self, reason: &str) {
        self.edits.push(Edit::Quarantine(reason.into()));
    }

    /// The marker a callback returns to answer its event later, with [`Ctx::answer`].
    /// Edits made before it (at end of message) are kept for that answer. The daemon
    /// sends the session nothing more but reports meanwhile; the answer must come
    /// within the deadline of READY.
    pub fn later(&mut self) -> Answer {
        Answer::Later
    }

    /// Answers the event `session` left for later, when the callback returns. An
    /// answer for a session that ended meanwhile is dropped without a word; one for a
    /// session with nothing waiting is dropped with a warning on standard error.
    pub fn answer(&mut self, session: u64, decision: Decision) {
        self.answer_with_edits(session, decision, Vec::new());
    }

    /// Like [`Ctx::answer`], for an end of message left for later: the edits go
    /// before the decision, after those made in the callback.
    pub fn answer_with_edits(&mut self, session: u64, decision: Decision, edits: Vec<Edit>) {
        self.effects.push(Effect::Answer {
            session,
            decision,
            edits,
        });
    }

    /// Calls `f` once, `after` from now (served by [`crate::Filter::run`]).
    pub fn timer(&mut self, after: Duration, f: impl FnOnce(&mut Ctx) + 'static) -> TimerId {
        self.next_timer += 1;
        let id = TimerId(self.next_timer);
        self.effects.push(Effect::Timer {
            id,
            after,
            f: Box::new(f),
        });
        id
    }

    /// Forgets a timer that has not run yet (nothing if it has).
    pub fn cancel_timer(&mut self, id: TimerId) {
        self.effects.push(Effect::Cancel(id));
    }

    /// Calls `f` whenever `fd` is ready for `interest` (served by
    /// [`crate::Filter::run`]); a second watch of the same descriptor replaces the
    /// first. Readiness is edge-triggered: read or write until `WouldBlock` each time.
    /// The descriptor must be non-blocking, and unwatched before it is closed.
    pub fn watch(
        &mut self,
        fd: RawFd,
        interest: Interest,
        f: impl FnMut(&mut Ctx, Ready) + 'static,
    ) {
        self.effects.push(Effect::Watch {
            fd,
            interest,
            f: Box::new(f),
        });
    }

    /// Stops watching `fd`.
    pub fn unwatch(&mut self, fd: RawFd) {
        self.effects.push(Effect::Unwatch(fd));
    }
}
