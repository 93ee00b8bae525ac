"""filter-milter: smtpd's filter protocol bridged to Sendmail milters.

* opendkim (Debian's) signs mail through the bridge; the signature verifies (dkimpy,
  with the key's TXT record given by hand: no DNS);
* a python3-milter test milter (regress/milter/testmilter.py) gives every reply and
  every modification; the effects are checked in the spool and the envelopes;
* a milter that is down, or that accepts the connection and never answers, or that
  hangs at end of message, gets the default action (-d tempfail, accept, reject),
  and no mail is lost: every 250 has its message in the spool.

Needs Debian's opendkim, opendkim-tools, python3-milter and python3-dkim (tests skip
without them). The bridge is target/debug/filter-milter (built here when missing, or
$FILTER_MILTER_BIN); it is copied into the test directory so that `_smtpd` can run it.
"""

import base64
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, Daemon, DaemonFactory, SMTPRaw, accepted_id, allow_traversal, wait_until

PY = "/usr/bin/python3"
TESTMILTER = REPO / "regress" / "milter" / "testmilter.py"

RULES = """
table vusers { "@example.test" = root }
action "virt" maildir "{MAILDIR}/%{user.username}" virtual <vusers>
match from any for domain "example.test" action "virt"
"""

_built = {}


def bridge_bin():
    """The bridge binary: $FILTER_MILTER_BIN, else target/debug/filter-milter (built)."""
    env = os.environ.get("FILTER_MILTER_BIN")
    if env:
        return Path(env)
    p = REPO / "target" / "debug" / "filter-milter"
    if "done" not in _built:
        _built["done"] = True
        r = subprocess.run(["cargo", "build", "-p", "filter-milter"], cwd=REPO,
                           capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            pytest.fail("cargo build -p filter-milter failed:\n" + r.stderr[-4000:])
    if not p.is_file():
        pytest.fail("%s not found" % p)
    return p


def have_pymilter():
    r = subprocess.run([PY, "-c", "import Milter"], capture_output=True, timeout=30)
    return r.returncode == 0


def need_pymilter():
    if not have_pymilter():
        pytest.skip("python3-milter is not installed (apt-get install python3-milter)")


class MilterDaemon(Daemon):
    """A Daemon whose TCP listener goes through `filter-milter ARGS`."""

    def __init__(self, workdir, bridge, bridge_args, filter_timeout="60s", local=False, **kw):
        super().__init__(workdir, rules=RULES, **kw)
        self.bridge = bridge
        self.bridge_args = bridge_args
        self.filter_timeout = filter_timeout
        self.local = local  # the local socket (sendmail) goes through the bridge too
        self.accepted = []  # msgids of every 250 given

    def write_config(self):
        super().write_config()
        text = self.conf.read_text()
        head, sep, rest = text.partition("\nlisten on ")
        assert sep, text
        line, nl, tail = rest.partition("\n")
        decl = 'filter milter proc-exec "%s %s" timeout %s' % (self.bridge, self.bridge_args,
                                                                self.filter_timeout)
        local = "listen on socket filter milter\n" if self.local else ""
        self.conf.write_text(head + "\n" + decl + "\nlisten on " + line + " filter milter" + nl
                             + local + tail)

    def message(self, msgid):
        for m in self.messages():
            if m.msgid == msgid:
                return m
        return None

    def send(self, c, sender, rcpts, data, expect=250):
        """MAIL, RCPT (each must get 250), DATA, content: the final reply. A 250 is
        remembered so that `check_no_loss` can look for its message."""
        c.expect("MAIL FROM:<%s>" % sender, 250)
        for r in rcpts:
            c.expect("RCPT TO:<%s>" % r, 250)
        c.expect("DATA", 354)
        c.send(data + b".\r\n")
        r = c.reply(timeout=30)
        if r.code == 250:
            self.accepted.append(accepted_id(r))
        if expect is not None:
            assert r.code == expect, r
        return r

    def check_no_loss(self):
        have = {m.msgid for m in self.messages()}
        missing = [i for i in self.accepted if i not in have]
        assert not missing, "acknowledged but not in the spool: %s" % missing


class Proc:
    """A helper process (milter) stopped by PID."""

    def __init__(self, argv, log, cwd):
        self.logf = open(log, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.logf,
                                     stderr=self.logf, cwd=cwd)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                # libmilter looks at its stop flag every few seconds: a second is
                # enough for a milter that is going to exit on its own.
                self.proc.wait(1)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.logf.close()


class Env(DaemonFactory):
    """Per-test setup: the bridge copied where `_smtpd` can run it, milter processes,
    daemons; everything stopped at the end."""

    def __init__(self, tmp_path):
        super().__init__(tmp_path)
        allow_traversal(tmp_path)
        bindir = tmp_path / "bin"
        bindir.mkdir(mode=0o755, exist_ok=True)
        os.chmod(bindir, 0o755)
        self.bridge = bindir / "filter-milter"
        shutil.copy(bridge_bin(), self.bridge)
        os.chmod(self.bridge, 0o755)
        self.sockdir = tmp_path / "s"
        self.sockdir.mkdir(exist_ok=True)
        os.chmod(self.sockdir, 0o777)
        self.procs = []
        self.threads = []

    def daemon(self, bridge_args, name=None, **kw):
        name = name or self.next_name()
        return self.add(MilterDaemon(self.tmp / name, self.bridge, bridge_args, name=name, **kw))

    def wait_socket(self, path, proc, timeout=20.0):
        ok = wait_until(lambda: path.exists() or proc.proc.poll() is not None, timeout)
        if not (ok and path.exists()):
            pytest.fail("milter socket %s did not appear; log:\n%s" % (path, self.log_of(proc)))
        os.chmod(path, 0o666)

    def log_of(self, proc):
        try:
            return Path(proc.logf.name).read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def test_milter(self):
        """Starts regress/milter/testmilter.py; returns (socket spec, records path)."""
        need_pymilter()
        sock = self.sockdir / "test.sock"
        records = self.tmp / "records.jsonl"
        records.touch()
        p = Proc([PY, str(TESTMILTER), "unix:%s" % sock, str(records)],
                 self.tmp / "testmilter.log", self.tmp)
        self.procs.append(p)
        self.wait_socket(sock, p)
        return "unix:%s" % sock, records

    def silent_milter(self):
        """A socket that accepts connections and never says a word."""
        sock = self.sockdir / "silent.sock"
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(sock))
        os.chmod(sock, 0o666)
        srv.listen(16)
        held = []
        stop = threading.Event()

        def loop():
            srv.settimeout(0.2)
            while not stop.is_set():
                try:
                    c, _ = srv.accept()
                    held.append(c)
                except socket.timeout:
                    continue
                except OSError:
                    break

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        self.threads.append((stop, t, srv, held))
        return "unix:%s" % sock

    def cleanup(self):
        super().cleanup()
        for p in self.procs:
            p.stop()
        for stop, t, srv, held in self.threads:
            stop.set()
            t.join(5)
            srv.close()
            for c in held:
                c.close()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.cleanup()


