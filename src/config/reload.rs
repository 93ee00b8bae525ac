//! What a reload needs of the configuration: where it came from ([`Origin`]), which
//! changes cannot be applied to a running daemon ([`check`]), and the numbering of
//! filters kept stable across reloads ([`align_filters`]).
//!
//! Both processes apply the same reloads to the same configuration, so
//! [`align_filters`] numbers the new filters alike in both: a filter id, once given,
//! always means the same definition, and a session that started under an older
//! configuration finds its filters where it left them.

use super::model::{Config, FilterKind};
use super::{ConfigError, DEVELOPMENT};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The `idx` of the metrics listener among the daemon's listening sockets.
pub const METRICS_LISTENER: usize = usize::MAX;

/// The name the built-in configuration goes by in messages.
pub const BUILT_IN: &str = "(built-in development configuration)";
/// The configuration file read when no `-f` is given.
pub const DEFAULT_CONFIG: &str = "/etc/smtpd.conf";

/// Where the configuration comes from: the file (or the built-in one), the `-D`
/// macros, and the directory a relative `queue path` is taken from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file; `None` for the built-in development configuration.
    pub file: Option<PathBuf>,
    /// `-D name=value`.
    pub macros: HashMap<String, String>,
    /// The working directory at start.
    pub cwd: PathBuf,
}

impl Origin {
    /// `-f FILE`; without it /etc/smtpd.conf, and when that does not exist the
    /// built-in development configuration (loopback port 2525, spool under the current
    /// directory).
    pub fn new(file: Option<String>, macros: HashMap<String, String>) -> Origin {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let file = match file {
            Some(f) => Some(PathBuf::from(f)),
            None if Path::new(DEFAULT_CONFIG).exists() => Some(PathBuf::from(DEFAULT_CONFIG)),
            None => None,
        };
        Origin { file, macros, cwd }
    }

    /// Reads and parses the configuration (through [`crate::files`]).
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.file {
            // A relative file is the start's directory's (a daemon works from `/`);
            // named as given while that is the current one.
            Some(f)
                if f.is_relative() && std::env::current_dir().ok() != Some(self.cwd.clone()) =>
            {
                super::load(&self.cwd.join(f), &self.macros)?
            }
            Some(f) => super::load(f, &self.macros)?,
            None => super::parse(DEVELOPMENT, &self.cwd.join(BUILT_IN), &self.macros)?,
        };
        if cfg.queue.path.is_relative() {
            cfg.queue.path = self.cwd.join(&cfg.queue.path);
        }
        Ok(cfg)
    }

    /// Whether this is the built-in configuration.
    pub fn built_in(&self) -> bool {
        self.file.is_none()
    }
}

/// Why `new` cannot replace `old` in a running daemon, if it cannot: the spool and
/// its encryption are the daemon's, set at start.
pub fn check(old: &Config, new: &Config) -> Result<(), String> {
    if old.queue.path != new.queue.path {
        return Err(format!(
            "queue path changed ({} to {}): restart smtpd to change it",
            old.queue.path.display(),
            new.queue.path.display()
        ));
    }
    if old.queue.encryption != new.queue.encryption {
        return Err("queue encryption changed: restart smtpd to change it".into());
    }
    Ok(())
}

/// Renumbers the filters of `new` so that each one defined as in `old` keeps its id,
/// and every other one gets an id past those of `old`, which keeps them all (a
/// session started under `old` may still use them). References (listeners, the
/// local socket, chains) are renumbered alike.
pub fn align_filters(new: &mut Config, old: &Config) {
    let mut out = old.filters.clone();
    let mut map: Vec<Option<usize>> = vec![None; new.filters.len()];
    // A chain names filters defined before it; a few passes settle any order.
    for _ in 0..=new.filters.len() {
        let mut progress = false;
        for (i, f) in new.filters.iter().enumerate() {
            if map[i].is_some() {
                continue;
            }
            let kind = match &f.kind {
                FilterKind::Chain(ids) => {
                    match ids.iter().map(|&j| map.get(j).copied().flatten()).collect() {
                        Some(ids) => FilterKind::Chain(ids),
                        None => continue,
                    }
                }
                k => k.clone(),
            };
            let def = super::model::FilterDef {
                name: f.name.clone(),
                kind,
            };
            let found = out
                .iter()
                .position(|o| o.name == def.name && o.kind == def.kind);
            map[i] = Some(found.unwrap_or_else(|| {
                out.push(def);
                out.len() - 1
            }));
            progress = true;
        }
        if !progress {
            break;
        }
    }
    // A chain that never settled (it names itself) keeps its own numbering: none do,
    // the parser refuses them; its id is given past the others all the same.
    let map: Vec<usize> = map
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            m.unwrap_or_else(|| {
                out.push(new.filters[i].clone());
                out.len() - 1
            })
        })
        .collect();
    let re = |id: usize| map.get(id).copied().unwrap_or(id);
    for l in &mut new.listeners {
        l.filter = l.filter.map(re);
    }
    new.socket_filter = new.socket_filter.map(re);
    new.superseded_filters = (0..out.len()).filter(|i| !map.contains(i)).collect();
    new.filters = out;
}

