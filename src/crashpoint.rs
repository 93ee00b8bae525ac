//! Crash points: named places of the commit, delivery, notification and envelope
//! update paths where a build with the `crashpoints` feature ends the process at once,
//! as a crash or a loss of power would, for the tests of crash safety (see smtpd.8,
//! Crash points).
//!
//! `SMTPD_CRASHPOINT=NAME` arms the point `NAME` in every process of the daemon that
//! inherits the environment; `NAME:N` arms its Nth hit in a process (the first by
//! default). A process reaching the armed point writes one line to its standard error
//! (and to the file named by `SMTPD_CRASHPOINT_FILE`, when set) and calls `_exit(2)`
//! with status 86: no destructor, no buffered output, no unwinding. Without the
//! feature, [`hit`] is an empty function the compiler removes.

/// Every crash point, in the order a message meets them.
pub const POINTS: &[&str] = &[
    "commit-written",
    "commit-synced",
    "commit-renamed",
    "commit-durable",
    "commit-replied",
    "deliver-done",
    "deliver-relayed",
    "deliver-reported",
    "remove-before",
    "remove-after",
    "bounce-written",
    "bounce-committed",
    "bounce-removed",
    "envelope-staged",
    "envelope-installed",
    "delay-recorded",
    "delay-committed",
];

/// The exit status of a process ended at a crash point.
pub const EXIT_STATUS: i32 = 86;

/// Marks crash point `name`: ends the process when it is the point armed (with the
/// `crashpoints` feature only).
#[cfg(not(feature = "crashpoints"))]
#[inline(always)]
pub fn hit(_name: &'static str) {}

/// Marks crash point `name`: ends the process when it is the point armed (with the
/// `crashpoints` feature only).
#[cfg(feature = "crashpoints")]
pub fn hit(name: &'static str) {
    armed::hit(name)
}

#[cfg(feature = "crashpoints")]
mod armed {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    /// The point armed and the hit that ends the process.
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    /// Hits of the armed point so far in this process.
    static HITS: AtomicU64 = AtomicU64::new(0);

    fn armed() -> Option<&'static (String, u64)> {
        ARMED
            .get_or_init(|| {
                let v = std::env::var("SMTPD_CRASHPOINT").ok()?;
                let (name, n) = match v.split_once(':') {
                    Some((name, n)) => (name, n.parse::<u64>().ok()?.max(1)),
                    None => (v.as_str(), 1),
                };
                Some((name.to_string(), n))
            })
            .as_ref()
    }

    pub(super) fn hit(name: &'static str) {
        let Some((armed, n)) = armed() else {
            return;
        };
        if armed != name || HITS.fetch_add(1, Ordering::AcqRel) + 1 != *n {
            return;
        }
        let line = format!(
            "smtpd: crash point {name} reached in pid {}\n",
            std::process::id()
        );
        use std::io::Write;
        // Standard error is not buffered: the line is written now.
        let _ = std::io::stderr().write_all(line.as_bytes());
        if let Some(path) = std::env::var_os("SMTPD_CRASHPOINT_FILE") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path)
            {
                let _ = f.write_all(line.as_bytes());
                let _ = f.sync_all();
            }
        }
        crate::sys::exit_now(super::EXIT_STATUS)
    }
}