def records(path, kind="eom"):
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            if r.get("kind") == kind:
                out.append(r)
    return out


def wait_record(path, pred, kind="eom", timeout=10.0):
    found = []

    def look():
        for r in records(path, kind):
            if pred(r):
                found.append(r)
                return True
        return False

    wait_until(look, timeout)
    assert found, "no %s record matched in %s:\n%s" % (kind, path, Path(path).read_text()[-3000:])
    return found[0]


def msg(subject, extra=(), body=(b"hello",)):
    """Content lines (CR LF, dot-stuffed) with a Subject and extra header lines."""
    lines = [b"From: alice@example.test", b"To: bob@example.test", b"Subject: " + subject.encode()]
    lines += [l if isinstance(l, bytes) else l.encode() for l in extra]
    lines.append(b"")
    lines += list(body)
    out = b""
    for l in lines:
        if l.startswith(b"."):
            l = b"." + l
        out += l + b"\r\n"
    return out


def headers_of(m):
    """The header section of a spooled message (our Received header excluded)."""
    return m.body().split(b"\n\n", 1)[0].decode()


def body_of(m):
    return m.body().split(b"\n\n", 1)[1]


def rcpts_of(m):
    return sorted(e["rcpt"] for e in m.envelopes)


# ---------------------------------------------------------------------------
# (b) the python3-milter test milter: what it sees, every reply, every change
# ---------------------------------------------------------------------------


