"""smtpctl against a running daemon: every verb, its output and its effect; show queue
and mailq with the daemon stopped; permissions; usage errors."""

import os
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import needs_root, read_spool, smtpd_bin, wait_until

SENDER = "sender@example.test"
STATS_KEYS = ["smtp.sessions", "queue.envelopes", "queue.inflight", "mda.delivered",
              "mda.tempfail", "mda.permfail", "queue.expired", "queue.bounces", "queue.removed",
              "paused.mda", "paused.mta", "paused.smtp"]
QUEUE_LINE = re.compile(r"(?P<evpid>[0-9a-f]{16})\|(?P<sender>[^|]*)\|(?P<rcpt>[^|]*)\|(?P<dest>[^|]*)\|"
                        r"(?P<action>[^|]*)\|(?P<ctime>\d+)\|(?P<last>\d+)\|(?P<retry>\d+)\|"
                        r"(?P<state>pending|inflight|held|offline)\|(?P<error>[^|]*)")

RULES = """
action "mb" maildir "{MAILDIR}/%{dest.user:lowercase|strip}" user smtpdtest1
match from any for domain "example.test" action "mb"
"""


@pytest.fixture(autouse=True)
def _root(user1):
    needs_root()


@pytest.fixture
def held(make_daemon):
    """A daemon started with -P mda -P mta (delivery held)."""
    return make_daemon(rules=RULES, mail_owner="smtpdtest1")


def queue_messages(d, specs):
    """Queues one message per spec (list of recipients); returns the msgids."""
    ids = []
    with d.client() as c:
        c.ehlo()
        for rcpts in specs:
            ids.append(c.send_message(SENDER, rcpts, b"Subject: ctl\r\n\r\nbody\r\n"))
        c.until_quit()
    return ids


def ctl_ok(d, *words):
    code, out, err = d.smtpctl(*words)
    assert code == 0, (words, code, out, err)
    return out


def stats(d):
    out = ctl_ok(d, "show", "stats")
    return dict(l.split("=", 1) for l in out.splitlines())


def queue_lines(text):
    lines = text.splitlines()
    out = []
    for l in lines:
        m = QUEUE_LINE.fullmatch(l)
        assert m, "bad show queue line %r" % l
        out.append(m.groupdict())
    return out


# ---------------------------------------------------------------------------


def test_show_queue(held):
    t0 = int(time.time())
    m1, m2 = queue_messages(held, [["alice@example.test", "Bob+x@example.test"], ["carol@example.test"]])
    lines = queue_lines(ctl_ok(held, "show", "queue"))
    assert len(lines) == 3, lines
    assert [l["evpid"] for l in lines] == sorted(l["evpid"] for l in lines)
    spool = {e["evpid"]: e for m in held.messages() for e in m.envelopes}
    assert set(spool) == {l["evpid"] for l in lines}
    for l in lines:
        e = spool[l["evpid"]]
        assert l["sender"] == SENDER and l["rcpt"] == e["rcpt"] and l["dest"] == e["dest"]
        assert l["action"] == "mb"
        assert abs(int(l["ctime"]) - t0) < 30
        assert (l["last"], l["retry"], l["state"], l["error"]) == ("0", "0", "pending", ""), l
    assert {l["rcpt"] for l in lines} == {"alice@example.test", "Bob+x@example.test", "carol@example.test"}
    assert {l["dest"] for l in lines} == {"user:alice", "user:bob", "user:carol"}
    assert {l["evpid"][:8] for l in lines} == {m1, m2}
    # Words may be shortened to a unique prefix; an ambiguous one is refused.
    assert ctl_ok(held, "sh", "q") == ctl_ok(held, "show", "queue")
    code, out, err = held.smtpctl("s", "q")
    assert code == 1 and "ambiguous" in err and "usage:" in err, (code, out, err)


def test_show_envelope_and_message(held):
    (m1,) = queue_messages(held, [["alice@example.test"]])
    msg = held.wait_messages(1)[0]
    evpid = msg.envelopes[0]["evpid"]
    out = ctl_ok(held, "show", "envelope", evpid)
    assert out.encode() == msg.raw_envelopes[0]
    assert out.startswith("smtpd-envelope 1\nevpid %s\n" % evpid), out
    # show message: by message id and by envelope id; the stored file byte for byte.
    assert ctl_ok(held, "show", "message", m1).encode() == msg.data
    assert ctl_ok(held, "show", "message", evpid).encode() == msg.data
    # Errors: an unknown id, a message id where an envelope id is needed.
    code, out, err = held.smtpctl("show", "envelope", "0123456789abcdef")
    assert code == 1 and out.startswith("error:"), (code, out, err)
    code, out, err = held.smtpctl("show", "message", "01234567")
    assert code == 1 and out.startswith("error:"), (code, out, err)
    code, out, err = held.smtpctl("show", "envelope", m1)
    assert code == 1 and "usage:" in err, (code, out, err)


