//! Transactions: what is checked before MAIL, then MAIL, RCPT and DATA, lock-step or
//! pipelined (RFC 2920), the replies matched in order with the commands, and the end
//! of the transaction (the final dot's replies, or RSET after one that went nowhere).

use super::params;
use super::{Client, ServerReply, State, Step};
use crate::mda::Outcome;
use crate::nexthop::Proto;
use std::collections::VecDeque;

/// A command sent whose reply is awaited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Mail,
    /// The RCPT of the front job's recipient at this index.
    Rcpt(usize),
    Data,
}

/// The transaction in progress: of the front job.
#[derive(Debug, Default)]
pub(super) struct Tx {
    /// A MAIL was sent and the transaction is not logged yet.
    pub(super) active: bool,
    /// Recipients (indices in the job) to offer, in order.
    todo: Vec<usize>,
    /// RCPTs sent so far.
    sent: usize,
    pub(super) accepted: Vec<usize>,
    /// Commands sent, their replies awaited, in order.
    pending: VecDeque<Cmd>,
    /// MAIL was refused: the outcome of every recipient.
    mail_refused: Option<Outcome>,
    /// A 452 after an accepted recipient: the rest wait for the next transaction.
    full: bool,
    /// Replies to the final dot still expected.
    pub(super) dot_replies: usize,
    /// Replies to BDAT chunks other than the LAST one still expected.
    pub(super) chunk_replies: usize,
    /// A BDAT chunk was refused: the outcome of the accepted recipients, and the reply.
    pub(super) chunk_failed: Option<(Outcome, String)>,
}

/// The recipients (indices among `rcpts`) of the next transaction: `todo` cut at the
/// server's RCPTMAX and RCPTDOMAINMAX (RFC 9422 §5.2, §5.3); the rest wait for the
/// transactions after it.
fn within_limits(todo: Vec<usize>, rcpts: &[super::Rcpt], l: &super::ehlo::Limits) -> Vec<usize> {
    let mut domains: Vec<&str> = Vec::new();
    let mut out = Vec::with_capacity(todo.len());
    for i in todo {
        if l.rcpt.is_some_and(|max| out.len() >= max) {
            break;
        }
        let domain = rcpts
            .get(i)
            .and_then(|r| r.addr.rsplit_once('@'))
            .map_or("", |(_, d)| d);
        if !domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
            if l.rcpt_domain.is_some_and(|max| domains.len() >= max) {
                continue;
            }
            domains.push(domain);
        }
        out.push(i);
    }
    out
}

/// Whether an address of `job` is not ASCII (SMTPUTF8 needed, RFC 6531).
fn utf8(job: &super::Job) -> bool {
    !job.sender.is_ascii() || job.rcpts.iter().any(|r| !r.addr.is_ascii())
}

impl Client {
    /// Starts the next transaction (of the front job if it has recipients left, else
    /// of the first ready job), after failing the jobs the server cannot take; or QUIT
    /// when closing with no job left; or waits in `Ready`.
    pub(super) fn next(&mut self, out: &mut Vec<Step>) {
        self.state = State::Ready;
        loop {
            if let Some(max) = self
                .caps
                .limits
                .mail
                .filter(|&m| self.transactions >= m && !self.jobs.is_empty())
            {
                // RFC 9422 §5.1: no more transactions in this session; the jobs left
                // go in another.
                let why = format!(
                    "451 4.5.3 {} takes {max} transaction(s) per session (LIMITS MAILMAX)",
                    self.server_or("the server")
                );
                return self.end_session(Outcome::TempFail(why), true, out);
            }
            let Some(at) = self.jobs.iter().position(|j| j.ready) else {
                if self.closing && self.jobs.is_empty() {
                    out.push(Step::Send("QUIT".into()));
                    self.state = State::Quit;
                }
                return;
            };
            if let Some(js) = self.jobs.remove(at) {
                self.jobs.push_front(js);
            }
            match self.refusal() {
                Some(Ok(o)) => {
                    let line = match &o {
                        Outcome::PermFail(s) | Outcome::TempFail(s) => s.clone(),
                        _ => String::new(),
                    };
                    if let Some(js) = self.jobs.front_mut() {
                        js.settle_all(&o);
                        let fields = format!(
                            "msgid={:08x} from=<{}> rcpts={} result={line:?}",
                            js.job.msgid,
                            js.job.sender,
                            js.job.rcpts.len()
                        );
                        out.push(Step::Log {
                            event: "not-sent",
                            fields,
                        });
                    }
                    self.front_done(out);
                }
                Some(Err(id)) => {
                    out.push(Step::Scan(id));
                    self.state = State::Scan;
                    return;
                }
                None => return self.mail(out),
            }
        }
    }

