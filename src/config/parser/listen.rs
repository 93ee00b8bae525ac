//! `listen on` with its TLS options, the `pki` and `ca` statements whose names
//! listeners use, and `metrics`, a listener of another kind. Certificate and key files
//! are only named here: the daemon reads them when it starts (`tls/`), so that
//! `smtpd -n` and the parser share one grammar.

use super::{Given, Parser, Stmt};
use crate::config::model::*;
use crate::config::tls::{parse_ciphers, parse_protocols, service_port, Suite, TlsVersion};
use crate::config::ConfigError;
use std::net::{IpAddr, SocketAddr};

/// The options of `listen on` that may be given once: all but `pki` (one for each
/// name of SNI), the TLS mode, the address family and AUTH, which have their own
/// message.
const ONCE: &[&str] = &[
    "port",
    "hostname",
    "hostnames",
    "tag",
    "filter",
    "mask-src",
    "no-dsn",
    "ca",
    "protocols",
    "ciphers",
    "senders",
    "received-auth",
    "proxy-v2",
];

/// Where port names are looked up.
const SERVICES: &str = "/etc/services";

/// The names a listener gave to `pki` and `ca`, resolved once every statement is
/// read (a `pki` may come after the listener that uses it).
pub(super) struct TlsNames {
    listener: usize,
    pkis: Vec<String>,
    ca: Option<String>,
}

impl Parser {
    pub(super) fn listen(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        st.expect("on")?;
        if st.eat("socket") {
            return self.listen_socket(st);
        }
        let place = Place {
            file: st.file().to_string(),
            line: st.line(),
        };
        let what = st.value("address or interface")?;
        let mut family: Option<bool> = None; // Some(true) = inet4 only
        let mut port = None;
        let mut hostname = None;
        let mut tag = None;
        let mut filter = None;
        let mut mode: Option<TlsMode> = None;
        let mut verify = false;
        let mut names = TlsNames {
            listener: self.cfg.listeners.len(),
            pkis: Vec::new(),
            ca: None,
        };
        let mut protocols: Option<Vec<TlsVersion>> = None;
        let mut ciphers: Option<Vec<Suite>> = None;
        // The option that needs TLS, for the error when none is enabled.
        let mut needs_tls: Option<&str> = None;
        let mut auth = ListenerAuth::default();
        let mut options = SessionOptions::default();
        let mut given = Given::default();
        let mut proxy_v2 = false;
        while !st.at_end() {
            given.note(st, ONCE, "")?;
            if self.listen_auth(st, &mut auth)? || self.session_option(st, &mut options, false)? {
                continue;
            }
            if let Some(inet4) = [("inet4", true), ("inet6", false)]
                .into_iter()
                .find_map(|(w, v)| st.eat(w).then_some(v))
            {
                if family.is_some() {
                    return Err(st.err("only one of inet4 and inet6 may be given"));
                }
                family = Some(inet4);
            } else if st.eat("port") {
                let p = st.value("port number or name")?;
                port = Some(parse_port(&p).map_err(|m| st.err(m))?);
            } else if st.eat("hostname") {
                let h = st.value("host name")?;
                if !crate::mail::address::valid_domain(&h) {
                    return Err(st.err(format!("invalid host name '{h}'")));
                }
                hostname = Some(h);
            } else if st.eat("tag") {
                tag = Some(st.value("tag")?);
            } else if st.eat("proxy-v2") {
                proxy_v2 = true;
            } else if st.eat("filter") {
                filter = Some(self.filter_ref(st)?);
            } else if let Some(m) = tls_mode(st) {
                if mode.is_some() {
                    return Err(st.err("only one of tls, tls-require and smtps may be given"));
                }
                mode = Some(m);
                verify = m != TlsMode::Starttls && st.eat("verify");
            } else if st.eat("pki") {
                needs_tls.get_or_insert("pki");
                let name = st.value("pki name")?;
                if names.pkis.contains(&name) {
                    return Err(st.err(format!("pki '{name}' given twice")));
                }
                names.pkis.push(name);
            } else if st.eat("ca") {
                needs_tls.get_or_insert("ca");
                names.ca = Some(st.value("ca name")?);
            } else if st.eat("protocols") {
                needs_tls.get_or_insert("protocols");
                let v = st.value("protocols")?;
                protocols = Some(parse_protocols(&v).map_err(|m| st.err(m))?);
            } else if st.eat("ciphers") {
                needs_tls.get_or_insert("ciphers");
                let v = st.value("ciphers")?;
                ciphers = Some(parse_ciphers(&v).map_err(|m| st.err(m))?);
            } else {
                st.done()?;
                break;
            }
        }
        let tls = match (mode, needs_tls) {
            (None, Some(word)) => {
                return Err(st.err(format!("'{word}' needs tls, tls-require or smtps")))
            }
            (None, None) => None,
            (Some(mode), _) => {
                if ciphers.is_none() {
                    // `smtp ciphers`, when given, replaces the default at the end.
                    self.default_cipher_listeners.push(self.cfg.listeners.len());
                }
                let protocols = protocols.unwrap_or_else(|| TlsVersion::ALL.to_vec());
                let ciphers = ciphers.unwrap_or_else(|| Suite::ALL.to_vec());
                check_suites(&protocols, &ciphers).map_err(|m| st.err(m))?;
                self.tls_names.push(names);
                Some(ListenerTls {
                    mode,
                    verify,
                    pkis: Vec::new(),
                    ca: None,
                    protocols,
                    ciphers,
                    place,
                })
            }
        };
        // RFC 8314 §7.3: implicit TLS has its own port.
        let smtps = matches!(&tls, Some(t) if t.mode == TlsMode::Smtps);
        let port = port.unwrap_or(if smtps { 465 } else { 25 });
        let ips = resolve_listen(&what).map_err(|m| st.err(m))?;
        let addrs: Vec<SocketAddr> = ips
            .into_iter()
            .filter(|ip| match family {
                Some(true) => ip.is_ipv4(),
                Some(false) => ip.is_ipv6(),
                None => true,
            })
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if addrs.is_empty() {
            return Err(st.err(format!("no address of the requested family for '{what}'")));
        }
        // AUTH is offered only under TLS: without it, a listener would offer none.
        if auth.mode != AuthMode::Off && tls.is_none() {
            let word = if auth.mode == AuthMode::Required {
                "auth"
            } else {
                "auth-optional"
            };
            return Err(st.err(format!("'{word}' needs tls, tls-require or smtps")));
        }
        super::auth::check_listen(st, &auth)?;
        self.cfg.listeners.push(Listener {
            addrs,
            hostname,
            tag,
            filter,
            tls,
            auth,
            options,
            proxy_v2,
        });
        Ok(())
    }

