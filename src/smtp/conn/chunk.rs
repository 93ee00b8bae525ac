//! BDAT chunks in the glue: the octets of a chunk read by count from the line buffer
//! (or skipped, for a refused chunk) and handed to the session, then its end (see
//! `session/chunk.rs`).

use super::content::store;
use super::*;

impl Conn {
    /// Takes the buffered octets of the chunk being read; false when more input is
    /// needed.
    pub(super) fn read_chunk(&mut self, ctx: &mut Ctx) -> bool {
        let before = self.session.chunk_left();
        let mut left = before;
        if left > 0 {
            if self.session.chunk_refused() {
                let more = self.inbuf.skip(&mut left);
                self.session.chunk_read(before - left);
                if !more {
                    return false;
                }
            } else {
                let Text::Piece {
                    bytes,
                    first,
                    last,
                    bare,
                } = self.inbuf.next_chunk(&mut left)
                else {
                    return false;
                };
                self.session.chunk_read(before - left);
                let piece = self.session.on_chunk_data(bytes, first, last, bare);
                store(
                    ctx.spool,
                    &mut self.filters,
                    &mut self.msg,
                    &mut self.session,
                    piece,
                    (first, last, bare),
                );
            }
            if left > 0 {
                return true;
            }
        }
        self.chunk_done(ctx);
        true
    }

    /// Every octet of the chunk is in: its reply, or, after the LAST one, the end of the
    /// message as after DATA's final dot (through the data filters when there are).
    fn chunk_done(&mut self, ctx: &mut Ctx) {
        let line = std::mem::take(&mut self.bdat_line);
        if self.session.on_chunk_end(&mut self.actions) {
            if let Some(Text::Piece {
                bytes, first, bare, ..
            }) = self.inbuf.end_content()
            {
                match self.session.on_chunk_tail(bytes, first, bare) {
                    // A binary body that does not end with CR LF is no line for a filter.
                    DataLine::Raw(..) if !self.filters.data_chain.is_empty() => {
                        self.filters.long_line = Vec::new();
                        self.session.on_binary_unfiltered();
                    }
                    piece => store(
                        ctx.spool,
                        &mut self.filters,
                        &mut self.msg,
                        &mut self.session,
                        piece,
                        (first, true, bare),
                    ),
                }
            }
            if self.filters.data_chain.is_empty() {
                self.session.on_data_end(false, &mut self.actions);
            } else {
                // The chain's own end decides; input waits until then.
                self.filters.data_end = Some(false);
            }
        }
        self.run_actions(ctx, Some(&line));
        self.bdat_line = line;
    }
}
