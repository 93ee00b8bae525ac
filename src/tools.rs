//! The tool personalities of the binary: `smtpctl`, `mailq`, `sendmail`,
//! `newaliases`. Each returns a process exit code.

use crate::config;
use crate::control;
use crate::submit::{self, Submission};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

const DEFAULT_CONFIG: &str = "/etc/smtpd.conf";

/// The spool of the configuration in use: `file`, else /etc/smtpd.conf, else the
/// built-in development configuration's `./spool`.
fn spool_root(file: Option<&str>) -> Result<PathBuf, String> {
    let p = match file {
        Some(f) => config::queue_path_of(Path::new(f)).map_err(|e| e.to_string())?,
        None if Path::new(DEFAULT_CONFIG).exists() => {
            config::queue_path_of(Path::new(DEFAULT_CONFIG)).map_err(|e| e.to_string())?
        }
        None => PathBuf::from("spool"),
    };
    Ok(if p.is_relative() {
        std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
    } else {
        p
    })
}

/// `smtpctl [-f FILE] COMMAND...` (also `smtpd ctl ...`).
pub fn smtpctl(prog: &str, args: &[String]) -> i32 {
    let _ = crate::sys::drop_setgid();
    let mut opts = getopts::Options::new();
    opts.optopt("f", "", "configuration file (to find the spool)", "FILE");
    opts.parsing_style(getopts::ParsingStyle::StopAtFirstFree);
    let m = match opts.parse(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return 1;
        }
    };
    // `encrypt` needs no daemon: it hashes a password for a credentials table.
    if m.free.first().is_some_and(|w| w == "encrypt") {
        return encrypt(prog, &m.free[1..]);
    }
    let line = m.free.join(" ");
    let cmd = match control::parse(&line) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{prog}: {e}");
            eprintln!("usage: {prog} [-f file] show queue|envelope ID|message ID|stats|metrics|routes|hosts|mta-sts | schedule ID|all | remove ID|all | pause|resume mda|mta|smtp | log brief|verbose | monitor | update table NAME | reload | encrypt [string]");
            return 1;
        }
    };
    let root = match spool_root(m.opt_str("f").as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return 1;
        }
    };
    let sock = control::socket_path(&root);
    let mut out = io::stdout();
    match control::request(&sock, &line, &mut out) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) if cmd == control::Command::ShowQueue => {
            match control::show_queue_offline(&root) {
                Ok(text) => {
                    let _ = out.write_all(text.as_bytes());
                    0
                }
                Err(e2) => {
                    eprintln!("{prog}: the daemon is not running ({e}), and the spool cannot be read: {e2}");
                    1
                }
            }
        }
        Err(e) => {
            eprintln!("{prog}: {}: {e}", sock.display());
            1
        }
    }
}

/// `smtpctl encrypt [STRING]`: prints a crypt(3) hash of STRING (the words joined with
/// spaces), or of each line of the standard input when there is none.
fn encrypt(prog: &str, words: &[String]) -> i32 {
    let hash = |password: &[u8]| match crate::credentials::encrypt(password) {
        Some(h) => {
            println!("{h}");
            true
        }
        None => {
            eprintln!("{prog}: encrypt: the system's crypt(3) made no hash");
            false
        }
    };
    if !words.is_empty() {
        let password = words.join(" ");
        return i32::from(!hash(password.as_bytes()));
    }
    let mut input = Vec::new();
    if let Err(e) = io::stdin().lock().read_to_end(&mut input) {
        eprintln!("{prog}: encrypt: standard input: {e}");
        return 1;
    }
    let mut ok = true;
    for line in input.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            ok &= hash(line);
        }
    }
    crate::sys::crypt::wipe(&mut input);
    i32::from(!ok)
}

