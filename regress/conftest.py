"""Shared fixtures for the smtpd regression suite.

Run with Debian's interpreter:  /usr/bin/python3 -m pytest -q regress

Everything talks to 127.0.0.0/8 only.  Every daemon started here is stopped by its
PID (SIGTERM, then SIGKILL after a grace period); every loop is bounded in count and
in time.
"""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HOSTNAME = "mx.test.example"

# A configuration body that most tests can use: anything @example.test is accepted
# (virtual catch-all to root), local names are system users, and nothing is relayed.
#
# Every local action of a test configuration delivers into {MAILDIR}, a directory of the
# test (replaced by Daemon.write_config): the daemon delivers as root, and a test must
# never write into a real mailbox (~root/Maildir, /var/mail).  Delivery is paused at
# start anyway (Daemon.hold_delivery) so that tests can read what was committed.
DEFAULT_RULES = """
table vusers { "@example.test" = root }
action "virt" maildir "{MAILDIR}/%{user.username}" virtual <vusers>
action "local" maildir "{MAILDIR}/%{user.username}"
match from any for domain "example.test" action "virt"
match from any for local action "local"
"""

_built = {}


def cargo_build(args, what):
    """Runs `cargo ARGS` at the top of the repository (niced, at most 20 minutes);
    fails the test with the end of its output when it fails."""
    r = subprocess.run(["nice", "-n", "10", "cargo"] + args, cwd=REPO, capture_output=True,
                       text=True, timeout=1200)
    if r.returncode != 0:
        pytest.fail("cargo %s failed:\n%s" % (what, r.stderr[-4000:]))


def optimized_bin(name, features=()):
    """An optimized daemon for the tests that need one: `cargo build --profile regress`
    (release code without LTO, debug assertions on) with `features`, copied to
    target/regress-bins/NAME/smtpd, since builds with other features replace
    target/regress/smtpd. Every such build shares the profile's dependencies."""
    args = ["build", "--profile", "regress", "--bin", "smtpd"]
    if features:
        args += ["--features", ",".join(features)]
    cargo_build(args, " ".join(args[1:]))
    out = REPO / "target" / "regress-bins" / name
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "smtpd.new"
    shutil.copy2(REPO / "target" / "regress" / "smtpd", tmp)
    os.replace(tmp, out / "smtpd")
    return out / "smtpd"


