use super::*;
use std::os::unix::net::UnixStream;

fn pair() -> (FilterPipe, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let p = FilterPipe::new(
        0,
        "t",
        Some(OwnedFd::from(ours)),
        Duration::from_secs(30),
        None,
    );
    (p.unwrap(), theirs)
}

fn register() -> Vec<u8> {
    let mut w = Vec::new();
    let f = Frame::Register {
        version: codec::VERSION,
        hooks: event::ANSWERED | event::DATA_LINES,
        reports: 0,
        name: b"t",
    };
    codec::encode(0, &f, &mut w);
    w
}

/// Frames of every size: many small answers and large line batches.
fn flood() -> (Vec<u8>, usize) {
    let line = [b'x'; 998];
    let mut w = Vec::new();
    let mut n = 0;
    while w.len() < 3 << 20 {
        codec::encode(n as u64, &Frame::Proceed, &mut w);
        if n % 100 == 0 {
            codec::encode(n as u64, &Frame::DataLines(vec![&line[..]; 1000]), &mut w);
            n += 1;
        }
        n += 1;
    }
    (w, n)
}

fn idle() -> FilterPipe {
    FilterPipe::new(0, "t", None, Duration::from_secs(30), None).unwrap()
}

fn lines(n: usize) -> Answer {
    let mut l = Lines::default();
    for _ in 0..n {
        l.push(b"0123456789");
    }
    Answer::DataLines(l)
}

fn edit() -> Answer {
    Answer::Edit(Edit::AddHeader("X-A".into(), "1".into()))
}

#[test]
fn decisions_answer_pending_questions_only() {
    let now = Instant::now();
    let mut p = idle();
    assert_eq!(
        p.settle(7, &Answer::Decision(Decision::Proceed), now),
        Fit::Unrequested
    );
    p.ask(7, &Frame::Mail(b"a@b"), now);
    assert_eq!(
        p.settle(8, &Answer::Decision(Decision::Proceed), now),
        Fit::Unrequested
    );
    assert_eq!(
        p.settle(7, &Answer::Decision(Decision::Junk), now),
        Fit::Asked
    );
    // A second decision for the same question.
    assert_eq!(
        p.settle(7, &Answer::Decision(Decision::Proceed), now),
        Fit::Unrequested
    );
    // Edits come before the decision and start its deadline again.
    p.ask(7, &Frame::Eom(10), now);
    let later = now + Duration::from_secs(20);
    assert_eq!(p.settle(7, &edit(), later), Fit::Asked);
    assert!(!p.overdue(now + Duration::from_secs(40)));
    assert!(p.overdue(later + Duration::from_secs(30)));
    assert_eq!(
        p.settle(7, &Answer::Decision(Decision::Discard), later),
        Fit::Asked
    );
    assert_eq!(p.settle(7, &edit(), later), Fit::Unrequested);
    assert!(p.waiting.is_empty());
}

#[test]
fn lines_and_their_end_follow_the_message() {
    let now = Instant::now();
    let mut p = idle();
    assert_eq!(p.settle(5, &lines(1), now), Fit::Unrequested);
    assert_eq!(p.settle(5, &Answer::DataEnd, now), Fit::Unrequested);
    p.start_lines(5);
    p.pass_lines(5, vec![&b"x"[..]]);
    assert_eq!(p.settle(5, &lines(2), now), Fit::Asked);
    assert_eq!(p.returned(5), 24);
    // Its DATA_END before the daemon's: nobody asked for it.
    assert_eq!(p.settle(5, &Answer::DataEnd, now), Fit::Unrequested);
    p.ask_end(5, now);
    // While the end is awaited, a decision answers nothing.
    assert_eq!(
        p.settle(5, &Answer::Decision(Decision::Proceed), now),
        Fit::Unrequested
    );
    assert_eq!(p.settle(5, &lines(1), now), Fit::Asked);
    assert_eq!(p.returned(5), 36);
    assert_eq!(p.settle(5, &Answer::DataEnd, now), Fit::Asked);
    assert!(p.waiting.is_empty());
    // Lines after its own end are lost.
    assert_eq!(p.settle(5, &lines(1), now), Fit::Unrequested);
    assert_eq!(p.returned(5), 0);
    // The next message counts from zero.
    p.pass_lines(5, vec![&b"x"[..]]);
    assert_eq!(p.settle(5, &lines(1), now), Fit::Asked);
    p.start_lines(5);
    assert_eq!(p.returned(5), 0);
}

