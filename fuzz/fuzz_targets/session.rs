//! The SMTP session machine driven the way `smtp::conn` drives it.
//!
//! Input: an 8-byte header, then the client's byte stream.
//!
//! | byte | meaning |
//! | --- | --- |
//! | 0 | flags: bits 0-1 input buffer size, bit 2 local client, bits 3-4 client address, bit 5 long server name, bit 6 timeouts/write errors, bit 7 async commits |
//! | 1 | bits 0-2 max-rcpt (1..=8), bits 3-4 SMTP AUTH (off, optional, required, required without TLS), bit 5 a senders table, bit 7 real ruleset/alias expansion as the policy |
//! | 2 | max-mails (1..=4) |
//! | 3 | max-errors (1..=32) |
//! | 4 | max-hops (1..=8) |
//! | 5 | max-message-size (from a table) |
//! | 6-7 | seed of the deterministic choices: read sizes, lookup answers, spool results |
//!
//! The stream goes through `LineBuf` in chunks, and lines are routed exactly as
//! `Conn::process` routes them (BDAT chunks by count, with `next_chunk` or `skip`); `Action`s are carried out in order as `Conn::run_actions`
//! does, lookups answered at once (the lookup threads' answers, sometimes after the
//! session was closed meanwhile). The checks: no panic; every reply renders to well-formed lines of at most 512
//! octets; nothing follows `Close` and no input is taken after it; a commit happens
//! only for an opened message with at least one accepted recipient since the last MAIL,
//! and never for content that held a bare CR/LF, a NUL, an over-long line, too many
//! Received headers or too many octets, nor for unauthorised pipelining after ".".
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::config::Config;
use smtpd::config::{AuthMode, ListenerAuth};
use smtpd::expand::expand;
use smtpd::filter::phase::FilterVerdict;
use smtpd::linebuf::{Line, LineBuf, Text};
use smtpd::lookup::{Lookup, LookupAnswer, RcptQuery, SenderUser};
use smtpd::mail::auth::AuthResult;
use smtpd::mail::delivery::{Delivery, Dest};
use smtpd::mail::peer::Peer;
use smtpd::mail::reply::Reply;
use smtpd::mail::TlsFacts;
use smtpd::smtp::command::Command;
use smtpd::smtp::session::{Action, DataLine, Limits, Session, State};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::OnceLock;

/// `max-command-line` and `max-text-line` defaults, less the CR LF, as `Conn` uses them.
const MAX_COMMAND: usize = 512 - 2;
const MAX_TEXT: usize = 1000 - 2;
const BUF_SIZES: [usize; 4] = [16 * 1024, 4096, 1024, 600];
const MSG_SIZES: [u64; 8] = [0, 1, 64, 1000, 4096, 65536, 10 << 20, u64::MAX];

#[derive(Clone)]
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
    /// True once in `n`.
    fn one_in(&mut self, n: u32) -> bool {
        self.next() % n == 0
    }
}

/// The lookup threads' answers: deterministic from the seed, or (`real`) the daemon's
/// own ruleset and alias expansion over [`CONF`].
struct MockPolicy {
    rng: Rng,
    real: Option<&'static Config>,
}

/// The configuration the `real` policy expands recipients with (inline tables only, so
/// no file is read; user names go through getpwnam).
const CONF: &str = r#"
    listen on 127.0.0.1 port 2525 hostname mx.example.org
    table aliases { postmaster = root, ops = "root, info@example.net, |/usr/bin/logger, /var/log/mail.copy", loop1 = loop2, loop2 = "loop1, root", nobody2 = no-such-user-zz, all = "ops, loop1, x@relay.example" }
    table vmap { "info@example.net" = "root, ops@example.org", "@catch.example" = root }
    action "local" mbox alias <aliases>
    action "virt" maildir virtual <vmap>
    action "out" relay
    match from any for domain "example.org" action "local"
    match from any for domain { example.net, catch.example } action "virt"
    match from any for local action "local"
    match from any for domain "relay.example" action "out"
    match from any for domain "reject.example" reject
"#;

/// `SMTPD_FUZZ_TRACE=1` prints the dialog to stderr (for reading a reproducer).
fn trace() -> bool {
    static T: OnceLock<bool> = OnceLock::new();
    *T.get_or_init(|| std::env::var_os("SMTPD_FUZZ_TRACE").is_some_and(|v| v == "1"))
}