/// `sendmail [-t] [-i|-oi] [-f SENDER] [-F NAME] [-bs|-bp|-bi] [RCPT...]`.
/// `offline_gid` is the setgid group the binary was started with, already set aside
/// (effective group back to the real one): it is taken back only to create the offline
/// file, and given up for good on every other path.
pub fn sendmail(prog: &str, args: &[String], offline_gid: Option<u32>) -> i32 {
    let setgid = offline_gid.is_some();
    let mut opts = getopts::Options::new();
    opts.optflag("t", "", "read recipients from the To, Cc and Bcc headers");
    opts.optflag("i", "", "a line of a single dot does not end the message");
    opts.optopt("f", "", "envelope sender", "ADDR");
    opts.optopt("r", "", "envelope sender (obsolete form)", "ADDR");
    opts.optopt("F", "", "full name of the sender", "NAME");
    opts.optopt(
        "b",
        "",
        "mode: s (SMTP on stdin), p (mailq), i (newaliases), m (default)",
        "MODE",
    );
    opts.optmulti(
        "o",
        "",
        "sendmail option (i is honoured, others ignored)",
        "OPT",
    );
    opts.optopt("C", "", "configuration file (ignored when setgid)", "FILE");
    opts.optopt("N", "", "DSN notify (ignored)", "DSN");
    opts.optopt("R", "", "DSN return (ignored)", "RET");
    opts.optopt("V", "", "DSN envelope id (ignored)", "ENVID");
    opts.optflagmulti("v", "", "verbose (ignored)");
    opts.optopt("q", "", "queue interval (ignored)", "TIME");
    opts.optopt("B", "", "body type (ignored)", "TYPE");
    opts.optopt("e", "", "error mode (ignored)", "MODE");
    opts.optopt("X", "", "log file (ignored)", "FILE");
    opts.optflag("U", "", "initial submission (ignored)");
    opts.optflag("G", "", "gateway submission (ignored)");
    let m = match opts.parse(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return 64;
        }
    };
    let conf = if setgid { None } else { m.opt_str("C") };
    let root = match spool_root(conf.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{prog}: {e}");
            return 78;
        }
    };
    let sock = control::socket_path(&root);
    match m.opt_str("b").as_deref() {
        Some("p") => {
            let _ = crate::sys::drop_setgid();
            let mut a: Vec<String> = conf
                .iter()
                .flat_map(|c| ["-f".to_string(), c.clone()])
                .collect();
            a.extend(["show".to_string(), "queue".to_string()]);
            return smtpctl(prog, &a);
        }
        Some("i") => {
            let _ = crate::sys::drop_setgid();
            return newaliases(
                prog,
                &conf.map(|c| vec!["-f".into(), c]).unwrap_or_default(),
            );
        }
        Some("s") => {
            let _ = crate::sys::drop_setgid();
            return smtp_on_stdio(prog, &sock);
        }
        Some("m") | None => {}
        Some(other) => {
            eprintln!("{prog}: -b{other}: unsupported mode");
            return 64;
        }
    }
    let user = crate::sys::getpwuid_name().unwrap_or_else(|| "nobody".into());
    let host = config::default_hostname();
    let sender = m
        .opt_str("f")
        .or_else(|| m.opt_str("r"))
        .unwrap_or_else(|| format!("{user}@{host}"));
    let sender = sender.trim_start_matches('<').trim_end_matches('>');
    // A bare name (`-f alice`) is a user of this host, as for recipients.
    let sender = if sender.is_empty() || sender.contains('@') {
        sender.to_string()
    } else {
        format!("{sender}@{host}")
    };
    let ignore_dots = m.opt_present("i") || m.opt_strs("o").iter().any(|o| o == "i");
    let message = match submit::read_message(&mut io::stdin().lock(), !ignore_dots) {
        Ok(msg) => msg,
        Err(e) => {
            eprintln!("{prog}: reading the message: {e}");
            return 74;
        }
    };
    let mut rcpts: Vec<String> = m.free.iter().flat_map(|a| submit::addresses(a)).collect();
    let mut message = message;
    if m.opt_present("t") {
        for (k, v) in submit::headers(&message) {
            if ["to", "cc", "bcc"].contains(&k.to_ascii_lowercase().as_str()) {
                rcpts.extend(submit::addresses(&v));
            }
        }
        message = submit::strip_bcc(&message);
    }
    if rcpts.is_empty() {
        eprintln!("{prog}: no recipients");
        return 64;
    }
    // A bare user name is local.
    for r in rcpts.iter_mut() {
        if !r.contains('@') {
            *r = format!("{r}@localhost");
        }
    }
    let from = match m.opt_str("F") {
        Some(name) => format!("{} <{sender}>", name.replace(['\r', '\n', '<', '>'], "")),
        None => sender.clone(),
    };
    let message = submit::complete_headers(&message, &from, &host);
    let sub = Submission {
        sender,
        rcpts,
        message,
    };
    match submit::submit(&sock, &sub) {
        Ok(done) => {
            let _ = crate::sys::drop_setgid();
            for (rcpt, why) in &done.refused {
                eprintln!("{prog}: <{rcpt}>: {why}");
            }
            match submit::return_refused(&sock, &sub, &done, &host) {
                Ok(()) if done.refused.is_empty() => 0,
                Ok(()) => {
                    eprintln!(
                        "{prog}: the message was returned to <{}> for the refused recipients",
                        sub.sender
                    );
                    0
                }
                Err(e) => {
                    eprintln!("{prog}: {e}");
                    67
                }
            }
        }
        Err(e) if is_unreachable(&e) => {
            let r = submit::write_offline(&root, &sub, offline_gid);
            let _ = crate::sys::drop_setgid();
            match r {
                Ok(_) => {
                    eprintln!("{prog}: the daemon is not running: message queued offline");
                    0
                }
                Err(e2) => {
                    eprintln!("{prog}: the daemon is not running ({e}) and offline/ is not writable: {e2}");
                    75
                }
            }
        }
        Err(e) => {
            let _ = crate::sys::drop_setgid();
            eprintln!("{prog}: {e}");
            // A refusal by the daemon (5xx) or a line the protocol cannot carry is
            // permanent; anything else may pass later.
            let t = e.to_string();
            if t.starts_with('5') || t.contains(": 5") {
                65
            } else {
                75
            }
        }
    }
}

