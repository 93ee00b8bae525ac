//! The ruleset: which `match` rule takes a recipient, and whether its action knows it.
//!
//! First match wins; no match refuses the recipient (never an open relay). A rule whose
//! action delivers locally also needs the recipient to resolve to a user: through
//! `virtual`, `alias`, then the user base (`userbase <t>` or the password database).

use crate::config::{Action, ActionId, Cond, Config, Decision, Matcher, Method};
use crate::smtp::command::Mailbox;
use crate::smtp::reply::Reply;
use crate::smtp::session::MatchCtx;
use crate::table::{address_matches, domain_matches, ip_matches};

/// Local names: the server's host names and `localhost`.
pub fn is_local_domain(cfg: &Config, domain: &str) -> bool {
    domain.eq_ignore_ascii_case("localhost")
        || domain.eq_ignore_ascii_case("localhost.localdomain")
        || domain.eq_ignore_ascii_case(&cfg.hostname)
        || cfg
            .listeners
            .iter()
            .filter_map(|l| l.hostname.as_deref())
            .any(|h| h.eq_ignore_ascii_case(domain))
        || domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')).is_some_and(|ip| {
            let ip = ip.trim_start_matches("IPv6:");
            cfg.listeners
                .iter()
                .flat_map(|l| &l.addrs)
                .any(|a| a.ip().to_string() == ip)
        })
}

fn value_or_table(cfg: &Config, m: &Matcher, test: impl Fn(&str) -> bool) -> bool {
    match m {
        Matcher::Value(v) => test(v),
        Matcher::Table(t) => cfg.tables[*t].keys().any(test),
    }
}

fn cond_holds(cfg: &Config, c: &Cond, ctx: &MatchCtx, rcpt: &Mailbox) -> bool {
    let sender = ctx.sender;
    match c {
        Cond::FromAny | Cond::ForAny => true,
        Cond::FromLocal => ctx.client.local,
        Cond::FromSocket => ctx.client.addr.is_none(),
        Cond::FromSrc(m) => ctx
            .client
            .addr
            .is_some_and(|ip| value_or_table(cfg, m, |p| ip_matches(p, ip))),
        Cond::FromMailFrom(m) | Cond::MailFrom(m) => {
            value_or_table(cfg, m, |p| address_matches(p, &sender.local, &sender.domain))
        }
        Cond::ForLocal => rcpt.domain.is_empty() || is_local_domain(cfg, &rcpt.domain),
        Cond::ForDomain(m) => value_or_table(cfg, m, |p| domain_matches(p, &rcpt.domain)),
        Cond::ForRcptTo(m) | Cond::RcptTo(m) => {
            value_or_table(cfg, m, |p| address_matches(p, &rcpt.local, &rcpt.domain))
        }
        Cond::Helo(m) => value_or_table(cfg, m, |p| domain_matches(p, ctx.helo)),
        Cond::Tag(m) => ctx
            .client
            .tag
            .as_deref()
            .is_some_and(|t| value_or_table(cfg, m, |p| p == t)),
    }
}

/// The first rule that matches, if any.
pub fn decide(cfg: &Config, ctx: &MatchCtx, rcpt: &Mailbox) -> Option<Decision> {
    cfg.rules
        .iter()
        .find(|r| r.conds.iter().all(|(neg, c)| cond_holds(cfg, c, ctx, rcpt) != *neg))
        .map(|r| r.decision)
}

/// Strips a `+tag` sub-address from a local part.
pub fn strip_subaddress(local: &str, delim: char) -> &str {
    match local.find(delim) {
        Some(i) if i > 0 => &local[..i],
        _ => local,
    }
}

/// Whether `user` is a known user for `action`.
fn user_exists(cfg: &Config, action: &Action, user: &str) -> bool {
    if let Some(t) = action.userbase {
        return cfg.tables[t].contains(user);
    }
    crate::sys::getpwnam(&user.to_ascii_lowercase()).is_some()
}

