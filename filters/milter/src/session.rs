//! One SMTP session as the milters see it: its milter connections, the question the
//! daemon is waiting on, and the message going through.
//!
//! Each daemon question (CONNECT, HELO, MAIL, RCPT, DATA, EOM) goes to the milters in
//! order, one after the other; the first one that does not let it through decides the
//! answer. Message lines are echoed to the daemon at once (by the caller) and fed to
//! the milters behind, as headers and body chunks; what they say about them is kept
//! for the end of the message.

use crate::conn::{Event, MilterConn, Step, Target};
use crate::message::{self, Chunker, Part, Splitter};
use crate::milter::{self, cmd, proto, Family, Reply};
use mio::{Registry, Token};
use smtpd_filter::codec;
use smtpd_filter::{Decision, Edit};
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[path = "macros.rs"]
mod macros;
pub use macros::TlsFacts;

/// What to do when a milter cannot be reached, dies, times out or breaks the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultAction {
    /// 451 4.3.0 for the command (421 at connect).
    Tempfail,
    /// Go on without that milter for the rest of the session.
    Accept,
    /// 550 5.7.1 for the command.
    Reject,
}

impl DefaultAction {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DefaultAction::Tempfail => "tempfail",
            DefaultAction::Accept => "accept",
            DefaultAction::Reject => "reject",
        }
    }
}

/// The bridge's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The milters, in order.
    pub targets: Vec<Target>,
    /// How long a milter may take to connect or reply.
    pub timeout: Duration,
    /// What a failed milter means.
    pub default: DefaultAction,
    /// Macro values given with `-m` (they replace the bridge's own).
    pub macros: Vec<(String, String)>,
    /// The value of `j` (our host name) unless `-m j=...`.
    pub hostname: String,
    /// Log every packet.
    pub verbose: bool,
}

/// What sessions share: settings, the poll registry, the output to the daemon and the
/// map from poll tokens to milter connections.
pub struct Ctx<'a> {
    /// Settings.
    pub cfg: &'a Config,
    /// Where milter sockets are registered.
    pub registry: &'a Registry,
    /// Bytes for the daemon.
    pub out: &'a mut Vec<u8>,
    /// Poll token -> (session, milter index).
    pub tokens: &'a mut HashMap<Token, (u64, usize)>,
    /// The next token to hand out.
    pub next_token: &'a mut usize,
    /// How long the daemon waits for an answer.
    pub daemon_timeout: Duration,
}

/// The daemon's questions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A new connection.
    Connect,
    /// HELO or EHLO.
    Helo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA.
    Data,
    /// End of message.
    Eom,
}

impl Phase {
    /// Its name in logs.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Helo => "helo",
            Phase::Mail => "mail-from",
            Phase::Rcpt => "rcpt-to",
            Phase::Data => "data",
            Phase::Eom => "end of message",
        }
    }

    /// The milter command of the phase.
    pub fn command(self) -> u8 {
        match self {
            Phase::Connect => cmd::CONNECT,
            Phase::Helo => cmd::HELO,
            Phase::Mail => cmd::MAIL,
            Phase::Rcpt => cmd::RCPT,
            Phase::Data => cmd::DATA,
            Phase::Eom => cmd::BODYEOB,
        }
    }
}

/// How long the bridge takes at most to answer the daemon, which waits `daemon` before
/// it gives up on the filter (and kills it, failing every session): a margin less.
pub fn answer_within(daemon: Duration) -> Duration {
    daemon.saturating_sub((daemon / 4).min(Duration::from_secs(2)))
}

/// The answer a milter's reply stands for (`Proceed` for continue and accept).
pub fn verdict_of(r: &Reply) -> Decision {
    match r {
        Reply::Continue | Reply::Accept | Reply::Skip => Decision::Proceed,
        Reply::Discard => Decision::Discard,
        Reply::Reject => Decision::Reject(550, "5.7.1 Command rejected".into()),
        Reply::Tempfail => {
            Decision::Reject(451, "4.7.1 Service unavailable - try again later".into())
        }
        Reply::Code(421, t) => Decision::Disconnect(421, t.clone()),
        Reply::Code(c, t) => Decision::Reject(*c, t.clone()),
        Reply::Shutdown | Reply::ConnFail => {
            Decision::Disconnect(421, "4.7.0 Service unavailable, closing connection".into())
        }
    }
}