#[test]
fn late_answers_for_sessions_that_left_are_not_counted() {
    let now = Instant::now();
    let mut p = idle();
    // Left while a decision was pending: its deadline is gone, and the late
    // decision (or its edits) is dropped without being counted.
    p.ask(1, &Frame::Rcpt(b"a@b"), now);
    p.session_left(1, now);
    assert!(p.waiting.is_empty());
    assert!(!p.overdue(now + p.timeout * 2));
    assert_eq!(p.settle(1, &edit(), now), Fit::Gone);
    assert_eq!(
        p.settle(1, &Answer::Decision(Decision::Proceed), now),
        Fit::Gone
    );
    // Left in the middle of its lines: they are dropped for a while.
    p.pass_lines(2, vec![&b"x"[..]]);
    p.session_left(2, now);
    assert_eq!(p.settle(2, &lines(1), now), Fit::Gone);
    assert_eq!(p.settle(2, &Answer::DataEnd, now), Fit::Gone);
    assert_eq!(
        p.settle(2, &Answer::Decision(Decision::Proceed), now),
        Fit::Unrequested
    );
    p.prune_gone(now + GONE_FOR - Duration::from_secs(1));
    assert_eq!(p.settle(2, &lines(1), now), Fit::Gone);
    p.prune_gone(now + GONE_FOR);
    assert_eq!(p.settle(2, &lines(1), now), Fit::Unrequested);
    // Left after the end was sent: the filter's end is still awaited.
    p.pass_lines(3, vec![&b"x"[..]]);
    p.ask_end(3, now);
    p.session_left(3, now);
    assert_eq!(p.settle(3, &lines(1), now), Fit::Asked);
    assert_eq!(p.settle(3, &Answer::DataEnd, now), Fit::Asked);
}

#[test]
fn sessions_that_left_are_remembered_up_to_a_bound() {
    let now = Instant::now();
    let mut p = idle();
    for s in 0..GONE_MAX as u64 + 10 {
        p.pass_lines(s, vec![&b"x"[..]]);
        p.session_left(s, now);
    }
    assert_eq!(p.gone.len(), GONE_MAX);
    assert_eq!(p.settle(0, &lines(1), now), Fit::Unrequested);
    assert_eq!(p.settle(10, &lines(1), now), Fit::Gone);
    p.kill();
    assert!(p.gone.is_empty() && p.gone_order.is_empty() && p.data.is_empty());
}

#[test]
fn unrequested_answers_have_an_allowance() {
    let now = Instant::now();
    let mut p = idle();
    for _ in 0..UNREQUESTED_MAX {
        assert_eq!(p.unrequested(now), None);
    }
    assert_eq!(p.unrequested(now), Some(UNREQUESTED_MAX + 1));
    // A new window.
    assert_eq!(p.unrequested(now + UNREQUESTED_WINDOW), None);
}

#[test]
fn a_filter_that_takes_nothing_for_its_timeout_is_stalled() {
    let (mut p, mut theirs) = pair();
    let t = Instant::now();
    p.send(1, &Frame::Data);
    assert!(!p.write_stalled(t));
    assert!(p.write_stalled(t + Duration::from_secs(31)));
    p.flush().unwrap();
    assert!(!p.write_stalled(t + Duration::from_secs(31)));
    // Fill the socket until it takes no more.
    let line = [b'x'; 998];
    for _ in 0..1000 {
        p.send(1, &Frame::DataLines(vec![&line[..]; 100]));
        p.flush().unwrap();
        if p.unsent() > 0 {
            break;
        }
    }
    let stuck = p.unsent();
    assert!(stuck > 0);
    p.flush().unwrap();
    assert_eq!(p.unsent(), stuck);
    let later = Instant::now() + Duration::from_secs(31);
    assert!(p.write_stalled(later));
    // The filter reads: the wait starts again from the last write.
    let mut buf = vec![0u8; 256 * 1024];
    let _ = theirs.read(&mut buf).unwrap();
    p.flush().unwrap();
    assert!(p.unsent() < stuck);
    assert!(!p.write_stalled(Instant::now() + Duration::from_secs(29)));
}

