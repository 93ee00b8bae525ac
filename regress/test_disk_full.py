"""Disk full: the spool on a 2 MiB tmpfs in a private mount namespace.

The daemon runs as `unshare -m sh -c 'mount -t tmpfs -o size=2m tmpfs QUEUE && exec smtpd ...'`
(unshare and sh exec, so the PID is the daemon's).  The tmpfs is only visible inside
that namespace; the test reads it through /proc/PID/root/QUEUE.
"""

import os
import shutil
import subprocess
import re
import time
from pathlib import Path

import pytest

from conftest import accepted_id, read_spool


def _can_unshare():
    if os.geteuid() != 0:
        return "needs root (mount a tmpfs in a private mount namespace)"
    if not shutil.which("unshare"):
        return "unshare(1) not installed (util-linux)"
    r = subprocess.run(["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt && umount /mnt"],
                       capture_output=True, text=True, timeout=10)
    if r.returncode != 0:
        return "cannot mount a tmpfs in a new mount namespace: " + r.stderr.strip()
    return None


def _tmpfs_daemon(make_daemon, tmp_path, **kw):
    """A daemon whose spool is a private 2 MiB tmpfs."""
    why = _can_unshare()
    if why:
        pytest.skip(why)
    queue = tmp_path / "tmpfs-spool"
    queue.mkdir()

    def wrap(argv):
        cmd = "mount -t tmpfs -o size=2m,mode=0700 tmpfs '%s' && exec %s" % (
            queue, " ".join("'%s'" % a for a in argv))
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", cmd]

    d = make_daemon(queue=queue, wrapper=wrap, start=False, **kw)
    # Read the spool as the daemon sees it: /proc/PID/root/QUEUE.
    d.ns_view = True
    d.start()
    assert (d.spool_root() / "queue").is_dir()
    # Outside the namespace the directory is still empty: the tmpfs is private.
    assert list(queue.iterdir()) == []
    return d


@pytest.fixture
def full(make_daemon, tmp_path):
    return _tmpfs_daemon(make_daemon, tmp_path)


def _send(c, body):
    c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
    c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
    c.expect("DATA", 354)
    c.send(body + b".\r\n")
    return c.reply(timeout=20)


def test_disk_full(full):
    d = full
    small = [b"Subject: small %d\r\n\r\n" % i + (b"s" * 98 + b"\r\n") * 50 for i in range(5)]
    ids = []
    with d.client() as c:
        c.ehlo()
        for body in small:
            ids.append(accepted_id(_send(c, body)))
        # SIZE= larger than the free space: refused at MAIL.
        c.expect("MAIL FROM:<a@origin.example> SIZE=3000000", 452, "4.3.1")
        # Content larger than the free space: refused at the dot.
        big = (b"b" * 998 + b"\r\n") * 3000  # ~3 MB
        r = _send(c, b"Subject: big\r\n\r\n" + big)
        assert r.is_(452, "4.3.1"), r
        # The session goes on and the space of the failed message is back.
        assert d.incoming() == []
        ids.append(accepted_id(_send(c, b"Subject: after\r\n\r\nafter\r\n")))
    msgs = {m.msgid: m for m in read_spool(d.spool_root())}
    assert sorted(msgs) == sorted(ids)
    for i, msgid in enumerate(ids[:5]):
        assert msgs[msgid].body() == b"Subject: small %d\n\n" % i + (b"s" * 98 + b"\n") * 50
    assert msgs[ids[5]].body() == b"Subject: after\n\nafter\n"
    assert all(len(m.envelopes) == 1 for m in msgs.values())
    assert d.incoming() == []
    assert d.stop() == 0


def test_disk_full_new_session_after_failure(full):
    """A client that leaves in the middle of an over-size message leaves nothing behind."""
    d = full
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send((b"c" * 998 + b"\r\n") * 2500)
    deadline = time.monotonic() + 5
    while d.incoming() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert d.incoming() == []
    with d.client() as c:
        c.ehlo()
        msgid = accepted_id(_send(c, b"Subject: fine\r\n\r\nfine\r\n"))
    assert [m.msgid for m in read_spool(d.spool_root())] == [msgid]


