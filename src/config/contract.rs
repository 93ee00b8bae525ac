//! Tests that keep the manual pages and smtpd.conf.sample in step with the code.
//!
//! man/smtpd.conf.5 is the contract of the configuration language. These tests check
//! that every keyword of [`super::KEYWORDS`] is documented there as a keyword, that the
//! defaults and minimums the page states are the parser's, that its examples parse, and
//! that smtpd.conf.sample parses; that the delivery settings the examples and the
//! sample use (relay and LMTP destinations, format specifiers) are ones delivery
//! accepts, and that the page's mda example expands as it says. man/smtpd.8 must show
//! the built-in development configuration as it is and document every option of the
//! daemon. man/smtpctl.8 must document every command word of [`crate::control::parse`],
//! every option of the client programs and every counter of `show stats` and `monitor`.

use super::{parse, Config, SmtpConfig, DEVELOPMENT, KEYWORDS};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn conf_5() -> String {
    read("man/smtpd.conf.5")
}

/// Whether a word of an mdoc line is a macro name (`It`, `Cm`, `Ar`, `Ns`, ...).
fn is_macro(word: &str) -> bool {
    let b = word.as_bytes();
    (2..=3).contains(&b.len())
        && b[0].is_ascii_uppercase()
        && b[1..].iter().all(|c| c.is_ascii_lowercase())
}

/// Undoes the mdoc escapes used in the pages.
fn unescape(s: &str) -> String {
    s.replace("\\&", "")
        .replace("\\(dq", "\"")
        .replace("\\(ha", "^")
        .replace("\\e", "\\")
}

/// The words given as arguments of `Ic` and `Cm` macros: what the page shows as keywords.
fn documented_keywords(page: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for line in page.lines().filter_map(|l| l.strip_prefix('.')) {
        let mut current = "";
        for word in line.split_whitespace() {
            if is_macro(word) {
                current = word;
            } else if current == "Ic" || current == "Cm" {
                out.insert(unescape(word).trim_matches('"').to_string());
            }
        }
    }
    out
}

/// The text of the list item whose `.It` line starts with the words of `head`, up to the
/// next item or the end of the list, without mdoc macro names.
fn item_text(page: &str, head: &str) -> String {
    let head: Vec<&str> = head.split_whitespace().collect();
    let mut lines = page.lines();
    let found = lines.by_ref().any(|l| {
        let words: Vec<&str> = l.split_whitespace().collect();
        words.len() >= head.len() && words[..head.len()] == head[..]
    });
    assert!(found, "man/smtpd.conf.5 has no item `{}`", head.join(" "));
    let mut text = Vec::new();
    for line in lines {
        if line.starts_with(".It") || line.starts_with(".El") {
            break;
        }
        let line = line.strip_prefix('.').unwrap_or(line);
        text.extend(
            line.split_whitespace()
                .filter(|w| !is_macro(w))
                .map(unescape),
        );
    }
    text.join(" ")
}

/// The word after `what` in `text` ("default is", "minimum is"), without trailing
/// punctuation.
fn stated<'a>(text: &'a str, what: &str) -> Option<&'a str> {
    let at = text.find(what)? + what.len();
    text[at..]
        .split_whitespace()
        .next()
        .map(|w| w.trim_end_matches(['.', ',', ';', ':']))
}

/// `value` with its number lowered by one, keeping a unit suffix ("1s" -> "0s").
fn one_less(value: &str) -> String {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("not a number: {value}"));
    format!("{}{}", n - 1, &value[digits.len()..])
}

const BASE: &str = "listen on 127.0.0.1\n";

fn conf(extra: &str) -> Result<Config, String> {
    parse(
        &format!("{BASE}{extra}\n"),
        Path::new("/etc/smtpd.conf"),
        &HashMap::new(),
    )
    .map_err(|e| e.to_string())
}

/// The settings a configuration leaves to the parser's defaults.
fn settings(c: &Config) -> String {
    format!("{:?} {:?} {:?}", c.queue, c.smtp, c.control)
}

