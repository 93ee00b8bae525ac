//! BDAT (RFC 3030 CHUNKING): the session's byte-count mode.
//!
//! ```text
//!  Mail --BDAT n--> [DATA filter phase, message opened: first chunk] --> Chunk
//!  Chunk --n octets read--> Mail (250 n octets received)
//!  Chunk --n octets read, LAST--> end of message, as after "." (filters, Commit)
//!  any --refused BDAT--> Chunk (octets skipped unseen) --> Ready/Connected (error)
//! ```
//!
//! The size on the command line is the only thing that ends a chunk: its octets are
//! never taken as commands, and nothing in them (a dot, CR LF . CR LF) ends the
//! message. Whatever is wrong with a BDAT whose size could be read (no transaction,
//! no recipient, HELO instead of EHLO, a size past `max-message-size`, a refusal of
//! the DATA filter phase, a spool that cannot open the message), its octets are
//! skipped and the error comes after them, so that the stream stays in step; a
//! refused BDAT ends the transaction (RFC 3030 §2: it failed). A BDAT whose size cannot
//! be read ends the session (`command.rs`, [`super::Session::on_line`]).
//!
//! The chunks of a message are one stream: the line buffer puts them end to end
//! (a CR at the end of one and an LF at the start of the next are a line end), and
//! each piece goes through the checks of DATA's content but for the dot. A 7BIT or
//! 8BITMIME body is text: a bare CR or LF, or a NUL, refuses the message at the LAST
//! chunk, as at DATA's final dot (never normalised, so no chunk can smuggle a line
//! end another server would read differently), and a body that does not end with
//! CR LF gets one. A BINARYMIME body (after the header section, which stays text) is
//! stored as it came, octet for octet.

use super::{Action, DataLine, Session, State};
use crate::filter::phase::Phase;
use crate::linebuf::{LineBuf, Text};
use crate::mail::params::Body;
use crate::mail::reply::Reply;

/// What one step of [`Session::read_chunk`] gave.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkStep<'a> {
    /// More input is needed.
    Partial,
    /// Octets of a refused chunk were skipped unseen.
    Skipped,
    /// A piece of content, the session's verdict on it, and its flags: it starts its
    /// line, ends it, holds a bare CR or LF.
    Piece(DataLine<'a>, (bool, bool, bool)),
    /// Every octet of the chunk is in: [`Session::on_chunk_end`] comes next.
    Done,
}

/// A BDAT chunk being read.
#[derive(Debug, Clone)]
pub(super) struct Chunk {
    /// Octets announced.
    size: u64,
    /// Octets still to read.
    left: u64,
    /// `LAST`: the message ends with it.
    last: bool,
    /// The chunk was refused: its octets are skipped, then this reply is given and
    /// the session goes back to `resume`.
    refused: Option<(Reply, State)>,
}

impl Session {
    /// `BDAT size [LAST]`; `tls_first`: the listener wants STARTTLS before mail.
    pub(super) fn bdat(&mut self, size: u64, last: bool, tls_first: bool, out: &mut Vec<Action>) {
        self.chunk = Some(Chunk {
            size,
            left: size,
            last,
            refused: None,
        });
        if let Some(r) = self.bdat_refusal(size, tls_first) {
            return self.refuse_chunk(r, out);
        }
        let Some(tx) = self.tx.as_mut() else {
            return self.refuse_chunk(Reply::NEED_MAIL, out);
        };
        tx.size += size;
        if tx.msgid.is_some() {
            self.enter(State::Chunk);
            return;
        }
        // The first chunk: the DATA filter phase, then the message file, as for DATA;
        // `on_opened` enters `Chunk`.
        tx.chunked = true;
        if !self.ask(Phase::Data, String::new(), super::Pending::Data, out) {
            out.push(Action::OpenMessage);
        }
    }

    /// Why a BDAT of `size` octets is refused, if it is.
    fn bdat_refusal(&self, size: u64, tls_first: bool) -> Option<Reply> {
        if self.state == State::Connected {
            return Some(Reply::NEED_HELO);
        }
        if tls_first {
            return Some(Reply::TLS_REQUIRED);
        }
        if !self.esmtp {
            return Some(Reply::BDAT_NEEDS_EHLO);
        }
        let Some(tx) = self.tx.as_ref().filter(|_| self.state == State::Mail) else {
            return Some(Reply::NEED_MAIL);
        };
        if tx.rcpts.is_empty() {
            return Some(Reply::NEED_RCPT);
        }
        // Known before a single octet is read (RFC 3030 §2 with RFC 1870).
        if tx.size.saturating_add(size) > self.limits.max_message_size {
            return Some(Reply::TOO_BIG);
        }
        None
    }

    /// The chunk announced is refused with `reply`: the transaction ends, and the
    /// chunk's octets are skipped before the reply goes out.
    pub(super) fn refuse_chunk(&mut self, reply: Reply, out: &mut Vec<Action>) {
        self.drop_tx(out);
        let resume = self.state;
        if let Some(c) = self.chunk.as_mut() {
            c.refused = Some((reply, resume));
        }
        self.enter(State::Chunk);
    }

    /// Whether the glue reads a chunk's octets ([`Session::on_chunk_data`]).
    pub fn in_chunk(&self) -> bool {
        self.state == State::Chunk && self.chunk.is_some()
    }

