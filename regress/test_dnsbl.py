"""The DNS blocklist filters (filters/c/filter-dnsbl.c and the Rust filter-dnsbl of
filters/examples) under the real daemon, against a test DNS server on loopback.

Clients connect from 127.0.0.x; the filter looks x.0.0.127.bl.test up through the
server named in its own resolv.conf (-r), answering the session later:
- a listed client gets 554 5.7.1 and the zone's TXT reason (a quick answer, and one
  that comes only after 500 ms), an unlisted one is served and its mail accepted;
- a lookup slower than the filter's timeout (-t) lets the client in, and is logged;
- while one session waits on a lookup held by the server, another session's mail
  passes through the same filter (the filter is asynchronous), then the first gets
  its answer.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, allow_traversal, data_of, smtpd_bin, wait_until
from dnstest import TestDNS, can_run
from test_glue_c import c_build  # noqa: F401 - the module's fixture
from test_glue_scripts import GlueDaemon

pytestmark = pytest.mark.skipif(can_run() is not None, reason=str(can_run()))

RECORDS = {
    ("2.0.0.127.bl.test", "A"): ["127.0.0.2"],
    ("2.0.0.127.bl.test", "TXT"): ['"Listed for spam, see http://bl.test/?127.0.0.2"'],
    ("3.0.0.127.bl.test", "A"): ["127.0.0.2"],
    ("3.0.0.127.bl.test", "TXT"): ['"Slowly" " listed"'],
    ("4.0.0.127.bl.test", "A"): ["127.0.0.2"],
    ("7.0.0.127.bl.test", "A"): ["127.0.0.2"],
    ("7.0.0.127.bl.test", "TXT"): ['"Held listing"'],
}
# 127.0.0.1 (the daemon's start-up probe), .5 and .6 are not listed (NXDOMAIN).
DELAYS = {("3.0.0.127.bl.test", "A"): 0.5, ("5.0.0.127.bl.test", "A"): 0.5,
          ("4.0.0.127.bl.test", "A"): 3.0}


def rust_dnsbl():
    p = Path(smtpd_bin()).parent / "filter-dnsbl"
    if not p.is_file():
        r = subprocess.run(["cargo", "build", "-p", "smtpd-filter-examples", "--bin",
                            "filter-dnsbl"], cwd=REPO, capture_output=True, text=True,
                           timeout=900)
        p = REPO / "target" / "debug" / "filter-dnsbl"
        if r.returncode != 0 or not p.is_file():
            pytest.fail("cargo build of filter-dnsbl failed:\n" + r.stderr[-3000:])
    return p


@pytest.fixture
def dns_server():
    s = TestDNS(RECORDS, delays=DELAYS, hold=[("7.0.0.127.bl.test", "A")])
    yield s
    s.close()


@pytest.fixture(params=["rust", "c"])
def dnsbl(request, tmp_path, dns_server, c_build):  # noqa: F811
    """start(timeout_ms) -> a started daemon whose listener has the filter of the
    parameter's language."""
    d = tmp_path / "dnsbl"
    d.mkdir()
    src = rust_dnsbl() if request.param == "rust" else c_build / "filter-dnsbl"
    prog = d / "filter-dnsbl"
    shutil.copy(src, prog)
    resolv = d / "resolv.conf"
    resolv.write_text("nameserver %s\n" % dns_server.addr)
    for p in (d, prog, resolv):
        os.chmod(p, 0o755 if p != resolv else 0o644)
    allow_traversal(d)
    made = []

    def start(timeout_ms):
        cmd = "%s -t %d -r %s bl.test" % (prog, timeout_ms, resolv)
        daemon = GlueDaemon(tmp_path / "smtpd", 'filter "dnsbl" proc-exec "%s"' % cmd,
                            '"dnsbl"', name="smtpd")
        made.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in made:
        try:
            daemon.stop()
        except Exception:  # noqa: BLE001 - teardown goes on
            daemon._reap_hard()


def mail_through(c):
    """The greeting, one message, QUIT; the message's id."""
    c.greeting()
    assert c.cmd("EHLO client.test").code == 250
    msgid = c.send_message("a@example.org", ["root@example.test"],
                           data_of(["Subject: hi", "", "hello"]))
    c.until_quit()
    return msgid


def test_listed_unlisted_and_timeout(dnsbl, dns_server):
    d = dnsbl(1000)
    with d.client(source="127.0.0.2") as c:
        assert c.reply().lines == ["554 5.7.1 Listed for spam, see http://bl.test/?127.0.0.2"]
    # The answer comes after 500 ms; the TXT strings are put end to end.
    with d.client(source="127.0.0.3") as c:
        assert c.reply().lines == ["554 5.7.1 Slowly listed"]
    # Not listed (after 500 ms too): served.
    with d.client(source="127.0.0.5") as c:
        msgid = mail_through(c)
    assert msgid in [m.msgid for m in d.wait_messages(1)]
    # Listed, but the answer comes after 3 s: the filter's 1 s timeout lets it in.
    with d.client(source="127.0.0.4") as c:
        c.greeting()
        c.until_quit()
    assert d.wait_log(r"filter dnsbl: [0-9a-f]{16} dnsbl lookup timed out: accepted")
    assert dns_server.asked("2.0.0.127.bl.test", "TXT") == 1
    assert "restarting" not in d.log(), d.log()[-3000:]


def test_other_sessions_pass_while_one_waits(dnsbl, dns_server):
    d = dnsbl(20000)
    held = d.client(source="127.0.0.7")
    try:
        assert wait_until(lambda: dns_server.asked("7.0.0.127.bl.test", "A") == 1)
        with d.client(source="127.0.0.6") as c:
            msgid = mail_through(c)
        assert msgid in [m.msgid for m in d.wait_messages(1)]
        # The held session has had no greeting yet: its lookup is still pending.
        held.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            held.sock.recv(1)
        held.sock.setblocking(True)
        dns_server.release()
        assert held.reply().lines == ["554 5.7.1 Held listing"]
    finally:
        held.close()
