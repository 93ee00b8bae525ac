//! The bridge binary between a scripted daemon (its standard input and output) and a
//! scripted milter (a unix socket): option negotiation, skipped and unanswered steps,
//! macros, content, modifications, failures.

use smtpd_filter::codec::{self, event, Decoder, Frame};
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// The daemon's side: frames to the bridge, frames from it.
struct Daemon {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Vec<u8>>,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_filter-milter"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the bridge");
        let mut out = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take().expect("stdin");
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            let mut dec = Decoder::new();
            let mut buf = [0u8; 65536];
            loop {
                let n = match out.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                dec.feed(&buf[..n]);
                while let Ok(Some((sid, f))) = dec.next_frame() {
                    let mut raw = Vec::new();
                    codec::encode(sid, &f, &mut raw);
                    if tx.send(raw).is_err() {
                        return;
                    }
                }
            }
        });
        let mut d = Daemon { child, stdin, rx };
        let raw = d.recv_raw();
        match codec::decode(&raw) {
            Ok(Some((0, Frame::Register { hooks, reports, .. }, _))) => {
                assert_eq!(hooks & event::EOM, event::EOM);
                assert_eq!(hooks & event::DATA_LINES, event::DATA_LINES);
                assert_eq!(
                    reports,
                    event::COMMIT
                        | event::ROLLBACK
                        | event::DISCONNECT
                        | event::TLS
                        | event::AUTH_RESULT
                );
            }
            other => panic!("want REGISTER, got {other:?}"),
        }
        d.send(
            0,
            &Frame::Ready {
                version: 1,
                max_frame: 1 << 20,
                timeout_ms: 30000,
            },
        );
        d
    }

    fn send(&mut self, sid: u64, f: &Frame) {
        let mut w = Vec::new();
        codec::encode(sid, f, &mut w);
        self.stdin.write_all(&w).expect("write to the bridge");
        self.stdin.flush().expect("flush");
    }

    fn recv_raw(&mut self) -> Vec<u8> {
        self.rx.recv_timeout(WAIT).expect("a frame from the bridge")
    }

    /// The next frame, as its debug text (session included).
    fn recv(&mut self) -> String {
        let raw = self.recv_raw();
        match codec::decode(&raw) {
            Ok(Some((sid, f, _))) => format!("{sid} {f:?}"),
            other => panic!("bad frame {other:?}"),
        }
    }

    fn quiet(&mut self, d: Duration) -> bool {
        self.rx.recv_timeout(d).is_err()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dbg(sid: u64, f: Frame) -> String {
    format!("{sid} {f:?}")
}

/// The milter's side.
struct Milter {
    s: UnixStream,
    pending: Vec<u8>,
}

impl Milter {
    fn fill(&mut self, n: usize) {
        let mut buf = [0u8; 4096];
        while self.pending.len() < n {
            let got = self.s.read(&mut buf).expect("a packet from the bridge");
            assert!(got > 0, "the bridge closed the connection");
            self.pending.extend_from_slice(&buf[..got]);
        }
    }

    fn read(&mut self) -> (u8, Vec<u8>) {
        self.fill(4);
        let n = u32::from_be_bytes([
            self.pending[0],
            self.pending[1],
            self.pending[2],
            self.pending[3],
        ]) as usize;
        self.fill(4 + n);
        let p: Vec<u8> = self.pending.drain(..4 + n).collect();
        (p[4], p[5..].to_vec())
    }

    fn eof(&mut self) -> bool {
        let mut b = [0u8; 1];
        self.pending.is_empty() && matches!(self.s.read(&mut b), Ok(0))
    }

    fn expect(&mut self, cmd: u8, data: &[u8]) {
        let (c, d) = self.read();
        assert_eq!(
            (c as char, d.escape_ascii().to_string()),
            (cmd as char, data.escape_ascii().to_string())
        );
    }

    fn write(&mut self, cmd: u8, data: &[u8]) {
        let mut w = (data.len() as u32 + 1).to_be_bytes().to_vec();
        w.push(cmd);
        w.extend_from_slice(data);
        self.s.write_all(&w).expect("write to the bridge");
    }

    fn nothing_for(&mut self, d: Duration) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        self.s.set_read_timeout(Some(d)).expect("timeout");
        let mut b = [0u8; 64];
        let r = self.s.read(&mut b);
        self.s.set_read_timeout(Some(WAIT)).expect("timeout");
        match r {
            Ok(n) => {
                self.pending.extend_from_slice(&b[..n]);
                false
            }
            Err(_) => true,
        }
    }

    fn optneg(&mut self, version: u32, actions: u32, protocol: u32, extra: &[u8]) {
        let (c, d) = self.read();
        assert_eq!(c, b'O');
        assert_eq!(d, [0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff]);
        let mut r = Vec::new();
        r.extend_from_slice(&version.to_be_bytes());
        r.extend_from_slice(&actions.to_be_bytes());
        r.extend_from_slice(&protocol.to_be_bytes());
        r.extend_from_slice(extra);
        self.write(b'O', &r);
    }
}

