"""Debian's OpenSMTPD filters written in Go, run unchanged: filter-rspamd against a real
rspamd started on loopback (GTUBE refused at the end of DATA with rspamd's message,
spam headers added to a message rspamd scores), and filter-senderscore against a test
DNS server that holds the reputation of 127.0.0.1 and 127.0.0.2 (a session from a
poor address refused at connect, one from a middling address marked as junk and given
its score header).

rspamd gets a configuration of its own (Debian's files, with ports, directories and
its nameserver overridden from the command line and a local directory), runs as
_rspamd and asks only the test DNS server; the daemon and its filters run in a
private mount namespace whose /etc/resolv.conf names the test server (dnstest.py).
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import accepted_id, data_of, free_port, stop_process, wait_until
from dnstest import DnsWorld, TestDNS, can_run
from filterlib import FilterDaemon

RSPAMD = "/usr/bin/rspamd"
FILTER_RSPAMD = "/usr/libexec/opensmtpd/filter-rspamd"
FILTER_SENDERSCORE = "/usr/libexec/opensmtpd/filter-senderscore"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
LOGPFX = r"(?m)^\[[A-Z]+ *\] "


def need(path, package):
    if not Path(path).exists():
        pytest.fail("%s is missing: regress/install installs %s" % (path, package))


@pytest.fixture(scope="module")
def base(request):
    """/tmp/smtpd-debfilters-XXXX (0755: rspamd's workers and the filters run as other
    users), removed at the end unless a test failed."""
    why = can_run()
    if why:
        pytest.skip(why)
    d = Path(tempfile.mkdtemp(prefix="smtpd-debfilters-", dir="/tmp"))
    os.chmod(d, 0o755)
    failed = request.session.testsfailed
    yield d
    if request.session.testsfailed == failed:
        shutil.rmtree(d, ignore_errors=True)
    else:
        print("\ntest_debian_filters.py: test directories kept in %s" % d)


@pytest.fixture
def world(request, base):
    d = base / request.node.name[5:40]
    d.mkdir()
    w = DnsWorld(d)
    yield w
    w.close()


def checkv2(url, text, timeout=20):
    req = urllib.request.Request(url + "/checkv2", data=text.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


class Rspamd:
    """rspamd in the foreground, its normal worker on a free loopback port, every other
    worker off, its nameserver a TestDNS that knows no name, and an `add header`
    threshold low enough for a message without a Date header."""

    def __init__(self, d):
        need(RSPAMD, "rspamd")
        self.dir = d
        self.dns = TestDNS({}, addr="127.0.0.157")
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        conf = d / "conf"
        for sub in ("override.d", "local.d"):
            (conf / sub).mkdir(parents=True)
        for name in ("db", "run", "log"):
            (d / name).mkdir()
            shutil.chown(d / name, "_rspamd", "_rspamd")
        self.log = d / "log" / "rspamd.log"
        over = conf / "override.d"
        (over / "worker-normal.inc").write_text('bind_socket = "127.0.0.1:%d";\ncount = 1;\n'
                                                % self.port)
        for w in ("controller", "proxy", "fuzzy"):
            (over / ("worker-%s.inc" % w)).write_text(
                'bind_socket = "127.0.0.1:%d";\ncount = -1;\n' % free_port())
        (over / "logging.inc").write_text('type = "file";\nfilename = "%s";\nlevel = "info";\n'
                                          % self.log)
        (over / "actions.conf").write_text(
            "reject = 15;\nadd_header = 0.5;\ngreylist = null;\nrewrite_subject = null;\n")
        (conf / "local.d" / "options.inc").write_text(
            'dns { nameserver = ["%s:53"]; timeout = 1s; retransmits = 1; }\n' % self.dns.addr)
        for p in conf.rglob("*"):
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.chmod(conf, 0o755)
        argv = [RSPAMD, "-f", "-c", "/etc/rspamd/rspamd.conf", "-u", "_rspamd", "-g", "_rspamd",
                "-p", str(d / "run" / "rspamd.pid")]
        for var, val in (("LOCAL_CONFDIR", conf), ("DBDIR", d / "db"), ("RUNDIR", d / "run"),
                         ("LOGDIR", d / "log")):
            argv.append("--var=%s=%s" % (var, val))
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                     stderr=open(d / "rspamd.stderr", "wb"))
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, "rspamd exited: %s\n%s" % (
                (d / "rspamd.stderr").read_text(errors="replace"), self.logtail())
            try:
                checkv2(self.url, "Subject: ping\r\n\r\nping\r\n", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "rspamd never answered:\n" + self.logtail()
                time.sleep(0.3)

    def logtail(self):
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def close(self):
        stop_process(self.proc)
        self.dns.close()


@pytest.fixture(scope="module")
def rspamd(base):
    d = base / "rspamd"
    d.mkdir()
    r = Rspamd(d)
    yield r
    r.close()


def filtered_daemon(world, name, command):
    return world.daemon(cls=FilterDaemon,
                        filters='filter %s proc-exec "%s"\n' % (name, command),
                        listen_filter=name)


def wait_registered(d, name, timeout=20.0):
    ok = wait_until(lambda: ("filter %s registered" % name) in d.log(), timeout)
    assert ok, "filter %s never registered:\n%s" % (name, d.log()[-3000:])


def send_message(c, lines, sender="alice@example.test", rcpt="bob@example.test"):
    c.expect("MAIL FROM:<%s>" % sender, 250)
    c.expect("RCPT TO:<%s>" % rcpt, 250)
    c.expect("DATA", 354)
    c.send(data_of(lines) + b".\r\n")
    return c.reply()


def test_rspamd_refuses_gtube_and_adds_spam_headers(world, rspamd):
    need(FILTER_RSPAMD, "opensmtpd-filter-rspamd")
    world.server({})
    d = filtered_daemon(world, "rspamd", "%s -url %s" % (FILTER_RSPAMD, rspamd.url))
    wait_registered(d, "rspamd")
    head = ["From: alice@example.test", "To: bob@example.test",
            "Message-ID: <%s@example.test>" % os.getpid()]
    with d.client(timeout=60) as c:
        c.ehlo("client.example.test")
        r = send_message(c, head + ["Subject: gtube", "", GTUBE, ".dot line"])
        assert r.code == 550 and "Gtube pattern" in r.text, r
        r = send_message(c, head + ["Subject: ham", "", "A plain message.", ".dot line"])
        msgid = accepted_id(r)
        c.until_quit()
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    text = m.body().decode(errors="replace")
    hdr, _, body = text.partition("\n\n")
    # No Date header: MISSING_DATE, above the `add header` threshold of the configuration.
    assert "\nX-Spam: yes\n" in "\n" + hdr + "\n", text
    assert "X-Spam-Score: " in hdr and "X-Spam-Status: Yes, score=" in hdr, text
    assert "MISSING_DATE=" in hdr, text
    assert body == "A plain message.\n.dot line\n", text
    # rspamd was told the session's facts, from the filter's reports: queue id,
    # client address, sender and recipients.
    want = "qid: <%s>, ip: 127.0.0.1, from: <alice@example.test>" % msgid
    assert wait_until(lambda: want in rspamd.logtail(), 5), rspamd.logtail()
    line = next(l for l in rspamd.logtail().splitlines() if want in l)
    assert "(add header)" in line and "rcpts: <bob@example.test>" in line, line


def test_rspamd_unreachable_tempfails(world):
    need(FILTER_RSPAMD, "opensmtpd-filter-rspamd")
    world.server({})
    dead = "http://127.0.0.1:%d" % free_port()
    d = filtered_daemon(world, "rspamd", "%s -url %s" % (FILTER_RSPAMD, dead))
    wait_registered(d, "rspamd")
    with d.client(timeout=60) as c:
        c.ehlo("client.example.test")
        r = send_message(c, ["Subject: nobody scans", "", "body"])
        assert r.code == 421, r
    assert d.wait_messages(0) == []


def senderscore_records():
    # 127.0.4.SCORE, as senderscore.com answers.
    return {("1.0.0.127.score.senderscore.com", "A"): ["127.0.4.20"],
            ("2.0.0.127.score.senderscore.com", "A"): ["127.0.4.70"]}


def test_senderscore_blocks_and_junks_by_reputation(world):
    need(FILTER_SENDERSCORE, "opensmtpd-filter-senderscore")
    srv = world.server(senderscore_records())
    d = filtered_daemon(world, "senderscore",
                        "%s -blockBelow 50 -junkBelow 80 -scoreHeader" % FILTER_SENDERSCORE)
    wait_registered(d, "senderscore")
    # 127.0.0.1 scores 20: refused at connect, and the session is over.
    with d.client(source="127.0.0.1", timeout=30) as c:
        r = c.reply()
        assert r.code == 550 and "reputation is too low" in r.text, r
        assert c.wait_closed(), "the session goes on after a 550 at connect"
    assert srv.asked("1.0.0.127.score.senderscore.com", "A") >= 1
    # 127.0.0.2 scores 70: accepted, marked as junk, its score in a header.
    with d.client(source="127.0.0.2", timeout=30) as c:
        c.ehlo("client.example.test")
        msgid = accepted_id(send_message(c, ["Subject: middling", "", "body"]))
        c.until_quit()
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    text = m.body().decode(errors="replace")
    # The daemon marks a junked message as OpenSMTPD does, on its first line.
    assert text.startswith("X-Spam: Yes\n"), text
    assert "\nX-SenderScore: 70\n" in text, text