#[test]
fn every_keyword_is_documented() {
    let page = conf_5();
    let documented = documented_keywords(&page);
    let missing: Vec<&str> = KEYWORDS
        .iter()
        .copied()
        .filter(|k| !documented.contains(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keywords of the parser not documented with Ic or Cm in man/smtpd.conf.5: {missing:?}"
    );
}

/// The `.It` line of each setting in man/smtpd.conf.5, and the statement that sets it.
const SETTINGS: &[(&str, &str)] = &[
    (".It Ic queue path", "queue path"),
    (".It Ic queue ttl", "queue ttl"),
    (".It Ic smtp max-message-size", "smtp max-message-size"),
    (".It Ic smtp timeout", "smtp timeout"),
    (".It Ic smtp sub-addr-delim", "smtp sub-addr-delim"),
    (".It Cm max-rcpt", "smtp limit max-rcpt"),
    (".It Cm max-mails", "smtp limit max-mails"),
    (".It Cm max-command-line", "smtp limit max-command-line"),
    (".It Cm max-text-line", "smtp limit max-text-line"),
    (".It Cm max-sessions", "smtp limit max-sessions"),
    (
        ".It Cm max-sessions-per-address",
        "smtp limit max-sessions-per-address",
    ),
    (
        ".It Cm max-connection-rate",
        "smtp limit max-connection-rate",
    ),
    (".It Cm max-errors", "smtp limit max-errors"),
    (".It Cm max-hops", "smtp limit max-hops"),
    (".It Ic control timeout", "control timeout"),
    (".It Cm max-clients", "control limit max-clients"),
    (
        ".It Cm max-clients-per-user",
        "control limit max-clients-per-user",
    ),
    (".It Ic mda limit max-session", "mda limit max-session"),
];

#[test]
fn documented_defaults_and_minimums_hold() {
    let page = conf_5();
    let base = settings(&conf("").unwrap_or_else(|e| panic!("{e}")));
    for (head, stmt) in SETTINGS {
        let text = item_text(&page, head);
        let default =
            stated(&text, "default is").unwrap_or_else(|| panic!("{head}: no default stated"));
        if default == "0" {
            // 0 stands for a computed value or for no limit: compare with the model's default.
            let field = stmt.rsplit(' ').next().unwrap_or("").replace('-', "_");
            let defaults = format!("{:?}", SmtpConfig::default());
            assert!(
                defaults.contains(&format!(" {field}: 0,")),
                "{head}: documented default 0, defaults are {defaults}"
            );
        } else {
            let c = conf(&format!("{stmt} {default}"))
                .unwrap_or_else(|e| panic!("{head}: documented default {default}: {e}"));
            assert_eq!(
                settings(&c),
                base,
                "{head}: `{stmt} {default}` differs from the default"
            );
        }
        if let Some(min) = stated(&text, "minimum is") {
            assert!(
                conf(&format!("{stmt} {min}")).is_ok(),
                "{head}: documented minimum {min} is refused"
            );
            let below = one_less(min);
            assert!(
                conf(&format!("{stmt} {below}")).is_err(),
                "{head}: {below}, below the documented minimum, is accepted"
            );
        }
    }
    // The upper bound of every limit.
    for statement in ["smtp limit", "control limit"] {
        let text = item_text(&page, &format!(".It Ic {statement}"));
        let max: u64 = stated(&text, "at most")
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("{statement}: no maximum stated in {text:?}"));
        for (head, stmt) in SETTINGS.iter().filter(|(_, s)| s.starts_with(statement)) {
            assert!(conf(&format!("{stmt} {max}")).is_ok(), "{head}: {max}");
            assert!(
                conf(&format!("{stmt} {}", max + 1)).is_err(),
                "{head}: {max} + 1"
            );
        }
    }
}

/// The literal displays (`.Bd -literal` ... `.Ed`) of a page, unescaped, each with the
/// title of the section or subsection it is in.
fn displays(page: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut title = String::new();
    let mut current: Option<String> = None;
    for line in page.lines() {
        if let Some(text) = current.as_mut() {
            if line.starts_with(".Ed") {
                out.push((title.clone(), current.take().unwrap_or_default()));
            } else {
                text.push_str(&unescape(line));
                text.push('\n');
            }
        } else if line.starts_with(".Bd -literal") {
            current = Some(String::new());
        } else if let Some(t) = line.strip_prefix(".Sh ").or(line.strip_prefix(".Ss ")) {
            title = t.to_string();
        }
    }
    out
}

#[test]
fn documented_table_file_parses_as_described() {
    let page = conf_5();
    let (_, text) = displays(&page)
        .into_iter()
        .find(|(t, _)| t == "Table files")
        .unwrap_or_else(|| panic!("no display in `Table files`"));
    let t =
        crate::table::Table::parse("aliases", &text).unwrap_or_else(|(l, e)| panic!("{l}: {e}"));
    let t = t.entries();
    assert_eq!(t.get("POSTMASTER"), Some("root"));
    assert_eq!(t.get("staff"), Some("alice, bob, carol, dave"));
}

