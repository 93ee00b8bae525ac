//! The session's actions carried out: replies rendered, messages opened, committed or
//! discarded, filter queries, lookups and authentications handed to the loop.

use super::message::storage_reply;
use super::{esc, Conn, Ctx, MsgWriter, Reason, MSG_CHUNK};
use crate::filter::report::Report;
use crate::smtp::session::{Action, State};

impl Conn {
    /// Carries out the session's actions.
    pub(super) fn run_actions(&mut self, ctx: &mut Ctx, line: Option<&[u8]>) {
        let mut i = 0;
        let mut last_code = 0;
        while i < self.actions.len() {
            let action = std::mem::replace(&mut self.actions[i], Action::Close);
            i += 1;
            match action {
                Action::Reply(r) => {
                    last_code = r.code;
                    if r.is_error() {
                        ctx.counters.refused(self.phase, r.code);
                    }
                    if let (true, Some(line)) = (r.is_error(), line) {
                        log::info!(
                            "{:016x} smtp failed-command command=\"{}\" result=\"{}\"",
                            self.session.id,
                            esc(line),
                            r.summary()
                        );
                    }
                    let start = self.out.len();
                    r.render(&mut self.out);
                    if self.filters.observe {
                        let text = self.out[start..]
                            .strip_suffix(b"\r\n")
                            .unwrap_or(&self.out[start..]);
                        self.filters.report_reply(text);
                    }
                    log::trace!(target: "smtpd::smtp", "{:016x} smtp >>> {}", self.session.id, esc(&self.out[start..]));
                }
                Action::OpenMessage => {
                    let r = match ctx.spool.create_message_as(self.filters.tx_msgid()) {
                        Ok((id, file)) => {
                            self.filters.set_tx_msgid(id);
                            self.msg = Some(MsgWriter {
                                id,
                                file,
                                buf: Vec::with_capacity(MSG_CHUNK + 1024),
                                failed: false,
                                written: 0,
                            });
                            Ok(id)
                        }
                        Err(e) => {
                            log::warn!("{:016x} smtp cannot create message: {e}", self.session.id);
                            Err(storage_reply(ctx.spool, &e))
                        }
                    };
                    let ok = r.is_ok();
                    self.session.on_opened(r, &mut self.actions);
                    if ok {
                        let header = self.session.received_header(&crate::sys::now_rfc5322());
                        if let Some(m) = self.msg.as_mut() {
                            m.buf.extend_from_slice(header.as_bytes());
                        }
                        self.content_opened();
                    }
                }
                Action::Commit => self.commit(ctx),
                Action::Discard => {
                    if let Some(m) = self.msg.take() {
                        ctx.spool.discard(m.id);
                    }
                    if self.session.state() != State::Quit {
                        // A chunked message dropped before its LAST chunk.
                        self.filters.abandon();
                    }
                    if self.filters.observe {
                        self.filters.report(Report::Rollback(None));
                    }
                }
                Action::Filter(q) => {
                    // The verdict's failed replies are logged with the command.
                    self.lookup_line = line.map(<[u8]>::to_vec);
                    self.filters.query = Some(q);
                }
                Action::StartTls => self.starttls = true,
                Action::Lookup(l) => {
                    self.lookup_line = line.map(<[u8]>::to_vec);
                    let unanswered = l.unanswered();
                    let job = crate::lookup::Job::Session(l);
                    if !ctx.lookups.submit_under((ctx.key, self.gen), job, ctx.cfg) {
                        log::warn!("{:016x} smtp no lookup thread", self.session.id);
                        self.session.on_lookup(unanswered, &mut self.actions);
                    }
                }
                Action::Authenticate(check) => {
                    self.lookup_line = line.map(<[u8]>::to_vec);
                    self.authenticate(ctx, check);
                }
                Action::AuthReport {
                    mechanism,
                    user,
                    code,
                } => {
                    ctx.counters.auth[usize::from(code != 235)] += 1;
                    self.filters.report_auth(mechanism, &user, code);
                }
                Action::Close => {
                    let reason = if last_code == 221 {
                        Reason::Quit
                    } else {
                        Reason::Limit
                    };
                    self.closing.get_or_insert(reason);
                }
            }
        }
        self.actions.clear();
    }
}
