//! Recipient expansion: from an RCPT address to the deliveries it stands for.
//!
//! The ruleset picks the action. A relay action delivers the address as it is. A local
//! action looks the address up in its `virtual` table (full address, address without
//! sub-address, then `@domain`), or its local part in its `alias` table, or checks that
//! the local part is a user. Table values are comma-separated lists of user names,
//! addresses (matched against the ruleset again), `|command`, `/file` and
//! `:include:/file`. Expansion is bounded in depth and size and ignores loops.

use crate::config::{ActionDef, ActionId, Config, Decision, Method};
use crate::mail::address::{valid_domain, valid_local, Mailbox};
use crate::mail::peer::MatchCtx;
use crate::mail::reply::Reply;
use crate::mail::{Delivery, Dest};
use crate::ruleset::{decide, strip_subaddress};
use crate::table::{Service, TableError};

/// Nested table lookups followed at most.
const MAX_DEPTH: usize = 10;
/// Deliveries one recipient may expand to.
const MAX_DELIVERIES: usize = 1000;

struct Expander<'a> {
    cfg: &'a Config,
    ctx: &'a MatchCtx<'a>,
    out: Vec<Delivery>,
    seen: Vec<String>,
    /// Inside an `:include:` file that root does not own: its commands and files
    /// (and those of what it leads to) are refused.
    untrusted: bool,
}

fn unknown(rcpt: &Mailbox) -> Reply {
    Reply::new(
        550,
        "5.1.1",
        format!("<{rcpt}>: Recipient address rejected: User unknown"),
    )
}

/// A table process could not answer: the recipient is neither taken nor refused.
fn table_failed(e: TableError) -> Reply {
    log::warn!("expand: {e}");
    Reply::new(451, "4.3.0", "Temporary failure in table lookup")
}

/// Whether `user` is known to `action`'s user base.
fn user_exists(cfg: &Config, action: &ActionDef, user: &str) -> Result<bool, Reply> {
    if let Some(t) = action.userbase {
        let found = cfg.tables[t].lookup(Service::UserInfo, user);
        return found.map(|v| v.is_some()).map_err(table_failed);
    }
    if action.user.is_some() {
        // `user NAME` delivers every recipient as NAME: the local part only names a
        // mailbox, so it need not be an account, but it must look like one.
        return Ok(!user.is_empty()
            && user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
    }
    Ok(crate::sys::getpwnam(user).is_some())
}

/// The text of an `:include:` file and its owner's uid. The file is opened without
/// following a symbolic link or waiting on a FIFO, and must be a regular file no one
/// but its owner may write (mode without 022), of at most 1 MiB.
fn read_include(path: &str) -> std::io::Result<(String, u32)> {
    use std::io::{Error, Read};
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(Error::other("not a regular file"));
    }
    if md.mode() & 0o022 != 0 {
        return Err(Error::other("writable by its group or others"));
    }
    let mut text = String::new();
    f.take(1 << 20).read_to_string(&mut text)?;
    Ok((text, md.uid()))
}

fn split_items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

