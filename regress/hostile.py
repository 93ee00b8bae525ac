"""Tools of regress/test_hostile.py: an honest load, the daemon's memory, attackers
that hold many sockets in one thread, and the table of the results.

The honest load runs in a process of its own (`python3 hostile.py honest PORT
SECONDS SESSIONS`), so that attackers in the test's threads do not slow it down
through Python's interpreter lock: it sends messages in SESSIONS sessions from
127.0.0.1 for SECONDS seconds, then prints, as JSON, every message id acknowledged
with a 250 and what went wrong.  A session is replaced when it ends (at most 100
messages each, the default `max-mails`).
"""

import json
import os
import re
import resource
import socket
import ssl
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
HONEST_SOURCE = "127.0.0.1"
ACCEPTED = re.compile(rb"^250 2\.0\.0 ([0-9a-f]{8}) Message accepted", re.M)


# --- the honest load ------------------------------------------------------------------


def _read_reply(sock, buf, deadline):
    """One reply from `sock` (buf: bytes read ahead): (last line, rest)."""
    while True:
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            if len(line) >= 4 and line[3:4] == b" ":
                return line, buf
            if len(line) < 4 or line[3:4] != b"-":
                raise ValueError("malformed reply %r" % line)
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no reply")
        sock.settimeout(left)
        d = sock.recv(65536)
        if not d:
            raise ConnectionError("closed")
        buf += d