    /// Octets of the chunk still to read.
    pub fn chunk_left(&self) -> u64 {
        self.chunk.as_ref().map_or(0, |c| c.left)
    }

    /// Whether the chunk's octets are to be skipped unseen (it was refused).
    pub fn chunk_refused(&self) -> bool {
        self.chunk.as_ref().is_some_and(|c| c.refused.is_some())
    }

    /// `n` octets of the chunk were read or skipped.
    pub fn chunk_read(&mut self, n: u64) {
        if let Some(c) = self.chunk.as_mut() {
            debug_assert!(n <= c.left);
            c.left = c.left.saturating_sub(n);
        }
    }

    /// Takes what `lb` holds of the chunk being read, a piece at a time: the content of
    /// an accepted chunk through [`Session::on_chunk_data`], or the octets of a refused
    /// one skipped.
    pub fn read_chunk<'a>(&mut self, lb: &'a mut LineBuf) -> ChunkStep<'a> {
        let before = self.chunk_left();
        if before == 0 {
            return ChunkStep::Done;
        }
        let mut left = before;
        if self.chunk_refused() {
            let more = lb.skip(&mut left);
            self.chunk_read(before - left);
            return if more {
                ChunkStep::Skipped
            } else {
                ChunkStep::Partial
            };
        }
        let Text::Piece {
            bytes,
            first,
            last,
            bare,
        } = lb.next_chunk(&mut left)
        else {
            return ChunkStep::Partial;
        };
        self.chunk_read(before - left);
        let piece = self.on_chunk_data(bytes, first, last, bare);
        ChunkStep::Piece(piece, (first, last, bare))
    }

    /// After the LAST chunk: the piece that closes the body, if any
    /// ([`LineBuf::end_content`], [`Session::on_chunk_tail`]), with its flags.
    pub fn chunk_tail(
        &mut self,
        lb: &mut LineBuf,
    ) -> Option<(DataLine<'static>, (bool, bool, bool))> {
        let Some(Text::Piece {
            bytes, first, bare, ..
        }) = lb.end_content()
        else {
            return None;
        };
        Some((self.on_chunk_tail(bytes, first, bare), (first, true, bare)))
    }

    /// Feeds a piece of a chunk's content, as [`crate::linebuf::LineBuf::next_chunk`]
    /// gives it: the checks of [`Session::on_data`] for text (but no dot), octets kept
    /// as they are for the body of a BINARYMIME message.
    pub fn on_chunk_data<'a>(
        &mut self,
        bytes: &'a [u8],
        first: bool,
        last: bool,
        bare: bool,
    ) -> DataLine<'a> {
        debug_assert!(self.in_chunk() && !self.chunk_refused());
        match self.tx.as_ref() {
            None => DataLine::Drop,
            Some(t) if t.fail.is_some() => DataLine::Drop,
            Some(t) if t.params.body == Body::BinaryMime && !t.in_headers => {
                DataLine::Raw(bytes, last)
            }
            Some(_) => self.text_piece(bytes, first, last, bare),
        }
    }

    /// The piece that closes a chunked body ([`crate::linebuf::LineBuf::end_content`]):
    /// a line without CR LF, or a CR held back from the last chunk. Text gets its line
    /// closed (a CR so held is bare); a binary body ends as it came.
    pub fn on_chunk_tail<'a>(&mut self, bytes: &'a [u8], first: bool, bare: bool) -> DataLine<'a> {
        match self.tx.as_ref() {
            Some(t) if t.fail.is_none() && t.params.body == Body::BinaryMime && !t.in_headers => {
                DataLine::Raw(bytes, false)
            }
            Some(t) if t.fail.is_none() => self.text_piece(bytes, first, true, bare),
            _ => DataLine::Drop,
        }
    }

    /// A filter replaced the body with lines of text (stored with LF line ends): a
    /// BINARYMIME message becomes an 8BITMIME one, which DATA can carry.
    pub fn on_body_replaced(&mut self) {
        if let Some(tx) = self
            .tx
            .as_mut()
            .filter(|t| t.params.body == Body::BinaryMime)
        {
            tx.params.body = Body::EightBitMime;
        }
    }

    /// A binary body cannot be given to the data filters as lines: the message will
    /// be refused (`554 5.6.1`).
    pub fn on_binary_unfiltered(&mut self) {
        if let Some(tx) = self.tx.as_mut() {
            tx.fail.get_or_insert(Reply::BINARY_UNFILTERED);
        }
    }

    /// The chunk's octets are all read or skipped: the reply to a refused chunk or to
    /// one that is not the last; true when the LAST chunk ended the message, which the
    /// glue then ends as after DATA's final dot ([`Session::on_data_end`]).
    pub fn on_chunk_end(&mut self, out: &mut Vec<Action>) -> bool {
        debug_assert_eq!(self.chunk_left(), 0);
        let Some(c) = self.chunk.take() else {
            return false;
        };
        if let Some((reply, resume)) = c.refused {
            self.enter(resume);
            self.fail(reply, out);
            return false;
        }
        if !c.last {
            self.enter(State::Mail);
            out.push(Action::Reply(Reply::new(
                250,
                "2.0.0",
                format!("{} octets received", c.size),
            )));
            return false;
        }
        true
    }
}

#[cfg(test)]
#[path = "chunk_tests.rs"]
mod tests;
