"""Crash safety at every named crash point (smtpd.8, Crash points).

The daemon is built with the `crashpoints` cargo feature (conftest.optimized_bin:
profile `regress`, copied to target/regress-bins/crash; $SMTPD_CRASH_BIN names a binary
built so instead).  For each point: start
smtpd with SMTPD_CRASHPOINT naming it, send mail, let the process that reaches the
point (engine, parent or delivery worker) end there, kill what is left, restart
without the point on the same spool, and check:

- every message that got a 250 is delivered, once; twice only at the points of the
  documented duplicate window (delivered, or notified, but not yet removed);
- a permanent failure is always notified (the notice is committed before the envelope
  it reports on is removed): once, twice only inside that window;
- a delay notice is never sent twice for one interval (it is recorded in the envelope
  before it is queued; a crash in between loses it).
"""

import os
import re
import time
from pathlib import Path

import pytest

from conftest import REPO, Closed, optimized_bin, accepted_id, needs_root, smtpd_bin, wait_until

MAILDIR_RULES = """
action "mb" maildir "{MAILDIR}/%{dest.user:lowercase|strip}" user smtpdtest1
action "x67" mda "exit 67" user smtpdtest1
action "slow" mda "echo 451 4.2.0 busy; exit 75" user smtpdtest1
match from any for domain "fail.test" action "x67"
match from any for domain "slow.test" action "slow"
match from any for domain "example.test" action "mb"
"""
SENDER = "sender@example.test"

# point -> (scenario, how many copies of each acknowledged message may arrive)
DELIVER = {
    "commit-written": 1,
    "commit-synced": 1,
    "commit-renamed": 1,
    "commit-durable": 1,
    "commit-replied": 1,
    # Delivered, the removal of the envelope not made: delivered again.
    "deliver-done": 2,
    "deliver-relayed": 2,
    "deliver-reported": 2,
    "remove-before": 2,
    # The other removals of the same round are not made yet.
    "remove-after": 2,
}
# point -> how many failure notices may arrive (at least one always)
BOUNCE = {
    "bounce-written": 1,
    # Committed, the envelope not removed: it fails and is notified again.
    "bounce-committed": 2,
    "bounce-removed": 1,
}
DELAY = ["envelope-staged", "envelope-installed", "delay-recorded", "delay-committed"]


def crash_bin():
    env = os.environ.get("SMTPD_CRASH_BIN")
    if env:
        return Path(env)
    return optimized_bin("crash", features=["crashpoints"])


@pytest.fixture(scope="module")
def crash_binary():
    return crash_bin()


@pytest.fixture
def armed(make_daemon, user1, crash_binary, monkeypatch, tmp_path):
    """make(point): a daemon of the crash build, armed at `point`, and its marker."""
    needs_root()
    monkeypatch.setenv("SMTPD_BIN", str(crash_binary))

    def make(point, extra=""):
        d = make_daemon(rules=MAILDIR_RULES, extra=extra, deliver=True, methods=("mda",),
                        mail_owner="smtpdtest1", start=False)
        marks = d.dir / "crash"
        marks.mkdir()
        os.chmod(marks, 0o1777)
        marker = marks / "reached"
        monkeypatch.setenv("SMTPD_CRASHPOINT", point)
        monkeypatch.setenv("SMTPD_CRASHPOINT_FILE", str(marker))
        d.start()
        # Only the first start is armed.
        monkeypatch.delenv("SMTPD_CRASHPOINT")
        return d, marker

    return make


def send_one(d, rcpt, sender=SENDER, tag=""):
    """One message; its msgid when it got its 250, else None (the daemon went away)."""
    try:
        with d.client(timeout=5) as c:
            c.ehlo()
            c.expect("MAIL FROM:<%s>" % sender, 250)
            c.expect("RCPT TO:<%s>" % rcpt, 250)
            c.expect("DATA", 354)
            c.send(b"Subject: crash %s\r\n\r\nbody %s\r\n.\r\n" % (tag.encode(), tag.encode()))
            r = c.reply()
            if r.code != 250:
                return None
            return accepted_id(r)
    except (Closed, OSError, AssertionError):
        return None


