"""Maildir deliveries through the long-lived delivery worker of each user, and the
spool's one file per message: its layout, the reuse of emptied files, and what start-up
does with what a crash leaves behind.

Deliveries run as the test user smtpdtest1 into directories of the test.
"""

import os
import re
import signal
import time
from pathlib import Path

import pytest

from conftest import accepted_id, needs_root, parse_message_file, wait_until

RULES = """
action "mb" maildir "{MAILDIR}/%{dest.user:lowercase|strip}" user smtpdtest1
match from any for domain "example.test" action "mb"
"""

WORKER_RE = r"delivery worker for smtpdtest1 started, pid (\d+)"


@pytest.fixture(autouse=True)
def _root(user1):
    needs_root()


def mk(make_daemon, deliver=True):
    return make_daemon(rules=RULES, deliver=deliver, mail_owner="smtpdtest1")


def send_many(d, n, rcpt="alice@example.test"):
    """n messages in one session, each its own transaction; their ids."""
    ids = []
    with d.client() as c:
        c.ehlo()
        for i in range(n):
            c.expect("MAIL FROM:<s@example.test>", 250)
            c.expect("RCPT TO:<%s>" % rcpt, 250)
            c.expect("DATA", 354)
            c.send(b"Subject: %d\r\n\r\nbody %d\r\n.\r\n" % (i, i))
            ids.append(accepted_id(c.reply()))
        c.until_quit()
    return ids


def workers(d):
    return [int(p) for p in re.findall(WORKER_RE, d.log())]


def free_files(d):
    return sorted((Path(d.spool_root()) / "free").iterdir())


def test_one_worker_delivers_a_burst(make_daemon, user1):
    d = mk(make_daemon, deliver=False)
    ids = send_many(d, 30)
    assert len(d.wait_messages(30)) == 30
    code, out, err = d.smtpctl("resume", "mda")
    assert code == 0, (code, out, err)
    got = d.wait_mailbox("alice", 30, 15)
    assert len(got) == 30, d.log()[-3000:]
    assert sorted(b.split(b"Subject: ")[1].split(b"\n")[0] for _, b in got) == \
        sorted(str(i).encode() for i in range(30))
    # One fork for the whole burst, and it runs as the recipient's user.
    pids = workers(d)
    assert len(pids) == 1, d.log()[-3000:]
    with open("/proc/%d/status" % pids[0]) as f:
        uid = next(int(ln.split()[1]) for ln in f if ln.startswith("Uid:"))
    assert uid == user1.pw_uid
    # Every message was moved out of tmp/, and the spool is empty.
    assert not list((d.maildir / "alice" / "tmp").iterdir())
    assert d.wait_queue_empty(10), d.messages()
    assert len(re.findall(r"result=Ok", d.log())) == 30
    assert set(ids) == {m for m in re.findall(r"msgid=([0-9a-f]{8})", d.log())}


def test_a_dead_worker_is_replaced(make_daemon, user1):
    d = mk(make_daemon)
    send_many(d, 1)
    assert len(d.wait_mailbox("alice", 1)) == 1
    assert wait_until(lambda: len(workers(d)) == 1, 5), d.log()[-2000:]
    os.kill(workers(d)[0], signal.SIGKILL)
    time.sleep(0.5)
    send_many(d, 2)
    got = d.wait_mailbox("alice", 3, 20)
    assert len(got) == 3, d.log()[-3000:]
    assert len(workers(d)) == 2, d.log()[-3000:]


def test_message_file_layout(make_daemon, user1):
    d = mk(make_daemon, deliver=False)
    (msgid,) = send_many(d, 1)
    (msg,) = d.wait_messages(1)
    raw = msg.path.read_bytes()
    data, block = parse_message_file(raw)
    assert data == msg.data and data.endswith(b"Subject: 0\n\nbody 0\n")
    assert raw == data + block + b"smtpd-queue 1 %016x %08x\n" % (len(data), len(block))
    assert msg.path == Path(d.spool_root()) / "queue" / msgid[:2] / msgid
    assert [e["rcpt"] for e in msg.envelopes] == ["alice@example.test"]
    assert not msg.env_path.exists()


def test_message_files_are_reused(make_daemon, user1):
    d = mk(make_daemon)
    send_many(d, 3)
    with d.client() as c:  # one message over 64 KiB: its file is emptied
        c.ehlo()
        c.expect("MAIL FROM:<s@example.test>", 250)
        c.expect("RCPT TO:<alice@example.test>", 250)
        c.expect("DATA", 354)
        c.send(b"Subject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 80 + b".\r\n")
        accepted_id(c.reply())
        c.until_quit()
    assert len(d.wait_mailbox("alice", 4)) == 4
    assert d.wait_queue_empty(10)
    free = free_files(d)
    sizes = sorted(p.stat().st_size for p in free)
    assert len(free) >= 2 and sizes[0] == 0 and sizes[-1] <= 64 * 1024, sizes
    inodes = {p.stat().st_ino for p in free}
    d.pause_delivery()
    (msgid,) = send_many(d, 1)
    (msg,) = d.wait_messages(1)
    # The new message went into one of the emptied files.
    assert msg.path.stat().st_ino in inodes
    assert len(free_files(d)) == len(free) - 1


def test_start_cleans_what_a_crash_left(make_daemon, user1):
    d = mk(make_daemon, deliver=False)
    (keep,) = send_many(d, 1)
    d.stop()
    q = Path(d.spool_root()) / "queue"
    # A file caught between its move to free/ and its emptying, seen the other way
    # round (the move lost, the emptying kept), and a .env whose message is gone.
    empty = q / "ab" / "ab000001"
    empty.write_bytes(b"")
    orphan = q / "cd" / "cd000002.env"
    orphan.write_bytes(b"smtpd-envelope 1\n")
    free_before = len(free_files(d))
    d.start()
    assert not empty.exists() and not orphan.exists()
    assert len(free_files(d)) == free_before + 1
    assert [m.msgid for m in d.messages()] == [keep]
    assert not list((Path(d.spool_root()) / "corrupt").iterdir())
    assert "corrupt" not in d.log()


def test_idle_workers_exit(make_daemon, user1, user2):
    """A worker per user; each exits once the parent let it go after 10 s of idleness
    (a worker must hold no end of another worker's channel for that to work)."""
    d = make_daemon(rules=RULES, mail_owner="smtpdtest1", deliver=True, start=False)
    out = d.dir / "two"
    out.mkdir(parents=True)
    os.chown(out, user2.pw_uid, user2.pw_gid)
    d.rules = """
action "two" maildir "%s" user smtpdtest2
match from any for domain "other.test" action "two"
""" % out + RULES
    d.start()
    send_many(d, 1, "alice@example.test")
    send_many(d, 1, "bob@other.test")
    assert len(d.wait_mailbox("alice", 1)) == 1
    assert wait_until(lambda: (out / "new").is_dir() and len(list((out / "new").iterdir())) == 1, 10)
    pids = [int(p) for p in re.findall(r"delivery worker for smtpdtest[12] started, pid (\d+)",
                                       d.log())]
    assert len(pids) == 2, d.log()[-2000:]

    def gone(pid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().split(") ")[1].startswith("Z")
        except OSError:
            return True

    assert wait_until(lambda: all(gone(p) for p in pids), 20), d.log()[-2000:]
