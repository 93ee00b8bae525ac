use super::super::commit::commit_batch;
use super::*;

pub(in crate::queue) fn env(msgid: u32, n: u64, rcpt: &str) -> Envelope {
    Envelope {
        evpid: (u64::from(msgid) << 32) | n,
        rcpt: rcpt.into(),
        ..Envelope::default()
    }
}

#[test]
fn create_commit_and_clean() {
    let tmp = crate::testutil::TempDir::new("spool");
    let dir = tmp.0.clone();
    let (spool, cleaned) = Spool::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cleaned, 0);
    let (id, mut f) = spool.create_message().unwrap_or_else(|e| panic!("{e}"));
    spool
        .write_data(&mut f, b"Subject: x\n\nbody\n")
        .unwrap_or_else(|e| panic!("{e}"));
    let envs = [env(id, 1, "a@b"), env(id, 2, "c@d")];
    let job = spool
        .prepare_commit(id, f, &envs)
        .unwrap_or_else(|e| panic!("{e}"));
    // Committed through syncfs(2) where there is one (the daemon's way).
    let handle = File::open(dir.join("incoming")).ok();
    let done = commit_batch(vec![((1, 2), job)], handle.as_ref(), false);
    assert!(done[0].result.is_ok());
    assert_eq!(spool.committed().ok(), Some(vec![id]));
    // The message reads back without its envelopes, and the envelopes come back.
    let (mut f, len) = spool.open_message(id).unwrap_or_else(|e| panic!("{e}"));
    let mut text = String::new();
    (&mut f)
        .take(len)
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text, "Subject: x\n\nbody\n");
    assert_eq!(spool.load_envelopes(id).ok(), Some(envs.to_vec()));
    // A change goes to MSGID.env, staged then installed; removing the envelopes one
    // by one removes all.
    let mut e2 = envs[1].clone();
    e2.retry = 3;
    let changed = [envs[0].clone(), e2.clone()];
    let staged = spool.stage_envelopes(id, &changed);
    assert!(staged.is_ok());
    assert_eq!(spool.load_envelope(e2.evpid).ok(), Some(envs[1].clone()));
    spool
        .install_envelopes(id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spool.load_envelope(e2.evpid).ok(), Some(e2.clone()));
    assert!(!spool.remove_envelope(envs[0].evpid).unwrap_or(true));
    assert_eq!(spool.load_envelopes(id).ok(), Some(vec![e2.clone()]));
    assert!(spool.remove_envelope(e2.evpid).unwrap_or(false));
    assert_eq!(spool.committed().ok(), Some(vec![]));
    assert!(!spool.envelopes_path(id).exists());
    // A half-received message is removed at the next start.
    let (_id2, _f2) = spool.create_message().unwrap_or_else(|e| panic!("{e}"));
    let (_, cleaned) = Spool::open(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cleaned, 1);
}

#[test]
fn a_reused_file_holds_only_the_new_message() {
    use std::os::unix::fs::MetadataExt;
    let tmp = crate::testutil::TempDir::new("spool-reuse");
    let (spool, _) = Spool::open(&tmp.0).unwrap_or_else(|e| panic!("{e}"));
    let first = commit_message(&spool, &[b'x'; 3000]);
    let ino = fs::metadata(spool.message_path(first)).map_or(0, |m| m.ino());
    assert!(spool
        .remove_envelope(env(first, 1, "").evpid)
        .unwrap_or(false));
    let second = commit_message(&spool, b"short\n");
    let path = spool.message_path(second);
    assert_eq!(fs::metadata(&path).map_or(1, |m| m.ino()), ino);
    let (f, len) = spool.open_message(second).unwrap_or_else(|e| panic!("{e}"));
    let mut text = String::new();
    f.take(len)
        .read_to_string(&mut text)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(text, "short\n");
    assert_eq!(
        spool.load_envelopes(second).ok(),
        Some(vec![env(second, 1, "a@b")])
    );
}

