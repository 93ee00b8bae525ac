//! Local delivery: maildir, mbox, mda commands and the format specifiers they use.
//!
//! These functions run in a delivery child, already switched to the recipient's user;
//! they take the message as a reader and return an [`Outcome`].

pub mod command;
pub mod maildir;
pub mod mbox;

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered.
    Ok,
    /// Failed for now; try again later. The text says why.
    TempFail(String),
    /// Failed for good; bounce. The text says why.
    PermFail(String),
    /// Not delivered: the user's `~/.forward` names these destinations instead.
    Forward(Vec<String>),
}
