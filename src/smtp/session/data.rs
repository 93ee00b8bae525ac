//! The message side of the session: content lines, the end of data, the commit and
//! the Received header put before the message.
//!
//! ```text
//!  Data --line--> Store / Drop --"."--> the end-of-message filter query, or Commit
//!  Commit --on_committed--> 250 (or the failure), Ready
//! ```

use super::{Action, DataLine, Pending, Session, State};
use crate::filter::phase::Phase;
use crate::mail::reply::Reply;

impl Session {
    /// The Received header for the open message (RFC 5321 §4.4), with `date` formatted
    /// by the caller, lines ending in LF.
    pub fn received_header(&self, date: &str) -> String {
        let Some(tx) = &self.tx else {
            return String::new();
        };
        // `mask-src`: the client is not named (OpenSMTPD leaves the `from` part out).
        let from = match self.client.addr {
            _ if !self.shows_client() => String::new(),
            Some(ip) => format!(
                "from {} ({} [{}])\n\t",
                self.helo,
                self.client.hostname.as_deref().unwrap_or("unknown"),
                ip
            ),
            // A local submission names its user's id, as the kernel told it.
            None => match self.local_uid() {
                Some(uid) => format!("from {} (local uid {uid})\n\t", self.helo),
                None => format!("from {} (local)\n\t", self.helo),
            },
        };
        let mut h = format!(
            "Received: {from}by {} (smtpd) with {} id {:08x}",
            self.client.server_name,
            self.received_protocol(),
            tx.msgid.unwrap_or(0),
        );
        if let Some(tls) = &self.tls {
            h.push(' ');
            h.push_str(&tls.received_comment());
        }
        h.push_str(&self.received_auth());
        // Name the recipient only when there is one, so a Bcc is not disclosed.
        if let [only] = tx.rcpts.as_slice() {
            h.push_str(&format!("\n\tfor <{}>", only.addr));
        }
        h.push_str(&format!(";\n\t{date}\n"));
        h
    }

    /// Feeds a piece of content, CR LF stripped: a whole line, or a part of a line
    /// longer than the input buffer (`first`: the piece starts its line; `last`: it ends
    /// it). `bare` is the line buffer's report of a bare CR or LF in the piece.
    pub fn on_data<'a>(
        &mut self,
        bytes: &'a [u8],
        first: bool,
        last: bool,
        bare: bool,
    ) -> DataLine<'a> {
        debug_assert!(self.in_data());
        if first && last && bytes == b"." {
            return DataLine::End;
        }
        let Some(tx) = self.tx.as_mut() else {
            return DataLine::Drop;
        };
        // RFC 5321 §4.5.2: drop one leading dot.
        let bytes = match first {
            true => bytes.strip_prefix(b".").unwrap_or(bytes),
            false => bytes,
        };
        tx.size += bytes.len() as u64 + if last { 2 } else { 0 };
        self.text_piece(bytes, first, last, bare)
    }

    /// The checks of a piece of text content (DATA's, or a BDAT chunk's but for the
    /// body of a BINARYMIME message), already unstuffed and counted in the size.
    pub(super) fn text_piece<'a>(
        &mut self,
        bytes: &'a [u8],
        first: bool,
        last: bool,
        bare: bool,
    ) -> DataLine<'a> {
        let Some(tx) = self.tx.as_mut() else {
            return DataLine::Drop;
        };
        if first {
            tx.line_len = 0;
        }
        tx.line_len = tx.line_len.saturating_add(bytes.len());
        if tx.fail.is_some() {
            return DataLine::Drop;
        }
        if bare {
            tx.fail = Some(Reply::BARE_NEWLINE_DATA);
            return DataLine::Drop;
        }
        if memchr::memchr(0, bytes).is_some() {
            tx.fail = Some(Reply::NUL_DATA);
            return DataLine::Drop;
        }
        if tx.size > self.limits.max_message_size {
            tx.fail = Some(Reply::TOO_BIG);
            return DataLine::Drop;
        }
        // `smtp limit max-text-line` counts the line end.
        let max_line = self.limits.max_text_line;
        if max_line > 0 && tx.line_len.saturating_add(2) > max_line {
            tx.fail = Some(Reply::DATA_LINE_TOO_LONG);
            return DataLine::Drop;
        }
        if tx.in_headers && first {
            if last && bytes.is_empty() {
                tx.in_headers = false;
            } else if bytes.len() >= 9 && bytes[..9].eq_ignore_ascii_case(b"received:") {
                tx.hops += 1;
                if tx.hops >= self.limits.max_hops {
                    tx.fail = Some(Reply::LOOP);
                    return DataLine::Drop;
                }
            }
        }
        DataLine::Store(bytes)
    }

    /// A content line could not be carried whole (longer than the filters' protocol
    /// allows): the message will be refused.
    pub fn on_data_too_long(&mut self) {
        if let Some(tx) = self.tx.as_mut() {
            tx.fail.get_or_insert(Reply::DATA_LINE_TOO_LONG);
        }
    }

    /// The filters' output grew past the size limit.
    pub fn on_filter_overflow(&mut self) {
        if let Some(tx) = self.tx.as_mut() {
            tx.fail.get_or_insert(Reply::TOO_BIG);
        }
    }

    /// A data filter failed: the message's lines are lost, which is temporary
    /// whatever else went wrong with it (a message the failed filter made too big, for
    /// one).
    pub fn on_filter_failed(&mut self) {
        if let Some(tx) = self.tx.as_mut() {
            tx.fail = Some(Reply::LOCAL_ERROR);
        }
    }

    /// A write to the message file failed (`no_space` for ENOSPC/EDQUOT).
    pub fn on_write_error(&mut self, no_space: bool) {
        if let Some(tx) = self.tx.as_mut() {
            tx.fail.get_or_insert(if no_space {
                Reply::NO_STORAGE
            } else {
                Reply::LOCAL_ERROR
            });
        }
    }

    /// The end of data was seen. `pipelined` tells that the client sent more bytes after
    /// the final "." without having been offered PIPELINING.
    /// The LAST chunk of BDAT ends a message the same way ([`Session::on_chunk_end`]).
    pub fn on_data_end(&mut self, pipelined: bool, out: &mut Vec<Action>) {
        debug_assert!(self.in_data() || self.state == State::Chunk);
        let fail = self.tx.as_mut().and_then(|t| t.fail.take());
        if pipelined && !self.esmtp {
            out.push(Action::Discard);
            self.tx = None;
            return self.close(Reply::UNAUTH_PIPELINING, out);
        }
        match fail {
            Some(reply) => {
                out.push(Action::Discard);
                self.tx = None;
                self.enter(State::Ready);
                self.fail(reply, out);
            }
            None => {
                let size = self.tx.as_ref().map_or(0, |t| t.size).to_string();
                if !self.ask(Phase::Eom, size, Pending::Eom, out) {
                    out.push(Action::Commit);
                    self.enter(State::Commit);
                }
            }
        }
    }

    /// The answer to [`Action::Commit`]: the message is durable, or why not.
    pub fn on_committed(&mut self, r: Result<(), Reply>, out: &mut Vec<Action>) {
        if self.state != State::Commit {
            return;
        }
        let tx = self.tx.take();
        self.enter(State::Ready);
        match r {
            Ok(()) => {
                self.mails += 1;
                let id = tx.and_then(|t| t.msgid).unwrap_or(0);
                out.push(Action::Reply(Reply::new(
                    250,
                    "2.0.0",
                    format!("{id:08x} Message accepted for delivery"),
                )));
            }
            Err(reply) => self.fail(reply, out),
        }
    }
}