def test_what_the_milter_sees(env):
    spec, rec = env.test_milter()
    d = env.daemon("-t 10 -m {x_custom}=hello -m j=mx.milter.test " + spec)
    with d.client() as c:
        c.ehlo("client.test")
        body = (b".leading dot", b"line two", b"", b"last")
        data = msg("what it sees", [b"X-Folded-In: one", b"  two", b"X-Tab:\tvalue"], body)
        r = d.send(c, "alice@example.test", ["bob@example.test", "carol@example.test"], data)
        c.until_quit()
    m = d.message(accepted_id(r))
    assert m is not None
    assert "X-Test-Milter: yes" in headers_of(m)
    # Everything else is as sent.
    assert body_of(m) == b".leading dot\nline two\n\nlast\n"
    assert "Subject: what it sees\nX-Folded-In: one\n  two\nX-Tab:\tvalue\n" in headers_of(m)
    rcd = wait_record(rec, lambda r: ["Subject", "what it sees"] in r["headers"])
    conn = rcd["conn"]
    assert conn["hostname"] == "[127.0.0.1]" and conn["addr"] == "127.0.0.1"
    assert conn["family"] == socket.AF_INET and isinstance(conn["port"], int) and conn["port"] > 0
    assert conn["helo"] == "client.test"
    mc = rcd["macros"]
    assert mc["connect"]["j"] == "mx.milter.test"
    assert mc["connect"]["{daemon_name}"] == "smtpd"
    assert mc["connect"]["{daemon_addr}"] == "127.0.0.1"
    assert mc["connect"]["{daemon_port}"] == str(d.port)
    assert mc["connect"]["{if_addr}"] == "127.0.0.1"
    assert mc["connect"]["{client_addr}"] == "127.0.0.1"
    assert mc["connect"]["{client_port}"] == str(conn["port"])
    assert mc["connect"]["{client_name}"] == "[127.0.0.1]"
    assert mc["connect"]["_"] == "[127.0.0.1] [127.0.0.1]"
    assert mc["connect"]["v"].startswith("smtpd filter-milter")
    assert mc["connect"]["{x_custom}"] == "hello"
    qid = mc["mail"]["i"]
    assert re.fullmatch(r"[0-9A-F]{16}\.1", qid), qid
    assert mc["mail"]["{mail_addr}"] == "alice@example.test"
    assert mc["mail"]["{mail_host}"] == "example.test"
    assert mc["mail"]["{mail_mailer}"] == "smtp"
    # Not authenticated, no TLS: those macros are undefined, as in Sendmail.
    assert "{auth_authen}" not in mc["mail"] and "{auth_type}" not in mc["mail"]
    assert not any(k in mc.get("helo", {}) for k in ("{tls_version}", "{cipher}"))
    assert mc["rcpt"]["{rcpt_addr}"] == "carol@example.test"  # the last RCPT's macros
    assert mc["rcpt"]["{rcpt_host}"] == "example.test"
    for stage in ("rcpt", "data", "eoh", "eom"):
        assert mc[stage]["i"] == qid, stage
    assert rcd["mail"] == "<alice@example.test>"
    assert rcd["rcpts"] == ["<bob@example.test>", "<carol@example.test>"]
    # Headers: leading space removed (no HDR_LEADSPC), folds joined with LF.
    assert rcd["headers"] == [
        ["From", "alice@example.test"], ["To", "bob@example.test"], ["Subject", "what it sees"],
        ["X-Folded-In", "one\n  two"], ["X-Tab", "\tvalue"]]
    # The body: dot-stuffing undone, CR LF line ends.
    assert rcd["body"] == ".leading dot\r\nline two\r\n\r\nlast\r\n"
    ev = rcd["events"]
    assert ev[:5] == ["connect", "helo", "mail", "rcpt", "rcpt"], ev
    assert ev[5:] == ["data"] + ["header"] * 5 + ["eoh", "body", "eom"], ev
    # QUIT closed the milter connection.
    close = wait_record(rec, lambda r: r["conn"].get("port") == conn["port"], kind="close")
    assert close["events"][-1] == "close"
    d.check_no_loss()


