//! The ruleset: which `match` rule takes a recipient.
//!
//! First match wins; no match refuses the recipient (never an open relay). What the
//! recipient then expands to is `expand.rs`'s business.

use crate::config::{Cond, Config, Decision, Matcher};
use crate::mail::address::Mailbox;
use crate::mail::idna::{ascii_form, same_domain};
use crate::mail::peer::MatchCtx;
use crate::table::{address_matches, domain_matches, ip_matches, Service, TableError};

/// Local names: the server's host names (its own, the listeners' `hostname` and
/// `hostnames`) and `localhost`.
pub fn is_local_domain(cfg: &Config, domain: &str) -> bool {
    let domain = &*crate::mail::idna::ascii_form(domain);
    domain.eq_ignore_ascii_case("localhost")
        || domain.eq_ignore_ascii_case("localhost.localdomain")
        || same_domain(domain, &cfg.hostname)
        || cfg
            .listeners
            .iter()
            .filter_map(|l| l.hostname.as_deref())
            .any(|h| same_domain(h, domain))
        || cfg
            .listeners
            .iter()
            .filter_map(|l| cfg.tables.get(l.options.hostnames?))
            .any(|t| {
                let e = t.entries();
                let found = e
                    .keys()
                    .any(|k| e.get(k).is_some_and(|h| same_domain(h, domain)));
                found
            })
        || domain
            .strip_prefix('[')
            .and_then(|d| d.strip_suffix(']'))
            .is_some_and(|ip| {
                let ip = ip.trim_start_matches("IPv6:");
                cfg.listeners
                    .iter()
                    .flat_map(|l| &l.addrs)
                    .any(|a| a.ip().to_string() == ip)
            })
}

/// Whether a condition's value or table holds: a value by `test`; a table in memory by
/// `test` on its keys, a table process by its answer to `service` and `key` (an error
/// when it cannot answer).
fn value_or_table(
    cfg: &Config,
    m: &Matcher,
    service: Service,
    key: &str,
    test: impl Fn(&str) -> bool,
) -> Result<bool, TableError> {
    match m {
        Matcher::Value(v) => Ok(test(v)),
        Matcher::Table(t) => cfg.tables[*t].matches(service, key, test),
        Matcher::Regex(res) => Ok(res.iter().any(|re| re.is_match(key))),
    }
}

fn cond_holds(cfg: &Config, c: &Cond, ctx: &MatchCtx, rcpt: &Mailbox) -> Result<bool, TableError> {
    let sender = ctx.sender;
    Ok(match c {
        Cond::FromAny | Cond::ForAny => true,
        Cond::FromLocal => ctx.client.local,
        Cond::FromSocket => ctx.client.addr.is_none(),
        Cond::FromSrc(m) => match ctx.client.addr {
            Some(ip) => value_or_table(cfg, m, Service::NetAddr, &ip.to_string(), |p| {
                ip_matches(p, ip)
            })?,
            None => false,
        },
        Cond::FromRdns(m) => match (ctx.client.hostname.as_deref(), m) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(h), Some(m)) => {
                value_or_table(cfg, m, Service::Domain, h, |p| domain_matches(p, h))?
            }
        },
        // Domains are matched as A-labels (converted once, not for each key); table
        // processes and regular expressions see them as given.
        Cond::FromMailFrom(m) | Cond::MailFrom(m) => {
            let d = ascii_form(&sender.domain);
            value_or_table(cfg, m, Service::MailAddr, &sender.to_string(), |p| {
                address_matches(p, &sender.local, &d)
            })?
        }
        Cond::ForLocal => rcpt.domain.is_empty() || is_local_domain(cfg, &rcpt.domain),
        Cond::ForDomain(m) => {
            let d = ascii_form(&rcpt.domain);
            value_or_table(cfg, m, Service::Domain, &rcpt.domain, |p| {
                domain_matches(p, &d)
            })?
        }
        Cond::ForRcptTo(m) | Cond::RcptTo(m) => {
            let d = ascii_form(&rcpt.domain);
            value_or_table(cfg, m, Service::MailAddr, &rcpt.to_string(), |p| {
                address_matches(p, &rcpt.local, &d)
            })?
        }
        Cond::Helo(m) => value_or_table(cfg, m, Service::Domain, ctx.helo, |p| {
            domain_matches(p, ctx.helo)
        })?,
        Cond::Tag(m) => match ctx.client.tag.as_deref() {
            Some(t) => value_or_table(cfg, m, Service::String, t, |p| p.eq_ignore_ascii_case(t))?,
            None => false,
        },
        Cond::Tls => ctx.client.tls,
        // A user name matches without regard to case, as table keys do; a table process
        // is asked for an address when the name is one, as OpenSMTPD does.
        Cond::FromAuth(m) | Cond::Auth(m) => match (ctx.client.auth.as_deref(), m) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(u), Some(m)) => {
                let service = match u.contains('@') {
                    true => Service::MailAddr,
                    false => Service::String,
                };
                value_or_table(cfg, m, service, u, |p| p.eq_ignore_ascii_case(u))?
            }
        },
    })
}