fn real_config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(|| {
        smtpd::config::parse(CONF, Path::new("fuzz.conf"), &HashMap::new())
            .unwrap_or_else(|e| panic!("fuzz config does not parse: {e}"))
    })
}

impl MockPolicy {
    fn has_space(&mut self) -> bool {
        !self.rng.one_in(8)
    }

    fn resolve(&mut self, q: &RcptQuery) -> Result<Vec<Delivery>, Reply> {
        let (ctx, rcpt) = (q.ctx(), &q.rcpt);
        if let Some(cfg) = self.real {
            let r = expand(cfg, &ctx, rcpt);
            if let Ok(d) = &r {
                assert!(!d.is_empty(), "expand accepted {rcpt} with no delivery");
            }
            return r;
        }
        if rcpt.local.starts_with("no") {
            // Like expand's "User unknown": the address goes into the reply text.
            return Err(Reply::new(
                550,
                "5.1.1",
                format!("<{rcpt}>: Recipient address rejected: User unknown"),
            ));
        }
        if rcpt.domain.starts_with("rej") && !ctx.client.local {
            return Err(Reply::REJECTED);
        }
        match self.rng.next() % 16 {
            0 => Err(Reply::NO_RULE),
            1 => Err(Reply::LOCAL_ERROR),
            n => Ok((0..1 + n as usize % 3)
                .map(|i| Delivery {
                    action: i,
                    dest: if i == 0 {
                        Dest::User(rcpt.local.clone())
                    } else {
                        Dest::Relay(rcpt.to_string())
                    },
                })
                .collect()),
        }
    }
}

/// What the harness knows of the transaction, independently of the session.
#[derive(Default, Debug)]
struct Model {
    /// Recipients accepted (250 2.1.5) since the last accepted MAIL; None: no MAIL.
    rcpts: Option<usize>,
    /// OpenMessage was answered with Ok and 354 was sent.
    opened: bool,
    /// Content seen since 354.
    bare: bool,
    nul: bool,
    too_long: bool,
    /// A write to the message file failed.
    write_error: bool,
    in_headers: bool,
    hops: usize,
    size: u64,
    /// Octets of the content line in progress.
    line_len: usize,
    /// The session said Close.
    closed: bool,
    /// The open message is BINARYMIME: its body (after the header section) is binary.
    binary: bool,
    /// A Commit is waiting for its answer (asynchronous commits).
    commit_pending: bool,
}

struct Harness {
    s: Session,
    policy: MockPolicy,
    rng: Rng,
    limits: Limits,
    m: Model,
    async_commits: bool,
    /// Timeouts and write errors happen.
    chaos: bool,
    next_msgid: u32,
}

/// Renders a reply and checks its wire form.
fn check_reply(r: &Reply) {
    let mut wire = Vec::new();
    r.render(&mut wire);
    assert!(!wire.is_empty(), "reply {r:?} renders to nothing");
    assert!(wire.ends_with(b"\r\n"), "reply {r:?} does not end in CR LF");
    let lines: Vec<&[u8]> = wire[..wire.len() - 2].split(|&b| b == b'\n').collect();
    for (i, l) in lines.iter().enumerate() {
        // Each piece but the last lost its "\n"; all must have ended in "\r\n".
        let l = if i + 1 < lines.len() {
            assert!(l.ends_with(b"\r"), "reply {r:?}: bare LF in {wire:?}");
            &l[..l.len() - 1]
        } else {
            l
        };
        let shown = String::from_utf8_lossy(l);
        assert!(
            !l.contains(&b'\r'),
            "reply {r:?}: bare CR in line {shown:?}"
        );
        assert!(
            l.len() + 2 <= 512,
            "reply line of {} octets: {shown:?}",
            l.len() + 2
        );
        assert!(l.len() >= 4, "reply line too short: {shown:?}");
        assert!(
            l[..3].iter().all(u8::is_ascii_digit),
            "reply line without code: {shown:?}"
        );
        assert!((b'2'..=b'5').contains(&l[0]), "reply code class: {shown:?}");
        let sep = if i + 1 < lines.len() { b'-' } else { b' ' };
        assert_eq!(l[3], sep, "reply separator in {shown:?}");
        assert_eq!(&l[..3], r.code.to_string().as_bytes(), "code of {shown:?}");
    }
}