fn is_unreachable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::PermissionDenied
    )
}

/// `sendmail -bs`: an SMTP session on standard input and output.
fn smtp_on_stdio(prog: &str, sock: &Path) -> i32 {
    let mut s = match std::os::unix::net::UnixStream::connect(sock) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{prog}: {}: {e}", sock.display());
            return 75;
        }
    };
    if s.write_all(b"smtp\n").is_err() {
        return 75;
    }
    let Ok(mut reader) = s.try_clone() else {
        return 75;
    };
    let t = std::thread::spawn(move || {
        let _ = io::copy(&mut reader, &mut io::stdout());
    });
    let mut input = io::stdin().lock();
    let mut buf = [0u8; 8192];
    loop {
        match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = t.join();
    0
}

/// `newaliases [-f FILE]`: checks the configuration and its alias tables.
pub fn newaliases(prog: &str, args: &[String]) -> i32 {
    let _ = crate::sys::drop_setgid();
    let file = match args {
        [f, path] if f == "-f" => PathBuf::from(path),
        [] => PathBuf::from(DEFAULT_CONFIG),
        _ => {
            eprintln!("usage: {prog} [-f file]");
            return 64;
        }
    };
    match config::load(&file, &Default::default()) {
        Ok(cfg) => {
            let mut n = 0;
            for a in &cfg.actions {
                if let Some(t) = a.alias {
                    let table = &cfg.tables[t];
                    match table.in_memory() {
                        true => println!("{}: {} aliases", table.name, table.entries().len()),
                        false => println!("{}: served by a table process", table.name),
                    }
                    n += 1;
                }
            }
            if n == 0 {
                println!("no alias table in {}", file.display());
            }
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}