def crash_and_restart(d, marker, timeout=15.0):
    """Waits until the point was reached, kills what is left of the daemon, restarts it
    (unarmed) on the same spool and makes every envelope due."""
    assert wait_until(marker.exists, timeout), "crash point not reached; log:\n" + d.log()[-3000:]
    assert re.search(r"crash point \S+ reached", marker.read_text())
    d.kill9()
    d.start()
    d.smtpctl("schedule", "all")


def copies(d, box):
    """msgid -> number of copies in mail/BOX/new (by the id of our Received header)."""
    out = {}
    for _, data in d.mailbox(box):
        m = re.search(rb"\(smtpd\) with E?SMTP id ([0-9a-f]{8})", data[:4096])
        if m:
            out[m.group(1).decode()] = out.get(m.group(1).decode(), 0) + 1
    return out


def since_restart(d):
    return d.log().rsplit("=== start", 1)[-1]


def notices(d, kind):
    return [data for _, data in d.mailbox("sender")
            if re.search(rb"^Action: %s" % kind.encode(), data, re.M)]


@pytest.mark.parametrize("point", sorted(DELIVER))
def test_acknowledged_mail_survives(armed, point):
    d, marker = armed(point)
    acked = [m for m in (send_one(d, "ok@example.test", tag="%s-%d" % (point, i))
                         for i in range(3)) if m]
    crash_and_restart(d, marker)
    # Mail sent after the restart goes through too.
    late = send_one(d, "ok@example.test", tag="late")
    assert late
    acked.append(late)
    assert wait_until(lambda: set(acked) <= set(copies(d, "ok")) and d.queue_empty(), 20), \
        (acked, copies(d, "ok"), d.log()[-3000:])
    got = copies(d, "ok")
    for m in acked:
        assert 1 <= got[m] <= DELIVER[point], (point, m, got)
    assert d.incoming() == []


@pytest.mark.parametrize("point", sorted(BOUNCE))
def test_failure_notice_is_never_lost(armed, point):
    d, marker = armed(point)
    acked = send_one(d, "gone@fail.test", tag=point)
    assert acked, d.log()[-2000:]
    crash_and_restart(d, marker)
    assert wait_until(lambda: notices(d, "failed") and d.queue_empty(), 20), d.log()[-3000:]
    got = notices(d, "failed")
    assert 1 <= len(got) <= BOUNCE[point], (point, len(got))
    assert all(b"gone@fail.test" in n for n in got)
    assert d.incoming() == []


@pytest.mark.parametrize("point", DELAY)
def test_delay_notice_is_not_repeated(armed, point):
    d, marker = armed(point, extra="bounce warn-interval 1s\n")
    assert send_one(d, "w@slow.test", tag=point)
    assert d.wait_log(r"result=TempFail"), d.log()[-2000:]
    if not marker.exists():
        # The second attempt, past the interval, sends the delay notice.
        time.sleep(1.2)
        d.smtpctl("schedule", "all")
    crash_and_restart(d, marker)
    # Attempts after the restart (past the interval): the message is still queued,
    # and the notice is not sent again.
    for _ in range(2):
        assert wait_until(lambda: "result=TempFail" in since_restart(d), 10), d.log()[-3000:]
        code, q, _ = d.smtpctl("show", "queue")
        assert code == 0 and "w@slow.test" in q, q
        time.sleep(1.2)
        d.smtpctl("schedule", "all")
    assert wait_until(lambda: since_restart(d).count("result=TempFail") >= 2, 10), d.log()[-3000:]
    got = notices(d, "delayed")
    if point == "delay-recorded":
        # Recorded, not queued: lost, never repeated.
        assert len(got) == 0, len(got)
    else:
        assert len(got) == 1, (point, len(got), d.log()[-3000:])
