"""Filters that send what nobody asked for (smtpd-filters(7) "Failures" and "Bounds"):
a filter writing frames without end, for sessions the daemon never asked about or for
a message it is filtering, must neither slow down the daemon's other listeners nor
make the engine's memory grow; it is treated as speaking garbage: the sessions waiting
on it fail closed and it is restarted.  Likewise for a filter that stops reading what
it is sent, and log lines without end are counted rather than logged.

The flooding filter (regress/filterlib.py, answer "flood") serves a second listener,
127.0.0.2 on the daemon's port; the daemon's own listener, 127.0.0.1, has no filter.
"""

import os
import pwd
import re
import threading
import time
from pathlib import Path

import pytest

from conftest import SMTPRaw, accepted_id, data_of, descendants, wait_until
from filterlib import FilterDaemon
from test_filters import (BODY, LOGPFX, PASSED, check_spool, fbase, fbin, filter_pid,  # noqa: F401
                          fx, ppid_of, proc_status, transaction, wait_restarted)

FLOODED = "127.0.0.2"
RSS_LIMIT_KB = 64 * 1024
FLOOD_LINE = LOGPFX + (r"filter fl: sent \d+ answers? nobody asked for .*; failing its sessions "
                       r"and restarting it$")


class FloodDaemon(FilterDaemon):
    """A FilterDaemon with a second listener, on FLOODED and the same port, through the
    filter `fl`."""

    def write_config(self):
        super().write_config()
        text = self.conf.read_text()
        head, sep, rest = text.partition("\nlisten on ")
        line, nl, tail = rest.partition("\n")
        second = "listen on %s port %d hostname %s filter fl" % (FLOODED, self.port, self.hostname)
        self.conf.write_text(head + sep + line + "\n" + second + nl + tail)


def flood_daemon(fx, spec, options="", extra=""):
    """A started FloodDaemon whose filter `fl` runs `spec`; with its engine's pid and its
    filter's pid."""
    d = FloodDaemon(fx.tmp / fx.next_name(), filters=fx.py("fl", spec, options), extra=extra,
                    name=fx.next_name())
    fx.add(d)
    return d, engine_pid(d), filter_pid(d, "fl")


def engine_pid(d):
    """The engine: the child of the daemon that runs the daemon's program as the daemon's
    user (a filter runs another program, but is the daemon's program as root for a
    moment after its fork)."""
    exe = os.readlink("/proc/%d/exe" % d.pid)
    uid = pwd.getpwnam("_smtpd").pw_uid
    for _ in range(100):
        for pid in descendants(d.pid):
            try:
                if (ppid_of(pid) == d.pid and os.readlink("/proc/%d/exe" % pid) == exe
                        and os.stat("/proc/%d" % pid).st_uid == uid):
                    return pid
            except OSError:
                continue
        time.sleep(0.05)
    raise AssertionError("no engine process under %d" % d.pid)


def rss_kb(pid):
    """The resident size of `pid` in KiB. /proc/PID/status can be read while the
    kernel updates the process's memory map, without a VmRSS line: read it again."""
    for _ in range(20):
        st = proc_status(pid)
        if "VmRSS" in st:
            return int(st["VmRSS"][0])
        time.sleep(0.05)
    raise AssertionError("no VmRSS for %d: %r" % (pid, st))


def send_unfiltered(d, accepted, n):
    """A message through the unfiltered listener; every reply within 5 seconds."""
    with d.client(timeout=5) as c:
        c.ehlo()
        r = transaction(c, "a@example.test", ["b@example.test"], ["Subject: %d" % n, "", "x"])
        accepted.append(accepted_id(r))
        assert [x.code for x in c.until_quit()] == [221]


def serve_during_flood(d, engine, accepted, stop):
    """Sends messages through the unfiltered listener while the flood goes on, at least
    three and until `stop()` holds (at most 10 seconds); the engine's largest RSS."""
    top = rss_kb(engine)
    deadline = time.monotonic() + 10
    for n in range(500):
        send_unfiltered(d, accepted, n)
        top = max(top, rss_kb(engine))
        if n >= 2 and (stop() or time.monotonic() > deadline):
            break
    return top


def ride_out(d, engine, accepted, line, also=lambda: True, wait=5):
    """Mail through the unfiltered listener until the log has `line` (and `also()`
    holds); the engine's RSS stays under the limit all along, and the line comes."""
    top = serve_during_flood(d, engine, accepted,
                             lambda: re.search(line, d.log(), re.M) and also())
    assert top < RSS_LIMIT_KB, "engine RSS reached %d KiB" % top
    assert d.wait_log(line, wait), d.log()[-3000:]


def flood_spec(fx, phase, frames, session="unknown"):
    """A filter that floods (once) at `phase` instead of answering, and adds
    X-Passed: py to the messages it lets through."""
    flood = {"do": "flood", "frames": frames, "session": session, "once": fx.marker("flood")}
    if phase == "data-line":
        flood["when"] = "TRIGGER"
    return {"answers": {phase: flood}, "edits": [["add-header", "X-Passed", "py"]]}


