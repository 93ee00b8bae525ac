//! What a session keeps for its filters, in one place: its chain, the filters its
//! message's lines go through, the lines gathered for the first of them, the end of
//! the message waiting for the last, and the events observing filters get.

use super::conn::Report;
use super::conn::{BATCH_MAX_BYTES, BATCH_MAX_LINES};
use crate::filter::phase::FilterQuery;
use crate::filter::pipe::Lines;

/// A session's filter state.
#[derive(Debug, Default)]
pub struct FilterSide {
    /// The filters this session goes through, in order.
    pub chain: Vec<usize>,
    /// The filters the message's lines go through, in order (set at DATA).
    pub data_chain: Vec<usize>,
    /// A filter of the chain observes protocol lines and rollbacks.
    pub observe: bool,
    /// A query the session made, for the loop to run through the chain.
    pub(super) query: Option<FilterQuery>,
    /// Lines waiting to be sent to the first data filter.
    pub(super) batch: Lines,
    /// Their octets.
    pub(super) batch_bytes: usize,
    /// A content line longer than the input buffer, gathered for the data filters.
    pub(super) long_line: Vec<u8>,
    /// The final dot was seen (with the pipelining flag); the chain's end is awaited.
    pub(super) data_end: Option<bool>,
    /// The end marker was handed to the loop.
    pub(super) data_end_sent: bool,
    /// Octets of filtered content stored.
    pub(super) filtered_bytes: u64,
    /// Lines were just sent to a filter: input held back may be taken now.
    pub(super) resume: bool,
    /// Events for observing filters since the loop last took them.
    pub(super) reports: Vec<Report>,
}

impl FilterSide {
    /// Events for observing filters since the last call.
    pub fn take_reports(&mut self) -> Vec<Report> {
        std::mem::take(&mut self.reports)
    }

    /// Whether the lines gathered for the data filters fill the batch: the session
    /// reads no more until they are taken.
    pub(super) fn batch_full(&self) -> bool {
        self.batch.len() >= BATCH_MAX_LINES || self.batch_bytes >= BATCH_MAX_BYTES
    }

    /// Lines for the first data filter, and whether the end marker follows them.
    pub fn take_batch(&mut self) -> Option<(Lines, bool)> {
        let end = self.data_end.is_some() && !self.data_end_sent;
        if self.batch.is_empty() && !end {
            return None;
        }
        self.data_end_sent |= end;
        self.batch_bytes = 0;
        self.resume = true;
        Some((std::mem::take(&mut self.batch), end))
    }

    /// Gives back a batch taken with [`FilterSide::take_batch`] once it was sent, so that
    /// the next one reuses its memory.
    pub fn return_batch(&mut self, mut lines: Lines) {
        if self.batch.is_empty() {
            lines.clear();
            self.batch = lines;
        }
    }
}