def test_the_milter_sees_tls_and_auth(env):
    """After STARTTLS and AUTH, the macros Sendmail gives: the TLS ones with HELO, the
    AUTH ones from MAIL on."""
    spec, rec = env.test_milter()
    cert, key = env.tmp / "cert.pem", env.tmp / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=mx.test.example"],
                   check=True, capture_output=True, timeout=60)
    h = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input="pw-of-bob",
                       capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    creds = env.tmp / "creds"
    creds.write_text("bob %s\n" % h)
    d = env.daemon(spec, extra='pki test cert "%s"\npki test key "%s"\ntable creds file:%s\n'
                   % (cert, key, creds), listen_opts="tls pki test auth-optional <creds>")
    with d.client() as c:
        c.ehlo("client.test")
        c.expect("STARTTLS", 220)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.sock = ctx.wrap_socket(c.sock, server_hostname="mx.test.example")
        assert c.cmd("EHLO client.test").code == 250  # no second greeting
        ir = base64.b64encode(b"\0bob\0pw-of-bob").decode()
        c.expect("AUTH PLAIN " + ir, 235, "2.7.0")
        r = d.send(c, "bob@example.test", ["carol@example.test"], msg("over tls"))
        c.until_quit()
    assert d.message(accepted_id(r)) is not None
    mc = wait_record(rec, lambda r: ["Subject", "over tls"] in r["headers"])["macros"]
    assert mc["helo"]["{tls_version}"] == "TLSv1.3", mc["helo"]
    assert re.fullmatch(r"TLS_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)",
                        mc["helo"]["{cipher}"]), mc["helo"]
    assert mc["helo"]["{cipher_bits}"] in ("128", "256")
    assert "{cert_subject}" not in mc["helo"] or mc["helo"]["{cert_subject}"] == ""
    assert mc["mail"]["{auth_type}"] == "PLAIN" and mc["mail"]["{auth_authen}"] == "bob", mc["mail"]
    assert "pw-of-bob" not in d.log() and ir not in d.log()


def test_replies(env):
    spec, rec = env.test_milter()
    d = env.daemon("-t 10 " + spec)
    # Connect: reject and tempfail, by client address.
    with SMTPRaw(d.port, source="127.0.0.3") as c:
        r = c.reply()
        assert r.is_(550, "5.7.1"), r
        assert c.wait_closed()
    with SMTPRaw(d.port, source="127.0.0.4") as c:
        r = c.reply()
        assert r.is_(421, "4.7.1"), r
        assert c.wait_closed()
    with d.client() as c:
        c.greeting()
        # HELO rejected, then another one accepted.
        r = c.cmd("HELO reject.helo")
        assert r.is_(550, "5.7.1") and "Command rejected" in r.text, r
        c.expect("EHLO client.test", 250)
        # MAIL rejected; the next one goes on.
        c.expect("MAIL FROM:<reject-mail@example.test>", 550, "5.7.1")
        c.expect("MAIL FROM:<alice@example.test>", 250)
        # RCPT: reject, tempfail and a reply of the milter's own concern only that
        # recipient.
        c.expect("RCPT TO:<reject-rcpt@example.test>", 550, "5.7.1")
        c.expect("RCPT TO:<tempfail-rcpt@example.test>", 451, "4.7.1")
        r = c.cmd("RCPT TO:<code-rcpt@example.test>")
        assert r.is_(550, "5.7.1"), r
        assert "rcpt refused by test milter second line 100%" in r.text, r
        c.expect("RCPT TO:<bob@example.test>", 250)
        c.expect("DATA", 354)
        c.send(msg("after refused rcpts") + b".\r\n")
        r = c.reply()
        assert r.code == 250, r
        d.accepted.append(accepted_id(r))
        m = d.message(accepted_id(r))
        assert rcpts_of(m) == ["bob@example.test"]
        assert "X-Test-Milter: yes" in headers_of(m)
        # DISCARD at RCPT: accepted, not queued.
        n = len(d.messages())
        r = d.send(c, "alice@example.test", ["discard@example.test", "bob@example.test"],
                   msg("discarded at rcpt"))
        d.accepted.pop()  # discarded on purpose
        assert len(d.messages()) == n
        # ACCEPT at RCPT: no more milter events for the message (no header added).
        r = d.send(c, "alice@example.test", ["accept@example.test"], msg("accepted at rcpt"))
        m = d.message(accepted_id(r))
        assert "X-Test-Milter" not in headers_of(m)
        assert "Subject: accepted at rcpt" in headers_of(m)
        # A reject from the body callback is the answer at end of message.
        r = d.send(c, "alice@example.test", ["bob@example.test"],
                   msg("body reject", body=[b"REJECT-BODY"]), expect=550)
        assert r.esc == "5.7.1", r
        # End of message: reject, tempfail, own reply, discard.
        for action, code, esc in (("reject", 550, "5.7.1"), ("tempfail", 451, "4.7.1"),
                                  ("code", 554, "5.7.0")):
            n = len(d.messages())
            r = d.send(c, "alice@example.test", ["bob@example.test"],
                       msg("eom " + action, ["X-Test-Action: " + action]), expect=code)
            assert r.esc == esc, r
            if action == "code":
                assert "message refused by test milter" in r.text
            assert len(d.messages()) == n
        n = len(d.messages())
        d.send(c, "alice@example.test", ["bob@example.test"],
               msg("eom discard", ["X-Test-Action: discard"]))
        d.accepted.pop()
        assert len(d.messages()) == n
        # ACCEPT at end of message keeps the header added before it.
        r = d.send(c, "alice@example.test", ["bob@example.test"],
                   msg("eom accept", ["X-Test-Action: accept"]))
        assert "X-Test-Milter: yes" in headers_of(d.message(accepted_id(r)))
        # SKIP: the milter gets one body chunk of a body of three.
        big = [b"x" * 990] * 140
        r = d.send(c, "alice@example.test", ["bob@example.test"],
                   msg("skip", ["X-Test-Action: skip"], big))
        m = d.message(accepted_id(r))
        assert body_of(m) == b"".join(l + b"\n" for l in big)
        rcd = wait_record(rec, lambda r: ["Subject", "skip"] in r["headers"])
        ev = rcd["events"]
        this_msg = ev[len(ev) - 1 - ev[::-1].index("mail"):]
        assert rcd["chunks"] == 1 and this_msg.count("body") == 1, (rcd["chunks"], this_msg)
        # RSET after a MAIL: the milter gets an ABORT.
        c.expect("MAIL FROM:<alice@example.test>", 250)
        c.expect("RSET", 250)
        # A 421 of the milter's own at end of message closes the session.
        r = d.send(c, "alice@example.test", ["bob@example.test"],
                   msg("eom 421", ["X-Test-Action: shutdown-code"]), expect=421)
        assert "test milter shuts down" in r.text
        assert c.wait_closed()
    # A 421 at RCPT closes the session too.
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<alice@example.test>", 250)
        r = c.cmd("RCPT TO:<code421-rcpt@example.test>")
        assert r.is_(421, "4.7.0") and "test milter closes" in r.text, r
        assert c.wait_closed()
    ab = [r for r in records(rec, "close") if "abort" in r["events"]]
    assert ab, "no connection saw an ABORT"
    d.check_no_loss()


