//! The control socket side of the loop: `smtpctl` commands, monitoring clients, and
//! local submissions that turn into SMTP sessions.

use super::limits::{ControlRefusal, FD_RESERVE, FD_RESERVE_PRIVILEGED};
use super::{ControlConn, Endpoint, Server, CONTROL_LINE, FIRST_SLOT};
use crate::control::{self, Agent, Command as Ctl, Target};
use crate::stream::Stream;
use mio::net::UnixStream;
use mio::{Interest, Token};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::time::Instant;

/// Whether a client of this user id may run commands: root and the engine's own user.
fn is_privileged(uid: u32) -> bool {
    uid == 0 || uid == crate::sys::geteuid()
}

/// Turns away a control client: one line, then the connection is closed. What the
/// client already sent is read first, so that the close does not reset the connection
/// before the client has read the line.
fn refuse(mut sock: UnixStream, line: &str) {
    let _ = sock.write(line.as_bytes());
    let mut buf = [0u8; CONTROL_LINE];
    let _ = sock.read(&mut buf);
}

impl Server {
    pub(super) fn accept_control(&mut self, now: Instant) {
        loop {
            // Room for a privileged client; others need the whole reserve (below).
            if self.accept_paused.is_some()
                || !self.fds.room(self.fds_held(), 1, FD_RESERVE_PRIVILEGED)
            {
                self.starved_control = true;
                return;
            }
            let Some(l) = self.control.as_ref() else {
                return;
            };
            let sock = match l.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    if self.accept_failed("control", &e, now) {
                        return;
                    }
                    continue;
                }
            };
            let Ok(uid) = crate::sys::peer_uid(sock.as_raw_fd()) else {
                continue;
            };
            let privileged = is_privileged(uid);
            let refusal = if !privileged && !self.fds.room(self.fds_held(), 1, FD_RESERVE) {
                Some((
                    "descriptors",
                    "the daemon is short of file descriptors, try again later".to_string(),
                ))
            } else {
                match self.ctl_slots.admit(uid, privileged) {
                    Ok(()) => None,
                    Err(ControlRefusal::Total(n)) => Some((
                        "max-clients",
                        format!("too many control connections (max-clients {n})"),
                    )),
                    Err(ControlRefusal::PerUser(n)) => Some((
                        "max-clients-per-user",
                        format!("too many control connections (max-clients-per-user {n})"),
                    )),
                }
            };
            if let Some((reason, text)) = refusal {
                log::info!("control refused uid={uid} reason={reason}");
                refuse(sock, &format!("error: {text}\n"));
                continue;
            }
            let gen = self.next_gen;
            self.next_gen += 1;
            let key = self.slab.insert(Endpoint::Control(Box::new(ControlConn {
                sock,
                gen,
                uid,
                inbuf: Vec::new(),
                out: Vec::new(),
                monitor: false,
                done: false,
                waiting: false,
            })));
            if let Some(Endpoint::Control(c)) = self.slab.get_mut(key) {
                if self
                    .poll
                    .registry()
                    .register(
                        &mut c.sock,
                        Token(key + FIRST_SLOT),
                        Interest::READABLE | Interest::WRITABLE,
                    )
                    .is_err()
                {
                    self.slab.remove(key);
                    self.ctl_slots.release(uid);
                    continue;
                }
            }
            let deadline = now + self.cfg.control.timeout;
            self.timers.add(deadline, super::Due::Endpoint { key, gen });
        }
    }

    /// Closes a client that has not sent its command line in time; monitoring clients
    /// and clients being answered are left alone.
    pub(super) fn control_timeout(&mut self, key: usize) {
        let Some(Endpoint::Control(c)) = self.slab.get_mut(key) else {
            return;
        };
        if c.done || c.monitor {
            return;
        }
        let line = format!(
            "error: no command within {}s\n",
            self.cfg.control.timeout.as_secs()
        );
        // A client that sent nothing has nothing queued: the line fits its socket.
        let _ = c.sock.write(line.as_bytes());
        c.done = true;
        self.closing.push(key);
    }

    pub(super) fn control_io(&mut self, key: usize, now: Instant) {
        let Some(Endpoint::Control(c)) = self.slab.get_mut(key) else {
            return;
        };
        // Read the command line.
        let mut line = None;
        if !c.monitor && !c.done {
            let mut buf = [0u8; 512];
            loop {
                match c.sock.read(&mut buf) {
                    Ok(0) => {
                        c.done = true;
                        break;
                    }
                    Ok(n) => c.inbuf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.done = true;
                        break;
                    }
                }
                if c.inbuf.len() > CONTROL_LINE {
                    break;
                }
            }
            if let Some(i) = memchr::memchr(b'\n', &c.inbuf) {
                line = Some(
                    String::from_utf8_lossy(&c.inbuf[..i])
                        .trim_end_matches('\r')
                        .to_string(),
                );
                c.inbuf.drain(..=i);
                c.done = true;
            } else if c.inbuf.len() > CONTROL_LINE {
                c.out.extend_from_slice(b"error: command too long\n");
                c.done = true;
            }
        } else if c.monitor {
            // A monitoring client that goes away is noticed by a read of 0.
            let mut buf = [0u8; 64];
            if let Ok(0) = c.sock.read(&mut buf) {
                c.monitor = false;
                c.out.clear();
            }
        }
        if let Some(line) = line {
            let privileged = is_privileged(c.uid);
            match control::parse(&line) {
                Ok(Ctl::Smtp) => return self.control_to_smtp(key, now),
                Ok(Ctl::UpdateTable(name)) if privileged => self.update_table(key, &name),
                Ok(Ctl::Reload) if privileged => self.reload_request(key),
                Ok(cmd) if privileged => {
                    let (text, monitor) = self.control_command(cmd);
                    self.queue_actions(now);
                    if let Some(Endpoint::Control(c)) = self.slab.get_mut(key) {
                        c.out.extend_from_slice(text.as_bytes());
                        c.monitor = monitor;
                        if monitor {
                            self.monitors.push((key, c.gen));
                        }
                    }
                }
                Ok(_) => {
                    if let Some(Endpoint::Control(c)) = self.slab.get_mut(key) {
                        c.out.extend_from_slice(b"error: permission denied\n");
                    }
                }
                Err(e) => {
                    if let Some(Endpoint::Control(c)) = self.slab.get_mut(key) {
                        c.out.extend_from_slice(format!("error: {e}\n").as_bytes());
                    }
                }
            }
        }
        let Some(Endpoint::Control(c)) = self.slab.get_mut(key) else {
            return;
        };
        while !c.out.is_empty() {
            match c.sock.write(&c.out) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.out.clear();
                    c.monitor = false;
                    c.done = true;
                    break;
                }
            }
        }
        if c.done && !c.monitor && !c.waiting && c.out.is_empty() {
            self.closing.push(key);
        }
    }

    /// Turns a control connection that said `smtp` into an SMTP session.
    fn control_to_smtp(&mut self, key: usize, now: Instant) {
        let Some(Endpoint::Control(c)) = self.slab.try_remove(key) else {
            return;
        };
        let mut c = *c;
        let _ = self.poll.registry().deregister(&mut c.sock);
        let early = std::mem::take(&mut c.inbuf);
        let Some(k) = self.new_session(Stream::Unix(c.sock), None, None, None, now) else {
            self.ctl_slots.release(c.uid);
            return;
        };
        if let Some(Endpoint::Smtp(conn)) = self.slab.get_mut(k) {
            // The session keeps its user's control place until it ends; a plain
            // user's senders are checked (root and the daemon's user give any).
            conn.set_local_user(c.uid, !is_privileged(c.uid), self.cfg.socket.senders);
            // Bytes that came with the `smtp` line (a client that did not wait for the
            // greeting, like `sendmail -bs` fed by a pipe) are the session's input.
            conn.prefeed(&early);
            log::info!(
                "{:016x} smtp connected address=local uid={}",
                conn.id(),
                c.uid
            );
        }
        self.dispatch(k, false, true, now);
    }

    fn targets(&self, t: Target) -> Vec<u64> {
        self.queue
            .ids()
            .into_iter()
            .filter(|&id| t.matches(id))
            .collect()
    }

    /// Runs a privileged control command; returns its output and whether the client
    /// becomes a monitor.
    fn control_command(&mut self, cmd: Ctl) -> (String, bool) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        match cmd {
            Ctl::ShowQueue => {
                let mut out = String::new();
                for (e, state) in self.queue.listing() {
                    out.push_str(&control::queue_line(e, state));
                    out.push('\n');
                }
                (out, false)
            }
            Ctl::ShowEnvelope(id) => match self.queue.envelope(id) {
                Some(e) => (e.encode(), false),
                None => (format!("error: {id:016x}: no such envelope\n"), false),
            },
            Ctl::ShowMessage(m) => match self.spool.open_message(m) {
                Ok((f, len)) => {
                    let mut b = Vec::new();
                    match f.take(len).read_to_end(&mut b) {
                        Ok(_) => (String::from_utf8_lossy(&b).into_owned(), false),
                        Err(e) => (format!("error: {m:08x}: {e}\n"), false),
                    }
                }
                Err(e) => (format!("error: {m:08x}: {e}\n"), false),
            },
            Ctl::ShowStats => (self.stats_text(), false),
            Ctl::ShowMetrics => (self.scrape(), false),
            Ctl::ShowRoutes => (self.routes_text(super::unix_now()), false),
            Ctl::ShowHosts => (self.hosts_text(super::unix_now()), false),
            Ctl::ShowMtaSts => (self.sts_text(super::unix_now()), false),
            Ctl::ScheduleDomain(d) => {
                self.hosts.forgive(&d);
                let n = self.queue.schedule_domain(&d, super::unix_now());
                log::info!("control: {n} envelope(s) for {d} scheduled");
                (format!("{n} envelope(s) scheduled\n"), false)
            }
            Ctl::Schedule(t) => {
                self.hosts.forgive_all();
                let ids = self.targets(t);
                // A quarantined envelope released by hand stays released after a restart.
                let n = self.queue.schedule(&ids, now);
                (format!("{n} envelope(s) scheduled\n"), false)
            }
            Ctl::Remove(t) => {
                let ids = self.targets(t);
                let n = self.queue.remove_by_hand(&ids);
                log::info!("control: {n} envelope(s) removed");
                (format!("{n} envelope(s) removed\n"), false)
            }
            Ctl::Pause(a) | Ctl::Resume(a) => {
                let pause = matches!(cmd, Ctl::Pause(_));
                match a {
                    Agent::Mda => self.queue.paused_mda = pause,
                    Agent::Mta => self.queue.paused_mta = pause,
                    Agent::Smtp => self.pause_smtp(pause),
                }
                let word = if pause { "paused" } else { "resumed" };
                log::info!("control: {a:?} {word}");
                (format!("{a:?} {word}\n").to_lowercase(), false)
            }
            Ctl::Log(verbose) => {
                log::set_max_level(if verbose {
                    log::LevelFilter::Debug
                } else {
                    log::LevelFilter::Info
                });
                (
                    format!("log {}\n", if verbose { "verbose" } else { "brief" }),
                    false,
                )
            }
            Ctl::Monitor => (self.monitor_line(), true),
            // Answered by a lookup thread (`update_table`), or a connection taken over.
            Ctl::UpdateTable(_) | Ctl::Reload | Ctl::Smtp => (String::new(), false),
        }
    }

    /// Pauses an agent at start (`-P mda|mta|smtp`).
    pub fn pause(&mut self, agent: &str) {
        match agent {
            "mda" => self.queue.paused_mda = true,
            "mta" => self.queue.paused_mta = true,
            "smtp" => self.pause_smtp(true),
            _ => {}
        }
        log::info!("smtpd: {agent} paused at start");
    }

    fn pause_smtp(&mut self, pause: bool) {
        if self.paused_smtp == pause {
            return;
        }
        self.paused_smtp = pause;
        for (key, e) in self.slab.iter_mut() {
            if let Endpoint::Listener { sock, .. } = e {
                let r = if pause {
                    self.poll.registry().deregister(sock)
                } else {
                    self.poll
                        .registry()
                        .register(sock, Token(key + FIRST_SLOT), Interest::READABLE)
                };
                if let Err(err) = r {
                    log::warn!("control: listener: {err}");
                }
            }
        }
    }

    /// `show routes`: one line per destination used.
    fn routes_text(&self, now: u64) -> String {
        let mut out = String::new();
        for r in self.queue.routes() {
            let target = match &r.route.target {
                crate::nexthop::Target::Mx(d) => format!("mx:{d}"),
                crate::nexthop::Target::Tcp(h, p) => format!("{h}:{p}"),
                crate::nexthop::Target::Unix(p) => p.clone(),
            };
            out.push_str(&format!(
                "{} {target} sessions={} waiting={} failures={}",
                r.route.action, r.sessions, r.waiting, r.failures
            ));
            if r.until > now {
                out.push_str(&format!(" suspended={}s", r.until - now));
            }
            if !r.why.is_empty() {
                out.push_str(&format!(" why={:?}", r.why));
            }
            out.push('\n');
        }
        out
    }

    /// `show hosts`: one line per server address used.
    fn hosts_text(&self, now: u64) -> String {
        let mut out = String::new();
        for (ip, h) in self.hosts.listing() {
            out.push_str(&format!(
                "{ip} {} conns={} failures={}",
                h.name, h.conns, h.failures
            ));
            if h.until > now {
                out.push_str(&format!(" skipped={}s", h.until - now));
            }
            if !h.why.is_empty() {
                out.push_str(&format!(" why={:?}", h.why));
            }
            out.push('\n');
        }
        out
    }

    fn stats_text(&self) -> String {
        let s = &self.queue.stats;
        format!(
            "smtp.sessions={}\nqueue.envelopes={}\nqueue.inflight={}\nmda.delivered={}\nmda.tempfail={}\nmda.permfail={}\nqueue.expired={}\nqueue.bounces={}\nqueue.removed={}\npaused.mda={}\npaused.mta={}\npaused.smtp={}\n",
            self.sessions,
            self.queue.len(),
            self.queue.inflight(),
            s.delivered,
            s.tempfail,
            s.permfail,
            s.expired,
            s.bounces,
            s.removed,
            self.queue.paused_mda,
            self.queue.paused_mta,
            self.paused_smtp
        )
    }

    fn monitor_line(&self) -> String {
        let s = &self.queue.stats;
        format!(
            "sessions={} queue={} inflight={} delivered={} tempfail={} permfail={} expired={} bounces={}\n",
            self.sessions,
            self.queue.len(),
            self.queue.inflight(),
            s.delivered,
            s.tempfail,
            s.permfail,
            s.expired,
            s.bounces
        )
    }

    /// Sends the line of this second to the monitoring clients (those gone are
    /// forgotten).
    pub(super) fn monitor(&mut self, now: Instant) {
        let line = self.monitor_line();
        let slab = &self.slab;
        self.monitors.retain(
            |&(k, gen)| matches!(slab.get(k), Some(Endpoint::Control(c)) if c.gen == gen && c.monitor),
        );
        let keys: Vec<usize> = self.monitors.iter().map(|&(k, _)| k).collect();
        for key in keys {
            if let Some(Endpoint::Control(c)) = self.slab.get_mut(key) {
                c.out.extend_from_slice(line.as_bytes());
            }
            self.control_io(key, now);
        }
    }
}
