//! Logging: env_logger on stderr in the foreground, syslog (mail facility) as a daemon.

use log::{Level, LevelFilter, Log, Metadata, Record};

/// Verbosity from the count of `-v` flags: info, debug, then trace.
pub fn level(verbose: usize) -> LevelFilter {
    match verbose {
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Logs to stderr; `RUST_LOG` overrides the level given by `-v`.
pub fn init_stderr(verbose: usize) {
    let mut b = env_logger::Builder::new();
    // The logger passes everything; the global maximum (changed at run time by
    // `smtpctl log`) decides.
    b.filter_level(LevelFilter::Trace);
    let spec = std::env::var("RUST_LOG").ok();
    if let Some(spec) = &spec {
        b.parse_filters(spec);
    }
    b.format_target(false);
    if b.try_init().is_ok() && spec.is_none() {
        log::set_max_level(level(verbose));
    }
}

struct Syslog {
    level: LevelFilter,
}

impl Log for Syslog {
    fn enabled(&self, m: &Metadata) -> bool {
        // The global maximum follows `smtpctl log brief|verbose`.
        m.level() <= log::max_level() && self.level >= LevelFilter::Error
    }
    fn log(&self, r: &Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let prio = match r.level() {
            Level::Error => libc::LOG_ERR,
            Level::Warn => libc::LOG_WARNING,
            Level::Info => libc::LOG_INFO,
            Level::Debug | Level::Trace => libc::LOG_DEBUG,
        };
        crate::sys::syslog(prio, &r.args().to_string());
    }
    fn flush(&self) {}
}

/// Logs to syslog with the mail facility.
pub fn init_syslog(verbose: usize) {
    crate::sys::openlog(c"smtpd");
    let l = level(verbose);
    if log::set_boxed_logger(Box::new(Syslog { level: l })).is_ok() {
        log::set_max_level(l);
    }
}