def test_modifications(env):
    spec, rec = env.test_milter()
    d = env.daemon("-t 10 " + spec)
    with d.client() as c:
        c.ehlo()
        data = msg("original subject", ["X-Test-Action: edits", "X-Remove-Me: bye"],
                   [b"original body"])
        r = d.send(c, "alice@example.test", ["bob@example.test", "removed@example.test"], data)
        c.until_quit()
    m = d.message(accepted_id(r))
    assert m is not None
    t = m.text
    # Our Received header stays first; the inserted header comes right after it.
    assert t.startswith("Received: ")
    hdrs = headers_of(m).split("\n")
    assert hdrs[0] == "X-Inserted: at the top", hdrs
    h = headers_of(m)
    assert "Subject: rewritten by the milter\n" in h and "original subject" not in h
    assert "X-Remove-Me" not in h
    assert "X-Test-Milter: yes\n" in h
    # A value folded with a bare LF is stored as a proper folded header.
    assert "X-Folded: first part\n\tsecond part\n" in h + "\n", h
    # A change of a header that is not there adds it (as Sendmail does).
    assert "X-Not-There: added by chgheader" in h
    assert h.index("X-Test-Milter") < h.index("X-Folded") < h.index("X-Not-There")
    assert body_of(m) == b"replaced body\nsecond line\n"
    # Envelopes: recipient added and removed, sender changed, held in the queue.
    assert rcpts_of(m) == ["added@example.test", "bob@example.test"]
    assert all(e["sender"] == "bounce@example.test" for e in m.envelopes), m.envelopes
    assert all(e["held"] == "1" for e in m.envelopes), m.envelopes
    d.check_no_loss()