    /// `pki NAME cert FILE`, `pki NAME key FILE`, `pki NAME dhe none|auto|legacy`.
    pub(super) fn pki(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let place = Place {
            file: st.file().to_string(),
            line: st.line(),
        };
        let name = st.value("pki name")?;
        let key = name.to_ascii_lowercase();
        let id = match self.pki_names.get(&key) {
            Some(&id) => id,
            None => {
                self.cfg.pkis.push(Pki {
                    name: name.clone(),
                    cert: None,
                    key: None,
                    dhe: Dhe::None,
                    place: place.clone(),
                });
                self.pki_names.insert(key, self.cfg.pkis.len() - 1);
                self.cfg.pkis.len() - 1
            }
        };
        let current = self.current.clone();
        let pki = &mut self.cfg.pkis[id];
        if st.eat("cert") {
            let f = st.value("certificate file")?;
            if pki.cert.is_some() {
                return Err(st.err(format!("pki '{name}': cert given twice")));
            }
            pki.cert = Some((crate::config::relative_to(&current, &f), place));
        } else if st.eat("key") {
            let f = st.value("key file")?;
            if pki.key.is_some() {
                return Err(st.err(format!("pki '{name}': key given twice")));
            }
            pki.key = Some((crate::config::relative_to(&current, &f), place));
        } else if st.eat("dhe") {
            pki.dhe = if st.eat("none") {
                Dhe::None
            } else if st.eat("auto") {
                Dhe::Auto
            } else if st.eat("legacy") {
                Dhe::Legacy
            } else {
                return Err(st.err("after 'dhe': none, auto or legacy"));
            };
        } else {
            return Err(st.err("after the pki name: cert, key or dhe"));
        }
        st.done()
    }

    /// `ca NAME cert FILE`.
    pub(super) fn ca(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let place = Place {
            file: st.file().to_string(),
            line: st.line(),
        };
        let name = st.value("ca name")?;
        st.expect("cert")?;
        let f = st.value("CA file")?;
        st.done()?;
        if self.ca_names.contains_key(&name) {
            return Err(st.err(format!("ca '{name}' defined twice")));
        }
        self.ca_names.insert(name.clone(), self.cfg.cas.len());
        self.cfg.cas.push(Ca {
            name,
            cert: crate::config::relative_to(&self.current, &f),
            place,
        });
        Ok(())
    }