impl Expander<'_> {
    fn push(&mut self, action: ActionId, dest: Dest) -> Result<(), Reply> {
        let d = Delivery { action, dest };
        if !self.out.contains(&d) {
            if self.out.len() >= MAX_DELIVERIES {
                return Err(Reply::new(
                    550,
                    "5.7.0",
                    "Recipient expands to too many destinations",
                ));
            }
            self.out.push(d);
        }
        Ok(())
    }

    /// A recipient address: through the ruleset.
    fn address(&mut self, rcpt: &Mailbox, depth: usize) -> Result<(), Reply> {
        let key = format!("addr:{}", rcpt.to_string().to_ascii_lowercase());
        if self.seen.contains(&key) {
            return Ok(());
        }
        self.seen.push(key);
        if depth > MAX_DEPTH {
            return Err(Reply::new(550, "5.4.6", "Alias expansion too deep"));
        }
        match decide(self.cfg, self.ctx, rcpt).map_err(table_failed)? {
            None => Err(Reply::NO_RULE),
            Some(Decision::Reject) => Err(Reply::REJECTED),
            Some(Decision::Action(id)) => {
                let action = &self.cfg.actions[id];
                if !action.method.is_local() {
                    return self.push(id, Dest::Relay(rcpt.to_string()));
                }
                self.local(id, rcpt, depth)
            }
        }
    }

    /// An address taken by a local action.
    fn local(&mut self, id: ActionId, rcpt: &Mailbox, depth: usize) -> Result<(), Reply> {
        let cfg = self.cfg;
        let action = &cfg.actions[id];
        let local = rcpt.local.to_ascii_lowercase();
        let base = strip_subaddress(&local, cfg.smtp.sub_addr_delim).to_string();
        if let Some(t) = action.virtual_ {
            let table = &cfg.tables[t];
            let keys = [
                format!("{local}@{}", rcpt.domain),
                format!("{base}@{}", rcpt.domain),
                format!("@{}", rcpt.domain),
            ];
            let mut value = None;
            for k in &keys {
                value = table.lookup(Service::Alias, k).map_err(table_failed)?;
                if value.is_some() {
                    break;
                }
            }
            let value = value.ok_or_else(|| unknown(rcpt))?;
            return self.items(id, &value, depth + 1, rcpt);
        }
        self.name(id, &base, depth, rcpt)
    }

    /// A bare name: an alias, else a user.
    fn name(
        &mut self,
        id: ActionId,
        name: &str,
        depth: usize,
        rcpt: &Mailbox,
    ) -> Result<(), Reply> {
        let cfg = self.cfg;
        let action = &cfg.actions[id];
        if depth > MAX_DEPTH {
            return Err(Reply::new(550, "5.4.6", "Alias expansion too deep"));
        }
        if let Some(t) = action.alias {
            let key = format!("alias:{name}");
            let found = cfg.tables[t]
                .lookup(Service::Alias, name)
                .map_err(table_failed)?;
            if let Some(value) = found {
                if self.seen.contains(&key) {
                    return Ok(());
                }
                self.seen.push(key);
                return self.items(id, &value, depth + 1, rcpt);
            }
        }
        let exists = user_exists(cfg, action, name)?;
        if name == "postmaster" && !exists {
            // RFC 5321 §4.5.1: postmaster always exists; without an alias it is root.
            return self.push(id, Dest::User("root".into()));
        }
        // expand-only delivers only to what aliases name: a bare user has no mailbox.
        if exists && action.method != crate::config::Method::ExpandOnly {
            self.push(id, Dest::User(name.to_string()))
        } else {
            Err(unknown(rcpt))
        }
    }

    /// A table value: a list of items.
    fn items(
        &mut self,
        id: ActionId,
        value: &str,
        depth: usize,
        rcpt: &Mailbox,
    ) -> Result<(), Reply> {
        if value.is_empty() {
            return Err(unknown(rcpt));
        }
        for item in split_items(value) {
            self.item(id, item, depth, rcpt)?;
        }
        Ok(())
    }

    fn item(
        &mut self,
        id: ActionId,
        item: &str,
        depth: usize,
        rcpt: &Mailbox,
    ) -> Result<(), Reply> {
        let item = item.trim_matches('"');
        if self.untrusted && (item.starts_with('|') || item.starts_with('/')) {
            // What a plain user wrote never runs a command or writes a file as the
            // action's user or the daemon's.
            log::warn!("expand: a command or file in an :include: file not owned by root: skipped");
            return Ok(());
        }
        if let Some(cmd) = item.strip_prefix('|') {
            return self.push(id, Dest::Pipe(cmd.trim().to_string()));
        }
        if let Some(path) = item.strip_prefix(":include:") {
            let key = format!("include:{path}");
            if self.seen.contains(&key) {
                return Ok(());
            }
            self.seen.push(key);
            let (text, owner) = read_include(path.trim()).map_err(|e| {
                log::warn!("expand: cannot read {path}: {e}");
                Reply::new(451, "4.3.0", "Temporary failure in alias expansion")
            })?;
            let outer = self.untrusted;
            self.untrusted |= owner != 0;
            let mut r = Ok(());
            'lines: for line in text.lines() {
                let line = line.split('#').next().unwrap_or("");
                for sub in split_items(line) {
                    r = self.item(id, sub, depth + 1, rcpt);
                    if r.is_err() {
                        break 'lines;
                    }
                }
            }
            self.untrusted = outer;
            return r;
        }
        if item.starts_with('/') {
            return self.push(id, Dest::File(item.to_string()));
        }
        if let Some(at) = item.rfind('@') {
            let (l, d) = (&item[..at], &item[at + 1..]);
            if !valid_local(l) || !valid_domain(d) {
                log::warn!("expand: invalid address {item:?} in a table");
                return Err(unknown(rcpt));
            }
            let m = Mailbox {
                local: l.to_string(),
                domain: d.to_ascii_lowercase(),
            };
            return self.address(&m, depth + 1);
        }
        self.name(id, &item.to_ascii_lowercase(), depth, rcpt)
    }
}

