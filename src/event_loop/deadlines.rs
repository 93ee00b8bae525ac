//! The engine's deadlines: what each entry of the one heap stands for, arming the ones
//! that follow from the state of things, and taking those that are due.

use super::*;

/// What a deadline of [`Server::timers`] is for. An entry is checked when it comes
/// due: a stale one (its endpoint gone, or the deadline moved) does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Due {
    /// The idle timeout of an SMTP session, control client or outgoing session; the
    /// deadline of an MTA-STS policy fetch.
    Endpoint {
        /// Slab key.
        key: usize,
        /// Its generation.
        gen: u64,
    },
    /// Filter process `fid`: an answer or a write it waits for.
    Filter(usize),
    /// A try of a DNS question (its transmission).
    Dns(u64),
    /// A line to monitoring clients.
    Monitor,
    /// The queue manager's next due envelope.
    Queue,
    /// Accepting resumes after a failed accept(2).
    Accept,
    /// Expired entries of the connection-rate table go.
    Prune,
    /// The grace of a stopping daemon is over.
    Stop,
    /// The penalty of an SMTP session's failed AUTH is over: its answer goes out.
    Auth {
        /// Slab key.
        key: usize,
        /// Its generation.
        gen: u64,
    },
}

impl Server {
    /// Arms the deadlines that follow from the state of things: the queue manager's
    /// next due envelope, monitor lines, pruning of the connection-rate table.
    pub(super) fn arm_timers(&mut self, now: Instant) {
        if let Some(due) = self.queue.next_due() {
            // Envelopes due already wait for room (deliveries in flight): their
            // completions wake the loop; look again every 100 ms all the same.
            let at = match due.checked_sub(unix_now()) {
                Some(s) if s > 0 => now + Duration::from_secs(s),
                _ => now + Duration::from_millis(100),
            };
            if self.queue_armed.is_none_or(|t| at < t) {
                self.queue_armed = Some(at);
                self.timers.add(at, Due::Queue);
            }
        }
        if !self.monitor_armed && !self.monitors.is_empty() {
            self.monitor_armed = true;
            self.timers.add(now + Duration::from_secs(1), Due::Monitor);
        }
        self.arm_filter_timers();
        if !self.prune_armed && !self.rates.is_empty() {
            self.prune_armed = true;
            self.timers.add(now + limits::RATE_WINDOW, Due::Prune);
        }
    }

    /// Takes the deadlines that are due.
    pub(super) fn expire_timers(&mut self, now: Instant) {
        while let Some(due) = self.timers.pop_due(now) {
            match due {
                Due::Endpoint { key, gen } => self.endpoint_due(key, gen, now),
                Due::Filter(fid) => self.filter_due(fid, now),
                Due::Dns(tx) => self.dns_due(tx, now),
                Due::Monitor => {
                    self.monitor_armed = false;
                    self.monitor(now);
                }
                Due::Queue => self.queue_armed = None,
                Due::Accept => self.resume_accepting(now),
                Due::Prune => {
                    self.prune_armed = false;
                    self.rates.prune(now);
                }
                Due::Stop => {}
                Due::Auth { key, gen } => self.auth_due(key, gen, now),
            }
        }
    }

    /// The idle deadline of endpoint `key` (of generation `gen`) came.
    pub(super) fn endpoint_due(&mut self, key: usize, gen: u64, now: Instant) {
        let later = match self.slab.get(key) {
            Some(Endpoint::Smtp(conn)) if conn.gen == gen => {
                if conn.deadline > now || conn.committing() {
                    Some(conn.deadline.max(now + Duration::from_secs(1)))
                } else {
                    None
                }
            }
            Some(Endpoint::Control(c)) if c.gen == gen => return self.control_timeout(key),
            Some(Endpoint::Mta(conn)) if conn.gen == gen => {
                if conn.deadline > now {
                    let next = conn.deadline;
                    return self.timers.add(next, Due::Endpoint { key, gen });
                }
                let why = format!(
                    "timeout: nothing from or to the server in {} s",
                    self.cfg.mta.timeout.as_secs()
                );
                return self.mta_abort(key, &why);
            }
            Some(Endpoint::Sts(_)) => return self.sts_due(key, gen, now),
            Some(Endpoint::Http(c)) if c.gen == gen => return self.closing.push(key),
            Some(Endpoint::Proxy(c)) if c.gen == gen => return self.proxy_due(key),
            _ => return,
        };
        if let Some(next) = later {
            return self.timers.add(next, Due::Endpoint { key, gen });
        }
        self.with_conn(key, Some(gen), |conn, ctx| {
            conn.filters.report(crate::filter::report::Report::Text(
                crate::filter::report::TextReport::Timeout,
            ));
            conn.close_with(ctx, Reply::TIMEOUT, Reason::Timeout)
        });
        // A client that does not read its 421 is not waited for.
        self.closing.push(key);
    }
}