/// Resolves a recipient for a local action to the user (or alias target) it reaches.
fn resolve_local(cfg: &Config, action: &Action, rcpt: &Mailbox) -> Result<String, Reply> {
    let delim = cfg.smtp.sub_addr_delim;
    let local = rcpt.local.to_ascii_lowercase();
    let base = strip_subaddress(&local, delim);
    let unknown = || Reply::new(550, "5.1.1", format!("<{rcpt}>: Recipient address rejected: User unknown"));
    if let Some(t) = action.virtual_ {
        let table = &cfg.tables[t];
        let keys = [
            format!("{local}@{}", rcpt.domain),
            format!("{base}@{}", rcpt.domain),
            format!("@{}", rcpt.domain),
        ];
        return keys
            .iter()
            .find_map(|k| table.get(k))
            .map(str::to_string)
            .ok_or_else(unknown);
    }
    if let Some(t) = action.alias {
        if let Some(v) = cfg.tables[t].get(base) {
            return Ok(v.to_string());
        }
    }
    if base == "postmaster" && action.alias.is_none() {
        // RFC 5321 §4.5.1: postmaster must be accepted; without an alias it goes to root.
        return Ok("root".into());
    }
    if action.user.is_some() && !matches!(action.method, Method::ExpandOnly | Method::ForwardOnly) && action.userbase.is_none() {
        // `user NAME` delivers every accepted recipient as NAME: the local part need not
        // be a system account, but it must still look like one.
        if base.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Ok(base.to_string());
        }
        return Err(unknown());
    }
    if user_exists(cfg, action, base) {
        Ok(base.to_string())
    } else {
        Err(unknown())
    }
}

/// Matches and resolves a recipient: the action and the destination, or the refusal.
pub fn resolve(cfg: &Config, ctx: &MatchCtx, rcpt: &Mailbox) -> Result<(ActionId, String), Reply> {
    let rcpt_owned;
    let rcpt = if rcpt.domain.is_empty() {
        // <postmaster> without a domain (RFC 5321 §4.5.1).
        rcpt_owned = Mailbox {
            local: rcpt.local.clone(),
            domain: ctx.client.server_name.to_ascii_lowercase(),
        };
        &rcpt_owned
    } else {
        rcpt
    };
    match decide(cfg, ctx, rcpt) {
        None => Err(Reply::NO_RULE),
        Some(Decision::Reject) => Err(Reply::REJECTED),
        Some(Decision::Action(id)) => {
            let action = &cfg.actions[id];
            if action.method.is_local() {
                resolve_local(cfg, action, rcpt).map(|dest| (id, dest))
            } else {
                Ok((id, rcpt.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::session::Client;
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::path::Path;

    fn cfg() -> Config {
        let text = r#"
            listen on 127.0.0.1 port 2525 hostname mx.example.org
            table vusers { "bob@example.org" = root, "@catchall.example" = root }
            table trusted { 192.0.2.0/24 }
            action "local" mbox alias { }
            action "virt" maildir virtual <vusers>
            action "out" relay
            match from any for domain { example.org, catchall.example } action "virt"
            match from src <trusted> for any action "out"
            match from any for local action "local"
            match from local for any action "out"
            "#;
        let text = text.replace("alias { }", "");
        crate::config::parse(&text, Path::new("t"), &HashMap::new()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn check(ip: [u8; 4], rcpt: &str) -> Result<String, u16> {
        let c = cfg();
        let ip = IpAddr::from(ip);
        let client = Client {
            addr: Some(ip),
            local: ip.is_loopback(),
            server_name: "mx.example.org".into(),
            tag: None,
        };
        let sender = Mailbox::default();
        let ctx = MatchCtx {
            client: &client,
            helo: "x",
            sender: &sender,
        };
        let (local, domain) = rcpt.split_once('@').unwrap_or((rcpt, ""));
        let m = Mailbox {
            local: local.into(),
            domain: domain.into(),
        };
        resolve(&c, &ctx, &m)
            .map(|(a, d)| format!("{}:{d}", c.actions[a].name))
            .map_err(|r| r.code)
    }

    #[test]
    fn first_match_wins_and_no_open_relay() {
        assert_eq!(check([203, 0, 113, 1], "bob@example.org"), Ok("virt:root".into()));
        assert_eq!(check([203, 0, 113, 1], "anyone@catchall.example"), Ok("virt:root".into()));
        assert_eq!(check([203, 0, 113, 1], "alice@example.org"), Err(550));
        assert_eq!(check([203, 0, 113, 1], "x@elsewhere.example"), Err(550));
        assert_eq!(check([192, 0, 2, 9], "x@elsewhere.example"), Ok("out:x@elsewhere.example".into()));
        assert_eq!(check([127, 0, 0, 1], "x@elsewhere.example"), Ok("out:x@elsewhere.example".into()));
        assert_eq!(check([203, 0, 113, 1], "root@localhost"), Ok("local:root".into()));
        assert_eq!(check([203, 0, 113, 1], "root+tag@mx.example.org"), Ok("local:root".into()));
        assert_eq!(check([203, 0, 113, 1], "no-such-user-x@localhost"), Err(550));
        assert_eq!(check([203, 0, 113, 1], "postmaster"), Ok("local:root".into()));
    }

    #[test]
    fn subaddress() {
        assert_eq!(strip_subaddress("a+b+c", '+'), "a");
        assert_eq!(strip_subaddress("+a", '+'), "+a");
    }
}
