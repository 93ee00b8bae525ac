//! BDAT (RFC 3030) on the client side: the chunks of a BINARYMIME message and their
//! replies. The glue sends the chunks ([`Step::SendChunks`]) while
//! [`Client::may_send_chunk`] says so and tells each one sent; the replies are
//! matched with them in order.
//!
//! Over SMTP with PIPELINING the chunks follow each other without waiting (RFC 3030
//! §4.2); otherwise, and always over LMTP (whose LAST chunk gets a reply per
//! recipient, which a refused chunk before it would leave uncertain), each waits for
//! the reply to the one before. A chunk refused ends the message: no chunk follows,
//! the accepted recipients get that reply (or, when the LAST one was already sent,
//! still that first refusal), and RSET follows once every chunk sent is answered.

use super::{Client, ServerReply, State, Step};
use crate::mda::Outcome;
use crate::nexthop::Proto;

impl Client {
    /// Whether the glue is sending BDAT chunks.
    pub fn in_chunks(&self) -> bool {
        self.state == State::Chunks
    }

    /// Whether the next chunk may go now.
    pub fn may_send_chunk(&self) -> bool {
        let pipelined = self.caps.pipelining && self.proto == Proto::Smtp;
        self.state == State::Chunks
            && self.tx.chunk_failed.is_none()
            && (pipelined || self.tx.chunk_replies == 0)
    }

    /// A chunk was sent; `last`: it was the LAST one, the message is sent.
    pub fn chunk_sent(&mut self, last: bool) {
        if self.state != State::Chunks {
            return;
        }
        if !last {
            self.tx.chunk_replies += 1;
            return;
        }
        self.state = State::Dot;
        self.tx.dot_replies = match self.proto {
            Proto::Lmtp => self.tx.accepted.len(),
            Proto::Smtp => 1,
        };
    }

    /// A reply to a chunk other than the LAST one.
    pub(super) fn on_chunk_reply(&mut self, r: &ServerReply, out: &mut Vec<Step>) {
        self.tx.chunk_replies -= 1;
        if !r.positive() && self.tx.chunk_failed.is_none() {
            self.tx.chunk_failed = Some((r.failure(), r.line()));
        }
        if self.state == State::Chunks && self.tx.chunk_replies == 0 {
            if let Some(failed) = self.tx.chunk_failed.take() {
                self.chunks_refused(failed, out);
            }
        }
    }

    /// The message was refused at a chunk: its accepted recipients get `failed`, and
    /// RSET ends the transaction.
    pub(super) fn chunks_refused(&mut self, failed: (Outcome, String), out: &mut Vec<Step>) {
        let (o, line) = failed;
        if let Some(js) = self.jobs.front_mut() {
            for &i in &self.tx.accepted {
                if let Some(res) = js.results.get_mut(i) {
                    *res = Some(o.clone());
                }
            }
        }
        self.log_tx(&line, out);
        self.front_done(out);
        self.rset(out);
    }
}
