//! Message content on its way from the session to the data filters or the message
//! file: the pieces of DATA's lines and of BDAT's chunks, as the session judged them
//! ([`Session::on_data`], [`Session::on_chunk_data`]).

use super::*;

/// Longest content line a data filter is given (the protocol's string limit).
const MAX_FILTER_LINE: usize = u16::MAX as usize;

/// Carries out the session's verdict on a piece of content (`flags`: the piece starts
/// its line, ends it, holds a bare CR or LF): into the next batch of the data filters
/// (whole lines of at most 64 KiB), or into the message file. A binary body goes to
/// the filters only as lines: CR LF ends, no bare CR or LF, no NUL; anything else
/// refuses the message ([`Session::on_binary_unfiltered`]).
pub(super) fn store(
    spool: &Spool,
    filters: &mut FilterSide,
    msg: &mut Option<MsgWriter>,
    session: &mut Session,
    piece: DataLine,
    (first, last, bare): (bool, bool, bool),
) {
    let filtered = !filters.data_chain.is_empty();
    match piece {
        DataLine::Store(b) if filtered => {
            if !to_filters(filters, b, first, last) {
                session.on_data_too_long();
            }
        }
        DataLine::Raw(b, crlf) if filtered => {
            if bare || memchr::memchr(0, b).is_some() || !to_filters(filters, b, first, crlf) {
                filters.long_line = Vec::new();
                session.on_binary_unfiltered();
            }
        }
        DataLine::Store(b) => to_file(spool, msg, session, b, if last { b"\n" } else { b"" }),
        DataLine::Raw(b, crlf) => to_file(spool, msg, session, b, if crlf { b"\r\n" } else { b"" }),
        DataLine::Drop | DataLine::End => {
            if last {
                filters.long_line = Vec::new();
            }
        }
    }
}

/// Adds a piece to the lines for the first data filter; false when its line is too
/// long for the filter protocol (the line is then dropped).
fn to_filters(filters: &mut FilterSide, b: &[u8], first: bool, last: bool) -> bool {
    if first && last {
        filters.batch_bytes += b.len();
        filters.batch.push(b);
    } else if filters.long_line.len() + b.len() > MAX_FILTER_LINE {
        filters.long_line = Vec::new();
        return false;
    } else {
        filters.long_line.extend_from_slice(b);
        if last {
            let line = std::mem::take(&mut filters.long_line);
            filters.batch_bytes += line.len();
            filters.batch.push(&line);
        }
    }
    true
}

/// Appends a piece and its line end to the message, written out in whole chunks.
fn to_file(
    spool: &Spool,
    msg: &mut Option<MsgWriter>,
    session: &mut Session,
    b: &[u8],
    end: &[u8],
) {
    let Some(m) = msg.as_mut().filter(|m| !m.failed) else {
        return;
    };
    m.buf.extend_from_slice(b);
    m.buf.extend_from_slice(end);
    if m.buf.len() >= MSG_CHUNK {
        write_chunk(spool, m, session);
    }
}

impl Conn {
    /// A message was opened (DATA's 354, or a first BDAT chunk): its content starts.
    pub(super) fn content_opened(&mut self) {
        self.inbuf.begin_content();
        let binary = self.session.tx().is_some_and(Session::is_binary);
        self.filters.content_opened(binary, self.session.in_chunk());
    }
}