#[test]
fn kept_blocks_are_given_back_when_space_is_short() {
    let tmp = crate::testutil::TempDir::new("spool-release");
    let (spool, _) = Spool::open(&tmp.0).unwrap_or_else(|e| panic!("{e}"));
    let id = commit_message(&spool, &[b'x'; 3000]);
    let size = fs::metadata(spool.message_path(id)).map_or(0, |m| m.len());
    assert!(spool.remove_envelope(env(id, 1, "").evpid).unwrap_or(false));
    // The file waits in free/ with its blocks, until space runs short.
    let kept: Vec<PathBuf> = fs::read_dir(tmp.0.join("free"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(kept.len(), 1);
    assert_eq!(fs::metadata(&kept[0]).map_or(0, |m| m.len()), size);
    assert_eq!(spool.release_free(), size);
    assert_eq!(fs::metadata(&kept[0]).map_or(1, |m| m.len()), 0);
    assert_eq!(spool.release_free(), 0);
    // The emptied file is still there for the next message.
    let (_, _f) = spool.create_message().unwrap_or_else(|e| panic!("{e}"));
    assert!(!kept[0].exists());
}

#[test]
fn a_failed_replace_leaves_no_temporary() {
    let tmp = crate::testutil::TempDir::new("spool-replace");
    // The rename fails: a non-empty directory has the file's name.
    let path = tmp.0.join("00000001.env");
    fs::create_dir_all(path.join("x")).unwrap_or_else(|e| panic!("{e}"));
    assert!(replace_file(&path, b"data", true).is_err());
    assert!(!tmp.0.join("00000001.tmp").exists());
}

/// A spool in a new temporary directory (at `spool/`) with one committed message.
pub(in crate::queue) fn spool_with_message(tag: &str) -> (crate::testutil::TempDir, Spool, u32) {
    let tmp = crate::testutil::TempDir::new(tag);
    let (spool, _) = Spool::open(&tmp.0.join("spool")).unwrap_or_else(|e| panic!("{e}"));
    let id = commit_message(&spool, b"x\n");
    (tmp, spool, id)
}

/// Writes `body` as a new message with one envelope (to a@b) and commits it; its id.
fn commit_message(spool: &Spool, body: &[u8]) -> u32 {
    let (id, mut f) = spool.create_message().unwrap_or_else(|e| panic!("{e}"));
    spool
        .write_data(&mut f, body)
        .unwrap_or_else(|e| panic!("{e}"));
    let job = spool
        .prepare_commit(id, f, &[env(id, 1, "a@b")])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(commit_batch(vec![((0, 0), job)], None, false)[0]
        .result
        .is_ok());
    id
}

/// Plants one of each kind of stray entry; returns their paths in the spool.
pub(in crate::queue) fn plant_junk(dir: &Path, outside: &Path) -> Vec<&'static str> {
    let ok = |r: io::Result<()>| r.unwrap_or_else(|e| panic!("{e}"));
    ok(fs::write(dir.join("stray"), b"x"));
    ok(fs::write(dir.join("queue/junk"), b"x"));
    ok(fs::remove_dir(dir.join("queue/7f")));
    ok(fs::write(dir.join("queue/7f"), b"x"));
    ok(fs::create_dir(dir.join("queue/00/00000001")));
    ok(std::os::unix::fs::symlink(
        outside,
        dir.join("queue/01/01000000"),
    ));
    ok(fs::write(dir.join("queue/02/03000000"), b"x"));
    ok(fs::write(dir.join("queue/02/0200000A"), b"x"));
    ok(fs::create_dir(dir.join("incoming/d")));
    ok(fs::create_dir(dir.join("free/0123456789abcdef")));
    let sock = std::os::unix::net::UnixListener::bind(dir.join("free/fedcba9876543210"));
    ok(sock.map(drop));
    ok(fs::write(dir.join("sts/Example.ORG"), b"x"));
    ok(fs::write(dir.join("sts/-bad.example"), b"x"));
    ok(fs::create_dir(dir.join("sts/dir.example")));
    vec![
        "stray",
        "queue/junk",
        "queue/7f",
        "queue/00/00000001",
        "queue/01/01000000",
        "queue/02/03000000",
        "queue/02/0200000A",
        "incoming/d",
        "free/0123456789abcdef",
        "free/fedcba9876543210",
        "sts/Example.ORG",
        "sts/-bad.example",
        "sts/dir.example",
    ]
}

#[test]
fn reading_an_untidy_spool_skips_what_it_does_not_expect() {
    let (tmp, spool, id) = spool_with_message("spool-untidy-read");
    drop(spool);
    let outside = tmp.0.join("outside");
    fs::write(&outside, b"x").unwrap_or_else(|e| panic!("{e}"));
    let dir = tmp.0.join("spool");
    let junk = plant_junk(&dir, &outside);
    // What `show queue` sees with the daemon down: only the message; nothing moves.
    let spool = Spool::at(&dir);
    assert_eq!(spool.committed().ok(), Some(vec![id]));
    assert_eq!(spool.load_all().map(|l| l.len()).ok(), Some(1));
    for j in junk {
        assert!(fs::symlink_metadata(dir.join(j)).is_ok(), "{j}");
    }
    // A message file that is not a plain file is not read through.
    assert!(spool.load_envelopes(0x0100_0000).is_err());
    assert!(spool.open_message(0x0100_0000).is_err());
}

#[test]
fn damaged_trailer_is_an_error() {
    let (_tmp, spool, id) = spool_with_message("spool-bad");
    let path = spool.message_path(id);
    let mut data = fs::read(&path).unwrap_or_default();
    data.pop();
    fs::write(&path, &data).unwrap_or_else(|e| panic!("{e}"));
    assert!(spool.load_envelopes(id).is_err());
    assert!(spool.open_message(id).is_err());
    spool
        .quarantine_corrupt(id)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(spool.committed().ok(), Some(vec![]));
}
