//! What a filter sends back, owned: a decision, an end-of-message edit, message lines.
//! Decisions and edits are the protocol's own owned types, shared with the Rust glue
//! ([`smtpd_filter::Decision`], [`smtpd_filter::Edit`]).

pub use smtpd_filter::{Decision, Edit};

/// An owned answer from a filter for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A decision about the event the filter was asked about.
    Decision(Decision),
    /// An end-of-message edit, before the decision.
    Edit(Edit),
    /// Output lines of the message.
    DataLines(Lines),
    /// End of the output lines.
    DataEnd,
}

/// A batch of message lines in one buffer, each followed by LF as in the spool: one
/// allocation per batch, not per line, and stored with one copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lines {
    buf: Vec<u8>,
    /// Where each line ends, its LF not included.
    ends: Vec<usize>,
}

impl Lines {
    /// An empty batch with room for `lines` lines of `bytes` bytes in all.
    pub fn with_capacity(lines: usize, bytes: usize) -> Lines {
        Lines {
            buf: Vec::with_capacity(bytes + lines),
            ends: Vec::with_capacity(lines),
        }
    }

    /// Appends a line (without its line end).
    pub fn push(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.ends.push(self.buf.len());
        self.buf.push(b'\n');
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there is no line.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The lines, in order, without their line ends.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends.iter().map(move |&end| {
            let l = &self.buf[start..end];
            start = end + 1;
            l
        })
    }

    /// Every line, each followed by LF.
    pub fn text(&self) -> &[u8] {
        &self.buf
    }

    /// Empties the batch, keeping its memory.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.ends.clear();
    }
}