#[test]
fn a_flood_is_taken_a_bounded_amount_at_a_time() {
    let (mut p, mut theirs) = pair();
    let (wire, frames) = flood();
    let writer = std::thread::spawn(move || {
        theirs.write_all(&register()).unwrap();
        theirs.write_all(&wire).unwrap();
        theirs
    });
    let mut got = 0;
    let mut turns = 0;
    while got < frames && turns < 100_000 {
        turns += 1;
        let mut out = Vec::new();
        let before = p.dec.pending();
        let more = p.read(Instant::now(), &mut out).unwrap();
        assert!(out.len() <= FRAMES_PER_TURN);
        assert!(p.dec.pending() <= codec::MAX_FRAME + READ_CHUNK);
        assert!(p.dec.pending() <= before + READ_PER_TURN);
        got += out.len();
        if !more {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(got, frames);
    assert!(matches!(p.state, PipeState::Ready { .. }));
    // Everything was taken: nothing is left, and the next read waits.
    let theirs = writer.join().unwrap();
    assert_eq!(p.read(Instant::now(), &mut Vec::new()), Ok(false));
    drop(theirs);
    assert_eq!(
        p.read(Instant::now(), &mut Vec::new()),
        Err("the filter closed its end".into())
    );
    assert_eq!(p.state, PipeState::Dead);
}

#[test]
fn frames_before_the_end_are_taken_first() {
    let (mut p, mut theirs) = pair();
    let mut wire = register();
    for s in 0..FRAMES_PER_TURN as u64 + 10 {
        codec::encode(s + 1, &Frame::Proceed, &mut wire);
    }
    theirs.write_all(&wire).unwrap();
    drop(theirs);
    let mut out = Vec::new();
    assert_eq!(p.read(Instant::now(), &mut out), Ok(true));
    // The REGISTER counts as a frame of the turn.
    assert_eq!(out.len(), FRAMES_PER_TURN - 1);
    out.clear();
    assert_eq!(
        p.read(Instant::now(), &mut out),
        Err("the filter closed its end".into())
    );
    assert_eq!(out.len(), 11);
    assert_eq!(
        out.last(),
        Some(&(
            FRAMES_PER_TURN as u64 + 10,
            Answer::Decision(Decision::Proceed)
        ))
    );
}

fn text_pair(only: bool) -> (FilterPipe, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let setup = TextSetup {
        hello: b"config|ready\n".to_vec(),
        only,
    };
    let p = FilterPipe::new(
        0,
        "t",
        Some(OwnedFd::from(ours)),
        Duration::from_secs(30),
        Some(setup),
    );
    (p.unwrap(), theirs)
}

#[test]
fn a_filter_that_speaks_text_first_is_served_in_text() {
    let (mut p, mut theirs) = text_pair(false);
    assert!(!p.has_output());
    theirs
        .write_all(b"register|filter|smtp-in|rcpt-to\nregister|report|smtp-in|*\nregister|ready\n")
        .unwrap();
    let mut out = Vec::new();
    assert_eq!(p.read(Instant::now(), &mut out), Ok(false));
    assert!(p.speaks_text());
    assert_eq!(
        p.state,
        PipeState::Ready {
            hooks: event::RCPT,
            reports: 0
        }
    );
    assert!(p.observes());
    // The configuration went out once it spoke.
    p.flush().unwrap();
    let mut buf = [0u8; 4096];
    let n = theirs.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"config|ready\n");
    // A question, its answer.
    p.ask(9, &Frame::Rcpt(b"a@b"), Instant::now());
    p.flush().unwrap();
    let n = theirs.read(&mut buf).unwrap();
    let q = String::from_utf8_lossy(&buf[..n]).to_string();
    let fields: Vec<&str> = q.trim_end().split('|').collect();
    assert_eq!(
        &fields[..5],
        ["filter", "0.7", fields[2], "smtp-in", "rcpt-to"]
    );
    assert_eq!(fields[5], "0000000000000009");
    assert_eq!(fields[7], "a@b");
    let answer = format!("filter-result|9|{}|proceed\n", fields[6]);
    theirs.write_all(answer.as_bytes()).unwrap();
    out.clear();
    assert_eq!(p.read(Instant::now(), &mut out), Ok(false));
    assert_eq!(out, [(9, Answer::Decision(Decision::Proceed))]);
    assert_eq!(p.settle(9, &out[0].1, Instant::now()), Fit::Asked);
}

#[test]
fn a_silent_filter_is_taken_for_one_of_opensmtpd_after_the_grace() {
    let (mut p, _theirs) = text_pair(false);
    let t = Instant::now();
    assert!(p.next_deadline().is_some_and(|d| d <= t + DETECT_GRACE));
    assert!(!p.decide_due(t));
    assert!(p.decide_due(t + DETECT_GRACE));
    assert!(p.speaks_text() && p.has_output());
    assert!(!p.decide_due(t + DETECT_GRACE));
    // A binary filter that speaks first is not.
    let (mut p, mut theirs) = text_pair(false);
    theirs.write_all(&register()).unwrap();
    assert_eq!(p.read(Instant::now(), &mut Vec::new()), Ok(false));
    assert!(!p.speaks_text());
    assert!(!p.decide_due(t + DETECT_GRACE));
    assert!(matches!(p.state, PipeState::Ready { .. }));
    // A proc filter is sent its configuration at once.
    let (p, _theirs) = text_pair(true);
    assert!(p.speaks_text() && p.has_output());
}

#[test]
fn early_reports_reach_a_text_filter_once_registered() {
    let (mut p, mut theirs) = text_pair(false);
    p.report(5, &Report::Disconnect);
    p.report(5, &Report::Protocol(b'<', b"QUIT".to_vec()));
    theirs
        .write_all(b"register|report|smtp-in|link-disconnect\nregister|ready\n")
        .unwrap();
    assert_eq!(p.read(Instant::now(), &mut Vec::new()), Ok(false));
    p.flush().unwrap();
    let mut buf = [0u8; 4096];
    let n = theirs.read(&mut buf).unwrap();
    let got = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(got.starts_with("config|ready\nreport|0.7|"), "{got}");
    assert!(
        got.contains("|smtp-in|link-disconnect|0000000000000005\n"),
        "{got}"
    );
    assert!(!got.contains("protocol-client"), "{got}");
    // Garbage kills it.
    theirs.write_all(b"filter-result|zz|1|proceed\n").unwrap();
    assert!(p.read(Instant::now(), &mut Vec::new()).is_err());
    assert_eq!(p.state, PipeState::Dead);
}