impl Harness {
    /// Carries out actions in order, as `Conn::run_actions` does (answers are appended).
    fn run(&mut self, mut actions: Vec<Action>) {
        let mut i = 0;
        while i < actions.len() {
            let action = std::mem::replace(&mut actions[i], Action::Close);
            i += 1;
            if trace() {
                match &action {
                    Action::Reply(r) => {
                        let mut w = Vec::new();
                        r.render(&mut w);
                        eprint!("S: {}", String::from_utf8_lossy(&w));
                    }
                    a => eprintln!("   {a:?}"),
                }
            }
            assert!(!self.m.closed, "{action:?} after Close");
            match action {
                Action::Reply(r) => {
                    check_reply(&r);
                    self.on_reply(&r);
                }
                Action::OpenMessage => {
                    assert_eq!(
                        self.s.state(),
                        State::Mail,
                        "OpenMessage outside a transaction"
                    );
                    assert!(
                        self.m.rcpts.unwrap_or(0) > 0,
                        "OpenMessage without an accepted RCPT"
                    );
                    let r = match self.rng.next() % 16 {
                        0 => Err(Reply::NO_STORAGE),
                        1 => Err(Reply::LOCAL_ERROR),
                        _ => {
                            self.next_msgid = self.next_msgid.wrapping_add(1);
                            Ok(self.next_msgid)
                        }
                    };
                    let ok = r.is_ok();
                    if ok {
                        // Conn writes the Received header right after opening.
                        let _ = self.s.received_header("Thu, 1 Jan 1970 00:00:00 +0000");
                    }
                    self.s.on_opened(r, &mut actions);
                    if ok && self.s.in_chunk() {
                        // BDAT: the content starts without a 354.
                        self.start_content();
                        self.m.binary = self.s.tx().is_some_and(Session::is_binary);
                    }
                }
                Action::Commit => {
                    self.check_commit();
                    if self.async_commits && self.rng.one_in(2) {
                        self.m.commit_pending = true;
                    } else {
                        self.answer_commit(&mut actions);
                    }
                }
                Action::Discard => {
                    self.m.opened = false;
                }
                Action::Filter(q) => {
                    assert!(
                        !self.s.wants_input(),
                        "filter query, yet the session wants input"
                    );
                    let v = match self.rng.next() % 10 {
                        0 => FilterVerdict::Reject(Reply::new(550, "5.7.1", "filtered")),
                        1 => FilterVerdict::Reject(Reply::new(451, "4.7.0", "later")),
                        2 => FilterVerdict::Disconnect(Reply::new(421, "4.7.0", "bye")),
                        3 => FilterVerdict::Proceed {
                            rewrite: None,
                            junk: true,
                        },
                        4 => FilterVerdict::Proceed {
                            rewrite: Some("rewritten@example.org".into()),
                            junk: false,
                        },
                        5 => FilterVerdict::Proceed {
                            rewrite: Some("not an address".into()),
                            junk: false,
                        },
                        _ => FilterVerdict::Proceed {
                            rewrite: None,
                            junk: false,
                        },
                    };
                    if trace() {
                        eprintln!("   filter {q:?} -> {v:?}");
                    }
                    self.s.on_filter_result(v, &mut actions);
                }
                Action::Lookup(l) => {
                    assert!(!self.s.wants_input(), "lookup, yet the session wants input");
                    let a = match &l {
                        Lookup::Space(_) => LookupAnswer::Space(self.policy.has_space()),
                        Lookup::Rcpt(q) => LookupAnswer::Rcpt(self.policy.resolve(q)),
                        Lookup::Sender(q) => {
                            // The harness's sessions are network ones: a sender is
                            // checked for an authenticated user only.
                            match &q.user {
                                SenderUser::Auth(user) => assert_eq!(
                                    self.s.auth_user(),
                                    Some(user.as_str()),
                                    "sender check without AUTH"
                                ),
                                SenderUser::Local { .. } => {
                                    panic!("a local sender check in a network session")
                                }
                            }
                            LookupAnswer::Sender(match self.rng.next() % 4 {
                                0 => Err(Reply::SENDER_NOT_OWNED),
                                1 => Err(Reply::LOCAL_ERROR),
                                _ => Ok(()),
                            })
                        }
                    };
                    if trace() {
                        eprintln!("   lookup {l:?} -> {a:?}");
                    }
                    if self.chaos && self.rng.one_in(16) {
                        // A timeout while the lookup is in flight: its answer is dropped.
                        let mut closing = Vec::new();
                        self.s.close(Reply::TIMEOUT, &mut closing);
                        let n = closing.len();
                        self.s.on_lookup(a, &mut closing);
                        assert_eq!(closing.len(), n, "a closed session answered a lookup");
                        actions.extend(closing);
                    } else {
                        self.s.on_lookup(a, &mut actions);
                    }
                }
                Action::StartTls => {
                    // The glue drops what was buffered and reports the handshake; the
                    // session starts over (its state then resets the model below).
                    assert!(
                        !self.s.wants_input(),
                        "StartTls, yet the session wants input"
                    );
                    assert!(self.s.tls().is_none(), "StartTls with TLS up");
                    self.s.on_tls(TlsFacts {
                        version: "TLSv1.3",
                        cipher: "TLS_AES_256_GCM_SHA384",
                        bits: 256,
                        sni: None,
                        subject: None,
                    });
                    assert_eq!(self.s.state(), State::Connected);
                }
                Action::Authenticate(c) => {
                    assert!(
                        !self.s.wants_input(),
                        "AUTH check, yet the session wants input"
                    );
                    assert!(self.s.tls().is_some(), "AUTH check without TLS");
                    assert!(!c.credentials.user.is_empty());
                    let r = match self.rng.next() % 4 {
                        0 => AuthResult::PermFail,
                        1 => AuthResult::TempFail,
                        _ => AuthResult::Ok,
                    };
                    self.s.on_auth(r, &mut actions);
                }
                Action::AuthReport { user, code, .. } => {
                    // A client may give an empty user name: refused without a
                    // check, and reported as given; never accepted.
                    assert!(!user.is_empty() || code != 235, "AUTH accepted without a user");
                    assert!(matches!(code / 100, 2 | 4 | 5), "AUTH_RESULT of a {code}");
                }
                Action::Close => {
                    self.m.closed = true;
                    assert!(!self.s.wants_input(), "Close, yet the session wants input");
                    assert_eq!(self.s.state(), State::Quit);
                }
            }
        }
        // Ready and Connected mean no transaction.
        if matches!(
            self.s.state(),
            State::Ready | State::Connected | State::Quit
        ) {
            self.m.rcpts = None;
            self.m.opened = false;
        }
    }

