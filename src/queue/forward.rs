//! Where the lines of a user's forward file lead: the destinations that replace the
//! user's envelope. The rules may look users and tables up, so this runs on the spool
//! I/O thread, never on the loop.

use crate::config::Config;
use crate::expand::expand;
use crate::mail::address::Mailbox;
use crate::mail::delivery::Dest;
use crate::mail::peer::{MatchCtx, Peer};
use crate::queue::envelope::Envelope;

/// The client the daemon's own deliveries come from, for the rules: local, on
/// `server_name`.
pub fn local_client(server_name: &str) -> Peer {
    Peer {
        addr: None,
        local: true,
        server_name: server_name.to_string(),
        tag: None,
        hostname: None,
        tls: false,
        auth: None,
    }
}

/// One destination of a forward file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDest {
    /// Where to.
    pub dest: Dest,
    /// The name of the action that delivers it.
    pub action: String,
    /// The user file and pipe destinations run as (the forward file's owner), else
    /// empty.
    pub user: String,
    /// Deliver to the mailbox without reading the forward file again.
    pub no_forward: bool,
}

/// The destinations of the forward file `items` of user `owner`, for `env` (the user's
/// envelope): `\user` and the owner's own name are delivered without reading a forward
/// file, `|command` and `/file` run as the owner, and an address goes through the rules
/// as if from a local client with the message's sender. An address the rules refuse is
/// skipped with a warning; one whose lookup failed for now (a table process that could
/// not answer) fails the whole expansion for now (`Err`), to be tried again.
pub fn destinations(
    cfg: &Config,
    env: &Envelope,
    owner: &str,
    items: &[String],
) -> Result<Vec<NewDest>, String> {
    let Some(action) = cfg.actions.iter().find(|a| a.name == env.action) else {
        return Ok(Vec::new());
    };
    let client = local_client(&env.hostname);
    let sender = match env.sender.rsplit_once('@') {
        Some((l, d)) => Mailbox {
            local: l.into(),
            domain: d.into(),
        },
        None => Mailbox::default(),
    };
    let ctx = MatchCtx {
        client: &client,
        helo: &env.helo,
        sender: &sender,
    };
    let mut out: Vec<NewDest> = Vec::new();
    let mut push = |dest: Dest, action: &str, user: &str, no_forward: bool| {
        out.push(NewDest {
            dest,
            action: action.to_string(),
            user: user.to_string(),
            no_forward,
        })
    };
    let own = action.name.as_str();
    for item in items {
        if let Some(name) = item.strip_prefix('\\') {
            push(Dest::User(name.to_ascii_lowercase()), own, "", true);
        } else if let Some(cmd) = item.strip_prefix('|') {
            push(Dest::Pipe(cmd.trim().to_string()), own, owner, false);
        } else if item.starts_with('/') {
            push(Dest::File(item.clone()), own, owner, false);
        } else {
            let m = match item.rsplit_once('@') {
                Some((l, d)) => Mailbox {
                    local: l.into(),
                    domain: d.to_ascii_lowercase(),
                },
                None if item.eq_ignore_ascii_case(owner) => {
                    push(Dest::User(owner.to_string()), own, "", true);
                    continue;
                }
                None => Mailbox {
                    local: item.clone(),
                    domain: "localhost".into(),
                },
            };
            match expand(cfg, &ctx, &m) {
                Ok(ds) => {
                    for d in ds {
                        let loops = d.dest == Dest::User(owner.to_string());
                        push(d.dest, &cfg.actions[d.action].name, "", loops);
                    }
                }
                Err(r) if r.code / 100 == 4 => {
                    return Err(format!(".forward of {owner}: {item}: {}", r.summary()))
                }
                Err(r) => log::warn!(
                    "{:016x} .forward of {owner}: {item}: {}",
                    env.evpid,
                    r.summary()
                ),
            }
        }
    }
    Ok(out)
}