    /// Why the front job cannot go to this server (`Ok`), or the job whose content
    /// must be looked at first (`Err`); `None` when it can go.
    fn refusal(&self) -> Option<Result<Outcome, u64>> {
        let js = self.jobs.front()?;
        let name = self.server_or("the server");
        // RFC 1870 §6.2: a message the server said it will not take is not offered.
        if let Some(limit) = self.caps.size.filter(|&l| l > 0 && js.size > l) {
            return Some(Ok(Outcome::PermFail(format!(
                "552 5.3.4 message too big for {name} (limit {limit})"
            ))));
        }
        // RFC 8689 §4.2.1: verified TLS and a server that offers REQUIRETLS, or the
        // message is not sent (and is returned to its sender).
        if js.job.requiretls && self.proto == Proto::Smtp {
            if self.tls.is_none() || !self.verified_tls {
                return Some(Ok(Outcome::PermFail(format!(
                    "550 5.7.30 REQUIRETLS: no verified TLS with {name}"
                ))));
            }
            if !self.caps.requiretls {
                return Some(Ok(Outcome::PermFail(format!(
                    "550 5.7.30 REQUIRETLS: {name} does not offer REQUIRETLS"
                ))));
            }
        }
        if !self.caps.smtputf8 && utf8(&js.job) {
            return Some(Ok(Outcome::PermFail(format!(
                "553 5.6.7 non-ASCII address and {name} does not offer SMTPUTF8"
            ))));
        }
        // RFC 6531 §3.2: a message that needs SMTPUTF8 is not downgraded here. LMTP
        // delivers locally: intact.
        if self.proto == Proto::Smtp && !self.caps.smtputf8 && js.job.smtputf8 {
            match js.content {
                Some(c) if c.utf8_header => {
                    return Some(Ok(Outcome::PermFail(format!(
                        "553 5.6.7 UTF-8 header and {name} does not offer SMTPUTF8"
                    ))))
                }
                None => return Some(Err(js.job.id)),
                Some(_) => {}
            }
        }
        // RFC 3030 §3: binary content goes only in BDAT chunks, to a server that takes
        // it; none is converted.
        if js.job.body_binary {
            if self.caps.chunking && self.caps.binarymime {
                return None;
            }
            return Some(Ok(Outcome::PermFail(format!(
                "554 5.6.3 conversion of binary content needed and not done: {name} does not offer CHUNKING and BINARYMIME"
            ))));
        }
        // RFC 6152 §3: 8-bit content goes only to a server that offers 8BITMIME; a
        // relay may bounce what it does not convert. LMTP delivers locally: intact.
        if self.proto == Proto::Smtp && !self.caps.eightbitmime {
            match js.eight_bit {
                Some(true) => {
                    return Some(Ok(Outcome::PermFail(format!(
                        "554 5.6.3 conversion to 7 bit needed and not done: {name} does not offer 8BITMIME"
                    ))))
                }
                None => return Some(Err(js.job.id)),
                Some(false) => {}
            }
        }
        None
    }

    /// MAIL for the front job; with PIPELINING, every RCPT and DATA with it.
    fn mail(&mut self, out: &mut Vec<Step>) {
        let Some(js) = self.jobs.front() else {
            return;
        };
        let dsn = self.proto == Proto::Smtp;
        let binary = js.job.body_binary;
        let p = params::mail(
            &js.job,
            &self.caps,
            js.size,
            js.eight_bit == Some(true),
            js.job.smtputf8 || utf8(&js.job),
            dsn,
        );
        out.push(Step::Send(format!("MAIL FROM:<{}>{p}", js.job.sender)));
        self.tx = Tx {
            active: true,
            todo: within_limits(js.unsettled(), &js.job.rcpts, &self.caps.limits),
            ..Tx::default()
        };
        self.tx.pending.push_back(Cmd::Mail);
        self.mail_sent = true;
        self.transactions += 1;
        self.state = State::Tx;
        if self.caps.pipelining {
            while self.tx.sent < self.tx.todo.len() {
                self.send_rcpt(out);
            }
            // BDAT waits for the replies to RCPT (`step`).
            if !binary {
                out.push(Step::Send("DATA".into()));
                self.tx.pending.push_back(Cmd::Data);
            }
        }
    }

    fn send_rcpt(&mut self, out: &mut Vec<Step>) {
        let Some(&i) = self.tx.todo.get(self.tx.sent) else {
            return;
        };
        let Some(r) = self.jobs.front().and_then(|js| js.job.rcpts.get(i)) else {
            return;
        };
        let p = params::rcpt(r, &self.caps, self.proto == Proto::Smtp);
        out.push(Step::Send(format!("RCPT TO:<{}>{p}", r.addr)));
        self.tx.pending.push_back(Cmd::Rcpt(i));
        self.tx.sent += 1;
    }

    pub(super) fn rset(&mut self, out: &mut Vec<Step>) {
        out.push(Step::Send("RSET".into()));
        self.state = State::Rset;
    }

    /// Logs the transaction's end with `result`.
    pub(super) fn log_tx(&mut self, result: &str, out: &mut Vec<Step>) {
        if !std::mem::take(&mut self.tx.active) {
            return;
        }
        if let Some(js) = self.jobs.front() {
            let fields = format!(
                "msgid={:08x} from=<{}> rcpts={} accepted={} result={result:?}",
                js.job.msgid,
                js.job.sender,
                self.tx.todo.len(),
                self.tx.accepted.len()
            );
            out.push(Step::Log {
                event: "transaction",
                fields,
            });
        }
    }