    /// Takes buffered octets of a BDAT chunk as `Conn::read_chunk` does; false when
    /// more input is needed.
    fn chunk(&mut self, lb: &mut LineBuf, actions: &mut Vec<Action>) -> bool {
        let before = self.s.chunk_left();
        let mut left = before;
        if left > 0 {
            if self.s.chunk_refused() {
                let more = lb.skip(&mut left);
                self.s.chunk_read(before - left);
                if !more {
                    return false;
                }
            } else {
                let Text::Piece {
                    bytes,
                    first,
                    last,
                    bare,
                } = lb.next_chunk(&mut left)
                else {
                    return false;
                };
                // A CR that ended the chunk before and meets no LF comes out alone,
                // taking no octet of this one.
                let held_cr = bytes == b"\r" && before == left;
                assert!(
                    held_cr || before - left >= bytes.len() as u64,
                    "a piece past its octets"
                );
                self.s.chunk_read(before - left);
                if trace() {
                    eprintln!(
                        "C# {}{}",
                        bytes.escape_ascii(),
                        if last { "" } else { " (continued)" }
                    );
                }
                let binary = self.saw_chunk(bytes, first, last, bare, before - left);
                let v = self.s.on_chunk_data(bytes, first, last, bare);
                self.check_stored(&v, binary, bare);
            }
            if left > 0 {
                return true;
            }
        }
        if self.s.on_chunk_end(actions) {
            if let Some(Text::Piece {
                bytes, first, bare, ..
            }) = lb.end_content()
            {
                let binary = self.saw_chunk(bytes, first, true, bare, 0);
                let v = self.s.on_chunk_tail(bytes, first, bare);
                self.check_stored(&v, binary, bare);
            }
            self.s.on_data_end(false, actions);
        }
        true
    }