def test_show_stats(held):
    queue_messages(held, [["alice@example.test", "bob@example.test"]])
    out = ctl_ok(held, "show", "stats")
    keys = [l.split("=", 1)[0] for l in out.splitlines()]
    assert keys == STATS_KEYS, out
    s = stats(held)
    assert s["queue.envelopes"] == "2" and s["queue.inflight"] == "0", s
    assert s["paused.mda"] == "true" and s["paused.mta"] == "true" and s["paused.smtp"] == "false"
    for k in STATS_KEYS[3:9]:
        assert s[k] == "0", (k, s)
    with held.client() as c:
        c.ehlo()
        assert wait_until(lambda: stats(held)["smtp.sessions"] == "1", 3), stats(held)


def test_schedule_keeps_paused_delivery_paused(held):
    m1, m2 = queue_messages(held, [["alice@example.test", "bob@example.test"], ["carol@example.test"]])
    assert ctl_ok(held, "schedule", "all").strip() == "3 envelope(s) scheduled"
    assert ctl_ok(held, "schedule", m1).strip() == "2 envelope(s) scheduled"
    evpid = queue_lines(ctl_ok(held, "show", "queue"))[0]["evpid"]
    assert ctl_ok(held, "schedule", evpid).strip() == "1 envelope(s) scheduled"
    assert ctl_ok(held, "schedule", "0123456789abcdef").strip() == "0 envelope(s) scheduled"
    time.sleep(0.5)
    assert len(queue_lines(ctl_ok(held, "show", "queue"))) == 3
    assert held.delivered() == {}
    code, out, err = held.smtpctl("schedule", "xyz")
    assert code == 1 and "usage:" in err


def test_schedule_delivers_when_running(make_daemon):
    d = make_daemon(rules=RULES, deliver=True, mail_owner="smtpdtest1",
                    methods=("mda",), start=False)
    d.rules = ('action "t" mda "exit 75" user smtpdtest1\n'
               'match from any for domain "slow.test" action "t"\n') + RULES
    d.start()
    queue_messages(d, [["x@slow.test"]])
    assert d.wait_log(r"result=TempFail"), d.log()[-2000:]
    assert ctl_ok(d, "schedule", "all").strip() == "1 envelope(s) scheduled"
    assert wait_until(lambda: len(re.findall(r"result=TempFail", d.log())) == 2, 5), d.log()[-2000:]
    l = queue_lines(ctl_ok(d, "show", "queue"))[0]
    assert l["retry"] == "2", l


def test_remove(held):
    m1, m2, m3 = queue_messages(held, [["alice@example.test", "bob@example.test"],
                                       ["carol@example.test"], ["dave@example.test"]])
    lines = queue_lines(ctl_ok(held, "show", "queue"))
    e1 = [l["evpid"] for l in lines if l["evpid"].startswith(m1)]
    assert len(e1) == 2
    # One envelope of a message: the message stays with the other one.
    assert ctl_ok(held, "remove", e1[0]).strip() == "1 envelope(s) removed"
    # The spool follows as soon as the envelope set is rewritten (the spool I/O thread).
    left = lambda: [e["evpid"] for e in {m.msgid: m for m in held.messages()}[m1].envelopes]
    assert wait_until(lambda: left() == [e1[1]], 3), left()
    # The last one: the message goes.
    assert ctl_ok(held, "remove", e1[1]).strip() == "1 envelope(s) removed"
    assert wait_until(lambda: m1 not in {m.msgid for m in held.messages()}, 3)
    # A message id.
    assert ctl_ok(held, "remove", m2).strip() == "1 envelope(s) removed"
    assert ctl_ok(held, "remove", m2).strip() == "0 envelope(s) removed"
    assert wait_until(lambda: {m.msgid for m in held.messages()} == {m3}, 3), held.messages()
    assert ctl_ok(held, "remove", "all").strip() == "1 envelope(s) removed"
    assert held.wait_queue_empty(5)
    assert ctl_ok(held, "show", "queue") == ""
    assert stats(held)["queue.removed"] == "4"
    assert len(re.findall(r"control: 1 envelope\(s\) removed", held.log())) == 4
    # Removed means nobody is notified.
    assert "bounce" not in held.log()


