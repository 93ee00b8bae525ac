//! The options of a `relay` action: its smarthost or domain table, backup MX, names,
//! source addresses, and the TLS it demands (`tls`, `pki`, `ca`, `protocols`,
//! `ciphers`, `no-dane`, `no-mta-sts`), `auth <t>` for the smarthost, and `srs`.

use super::super::lexer::Tok;
use super::{Parser, Stmt};
use crate::config::model::*;
use crate::config::relay::{Relay, RelayTls};
use crate::config::tls::{parse_ciphers, parse_protocols};
use crate::config::ConfigError;
use crate::nexthop::{Proto, RelayUrl, Security, Target};

/// The pki and ca names of a relay action, resolved once every statement is read.
pub(super) struct RelayNames {
    action: ActionId,
    pki: Option<String>,
    ca: Option<String>,
    place: Place,
}

impl Parser {
    /// Takes one relay option of `relay`; false when the next word is none.
    pub(super) fn relay_option(
        &mut self,
        st: &mut Stmt,
        relay: &mut Relay,
        names: &mut (Option<String>, Option<String>),
    ) -> Result<bool, ConfigError> {
        if st.eat("host") {
            if matches!(st.peek(), Some(Tok::Punct('<' | '{'))) {
                return Err(st.err(super::compat::RELAY_HOST_TABLE));
            }
            let v = st.value("relay URL")?;
            let url = RelayUrl::parse(&v, 25).map_err(|m| st.err(format!("host: {m}")))?;
            relay.host = Some(url);
        } else if st.eat("domain") {
            let t = self.memory_table_ref(st, "a relay's 'domain'")?;
            self.check_mapping(st, t, "domain")?;
            relay.domain = Some(t);
        } else if st.eat("backup") {
            let name = if st.eat("mx") {
                let n = st.value("host name")?;
                if !crate::mail::address::valid_domain(&n) {
                    return Err(st.err(format!("backup mx: invalid host name '{n}'")));
                }
                Some(n)
            } else {
                None
            };
            relay.backup = Some(name);
        } else if st.eat("helo") {
            let name = st.value("host name")?;
            if !crate::mail::address::valid_domain(&name) {
                return Err(st.err(format!("helo: invalid host name '{name}'")));
            }
            relay.helo = Some(name);
        } else if st.eat("helo-src") {
            let t = self.memory_table_ref(st, "'helo-src'")?;
            self.check_mapping(st, t, "helo-src")?;
            relay.helo_src = Some(t);
        } else if st.eat("src") {
            let m = self.memory_matcher(st, "a relay's 'src'")?;
            match &m {
                Matcher::Value(v) if v.parse::<std::net::IpAddr>().is_err() => {
                    return Err(st.err(format!("src: invalid address '{v}'")));
                }
                Matcher::Regex(_) => {
                    return Err(st.err("src: a source address cannot be a regular expression"));
                }
                _ => {}
            }
            relay.src = Some(m);
        } else if st.eat("mail-from") {
            let v = st.value("address")?;
            if crate::mail::address::parse_address(&v, true).is_none() {
                return Err(st.err(format!("mail-from: invalid address '{v}'")));
            }
            relay.mail_from = Some(v);
        } else if st.eat("tls") {
            relay.tls = if st.eat("no-verify") {
                RelayTls::NoVerify
            } else {
                RelayTls::Verify
            };
        } else if st.eat("auth") {
            relay.auth = Some(self.mapping_table_ref(st, "auth")?);
        } else if st.eat("pki") {
            names.0 = Some(st.value("pki name")?);
        } else if st.eat("ca") {
            names.1 = Some(st.value("ca name")?);
        } else if st.eat("protocols") {
            let v = st.value("protocols")?;
            relay.protocols = parse_protocols(&v).map_err(|m| st.err(m))?;
        } else if st.eat("ciphers") {
            let v = st.value("ciphers")?;
            relay.ciphers = parse_ciphers(&v).map_err(|m| st.err(m))?;
            self.relay_ciphers_given = true;
        } else if st.eat("srs") {
            relay.srs = true;
            self.srs_actions.push(Place {
                file: st.file().to_string(),
                line: st.line(),
            });
        } else if st.eat("filter") {
            return Err(st.err(super::compat::RELAY_FILTER));
        } else if st.eat("no-dane") {
            relay.dane = false;
        } else if st.eat("no-mta-sts") {
            relay.mta_sts = false;
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// Checks a relay action's options together, once they are all read, and keeps
    /// its pki and ca names for [`Parser::check_relay_names`].
    pub(super) fn relay_done(
        &mut self,
        st: &Stmt,
        action: ActionId,
        relay: &Relay,
        names: (Option<String>, Option<String>),
    ) -> Result<(), ConfigError> {
        if relay.host.is_some() && relay.domain.is_some() {
            return Err(st.err("'host' and 'domain' cannot both be used"));
        }
        if relay.host.is_some() && relay.backup.is_some() {
            return Err(st.err("'backup' is for MX delivery: not with 'host'"));
        }
        if let Some(url) = &relay.host {
            if relay.tls != RelayTls::Default && url.security == Security::Plain {
                return Err(st.err("'tls' cannot be used with smtp+notls:// or lmtp://"));
            }
            if url.label.is_some() && relay.auth.is_none() {
                return Err(st.err("the host URL names a label: 'auth <table>' is needed"));
            }
            if relay.auth.is_some() && url.label.is_none() {
                return Err(st.err("'auth' needs a label in the host URL (label@host)"));
            }
            if relay.auth.is_some() && url.security == Security::Plain {
                return Err(st.err("'auth' needs TLS: not with smtp+notls:// or lmtp://"));
            }
            if matches!(url.target, Target::Unix(_)) && url.proto != Some(Proto::Lmtp) {
                return Err(st.err("a socket path needs lmtp://"));
            }
        } else if relay.auth.is_some() {
            return Err(st.err("'auth' needs a smarthost ('host label@...')"));
        }
        super::listen::check_suites(&relay.protocols, &relay.ciphers).map_err(|m| st.err(m))?;
        if !std::mem::take(&mut self.relay_ciphers_given) {
            self.default_cipher_relays.push(action);
        }
        if names.0.is_some() || names.1.is_some() {
            self.relay_names.push(RelayNames {
                action,
                pki: names.0,
                ca: names.1,
                place: Place {
                    file: st.file().to_string(),
                    line: st.line(),
                },
            });
        }
        Ok(())
    }

    /// After the last statement: the pki and ca names of relay actions are defined.
    pub(super) fn check_relay_names(&mut self) -> Result<(), ConfigError> {
        for n in std::mem::take(&mut self.relay_names) {
            let pki = match &n.pki {
                Some(name) => match self.pki_names.get(&name.to_ascii_lowercase()) {
                    Some(&id) => Some(id),
                    None => return Err(n.place.err(format!("undefined pki '{name}'"))),
                },
                None => None,
            };
            let ca = match &n.ca {
                Some(name) => match self.ca_names.get(name) {
                    Some(&id) => Some(id),
                    None => return Err(n.place.err(format!("undefined ca '{name}'"))),
                },
                None => None,
            };
            if let Some(Method::Relay(r)) =
                self.cfg.actions.get_mut(n.action).map(|a| &mut a.method)
            {
                r.pki = pki;
                r.ca = ca;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "relay_tests.rs"]
mod tests;