    /// What the session stores of a chunk's piece is what the model allows.
    fn check_stored(&self, v: &DataLine, binary: bool, bare: bool) {
        let m = &self.m;
        match v {
            DataLine::Store(b) => {
                assert!(!binary, "a binary body stored as text");
                assert!(!bare && !b.contains(&b'\r') && !b.contains(&b'\n') && !b.contains(&0));
                assert!(
                    !(m.nul || m.too_long || m.bare || m.write_error),
                    "stored content of a refused message"
                );
            }
            DataLine::Raw(..) => assert!(binary, "raw octets outside a binary body"),
            DataLine::End => panic!("a dot ended a chunked message"),
            DataLine::Drop => {}
        }
    }

    fn answer_commit(&mut self, actions: &mut Vec<Action>) {
        let r = match self.rng.next() % 8 {
            0 => Err(Reply::NO_STORAGE),
            1 => Err(Reply::LOCAL_ERROR),
            _ => Ok(()),
        };
        if trace() {
            eprintln!("   commit answer {r:?}");
        }
        self.s.on_committed(r, actions);
    }

    fn on_reply(&mut self, r: &Reply) {
        match (r.code, r.esc) {
            (250, "2.1.0") => {
                assert!(self.m.rcpts.is_none(), "MAIL accepted inside a transaction");
                self.m.rcpts = Some(0);
            }
            (250, "2.1.5") => {
                let n = self.m.rcpts.as_mut().expect("RCPT accepted without MAIL");
                *n += 1;
                assert!(
                    *n <= self.limits.max_rcpt,
                    "more than max-rcpt recipients accepted"
                );
            }
            (354, _) => {
                assert!(
                    self.m.rcpts.unwrap_or(0) > 0,
                    "354 without an accepted RCPT"
                );
                assert!(self.s.in_data(), "354 but not in DATA");
                assert!(
                    !self.s.tx().is_some_and(Session::is_binary),
                    "354 to a BINARYMIME transaction"
                );
                self.start_content();
                self.m.binary = false;
            }
            _ => {}
        }
    }

    fn check_commit(&mut self) {
        let m = &self.m;
        assert_eq!(
            self.s.state(),
            State::Commit,
            "Commit outside the Commit state"
        );
        assert!(m.opened, "Commit of a message that was not opened");
        let n = m.rcpts.unwrap_or(0);
        assert!(n > 0, "Commit without an accepted RCPT since the last MAIL");
        let tx = self.s.tx().expect("Commit without a transaction");
        assert_eq!(
            tx.rcpts.len(),
            n,
            "session and harness disagree on the recipients"
        );
        assert!(tx.msgid.is_some(), "Commit without a message id");
        assert!(!m.bare, "Commit of content with a bare CR or LF");
        assert!(!m.nul, "Commit of content with a NUL");
        assert!(!m.too_long, "Commit of content with an over-long line");
        assert!(
            !m.write_error,
            "Commit of a message whose file write failed"
        );
        assert!(
            m.hops < self.limits.max_hops,
            "Commit of a looping message ({} hops)",
            m.hops
        );
        assert!(
            m.size <= self.limits.max_message_size,
            "Commit of {} octets",
            m.size
        );
        assert_eq!(tx.size, m.size, "session and harness disagree on the size");
    }

    /// A message was opened: its content starts.
    fn start_content(&mut self) {
        self.m.opened = true;
        self.m.bare = false;
        self.m.nul = false;
        self.m.too_long = false;
        self.m.write_error = false;
        self.m.in_headers = true;
        self.m.hops = 0;
        self.m.size = 0;
    }

    /// Tracks a content line the way RFC 5321 sees it (independently of the session).
    fn saw_data(&mut self, piece: &[u8], first: bool, last: bool, bare: bool) {
        let piece = match first {
            true => piece.strip_prefix(b".").unwrap_or(piece),
            false => piece,
        };
        self.m.size += piece.len() as u64 + if last { 2 } else { 0 };
        self.saw_text(piece, first, last, bare);
    }

    /// A piece of a BDAT chunk (`octets` of the chunk consumed for it): text but in
    /// the body of a BINARYMIME message, which may hold anything. True when it is
    /// binary.
    fn saw_chunk(
        &mut self,
        piece: &[u8],
        first: bool,
        last: bool,
        bare: bool,
        octets: u64,
    ) -> bool {
        self.m.size += octets;
        if self.m.binary && !self.m.in_headers {
            return true;
        }
        self.saw_text(piece, first, last, bare);
        false
    }