# Everything @example.test is delivered, as smtpdtest1, into mail/LOCALPART: outside the
# tmpfs, so that delivering empties the spool.
DELIVER_RULES = """
action "mb" maildir "{MAILDIR}/%{dest.user:lowercase|strip}" user smtpdtest1
match from any for domain "example.test" action "mb"
"""


def _free_files(d):
    return sorted((Path(d.spool_root()) / "free").iterdir())


def test_spool_filled_then_drained_accepts_again(make_daemon, tmp_path, user1):
    """Messages of 50 KB fill the spool until MAIL gets 452; once they are all delivered
    their files wait in free/ for new messages, keeping their blocks: that space must
    not keep new mail out of an empty queue."""
    d = _tmpfs_daemon(make_daemon, tmp_path, rules=DELIVER_RULES, mail_owner="smtpdtest1")
    body = b"Subject: fill\r\n\r\n" + (b"f" * 98 + b"\r\n") * 500
    ids = []
    with d.client() as c:
        c.ehlo()
        for _ in range(100):  # 2 MiB hold about 40 of them
            r = c.cmd("MAIL FROM:<a@origin.example>")
            if r.code == 452:
                break
            assert r.is_(250, "2.1.0"), r
            c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
            c.expect("DATA", 354)
            c.send(body + b".\r\n")
            ids.append(accepted_id(c.reply(timeout=20)))
        assert r.is_(452, "4.3.1"), r
    assert len(ids) > 10
    assert d.ctl("resume mda").strip() == "mda resumed"
    assert len(d.wait_mailbox("bob", len(ids), timeout=60)) == len(ids), d.log()[-3000:]
    assert d.wait_queue_empty(10), d.messages()
    # The delivered files wait in free/ (all of them: fewer than 1024).
    assert len(_free_files(d)) == len(ids)
    # The queue is empty: a new message is accepted, and another after it.
    with d.client() as c:
        c.ehlo()
        # More than free/ could give back: refused, and free/ keeps its files whole.
        c.expect("MAIL FROM:<a@origin.example> SIZE=3000000", 452, "4.3.1")
        assert "short of space" not in d.log()
        first = accepted_id(_send(c, b"Subject: after\r\n\r\nafter\r\n"))
        second = accepted_id(_send(c, body))
    assert d.wait_mailbox("bob", len(ids) + 2, timeout=20)
    assert {first, second} <= set(d.delivered())
    assert d.wait_log(r"queue: spool short of space: emptied \d+ file\(s\) of free/", 15), \
        d.log()[-3000:]
    assert d.stop() == 0


def test_write_short_of_space_uses_free_blocks(make_daemon, tmp_path, user1):
    """free/ holds 1.25 MB of delivered messages' blocks, the file system has room for
    MAIL but not for a 1.2 MB message: the write that fails with ENOSPC gets the kept
    blocks back and goes on, and the message is accepted."""
    d = _tmpfs_daemon(make_daemon, tmp_path, rules=DELIVER_RULES, mail_owner="smtpdtest1")
    body = b"Subject: fill\r\n\r\n" + (b"f" * 98 + b"\r\n") * 500
    with d.client() as c:
        c.ehlo()
        ids = [accepted_id(_send(c, body)) for _ in range(25)]
    assert d.ctl("resume mda").strip() == "mda resumed"
    assert len(d.wait_mailbox("bob", len(ids), timeout=60)) == len(ids), d.log()[-3000:]
    assert d.wait_queue_empty(10), d.messages()
    assert len(_free_files(d)) == len(ids)
    assert "short of space" not in d.log()
    big = b"Subject: big\r\n\r\n" + (b"b" * 998 + b"\r\n") * 1200
    with d.client() as c:
        c.ehlo()
        msgid = accepted_id(_send(c, big))
    assert d.wait_log(r"queue: spool short of space: emptied \d+ file\(s\) of free/")
    got = d.wait_mailbox("bob", len(ids) + 1, timeout=20)
    assert len(got) == len(ids) + 1
    assert d.delivered()[msgid].endswith(b"Subject: big\n\n" + (b"b" * 998 + b"\n") * 1200)
    assert d.stop() == 0
