//! The listener options that shape sessions rather than transport: `mask-src`,
//! `no-dsn` and `hostnames <t>`, and the options of
//! `listen on socket`.

use super::{Given, Parser, Stmt};
use crate::config::model::SessionOptions;
use crate::config::ConfigError;

/// The options of `listen on socket`, each given once in a statement.
const SOCKET_OPTIONS: &[&str] = &["filter", "tag", "mask-src", "no-dsn", "senders"];

impl Parser {
    /// Reads one session option of `listen on` into `o`; false when the next word is
    /// none. `socket` is true for `listen on socket`, which has no `hostnames`.
    pub(super) fn session_option(
        &mut self,
        st: &mut Stmt,
        o: &mut SessionOptions,
        socket: bool,
    ) -> Result<bool, ConfigError> {
        if st.eat("mask-src") {
            o.mask_src = true;
        } else if st.eat("no-dsn") {
            if o.no_dsn {
                return Err(st.err("'no-dsn' given twice"));
            }
            o.no_dsn = true;
        } else if !socket && st.eat("hostnames") {
            let t = self.table_ref(st)?;
            self.check_in_memory(st, t, "'hostnames'")?;
            let table = &self.cfg.tables[t];
            let entries = table.entries();
            for k in entries.keys() {
                if k.parse::<std::net::IpAddr>().is_err() {
                    return Err(st.err(format!(
                        "hostnames: table '{}': '{k}' is no IP address",
                        table.name
                    )));
                }
                let v = entries.get(k).unwrap_or("");
                if !crate::mail::address::valid_domain(v) {
                    return Err(st.err(format!(
                        "hostnames: table '{}': '{v}' is no host name (for {k})",
                        table.name
                    )));
                }
            }
            o.hostnames = Some(t);
        } else {
            return Ok(false);
        }
        Ok(true)
    }

    /// `listen on socket [filter NAME|{...}] [tag TAG] [mask-src] [no-dsn]
    /// [senders <t>]`, after
    /// `socket`.
    pub(super) fn listen_socket(&mut self, st: &mut Stmt) -> Result<(), ConfigError> {
        let mut options = self.cfg.socket.options;
        let mut given = Given::default();
        while !st.at_end() {
            given.note(st, SOCKET_OPTIONS, "")?;
            if self.session_option(st, &mut options, true)? {
                continue;
            }
            if st.eat("filter") {
                if self.cfg.socket_filter.is_some() {
                    return Err(st.err("filter already given for the socket"));
                }
                self.cfg.socket_filter = Some(self.filter_ref(st)?);
            } else if st.eat("senders") {
                if self.cfg.socket.senders.is_some() {
                    return Err(st.err("senders already given for the socket"));
                }
                self.cfg.socket.senders = Some(self.table_ref(st)?);
            } else if st.eat("tag") {
                if self.cfg.socket.tag.is_some() {
                    return Err(st.err("tag already given for the socket"));
                }
                self.cfg.socket.tag = Some(st.value("tag")?);
            } else {
                st.done().map_err(|mut e| {
                    e.msg +=
                        ": 'listen on socket' takes only filter, tag, mask-src, no-dsn and senders";
                    e
                })?;
                break;
            }
        }
        self.cfg.socket.options = options;
        Ok(())
    }
}