    /// A reply to MAIL, RCPT or DATA.
    pub(super) fn on_tx_reply(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        let Some(cmd) = self.tx.pending.pop_front() else {
            let why = format!("unexpected reply {} from {}", r.line(), self.server);
            return self.end_session(Outcome::TempFail(why), false, out);
        };
        match cmd {
            Cmd::Mail if r.positive() => {}
            Cmd::Mail => {
                let o = r.failure();
                if let Some(js) = self.jobs.front_mut() {
                    for &i in &self.tx.todo {
                        if let Some(res) = js.results.get_mut(i) {
                            res.get_or_insert_with(|| o.clone());
                        }
                    }
                }
                self.tx.mail_refused = Some(o);
            }
            // After a refused MAIL, the server's RCPT replies say nothing more.
            Cmd::Rcpt(_) if self.tx.mail_refused.is_some() => {}
            Cmd::Rcpt(i) => self.on_rcpt(i, r),
            Cmd::Data => return self.on_data(r, out),
        }
        if self.tx.pending.is_empty() {
            // Lock-step: the next command.
            self.step(r, out);
        }
    }

    fn on_rcpt(&mut self, i: usize, r: &ServerReply) {
        let Some(js) = self.jobs.front_mut() else {
            return;
        };
        match r.code {
            200..=299 => self.tx.accepted.push(i),
            // Too many recipients (RFC 5321 §4.5.3.1.10, where 552 is the old form):
            // this one goes in the next transaction.
            452 | 552 if self.tx.full || !self.tx.accepted.is_empty() => self.tx.full = true,
            _ => {
                if let Some(res) = js.results.get_mut(i) {
                    *res = Some(r.failure());
                }
            }
        }
    }

    /// Lock-step, after the reply to MAIL or a RCPT: the next RCPT, DATA, or the end
    /// of a transaction that went nowhere.
    fn step(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        if self.tx.mail_refused.is_some() {
            // No transaction was opened: the job is over, no RSET needed.
            self.log_tx(&r.line(), out);
            self.front_done(out);
            return self.next(out);
        }
        if !self.tx.full && self.tx.sent < self.tx.todo.len() {
            return self.send_rcpt(out);
        }
        if self.tx.accepted.is_empty() {
            // Every recipient refused: the job is over.
            self.log_tx(&r.line(), out);
            self.front_done(out);
            return self.rset(out);
        }
        match self.jobs.front() {
            Some(js) if js.job.body_binary => {
                out.push(Step::SendChunks(js.job.id));
                self.state = State::Chunks;
            }
            _ => {
                out.push(Step::Send("DATA".into()));
                self.tx.pending.push_back(Cmd::Data);
            }
        }
    }

    fn on_data(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        let nothing = self.tx.mail_refused.is_some() || self.tx.accepted.is_empty();
        if nothing {
            // The job is settled by the replies to MAIL or RCPT.
            self.log_tx(&r.line(), out);
            self.front_done(out);
            if r.code == 354 {
                // RFC 2920 §3.1: the server waits for content; an empty message ends
                // it, and its reply is not a delivery of anything. RSET follows.
                out.push(Step::Send(".".into()));
                self.state = State::LoneDot;
            } else if self.tx.mail_refused.is_some() {
                self.next(out);
            } else {
                self.rset(out);
            }
            return;
        }
        if r.code == 354 {
            if let Some(js) = self.jobs.front() {
                out.push(Step::SendBody(js.job.id));
            }
            self.state = State::Body;
            return;
        }
        // The message is refused as a whole.
        let o = r.failure();
        if let Some(js) = self.jobs.front_mut() {
            for &i in &self.tx.accepted {
                if let Some(res) = js.results.get_mut(i) {
                    *res = Some(o.clone());
                }
            }
        }
        self.log_tx(&r.line(), out);
        self.front_done(out);
        self.rset(out);
    }

    pub(super) fn on_dot(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        if let Some(failed) = self.tx.chunk_failed.take() {
            // An earlier chunk was refused: so is the message, whatever LAST got.
            return self.chunks_refused(failed, out);
        }
        let Some(js) = self.jobs.front_mut() else {
            return self.next(out);
        };
        let o = r.outcome();
        let ok = o == Outcome::Ok;
        let mut settle = |i: usize| {
            if let (Some(res), Some(rep)) = (js.results.get_mut(i), js.replies.get_mut(i)) {
                *res = Some(o.clone());
                if ok {
                    *rep = r.line();
                }
            }
        };
        match self.proto {
            Proto::Smtp => self.tx.accepted.iter().for_each(|&i| settle(i)),
            Proto::Lmtp => {
                let n = self.tx.accepted.len().saturating_sub(self.tx.dot_replies);
                if let Some(&i) = self.tx.accepted.get(n) {
                    settle(i);
                }
            }
        }
        self.tx.dot_replies = self.tx.dot_replies.saturating_sub(1);
        if self.tx.dot_replies == 0 {
            // The transaction is complete: the next MAIL needs no RSET (RFC 5321 §4.1.1.4).
            self.log_tx(&r.line(), out);
            self.front_done(out);
            self.next(out);
        }
    }
}
