"""Disk full: the spool on a 2 MiB tmpfs in a private mount namespace.

The daemon runs as `unshare -m sh -c 'mount -t tmpfs -o size=2m tmpfs QUEUE && exec smtpd ...'`
(unshare and sh exec, so the PID is the daemon's).  The tmpfs is only visible inside
that namespace; the test reads it through /proc/PID/root/QUEUE.
"""

import os
import shutil
import subprocess
import time

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


@pytest.fixture
def full(make_daemon, tmp_path):
    why = _can_unshare()
    if why:
        pytest.skip(why)
    queue = tmp_path / "tmpfs-spool"
    queue.mkdir()

    def wrap(argv):
        cmd = "mount -t tmpfs -o size=2m,mode=0700 tmpfs '%s' && exec %s" % (
            queue, " ".join("'%s'" % a for a in argv))
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", cmd]

    d = make_daemon(queue=queue, wrapper=wrap, start=False)
    # Read the spool as the daemon sees it: /proc/PID/root/QUEUE.
    d.ns_view = True
    d.start()
    assert (d.spool_root() / "queue").is_dir()
    # Outside the namespace the directory is still empty: the tmpfs is private.
    assert list(queue.iterdir()) == []
    return d


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