/// Expands a recipient into its deliveries, or the reply refusing it.
pub fn expand(cfg: &Config, ctx: &MatchCtx, rcpt: &Mailbox) -> Result<Vec<Delivery>, Reply> {
    let owned;
    let rcpt = if rcpt.domain.is_empty() {
        // <postmaster> without a domain (RFC 5321 §4.5.1).
        owned = Mailbox {
            local: rcpt.local.clone(),
            domain: ctx.client.server_name.to_ascii_lowercase(),
        };
        &owned
    } else {
        rcpt
    };
    let mut ex = Expander {
        cfg,
        ctx,
        out: Vec::new(),
        seen: Vec::new(),
        untrusted: false,
    };
    ex.address(rcpt, 0)?;
    if ex.out.is_empty() {
        return Err(unknown(rcpt));
    }
    Ok(ex.out)
}

/// Whether a method delivers to user mailboxes itself (else only through aliases or
/// `.forward`).
pub fn delivers_to_mailbox(m: &Method) -> bool {
    !matches!(m, Method::ExpandOnly | Method::ForwardOnly)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mail::peer::Peer;
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::path::Path;

    fn run(conf: &str, rcpt: &str) -> Result<Vec<String>, String> {
        let c = crate::config::parse(conf, Path::new("t"), &HashMap::new())
            .map_err(|e| e.to_string())?;
        let client = Peer {
            addr: Some(IpAddr::from([203, 0, 113, 5])),
            local: false,
            server_name: "mx.example.org".into(),
            tag: None,
            hostname: None,
            tls: false,
            auth: None,
        };
        let sender = Mailbox::default();
        let ctx = MatchCtx {
            client: &client,
            helo: "h",
            sender: &sender,
        };
        let (l, d) = rcpt.split_once('@').unwrap_or((rcpt, ""));
        let m = Mailbox {
            local: l.into(),
            domain: d.into(),
        };
        expand(&c, &ctx, &m)
            .map(|v| {
                v.iter()
                    .map(|d| format!("{}={}", c.actions[d.action].name, d.dest.encode()))
                    .collect()
            })
            .map_err(|r| r.summary())
    }

    const CONF: &str = r#"
        listen on 127.0.0.1 port 2525 hostname mx.example.org
        table aliases { postmaster = root, ops = "root, info@example.net, |/usr/bin/logger, /var/log/mail.copy", loop1 = loop2, loop2 = "loop1, root", nobody2 = no-such-user-zz }
        table vmap { "info@example.net" = "root, ops@example.org", "@catch.example" = root }
        action "local" mbox alias <aliases>
        action "virt" maildir virtual <vmap>
        action "out" relay
        match from any for domain "example.org" action "local"
        match from any for domain { example.net, catch.example } action "virt"
        match from any for local action "local"
        match from any for domain "relay.example" action "out"
    "#;

    #[test]
    fn aliases_virtual_and_relay() {
        assert_eq!(
            run(CONF, "root@example.org"),
            Ok(vec!["local=user:root".into()])
        );
        assert_eq!(
            run(CONF, "ops@example.org"),
            Ok(vec![
                "local=user:root".into(),
                "virt=user:root".into(),
                "local=pipe:/usr/bin/logger".into(),
                "local=file:/var/log/mail.copy".into(),
            ])
        );
        assert_eq!(
            run(CONF, "x@catch.example"),
            Ok(vec!["virt=user:root".into()])
        );
        assert_eq!(
            run(CONF, "x@relay.example"),
            Ok(vec!["out=relay:x@relay.example".into()])
        );
        assert_eq!(
            run(CONF, "loop1@example.org"),
            Ok(vec!["local=user:root".into()])
        );
        assert!(run(CONF, "nobody2@example.org").is_err_and(|e| e.starts_with("550 5.1.1")));
        assert!(run(CONF, "who@example.net").is_err_and(|e| e.starts_with("550 5.1.1")));
        assert!(run(CONF, "x@elsewhere.example").is_err_and(|e| e.starts_with("550 5.7.1")));
        assert_eq!(
            run(CONF, "root+tag@example.org"),
            Ok(vec!["local=user:root".into()])
        );
        assert_eq!(run(CONF, "postmaster"), Ok(vec!["local=user:root".into()]));
    }

    #[test]
    fn dest_round_trip() {
        for d in [
            Dest::User("bob".into()),
            Dest::File("/x".into()),
            Dest::Pipe("a b".into()),
            Dest::Relay("a@b".into()),
        ] {
            assert_eq!(Dest::decode(&d.encode()), Some(d));
        }
        assert_eq!(Dest::decode("user:"), None);
        assert_eq!(Dest::decode("evil:x"), None);
    }
}