def test_pause_resume_mda(make_daemon):
    d = make_daemon(rules=RULES, deliver=True, mail_owner="smtpdtest1")
    assert ctl_ok(d, "pause", "mda").strip() == "mda paused"
    assert stats(d)["paused.mda"] == "true"
    (m1,) = queue_messages(d, [["alice@example.test"]])
    time.sleep(1.5)
    assert d.delivered() == {}
    assert [l["state"] for l in queue_lines(ctl_ok(d, "show", "queue"))] == ["pending"]
    assert ctl_ok(d, "resume", "mda").strip() == "mda resumed"
    assert wait_until(lambda: m1 in d.delivered() and d.queue_empty(), 10), d.log()[-2000:]
    assert stats(d)["paused.mda"] == "false"
    assert re.search(r"control: Mda paused", d.log()) and re.search(r"control: Mda resumed", d.log())
    assert ctl_ok(d, "pause", "mta").strip() == "mta paused"
    assert ctl_ok(d, "resume", "mta").strip() == "mta resumed"


def test_pause_resume_smtp(make_daemon):
    d = make_daemon(rules=RULES, mail_owner="smtpdtest1")
    with d.client() as old:
        old.ehlo()
        assert ctl_ok(d, "pause", "smtp").strip() == "smtp paused"
        assert stats(d)["paused.smtp"] == "true"
        # A new client waits in the kernel's queue: no greeting.
        s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
        try:
            s.settimeout(1.5)
            try:
                got = s.recv(512)
            except (socket.timeout, TimeoutError):
                got = None
            assert got is None, "greeting while smtp is paused: %r" % got
            # The open session goes on, and local submission still works.
            old.expect("NOOP", 250)
            r = d.sendmail(["alice@example.test"], b"Subject: during pause\n\nx\n")
            assert r.returncode == 0, r
            assert ctl_ok(d, "resume", "smtp").strip() == "smtp resumed"
            s.settimeout(5)
            assert s.recv(512).startswith(b"220 "), "no greeting after resume"
        finally:
            s.close()
    with d.client() as c:
        c.ehlo()
    assert stats(d)["paused.smtp"] == "false"


def test_log_levels(held):
    assert ctl_ok(held, "log", "verbose").strip() == "log verbose"
    assert ctl_ok(held, "log", "brief").strip() == "log brief"
    assert ctl_ok(held, "log", "v").strip() == "log verbose"
    code, out, err = held.smtpctl("log", "loud")
    assert code == 1 and "usage:" in err


def test_monitor(held):
    p = subprocess.Popen([str(smtpd_bin()), "ctl", "-f", str(held.conf), "monitor"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines = []
    buf = b""
    deadline = time.monotonic() + 3.5
    try:
        while len(lines) < 2 and time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], max(0.05, deadline - time.monotonic()))
            if not r:
                continue
            d = os.read(p.stdout.fileno(), 4096)
            if not d:
                break
            buf += d
            *done, buf = buf.split(b"\n")
            lines += [l.decode() for l in done]
    finally:
        still = p.poll() is None
        if still:
            p.send_signal(signal.SIGTERM)
        p.wait(5)
    assert still, "monitor ended by itself"
    assert len(lines) >= 2, (lines, buf)
    for l in lines:
        assert re.fullmatch(r"sessions=\d+ queue=\d+ inflight=\d+ delivered=\d+ tempfail=\d+ "
                            r"permfail=\d+ expired=\d+ bounces=\d+", l), l
    # The daemon forgets a monitor that went away and keeps serving.
    time.sleep(1.2)
    assert "smtp.sessions" in ctl_ok(held, "show", "stats")


def test_monitor_raw_socket(held):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3.5)
    try:
        s.connect(str(held.queue / "smtpd.sock"))
        s.sendall(b"monitor\n")
        data = b""
        deadline = time.monotonic() + 3.5
        while data.count(b"\n") < 2 and time.monotonic() < deadline:
            d = s.recv(4096)
            if not d:
                break
            data += d
        assert data.count(b"\n") >= 2, data
    finally:
        s.close()


