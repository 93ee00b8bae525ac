//! Tests that keep man/smtpd.conf.5 and smtpd.conf.sample in step with the parser.
//!
//! man/smtpd.conf.5 is the contract of the configuration language. These tests check
//! that every keyword of [`super::KEYWORDS`] is documented there as a keyword, that the
//! defaults and minimums the page states are the parser's, that its examples parse, and
//! that smtpd.conf.sample parses. man/smtpd.8 must show the built-in development
//! configuration as it is.

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
    format!("{:?} {:?}", c.queue, c.smtp)
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
    (".It Cm max-errors", "smtp limit max-errors"),
    (".It Cm max-hops", "smtp limit max-hops"),
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
            // 0 stands for a computed value and cannot be written in the file.
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
    let text = item_text(&page, ".It Ic smtp limit");
    let max: u64 = stated(&text, "at most")
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("smtp limit: no maximum stated in {text:?}"));
    for (head, stmt) in SETTINGS.iter().filter(|(_, s)| s.starts_with("smtp limit")) {
        assert!(conf(&format!("{stmt} {max}")).is_ok(), "{head}: {max}");
        assert!(
            conf(&format!("{stmt} {}", max + 1)).is_err(),
            "{head}: {max} + 1"
        );
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
