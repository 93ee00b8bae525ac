"""Nobody locks the others out: a local user flooding the control socket, silent control
clients, descriptors running out.

The flood tests start the daemon under a low RLIMIT_NOFILE (prlimit), so that a few
hundred connections are more than its descriptors; the connections are opened by a
helper running as a test user (setpriv), holding them until the test closes its input.
"""

import json
import os
import pwd
import re
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import as_user, descendants, needs_root, wait_until

# Opens N connections to a UNIX socket (optionally sending LINE on each), reads the first
# line each gets within a quiet second, prints {"lines": [...], "silent": n, "failed": n}
# as JSON, then holds the silent ones until its standard input closes.
HOLDER = r"""
import json, select, socket, sys, time
path, n, first = sys.argv[1], int(sys.argv[2]), sys.argv[3]
socks, failed = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
    except OSError:
        failed += 1
        s.close()
        continue
    if first:
        try:
            s.sendall(first.encode() + b"\n")
        except OSError:
            pass  # refused and closed at once: its line is still there to read
    socks.append(s)
lines, bufs, deadline = [], {}, time.monotonic() + 20
open_ = {s.fileno(): s for s in socks}
poller = select.poll()
for fd in open_:
    poller.register(fd, select.POLLIN)
while open_ and time.monotonic() < deadline:
    ready = poller.poll(1000)
    if not ready:
        break
    for fd, _ in ready:
        s = open_[fd]
        try:
            d = s.recv(512)
        except OSError as e:
            d = b""
        bufs[fd] = bufs.get(fd, b"") + d
        if b"\n" in bufs[fd] or not d:
            lines.append(bufs[fd].split(b"\n")[0].decode(errors="replace").rstrip("\r"))
            poller.unregister(fd)
            del open_[fd]
            if first != "smtp" or not d:
                s.close()  # else an SMTP session: kept open
print(json.dumps({"lines": lines, "silent": len(open_), "failed": failed}), flush=True)
sys.stdin.read()
"""