def smtpd_bin():
    """The daemon binary: $SMTPD_BIN, else <repo>/target/debug/smtpd (built once)."""
    env = os.environ.get("SMTPD_BIN")
    if env:
        p = Path(env)
        if not p.is_file():
            pytest.fail(f"SMTPD_BIN={env} does not exist")
        return p
    p = REPO / "target" / "debug" / "smtpd"
    if not p.is_file() and "done" not in _built:
        _built["done"] = True
        r = subprocess.run(["cargo", "build"], cwd=REPO, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            pytest.fail("cargo build failed:\n" + r.stderr[-4000:])
    if not p.is_file():
        pytest.fail(f"{p} not found and cargo build did not produce it")
    return p


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def supports_pause_flag():
    """Whether this smtpd has `-P mda|mta|smtp` (start with an agent paused)."""
    if "pause" not in _built:
        r = subprocess.run([str(smtpd_bin()), "-h"], capture_output=True, text=True, timeout=30)
        _built["pause"] = re.search(r"\[-P [^]]*mda", r.stdout + r.stderr) is not None
    return _built["pause"]


def free_port(host="127.0.0.1"):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    try:
        s.bind((host, 0))
        return s.getsockname()[1]
    finally:
        s.close()


# ---------------------------------------------------------------------------
# Replies and the raw client
# ---------------------------------------------------------------------------


class Reply:
    """One (possibly multi-line) SMTP reply."""

    def __init__(self, lines):
        self.lines = lines  # decoded text lines without CR LF
        self.code = int(lines[-1][:3])
        last = lines[-1][4:]
        m = re.match(r"([245]\.\d{1,3}\.\d{1,3}) ", last + " ")
        self.esc = m.group(1) if m else ""
        self.text = "\n".join(l[4:] for l in lines)

    @property
    def first(self):
        return self.lines[0]

    def __repr__(self):
        return "Reply(%r)" % ("\\n".join(self.lines),)

    def is_(self, code, esc=None):
        return self.code == code and (esc is None or self.esc == esc)


class Closed(Exception):
    """The server closed the connection."""


class SMTPRaw:
    """A byte-level SMTP client: send exactly what the test says, read replies."""

    def __init__(self, port, host="127.0.0.1", source=None, timeout=10.0):
        self.sock = socket.socket(family(host), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.settimeout(timeout)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.timeout = timeout
        self.buf = b""
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def tls(self, server_hostname=None, cafile=None, cert=None, version=None):
        """Starts TLS on the connection (after a 220 to STARTTLS, or at once for smtps);
        nothing may be buffered.  Verifies the server against `cafile` when given."""
        import ssl

        assert self.buf == b"", "bytes before the handshake: %r" % self.buf
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        if cafile:
            ctx.load_verify_locations(cafile)
        else:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert:
            ctx.load_cert_chain(*cert)
        if version:
            ctx.minimum_version = ctx.maximum_version = version
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname)
        return self.sock

    def _fill(self, deadline):
        if self.eof:
            raise Closed("connection closed")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("no reply within %.1fs; have %r" % (self.timeout, self.buf))
        self.sock.settimeout(remaining)
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            raise Closed("connection closed; pending %r" % (self.buf,))
        self.buf += d

    def read_line(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\r\n" not in self.buf:
            self._fill(deadline)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode("utf-8", "replace")

    def reply(self, timeout=None):
        """Reads one complete reply."""
        lines = []
        while True:
            line = self.read_line(timeout)
            assert re.match(r"^\d{3}[ -]", line), "malformed reply line %r" % line
            lines.append(line)
            if line[3] == " ":
                return Reply(lines)

    def replies(self, n, timeout=None):
        return [self.reply(timeout) for _ in range(n)]

    def cmd(self, line, timeout=None):
        if isinstance(line, str):
            line = line.encode()
        self.send(line + b"\r\n")
        return self.reply(timeout)

    def expect(self, line, code, esc=None):
        r = self.cmd(line)
        assert r.is_(code, esc), "%r -> %r, wanted %s %s" % (line, r, code, esc or "")
        return r

    def greeting(self):
        r = self.reply()
        assert r.code == 220, r
        return r

    def ehlo(self, name="client.test"):
        self.greeting()
        r = self.cmd("EHLO " + name)
        assert r.code == 250, r
        return r

    def helo(self, name="client.test"):
        self.greeting()
        r = self.cmd("HELO " + name)
        assert r.code == 250, r
        return r

    def wait_closed(self, timeout=5.0):
        """True once the server closes; replies received meanwhile are kept in buf."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            try:
                self._fill(deadline)
            except Closed:
                return True
            except (socket.timeout, TimeoutError):
                return False
            except OSError:
                return True
        return True

    def drain(self, quiet=0.7, limit=10.0):
        """Reads every reply until the server says nothing for `quiet` seconds or closes."""
        out = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                out.append(self.reply(timeout=quiet))
            except (socket.timeout, TimeoutError):
                break
            except Closed:
                break
        return out

    def until_quit(self, limit=10.0):
        """Sends QUIT and returns every reply up to and including the 221 (or the close)."""
        self.send(b"QUIT\r\n")
        out = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                r = self.reply(timeout=max(0.1, deadline - time.monotonic()))
            except (Closed, socket.timeout, TimeoutError, OSError):
                break
            out.append(r)
            if r.code == 221:
                break
        return out

    def send_message(self, sender, rcpts, body, params=""):
        """A whole transaction, each step checked; returns the msgid of the 250."""
        self.expect("MAIL FROM:<%s>%s" % (sender, (" " + params) if params else ""), 250, "2.1.0")
        for r in rcpts:
            self.expect("RCPT TO:<%s>" % r, 250, "2.1.5")
        self.expect("DATA", 354)
        if isinstance(body, str):
            body = body.encode()
        self.send(body + b".\r\n")
        r = self.reply()
        return accepted_id(r)


def accepted_id(r):
    m = re.fullmatch(r"250 2\.0\.0 ([0-9a-f]{8}) Message accepted for delivery", r.lines[-1])
    assert m, "wanted '250 2.0.0 MSGID Message accepted for delivery', got %r" % (r,)
    return m.group(1)


def data_of(lines):
    """Message content from text lines: CR LF endings, dot-stuffed."""
    out = b""
    for l in lines:
        if isinstance(l, str):
            l = l.encode()
        if l.startswith(b"."):
            l = b"." + l
        out += l + b"\r\n"
    return out


# ---------------------------------------------------------------------------
# The spool
# ---------------------------------------------------------------------------

# The envelope keys, in file order, as src/queue/envelope.rs writes them (read from the
# source so that this mirror follows the format); the list below is the fallback.
_FALLBACK_KEYS = [
    "evpid", "ctime", "sender", "rcpt", "dest", "action", "tag", "helo", "client",
    "hostname", "body", "dsn-notify", "dsn-ret", "dsn-envid", "dsn-orcpt", "retry",
    "last-try", "errorline",
]


def _envelope_format():
    try:
        src = (REPO / "src" / "queue" / "envelope.rs").read_text()
    except OSError:
        return "smtpd-envelope 1", _FALLBACK_KEYS
    keys = re.findall(r'\bput\(\s*"([a-z0-9-]+)"', src)
    magic = re.search(r'const MAGIC: &str = "([^"]+)"', src)
    version = re.search(r"pub const VERSION: u32 = (\d+)", src)
    if not keys or not magic or not version:
        return "smtpd-envelope 1", _FALLBACK_KEYS
    return "%s %s" % (magic.group(1), version.group(1)), keys


ENVELOPE_HEADER, ENVELOPE_KEYS = _envelope_format()


def _optional_keys():
    """Keys written only when they say something (`if self.x { put("x", ...) }` in
    src/queue/envelope.rs): an envelope without them is what an older daemon wrote."""
    try:
        src = (REPO / "src" / "queue" / "envelope.rs").read_text()
    except OSError:
        return {"smtputf8", "requiretls"}
    return set(re.findall(r'if self\.\w+[^{\n]*\{\s*put\(\s*"([a-z0-9-]+)"', src))


ENVELOPE_OPTIONAL = _optional_keys()


def _unescape(v):
    out = bytearray()
    i = 0
    b = v.encode()
    while i < len(b):
        if b[i] == 0x25:  # %
            out.append(int(b[i + 1:i + 3].decode(), 16))
            i += 3
        else:
            assert 0x21 <= b[i] <= 0x7E, "raw byte %r in envelope value" % b[i]
            out.append(b[i])
            i += 1
    return out.decode()


def parse_envelope(data):
    """Strict parse of an envelope file (src/queue/envelope.rs); raises on deviation."""
    text = data.decode("utf-8")
    lines = text.split("\n")
    assert lines[-1] == "", "envelope does not end with a newline"
    lines = lines[:-1]
    assert lines[0] == ENVELOPE_HEADER, "bad envelope header %r" % lines[0]
    env = {}
    for line in lines[1:]:
        k, v = line.split(" ", 1)
        assert k in ENVELOPE_KEYS, "unknown key %r" % k
        assert k not in env, "repeated key %r" % k
        env[k] = _unescape(v)
    missing = set(ENVELOPE_KEYS) - set(env) - ENVELOPE_OPTIONAL
    assert not missing, "missing keys %s" % sorted(missing)
    assert re.fullmatch(r"[0-9a-f]{16}", env["evpid"]), env["evpid"]
    return env


def norm_dest(dest):
    """An envelope's `dest` without its kind prefix (`user:root` -> `root`,
    `relay:a@b` -> `a@b`); older spools stored the bare value."""
    for kind in ("user:", "relay:"):
        if dest.startswith(kind):
            return dest[len(kind):]
    return dest


class Message:
    def __init__(self, msgid, path, data, envelopes, raw_envelopes):
        self.msgid = msgid
        self.path = path  # the message file, QUEUE/queue/BB/MSGID
        self.data = data  # the message as stored (LF line ends), without the envelopes
        self.envelopes = envelopes  # list of dicts
        self.raw_envelopes = raw_envelopes  # each envelope's bytes as stored

    @property
    def env_path(self):
        """Where the envelopes go once they change after the commit."""
        return self.path.with_name(self.path.name + ".env")

    @property
    def text(self):
        return self.data.decode("utf-8", "replace")

    def body(self):
        """The message without our own Received header (the first header)."""
        t = self.data
        assert t.startswith(b"Received: "), t[:80]
        # The Received header is folded with TAB continuation lines.
        lines = t.split(b"\n")
        i = 1
        while i < len(lines) and lines[i].startswith(b"\t"):
            i += 1
        return b"\n".join(lines[i:])

    def __repr__(self):
        return "Message(%s, %d bytes, %d envelopes)" % (self.msgid, len(self.data), len(self.envelopes))


TRAILER_RE = re.compile(rb"smtpd-queue 1 ([0-9a-f]{16}) ([0-9a-f]{8})\n\Z")


def split_envelopes(block):
    """The envelopes of a block (src/queue/spool.rs), each as its stored bytes."""
    head = ENVELOPE_HEADER.encode() + b"\n"
    assert block.startswith(head), block[:40]
    parts = block[len(head):].split(b"\n" + head)
    return [head + p + (b"" if p.endswith(b"\n") else b"\n") for p in parts]


def parse_message_file(raw):
    """(message bytes, envelope block) of a committed message file, checked strictly."""
    m = TRAILER_RE.search(raw[-40:])
    assert m, "no trailer: %r" % raw[-40:]
    n, envlen = int(m.group(1), 16), int(m.group(2), 16)
    assert n + envlen + 40 == len(raw), (n, envlen, len(raw))
    return raw[:n], raw[n:n + envlen]


def read_spool(queue):
    """Every committed message under QUEUE/queue/BB/MSGID (with MSGID.env when the
    envelopes changed after the commit)."""
    queue = Path(queue)
    out = []
    qdir = queue / "queue"
    if not qdir.is_dir():
        return out
    for bucket in sorted(qdir.iterdir()):
        for mfile in sorted(bucket.iterdir()):
            if mfile.name.endswith(".env"):
                assert (bucket / mfile.name[:-4]).exists() or not mfile.exists(), mfile
                continue
            if mfile.name.endswith(".tmp"):
                continue  # an envelope set being written, renamed into place next
            msgid = mfile.name
            assert re.fullmatch(r"[0-9a-f]{8}", msgid), mfile
            assert bucket.name == msgid[:2], "message %s in bucket %s" % (msgid, bucket.name)
            try:
                data, block = parse_message_file(mfile.read_bytes())
                envfile = bucket / (msgid + ".env")
                if envfile.exists():
                    block = envfile.read_bytes()
            except FileNotFoundError:
                if mfile.exists():
                    raise
                continue  # delivered and removed while we were reading
            raw = split_envelopes(block)
            envs = [parse_envelope(r) for r in raw]
            for env in envs:
                assert env["evpid"][:8] == msgid, "evpid %s not in message %s" % (env["evpid"], msgid)
            out.append(Message(msgid, mfile, data, envs, raw))
    return out


# ---------------------------------------------------------------------------
# The daemon
# ---------------------------------------------------------------------------


def descendants(pid):
    """PIDs of every process below `pid`, parents before children (from /proc)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(0), []):
            out.append(c)
            todo.append(c)
    return out


