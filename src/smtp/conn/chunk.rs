//! BDAT chunks in the glue: the octets of a chunk read by count from the line buffer
//! (or skipped, for a refused chunk) by the session, stored as DATA's lines are, then
//! its end (see `session/chunk.rs`).

use super::content::store;
use super::*;
use crate::smtp::session::ChunkStep;

impl Conn {
    /// Takes the buffered octets of the chunk being read; false when more input is
    /// needed.
    pub(super) fn read_chunk(&mut self, ctx: &mut Ctx) -> bool {
        match self.session.read_chunk(&mut self.inbuf) {
            ChunkStep::Partial => return false,
            ChunkStep::Skipped => {}
            ChunkStep::Piece(piece, flags) => store(
                ctx.spool,
                &mut self.filters,
                &mut self.msg,
                &mut self.session,
                piece,
                flags,
            ),
            ChunkStep::Done => self.chunk_done(ctx),
        }
        true
    }

    /// Every octet of the chunk is in: its reply, or, after the LAST one, the end of the
    /// message as after DATA's final dot (through the data filters when there are).
    fn chunk_done(&mut self, ctx: &mut Ctx) {
        let line = std::mem::take(&mut self.bdat_line);
        if self.session.on_chunk_end(&mut self.actions) {
            match self.session.chunk_tail(&mut self.inbuf) {
                // A binary body that does not end with CR LF is no line for a filter.
                Some((DataLine::Raw(..), _)) if !self.filters.data_chain.is_empty() => {
                    self.filters.long_line = Vec::new();
                    self.session.on_binary_unfiltered();
                }
                Some((piece, flags)) => store(
                    ctx.spool,
                    &mut self.filters,
                    &mut self.msg,
                    &mut self.session,
                    piece,
                    flags,
                ),
                None => {}
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