/// The first rule that matches, if any; an error when a table process could not
/// answer for a rule before it (the recipient is then neither taken nor refused).
pub fn decide(
    cfg: &Config,
    ctx: &MatchCtx,
    rcpt: &Mailbox,
) -> Result<Option<Decision>, TableError> {
    for r in &cfg.rules {
        let mut all = true;
        for (neg, c) in &r.conds {
            if cond_holds(cfg, c, ctx, rcpt)? == *neg {
                all = false;
                break;
            }
        }
        if all {
            return Ok(Some(r.decision));
        }
    }
    Ok(None)
}

/// Strips a `+tag` sub-address from a local part.
pub fn strip_subaddress(local: &str, delim: char) -> &str {
    match local.find(delim) {
        Some(i) if i > 0 => &local[..i],
        _ => local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authenticated_users() {
        let cfg = crate::config::parse(
            "listen on 127.0.0.1\ntable staff { Alice }\naction out relay\n\
             match from auth <staff> for any action out\n\
             match from any auth bob for any reject\n\
             match from any !auth for any reject\n\
             match from auth for local action out\n",
            std::path::Path::new("t"),
            &Default::default(),
        )
        .unwrap();
        let rcpt = Mailbox {
            local: "x".into(),
            domain: "elsewhere.example".into(),
        };
        let local = Mailbox {
            local: "x".into(),
            domain: "localhost".into(),
        };
        let decide_as = |user: Option<&str>, rcpt: &Mailbox| {
            let client = crate::mail::Peer {
                addr: Some([192, 0, 2, 1].into()),
                local: false,
                server_name: "mx".into(),
                tag: None,
                hostname: None,
                tls: true,
                auth: user.map(str::to_string),
            };
            let ctx = MatchCtx {
                client: &client,
                helo: "h",
                sender: &Mailbox::default(),
            };
            decide(&cfg, &ctx, rcpt).unwrap_or(None)
        };
        assert_eq!(decide_as(Some("alice"), &rcpt), Some(Decision::Action(0)));
        assert_eq!(decide_as(Some("BOB"), &rcpt), Some(Decision::Reject));
        assert_eq!(decide_as(None, &rcpt), Some(Decision::Reject));
        assert_eq!(decide_as(Some("carol"), &rcpt), None);
        assert_eq!(decide_as(Some("carol"), &local), Some(Decision::Action(0)));
    }

    #[test]
    fn regular_expressions_and_reverse_dns() {
        let cfg = crate::config::parse(
            "listen on 127.0.0.1\naction a mbox\n\
             match from rdns regex '\\.example\\.org$' for any action a\n\
             match !from rdns for rcpt-to regex '(?i)^POSTMASTER@' action a\n\
             match from any for domain regex '^[0-9]+\\.test$' reject\n",
            std::path::Path::new("t"),
            &Default::default(),
        )
        .unwrap();
        let decide_for = |rdns: Option<&str>, local: &str, domain: &str| {
            let client = crate::mail::Peer {
                addr: Some([192, 0, 2, 1].into()),
                local: false,
                server_name: "mx".into(),
                tag: None,
                hostname: rdns.map(str::to_string),
                tls: false,
                auth: None,
            };
            let ctx = MatchCtx {
                client: &client,
                helo: "h",
                sender: &Mailbox::default(),
            };
            let rcpt = Mailbox {
                local: local.into(),
                domain: domain.into(),
            };
            decide(&cfg, &ctx, &rcpt).ok().flatten()
        };
        assert_eq!(
            decide_for(Some("a.example.org"), "x", "y.test"),
            Some(Decision::Action(0))
        );
        assert_eq!(decide_for(Some("a.example.net"), "x", "y.test"), None);
        assert_eq!(
            decide_for(None, "postmaster", "y.test"),
            Some(Decision::Action(0))
        );
        assert_eq!(
            decide_for(Some("a.example.net"), "postmaster", "y.test"),
            None
        );
        assert_eq!(decide_for(None, "x", "42.test"), Some(Decision::Reject));
        assert_eq!(decide_for(None, "x", "x42.test"), None);
    }

    #[test]
    fn subaddress() {
        assert_eq!(strip_subaddress("a+b+c", '+'), "a");
        assert_eq!(strip_subaddress("+a", '+'), "+a");
    }
}
