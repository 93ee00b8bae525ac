//! The client against scripted table processes on the other end of a socket pair.

use super::*;
use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

fn pair() -> (OwnedFd, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    (OwnedFd::from(ours), theirs)
}

/// Reads one imsg frame (blocking): its type and payload.
fn frame(s: &mut UnixStream) -> Option<(u32, Vec<u8>)> {
    let mut head = [0u8; 16];
    s.read_exact(&mut head).ok()?;
    let kind = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]);
    let len = usize::from(u16::from_ne_bytes([head[4], head[5]]));
    let mut payload = vec![0u8; len - 16];
    s.read_exact(&mut payload).ok()?;
    Some((kind, payload))
}

fn reply(s: &mut UnixStream, payload: &[u8]) {
    let mut f = 0u32.to_ne_bytes().to_vec();
    f.extend_from_slice(&((16 + payload.len()) as u16).to_ne_bytes());
    f.extend_from_slice(&[0; 10]);
    f.extend_from_slice(payload);
    s.write_all(&f).unwrap();
}

/// A table-sqlite look-alike: aliases of "root", the domain "example.org".
fn imsg_table(mut s: UnixStream) {
    let sz = std::mem::size_of::<usize>();
    while let Some((kind, p)) = frame(&mut s) {
        match kind {
            imsg::OPEN => {
                assert_eq!(p.len(), 4 + 2048);
                assert_eq!(&p[4..9], b"t1\0\0\0");
                reply(&mut s, &[]);
            }
            imsg::UPDATE => reply(&mut s, &1i32.to_ne_bytes()),
            imsg::CHECK | imsg::LOOKUP => {
                let service = i32::from_ne_bytes([p[0], p[1], p[2], p[3]]);
                let key = &p[4 + sz..p.len() - 1];
                let found = match (service, key) {
                    (1, b"root") => Some("bob@example.org, carol@example.org"),
                    (2, b"example.org") => Some("example.org"),
                    (1 | 2, _) => None,
                    _ => {
                        reply(&mut s, &(-1i32).to_ne_bytes());
                        continue;
                    }
                };
                let mut out = i32::from(found.is_some()).to_ne_bytes().to_vec();
                if let (Some(v), imsg::LOOKUP) = (found, kind) {
                    out.extend_from_slice(v.as_bytes());
                    out.push(0);
                }
                reply(&mut s, &out);
            }
            _ => panic!("unexpected type {kind}"),
        }
    }
}

#[test]
fn the_imsg_protocol_of_opensmtpd_6() {
    let b = Backend::new("t1", Protocol::Imsg, Duration::from_secs(5));
    let (fd, theirs) = pair();
    let t = thread::spawn(move || imsg_table(theirs));
    b.install(fd);
    assert_eq!(
        b.lookup(Service::Alias, "root"),
        Ok(Some("bob@example.org, carol@example.org".into()))
    );
    assert_eq!(b.lookup(Service::Alias, "nobody"), Ok(None));
    assert_eq!(b.check(Service::Domain, "example.org"), Ok(true));
    assert_eq!(b.check(Service::Domain, "example.net"), Ok(false));
    // The table's own failure fails the question, not the process.
    assert!(b.lookup(Service::UserInfo, "root").is_err());
    assert_eq!(b.update(), Ok(()));
    assert_eq!(b.check(Service::Domain, "example.org"), Ok(true));
    drop(b);
    t.join().unwrap();
}