def test_show_queue_and_mailq_with_daemon_stopped(held, tmp_path):
    ids = queue_messages(held, [["alice@example.test"], ["bob@example.test"]])
    running = queue_lines(ctl_ok(held, "show", "queue"))
    assert held.stop() == 0
    assert not (held.queue / "smtpd.sock").exists()
    code, out, err = held.smtpctl("show", "queue")
    assert code == 0, (out, err)
    offline = queue_lines(out)
    assert [l["state"] for l in offline] == ["offline", "offline"]
    strip = lambda ls: [{k: v for k, v in l.items() if k != "state"} for l in ls]
    assert sorted(strip(offline), key=lambda l: l["evpid"]) == strip(running)
    assert {l["evpid"][:8] for l in offline} == set(ids)
    # Other verbs need the daemon.
    code, o, err = held.smtpctl("show", "stats")
    assert code == 1 and "smtpd.sock" in err, (code, o, err)
    # mailq (a link named mailq): the spool of /etc/smtpd.conf, else ./spool.
    if Path("/etc/smtpd.conf").exists():
        pytest.skip("/etc/smtpd.conf exists: mailq would read its spool")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "mailq").symlink_to(smtpd_bin())
    r = held.run_tool([], argv0=bindir / "mailq", cwd=held.dir)
    assert r.returncode == 0, r
    assert r.stdout.decode() == out
    # Corrupt envelopes show as such.
    msg = read_spool(held.queue)[0]
    msg.env_path.write_bytes(b"garbage\n")
    code, out2, err = held.smtpctl("show", "queue")
    assert code == 0
    assert re.search(r"^%s\|corrupt: " % msg.msgid, out2, re.M), out2


def test_unprivileged_user_is_refused(held):
    (m1,) = queue_messages(held, [["alice@example.test"]])
    evpid = queue_lines(ctl_ok(held, "show", "queue"))[0]["evpid"]
    for words in (["show", "queue"], ["show", "envelope", evpid], ["show", "message", m1],
                  ["show", "stats"], ["schedule", "all"], ["remove", "all"], ["remove", m1],
                  ["pause", "smtp"], ["resume", "mda"], ["log", "verbose"], ["monitor"]):
        code, out, err = held.smtpctl(*words, user="nobody")
        assert code == 1 and out.strip() == "error: permission denied", (words, code, out, err)
    # Nothing changed.
    assert len(held.messages()) == 1
    s = stats(held)
    assert s["paused.smtp"] == "false" and s["paused.mda"] == "true", s


def test_unknown_verb_and_usage(held):
    for words in (["frobnicate"], [], ["show"], ["show", "queue", "extra"], ["pause", "everything"],
                  ["remove"], ["show", "envelope", "xyz"]):
        code, out, err = held.smtpctl(*words)
        assert code == 1, (words, code, out, err)
        assert "usage:" in err, (words, err)
        assert out == "", (words, out)


def test_smtpctl_link_personality(held, tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "smtpctl").symlink_to(smtpd_bin())
    r = held.run_tool(["-f", str(held.conf), "show", "stats"], argv0=bindir / "smtpctl")
    assert r.returncode == 0, r
    assert [l.split("=")[0] for l in r.stdout.decode().splitlines()] == STATS_KEYS


def test_inflight_envelopes_are_left_alone(make_daemon, tmp_path):
    d = make_daemon(rules=RULES, deliver=True, mail_owner="smtpdtest1", methods=("mda",),
                    start=False)
    gate = d.dir / "gate"
    d.rules = ('action "slow" mda "while [ ! -e %s ]; do sleep 0.1; done; cat > /dev/null" '
               'user smtpdtest1\nmatch from any for domain "slow.test" action "slow"\n' % gate) + RULES
    d.start()
    try:
        queue_messages(d, [["x@slow.test"]])
        assert wait_until(lambda: stats(d)["queue.inflight"] == "1", 5), stats(d)
        (l,) = queue_lines(ctl_ok(d, "show", "queue"))
        assert l["state"] == "inflight", l
        assert ctl_ok(d, "schedule", "all").strip() == "0 envelope(s) scheduled"
        assert ctl_ok(d, "remove", "all").strip() == "0 envelope(s) removed"
        assert ctl_ok(d, "remove", l["evpid"]).strip() == "0 envelope(s) removed"
    finally:
        gate.touch()
    assert d.wait_queue_empty(10), d.log()[-2000:]
    s = stats(d)
    assert s["mda.delivered"] == "1" and s["queue.removed"] == "0", s