#[test]
fn documented_examples_parse() {
    let page = conf_5();
    let examples: Vec<String> = displays(&page)
        .into_iter()
        .filter(|(t, _)| t == "EXAMPLES")
        .map(|(_, text)| text)
        .collect();
    // The display without a listener is the aliases file the others read.
    let (configs, files): (Vec<String>, Vec<String>) =
        examples.into_iter().partition(|e| e.contains("listen on"));
    assert!(!configs.is_empty(), "EXAMPLES shows no configuration");
    let dir = std::env::temp_dir().join(format!("smtpd-contract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let aliases: PathBuf = dir.join("aliases");
    std::fs::write(&aliases, files.concat()).unwrap_or_else(|e| panic!("{e}"));
    for text in &configs {
        let text = text.replace("/etc/mail/aliases", &aliases.display().to_string());
        let c = parse(&text, &dir.join("smtpd.conf"), &HashMap::new());
        assert!(c.is_ok(), "{:?} in EXAMPLES:\n{text}", c.err());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sample_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtpd.conf.sample");
    let text = read("smtpd.conf.sample");
    let c = parse(&text, &path, &HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.listeners.len() >= 2 && c.actions.len() >= 4 && c.rules.len() >= 6);
    // Its first macro can be overridden from the command line, as its comment says.
    let mut m = HashMap::new();
    m.insert("addr".to_string(), "127.0.0.2".to_string());
    let c = parse(&text, &path, &m).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.listeners[0].addrs[0].to_string(), "127.0.0.2:25");
}

#[test]
fn development_config_is_documented() {
    let page = read("man/smtpd.8");
    let shown: Vec<String> = displays(&page)
        .into_iter()
        .map(|(_, text)| text.lines().map(str::trim).collect::<Vec<_>>().join("\n"))
        .collect();
    let statements: Vec<&str> = DEVELOPMENT
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let want = statements.join("\n");
    assert!(
        shown.iter().any(|s| s.contains(&want)),
        "man/smtpd.8 must show the built-in configuration:\n{want}"
    );
}

// ---------------------------------------------------------------- delivery settings

/// The configurations the pages and the sample show: the EXAMPLES of
/// man/smtpd.conf.5 (with a stand-in for the aliases file) and smtpd.conf.sample.
fn shown_configs() -> Vec<(String, Config)> {
    let page = conf_5();
    let mut out = Vec::new();
    for (title, text) in displays(&page) {
        if title != "EXAMPLES" || !text.contains("listen on") {
            continue;
        }
        let text = text.replace(
            "table aliases file:/etc/mail/aliases",
            "table aliases { root = alice }",
        );
        let c = parse(&text, Path::new("/etc/smtpd.conf"), &HashMap::new())
            .unwrap_or_else(|e| panic!("{e} in EXAMPLES:\n{text}"));
        out.push(("man/smtpd.conf.5 EXAMPLES".to_string(), c));
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtpd.conf.sample");
    let c =
        parse(&read("smtpd.conf.sample"), &path, &HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
    out.push(("smtpd.conf.sample".to_string(), c));
    out
}

fn format_ctx() -> crate::format::FormatCtx {
    crate::format::FormatCtx {
        sender: "alice@example.org".into(),
        rcpt: "Bob+lists@Example.net".into(),
        dest: "bob@example.net".into(),
        user: "bob".into(),
        home: "/home/bob".into(),
        subaddr_delim: '+',
    }
}

#[test]
fn shown_delivery_settings_are_usable() {
    use crate::config::Method;
    use crate::format::{expand_command, expand_path};
    use crate::nexthop::Target;
    let ctx = format_ctx();
    let mut relays = 0;
    for (origin, c) in shown_configs() {
        for a in &c.actions {
            let what = format!("{origin}: action {:?}", a.name);
            match &a.method {
                Method::Maildir { path: Some(p), .. } => {
                    let out = expand_path(p, &ctx).unwrap_or_else(|e| panic!("{what}: {e}"));
                    assert!(!out.contains("%{"), "{what}: {out}");
                }
                Method::Mda(cmd) => {
                    expand_command(cmd, &ctx).unwrap_or_else(|e| panic!("{what}: {e}"));
                }
                Method::Lmtp { dest, .. } => {
                    Target::parse(dest, 24).unwrap_or_else(|e| panic!("{what}: {e}"));
                }
                Method::Relay(r) if r.host.is_some() => relays += 1,
                _ => {}
            }
        }
    }
    assert!(
        relays >= 2,
        "the examples and the sample should show smarthosts"
    );
}

/// The mda example of man/smtpd.conf.5 runs the script the page says it runs.
#[test]
fn documented_mda_example_expands_as_stated() {
    use crate::config::Method;
    let page = conf_5();
    let (_, text) = displays(&page)
        .into_iter()
        .find(|(t, _)| t == "The mda command")
        .unwrap_or_else(|| panic!("no display in `The mda command`"));
    let c = conf(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    let Some(Method::Mda(cmd)) = c.actions.first().map(|a| &a.method) else {
        panic!("the display is not an mda action: {text}");
    };
    let (script, args) =
        crate::format::expand_command(cmd, &format_ctx()).unwrap_or_else(|e| panic!("{e}"));
    let stated = page
        .split(".Ed\n.Pp\nruns\n.Ql ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .map(unescape)
        .unwrap_or_else(|| panic!("no `runs` line after the mda example"));
    assert_eq!(script, stated);
    assert_eq!(args, ["alice@example.org", "bob"]);
}

/// Local programs (sendmail: the control socket, `EHLO localhost`) and bounces (a
/// local client with the null sender and the server name as HELO) can reach remote
/// recipients with the sample configuration.
#[test]
fn sample_lets_local_mail_and_bounces_out() {
    use crate::mail::address::Mailbox;
    use crate::mail::peer::{MatchCtx, Peer};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtpd.conf.sample");
    let c =
        parse(&read("smtpd.conf.sample"), &path, &HashMap::new()).unwrap_or_else(|e| panic!("{e}"));
    let client = Peer {
        addr: None,
        local: true,
        server_name: "mx.example.org".into(),
        tag: None,
        hostname: None,
        tls: false,
        auth: None,
    };
    let remote = Mailbox {
        local: "carol".into(),
        domain: "elsewhere.example".into(),
    };
    let user = Mailbox {
        local: "alice".into(),
        domain: "example.org".into(),
    };
    let null = Mailbox::default();
    for (helo, sender) in [("localhost", &user), ("mx.example.org", &null)] {
        let ctx = MatchCtx {
            client: &client,
            helo,
            sender,
        };
        let d = crate::ruleset::decide(&c, &ctx, &remote).unwrap_or(None);
        assert!(
            matches!(d, Some(super::Decision::Action(_))),
            "HELO {helo}, sender <{sender}>: {d:?}"
        );
    }
}

// ------------------------------------------------------------------- smtpctl(8)

fn smtpctl_8() -> String {
    read("man/smtpctl.8")
}

/// The path (relative to the crate) and text of the source file under src/ that holds
/// `needle`, so that the tests follow code that moves between modules.
fn source_with(needle: &str) -> (String, String) {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    files
        .iter()
        .filter(|p| !p.ends_with("config/contract.rs"))
        .find_map(|p| {
            let text = std::fs::read_to_string(p).ok()?;
            let rel = p.strip_prefix(root).unwrap_or(p).display().to_string();
            text.contains(needle).then_some((rel, text))
        })
        .unwrap_or_else(|| panic!("no source file under src/ holds {needle:?}"))
}

/// The string literals of the first `&[...]` array after each `marker` in `src`.
fn arrays_after(src: &str, marker: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in src.match_indices(marker) {
        let rest = &src[at..];
        let Some(open) = rest.find("&[") else {
            continue;
        };
        let Some(close) = rest[open..].find(']') else {
            continue;
        };
        let list: Vec<String> = rest[open..open + close]
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        out.push(list);
    }
    out
}

/// The words given as arguments of the mdoc macro `name` (`Fl`, `Li`, ...).
fn macro_words(page: &str, name: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for line in page.lines().filter_map(|l| l.strip_prefix('.')) {
        let mut current = "";
        for word in line.split_whitespace() {
            if is_macro(word) {
                current = word;
            } else if current == name {
                out.insert(unescape(word));
            }
        }
    }
    out
}

#[test]
fn every_control_verb_is_documented() {
    let (_, src) = source_with("let verb = pick(");
    let verbs = arrays_after(&src, "let verb = pick(")
        .into_iter()
        .next()
        .unwrap_or_default();
    assert!(
        verbs.contains(&"show".to_string()) && verbs.len() >= 5,
        "cannot find the verbs of control::parse: {verbs:?}"
    );
    // The list read from the source is the parser's: each verb is accepted...
    for v in &verbs {
        if let Err(e) = crate::control::parse(v) {
            assert!(
                !e.starts_with("unknown word") && !e.starts_with("ambiguous word"),
                "{v}: {e}"
            );
        }
    }
    // ...and no other: every prefix the parser resolves belongs to a verb of the list.
    let letters = 'a'..='z';
    let prefixes = letters.clone().map(String::from).chain(
        letters
            .clone()
            .flat_map(|a| letters.clone().map(move |b| format!("{a}{b}"))),
    );
    for p in prefixes {
        match crate::control::parse(&p) {
            Err(e) if e.starts_with("unknown word") || e.starts_with("ambiguous word") => {}
            _ => assert!(
                verbs.iter().any(|v| v.starts_with(&p)),
                "control::parse accepts {p:?}, which starts no verb of {verbs:?}"
            ),
        }
    }
    let page = smtpctl_8();
    let items: HashSet<String> = page
        .lines()
        .filter_map(|l| l.strip_prefix(".It Cm "))
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape)
        .collect();
    let missing: Vec<&String> = verbs.iter().filter(|v| !items.contains(*v)).collect();
    assert!(
        missing.is_empty(),
        "verbs of control::parse without an `.It Cm VERB` item in man/smtpctl.8: {missing:?}"
    );
    // The words that follow a verb (show queue, pause mta, log verbose...).
    let keywords = documented_keywords(&page);
    let words: Vec<String> = arrays_after(&src, "pick(")
        .into_iter()
        .skip(1)
        .flatten()
        .collect();
    assert!(
        words.len() >= 6,
        "cannot find the argument words of control::parse"
    );
    let missing: Vec<&String> = words.iter().filter(|w| !keywords.contains(*w)).collect();
    assert!(
        missing.is_empty(),
        "command words of control::parse not documented with Cm in man/smtpctl.8: {missing:?}"
    );
}

/// The short options a program declares with getopts (`opts.optflag("t", ...)`).
fn getopts_options(src: &str) -> Vec<String> {
    src.match_indices("opts.opt")
        .map(|(at, _)| src[at..].split('"').nth(1).unwrap_or_default().to_string())
        .collect()
}

/// Every option of the daemon and of the client programs is documented with `Fl`.
#[test]
fn every_option_is_documented() {
    // The daemon's options each have an item; sendmail's ignored ones are only listed.
    for (needle, page, at_least, items_only) in [
        ("fn usage(prog: &str, opts", "man/smtpd.8", 7, true),
        ("pub fn sendmail(", "man/smtpctl.8", 10, false),
    ] {
        let (source, code) = source_with(needle);
        let flags = getopts_options(&code);
        assert!(
            flags.len() >= at_least && flags.iter().all(|f| f.len() == 1),
            "cannot find the options in {source}: {flags:?}"
        );
        let text = read(page);
        // `-b` is documented as its modes (`-bs`, `-bp`...), `-o` also as `-oi`.
        let documented: HashSet<String> = if items_only {
            text.lines()
                .filter_map(|l| l.strip_prefix(".It Fl "))
                .filter_map(|l| l.split_whitespace().next())
                .map(unescape)
                .collect()
        } else {
            macro_words(&text, "Fl")
        };
        let missing: Vec<&String> = flags
            .iter()
            .filter(|f| !documented.iter().any(|d| d.starts_with(f.as_str())))
            .collect();
        assert!(
            missing.is_empty(),
            "options of {source} not documented with Fl in {page}: {missing:?}"
        );
    }
}

#[test]
fn show_stats_and_monitor_keys_are_documented() {
    let literals = macro_words(&smtpctl_8(), "Li");
    // `show stats` keys are list items (`.It Li KEY`), `monitor` keys are shown as
    // `Li KEY= Ns Ar n`.
    for (func, suffix) in [("fn stats_text", ""), ("fn monitor_line", "=")] {
        let (source, src) = source_with(func);
        let at = src.find(func).unwrap_or_default();
        let format = src[at..].split('"').nth(1).unwrap_or_default();
        let keys: Vec<&str> = format
            .split("\\n")
            .flat_map(|l| l.split(' '))
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k))
            .collect();
        assert!(keys.len() >= 5, "{source}: {func}: no keys in {format:?}");
        for k in keys {
            assert!(
                literals.contains(&format!("{k}{suffix}")),
                "{func}: key {k} is not documented with Li in man/smtpctl.8"
            );
        }
    }
}
