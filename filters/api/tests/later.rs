//! Answers given later, through the glue's loop (`Filter::run_fd`) on a socket pair:
//! timers, a watched descriptor, answers in any order, a session that ends while its
//! answer is pending.

use smtpd_filter::codec::{self, event, Decoder, Frame};
use smtpd_filter::verdict::Edit;
use smtpd_filter::{Decision, Filter, Interest};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

/// The daemon's end of a filter running in a thread; `make` builds the filter there.
struct Daemon {
    sock: UnixStream,
    dec: Decoder,
    join: Option<thread::JoinHandle<()>>,
}

impl Daemon {
    fn start(make: fn() -> Filter) -> Daemon {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let join = thread::spawn(move || {
            let input = OwnedFd::from(theirs.try_clone().unwrap());
            make().run_fd(input, OwnedFd::from(theirs)).unwrap();
        });
        ours.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut d = Daemon {
            sock: ours,
            dec: Decoder::new(),
            join: Some(join),
        };
        let (_, reg) = d.frame();
        assert!(matches!(reg, (k, _) if k == codec::kind::REGISTER));
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
        let mut b = Vec::new();
        codec::encode(sid, f, &mut b);
        self.sock.write_all(&b).unwrap();
    }

    /// The next frame the filter sends: its session, kind and bytes.
    fn frame(&mut self) -> (u64, (u8, Vec<u8>)) {
        let mut buf = [0u8; 4096];
        loop {
            if let Some((sid, f)) = self.dec.next_frame().unwrap() {
                let mut b = Vec::new();
                codec::encode(sid, &f, &mut b);
                return (sid, (b[4], b));
            }
            let n = self.sock.read(&mut buf).expect("a frame in time");
            assert!(n > 0, "the filter closed its end");
            self.dec.feed(&buf[..n]);
        }
    }

    fn expect(&mut self, sid: u64, f: &Frame) {
        let mut want = Vec::new();
        codec::encode(sid, f, &mut want);
        let (got_sid, (_, got)) = self.frame();
        assert_eq!((got_sid, got), (sid, want));
    }

    /// Nothing comes within `ms`.
    fn quiet(&mut self, ms: u64) {
        self.sock
            .set_read_timeout(Some(Duration::from_millis(ms)))
            .unwrap();
        let mut b = [0u8; 64];
        match self.sock.read(&mut b) {
            Err(e) => assert!(matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )),
            Ok(n) => panic!("{n} bytes came: {:?}", &b[..n]),
        }
        self.sock
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
    }

    fn close(mut self) {
        self.sock.shutdown(std::net::Shutdown::Both).unwrap();
        if let Some(j) = self.join.take() {
            j.join().unwrap();
        }
    }
}

fn connect<'a>(remote: &'a str) -> Frame<'a> {
    Frame::Connect {
        local: b"192.0.2.25:25",
        remote: remote.as_bytes(),
        hostname: b"",
    }
}

fn listing() -> Filter {
    Filter::new("later").on_connect(|ctx, c| {
        let session = ctx.session;
        let (ms, d) = if c.remote.starts_with("203.") {
            (30, Decision::Reject(554, "5.7.1 Listed".into()))
        } else {
            (300, Decision::Proceed)
        };
        let never = ctx.timer(Duration::from_millis(10), move |ctx| {
            ctx.answer(session, Decision::Tempfail("cancelled timer".into()))
        });
        ctx.cancel_timer(never);
        ctx.timer(Duration::from_millis(ms), move |ctx| ctx.answer(session, d));
        ctx.later()
    })
}

#[test]
fn answers_come_in_any_order() {
    let mut d = Daemon::start(listing);
    // As later-example.hex: A asks first, B is answered first.
    d.send(0xa, &connect("198.51.100.7:50420"));
    d.send(0xb, &connect("203.0.113.9:41000"));
    d.expect(
        0xb,
        &Frame::Reject {
            code: 554,
            text: b"5.7.1 Listed",
        },
    );
    d.expect(0xa, &Frame::Proceed);
    d.close();
}

#[test]
fn a_session_that_ends_gets_no_late_answer() {
    let mut d = Daemon::start(listing);
    d.send(0xc, &connect("198.51.100.8:50000"));
    d.send(0xc, &Frame::Disconnect);
    d.send(0xd, &connect("203.0.113.10:40000"));
    d.expect(
        0xd,
        &Frame::Reject {
            code: 554,
            text: b"5.7.1 Listed",
        },
    );
    // C's timer runs at 300 ms: its answer is dropped.
    d.quiet(600);
    d.close();
}

/// A "service" on a socket: the filter asks at end of message and answers when the
/// reply comes, with the edits made in the callback and those of the answer.
fn asking() -> Filter {
    use std::cell::RefCell;
    use std::rc::Rc;
    let (svc, peer) = UnixStream::pair().unwrap();
    svc.set_nonblocking(true).unwrap();
    // The service echoes what it is sent.
    thread::spawn(move || {
        let mut peer = peer;
        let mut b = [0u8; 64];
        while let Ok(n) = peer.read(&mut b) {
            if n == 0 || peer.write_all(&b[..n]).is_err() {
                break;
            }
        }
    });
    let svc = Rc::new(RefCell::new(svc));
    let fd = svc.borrow().as_raw_fd();
    let reader = svc.clone();
    Filter::new("asking")
        .watch(fd, Interest::READ, move |ctx, ready| {
            assert!(ready.readable);
            let mut b = [0u8; 8];
            while let Ok(n) = reader.borrow_mut().read(&mut b) {
                if n < 8 {
                    break;
                }
                let session = u64::from_be_bytes(b);
                ctx.answer_with_edits(
                    session,
                    Decision::Proceed,
                    vec![Edit::AddHeader("X-Asked".into(), "yes".into())],
                );
            }
        })
        .on_eom(move |ctx, _| {
            ctx.add_header("X-First", "1");
            svc.borrow_mut()
                .write_all(&ctx.session.to_be_bytes())
                .unwrap();
            ctx.later()
        })
}

#[test]
fn an_answer_from_a_watched_descriptor_keeps_the_edits() {
    let mut d = Daemon::start(asking);
    d.send(7, &Frame::Eom(100));
    d.expect(
        7,
        &Frame::AddHeader {
            name: b"X-First",
            value: b"1",
        },
    );
    d.expect(
        7,
        &Frame::AddHeader {
            name: b"X-Asked",
            value: b"yes",
        },
    );
    d.expect(7, &Frame::Proceed);
    d.close();
}

#[test]
fn registers_what_it_answers() {
    let mut out = Vec::new();
    let input: &[u8] = &[];
    listing().run_on(input, &mut out).unwrap();
    let mut dec = Decoder::new();
    dec.feed(&out);
    match dec.next_frame().unwrap() {
        Some((0, Frame::Register { hooks, .. })) => assert_eq!(hooks, event::CONNECT),
        other => panic!("{other:?}"),
    }
}