def _kill(pid, sig):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return b") Z " not in f.read()
    except OSError:
        return False


def _kill_and_wait(pids, timeout):
    """Waits (bounded) for processes we started indirectly; SIGKILL them if they stay."""
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    for p in pids:
        if _alive(p):
            _kill(p, signal.SIGKILL)


def stop_process(proc, grace=10.0):
    """Stops a process we started (a subprocess.Popen): SIGTERM by PID, SIGKILL after
    `grace` seconds; the processes it had forked are waited for, and killed by PID if
    they linger.  Returns its exit status."""
    kids = descendants(proc.pid)
    if proc.poll() is None:
        _kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            _kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    _kill_and_wait(kids, 5.0)
    return proc.returncode


def allow_traversal(path):
    """Started as root, smtpd runs its engine as the unprivileged user (_smtpd) that owns
    the spool: every directory above the spool must be searchable by it.  pytest makes
    its temporary directories 0700, so add search (x) permission up to /tmp."""
    p = Path(path).resolve()
    for d in [p] + list(p.parents):
        if str(d) in ("/", "/tmp") or d == Path(tempfile.gettempdir()).resolve():
            break
        mode = d.stat().st_mode
        if mode & 0o011 != 0o011:
            os.chmod(d, (mode & 0o7777) | 0o011)


