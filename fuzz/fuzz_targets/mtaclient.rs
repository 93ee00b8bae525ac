//! The outgoing SMTP/LMTP client machine against an arbitrary server: the input's
//! first bytes choose the protocol and the client's options, the rest is what the
//! server sends, cut into lines and fed to the reply parser and the machine, with the
//! glue's answers (messages opened, scans, TLS, the body sent, BDAT chunks sent while
//! the machine lets them go) given as the machine asks. It never panics, every job it was given ends exactly once with one outcome
//! per recipient, and nothing is sent after the session closed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpd::mail::TlsFacts;
use smtpd::mta::client::{Client, ClientOpts, Content, Job, Rcpt, ReplyParser, Step, TlsMode};
use smtpd::nexthop::Proto;
use std::collections::{HashMap, VecDeque};

fn job(id: u64, n: usize, eight: bool, binary: bool) -> Job {
    Job {
        id,
        msgid: id as u32,
        sender: if id % 2 == 0 { String::new() } else { "a@example.org".into() },
        rcpts: (0..n)
            .map(|i| Rcpt {
                addr: format!("r{i}@example.net"),
                notify: (i % 16) as u8,
                orcpt: String::new(),
                original: format!("r{i}@example.net"),
            })
            .collect(),
        body_8bit: eight,
        smtputf8: id % 3 == 0,
        requiretls: id % 4 == 1,
        body_binary: binary,
        ret: String::new(),
        envid: String::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let proto = if flags & 1 == 0 { Proto::Smtp } else { Proto::Lmtp };
    let tls = match (flags >> 1) & 3 {
        0 => TlsMode::Off,
        1 => TlsMode::Opportunistic,
        _ => TlsMode::Required,
    };
    let opts = ClientOpts {
        tls,
        auth: (flags & 8 != 0).then(|| ("user".to_string(), "pass".to_string())),
        tls_on_connect: flags & 16 != 0,
    };
    let mut c = Client::new(proto, "client.example.org", opts);
    // Steps are carried out in the order the machine gave them, as the glue does.
    let mut pending: VecDeque<Step> = VecDeque::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    for id in 1..=((flags >> 5) as u64 % 4 + 1) {
        let n = (id as usize * 3) % 7 + 1;
        open.insert(id, n);
        pending.extend(c.push(job(id, n, flags & 0x80 != 0, id % 3 == 0)));
        pending.extend(c.ready(id, Ok(1000 * id)));
    }
    let mut parser = ReplyParser::default();
    let mut closed = false;
    // BDAT chunks of the message being sent still to go.
    let mut chunks: Option<usize> = None;
    let mut lines = rest.split(|&b| b == b'\n');
    for round in 0..10_000 {
        // Carry out what the machine asked.
        while let Some(step) = pending.pop_front() {
            match step {
                Step::Send(_) | Step::SendSecret { .. } | Step::Log { .. } => {
                    assert!(!closed, "a command after Close");
                }
                Step::SendBody(_) => c.body_sent(),
                Step::SendChunks(_) => {
                    assert!(c.in_chunks(), "chunks asked outside the chunk state");
                    chunks = Some(1 + round % 3);
                }
                Step::Scan(id) => {
                    let content = Content {
                        eight_bit: id % 2 == 0,
                        utf8_header: id % 4 == 0,
                    };
                    pending.extend(c.scanned(id, Ok(content)));
                }
                Step::StartTls => {
                    let r = if round % 3 == 0 {
                        Err("handshake failed".to_string())
                    } else {
                        Ok(TlsFacts {
                            version: "TLSv1.3",
                            cipher: "TLS_AES_128_GCM_SHA256",
                            bits: 128,
                            sni: None,
                            subject: None,
                        })
                    };
                    pending.extend(c.tls_done(r));
                }
                Step::Done(d) => {
                    let n = open.remove(&d.id).expect("a job ends once, and only one given");
                    assert_eq!(d.outcomes.len(), n, "one outcome per recipient");
                }
                Step::Close => closed = true,
            }
        }
        // The glue sends chunks while the machine lets it.
        while let Some(n) = chunks {
            if !c.in_chunks() {
                chunks = None;
            } else if c.may_send_chunk() {
                assert!(!closed, "a chunk after Close");
                c.chunk_sent(n == 1);
                chunks = (n > 1).then(|| n - 1);
            } else {
                break;
            }
        }
        if round == 0 && flags & 16 != 0 {
            pending.extend(c.tls_done(Ok(TlsFacts {
                version: "TLSv1.2",
                cipher: "ECDHE-RSA-AES128-GCM-SHA256",
                bits: 128,
                sni: None,
                subject: None,
            })));
            continue;
        }
        let Some(line) = lines.next() else {
            break;
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match parser.feed(line) {
            Ok(Some(reply)) => pending.extend(c.on_reply(&reply)),
            Ok(None) => {}
            Err(_) => {
                pending.extend(c.lost("bad reply"));
            }
        }
        if round % 97 == 96 {
            pending.extend(c.quit());
        }
    }
    // The connection goes: every job still open ends now.
    pending.extend(c.lost("connection closed"));
    for step in pending {
        if let Step::Done(d) = step {
            let n = open.remove(&d.id).expect("a job ends once");
            assert_eq!(d.outcomes.len(), n);
        }
    }
    assert!(open.is_empty(), "jobs never ended: {open:?}");
});