def check_restarted_and_passing(d, old, accepted):
    """The flooding process is gone, the restarted one lets a message through."""
    wait_restarted(d, "fl")
    assert wait_until(lambda: not Path("/proc/%d" % old).exists(), 5), "flooding filter left running"
    with SMTPRaw(d.port, host=FLOODED, timeout=15) as c:
        c.ehlo()
        accepted.append(accepted_id(transaction(c, "a@example.test", ["b@example.test"], BODY)))
        assert [x.code for x in c.until_quit()] == [221]


@pytest.mark.parametrize("frames", [["proceed"], ["data-lines"]])
def test_flood_of_unknown_sessions_at_connect(fx, frames):
    """Answers for sessions nobody asked about, without end: the unfiltered listener
    keeps accepting mail, the engine stays small, the session waiting on the filter gets
    421 and the filter is restarted for its protocol error (not for its deadline)."""
    d, engine, old = flood_daemon(fx, flood_spec(fx, "connect", frames))
    accepted = []
    with SMTPRaw(d.port, host=FLOODED, timeout=15) as victim:
        ride_out(d, engine, accepted, FLOOD_LINE)
        r = victim.reply()
        assert r.lines == ["421 4.3.0 Service temporarily unavailable, closing connection"], r
    check_restarted_and_passing(d, old, accepted)
    msgs = check_spool(d, accepted)
    assert sum(PASSED.encode() + b"\n" in m.body() for m in msgs) == 1


def test_flood_of_lines_for_a_message(fx):
    """Message lines without end for a message being filtered: the message fails closed
    (451), the engine stays small, the filter is restarted."""
    spec = flood_spec(fx, "data-line", ["data-lines"], session="self")
    d, engine, old = flood_daemon(fx, spec, extra="smtp max-message-size 1M\n")
    accepted = []
    dropped = LOGPFX + r"filter fl: returned more than \d+ octets for one message"
    with SMTPRaw(d.port, host=FLOODED, timeout=15) as victim:
        victim.ehlo()
        victim.expect("MAIL FROM:<a@example.test>", 250)
        victim.expect("RCPT TO:<b@example.test>", 250)
        victim.expect("DATA", 354)
        victim.send(data_of(["Subject: flood", "", "TRIGGER"]) + b".\r\n")
        ride_out(d, engine, accepted, dropped)
        r = victim.reply()
        assert r.is_(451, "4.3.0"), r
    check_restarted_and_passing(d, old, accepted)
    check_spool(d, accepted)


@pytest.mark.parametrize("frames", [["log"], ["stderr"]])
def test_flood_of_log_lines(fx, frames):
    """LOG frames, or lines on the standard error, without end: the log gets a bounded
    number of them (the rest are counted in a line of their own), the engine stays small
    and serves the other listener; the filter, which does not answer, is restarted at
    its deadline."""
    d, engine, old = flood_daemon(fx, flood_spec(fx, "connect", frames), options="timeout 3s")
    accepted = []
    late = LOGPFX + r"filter fl: did not answer in time"
    with SMTPRaw(d.port, host=FLOODED, timeout=15) as victim:
        ride_out(d, engine, accepted, late, wait=10)
        r = victim.reply()
        assert r.lines == ["421 4.3.0 Service temporarily unavailable, closing connection"], r
    logged = len(re.findall(LOGPFX + r"filter fl: flooding the log$", d.log(), re.M))
    assert 0 < logged <= 1000, logged
    # The count of the lines dropped is logged when the parent drains what the killed
    # filter left: it may come a moment after the restart.
    assert d.wait_log(LOGPFX + r"filter fl: \d+ log lines dropped", 10), d.log()[-3000:]
    check_restarted_and_passing(d, old, accepted)
    check_spool(d, accepted)


def test_filter_that_stops_reading(fx):
    """A data filter that stops reading in the middle of a large message: the engine
    stops taking the client's lines instead of queueing them for the filter, and fails
    the filter once it has taken nothing for its timeout; the message gets 451."""
    spec = {"answers": {"data-line": {"do": "hang", "when": "TRIGGER"}}}
    d, engine, old = flood_daemon(fx, spec, options="timeout 3s",
                                  extra="smtp max-message-size 200M\n")
    accepted = []
    stalled = LOGPFX + r"filter fl: did not read what it was sent for 3 s"
    line = b"y" * 998 + b"\r\n"
    with SMTPRaw(d.port, host=FLOODED, timeout=30) as victim:
        victim.ehlo()
        victim.expect("MAIL FROM:<a@example.test>", 250)
        victim.expect("RCPT TO:<b@example.test>", 250)
        victim.expect("DATA", 354)
        sent = {}

        def send_message():
            try:
                victim.send(b"Subject: stall\r\n\r\nTRIGGER\r\n")
                for _ in range(100):
                    victim.send(line * 1000)  # 1 MB
                victim.send(b".\r\n")
                sent["ok"] = True
            except OSError as e:
                sent["error"] = e

        t = threading.Thread(target=send_message, daemon=True)
        t.start()
        ride_out(d, engine, accepted, stalled, also=lambda: not t.is_alive())
        t.join(20)
        assert sent.get("ok"), sent
        r = victim.reply()
        assert r.is_(451, "4.3.0"), r
    check_restarted_and_passing(d, old, accepted)
    check_spool(d, accepted)
