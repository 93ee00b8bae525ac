"""Start-up with an untidy spool: whatever is found where the daemon does not expect it
(a file where a bucket directory should be, a directory, symbolic link or FIFO where a
file should be, a name the spool never uses) is moved to corrupt/ with a warning naming
it, and the daemon starts, accepts and delivers mail.  A directory of the spool that
the daemon cannot read gets its mode back.  A second daemon on a spool in use leaves it
alone."""

import os
import re

import pytest

from conftest import accepted_id, as_user, needs_root

# Everything @example.test is delivered, as smtpdtest1, into mail/LOCALPART.
RULES = """
action "mb" maildir "{MAILDIR}/%{dest.user:lowercase|strip}" user smtpdtest1
match from any for domain "example.test" action "mb"
"""


def send(d, subject):
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: %s\r\n\r\nbody\r\n.\r\n" % subject.encode())
        msgid = accepted_id(c.reply())
        c.until_quit()
    return msgid


def plant(q, outside):
    """Junk in every directory start-up walks; returns the paths planted."""
    junk = []

    def file(rel, data=b"junk\n"):
        p = q / rel
        p.write_bytes(data)
        junk.append(p)

    def directory(rel):
        p = q / rel
        p.mkdir()
        (p / "inside").write_bytes(b"x\n")
        junk.append(p)

    def fifo(rel):
        p = q / rel
        os.mkfifo(p)
        junk.append(p)

    def link(rel):
        p = q / rel
        os.symlink(outside, p)
        junk.append(p)

    file("stray")
    directory("straydir")
    file("queue/junk")
    directory("queue/zz")
    os.rmdir(q / "queue/7f")
    file("queue/7f")  # a file where the bucket directory 7f belongs
    file("queue/00/notamsg")
    file("queue/00/00abcdef.old")
    directory("queue/00/0000beef")
    link("queue/01/01234567")
    fifo("queue/02/02345678.env")
    file("queue/03/04000001")  # a message name in the wrong bucket
    file("queue/ab/ABCDEF01")
    directory("incoming/junkdir")
    fifo("incoming/fifo")
    file("free/junk.txt")
    directory("free/0123456789abcdef")
    fifo("free/fedcba9876543210")  # a FIFO with a free file's name
    fifo("offline/fifo")
    link("offline/link")
    return junk


def test_stray_entries_go_to_corrupt(make_daemon, user1):
    needs_root()
    d = make_daemon(rules=RULES, mail_owner="smtpdtest1")
    kept = send(d, "before")
    assert d.stop() == 0
    q = d.queue
    outside = d.dir / "outside"
    outside.write_bytes(b"not spool data\n")
    junk = plant(q, outside)
    # A message never acknowledged: removed, not set aside.
    (q / "incoming/12345678").write_bytes(b"half a message\n")

    d.hold_delivery = False
    d.start()
    assert d.wait_mailbox("bob", 1), d.log()[-3000:]
    new = send(d, "after")
    assert len(d.wait_mailbox("bob", 2)) == 2, d.log()[-3000:]
    assert set(d.delivered()) == {kept, new}

    log = d.log()
    corrupt = q / "corrupt"
    for p in junk:
        # (queue/7f is made again, as a directory)
        assert p == q / "queue/7f" or not os.path.lexists(p), p
        assert re.search(re.escape(str(p)) + r": .*; moved to " + re.escape(str(corrupt)) + "/", log), \
            (p, log[-4000:])
    assert len(list(corrupt.iterdir())) == len(junk), sorted(corrupt.iterdir())
    assert not (q / "incoming/12345678").exists()
    assert not (corrupt / "incoming_12345678").exists()
    assert (q / "queue/7f").is_dir() and not (q / "queue/7f").is_symlink()
    assert outside.read_bytes() == b"not spool data\n"
    assert d.stop() == 0
    # Tidy now: the next start has nothing to set aside.
    d.start()
    assert d.stop() == 0
    assert log.count("moved to") == d.log().count("moved to")


def test_second_daemon_leaves_the_spool_alone(make_daemon):
    """A daemon started on a spool in use exits without touching it: the first one's
    message being received stays in incoming/ and is accepted."""
    d = make_daemon()
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: during\r\n\r\n")
        receiving = d.incoming()
        assert len(receiving) == 1
        (d.queue / "stray").write_bytes(b"x\n")
        second = make_daemon(queue=d.queue, start=False)
        with pytest.raises(RuntimeError):
            second.start(attempts=1)
        assert "another smtpd is running on this spool" in second.log()
        assert d.incoming() == receiving
        assert (d.queue / "stray").exists()
        c.send(b"body\r\n.\r\n")
        msgid = accepted_id(c.reply())
    assert [m.msgid for m in d.messages()] == [msgid]


def test_unreadable_directories_are_made_readable(make_daemon, user1):
    """A daemon that is not root cannot read a bucket or free/ of mode 000: it gives each
    its mode back, with a warning, then starts and accepts mail."""
    needs_root()  # to run the daemon as the test user
    d = make_daemon(start=False, wrapper=lambda argv: as_user("smtpdtest1") + argv)
    d.queue.mkdir()
    os.chown(d.queue, user1.pw_uid, user1.pw_gid)
    d.start()
    assert d.stop() == 0
    for rel in ("queue/3c", "free"):
        os.chmod(d.queue / rel, 0)
    d.start()
    log = d.log()
    for rel in ("queue/3c", "free"):
        p = d.queue / rel
        assert re.search(re.escape(str(p)) + r": could not be read \(.*\); mode set to 0700", log), log
        assert (p.stat().st_mode & 0o777) == 0o700
    msgid = send(d, "fine")
    assert [m.msgid for m in d.messages()] == [msgid]