/// The answer when a milter failed, by the default action.
pub fn default_verdict(d: DefaultAction) -> Decision {
    match d {
        DefaultAction::Accept => Decision::Proceed,
        DefaultAction::Tempfail => {
            Decision::Reject(451, "4.3.0 Mail filter unavailable, try again later".into())
        }
        DefaultAction::Reject => Decision::Reject(550, "5.7.1 Command rejected".into()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Talking to the milter.
    Active,
    /// It accepted the connection: no more events for this session.
    Accepted,
    /// It failed: the default action applies from now on.
    Failed,
}

struct Agent {
    label: String,
    conn: Option<MilterConn>,
    state: State,
    /// It accepted (or is done with) the current message.
    msg_done: bool,
    /// It asked for no more body chunks.
    skip_body: bool,
    /// It saw MAIL and no end of message or abort yet.
    in_msg: bool,
}

struct Question {
    phase: Phase,
    param: Vec<u8>,
    idx: usize,
    deadline: Instant,
    edits: Vec<Edit>,
}

/// One SMTP session.
pub struct Session {
    sid: u64,
    local: Family,
    remote: Family,
    hostname: String,
    sender: String,
    rcpt: String,
    txn: u32,
    agents: Vec<Agent>,
    question: Option<Question>,
    discard: bool,
    verdict: Option<Decision>,
    in_data: bool,
    splitter: Splitter,
    chunker: Chunker,
    counts: HashMap<Vec<u8>, u32>,
    tls: Option<TlsFacts>,
    /// The mechanism and user of a successful AUTH.
    auth: Option<(String, String)>,
}

impl Session {
    /// A session: with `connect`, milter connections are opened now; without (a session
    /// that began before this process did), the milters never saw it and count as failed.
    pub fn new(
        sid: u64,
        local: &str,
        remote: &str,
        hostname: &str,
        connect: bool,
        ctx: &mut Ctx,
        now: Instant,
    ) -> Session {
        let mut agents = Vec::new();
        for (i, t) in ctx.cfg.targets.iter().enumerate() {
            let label = if ctx.cfg.targets.len() > 1 {
                format!("{sid:016x} milter {} ({t})", i + 1)
            } else {
                format!("{sid:016x} milter {t}")
            };
            let mut a = Agent {
                label,
                conn: None,
                state: State::Failed,
                msg_done: false,
                skip_body: false,
                in_msg: false,
            };
            if !connect {
                eprintln!(
                    "{}: the session began before this process: the milter missed it; \
                     default action {}",
                    a.label,
                    ctx.cfg.default.name()
                );
            } else {
                let token = Token(*ctx.next_token);
                *ctx.next_token += 1;
                match MilterConn::connect(
                    t,
                    a.label.clone(),
                    token,
                    ctx.registry,
                    ctx.cfg.timeout,
                    ctx.cfg.verbose,
                    now,
                ) {
                    Ok(c) => {
                        ctx.tokens.insert(token, (sid, i));
                        a.conn = Some(c);
                        a.state = State::Active;
                    }
                    Err(e) => eprintln!(
                        "{}: {e}; default action {}",
                        a.label,
                        ctx.cfg.default.name()
                    ),
                }
            }
            agents.push(a);
        }
        Session {
            sid,
            local: Family::parse(local),
            remote: Family::parse(remote),
            hostname: hostname.to_string(),
            sender: String::new(),
            rcpt: String::new(),
            txn: 0,
            agents,
            question: None,
            discard: false,
            verdict: None,
            in_data: false,
            splitter: Splitter::new(),
            chunker: Chunker::default(),
            counts: HashMap::new(),
            tls: None,
            auth: None,
        }
    }

    /// The daemon reported the session's TLS handshake: the TLS macros have values
    /// from now on.
    pub fn set_tls(&mut self, t: TlsFacts) {
        self.tls = Some(t);
    }

    /// The daemon reported a successful AUTH: `{auth_type}` and `{auth_authen}` have
    /// values from now on.
    pub fn authenticated(&mut self, mechanism: &[u8], user: &[u8]) {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        self.auth = Some((text(mechanism), text(user)));
    }

    fn step(&self, phase: Phase, param: &[u8], cfg: &Config) -> Step {
        let code = phase.command();
        let mut data = Vec::new();
        match phase {
            Phase::Connect => data = milter::connect(&self.client_name(), &self.remote),
            Phase::Helo => milter::put_cstr(&mut data, param),
            Phase::Mail | Phase::Rcpt => {
                let mut a = b"<".to_vec();
                a.extend_from_slice(param);
                a.push(b'>');
                milter::put_cstr(&mut data, &a);
            }
            Phase::Data | Phase::Eom => {}
        }
        Step {
            code,
            data,
            macros: Some(self.macro_set(code, cfg)),
        }
    }

    /// The earliest deadline of the session, if any.
    pub fn deadline(&self) -> Option<Instant> {
        let q = self.question.as_ref().map(|q| q.deadline);
        self.agents
            .iter()
            .filter_map(|a| a.conn.as_ref().and_then(|c| c.deadline()))
            .chain(q)
            .min()
    }

    /// A question from the daemon.
    pub fn ask(&mut self, phase: Phase, param: &[u8], ctx: &mut Ctx, now: Instant) {
        if self.question.is_some() {
            eprintln!(
                "{:016x} milter: a new question came before the answer to the last one",
                self.sid
            );
            self.question = None;
        }
        let text = String::from_utf8_lossy(param).into_owned();
        match phase {
            Phase::Mail => {
                self.new_message(ctx, now);
                self.txn += 1;
                self.sender = text;
                self.rcpt.clear();
            }
            Phase::Rcpt => self.rcpt = text,
            _ => {}
        }
        self.question = Some(Question {
            phase,
            param: param.to_vec(),
            idx: 0,
            deadline: now + answer_within(ctx.daemon_timeout),
            edits: Vec::new(),
        });
        self.advance(ctx, now);
    }

    /// Moves the current question to the next milter that has to see it, or answers.
    fn advance(&mut self, ctx: &mut Ctx, now: Instant) {
        loop {
            let Some(q) = self.question.as_mut() else {
                return;
            };
            let phase = q.phase;
            if self.discard {
                match phase {
                    Phase::Rcpt | Phase::Data => return self.answer(Decision::Proceed, ctx),
                    Phase::Eom => return self.answer(Decision::Discard, ctx),
                    _ => {}
                }
            }
            if phase == Phase::Eom {
                if let Some(v) = self.verdict.clone() {
                    return self.answer(v, ctx);
                }
            }
            let i = q.idx;
            let Some(a) = self.agents.get(i) else {
                return self.answer(Decision::Proceed, ctx);
            };
            match a.state {
                State::Accepted => q.idx += 1,
                State::Failed => match ctx.cfg.default {
                    DefaultAction::Accept => q.idx += 1,
                    d => return self.answer(default_verdict(d), ctx),
                },
                State::Active => {
                    if matches!(phase, Phase::Rcpt | Phase::Data | Phase::Eom)
                        && (a.msg_done || !a.in_msg)
                    {
                        q.idx += 1;
                        continue;
                    }
                    let param = std::mem::take(&mut q.param);
                    let step = self.step(phase, &param, ctx.cfg);
                    if let Some(q) = self.question.as_mut() {
                        q.param = param;
                    }
                    let a = &mut self.agents[i];
                    let Some(c) = a.conn.as_mut() else {
                        a.state = State::Failed;
                        continue;
                    };
                    if phase == Phase::Mail {
                        if a.in_msg {
                            c.push(Step::plain(cmd::ABORT, Vec::new()));
                        }
                        a.in_msg = true;
                    }
                    c.push(step);
                    return self.pump(i, ctx, now);
                }
            }
        }
    }

    /// Sends the answer to the daemon and forgets the question.
    fn answer(&mut self, v: Decision, ctx: &mut Ctx) {
        let Some(q) = self.question.take() else {
            return;
        };
        let sid = self.sid;
        if q.phase == Phase::Eom && v == Decision::Proceed && !q.edits.is_empty() {
            eprintln!(
                "{sid:016x} milter: {} change(s) to the message",
                q.edits.len()
            );
        }
        let out = &mut *ctx.out;
        // A 4xx at connect ends the session: say 421.
        let v = match (q.phase, v) {
            (Phase::Connect, Decision::Reject(c, t)) if c < 500 => Decision::Disconnect(421, t),
            (Phase::Eom, v) => v,
            (_, Decision::Discard) => Decision::Proceed,
            (_, v) => v,
        };
        match &v {
            Decision::Reject(c, t) => eprintln!("{sid:016x} milter: {}: {c} {t}", q.phase.name()),
            Decision::Disconnect(c, t) => {
                eprintln!("{sid:016x} milter: {}: {c} {t} (closing)", q.phase.name())
            }
            Decision::Discard => eprintln!("{sid:016x} milter: message discarded"),
            _ => {}
        }
        if v == Decision::Proceed {
            if q.phase == Phase::Eom {
                for e in &q.edits {
                    e.encode(sid, out);
                }
            }
            if q.phase == Phase::Data {
                self.in_data = true;
                self.splitter = Splitter::new();
                self.chunker.clear();
                self.counts.clear();
            }
        }
        codec::encode(sid, &v.frame(), out);
    }

    /// Sends what milter `i` has queued and handles what that produced.
    fn pump(&mut self, i: usize, ctx: &mut Ctx, now: Instant) {
        let mut evs = Vec::new();
        if let Some(c) = self.agents.get_mut(i).and_then(|a| a.conn.as_mut()) {
            c.pump(now, &mut evs);
        }
        for e in evs {
            self.on_event(i, e, ctx, now);
        }
    }

    /// Milter `i`'s socket is ready.
    pub fn ready(&mut self, i: usize, ctx: &mut Ctx, now: Instant) {
        let mut evs = Vec::new();
        if let Some(c) = self.agents.get_mut(i).and_then(|a| a.conn.as_mut()) {
            c.ready(now, &mut evs);
        }
        for e in evs {
            self.on_event(i, e, ctx, now);
        }
        self.pump(i, ctx, now);
    }

    /// Fails what is late: a milter's reply, or the answer the daemon waits for.
    pub fn check(&mut self, ctx: &mut Ctx, now: Instant) {
        for i in 0..self.agents.len() {
            let mut evs = Vec::new();
            if let Some(c) = self.agents[i].conn.as_mut() {
                c.check(now, &mut evs);
            }
            for e in evs {
                self.on_event(i, e, ctx, now);
            }
        }
        let Some(q) = self.question.as_ref() else {
            return;
        };
        if q.deadline > now {
            return;
        }
        let i = q.idx;
        let mut evs = Vec::new();
        if let Some(c) = self.agents.get_mut(i).and_then(|a| a.conn.as_mut()) {
            c.abandon("no reply before the daemon's deadline", &mut evs);
        }
        for e in evs {
            self.on_event(i, e, ctx, now);
        }
        // Whatever is still waiting: the default action, now.
        if self.question.is_some() {
            self.answer(default_verdict(ctx.cfg.default), ctx);
        }
    }

    fn on_event(&mut self, i: usize, e: Event, ctx: &mut Ctx, now: Instant) {
        match e {
            Event::Failed(why) => self.failed(i, &why, ctx, now),
            Event::Done { code, reply, mods } => match code {
                cmd::HEADER | cmd::EOH | cmd::BODY => self.on_content_reply(i, reply, ctx, now),
                _ => self.on_reply(i, code, reply, mods, ctx, now),
            },
        }
    }

    fn close_agent(&mut self, i: usize, quit: bool, ctx: &mut Ctx) {
        if let Some(mut c) = self.agents[i].conn.take() {
            c.close(ctx.registry, quit);
            ctx.tokens.remove(&c.token);
        }
    }

    fn failed(&mut self, i: usize, why: &str, ctx: &mut Ctx, now: Instant) {
        eprintln!(
            "{}: {why}; default action {}",
            self.agents[i].label,
            ctx.cfg.default.name()
        );
        self.close_agent(i, false, ctx);
        let a = &mut self.agents[i];
        a.state = State::Failed;
        a.in_msg = false;
        if self.question.as_ref().is_some_and(|q| q.idx == i) {
            self.advance(ctx, now);
        }
    }

    /// The reply to a question's command (or to end of message).
    fn on_reply(
        &mut self,
        i: usize,
        code: u8,
        reply: Reply,
        mods: Vec<milter::Mod>,
        ctx: &mut Ctx,
        now: Instant,
    ) {
        if code == cmd::BODYEOB {
            self.agents[i].in_msg = false;
        }
        let Some(q) = self.question.as_mut() else {
            return;
        };
        if q.phase.command() != code || q.idx != i {
            return; // a late reply to a question already answered
        }
        let phase = q.phase;
        let label = self.agents[i].label.clone();
        match reply {
            Reply::Continue | Reply::Accept | Reply::Skip => {
                if phase == Phase::Eom {
                    let mut log = Vec::new();
                    let edits = message::edits_of(mods, &mut self.counts, &mut log);
                    for l in log {
                        eprintln!("{label}: {l}");
                    }
                    q.edits.extend(edits);
                }
                q.idx += 1;
                if reply == Reply::Accept {
                    if matches!(phase, Phase::Connect | Phase::Helo) {
                        self.agents[i].state = State::Accepted;
                        self.close_agent(i, true, ctx);
                    } else {
                        self.accept_message(i);
                    }
                }
                self.advance(ctx, now);
            }
            Reply::Discard => match phase {
                Phase::Connect | Phase::Helo => {
                    eprintln!("{label}: discard before MAIL taken as accept");
                    q.idx += 1;
                    self.agents[i].state = State::Accepted;
                    self.close_agent(i, true, ctx);
                    self.advance(ctx, now);
                }
                Phase::Eom => self.answer(Decision::Discard, ctx),
                _ => {
                    eprintln!("{label}: the message will be discarded");
                    self.discard = true;
                    self.answer(Decision::Proceed, ctx);
                }
            },
            r => self.answer(verdict_of(&r), ctx),
        }
    }

    fn accept_message(&mut self, i: usize) {
        let a = &mut self.agents[i];
        a.msg_done = true;
        if let Some(c) = a.conn.as_mut() {
            c.drop_queued(&[cmd::HEADER, cmd::EOH, cmd::BODY, cmd::BODYEOB]);
        }
    }

    /// A reply to a header, the end of headers or a body chunk.
    fn on_content_reply(&mut self, i: usize, reply: Reply, ctx: &mut Ctx, now: Instant) {
        match reply {
            Reply::Continue => return,
            Reply::Skip => {
                self.agents[i].skip_body = true;
                return;
            }
            Reply::Accept => self.accept_message(i),
            Reply::Discard => {
                eprintln!("{}: the message will be discarded", self.agents[i].label);
                self.discard = true;
                self.stop_content();
            }
            r => {
                if self.verdict.is_none() {
                    self.verdict = Some(verdict_of(&r));
                }
                self.stop_content();
            }
        }
        if self
            .question
            .as_ref()
            .is_some_and(|q| q.phase == Phase::Eom)
        {
            self.advance(ctx, now);
        }
    }

    /// The message is decided: milters get no more of its content.
    fn stop_content(&mut self) {
        for a in &mut self.agents {
            if let Some(c) = a.conn.as_mut() {
                c.drop_queued(&[cmd::HEADER, cmd::EOH, cmd::BODY, cmd::BODYEOB]);
            }
        }
        self.chunker.clear();
    }

    /// Milters that take message content (`bit`: the step they may skip, 0 for none).
    fn content_agents(&self, bit: u32) -> Vec<usize> {
        if self.discard || self.verdict.is_some() || !self.in_data {
            return Vec::new();
        }
        (0..self.agents.len())
            .filter(|&i| {
                let a = &self.agents[i];
                a.state == State::Active
                    && !a.msg_done
                    && a.in_msg
                    && !(bit == proto::NOBODY && a.skip_body)
                    && a.conn
                        .as_ref()
                        .and_then(|c| c.negotiated())
                        .is_some_and(|n| !n.has(bit))
            })
            .collect()
    }

    fn send_parts(&mut self, parts: Vec<Part>, ctx: &Ctx) {
        for p in parts {
            match p {
                Part::Header(name, value) => {
                    *self.counts.entry(name.to_ascii_lowercase()).or_default() += 1;
                    for i in self.content_agents(proto::NOHDRS) {
                        let Some(c) = self.agents[i].conn.as_mut() else {
                            continue;
                        };
                        let lead = c.negotiated().is_some_and(|n| n.has(proto::HDR_LEADSPC));
                        let v = message::milter_value(&value, lead);
                        let room = milter::MAX_CHUNK.saturating_sub(name.len() + 3);
                        let mut data = Vec::with_capacity(name.len() + v.len() + 2);
                        milter::put_cstr(&mut data, &name);
                        milter::put_cstr(&mut data, &v[..v.len().min(room)]);
                        c.push(Step::plain(cmd::HEADER, data));
                    }
                }
                Part::EndOfHeaders => {
                    let m = self.macro_set(cmd::EOH, ctx.cfg);
                    // (a milter that skips EOH still gets its macros: the connection
                    // leaves the command out)
                    for i in self.content_agents(0) {
                        if let Some(c) = self.agents[i].conn.as_mut() {
                            c.push(Step {
                                code: cmd::EOH,
                                data: Vec::new(),
                                macros: Some(m.clone()),
                            });
                        }
                    }
                }
            }
        }
    }

    fn send_chunks(&mut self, chunks: Vec<Vec<u8>>) {
        if chunks.is_empty() {
            return;
        }
        for i in self.content_agents(proto::NOBODY) {
            if let Some(c) = self.agents[i].conn.as_mut() {
                for ch in &chunks {
                    c.push(Step::plain(cmd::BODY, ch.clone()));
                }
            }
        }
    }

    fn pump_all(&mut self, ctx: &mut Ctx, now: Instant) {
        for i in 0..self.agents.len() {
            self.pump(i, ctx, now);
        }
    }

    /// Lines of the message (the caller echoes them to the daemon).
    pub fn data_lines(&mut self, lines: &[&[u8]], ctx: &mut Ctx, now: Instant) {
        if !self.in_data {
            return;
        }
        let mut parts = Vec::new();
        let mut chunks = Vec::new();
        let body = !self.content_agents(proto::NOBODY).is_empty();
        for l in lines {
            if self.splitter.in_headers() && self.splitter.header_line(l, &mut parts) {
                continue;
            }
            if body {
                self.chunker.line(l, &mut chunks);
            }
        }
        self.send_parts(parts, ctx);
        self.send_chunks(chunks);
        self.pump_all(ctx, now);
    }

    /// The last line came.
    pub fn data_end(&mut self, ctx: &mut Ctx, now: Instant) {
        if !self.in_data {
            return;
        }
        let mut parts = Vec::new();
        self.splitter.finish(&mut parts);
        self.send_parts(parts, ctx);
        if let Some(c) = self.chunker.finish() {
            self.send_chunks(vec![c]);
        }
        self.in_data = false;
        self.pump_all(ctx, now);
    }

    /// The transaction ended (committed with its message id, or rolled back): milters
    /// still in it get an ABORT.
    pub fn end_message(&mut self, committed: Option<&[u8]>, ctx: &mut Ctx, now: Instant) {
        if let Some(id) = committed {
            eprintln!(
                "{:016x} milter: queue id {} is message {}",
                self.sid,
                self.queue_id(),
                id.escape_ascii()
            );
        }
        self.new_message(ctx, now);
    }

    fn new_message(&mut self, ctx: &mut Ctx, now: Instant) {
        for i in 0..self.agents.len() {
            let a = &mut self.agents[i];
            a.msg_done = false;
            a.skip_body = false;
            if let Some(c) = a.conn.as_mut() {
                c.drop_queued(&[cmd::HEADER, cmd::EOH, cmd::BODY, cmd::BODYEOB]);
                if a.in_msg {
                    c.push(Step::plain(cmd::ABORT, Vec::new()));
                    a.in_msg = false;
                }
            }
            self.pump(i, ctx, now);
        }
        self.discard = false;
        self.verdict = None;
        self.in_data = false;
        self.chunker.clear();
    }

    /// The session ended: QUIT to every milter.
    pub fn disconnect(&mut self, ctx: &mut Ctx) {
        for i in 0..self.agents.len() {
            self.close_agent(i, true, ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_map_to_answers() {
        assert_eq!(verdict_of(&Reply::Continue), Decision::Proceed);
        assert_eq!(verdict_of(&Reply::Accept), Decision::Proceed);
        assert_eq!(
            verdict_of(&Reply::Reject),
            Decision::Reject(550, "5.7.1 Command rejected".into())
        );
        assert_eq!(
            verdict_of(&Reply::Tempfail),
            Decision::Reject(451, "4.7.1 Service unavailable - try again later".into())
        );
        assert_eq!(
            verdict_of(&Reply::Code(421, "4.7.0 bye".into())),
            Decision::Disconnect(421, "4.7.0 bye".into())
        );
        assert_eq!(
            verdict_of(&Reply::Code(554, "5.7.1 no".into())),
            Decision::Reject(554, "5.7.1 no".into())
        );
        assert!(matches!(
            verdict_of(&Reply::Shutdown),
            Decision::Disconnect(421, _)
        ));
        assert_eq!(verdict_of(&Reply::Discard), Decision::Discard);
        assert_eq!(default_verdict(DefaultAction::Accept), Decision::Proceed);
        assert!(matches!(
            default_verdict(DefaultAction::Tempfail),
            Decision::Reject(451, t) if t.starts_with("4.3.0")
        ));
        assert!(matches!(
            default_verdict(DefaultAction::Reject),
            Decision::Reject(550, t) if t.starts_with("5.7.1")
        ));
    }

    #[test]
    fn answers_before_the_daemon_gives_up() {
        let s = Duration::from_secs;
        assert_eq!(answer_within(s(30)), s(28));
        assert_eq!(answer_within(s(5)), Duration::from_millis(3750));
        assert_eq!(answer_within(s(1)), Duration::from_millis(750));
    }
}
