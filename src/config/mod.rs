//! smtpd.conf: lexer, parser and the model. The contract is man/smtpd.conf.5.

#[cfg(test)]
mod contract;
mod lexer;
pub mod model;
mod parser;
pub mod relay;
pub mod reload;
pub mod tls;

pub use model::*;
pub use parser::{check_queue_key, KEYWORDS};
pub use reload::{Origin, BUILT_IN, DEFAULT_CONFIG, METRICS_LISTENER};

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A configuration error, shown as `FILE:LINE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// The 1-based line, 0 when the error is about the file as a whole.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl ConfigError {
    /// An error at `file:line`.
    pub fn at(file: &str, line: usize, msg: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            line,
            msg: msg.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.msg)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.msg)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The account the engine runs as when smtpd is started as root.
pub const UNPRIVILEGED_USER: &str = "_smtpd";

/// The group that may write the offline queue (the group of a setgid `sendmail`).
pub const OFFLINE_GROUP: &str = "_smtpq";

/// The configuration used when a normal user starts smtpd without `-f`: loopback port
/// 2525, spool and mailboxes under the current directory.
pub const DEVELOPMENT: &str = r#"# built-in development configuration
queue path "spool"
listen on 127.0.0.1 port 2525
action "local" maildir "mail/%{user.username}"
match from local for local action "local"
"#;

/// Reads and parses `path`; `-D name=value` macros in `macros` win over the file's.
pub fn load(path: &Path, macros: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let text = crate::files::read_to_string(path)
        .map_err(|e| ConfigError::at(&path.display().to_string(), 0, e.to_string()))?;
    parse(&text, path, macros)
}

/// Parses configuration text as if read from `path` (used for relative paths and errors).
pub fn parse(
    text: &str,
    path: &Path,
    macros: &HashMap<String, String>,
) -> Result<Config, ConfigError> {
    parser::Parser::new(path, macros.clone()).run(text)
}

/// The spool named by a configuration's `queue path`, found without reading its
/// tables (for `smtpctl` and `sendmail`, which may not be able to read them).
pub fn queue_path_of(path: &Path) -> Result<PathBuf, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::at(&path.display().to_string(), 0, e.to_string()))?;
    Ok(parser::queue_path_only(&text, path))
}

/// The server name: the first line of /etc/mail/mailname, else the host name made
/// fully qualified (see [`qualify`]).
pub fn default_hostname() -> String {
    if let Ok(s) = std::fs::read_to_string("/etc/mail/mailname") {
        if let Some(l) = s.lines().next().map(str::trim).filter(|l| !l.is_empty()) {
            return l.to_string();
        }
    }
    let name = crate::sys::hostname().unwrap_or_else(|| "localhost".to_string());
    qualify(
        &name,
        &std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
    )
}

/// A host name as a fully qualified one: itself when it has a dot; else the canonical
/// name of the `hosts` text line that lists it (its first name, by hosts(5)) when that
/// one has a dot; else the name in the domain `localdomain`, as Postfix does. The
/// name is what the server says in its greeting and in EHLO when it relays, where
/// RFC 5321 §4.1.1.1 asks for a fully qualified name. No resolver is asked: at start
/// the daemon must not depend on DNS.
pub fn qualify(name: &str, hosts: &str) -> String {
    if name.contains('.') {
        return name.to_string();
    }
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_ascii_whitespace().skip(1);
        let Some(canonical) = words.next() else {
            continue;
        };
        let listed =
            canonical.eq_ignore_ascii_case(name) || words.any(|w| w.eq_ignore_ascii_case(name));
        if listed && canonical.contains('.') && crate::mail::address::valid_domain(canonical) {
            return canonical.to_ascii_lowercase();
        }
    }
    format!("{name}.localdomain")
}

/// Resolves `p` against the directory of the configuration file.
pub(crate) fn relative_to(conf: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match conf.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::qualify;

    #[test]
    fn host_names_are_made_fully_qualified() {
        let hosts = "127.0.0.1 localhost\n# 10.0.0.1 vm.commented.example vm\n\
                     127.0.1.1\tVM.Example.org vm\n";
        assert_eq!(qualify("mx.example.net", hosts), "mx.example.net");
        assert_eq!(qualify("vm", hosts), "vm.example.org");
        assert_eq!(
            qualify("vm", "127.0.0.1 localhost\n127.0.0.1 vm\n"),
            "vm.localdomain"
        );
        assert_eq!(qualify("other", hosts), "other.localdomain");
    }
}