class Daemon:
    """One smtpd under test, in its own directory with its own spool."""

    def __init__(self, workdir, rules=DEFAULT_RULES, extra="", listen_host="127.0.0.1",
                 hostname=HOSTNAME, queue=None, wrapper=None, name="smtpd", deliver=False,
                 methods=(), mail_owner=None, listen_opts=""):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        allow_traversal(self.dir)
        self.name = name
        self.rules = rules
        self.extra = extra
        self.host = listen_host
        self.hostname = hostname
        # Words added to the listen line: "tls pki NAME", "smtps", ...
        self.listen_opts = listen_opts
        self.queue = Path(queue) if queue else self.dir / "spool"
        self.wrapper = wrapper  # callable(argv) -> argv, e.g. to run inside unshare
        # These tests look at what the SMTP side committed: keep the messages in the
        # queue by pausing delivery, when the daemon has a control socket (and delivery).
        # Delivery tests pass deliver=True (no -P); they may change it between starts.
        self.hold_delivery = not deliver
        # Local methods the write_config guard lets through ("mbox", "mda", "lmtp"),
        # each with its own check (see _check_action).
        self.methods = frozenset(methods)
        self.paused_at_start = False  # -P mda -P mta was given (no race at all)
        self.maildir = self.dir / "mail"
        if mail_owner is not None:
            # Deliveries run as the recipient (or the action's user): give them mail/.
            self.maildir.mkdir(exist_ok=True)
            if mail_owner == "*":
                os.chmod(self.maildir, 0o1777)
            else:
                pw = pwd.getpwnam(mail_owner)
                os.chown(self.maildir, pw.pw_uid, pw.pw_gid)
                os.chmod(self.maildir, 0o700)
        self.ns_view = False  # the spool is only visible in the daemon's mount namespace
        self.conf = self.dir / (name + ".conf")
        self.logpath = self.dir / (name + ".log")
        self.proc = None
        self.port = None
        self.exit_code = None
        self._logf = None

    def write_config(self):
        body = ("%s\n%s\n" % (self.extra, self.rules)).replace("{MAILDIR}", str(self.maildir))
        # Guard: a local action without an explicit path inside the test directory
        # would deliver into a real mailbox.
        for m in re.finditer(r"^\s*action\s+\S+\s+(\S+)(?:\s+(\S+))?", body, re.M):
            method, arg = m.group(1), m.group(2) or ""
            if method in ("mbox", "mda", "lmtp"):
                self._check_action(method, arg, body[m.start():body.find("\n", m.start())])
            if method == "maildir" and not arg.strip('"').startswith(str(self.dir)):
                raise ValueError("maildir actions need a path under the test directory: %s" % m.group(0))
        listen = "listen on %s port %d hostname %s" % (self.host, self.port, self.hostname)
        if not self.listen_opts:
            self.conf.write_text('queue path "%s"\n%s\n%s' % (self.queue, listen, body))
            return
        # Options may name tables of `extra`: the listener comes after it.
        self.conf.write_text(
            ('queue path "%s"\n%s\n%s %s\n%s\n'
             % (self.queue, self.extra, listen, self.listen_opts, self.rules))
            .replace("{MAILDIR}", str(self.maildir)))

    def _check_action(self, method, arg, line):
        """mbox, mda and lmtp actions only where the test asked for them (methods=...):
        an mbox action must carry a `userbase` (the test users: never root's mailbox),
        an lmtp action must name a loopback address or a socket of the test directory."""
        if method not in self.methods:
            raise ValueError("test configurations must not use %r actions unless the daemon is "
                             "made with methods=(%r,): %s" % (method, method, line))
        if method == "mbox" and "userbase" not in line:
            raise ValueError("an mbox action needs a userbase of test users: %s" % line)
        if method == "lmtp":
            dest = arg.strip('"')
            if dest.startswith("lmtp://"):
                dest = dest[len("lmtp://"):]
            if not (dest.startswith("127.") or dest.startswith("[::1]")
                    or dest.startswith(str(self.dir))):
                raise ValueError("lmtp actions must stay on the loopback: %s" % line)

    def start(self, port=None, attempts=3):
        """Starts `smtpd -d -f CONF` and waits until the port accepts."""
        last = ""
        for _ in range(attempts):
            self.port = port or free_port(self.host)
            self.write_config()
            argv = [str(smtpd_bin()), "-d", "-f", str(self.conf)]
            self.paused_at_start = self.hold_delivery and supports_pause_flag()
            if self.paused_at_start:
                argv += ["-P", "mda", "-P", "mta"]
            if self.wrapper:
                argv = self.wrapper(argv)
            self._logf = open(self.logpath, "ab")
            self._logf.write(b"=== start %s\n" % " ".join(argv).encode())
            self._logf.flush()
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._logf,
                                         stderr=self._logf, cwd=self.dir)
            self.exit_code = None
            if self.hold_delivery and not self.paused_at_start:
                self._pause_early(10.0)
            if self._wait_port(10.0):
                if self.hold_delivery and not self.paused_at_start:
                    self.pause_delivery()
                return self
            last = self.log()[-2000:]
            self._reap_hard()
            if port:
                break
        raise RuntimeError("smtpd did not start listening; log tail:\n" + last)

    def _wait_port(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                s = socket.create_connection((self.host, self.port), timeout=0.5)
            except OSError:
                time.sleep(0.05)
                continue
            if "proxy-v2" in self.listen_opts.split():
                # The listener waits for a PROXY header: UNKNOWN keeps the probe's address.
                s.sendall(b"PROXY UNKNOWN\r\n")
            if "smtps" in self.listen_opts.split():
                # No greeting before a handshake: the port accepting is enough.
                s.close()
                return True
            # The probe connection is a real session: say QUIT so it ends quickly.
            try:
                s.settimeout(3)
                s.recv(512)
                s.sendall(b"QUIT\r\n")
                # Read up to EOF, so the probe session is gone before tests count sessions.
                for _ in range(20):
                    if not s.recv(512):
                        break
            except OSError:
                pass
            s.close()
            return True
        return False

    def ctl(self, line, timeout=3.0):
        """One command on the control socket QUEUE/smtpd.sock; None if there is none."""
        path = Path(self.spool_root()) / "smtpd.sock"
        if not path.exists():
            return None
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        out = b""
        try:
            s.connect(str(path))
            s.sendall(line.encode() + b"\n")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                d = s.recv(4096)
                if not d:
                    break
                out += d
        except OSError as e:
            return "error: %s" % e
        finally:
            s.close()
        return out.decode(errors="replace")

    def pause_delivery(self):
        """`pause mda` and `pause mta` on the control socket; False if there is none."""
        ok = True
        for agent in ("mda", "mta"):
            r = self.ctl("pause " + agent)
            ok = ok and r is not None and not r.startswith("error")
        return ok

    def _pause_early(self, timeout):
        """Pauses delivery as soon as the control socket appears (before the SMTP port
        is probed), to leave a restarted daemon as little time as possible to deliver
        what is queued.  A daemon without a control socket has no delivery either."""
        deadline = time.monotonic() + timeout
        sock = Path(self.spool_root()) / "smtpd.sock"
        while time.monotonic() < deadline and self.proc.poll() is None:
            if sock.exists() and self.pause_delivery():
                return True
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                # SMTP is up and still no control socket: this daemon has none.
                return sock.exists() and self.pause_delivery()
            except OSError:
                pass
            time.sleep(0.01)
        return False

    def delivered(self):
        """Messages delivered into the test's maildirs: {msgid: bytes}, found by the
        `id MSGID` of our Received header."""
        out = {}
        if not self.maildir.is_dir():
            return out
        for f in self.maildir.glob("**/new/*"):
            data = f.read_bytes()
            m = re.search(rb"\(smtpd\) with E?SMTP id ([0-9a-f]{8})", data[:4096])
            if m:
                out[m.group(1).decode()] = data
        return out

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace=10.0):
        """SIGTERM by PID, SIGKILL after `grace`; returns the exit code.  Processes the
        daemon forked (its engine) are waited for, and killed by PID if they linger."""
        if self.proc is None:
            return self.exit_code
        self.exit_code = stop_process(self.proc, grace)
        self._close_log()
        self.proc = None
        return self.exit_code

    def kill9(self):
        """A crash: SIGKILL every process of the daemon (children first), by PID."""
        if self.proc is not None and self.proc.poll() is None:
            kids = descendants(self.proc.pid)
            for pid in reversed(kids):
                _kill(pid, signal.SIGKILL)
            _kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            _kill_and_wait(kids, 10.0)
        self.exit_code = self.proc.returncode if self.proc else None
        self._close_log()
        self.proc = None

    def _reap_hard(self):
        if self.proc is not None and self.proc.poll() is None:
            kids = descendants(self.proc.pid)
            _kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            _kill_and_wait(kids, 5.0)
        self._close_log()

    def _close_log(self):
        if self._logf:
            self._logf.close()
            self._logf = None

    def log(self):
        try:
            return self.logpath.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client(self, source=None, timeout=10.0):
        return SMTPRaw(self.port, host=self.host, source=source, timeout=timeout)

    # Spool access.  `root` lets the disk-full test read through /proc/PID/root.
    def spool_root(self):
        if self.ns_view and self.proc is not None:
            return Path("/proc/%d/root%s" % (self.proc.pid, self.queue))
        return self.queue

    def messages(self):
        return read_spool(self.spool_root())

    def incoming(self):
        d = Path(self.spool_root()) / "incoming"
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

    def wait_messages(self, n, timeout=5.0):
        """Committed messages, waiting (bounded) until there are at least n."""
        deadline = time.monotonic() + timeout
        while True:
            msgs = self.messages()
            if len(msgs) >= n or time.monotonic() > deadline:
                return msgs
            time.sleep(0.05)

    # Delivery tests.
    def run_tool(self, args, input=None, user=None, cwd=None, timeout=30, argv0=None, env=None):
        """Runs `smtpd ARGS...` (or the binary `argv0`, e.g. a link named sendmail),
        optionally as `user` (setpriv); returns the CompletedProcess (bytes)."""
        argv = [str(argv0 or smtpd_bin())] + list(args)
        if user is not None:
            argv = as_user(user) + argv
        if isinstance(input, str):
            input = input.encode()
        return subprocess.run(argv, input=input if input is not None else b"", capture_output=True,
                              cwd=cwd or self.dir, timeout=timeout, env=env)

    def smtpctl(self, *words, user=None, timeout=30):
        """`smtpd ctl -f CONF WORDS...`: (exit code, stdout, stderr) as text."""
        r = self.run_tool(["ctl", "-f", str(self.conf)] + list(words), user=user, timeout=timeout)
        return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")

    def sendmail(self, args, message, user=None, timeout=30):
        """`smtpd sendmail -C CONF ARGS...` with `message` on stdin."""
        return self.run_tool(["sendmail", "-C", str(self.conf)] + list(args), input=message,
                             user=user, timeout=timeout)

    def queue_empty(self):
        """No message left in queue/ (and no envelope file anywhere under it)."""
        q = Path(self.spool_root()) / "queue"
        return not q.is_dir() or not any(p.is_file() for p in q.rglob("*"))

    def wait_queue_empty(self, timeout=10.0):
        return wait_until(self.queue_empty, timeout)

    def mailbox(self, name):
        """Messages in the maildir mail/NAME/new/: [(path, bytes)] sorted by name."""
        d = self.maildir / name / "new"
        if not d.is_dir():
            return []
        return [(f, f.read_bytes()) for f in sorted(d.iterdir())]

    def wait_mailbox(self, name, n=1, timeout=10.0):
        """The messages of mail/NAME/new once there are at least n (bounded wait)."""
        wait_until(lambda: len(self.mailbox(name)) >= n, timeout)
        return self.mailbox(name)

    def wait_log(self, pattern, timeout=10.0):
        """The first match of the regex `pattern` in the log (bounded wait), else None."""
        found = []

        def look():
            m = re.search(pattern, self.log())
            if m:
                found.append(m)
            return bool(m)

        wait_until(look, timeout)
        return found[0] if found else None


