//! The message side of a session: storing content lines (from the client or the last
//! data filter), the end-of-message edits, the commit and its answer.

use super::*;
use crate::queue::spool::MessageFile;

impl Conn {
    /// Writes what is left of the message, has it rewritten when filters edited it,
    /// then writes the envelopes and hands it to the sync thread.
    pub(super) fn commit(&mut self, ctx: &mut Ctx) {
        let Some(mut m) = self.msg.take() else {
            self.session
                .on_committed(Err(Reply::LOCAL_ERROR), &mut self.actions);
            return;
        };
        if !m.buf.is_empty() {
            write_chunk(ctx.spool, &mut m, &mut self.session);
        }
        let junk = self.session.tx().is_some_and(|t| t.junk);
        let edits = std::mem::take(&mut self.pending_edits);
        let masquerade = self.session.masquerade();
        let edit = junk || !edits.is_empty() || masquerade.is_some();
        if !m.failed && edit {
            // A sealed message gets its last segment first, so that it can be read back.
            if let Err(e) = ctx.spool.finish_data(&mut m.file) {
                m.failed = true;
                self.session.on_write_error(is_no_space(&e));
            }
        }
        if !m.failed && edit {
            // Filters changed the message (or its From fields show the sender): a
            // lookup thread writes it again with the edits (`queue::rewrite`), and the
            // commit goes on in `on_edited`.
            let job = crate::lookup::Job::Edit(crate::lookup::EditJob {
                msgid: m.id,
                len: m.written,
                edits,
                junk,
                masquerade,
            });
            if ctx.lookups.submit_under((ctx.key, self.gen), job, ctx.cfg) {
                self.editing = Some(m.id);
                return;
            }
            log::warn!(
                "{:016x} smtp cannot apply filter edits: no lookup thread",
                self.session.id
            );
            m.failed = true;
        }
        let file = (!m.failed).then_some(m.file);
        self.submit_commit(ctx, m.id, file);
    }

    /// A lookup thread rewrote this session's message with the filters' edits: the
    /// commit goes on. False when the message is not this session's (it is gone).
    pub fn on_edited(
        &mut self,
        ctx: &mut Ctx,
        msgid: u32,
        result: io::Result<MessageFile>,
        now: Instant,
    ) -> bool {
        if self.editing != Some(msgid) {
            return false;
        }
        self.editing = None;
        let file = result
            .inspect_err(|e| {
                log::warn!(
                    "{:016x} smtp cannot apply filter edits: {e}",
                    self.session.id
                )
            })
            .ok();
        self.submit_commit(ctx, msgid, file);
        self.run_actions(ctx, None);
        self.pump(ctx, now);
        true
    }

    /// Writes the envelopes after message `id` and hands it to the sync thread;
    /// `None` when writing the message failed.
    fn submit_commit(&mut self, ctx: &mut Ctx, id: u32, file: Option<MessageFile>) {
        let failed = file.is_none();
        let job = match file {
            None => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(file) => {
                let envs = self.envelopes(ctx.cfg, id);
                if envs.is_empty() {
                    // Filters removed every recipient: accepted, and nothing to deliver.
                    log::info!(
                        "{:016x} smtp message msgid={id:08x} discarded: no recipient left",
                        self.session.id,
                    );
                    ctx.spool.discard(id);
                    self.session.on_committed(Ok(()), &mut self.actions);
                    return;
                }
                ctx.spool.prepare_commit(id, file, &envs)
            }
        };
        match job {
            Ok(job) => {
                if !ctx.committer.submit((ctx.key, self.gen), job) {
                    ctx.spool.discard(id);
                    self.session
                        .on_committed(Err(Reply::LOCAL_ERROR), &mut self.actions);
                }
            }
            Err(e) => {
                ctx.spool.discard(id);
                let r = storage_reply(ctx.spool, &e);
                if !failed {
                    log::warn!("{:016x} smtp cannot write envelopes: {e}", self.session.id);
                }
                self.session.on_committed(Err(r), &mut self.actions);
            }
        }
    }