class Holder:
    """The helper above, run as `user` against the daemon's control socket."""

    def __init__(self, d, user, n, first=""):
        sock = str(Path(d.spool_root()) / "smtpd.sock")
        self.proc = subprocess.Popen(as_user(user) + [sys.executable, "-c", HOLDER, sock, str(n), first],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        line = b""
        try:
            r, _, _ = select.select([self.proc.stdout], [], [], 90)
            if r:
                line = self.proc.stdout.readline()
        finally:
            if not line:
                self.close()
        assert line, "the connection holder printed nothing"
        self.result = json.loads(line)

    def lines_like(self, pattern):
        return [ln for ln in self.result["lines"] if re.fullmatch(pattern, ln)]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def user_uid(name):
    return pwd.getpwnam(name).pw_uid


def low_nofile(n):
    return lambda argv: ["prlimit", "--nofile=%d:%d" % (n, n), "--"] + argv


@pytest.fixture(autouse=True)
def _root(user1, user2):
    needs_root()


MSG = b"Subject: through the socket\n\nhello\n"


def test_control_flood_leaves_smtp_and_smtpctl_working(make_daemon):
    """1200 idle control connections from one user, with 256 descriptors: the user gets
    max-clients-per-user of them and a clear line for the rest; TCP clients, root's
    smtpctl and the other users' sendmail go on working."""
    d = make_daemon(wrapper=low_nofile(256))
    h = Holder(d, "smtpdtest1", 1200)
    try:
        # TCP still served.
        with d.client() as c:
            c.ehlo()
            c.send_message("a@origin.example", ["x@example.test"], b"Subject: tcp\r\n\r\nhi\r\n")
            c.expect("QUIT", 221)
        # Root's smtpctl works.
        code, out, err = d.smtpctl("show", "stats")
        assert code == 0 and "smtp.sessions=" in out, (code, out, err)
        # The user got its places (some may have timed out since), and a clear line for
        # every other connection.
        r = h.result
        admitted = r["silent"] + len(h.lines_like(r"error: no command within \d+s"))
        refused = h.lines_like(r"error: too many control connections \(max-clients-per-user 32\)")
        assert admitted == 32, r
        assert len(refused) == 1200 - 32 - r["failed"], r
        assert r["failed"] < 100, r
        # Another user submits; the flooding user is told why it cannot.
        r2 = d.sendmail(["x@example.test"], MSG, user="smtpdtest2")
        assert r2.returncode == 0, r2
        r1 = d.sendmail(["x@example.test"], MSG, user="smtpdtest1")
        assert r1.returncode == 75, r1
        assert b"too many control connections (max-clients-per-user 32)" in r1.stderr, r1
        assert d.wait_log(r"control refused uid=%d reason=max-clients-per-user\n" % user_uid("smtpdtest1"), 5)
    finally:
        h.close()
    # Its places come back when its connections end.
    r1 = None
    for _ in range(50):
        r1 = d.sendmail(["x@example.test"], MSG, user="smtpdtest1")
        if r1.returncode == 0:
            break
        time.sleep(0.1)
    assert r1.returncode == 0, r1
    assert len(d.messages()) == 3


def test_control_limits_total_and_reserve(make_daemon):
    """max-clients for all users together, max-clients-per-user for each; root keeps a
    reserve beyond both."""
    d = make_daemon(extra="control limit max-clients 3 max-clients-per-user 2\ncontrol timeout 1m")
    h1 = Holder(d, "smtpdtest1", 3)
    h2 = None
    try:
        assert h1.result["silent"] == 2, h1.result
        assert h1.result["lines"] == ["error: too many control connections (max-clients-per-user 2)"]
        h2 = Holder(d, "smtpdtest2", 2)
        assert h2.result["silent"] == 1, h2.result
        assert h2.result["lines"] == ["error: too many control connections (max-clients 3)"]
        # Root: over both limits, within its reserve.
        held = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        try:
            for s in held:
                s.connect(str(Path(d.spool_root()) / "smtpd.sock"))
            code, out, err = d.smtpctl("show", "stats")
            assert code == 0 and "smtp.sessions=" in out, (code, out, err)
            # Past the reserve (4) root is refused too, with the line on stdout.
            extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(extra)
            extra.connect(str(Path(d.spool_root()) / "smtpd.sock"))
            code, out, err = d.smtpctl("show", "stats")
            assert code == 1 and out == "error: too many control connections (max-clients 3)\n", (code, out, err)
        finally:
            for s in held:
                s.close()
    finally:
        h1.close()
        if h2:
            h2.close()
    assert wait_until(lambda: d.smtpctl("show", "stats")[0] == 0, 5)
    h3 = Holder(d, "smtpdtest2", 2)
    try:
        assert h3.result["silent"] == 2, h3.result
    finally:
        h3.close()


def test_silent_control_clients_time_out(make_daemon):
    d = make_daemon(extra="control timeout 1s")
    path = str(Path(d.spool_root()) / "smtpd.sock")

    def client(data):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(path)
        if data:
            s.sendall(data)
        return s

    def read_all(s):
        out = b""
        while True:
            d_ = s.recv(4096)
            if not d_:
                return out
            out += d_

    silent, partial, monitor = client(b""), client(b"show sta"), client(b"monitor\n")
    try:
        t0 = time.monotonic()
        assert read_all(silent) == b"error: no command within 1s\n"
        assert read_all(partial) == b"error: no command within 1s\n"
        assert time.monotonic() - t0 < 4
        # The monitor client is still fed, past the timeout.
        monitor.settimeout(3)
        seen = b""
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            seen += monitor.recv(4096)
        assert seen.count(b"sessions=") >= 2, seen
        assert b"error" not in seen
    finally:
        for s in (silent, partial, monitor):
            s.close()
    # The timed-out places are free again.
    code, out, err = d.smtpctl("show", "stats")
    assert code == 0, (code, out, err)


def test_local_sessions_count_per_user_not_against_tcp(make_daemon):
    """A control connection that became an SMTP session keeps its user's place until it
    ends, and takes no place of max-sessions."""
    d = make_daemon(extra="smtp limit max-sessions 1\ncontrol limit max-clients-per-user 2")
    h = Holder(d, "smtpdtest1", 3, first="smtp")
    try:
        r = h.result
        assert h.lines_like(r"220 .*") and len(h.lines_like(r"220 .*")) == 2, r
        assert h.lines_like(r"error: too many control connections \(max-clients-per-user 2\)"), r
        # Two local sessions open, and the one TCP place is still there.
        with d.client() as c:
            c.greeting()
            c.expect("QUIT", 221)
        r1 = d.sendmail(["x@example.test"], MSG, user="smtpdtest1")
        assert r1.returncode == 75 and b"max-clients-per-user 2" in r1.stderr, r1
    finally:
        h.close()
    assert wait_until(lambda: d.sendmail(["x@example.test"], MSG, user="smtpdtest1").returncode == 0, 5)


def _engine(d):
    """PID of the engine: the daemon's child that runs as _smtpd."""
    uid = user_uid("_smtpd")
    for pid in descendants(d.pid):
        try:
            status = Path("/proc/%d/status" % pid).read_text()
        except OSError:
            continue
        m = re.search(r"^Uid:\s+(\d+)", status, re.M)
        if m and int(m.group(1)) == uid:
            return pid
    pytest.fail("no engine process running as _smtpd")


def _set_soft_nofile(pid, soft):
    """Sets the engine's soft RLIMIT_NOFILE, keeping its hard limit.  prlimit runs as
    _smtpd: a process may set the limits of its own user's processes, whereas root needs
    CAP_SYS_RESOURCE for another user's, which a container may not grant."""
    hard = None
    for line in Path("/proc/%d/limits" % pid).read_text().splitlines():
        if line.startswith("Max open files"):
            hard = int(line.split()[4])
    r = subprocess.run(as_user("_smtpd") + ["prlimit", "--pid", str(pid), "--nofile=%d:%d" % (soft, hard)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return hard


def test_accept_resumes_after_descriptors_run_out(make_daemon):
    """accept(2) fails with EMFILE (the engine's limit lowered under it): clients wait in
    the backlog and are served once descriptors are back, with no new connection to
    wake the listener."""
    d = make_daemon()
    engine = _engine(d)
    fds = len(os.listdir("/proc/%d/fd" % engine))
    hard = _set_soft_nofile(engine, fds + 2)
    greeted, waiting = [], []
    try:
        for _ in range(20):
            c = d.client()
            try:
                r = c.reply(timeout=1.5)
            except socket.timeout:
                waiting.append(c)
                if len(waiting) == 3:
                    break
                continue
            assert r.code == 220, r
            greeted.append(c)
        assert len(waiting) == 3, "the engine never ran out of descriptors"
        assert d.wait_log(r"accept failed: Too many open files", 5)
        for c in greeted:
            c.expect("QUIT", 221)
            c.close()
        _set_soft_nofile(engine, hard)
        # No new connection: the waiting ones are served all the same.
        for c in waiting:
            assert c.reply(timeout=5).code == 220
            c.expect("QUIT", 221)
    finally:
        for c in greeted + waiting:
            c.close()
