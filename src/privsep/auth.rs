//! System account checks of SMTP AUTH (`listen on ... auth` without a table): the
//! engine cannot read the shadow database, so it sends the user name and password
//! over the parent channel; the parent checks them as root in a child of its own per
//! check (crypt(3) takes up to about 100 ms, which the parent's loop does not wait
//! for) and answers yes, no or "could not tell". Nothing of it is logged.

use crate::credentials::{self, decode_system_check, encode_system_answer};
use crate::mail::auth::{AuthResult, Credentials};
use crate::sys;
use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;

/// Checks running at once; more wait their turn.
const MAX_RUNNING: usize = 8;
/// Checks waiting at most; beyond, a check is answered "could not tell" at once.
const MAX_WAITING: usize = 1024;
/// Exit codes of a check's child.
const EXIT_OK: i32 = 0;
const EXIT_PERMFAIL: i32 = 1;
const EXIT_TEMPFAIL: i32 = 2;

/// The checks in flight and waiting.
#[derive(Default)]
pub(super) struct AuthChecks {
    /// The child of each running check, with the engine's key.
    running: HashMap<i32, (u64, u64)>,
    waiting: VecDeque<((u64, u64), Credentials)>,
}

impl AuthChecks {
    /// A request from the engine (`'A'`); started now or when a place frees up.
    pub(super) fn request(&mut self, msg: &[u8], chan: RawFd) {
        let Some((key, c)) = decode_system_check(msg) else {
            log::warn!("parent: malformed AUTH request from the engine ignored");
            return;
        };
        // Once, in the parent: its children inherit the hash unknown users are
        // checked against, so that it costs none of them its making.
        credentials::warm_up();
        if self.waiting.len() >= MAX_WAITING {
            answer(chan, key, AuthResult::TempFail);
            return;
        }
        self.waiting.push_back((key, c));
        self.start(chan);
    }

    /// Starts waiting checks while there is room.
    fn start(&mut self, chan: RawFd) {
        while self.running.len() < MAX_RUNNING {
            let Some((key, c)) = self.waiting.pop_front() else {
                return;
            };
            match spawn(&c) {
                Ok(pid) => {
                    self.running.insert(pid, key);
                }
                Err(e) => {
                    log::warn!("parent: cannot fork an AUTH check: {e}");
                    answer(chan, key, AuthResult::TempFail);
                }
            }
        }
    }

    /// A child exited: when it was a check's, its answer goes to the engine and the
    /// next check starts; false when it was not.
    pub(super) fn reaped(&mut self, pid: i32, status: i32, chan: RawFd) -> bool {
        let Some(key) = self.running.remove(&pid) else {
            return false;
        };
        let r = match sys::exit_code(status) {
            EXIT_OK => AuthResult::Ok,
            EXIT_PERMFAIL => AuthResult::PermFail,
            _ => AuthResult::TempFail,
        };
        answer(chan, key, r);
        self.start(chan);
        true
    }
}

fn answer(chan: RawFd, key: (u64, u64), r: AuthResult) {
    if let Err(e) = sys::send_msg(chan, &encode_system_answer(key, r), None) {
        log::warn!("parent: cannot answer an AUTH request: {e}");
    }
}

/// Forks the child that checks `c` and exits with the outcome.
fn spawn(c: &Credentials) -> std::io::Result<i32> {
    match sys::fork()? {
        Some(pid) => Ok(pid),
        None => {
            sys::die_with_parent();
            let code = match credentials::check_system(&c.user, &c.password) {
                AuthResult::Ok => EXIT_OK,
                AuthResult::PermFail => EXIT_PERMFAIL,
                AuthResult::TempFail => EXIT_TEMPFAIL,
            };
            sys::exit_now(code)
        }
    }
}