    fn envelopes(&self, cfg: &Config, msgid: u32) -> Vec<Envelope> {
        let Some(tx) = self.session.tx() else {
            return Vec::new();
        };
        let ctime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let client = self.session.client();
        let mut out: Vec<Envelope> = Vec::with_capacity(tx.rcpts.len());
        for r in &tx.rcpts {
            for d in &r.deliveries {
                // The same recipient given twice gets one envelope per destination.
                let dest = d.dest.encode();
                let action = cfg
                    .actions
                    .get(d.action)
                    .map(|a| a.name.as_str())
                    .unwrap_or("");
                let rcpt = r.addr.to_string();
                if out
                    .iter()
                    .any(|e| e.dest == dest && e.action == action && e.rcpt == rcpt)
                {
                    continue;
                }
                let taken: Vec<u64> = out.iter().map(|e| e.evpid).collect();
                let evpid = crate::queue::envelope::new_evpid(msgid, &taken);
                out.push(Envelope {
                    evpid,
                    ctime,
                    sender: tx.sender.to_string(),
                    rcpt: r.addr.to_string(),
                    dest: d.dest.encode(),
                    action: cfg
                        .actions
                        .get(d.action)
                        .map(|a| a.name.clone())
                        .unwrap_or_default(),
                    tag: client.tag.clone().unwrap_or_default(),
                    helo: self.session.helo().to_string(),
                    client: client
                        .addr
                        .map_or_else(|| "local".into(), |a| a.to_string()),
                    hostname: client.server_name.clone(),
                    body_8bit: Session::is_8bit(tx),
                    smtputf8: Session::is_smtputf8(tx),
                    requiretls: tx.params.requiretls,
                    body_binary: Session::is_binary(tx),
                    dsn_notify: Session::notify_of(r),
                    dsn_ret: match tx.params.ret {
                        Some(crate::mail::params::Ret::Full) => "FULL".into(),
                        Some(crate::mail::params::Ret::Hdrs) => "HDRS".into(),
                        None => String::new(),
                    },
                    dsn_envid: tx.params.envid.clone().unwrap_or_default(),
                    dsn_orcpt: r.params.orcpt.clone().unwrap_or_default(),
                    held: tx.quarantine.is_some(),
                    errorline: tx
                        .quarantine
                        .as_ref()
                        .map(|q| format!("quarantined: {q}"))
                        .unwrap_or_default(),
                    ..Envelope::default()
                });
            }
        }
        out
    }

    /// Stores lines that came out of the last data filter.
    pub fn store_filtered(&mut self, spool: &Spool, lines: &Lines, max_size: u64) {
        let Some(m) = self.msg.as_mut() else { return };
        // Counted as on the wire: each line with CR LF.
        self.filters.filtered_bytes += (lines.text().len() + lines.len()) as u64;
        if m.failed {
            return;
        }
        if self.filters.filtered_bytes > max_size {
            self.session.on_filter_overflow();
            m.failed = true;
            return;
        }
        self.filters.filtered_into(lines, &mut m.buf);
        if m.buf.len() >= MSG_CHUNK {
            write_chunk(spool, m, &mut self.session);
        }
    }

    /// The last data filter ended its output: the message is complete.
    pub fn on_filtered_end(&mut self, ctx: &mut Ctx, now: Instant) {
        let Some(pipelined) = self.filters.data_end.take() else {
            return;
        };
        self.filters.data_end_sent = false;
        self.filters.data_chain.clear();
        self.filters.filtered_bytes = 0;
        if std::mem::take(&mut self.filters.abandoned) {
            // The message was dropped meanwhile: nothing to end.
            self.pump(ctx, now);
            return;
        }
        self.phase = "message";
        self.session.on_data_end(pipelined, &mut self.actions);
        self.run_actions(ctx, Some(b"."));
        self.pump(ctx, now);
    }

    /// A data filter failed: the message is refused when its end comes.
    pub fn on_data_filter_failed(&mut self, ctx: &mut Ctx, now: Instant) {
        self.session.on_filter_failed();
        self.filters.batch.clear();
        self.filters.long_line = Vec::new();
        self.filters.batch_bytes = 0;
        if self.filters.data_end.is_some() {
            self.on_filtered_end(ctx, now);
        } else {
            // Lines still to come are dropped by the failed transaction.
            self.filters.data_chain.clear();
        }
    }