    /// The rules of text content for a piece, its dot already removed.
    fn saw_text(&mut self, piece: &[u8], first: bool, last: bool, bare: bool) {
        if first {
            self.m.line_len = 0;
        }
        self.m.line_len += piece.len();
        self.m.too_long |= self.m.line_len + 2 > MAX_TEXT + 2;
        self.m.bare |= bare;
        self.m.nul |= piece.contains(&0);
        if self.m.in_headers && !bare && first {
            if last && piece.is_empty() {
                self.m.in_headers = false;
            } else if piece.len() >= 9 && piece[..9].eq_ignore_ascii_case(b"received:") {
                self.m.hops += 1;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let flags = data[0];
    let limits = Limits {
        max_message_size: MSG_SIZES[usize::from(data[5] % 8)],
        max_rcpt: 1 + usize::from(data[1] % 8),
        max_mails: 1 + usize::from(data[2] % 4),
        max_errors: 1 + usize::from(data[3] % 32),
        max_hops: 1 + usize::from(data[4] % 8),
        max_text_line: MAX_TEXT + 2,
        max_command_line: MAX_COMMAND + 2,
        max_auth_failures: 3,
    };
    let seed = u32::from(u16::from_le_bytes([data[6], data[7]])) | 0x1_0000;
    let addr: Option<IpAddr> = match (flags >> 3) & 3 {
        0 => Some(IpAddr::from([192, 0, 2, 7])),
        1 => Some(IpAddr::from([0xffff_u16; 8])),
        2 => Some(IpAddr::from([127, 0, 0, 1])),
        _ => None,
    };
    let long_name = flags & 0x20 != 0;
    let server_name = if long_name {
        // A 253-octet host name: the longest a DNS name can be.
        let mut n = "a".repeat(62);
        n.push_str(&".b".repeat(95));
        n.truncate(253);
        n
    } else {
        "mx.example.org".to_string()
    };
    let client = Peer {
        addr,
        local: flags & 4 != 0,
        server_name,
        tag: None,
        hostname: None,
        tls: false,
        auth: None,
    };
    let chaos = flags & 0x40 != 0;
    let mut out = Vec::new();
    // A quarter of the runs have a filter chain on some phases (protocol event bits:
    // connect .. data, and end of message).
    let hooks = if seed % 4 == 0 {
        (seed >> 16) as u32 & 0x2ff
    } else {
        0
    };
    let mut s = Session::new(1, client, limits.clone(), hooks, &mut out);
    // A third of the runs offer STARTTLS, a third require it; of the rest, three in
    // four are smtps sessions, protected from the first byte.
    match seed % 3 {
        1 => s.offer_starttls(false),
        2 => s.offer_starttls(true),
        _ if (data[1] >> 3) & 3 != 3 => s.on_tls(TlsFacts {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
            bits: 256,
            sni: None,
            subject: None,
        }),
        _ => {}
    }
    let mode = [
        AuthMode::Off,
        AuthMode::Optional,
        AuthMode::Required,
        AuthMode::Required,
    ][usize::from((data[1] >> 3) & 3)];
    s.set_auth(ListenerAuth {
        mode,
        table: Some(0),
        senders: (data[1] & 0x20 != 0).then_some(0),
        masquerade: true,
        received_auth: true,
    });
    let mut h = Harness {
        s,
        policy: MockPolicy {
            rng: Rng(seed ^ 0x5bd1_e995),
            real: (data[1] & 0x80 != 0).then(real_config),
        },
        rng: Rng(seed),
        limits,
        m: Model::default(),
        async_commits: flags & 0x80 != 0,
        chaos,
        next_msgid: 0,
    };
    h.run(out);

    let input = &data[8..];
    let cap = BUF_SIZES[usize::from(flags & 3)];
    let mut lb = LineBuf::new(cap);
    let mut pos = 0;
    let mut stalls = 0;
    while !h.m.closed {
        // Conn::process: feed every buffered line while the session wants input.
        while h.s.wants_input() && !h.m.closed {
            let mut actions = Vec::new();
            if h.s.in_chunk() {
                if !h.chunk(&mut lb, &mut actions) {
                    break;
                }
            } else if h.s.in_data() {
                match lb.next_text() {
                    Text::Partial => break,
                    Text::Piece {
                        bytes,
                        first,
                        last,
                        bare,
                    } => {
                        if trace() {
                            eprintln!(
                                "C| {}{}{}",
                                bytes.escape_ascii(),
                                if bare { " (bare)" } else { "" },
                                if last { "" } else { " (continued)" }
                            );
                        }
                        let end = first && last && bytes == b".";
                        if !end {
                            h.saw_data(bytes, first, last, bare);
                        }
                        match h.s.on_data(bytes, first, last, bare) {
                            DataLine::Store(b) => {
                                assert!(!bare, "stored a line with a bare CR/LF");
                                assert!(
                                    !b.contains(&b'\r') && !b.contains(&b'\n') && !b.contains(&0)
                                );
                                let m = &h.m;
                                assert!(
                                    !(m.nul || m.too_long || m.bare || m.write_error),
                                    "stored content of a refused message"
                                );
                            }
                            DataLine::Drop => {}
                            DataLine::Raw(..) => panic!("raw octets in DATA"),
                            DataLine::End => {
                                assert!(end, "End for a piece that is not a lone dot");
                                let pipelined = lb.pending() > 0;
                                let esmtp = h.s.esmtp();
                                h.s.on_data_end(pipelined, &mut actions);
                                if pipelined && !esmtp {
                                    assert!(
                                        !actions.contains(&Action::Commit),
                                        "commit of unauthorised pipelining"
                                    );
                                }
                            }
                        }
                    }
                }
            } else {
                // AUTH lines may be longer, as far as the buffer holds them.
                match lb.next_command(h.s.command_limit(MAX_COMMAND).min(cap - 2)) {
                    Line::Partial => break,
                    Line::TooLong => h.s.on_bad_line(Reply::LINE_TOO_LONG, &mut actions),
                    Line::Complete { bytes, bare } => {
                        if trace() {
                            eprintln!(
                                "C: {}{}",
                                bytes.escape_ascii(),
                                if bare { " (bare)" } else { "" }
                            );
                        }
                        if bare {
                            h.s.on_bad_line(Reply::BARE_NEWLINE_COMMAND, &mut actions);
                        } else {
                            h.s.on_line(bytes, &mut actions);
                            // A HELO/EHLO that was accepted ends any transaction.
                            if matches!(
                                Command::parse(bytes),
                                Ok(Command::Helo(_) | Command::Ehlo(_))
                            ) {
                                assert_ne!(
                                    h.s.state(),
                                    State::Mail,
                                    "transaction survived HELO/EHLO"
                                );
                            }
                        }
                    }
                }
            }
            h.run(actions);
        }
        if h.m.closed {
            break;
        }
        let mut actions = Vec::new();
        // The sync thread's answer, or a timeout/shutdown while the commit is in flight.
        if h.m.commit_pending {
            h.m.commit_pending = false;
            if chaos && h.rng.one_in(4) {
                h.s.close(Reply::SHUTDOWN, &mut actions);
                h.run(std::mem::take(&mut actions));
            }
            h.answer_commit(&mut actions);
            h.run(std::mem::take(&mut actions));
            continue;
        }
        assert!(
            h.s.wants_input(),
            "session stuck in {:?} without a pending answer",
            h.s.state()
        );
        if chaos && h.rng.one_in(32) {
            if (h.s.in_data() || h.s.in_chunk()) && h.rng.one_in(2) {
                // A write to the message file failed.
                h.s.on_write_error(h.rng.one_in(2));
                h.m.write_error = true;
            } else {
                h.s.close(Reply::TIMEOUT, &mut actions);
                h.run(actions);
                continue;
            }
        }
        if pos == input.len() {
            // EOF: Conn aborts (discarding an open message) without asking the session.
            break;
        }
        let want = match h.rng.next() % 4 {
            0 => 1 + h.rng.next() as usize % 8,
            1 => 1 + h.rng.next() as usize % 64,
            _ => input.len() - pos,
        };
        let space = lb.space();
        if space.is_empty() {
            stalls += 1;
            assert!(stalls < 4, "line buffer full with no line to take");
            continue;
        }
        let n = space.len().min(want).min(input.len() - pos);
        space[..n].copy_from_slice(&input[pos..pos + n]);
        lb.filled(n);
        pos += n;
    }
    if h.m.closed {
        assert!(!h.s.wants_input(), "input wanted after Close");
        assert_eq!(h.s.state(), State::Quit);
    }
});