/// The filter processes the configuration defines (not those it keeps for the
/// sessions of an older one), by id.
pub fn filters_in_use(cfg: &Config) -> Vec<usize> {
    cfg.filters
        .iter()
        .enumerate()
        .filter(|(id, f)| {
            matches!(f.kind, FilterKind::Proc { .. }) && !cfg.superseded_filters.contains(id)
        })
        .map(|(id, _)| id)
        .collect()
}

/// Every address the daemon listens on, with the index of its listener
/// (`metrics_idx` for the metrics listener's).
pub fn listen_addrs(cfg: &Config, metrics_idx: usize) -> Vec<(SocketAddr, usize)> {
    let mut out: Vec<(SocketAddr, usize)> = cfg
        .listeners
        .iter()
        .enumerate()
        .flat_map(|(i, l)| l.addrs.iter().map(move |a| (*a, i)))
        .collect();
    out.extend(
        cfg.metrics
            .iter()
            .flat_map(|m| &m.addrs)
            .map(|a| (*a, metrics_idx)),
    );
    out
}

/// Lets each table process of `new` that `old` runs alike keep its client (its socket
/// and process), instead of the idle one the parser made.
pub fn share_backends(new: &mut Config, old: &Config) {
    for t in &mut new.tables {
        if let Some(o) = old
            .tables
            .iter()
            .find(|o| o.name == t.name && o.source == t.source && o.backend().is_some())
        {
            t.share_backend(o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        super::super::parse(text, Path::new("/etc/smtpd.conf"), &HashMap::new()).unwrap()
    }

    const BASE: &str = r#"
filter "a" proc-exec "/bin/cat"
filter "b" proc-exec "/bin/true"
filter "both" chain { "a", "b" }
listen on 127.0.0.1 port 2525 filter "both"
listen on 127.0.0.1 port 2526 filter "b"
action "l" maildir
match from any for any action "l"
"#;

    #[test]
    fn unchanged_filters_keep_their_ids() {
        let old = parse(BASE);
        let mut new = parse(BASE);
        align_filters(&mut new, &old);
        assert_eq!(new.filters, old.filters);
        assert_eq!(new.listeners[0].filter, old.listeners[0].filter);
    }

    #[test]
    fn a_changed_filter_gets_a_new_id_and_the_old_one_stays() {
        let old = parse(BASE);
        let mut new = parse(&BASE.replace("/bin/true", "/bin/false"));
        align_filters(&mut new, &old);
        // a kept, b and the chain new; the old ones still there for old sessions.
        assert_eq!(new.filters.len(), old.filters.len() + 2);
        assert_eq!(new.filters[..3], old.filters[..]);
        let chain = new.filter_chain(new.listeners[0].filter.unwrap());
        assert_eq!(chain[0], 0);
        assert!(chain[1] >= 3);
        assert!(matches!(&new.filters[chain[1]].kind,
            FilterKind::Proc { command, .. } if command == "/bin/false"));
        assert_eq!(new.listeners[1].filter, Some(chain[1]));
        assert_eq!(filters_in_use(&new), vec![0, chain[1]]);
        assert_eq!(filters_in_use(&old), vec![0, 1]);
    }

    #[test]
    fn the_spool_cannot_change() {
        let old = parse(BASE);
        assert!(check(&old, &parse(BASE)).is_ok());
        let new = parse(&format!("queue path \"/var/other\"\n{BASE}"));
        assert!(check(&old, &new).unwrap_err().contains("queue path"));
    }

    #[test]
    fn a_replay_parses_what_was_read() {
        let dir = crate::testutil::TempDir::new("origin");
        let conf = dir.0.join("smtpd.conf");
        let users = dir.0.join("users");
        std::fs::write(
            dir.0.join("rules.conf"),
            "match from any for domain \"a.test\" action \"l\"\n",
        )
        .unwrap();
        std::fs::write(&users, "@a.test root\n").unwrap();
        std::fs::write(
            &conf,
            format!("queue path \"q\"\nlisten on 127.0.0.1 port 2525\ntable u file:{}\naction \"l\" maildir virtual <u>\ninclude \"rules.conf\"\n", users.display()),
        )
        .unwrap();
        let origin = Origin {
            file: Some(conf.clone()),
            macros: HashMap::new(),
            cwd: dir.0.clone(),
        };
        let (cfg, bundle) = crate::files::record(|| origin.load());
        let cfg = cfg.unwrap();
        assert_eq!(cfg.queue.path, dir.0.join("q"));
        assert_eq!(bundle.files.len(), 3, "{bundle:?}");
        // Gone from the disk: the replay still has them.
        std::fs::remove_dir_all(&dir.0).unwrap();
        let again = crate::files::replay(bundle, || origin.load()).unwrap();
        assert_eq!(again.rules.len(), cfg.rules.len());
        assert_eq!(again.tables[0].entries().len(), 1);
        assert!(origin.load().is_err());
    }

    #[test]
    fn addresses_of_every_listener() {
        let cfg = parse(BASE);
        let a = listen_addrs(&cfg, 99);
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].1, 1);
    }
}
