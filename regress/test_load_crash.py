"""Load and crash safety.

1. smtp-source (postfix) sends 2000 messages over 20 sessions: exactly 2000 committed
   messages, one envelope each.
2. kill -9 in the middle of a load: every message acknowledged with a 250 before the
   kill is in the spool after a restart, complete, with valid envelopes; incoming/ is
   empty after the restart.
"""

import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest

from conftest import Closed, accepted_id, norm_dest

BENCH_RULES = """
table vusers { "@bench.test" = root, "@example.test" = root }
action "bench" maildir "{MAILDIR}/%{user.username}" virtual <vusers>
match from any for domain { bench.test, example.test } action "bench"
"""

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


def _need_smtp_source():
    if not os.access(SMTP_SOURCE, os.X_OK):
        pytest.skip("smtp-source not installed (Debian package: postfix)")


def test_smtp_source_2000(make_daemon):
    _need_smtp_source()
    d = make_daemon(rules=BENCH_RULES, extra="smtp limit max-mails 100000")
    t0 = time.monotonic()
    r = subprocess.run([SMTP_SOURCE, "-s", "20", "-m", "2000", "-l", "1024", "-f", "a@bench.test",
                        "-t", "u@bench.test", "127.0.0.1:%d" % d.port],
                       capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout + r.stderr
    msgs = d.messages()
    print("smtp-source: 2000 messages in %.1fs (%.0f/s); spool holds %d" % (elapsed, 2000 / elapsed, len(msgs)))
    assert len(msgs) == 2000
    assert len({m.msgid for m in msgs}) == 2000
    for m in msgs:
        assert len(m.envelopes) == 1, m
        e = m.envelopes[0]
        assert e["sender"] == "a@bench.test" and e["rcpt"] == "u@bench.test" and e["action"] == "bench"
        assert norm_dest(e["dest"]) == "root"
        assert m.data.startswith(b"Received: ") and m.data.endswith(b"\n")
    assert d.incoming() == []
    assert d.stop() == 0


class Sender(threading.Thread):
    """One connection sending messages in a loop, recording each acknowledged msgid."""

    def __init__(self, idx, port, budget, stop_at):
        super().__init__(daemon=True)
        self.idx = idx
        self.port = port
        self.budget = budget  # shared dict with a lock: global message bound
        self.stop_at = stop_at
        self.acked = {}  # msgid -> body as it must be stored (LF line ends)
        self.error = None

    def body(self, seq):
        lines = [b"Subject: crash test %d.%d" % (self.idx, seq), b""]
        lines += [b"line %d of message %d.%d %s" % (i, self.idx, seq, b"z" * 60) for i in range(12)]
        lines.append(b"END-OF-MESSAGE %d.%d" % (self.idx, seq))
        return b"\r\n".join(lines) + b"\r\n", b"\n".join(lines) + b"\n"

    def run(self):
        from conftest import SMTPRaw
        try:
            c = SMTPRaw(self.port, timeout=10)
        except OSError as e:
            self.error = repr(e)
            return
        try:
            c.ehlo("crash%d.test" % self.idx)
            seq = 0
            while time.monotonic() < self.stop_at:
                with self.budget["lock"]:
                    if self.budget["left"] <= 0:
                        return
                    self.budget["left"] -= 1
                wire, stored = self.body(seq)
                c.send(b"MAIL FROM:<t%d@example.test>\r\nRCPT TO:<r%d.%d@example.test>\r\nDATA\r\n"
                       % (self.idx, self.idx, seq))
                rs = c.replies(3)
                if [r.code for r in rs] != [250, 250, 354]:
                    self.error = "unexpected %r" % rs
                    return
                c.send(wire + b".\r\n")
                r = c.reply()
                msgid = accepted_id(r)
                self.acked[msgid] = (stored, "r%d.%d@example.test" % (self.idx, seq))
                seq += 1
        except (Closed, OSError, AssertionError) as e:
            # The daemon was killed under us: expected.
            self.error = repr(e)[:200]
        finally:
            c.close()


def test_kill9_loses_no_acknowledged_message(make_daemon):
    _need_smtp_source()
    d = make_daemon(rules=BENCH_RULES, extra="smtp limit max-mails 100000")
    budget = {"lock": threading.Lock(), "left": 3000}
    stop_at = time.monotonic() + 60
    senders = [Sender(i, d.port, budget, stop_at) for i in range(8)]
    load = subprocess.Popen([SMTP_SOURCE, "-s", "10", "-m", "100000", "-l", "2048", "-f", "a@bench.test",
                             "-t", "u@bench.test", "127.0.0.1:%d" % d.port],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for s in senders:
            s.start()
        time.sleep(1.5)
        d.kill9()
        for s in senders:
            s.join(30)
        assert not any(s.is_alive() for s in senders), "a client thread did not finish"
    finally:
        if load.poll() is None:
            load.send_signal(signal.SIGTERM)
            try:
                load.wait(10)
            except subprocess.TimeoutExpired:
                load.kill()
                load.wait(10)
    acked = {}
    for s in senders:
        acked.update(s.acked)
    # 1. What the crash left, before anything can touch it.
    before = d.incoming()
    msgs = {m.msgid: m for m in d.messages()}  # parses every envelope strictly
    missing = sorted(set(acked) - set(msgs))
    print("kill -9: %d messages acknowledged before the kill, %d committed in the spool, "
          "%d incomplete in incoming/, %d acknowledged but missing"
          % (len(acked), len(msgs), len(before), len(missing)))
    assert len(acked) > 0, "no message was acknowledged before the kill: %r" % [s.error for s in senders]
    assert missing == [], "acknowledged messages lost: %s" % missing[:20]
    for msgid, (stored, rcpt) in acked.items():
        m = msgs[msgid]
        assert m.data.endswith(stored), "message %s incomplete: ends %r" % (msgid, m.data[-80:])
        assert m.body() == stored
        assert [e["rcpt"] for e in m.envelopes] == [rcpt]
    # Nothing half-committed: every queued message has its envelope and a whole body.
    for m in msgs.values():
        assert len(m.envelopes) == 1, m
        assert m.data.startswith(b"Received: ") and m.data.endswith(b"\n"), m

    # 2. Restart on the same spool.
    d.start()
    assert d.incoming() == [], "incoming/ not cleaned at start"
    if before:
        assert d.wait_log(r"removed \d+ incomplete message", 15), "no cleanup logged"
    after = {m.msgid: m for m in d.messages()}
    delivered = d.delivered()
    lost = sorted(set(msgs) - set(after) - set(delivered))
    print("after restart: %d queued, %d delivered, %d lost" % (len(after), len(delivered), len(lost)))
    assert lost == [], "committed messages gone after the restart: %s" % lost[:20]
    if d.paused_at_start:  # started with delivery paused: the queue is exactly as left
        assert sorted(after) == sorted(msgs) and delivered == {}
    for msgid, m in after.items():
        assert m.data == msgs[msgid].data, "message %s changed across the restart" % msgid
    # The restarted daemon works.
    with d.client() as c:
        c.ehlo()
        c.send_message("a@example.test", ["after@example.test"], b"after restart\r\n")
    assert d.stop() == 0