def test_parallel_sessions_and_a_large_message(env):
    """Twenty sessions at once through one bridge process, and a 2 MB message: the
    spool and the milter both get every byte."""
    spec, rec = env.test_milter()
    d = env.daemon("-t 20 " + spec)
    results = {}

    def one(n):
        try:
            with d.client(timeout=30) as c:
                c.ehlo()
                r = d.send(c, "alice@example.test", ["bob@example.test"],
                           msg("parallel %d" % n, body=[b"message %d" % n]))
                results[n] = accepted_id(r)
                c.until_quit()
        except Exception as e:  # noqa: BLE001 - reported below
            results[n] = e

    threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for n in range(20):
        assert isinstance(results.get(n), str), (n, results.get(n))
        m = d.message(results[n])
        assert "Subject: parallel %d\n" % n in headers_of(m) + "\n"
        assert "X-Test-Milter: yes" in headers_of(m)
        assert body_of(m) == b"message %d\n" % n
    big = [(b"%06d " % i) + b"y" * 200 + (b"." if i % 7 == 0 else b"") for i in range(10000)]
    big[5] = b"." + big[5]
    with d.client(timeout=60) as c:
        c.ehlo()
        r = d.send(c, "alice@example.test", ["bob@example.test"], msg("large", body=big))
    m = d.message(accepted_id(r))
    assert body_of(m) == b"".join(l + b"\n" for l in big)
    rcd = wait_record(rec, lambda r: ["Subject", "large"] in r["headers"])
    assert rcd["body"].encode() == b"".join(l + b"\r\n" for l in big)
    assert rcd["chunks"] == -(-len(rcd["body"]) // 65535)
    d.check_no_loss()


def test_progress_resets_the_timeout(env):
    spec, rec = env.test_milter()
    d = env.daemon("-t 2 " + spec)
    with d.client() as c:
        c.ehlo()
        t0 = time.monotonic()
        r = d.send(c, "alice@example.test", ["bob@example.test"],
                   msg("progress", ["X-Test-Action: progress"]))
        assert time.monotonic() - t0 > 3.0
        assert "X-Test-Milter: yes" in headers_of(d.message(accepted_id(r)))
    d.check_no_loss()


# ---------------------------------------------------------------------------
# (c) failed milters: the default action, and no mail lost
# ---------------------------------------------------------------------------


def test_hung_at_end_of_message_tempfail_and_others_go_on(env):
    spec, rec = env.test_milter()
    d = env.daemon("-t 4 -d tempfail " + spec)
    result = {}

    def hung():
        with d.client(timeout=30) as c:
            c.ehlo()
            t0 = time.monotonic()
            result["reply"] = d.send(c, "alice@example.test", ["bob@example.test"],
                                     msg("hangs", ["X-Test-Action: hang"]), expect=None)
            result["took"] = time.monotonic() - t0
            # The session goes on: the milter failed, so the next MAIL is deferred too.
            result["next"] = c.cmd("MAIL FROM:<alice@example.test>")

    t = threading.Thread(target=hung)
    t.start()
    try:
        wait_record(rec, lambda r: ["Subject", "hangs"] in r["headers"])
        # Meanwhile another session is not held up.
        t0 = time.monotonic()
        with d.client() as c:
            c.ehlo()
            r = d.send(c, "alice@example.test", ["bob@example.test"], msg("not held up"))
        assert time.monotonic() - t0 < 3.0
        assert "reply" not in result, "the hung session was answered too early"
        assert "X-Test-Milter: yes" in headers_of(d.message(accepted_id(r)))
    finally:
        t.join(30)
    r = result["reply"]
    assert r.is_(451, "4.3.0"), r
    assert 3.5 < result["took"] < 10, result["took"]
    assert result["next"].is_(451, "4.3.0"), result["next"]
    assert not any(b"Subject: hangs" in m.data for m in d.messages())
    d.check_no_loss()


def test_hung_at_end_of_message_accept(env):
    spec, rec = env.test_milter()
    d = env.daemon("-t 2 -d accept " + spec)
    with d.client(timeout=30) as c:
        c.ehlo()
        data = msg("hangs, accepted", ["X-Test-Action: hang"], [b"body as sent"])
        r = d.send(c, "alice@example.test", ["bob@example.test"], data)
        m = d.message(accepted_id(r))
        assert "X-Test-Milter" not in headers_of(m)
        assert body_of(m) == b"body as sent\n"
        # The session goes on without the milter.
        r = d.send(c, "alice@example.test", ["bob@example.test"], msg("after the failure"))
        assert "X-Test-Milter" not in headers_of(d.message(accepted_id(r)))
    assert "default action accept" in d.log()
    d.check_no_loss()


def test_answers_before_the_daemon_gives_up(env):
    """The daemon waits 5 s for the filter, -t is 30 s: the bridge answers the hung end
    of message itself (default action) before the daemon would kill it, so the filter
    is not restarted and the other sessions are not failed."""
    spec, rec = env.test_milter()
    d = env.daemon("-t 30 -d accept " + spec, filter_timeout="5s")
    with d.client(timeout=30) as c:
        c.ehlo()
        t0 = time.monotonic()
        r = d.send(c, "alice@example.test", ["bob@example.test"],
                   msg("daemon deadline", ["X-Test-Action: hang"]))
        took = time.monotonic() - t0
        assert 2.5 < took < 5.0, took
        assert "X-Test-Milter" not in headers_of(d.message(accepted_id(r)))
    assert "deadline" in d.log()
    assert "restart" not in d.log().lower(), d.log()[-2000:]
    d.check_no_loss()


def test_reject_default_when_hung(env):
    spec, rec = env.test_milter()
    d = env.daemon("-t 2 -d reject " + spec)
    with d.client(timeout=30) as c:
        c.ehlo()
        r = d.send(c, "alice@example.test", ["bob@example.test"],
                   msg("hangs, rejected", ["X-Test-Action: hang"]), expect=550)
        assert r.esc == "5.7.1", r
    assert not any(b"hangs, rejected" in m.data for m in d.messages())
    d.check_no_loss()


def test_ipv6_client(env):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("no ::1")
    spec, rec = env.test_milter()
    d = env.daemon("-t 10 " + spec, listen_host="::1")
    with d.client() as c:
        c.ehlo()
        d.send(c, "alice@example.test", ["bob@example.test"], msg("over ipv6"))
        c.until_quit()
    rcd = wait_record(rec, lambda r: ["Subject", "over ipv6"] in r["headers"])
    assert rcd["conn"]["family"] == socket.AF_INET6 and rcd["conn"]["addr"] == "::1", rcd["conn"]
    assert rcd["conn"]["hostname"] == "[IPv6:::1]"
    assert rcd["macros"]["connect"]["{client_addr}"] == "::1"
    d.check_no_loss()


@pytest.mark.parametrize("kind", ["down", "silent"])
def test_unreachable_milter(env, kind):
    spec = env.silent_milter() if kind == "silent" else "unix:%s" % (env.sockdir / "none.sock")
    dt = env.daemon("-t 2 -d tempfail " + spec, name="tempfail")
    da = env.daemon("-t 2 -d accept " + spec, name="accept")
    dr = env.daemon("-t 2 -d reject " + spec, name="reject")
    with dt.client() as c:
        t0 = time.monotonic()
        r = c.reply()
        assert r.is_(421, "4.3.0"), r
        assert c.wait_closed()
        if kind == "silent":
            assert time.monotonic() - t0 > 1.5
    with dr.client() as c:
        r = c.reply()
        assert r.is_(550, "5.7.1"), r
        assert c.wait_closed()
    with da.client() as c:
        c.ehlo()
        data = msg("no milter", body=[b"unchanged", b".dot"])
        r = da.send(c, "alice@example.test", ["bob@example.test"], data)
        m = da.message(accepted_id(r))
        assert headers_of(m) == "From: alice@example.test\nTo: bob@example.test\nSubject: no milter"
        assert body_of(m) == b"unchanged\n.dot\n"
        c.until_quit()
    for d in (dt, da, dr):
        d.check_no_loss()
    assert "default action tempfail" in dt.log()


# ---------------------------------------------------------------------------
# (a) opendkim signs through the bridge
# ---------------------------------------------------------------------------


def dkim_txt(path):
    """The TXT record of an opendkim-genkey .txt file (its quoted strings joined)."""
    return "".join(re.findall(r'"([^"]*)"', Path(path).read_text())).encode()


def start_opendkim(env):
    """Starts opendkim (signing for example.test) on a unix socket; returns (socket
    spec, a verifying function for message bytes)."""
    if not shutil.which("opendkim") or not shutil.which("opendkim-genkey"):
        pytest.skip("opendkim is not installed (apt-get install opendkim opendkim-tools)")
    try:
        import dkim
    except ImportError:
        pytest.skip("python3-dkim is not installed (apt-get install python3-dkim)")
    kd = env.tmp / "dkim"
    kd.mkdir()
    r = subprocess.run(["opendkim-genkey", "-D", str(kd), "-d", "example.test", "-s", "sel1",
                        "-b", "2048"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    sock = env.sockdir / "odk.sock"
    conf = kd / "opendkim.conf"
    conf.write_text("\n".join([
        "Syslog no", "LogWhy yes", "Mode s", "Domain example.test", "Selector sel1",
        "KeyFile %s" % (kd / "sel1.private"), "Socket local:%s" % sock,
        "PidFile %s" % (kd / "opendkim.pid"), "UserID root", "UMask 000",
        "Canonicalization relaxed/simple", "InternalHosts 127.0.0.1", "RequireSafeKeys false",
    ]) + "\n")
    p = Proc(["opendkim", "-x", str(conf), "-f", "-v"], env.tmp / "opendkim.log", env.tmp)
    env.procs.append(p)
    env.wait_socket(sock, p)
    txt = dkim_txt(kd / "sel1.txt")

    def dns(name, timeout=5):
        n = name.decode() if isinstance(name, bytes) else name
        return txt if n.rstrip(".") == "sel1._domainkey.example.test" else None

    def verify(m):
        """Verifies a spooled message (LF line ends, as stored) without our Received."""
        return dkim.verify(m.replace(b"\n", b"\r\n"), dnsfunc=dns)

    return "unix:%s" % sock, verify


def test_opendkim_signs(env):
    spec, verify = start_opendkim(env)
    d = env.daemon("-t 10 " + spec)
    body = [b"Hello,", b"", b".a line with a leading dot", b"trailing spaces   ", b"bye"]
    with d.client() as c:
        c.ehlo()
        data = msg("signed through the bridge",
                   ["Date: Mon, 1 Jan 2024 00:00:00 +0000", "Message-ID: <sig1@example.test>",
                    "X-Long: a folded", "\theader value"], body)
        r = d.send(c, "alice@example.test", ["bob@example.test"], data)
        c.until_quit()
    m = d.message(accepted_id(r))
    h = headers_of(m)
    assert h.startswith("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/simple; d=example.test;"), h
    # opendkim folds with bare LF: stored as proper folded lines.
    sig = h.split("\nFrom:", 1)[0]
    assert "\n\t" in sig and "\r" not in sig
    assert verify(m.body()), m.body()[:600]
    # Tampering breaks it (the check is real).
    assert not verify(m.body().replace(b"bye", b"BYE"))
    d.check_no_loss()


def test_two_milters(env):
    """opendkim, then the test milter: both see the message as received; the edits of
    both apply; the signature still verifies; a rejection by the second one counts."""
    dkim_spec, verify = start_opendkim(env)
    spec, rec = env.test_milter()
    d = env.daemon("-t 10 %s %s" % (dkim_spec, spec))
    with d.client() as c:
        c.ehlo()
        r = d.send(c, "alice@example.test", ["bob@example.test"],
                   msg("two milters", ["Message-ID: <two@example.test>"], [b"body"]))
        m = d.message(accepted_id(r))
        h = headers_of(m)
        assert h.startswith("DKIM-Signature: ") and "X-Test-Milter: yes" in h, h
        assert verify(m.body())
        c.expect("MAIL FROM:<alice@example.test>", 250)
        c.expect("RCPT TO:<reject-rcpt@example.test>", 550, "5.7.1")
        c.expect("RCPT TO:<bob@example.test>", 250)
        c.expect("DATA", 354)
        c.send(msg("second rejects", ["X-Test-Action: reject"]) + b".\r\n")
        assert c.reply().is_(550, "5.7.1")
        c.until_quit()
    rcd = wait_record(rec, lambda r: ["Subject", "two milters"] in r["headers"])
    assert not any(n == "DKIM-Signature" for n, v in rcd["headers"])
    d.check_no_loss()


def test_opendkim_signs_local_submissions(env):
    """Mail from sendmail(8) comes through smtpd's local socket: the bridge gives it to
    milters as a connection without an address (family U, host "localhost"), which
    opendkim takes for the local host: it signs."""
    spec, verify = start_opendkim(env)
    d = env.daemon("-t 10 " + spec, local=True)
    text = (b"From: alice@example.test\nTo: bob@example.test\nSubject: local submission\n"
            b"Message-ID: <local1@example.test>\n\nsigned locally\n")
    r = d.sendmail(["-f", "alice@example.test", "bob@example.test"], text)
    assert r.returncode == 0, r.stderr
    msgs = d.wait_messages(1)
    assert len(msgs) == 1
    m = msgs[0]
    assert headers_of(m).startswith("DKIM-Signature: v=1;"), m.text[:600]
    assert verify(m.body())