def _honest_session(port, stop_at, acked, errors, n):
    body = (b"Subject: honest %d\r\n\r\n" % n) + b"an honest line of text\r\n" * 20 + b".\r\n"
    s = socket.create_connection(("127.0.0.1", port), timeout=20,
                                 source_address=(HONEST_SOURCE, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        buf = b""
        line, buf = _read_reply(s, buf, time.monotonic() + 20)
        if not line.startswith(b"220"):
            errors.append(line.decode(errors="replace"))
            return
        s.sendall(b"EHLO honest.test\r\n")
        line, buf = _read_reply(s, buf, time.monotonic() + 20)
        for _ in range(100):
            if time.monotonic() >= stop_at:
                break
            s.sendall(b"MAIL FROM:<h@example.test>\r\nRCPT TO:<r%d@example.test>\r\nDATA\r\n" % n)
            codes = []
            for _ in range(3):
                line, buf = _read_reply(s, buf, time.monotonic() + 20)
                codes.append(line[:3])
            if codes != [b"250", b"250", b"354"]:
                errors.append("transaction: %r" % codes)
                return
            s.sendall(body)
            line, buf = _read_reply(s, buf, time.monotonic() + 20)
            m = ACCEPTED.match(line)
            if not m:
                errors.append(line.decode(errors="replace"))
                return
            acked.append(m.group(1).decode())
        s.sendall(b"QUIT\r\n")
    finally:
        s.close()


def _honest_main(port, seconds, sessions):
    stop_at = time.monotonic() + seconds
    acked, errors = [], []

    def worker(k):
        n = 0
        while time.monotonic() < stop_at and len(errors) < 50:
            try:
                _honest_session(port, stop_at, acked, errors, k * 1000000 + n)
            except (OSError, ValueError) as e:
                errors.append(repr(e)[:200])
            n += 1

    ts = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(sessions)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(seconds + 30)
    json.dump({"acked": acked, "errors": errors[:20], "seconds": seconds}, sys.stdout)


class Honest:
    """The honest load, started in its own process: `result()` waits for it and
    returns (message ids acknowledged, messages a second, errors)."""

    def __init__(self, port, seconds, sessions=2):
        self.seconds = seconds
        self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "hostile.py"), "honest",
                                      str(port), str(seconds), str(sessions)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def result(self):
        try:
            out, err = self.proc.communicate(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise AssertionError("the honest load did not end")
        assert self.proc.returncode == 0, err.decode(errors="replace")[-2000:]
        r = json.loads(out)
        return r["acked"], len(r["acked"]) / self.seconds, r["errors"]


# --- memory ---------------------------------------------------------------------------


def _vmrss_kb(pid):
    """VmRSS of `pid` in KiB (test_filter_flood.rss_kb), 0 once it is gone."""
    from test_filter_flood import rss_kb

    try:
        return rss_kb(pid)
    except (OSError, AssertionError):
        return 0


def daemon_pids(d):
    """The daemon's parent and its engine (delivery workers and filters are other
    programs or come and go)."""
    from test_filter_flood import engine_pid

    return [d.pid, engine_pid(d)]


def daemon_rss_kb(d):
    """Parent and engine, VmRSS summed, in KiB."""
    return sum(_vmrss_kb(p) for p in daemon_pids(d))


def cpu_seconds(pids):
    """User and system time of `pids`, summed, in seconds."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid, "rb") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(b")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """The largest daemon_rss_kb seen, sampled every 0.1 s until stop()."""

    def __init__(self, d):
        super().__init__(daemon=True)
        self.pids = daemon_pids(d)
        self.top = sum(_vmrss_kb(p) for p in self.pids)
        self.done = threading.Event()

    def run(self):
        while not self.done.wait(0.1):
            self.top = max(self.top, sum(_vmrss_kb(p) for p in self.pids))

    def stop(self):
        self.done.set()
        self.join(5)
        return self.top


# --- attackers ------------------------------------------------------------------------


def raise_nofile(n=16384):
    """RLIMIT_NOFILE of the test process (and of the daemons it starts) at least n."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(soft, n), hard) if hard != resource.RLIM_INFINITY else max(soft, n)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def source_of(i, net=1, per=25):
    """The i-th attacking address: 127.<net>.x.y, `per` connections an address."""
    a = i // per + 1
    return "127.%d.%d.%d" % (net, a // 250, a % 250 + 1)


def connect(port, source, timeout=5.0, host="127.0.0.1"):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    s.bind((source, 0))
    s.settimeout(timeout)
    s.connect((host, port))
    return s


def discard_input(s):
    """Reads what is there without waiting: False once the peer closed.  (The socket
    is made non-blocking meanwhile: with a timeout, Python would wait that long for
    input before giving up.)"""
    timeout = s.gettimeout()
    s.setblocking(False)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.settimeout(timeout)


def read_until(s, pattern, timeout=10.0):
    """Bytes read from `s` until `pattern` (bytes) is in them, or the time is over."""
    buf = b""
    deadline = time.monotonic() + timeout
    while pattern not in buf and time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            d = s.recv(65536)
        except (socket.timeout, TimeoutError):
            break
        if not d:
            break
        buf += d
    return buf


def client_hello():
    """The bytes of a TLS ClientHello, as Python's ssl writes it."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="mx.test.example")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


class Slowloris(threading.Thread):
    """`n` connections, each sent `prefix` at once, then one byte of `trickle` every
    `interval` seconds until stop(); replies are read and dropped.  `opened` counts
    the connections made, `alive()` the ones the daemon has not closed."""

    def __init__(self, port, n, prefix=b"", trickle=b"EHLO slowloris.test\r\n", interval=2.0,
                 wait_for=None, net=1):
        super().__init__(daemon=True)
        self.port, self.n, self.prefix, self.trickle = port, n, prefix, trickle
        self.interval, self.wait_for, self.net = interval, wait_for, net
        self.socks = []
        self.opened = 0
        self.ready = threading.Event()
        self.done = threading.Event()
        self.errors = []

    def run(self):
        try:
            for i in range(self.n):
                if self.done.is_set():
                    break
                try:
                    s = connect(self.port, source_of(i, self.net))
                    if self.prefix:
                        s.sendall(self.prefix)
                    if self.wait_for:
                        got = read_until(s, self.wait_for, 10)
                        if self.wait_for not in got:
                            self.errors.append(got[-200:])
                            s.close()
                            continue
                except OSError as e:
                    self.errors.append(repr(e))
                    continue
                s.setblocking(False)
                self.socks.append(s)
                self.opened += 1
        finally:
            self.ready.set()
        pos = 0
        while not self.done.wait(self.interval):
            b = self.trickle[pos % len(self.trickle):][:1]
            pos += 1
            for s in self.socks:
                try:
                    discard_input(s)
                    s.send(b)
                except OSError:
                    pass

    def alive(self):
        return sum(1 for s in self.socks if discard_input(s))

    def stop(self):
        self.done.set()
        self.join(10)
        for s in self.socks:
            s.close()


def attacker_priority():
    """Lowers the calling thread's CPU priority (nice 10): on a small machine the
    attacking threads of the test process would otherwise take the CPU from the
    honest clients, which are another process; the daemon keeps its priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except OSError:
        pass


class Loop(threading.Thread):
    """Runs `step(index)` in a loop until stop() (each step bounded by its own
    timeouts); counts the steps and keeps the first errors."""

    def __init__(self, step, index=0):
        super().__init__(daemon=True)
        self.step, self.index = step, index
        self.count = 0
        self.errors = []
        self.done = threading.Event()

    def run(self):
        attacker_priority()
        while not self.done.is_set():
            try:
                self.step(self.index, self.count, self.done)
            except (OSError, ValueError, AssertionError) as e:
                if len(self.errors) < 5:
                    self.errors.append(repr(e)[:200])
            self.count += 1

    def stop(self):
        self.done.set()
        self.join(15)


# --- the table ------------------------------------------------------------------------

HEADER = "| attack | honest rate kept | daemon RSS (MiB) | lost |"


def report(attack, ratio, rss_kb, lost, note=""):
    """One row of the table, printed and appended to $HOSTILE_TABLE when set."""
    row = "| %s | %.2f | %.1f | %d |%s" % (attack, ratio, rss_kb / 1024.0, lost,
                                          (" " + note) if note else "")
    print("\n" + row)
    path = os.environ.get("HOSTILE_TABLE")
    if path:
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        with open(path, "a") as f:
            if new:
                f.write(HEADER + "\n|---|---|---|---|\n")
            f.write(row + "\n")
    return row


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "honest":
        _honest_main(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit("usage: hostile.py honest PORT SECONDS SESSIONS")