struct Sock {
    path: PathBuf,
    l: UnixListener,
}

impl Sock {
    fn new(name: &str) -> Sock {
        let path = std::env::temp_dir().join(format!(
            "filter-milter-test-{}-{name}.sock",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).expect("bind");
        Sock { path, l }
    }
    fn spec(&self) -> String {
        format!("unix:{}", self.path.display())
    }
    fn accept(&self) -> Milter {
        let (s, _) = self.l.accept().expect("accept");
        s.set_read_timeout(Some(WAIT)).expect("timeout");
        Milter {
            s,
            pending: Vec::new(),
        }
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn connect(d: &mut Daemon, sid: u64) {
    d.send(
        sid,
        &Frame::Connect {
            local: b"127.0.0.1:25",
            remote: b"192.0.2.1:4321",
            hostname: b"",
        },
    );
}

const NOHELO: u32 = 0x2;
const NR_HDR: u32 = 0x80;
const NR_CONN: u32 = 0x1000;
const NR_ALL: u32 = 0xff080;

#[test]
fn no_reply_steps_skipped_steps_and_macro_lists() {
    let sock = Sock::new("nr");
    let mut d = Daemon::start(&["-t", "5", "-m", "j=mx.test", &sock.spec()]);
    connect(&mut d, 7);
    let mut m = sock.accept();
    // SETSYMLIST: at MAIL only {mail_addr}.
    let mut extra = 2u32.to_be_bytes().to_vec();
    extra.extend_from_slice(b"{mail_addr}\0");
    m.optneg(6, 0x101, NOHELO | NR_ALL, &extra);
    let (c, macros) = m.read();
    assert_eq!(c, b'D');
    let text = macros.escape_ascii().to_string();
    assert!(
        text.starts_with("Cj\\x00mx.test\\x00{daemon_name}\\x00smtpd\\x00"),
        "{text}"
    );
    assert!(text.contains("{client_addr}\\x00192.0.2.1\\x00{client_port}\\x004321\\x00"));
    m.expect(b'C', b"[192.0.2.1]\0\x34\x10\xe1192.0.2.1\0");
    // No reply to CONNECT: the answer comes at once.
    assert_eq!(d.recv(), dbg(7, Frame::Proceed));
    d.send(7, &Frame::Ehlo(b"client.test"));
    assert_eq!(d.recv(), dbg(7, Frame::Proceed));
    d.send(7, &Frame::Mail(b"a@example.test"));
    assert_eq!(d.recv(), dbg(7, Frame::Proceed));
    // HELO skipped (no packet); MAIL with its own macro list.
    m.expect(b'D', b"M{mail_addr}\0a@example.test\0");
    m.expect(b'M', b"<a@example.test>\0");
    d.send(7, &Frame::Rcpt(b"b@example.test"));
    assert_eq!(d.recv(), dbg(7, Frame::Proceed));
    let (c, _) = m.read();
    assert_eq!(c, b'D');
    m.expect(b'R', b"<b@example.test>\0");
    d.send(7, &Frame::Data);
    assert_eq!(d.recv(), dbg(7, Frame::Proceed));
    m.expect(b'D', b"Ti\x000000000000000007.1\x00");
    m.expect(b'T', b"");
    let lines: Vec<&[u8]> = vec![b"Subject: hi", b" there", b"", b"body", b".x"];
    d.send(7, &Frame::DataLines(lines.clone()));
    assert_eq!(d.recv(), dbg(7, Frame::DataLines(lines)));
    d.send(7, &Frame::DataEnd);
    assert_eq!(d.recv(), dbg(7, Frame::DataEnd));
    m.expect(b'L', b"Subject\0hi\n there\0");
    m.expect(b'D', b"Ni\x000000000000000007.1\x00");
    m.expect(b'N', b"");
    m.expect(b'B', b"body\r\n.x\r\n");
    d.send(7, &Frame::Eom(20));
    m.expect(b'D', b"Ei\x000000000000000007.1\x00");
    m.expect(b'E', b"");
    assert!(d.quiet(Duration::from_millis(200)));
    m.write(b'p', b"");
    m.write(b'h', b"X-A\0 1\n2\0");
    m.write(b'c', b"");
    assert_eq!(
        d.recv(),
        dbg(
            7,
            Frame::AddHeader {
                name: b"X-A",
                value: b"1\n\t2"
            }
        )
    );
    assert_eq!(d.recv(), dbg(7, Frame::Proceed));
    d.send(7, &Frame::Commit(b"0badcafe"));
    d.send(7, &Frame::Disconnect);
    m.expect(b'Q', b"");
    assert!(m.eof());
}

fn tls(subject: &[u8]) -> Frame<'_> {
    Frame::Tls {
        version: b"TLSv1.3",
        cipher: b"TLS_AES_256_GCM_SHA384",
        bits: 256,
        sni: b"mx.test",
        subject,
    }
}

/// The macro packet a milter reads next, for the stage `stage`, as text.
fn macros(m: &mut Milter, stage: u8) -> String {
    let (c, d) = m.read();
    assert_eq!(c, b'D');
    assert_eq!(d.first(), Some(&stage), "{}", d.escape_ascii());
    d[1..].escape_ascii().to_string()
}

#[test]
fn tls_and_auth_facts_become_sendmail_macros() {
    let sock = Sock::new("tls");
    let mut d = Daemon::start(&["-t", "5", &sock.spec()]);
    // smtps: the handshake may end before CONNECT.
    d.send(3, &tls(b"CN=client.test,O=Example"));
    connect(&mut d, 3);
    let mut m = sock.accept();
    m.optneg(6, 0x101, NR_ALL, &[]);
    let connect_macros = macros(&mut m, b'C');
    assert!(!connect_macros.contains("tls"), "{connect_macros}");
    let (c, _) = m.read();
    assert_eq!(c, b'C');
    assert_eq!(d.recv(), dbg(3, Frame::Proceed));
    d.send(3, &Frame::Ehlo(b"client.test"));
    assert_eq!(d.recv(), dbg(3, Frame::Proceed));
    assert_eq!(
        macros(&mut m, b'H'),
        "{tls_version}\\x00TLSv1.3\\x00{cipher}\\x00TLS_AES_256_GCM_SHA384\\x00\
         {cipher_bits}\\x00256\\x00{cert_subject}\\x00CN=client.test,O=Example\\x00"
    );
    m.expect(b'H', b"client.test\0");
    // A failed AUTH defines nothing; a successful one, {auth_type} and {auth_authen}.
    let result = |user, result| Frame::AuthResult {
        mechanism: b"PLAIN",
        user,
        result,
    };
    d.send(3, &result(b"bob", b"permfail"));
    d.send(3, &Frame::Mail(b"a@example.test"));
    assert_eq!(d.recv(), dbg(3, Frame::Proceed));
    let mail = macros(&mut m, b'M');
    assert!(!mail.contains("auth"), "{mail}");
    m.expect(b'M', b"<a@example.test>\0");
    d.send(3, &Frame::Rollback);
    d.send(3, &result(b"alice", b"ok"));
    d.send(3, &Frame::Mail(b"a@example.test"));
    assert_eq!(d.recv(), dbg(3, Frame::Proceed));
    m.expect(b'A', b"");
    let mail = macros(&mut m, b'M');
    assert!(
        mail.contains("{auth_type}\\x00PLAIN\\x00{auth_authen}\\x00alice\\x00"),
        "{mail}"
    );
    m.expect(b'M', b"<a@example.test>\0");
    d.send(3, &Frame::Disconnect);
    m.expect(b'Q', b"");
    assert!(m.eof());

    // STARTTLS: TLS comes after CONNECT and HELO; the next EHLO has the macros, without
    // {cert_subject} when no certificate was verified.
    connect(&mut d, 4);
    let mut m = sock.accept();
    m.optneg(6, 0x101, NR_ALL, &[]);
    macros(&mut m, b'C');
    let (c, _) = m.read();
    assert_eq!(c, b'C');
    assert_eq!(d.recv(), dbg(4, Frame::Proceed));
    d.send(4, &Frame::Ehlo(b"client.test"));
    assert_eq!(d.recv(), dbg(4, Frame::Proceed));
    m.expect(b'H', b"client.test\0");
    d.send(4, &tls(b""));
    d.send(4, &Frame::Ehlo(b"client.test"));
    assert_eq!(d.recv(), dbg(4, Frame::Proceed));
    let helo = macros(&mut m, b'H');
    assert!(helo.starts_with("{tls_version}\\x00TLSv1.3\\x00"), "{helo}");
    assert!(!helo.contains("cert_subject"), "{helo}");
    m.expect(b'H', b"client.test\0");
    // A TLS report for a session that never connected is forgotten at its end.
    d.send(5, &tls(b""));
    d.send(5, &Frame::Disconnect);
    d.send(4, &Frame::Disconnect);
    m.expect(b'Q', b"");
}

#[test]
fn version_2_milter_is_answered_step_by_step() {
    let sock = Sock::new("v2");
    let mut d = Daemon::start(&["-t", "5", &sock.spec()]);
    connect(&mut d, 1);
    let mut m = sock.accept();
    // Version 2: no DATA command, and NR bits mean nothing.
    m.optneg(2, 0x01, NOHELO | NR_HDR | NR_CONN, &[]);
    let (c, _) = m.read();
    assert_eq!(c, b'D');
    let (c, _) = m.read();
    assert_eq!(c, b'C');
    assert!(d.quiet(Duration::from_millis(200)));
    m.write(b'c', b"");
    assert_eq!(d.recv(), dbg(1, Frame::Proceed));
    d.send(1, &Frame::Mail(b""));
    let (c, _) = m.read();
    assert_eq!(c, b'D');
    m.expect(b'M', b"<>\0");
    m.write(b'c', b"");
    assert_eq!(d.recv(), dbg(1, Frame::Proceed));
    d.send(1, &Frame::Rcpt(b"postmaster"));
    let (c, d_) = m.read();
    assert_eq!(c, b'D');
    assert!(d_
        .escape_ascii()
        .to_string()
        .contains("{rcpt_mailer}\\x00local"));
    m.expect(b'R', b"<postmaster>\0");
    m.write(b'c', b"");
    assert_eq!(d.recv(), dbg(1, Frame::Proceed));
    // DATA is not sent to a version 2 milter: the answer is immediate.
    d.send(1, &Frame::Data);
    assert_eq!(d.recv(), dbg(1, Frame::Proceed));
    let lines: Vec<&[u8]> = vec![b"A: 1", b"B: 2", b"", b"x"];
    d.send(1, &Frame::DataLines(lines.clone()));
    assert_eq!(d.recv(), dbg(1, Frame::DataLines(lines)));
    m.expect(b'L', b"A\x001\0");
    // The next header waits for the reply to this one.
    assert!(m.nothing_for(Duration::from_millis(300)));
    m.write(b'c', b"");
    m.expect(b'L', b"B\x002\0");
    m.write(b'c', b"");
    let (c, _) = m.read();
    assert_eq!(c, b'D');
    m.expect(b'N', b"");
    m.write(b'c', b"");
    d.send(1, &Frame::DataEnd);
    assert_eq!(d.recv(), dbg(1, Frame::DataEnd));
    m.expect(b'B', b"x\r\n");
    m.write(b'c', b"");
    d.send(1, &Frame::Eom(3));
    let (c, _) = m.read();
    assert_eq!(c, b'D');
    m.expect(b'E', b"");
    // A reply of the milter's own, with an enhanced code.
    m.write(b'y', b"554 5.7.1 no thanks\0");
    assert_eq!(
        d.recv(),
        dbg(
            1,
            Frame::Reject {
                code: 554,
                text: b"5.7.1 no thanks"
            }
        )
    );
    // The transaction is over: a new MAIL needs no abort (the milter ended it).
    d.send(1, &Frame::Rollback);
    d.send(1, &Frame::Mail(b"c@example.test"));
    let (c, _) = m.read();
    assert_eq!(c, b'D');
    m.expect(b'M', b"<c@example.test>\0");
    // Reject at MAIL, then RSET and a new MAIL: an ABORT comes first.
    m.write(b'r', b"");
    assert_eq!(
        d.recv(),
        dbg(
            1,
            Frame::Reject {
                code: 550,
                text: b"5.7.1 Command rejected"
            }
        )
    );
    d.send(1, &Frame::Mail(b"e@example.test"));
    m.expect(b'A', b"");
    let (c, _) = m.read();
    assert_eq!(c, b'D');
    m.expect(b'M', b"<e@example.test>\0");
}

#[test]
fn refused_negotiation_takes_the_default_action() {
    let sock = Sock::new("refused");
    let mut d = Daemon::start(&["-t", "5", &sock.spec()]);
    connect(&mut d, 3);
    let mut m = sock.accept();
    // Asks for an action that was not offered.
    m.optneg(6, 0x200, 0, &[]);
    assert_eq!(
        d.recv(),
        dbg(
            3,
            Frame::DisconnectAnswer {
                code: 421,
                text: b"4.3.0 Mail filter unavailable, try again later"
            }
        )
    );
    assert!(m.eof());
    // A version from the future is refused too; with -d reject: 550 at connect.
    let mut d = Daemon::start(&["-t", "5", "-d", "reject", &sock.spec()]);
    connect(&mut d, 4);
    let mut m = sock.accept();
    m.optneg(7, 0, 0, &[]);
    assert_eq!(
        d.recv(),
        dbg(
            4,
            Frame::Reject {
                code: 550,
                text: b"5.7.1 Command rejected"
            }
        )
    );
    drop(m);
}

/// A session up to DATA with a milter that answers everything with continue.
fn up_to_data(d: &mut Daemon, sock: &Sock, sid: u64, actions: u32) -> Milter {
    connect(d, sid);
    let mut m = sock.accept();
    m.optneg(6, actions, NOHELO, &[]);
    for (f, cmd) in [
        (
            Frame::Connect {
                local: b"",
                remote: b"",
                hostname: b"",
            },
            b'C',
        ),
        (Frame::Mail(b"a@example.test"), b'M'),
        (Frame::Rcpt(b"b@example.test"), b'R'),
        (Frame::Data, b'T'),
    ] {
        if cmd != b'C' {
            d.send(sid, &f);
        }
        let (c, _) = m.read();
        assert_eq!(c, b'D');
        let (c, _) = m.read();
        assert_eq!(c, cmd);
        m.write(b'c', b"");
        assert_eq!(d.recv(), dbg(sid, Frame::Proceed));
    }
    m
}

#[test]
fn milter_gone_mid_message_with_accept_keeps_the_message() {
    let sock = Sock::new("gone");
    let mut d = Daemon::start(&["-t", "5", "-d", "accept", &sock.spec()]);
    let m = up_to_data(&mut d, &sock, 5, 0);
    drop(m);
    let lines: Vec<&[u8]> = vec![b"Subject: x", b"", b"kept"];
    d.send(5, &Frame::DataLines(lines.clone()));
    assert_eq!(d.recv(), dbg(5, Frame::DataLines(lines)));
    d.send(5, &Frame::DataEnd);
    assert_eq!(d.recv(), dbg(5, Frame::DataEnd));
    d.send(5, &Frame::Eom(10));
    assert_eq!(d.recv(), dbg(5, Frame::Proceed));
    d.send(5, &Frame::Commit(b"00000001"));
    d.send(5, &Frame::Mail(b"again@example.test"));
    assert_eq!(d.recv(), dbg(5, Frame::Proceed));
}

#[test]
fn modification_not_negotiated_fails_the_milter() {
    let sock = Sock::new("notneg");
    let mut d = Daemon::start(&["-t", "5", &sock.spec()]);
    let mut m = up_to_data(&mut d, &sock, 6, 0x01);
    d.send(6, &Frame::DataLines(vec![b"", b"b"]));
    d.recv();
    d.send(6, &Frame::DataEnd);
    d.recv();
    let (c, _) = m.read();
    assert_eq!(c, b'D');
    m.expect(b'N', b"");
    m.write(b'c', b"");
    m.expect(b'B', b"b\r\n");
    m.write(b'c', b"");
    d.send(6, &Frame::Eom(3));
    let (c, _) = m.read();
    assert_eq!(c, b'D');
    m.expect(b'E', b"");
    m.write(b'h', b"X-Ok\0fine\0");
    // Deleting a recipient was not negotiated.
    m.write(b'-', b"<b@example.test>\0");
    assert_eq!(
        d.recv(),
        dbg(
            6,
            Frame::Reject {
                code: 451,
                text: b"4.3.0 Mail filter unavailable, try again later"
            }
        )
    );
}

#[test]
fn garbage_and_timeouts() {
    let sock = Sock::new("garbage");
    let mut d = Daemon::start(&["-t", "1", &sock.spec()]);
    let mut m = up_to_data(&mut d, &sock, 8, 0);
    // Lines are echoed whatever happens to the milter.
    d.send(8, &Frame::DataLines(vec![b"X: y"]));
    assert_eq!(d.recv(), dbg(8, Frame::DataLines(vec![b"X: y"])));
    m.s.write_all(&[0, 0, 0, 0]).expect("write");
    d.send(8, &Frame::DataEnd);
    assert_eq!(d.recv(), dbg(8, Frame::DataEnd));
    d.send(8, &Frame::Eom(5));
    let tf = dbg(
        8,
        Frame::Reject {
            code: 451,
            text: b"4.3.0 Mail filter unavailable, try again later",
        },
    );
    assert_eq!(d.recv(), tf);
    // A milter that does not answer: 421 at connect after -t.
    connect(&mut d, 9);
    let _silent = sock.accept();
    let t0 = std::time::Instant::now();
    assert_eq!(
        d.recv(),
        dbg(
            9,
            Frame::DisconnectAnswer {
                code: 421,
                text: b"4.3.0 Mail filter unavailable, try again later"
            }
        )
    );
    assert!(t0.elapsed() >= Duration::from_millis(900));
}

#[test]
fn unanswered_body_chunks_of_a_large_message_arrive_whole_and_in_order() {
    const NR_BODY: u32 = 0x80000;
    let sock = Sock::new("nrbody");
    let mut d = Daemon::start(&["-t", "10", &sock.spec()]);
    connect(&mut d, 11);
    let mut m = sock.accept();
    m.optneg(6, 0, NOHELO | NR_BODY | NR_HDR, &[]);
    for (f, cmd) in [
        (None, b'C'),
        (Some(Frame::Mail(b"a@example.test")), b'M'),
        (Some(Frame::Rcpt(b"b@example.test")), b'R'),
        (Some(Frame::Data), b'T'),
    ] {
        if let Some(f) = f {
            d.send(11, &f);
        }
        let (c, _) = m.read();
        assert_eq!(c, b'D');
        let (c, _) = m.read();
        assert_eq!(c, cmd);
        m.write(b'c', b"");
        assert_eq!(d.recv(), dbg(11, Frame::Proceed));
    }
    let mut want = Vec::new();
    d.send(11, &Frame::DataLines(vec![b"Subject: big", b""]));
    d.recv();
    for block in 0..3u32 {
        let lines: Vec<Vec<u8>> = (0..1000u32)
            .map(|i| {
                let mut l = format!("{block}-{i:04} ").into_bytes();
                l.resize(998, b'a' + (i % 26) as u8);
                l
            })
            .collect();
        for l in &lines {
            want.extend_from_slice(l);
            want.extend_from_slice(b"\r\n");
        }
        let refs: Vec<&[u8]> = lines.iter().map(|l| l.as_slice()).collect();
        d.send(11, &Frame::DataLines(refs.clone()));
        assert_eq!(d.recv(), dbg(11, Frame::DataLines(refs)));
    }
    d.send(11, &Frame::DataEnd);
    assert_eq!(d.recv(), dbg(11, Frame::DataEnd));
    d.send(11, &Frame::Eom(want.len() as u64));
    m.expect(b'L', b"Subject\0big\0");
    let (c, _) = m.read();
    assert_eq!(c, b'D');
    m.expect(b'N', b"");
    m.write(b'c', b"");
    let mut got = Vec::new();
    loop {
        let (c, data) = m.read();
        match c {
            b'B' => {
                assert!(data.len() <= 65535);
                got.extend_from_slice(&data);
            }
            b'D' => {}
            b'E' => break,
            other => panic!("unexpected {:?}", other as char),
        }
    }
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the body arrived changed");
    m.write(b'c', b"");
    assert_eq!(d.recv(), dbg(11, Frame::Proceed));
}