    /// Takes the end-of-message edits of the filter chain. Envelope edits go to the
    /// session, which applies them once the chain lets the message through (an added
    /// recipient is looked up first); header and body edits apply at commit. A
    /// malformed edit is an error, and none applies.
    pub fn take_eom_edits(&mut self, edits: Vec<crate::filter::pipe::Edit>) -> Result<(), String> {
        use crate::filter::pipe::Edit;
        use crate::queue::edit::{clean_value, valid_name};
        use crate::smtp::session::EnvelopeEdit;
        // Edits belong to this message only.
        self.pending_edits.clear();
        let mut message = Vec::new();
        let mut envelope = Vec::new();
        for e in edits {
            match e {
                Edit::AddHeader(n, v)
                | Edit::InsertHeader(_, n, v)
                | Edit::ChangeHeader(_, n, v)
                    if !valid_name(&n) || (clean_value(&v).is_none()) =>
                {
                    return Err(format!("invalid header {n:?}"));
                }
                Edit::AddHeader(n, v) => {
                    message.push(Edit::AddHeader(n, clean_value(&v).unwrap_or_default()))
                }
                Edit::InsertHeader(i, n, v) => message.push(Edit::InsertHeader(
                    i,
                    n,
                    clean_value(&v).unwrap_or_default(),
                )),
                Edit::ChangeHeader(i, n, v) => message.push(Edit::ChangeHeader(
                    i,
                    n,
                    clean_value(&v).unwrap_or_default(),
                )),
                Edit::ReplaceBody(b) => {
                    if b.contains(&0) {
                        return Err("NUL in a replaced body".into());
                    }
                    message.push(Edit::ReplaceBody(b));
                }
                Edit::AddRcpt(a) => {
                    let m = crate::mail::address::parse_address(&a, false)
                        .ok_or_else(|| format!("invalid recipient {a:?}"))?;
                    envelope.push(EnvelopeEdit::AddRcpt(m));
                }
                Edit::DelRcpt(a) => envelope.push(EnvelopeEdit::DelRcpt(a)),
                Edit::ChangeFrom(a) => {
                    let m = crate::mail::address::parse_address(&a, true)
                        .ok_or_else(|| format!("invalid sender {a:?}"))?;
                    envelope.push(EnvelopeEdit::ChangeFrom(m));
                }
                Edit::Quarantine(r) => envelope.push(EnvelopeEdit::Quarantine(r)),
            }
        }
        if message.iter().any(|e| matches!(e, Edit::ReplaceBody(_))) {
            self.session.on_body_replaced();
        }
        self.pending_edits = message;
        self.session.set_envelope_edits(envelope);
        Ok(())
    }

    /// The sync thread finished this connection's commit.
    /// Returns true when the message must be withdrawn: a client that was not offered
    /// PIPELINING sent more before it got its reply (the message was committed but is
    /// refused).
    pub fn on_committed(
        &mut self,
        ctx: &mut Ctx,
        msgid: u32,
        r: io::Result<()>,
        now: Instant,
    ) -> bool {
        if r.is_ok() && !self.session.esmtp() && self.sent_early() {
            log::info!(
                "{:016x} smtp message msgid={msgid:08x} withdrawn: input before the reply without PIPELINING",
                self.session.id
            );
            self.session
                .close(Reply::UNAUTH_PIPELINING, &mut self.actions);
            self.run_actions(ctx, None);
            self.flush();
            return true;
        }
        let r = match r {
            Ok(()) => {
                ctx.counters.messages += 1;
                if let Some(tx) = self.session.tx() {
                    log::info!(
                        "{:016x} smtp message msgid={msgid:08x} size={} nrcpt={} proto={} from=<{}>",
                        self.session.id,
                        tx.size,
                        tx.rcpts.len(),
                        if self.session.esmtp() { "ESMTP" } else { "SMTP" },
                        tx.sender
                    );
                }
                Ok(())
            }
            Err(e) => {
                log::warn!(
                    "{:016x} smtp commit of {msgid:08x} failed: {e}",
                    self.session.id
                );
                Err(storage_reply(ctx.spool, &e))
            }
        };
        self.session.on_committed(r, &mut self.actions);
        self.run_actions(ctx, None);
        self.pump(ctx, now);
        false
    }
}

/// The reply to a spool failure: 452 for lack of space (after `free/` gave its blocks
/// back, so that the client's next attempt finds them), 451 otherwise.
pub(super) fn storage_reply(spool: &Spool, e: &io::Error) -> Reply {
    if is_no_space(e) {
        spool.release_free();
        Reply::NO_STORAGE
    } else {
        Reply::LOCAL_ERROR
    }
}

pub(super) fn write_chunk(spool: &Spool, m: &mut MsgWriter, session: &mut Session) {
    if let Err(e) = spool.write_data(&mut m.file, &m.buf) {
        m.failed = true;
        session.on_write_error(is_no_space(&e));
    }
    m.written += m.buf.len() as u64;
    m.buf.clear();
}
