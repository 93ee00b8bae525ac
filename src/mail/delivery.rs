//! Where a recipient's mail goes: the final destinations recipient expansion yields,
//! each with the action that delivers it, as envelopes store them.

/// Index of an action in the configuration (`Config::actions`).
pub type ActionId = usize;

/// One final destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// A local user's mailbox (method of the action).
    User(String),
    /// Append to a file, mbox style.
    File(String),
    /// Pipe the message to a command.
    Pipe(String),
    /// Relay to this address.
    Relay(String),
}

impl Dest {
    /// The stored form: `user:NAME`, `file:PATH`, `pipe:COMMAND`, `relay:ADDRESS`.
    pub fn encode(&self) -> String {
        match self {
            Dest::User(u) => format!("user:{u}"),
            Dest::File(f) => format!("file:{f}"),
            Dest::Pipe(c) => format!("pipe:{c}"),
            Dest::Relay(a) => format!("relay:{a}"),
        }
    }

    /// Parses the stored form.
    pub fn decode(s: &str) -> Option<Dest> {
        let (kind, v) = s.split_once(':')?;
        if v.is_empty() {
            return None;
        }
        Some(match kind {
            "user" => Dest::User(v.to_string()),
            "file" => Dest::File(v.to_string()),
            "pipe" => Dest::Pipe(v.to_string()),
            "relay" => Dest::Relay(v.to_string()),
            _ => return None,
        })
    }
}

/// A destination and the action that delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The action.
    pub action: ActionId,
    /// Where to.
    pub dest: Dest,
}