def wait_until(pred, timeout=10.0, interval=0.05):
    """Calls pred until it returns a true value (returned) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def as_user(name):
    """argv prefix running a command as the user `name` (and its primary group only)."""
    pw = pwd.getpwnam(name)
    return ["setpriv", "--reuid=%d" % pw.pw_uid, "--regid=%d" % pw.pw_gid, "--clear-groups"]


# Test users.  Created once (useradd -m) and kept: several sessions may run at once, so
# they are never deleted; their /var/mail files are removed by the tests that make them.
TEST_USERS = ("smtpdtest1", "smtpdtest2")


def ensure_user(name, shell="/bin/sh"):
    """The passwd entry of the test user `name`, created when missing (root only)."""
    assert name.startswith("smtpdtest"), name
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    if os.geteuid() != 0:
        pytest.skip("needs root to create the test user %s" % name)
    r = subprocess.run(["useradd", "-m", "-s", shell, name], capture_output=True, text=True,
                       timeout=60)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pytest.fail("useradd %s failed: %s" % (name, r.stderr))


@pytest.fixture
def user1():
    """The test user smtpdtest1 (passwd entry); its /var/mail file is removed after."""
    pw = ensure_user("smtpdtest1")
    yield pw
    _remove_mbox(pw.pw_name)


@pytest.fixture
def user2():
    pw = ensure_user("smtpdtest2")
    yield pw
    _remove_mbox(pw.pw_name)


def _remove_mbox(name):
    for p in ("/var/mail/" + name, "/var/mail/" + name + ".lock"):
        try:
            os.unlink(p)
        except FileNotFoundError:
            pass


def smtpq_gid():
    """The gid of the group _smtpq (of a setgid sendmail), created when missing."""
    import grp

    try:
        return grp.getgrnam("_smtpq").gr_gid
    except KeyError:
        subprocess.run(["groupadd", "-r", "_smtpq"], capture_output=True, timeout=60)
        return grp.getgrnam("_smtpq").gr_gid


def needs_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (smtpd delivers as other users only when started as root)")


def parse_dsn(data):
    """A delivery status notification: (message, [per-recipient field dicts], per-message
    fields, returned part), checked to be multipart/report with message/delivery-status."""
    import email
    import email.policy

    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report", msg.get_content_type()
    assert msg.get_param("report-type") == "delivery-status", msg.get("Content-Type")
    parts = msg.get_payload()
    assert isinstance(parts, list) and len(parts) == 3, "want 3 parts, got %r" % (parts,)
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks = parts[1].get_payload()
    assert isinstance(blocks, list) and len(blocks) >= 2, blocks
    per_msg = dict(blocks[0].items())
    per_rcpt = [dict(b.items()) for b in blocks[1:]]
    assert parts[2].get_content_type() in ("message/rfc822", "text/rfc822-headers")
    return msg, per_rcpt, per_msg, parts[2]


class DaemonFactory:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.daemons = []

    def __call__(self, rules=DEFAULT_RULES, extra="", start=True, **kw):
        name = kw.pop("name", self.next_name())
        d = Daemon(self.tmp / name, rules=rules, extra=extra, name=name, **kw)
        return self.add(d, start)

    def next_name(self):
        return "smtpd%d" % len(self.daemons)

    def add(self, d, start=True):
        """Keeps `d` for the cleanup, started unless `start` is false."""
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def cleanup(self):
        for d in self.daemons:
            try:
                d.stop(grace=10.0)
            except Exception:  # noqa: BLE001 - teardown must go on
                d._reap_hard()


@pytest.fixture
def make_daemon(tmp_path):
    """Factory: make_daemon(rules=..., extra='smtp limit ...') -> started Daemon."""
    f = DaemonFactory(tmp_path)
    yield f
    f.cleanup()


@pytest.fixture
def daemon(make_daemon):
    """A daemon with DEFAULT_RULES and default limits."""
    return make_daemon()


@pytest.fixture(scope="session")
def binary():
    return smtpd_bin()


# pytest makes /tmp/pytest-of-USER mode 0700 at the start of every session, which takes
# away the search permission that allow_traversal gave: the engines (_smtpd) and the test
# users of the daemons of another session running at the same time then lose their spool
# and mail directories (EACCES).  So each session gets a base directory of its own in
# /tmp, which no other session touches; it is removed at the end when every test passed.
_session_base = {}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.option.basetemp is None and not os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        # Directories kept by failed sessions go after a day.
        import glob
        import shutil

        for old in glob.glob(os.path.join(tempfile.gettempdir(), "smtpd-regress-*")):
            try:
                if time.time() - os.lstat(old).st_mtime > 86400:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                pass
        base = tempfile.mkdtemp(prefix="smtpd-regress-")
        config.option.basetemp = base
        _session_base["dir"] = base


def pytest_sessionfinish(session, exitstatus):
    base = _session_base.pop("dir", None)
    if base is None:
        return
    if exitstatus == 0 or not os.listdir(base):
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    else:
        _session_base["kept"] = base


def pytest_terminal_summary(terminalreporter):
    kept = _session_base.pop("kept", None)
    if kept:
        terminalreporter.write_sep("-", "test directories (logs, spools) kept in %s" % kept)


def pytest_report_header(config):
    return ["smtpd under test: %s" % (os.environ.get("SMTPD_BIN") or REPO / "target/debug/smtpd"),
            "test directories: %s" % (config.option.basetemp or "pytest default")]


def filter_dir(tmp_path, spec):
    """A `filter f` statement for regress/filterlib.py with `spec`, copied where the
    daemon's filter user may read it."""
    flt = tmp_path / "flt"
    flt.mkdir()
    shutil.copy(REPO / "regress" / "filterlib.py", flt / "filterlib.py")
    (flt / "spec.json").write_text(json.dumps(spec))
    for p in (flt, flt / "filterlib.py", flt / "spec.json"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    allow_traversal(flt)
    return 'filter f proc-exec "/usr/bin/python3 %s %s"\n' % (flt / "filterlib.py", flt / "spec.json")