/// A line-protocol table registering `alias`, answering `name` with "found|x|y".
fn line_table(s: UnixStream) {
    let mut out = s.try_clone().unwrap();
    let mut lines = BufReader::new(s).lines();
    for want in [
        "config|smtpd-version|",
        "config|protocol|0.1",
        "config|tablename|t2",
        "config|ready",
    ] {
        let l = lines.next().unwrap().unwrap();
        assert!(l.starts_with(want), "{l}");
    }
    out.write_all(b"register|alias\nregister|auth\nregister|ready\n")
        .unwrap();
    for l in lines {
        let l = l.unwrap();
        let f: Vec<&str> = l.splitn(8, '|').collect();
        assert_eq!(&f[..2], ["table", "0.1"]);
        assert_eq!(f[3], "t2");
        let a = match (f[4], f.get(5), f.get(7)) {
            ("lookup", Some(&"alias"), Some(&"name")) => {
                format!("lookup-result|{}|found|x|y", f[6])
            }
            ("lookup", _, _) => format!("lookup-result|{}|not-found", f[6]),
            ("update", _, _) => format!("update-result|{}|error|cannot", f[5]),
            _ => "garbage".into(),
        };
        out.write_all(format!("{a}\n").as_bytes()).unwrap();
    }
}

#[test]
fn the_line_protocol_of_opensmtpd_7() {
    let b = Backend::new("t2", Protocol::Line, Duration::from_secs(5));
    let (fd, theirs) = pair();
    let t = thread::spawn(move || line_table(theirs));
    b.install(fd);
    assert_eq!(b.lookup(Service::Alias, "name"), Ok(Some("x|y".into())));
    assert_eq!(b.lookup(Service::Alias, "other"), Ok(None));
    // Not registered: not asked.
    assert!(b.check(Service::Domain, "x").is_err());
    assert!(b.update().is_err());
    assert!(b.lookup(Service::Alias, "a\nb").is_err());
    assert_eq!(b.lookup(Service::Alias, "name"), Ok(Some("x|y".into())));
    drop(b);
    t.join().unwrap();
}

#[test]
fn a_hung_or_dead_process_fails_the_question_and_is_replaced() {
    let b = Arc::new(Backend::new(
        "t1",
        Protocol::Imsg,
        Duration::from_millis(300),
    ));
    let kills = Arc::new(AtomicUsize::new(0));
    let k = kills.clone();
    b.on_broken(move || {
        k.fetch_add(1, Ordering::SeqCst);
    });
    // No process yet: the question waits for one, then fails; nobody is killed.
    assert!(b.lookup(Service::Alias, "root").is_err());
    assert_eq!(kills.load(Ordering::SeqCst), 0);
    // One that reads and never answers.
    let (fd, mut hung) = pair();
    b.install(fd);
    let t = thread::spawn(move || {
        let _ = frame(&mut hung);
        let _ = frame(&mut hung);
        hung
    });
    assert!(b.lookup(Service::Alias, "root").is_err());
    assert_eq!(kills.load(Ordering::SeqCst), 1);
    drop(t.join().unwrap());
    // One that dies at once.
    let (fd, dead) = pair();
    b.install(fd);
    drop(dead);
    assert!(b.lookup(Service::Alias, "root").is_err());
    assert_eq!(kills.load(Ordering::SeqCst), 2);
    // A socket handed over while a question waits for one is used at once.
    let b2 = b.clone();
    let asker = thread::spawn(move || b2.lookup(Service::Alias, "root"));
    thread::sleep(Duration::from_millis(50));
    let (fd, theirs) = pair();
    let t = thread::spawn(move || imsg_table(theirs));
    b.install(fd);
    assert_eq!(
        asker.join().unwrap(),
        Ok(Some("bob@example.org, carol@example.org".into()))
    );
    drop(b);
    t.join().unwrap();
}

#[test]
fn garbage_is_a_broken_process() {
    let b = Backend::new("t1", Protocol::Imsg, Duration::from_secs(5));
    let (fd, mut theirs) = pair();
    b.install(fd);
    let t = thread::spawn(move || {
        let _ = frame(&mut theirs);
        // A frame of the wrong type.
        let mut f = 9u32.to_ne_bytes().to_vec();
        f.extend_from_slice(&16u16.to_ne_bytes());
        f.extend_from_slice(&[0; 10]);
        theirs.write_all(&f).unwrap();
        theirs
    });
    assert!(b
        .lookup(Service::Alias, "root")
        .is_err_and(|e| e.0.contains("type 9")));
    drop(t.join().unwrap());
}
