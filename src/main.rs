//! smtpd: flags, start-up and the choice of configuration. No logic lives here.

use smtpd::config::{self, Config, Origin, BUILT_IN, DEFAULT_CONFIG};
use smtpd::event_loop::{bind_control, bind_listeners, refuse_if_running, Server};
use smtpd::queue::spool::Spool;
use smtpd::tools;
use std::collections::HashMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

/// The programs the binary can be, besides the daemon.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Personality {
    Smtpctl,
    Mailq,
    Sendmail,
    Newaliases,
}

fn usage(prog: &str, opts: &getopts::Options) -> String {
    opts.usage(&format!(
        "usage: {prog} [-dFhnv] [-D macro=value] [-f file] [-P mda|mta|smtp]"
    ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let prog = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map_or("smtpd".to_string(), |n| n.to_string_lossy().into_owned());
    // One binary, several personalities, chosen by name (or `smtpd ctl|sendmail ...`):
    // the personality, the name it goes by in messages, and where its arguments start.
    let (personality, name, first) = match (prog.as_str(), args.get(1).map(String::as_str)) {
        ("smtpctl", _) => (Some(Personality::Smtpctl), prog.as_str(), 1),
        ("mailq", _) => (Some(Personality::Mailq), prog.as_str(), 1),
        ("sendmail" | "send-mail", _) => (Some(Personality::Sendmail), prog.as_str(), 1),
        ("newaliases", _) => (Some(Personality::Newaliases), prog.as_str(), 1),
        (_, Some("ctl")) => (Some(Personality::Smtpctl), "smtpctl", 2),
        (_, Some("sendmail")) => (Some(Personality::Sendmail), "sendmail", 2),
        (_, Some("newaliases")) => (Some(Personality::Newaliases), "newaliases", 2),
        _ => (None, prog.as_str(), 1),
    };
    // Installed setgid (so that sendmail can write the offline queue), the binary gives
    // the group up before it acts on its name or arguments, both chosen by the caller:
    // sendmail keeps it set aside to create its offline file, and every other
    // personality loses it for good.
    let offline_gid = smtpd::sys::suspend_setgid();
    if personality != Some(Personality::Sendmail) {
        if let Err(e) = smtpd::sys::drop_setgid() {
            eprintln!("{prog}: cannot give up the setgid group: {e}");
            return ExitCode::FAILURE;
        }
    }
    let rest = args.get(first..).unwrap_or_default();
    let code = personality.map(|p| match p {
        Personality::Smtpctl => tools::smtpctl(name, rest),
        Personality::Mailq => tools::smtpctl(name, &["show".into(), "queue".into()]),
        Personality::Sendmail => tools::sendmail(name, rest, offline_gid),
        Personality::Newaliases => tools::newaliases(name, rest),
    });
    if let Some(code) = code {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let mut opts = getopts::Options::new();
    opts.optflag("d", "", "stay in the foreground and log to stderr");
    opts.optflag("F", "", "stay in the foreground and log to syslog");
    opts.optflag("n", "", "check the configuration and exit");
    opts.optflagmulti("v", "", "more verbose logging (repeatable)");
    opts.optopt("f", "", "configuration file", "FILE");
    opts.optmulti("D", "", "define a macro", "NAME=VALUE");
    opts.optmulti(
        "P",
        "",
        "start with an agent paused (mda, mta or smtp)",
        "AGENT",
    );
    opts.optflag("h", "", "show this help");
    let m = match opts.parse(&args[1..]) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{prog}: {e}\n{}", usage(&prog, &opts));
            return ExitCode::FAILURE;
        }
    };
    if m.opt_present("h") {
        print!("{}", usage(&prog, &opts));
        return ExitCode::SUCCESS;
    }
    if !m.free.is_empty() {
        eprintln!(
            "{prog}: unexpected argument '{}'\n{}",
            m.free[0],
            usage(&prog, &opts)
        );
        return ExitCode::FAILURE;
    }
    let mut macros = HashMap::new();
    for d in m.opt_strs("D") {
        match d.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                macros.insert(k.to_string(), v.to_string());
            }
            _ => {
                eprintln!("{prog}: -D {d}: expected NAME=VALUE");
                return ExitCode::FAILURE;
            }
        }
    }
    let verbose = m.opt_count("v");
    let origin = Origin::new(m.opt_str("f"), macros);
    let cfg = match origin.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // Certificates and keys are read here, while the daemon may still read what only
    // root can; the engine gets them in memory.
    let tls = match smtpd::tls::load(&cfg) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if m.opt_present("n") {
        println!("configuration OK");
        return ExitCode::SUCCESS;
    }
    let mut paused = Vec::new();
    for p in m.opt_strs("P") {
        match p.as_str() {
            "mda" | "mta" | "smtp" => paused.push(p),
            _ => {
                eprintln!("{prog}: -P {p}: expected mda, mta or smtp");
                return ExitCode::FAILURE;
            }
        }
    }
    let foreground = m.opt_present("d") || m.opt_present("F");
    if m.opt_present("d") {
        smtpd::logger::init_stderr(verbose);
    } else {
        smtpd::logger::init_syslog(verbose);
    }
    match start(origin, cfg, tls, foreground, &paused) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("smtpd: {e}");
            if !m.opt_present("d") {
                eprintln!("{prog}: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

fn start(
    origin: Origin,
    cfg: Config,
    tls: smtpd::tls::TlsSetup,
    foreground: bool,
    paused: &[String],
) -> std::io::Result<()> {
    // A bug is logged where the admin looks, with its place in the code; the engine
    // then ends only the session it happened in.
    std::panic::set_hook(Box::new(|info| log::error!("smtpd: bug: {info}")));
    // Before the spool is opened: opening it tidies it, which a running daemon's
    // messages in incoming/ must not undergo.
    refuse_if_running(&cfg.queue.path)?;
    // `queue encryption`: the key is read now, while the terminal and stdin are there.
    let key = match &cfg.queue.encryption {
        Some(from) => Some(smtpd::queue::seal::load_key(from).map_err(std::io::Error::other)?),
        None => None,
    };
    let (spool, cleaned) = Spool::open(&cfg.queue.path).map_err(|e| {
        std::io::Error::new(e.kind(), format!("queue {}: {e}", cfg.queue.path.display()))
    })?;
    let spool = spool.with_key(key);
    if cleaned > 0 {
        log::info!("queue: removed {cleaned} incomplete message(s) from incoming/");
    }
    log::info!(
        "smtpd {} starting: config={} queue={} hostname={}",
        env!("CARGO_PKG_VERSION"),
        cfg.path.display(),
        cfg.queue.path.display(),
        cfg.hostname
    );
    if cfg.path.ends_with(BUILT_IN) {
        log::warn!(
            "smtpd: no {DEFAULT_CONFIG} and no -f: using the built-in development configuration"
        );
    }
    // As root, the engine runs as the unprivileged user and owns the spool.
    let engine_user = if smtpd::sys::geteuid() == 0 {
        let pw = smtpd::sys::getpwnam(config::UNPRIVILEGED_USER).ok_or_else(|| {
            std::io::Error::other(format!(
                "user {0} does not exist: create it, e.g. useradd -r -d /var/empty -s /usr/sbin/nologin {0}",
                config::UNPRIVILEGED_USER
            ))
        })?;
        spool.chown_tree(pw.uid, pw.gid)?;
        // offline/ is writable by the group of a setgid sendmail, when it exists.
        if let Some(gid) = smtpd::sys::getgrnam(config::OFFLINE_GROUP) {
            use std::os::unix::fs::PermissionsExt;
            let offline = spool.root().join("offline");
            smtpd::sys::lchown(&offline, 0, gid)?;
            std::fs::set_permissions(&offline, std::fs::Permissions::from_mode(0o1770))?;
        }
        Some(pw)
    } else {
        None
    };
    let listeners = bind_listeners(&cfg)?;
    let control = bind_control(spool.root())?;
    if !foreground {
        smtpd::sys::daemonize()?;
    }
    // Filters start once, here, before the engine: it inherits their sockets.
    let mut filters = Vec::new();
    let mut filter_fds = Vec::new();
    for (id, f) in cfg.filters.iter().enumerate() {
        if let Some(spec) = smtpd::privsep::filter_spec(id, f) {
            let (pid, engine_fd, err) = smtpd::filter::supervisor::spawn(&spec)?;
            log::info!("filter {} started, pid {pid}", f.name);
            filter_fds.push((id, engine_fd));
            filters.push(smtpd::filter::supervisor::Running::new(spec, pid, err));
        }
    }
    // Table processes too; the engine takes their sockets before it starts.
    let mut table_fds = Vec::new();
    for (id, t) in cfg.tables.iter().enumerate() {
        if let Some(spec) = smtpd::privsep::table_spec(id, t) {
            let (pid, engine_fd, err) = smtpd::filter::supervisor::spawn(&spec)?;
            log::info!("table {} started, pid {pid}", t.name);
            table_fds.push((id, engine_fd));
            filters.push(smtpd::filter::supervisor::Running::new(spec, pid, err));
        }
    }
    let (engine_end, parent_end) = smtpd::sys::seqpacket_pair()?;
    match smtpd::sys::fork()? {
        None => {
            drop(parent_end);
            if let Some(pw) = &engine_user {
                smtpd::sys::drop_privileges(pw.uid, pw.gid)?;
                log::info!("smtpd engine running as {}", pw.name);
            }
            // After the switch of user: the kernel clears this setting when ids change.
            smtpd::sys::die_with_parent();
            for (id, fd) in table_fds {
                if let Some(b) = cfg.tables.get(id).and_then(|t| t.backend()) {
                    b.install(fd);
                }
            }
            let cfg = Arc::new(cfg);
            drop(filters);
            let r = Server::new(
                cfg,
                tls,
                spool,
                listeners,
                Some(control),
                Some(engine_end),
                filter_fds,
            )
            .and_then(|mut s| {
                s.set_origin(origin);
                for p in paused {
                    s.pause(p);
                }
                s.run()
            });
            if let Err(e) = &r {
                log::error!("smtpd: {e}");
            }
            smtpd::sys::exit_now(i32::from(r.is_err()));
        }
        Some(engine) => {
            // The engine owns the sockets and the keys; the parent only delivers.
            drop(tls);
            drop(listeners);
            drop(control);
            drop(engine_end);
            drop(filter_fds);
            drop(table_fds);
            let socket = smtpd::control::socket_path(spool.root());
            let n = smtpd::submit::flush_offline(&spool, &socket);
            if n > 0 {
                log::info!("offline: {n} message(s) submitted");
            }
            let reloader = smtpd::privsep::reload::Reloader::new(origin, cfg.clone());
            let code = smtpd::privsep::parent_loop(parent_end, engine, filters, reloader)?;
            let _ = std::fs::remove_file(smtpd::control::socket_path(&cfg.queue.path));
            if code != 0 {
                return Err(std::io::Error::other(format!(
                    "engine exited with status {code}"
                )));
            }
            Ok(())
        }
    }
}