    /// After the last statement: every pki has its certificate and key, and the pki
    /// and ca names of the listeners are defined. A TLS listener that names no pki
    /// uses the one named like its host name (or the server's), as OpenSMTPD does.
    pub(super) fn check_pkis(&mut self) -> Result<(), ConfigError> {
        for p in &self.cfg.pkis {
            if p.cert.is_none() {
                return Err(p
                    .place
                    .err(format!("pki '{}': no certificate ('cert')", p.name)));
            }
            if p.key.is_none() {
                return Err(p.place.err(format!("pki '{}': no key ('key')", p.name)));
            }
        }
        for names in std::mem::take(&mut self.tls_names) {
            let Some(l) = self.cfg.listeners.get_mut(names.listener) else {
                continue;
            };
            let Some(tls) = l.tls.as_mut() else {
                continue;
            };
            let mut wanted = names.pkis;
            if wanted.is_empty() {
                let host = l
                    .hostname
                    .clone()
                    .unwrap_or_else(|| self.cfg.hostname.clone());
                if !self.pki_names.contains_key(&host.to_ascii_lowercase()) {
                    return Err(tls.place.err(format!(
                        "no pki for this TLS listener: add 'pki NAME', or define pki {host}"
                    )));
                }
                wanted.push(host);
            }
            for name in wanted {
                match self.pki_names.get(&name.to_ascii_lowercase()) {
                    Some(&id) => tls.pkis.push(id),
                    None => return Err(tls.place.err(format!("undefined pki '{name}'"))),
                }
            }
            if let Some(name) = names.ca {
                match self.ca_names.get(&name) {
                    Some(&id) => tls.ca = Some(id),
                    None => return Err(tls.place.err(format!("undefined ca '{name}'"))),
                }
            }
        }
        Ok(())
    }
}

/// `tls`, `tls-require` or `smtps`, taken when next.
fn tls_mode(st: &mut Stmt) -> Option<TlsMode> {
    if st.eat("tls") {
        Some(TlsMode::Starttls)
    } else if st.eat("tls-require") {
        Some(TlsMode::Require)
    } else if st.eat("smtps") {
        Some(TlsMode::Smtps)
    } else {
        None
    }
}

/// Each protocol version enabled keeps at least one of its cipher suites.
pub(super) fn check_suites(protocols: &[TlsVersion], ciphers: &[Suite]) -> Result<(), String> {
    for v in protocols {
        if !ciphers.iter().any(|s| s.version() == *v) {
            return Err(format!(
                "ciphers leave no cipher suite for {}: restrict protocols",
                v.name()
            ));
        }
    }
    Ok(())
}

impl Parser {
    /// `metrics [on ADDRESS|INTERFACE] [port PORT]`: loopback and port
    /// [`METRICS_PORT`] by default.
    pub(super) fn metrics(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        if self.cfg.metrics.is_some() {
            return Err(st.err("metrics: given twice"));
        }
        let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
        let mut port = METRICS_PORT;
        while !st.at_end() {
            if st.eat("on") {
                let what = st.value("address or interface")?;
                ips = resolve_listen(&what).map_err(|m| st.err(format!("metrics: {m}")))?;
            } else if st.eat("port") {
                let p = st.value("port")?;
                port = parse_port(&p).map_err(|m| st.err(format!("metrics: {m}")))?;
            } else {
                return Err(st.err("after 'metrics': on ADDRESS or port PORT"));
            }
        }
        let addrs = ips
            .into_iter()
            .map(|ip| std::net::SocketAddr::new(ip, port))
            .collect();
        self.cfg.metrics = Some(MetricsConfig { addrs });
        Ok(())
    }
}

/// A port number, or a service name of /etc/services.
fn parse_port(p: &str) -> Result<u16, String> {
    if p.bytes().all(|b| b.is_ascii_digit()) {
        return p
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("invalid port '{p}'"));
    }
    let services = std::fs::read_to_string(SERVICES).unwrap_or_default();
    service_port(&services, p)
        .ok_or_else(|| format!("invalid port '{p}': no such service in {SERVICES}"))
}

/// The addresses of `listen on WHAT`: an IP, `localhost`, `all`/`any`, an interface name,
/// or a host name from /etc/hosts-backed resolution.
fn resolve_listen(what: &str) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = what
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(vec![ip]);
    }
    match what {
        "localhost" => {
            return Ok(vec![
                IpAddr::from([127, 0, 0, 1]),
                "::1".parse().map_err(|_| "::1")?,
            ])
        }
        "all" | "any" => {
            return Ok(vec![
                IpAddr::from([0, 0, 0, 0]),
                IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 0]),
            ])
        }
        _ => {}
    }
    let ifaddrs = crate::sys::interface_addrs(what);
    if !ifaddrs.is_empty() {
        return Ok(ifaddrs);
    }
    use std::net::ToSocketAddrs;
    match (what, 0u16).to_socket_addrs() {
        Ok(it) => {
            let v: Vec<IpAddr> = it.map(|a| a.ip()).collect();
            if v.is_empty() {
                Err(format!("'{what}': no such address, interface or host"))
            } else {
                Ok(v)
            }
        }
        Err(_) => Err(format!("'{what}': no such address, interface or host")),
    }
}
