"""The C filter library (filters/c): its example filters run under the real daemon.

Builds filters/c with make into a temporary directory (skipped without cc or make),
copies the programs where the filter user can run them (as root the daemon runs its
filters as _smtpd), and checks end to end:

- OpenSMTPD's filter-stub, built unchanged, is started, registers and logs its line
  for a real session;
- the C filter-trace prints the same lines as the Rust filter-trace for the same
  sessions (session ids, ports and message ids aside);
- the C filter-reject refuses a sender with its 550 and rewrites a word in the body,
  and a line it cannot pass on makes the library refuse the message (451) without
  the filter being killed.
"""

import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import (DEFAULT_RULES, REPO, SMTPRaw, accepted_id, allow_traversal, free_port,
                      wait_until)

C_DIR = REPO / "filters" / "c"
RUST_TRACE = REPO / "target" / "debug" / "filter-trace"


@pytest.fixture(scope="module")
def c_build(tmp_path_factory):
    """filters/c built out of tree (make O=DIR); the directory of the programs."""
    for tool in ("cc", "make"):
        if shutil.which(tool) is None:
            pytest.skip("no %s to build filters/c" % tool)
    out = tmp_path_factory.mktemp("c-build")
    r = subprocess.run(["make", "-C", str(C_DIR), "O=%s" % out], capture_output=True,
                       text=True, timeout=300)
    if r.returncode != 0:
        pytest.fail("make -C filters/c failed:\n" + r.stdout[-3000:] + r.stderr[-3000:])
    return out


@pytest.fixture
def bindir(tmp_path, c_build):
    """A directory of the test holding the C filters, reachable and runnable by the
    unprivileged user the daemon runs filters as."""
    d = tmp_path / "cbin"
    d.mkdir()
    for prog in ("filter-stub", "filter-trace", "filter-reject"):
        shutil.copy(c_build / prog, d / prog)
        os.chmod(d / prog, 0o755)
    os.chmod(d, 0o755)
    allow_traversal(d)
    return d


def rust_trace(bindir):
    """The Rust filter-trace copied next to the C ones (built when missing)."""
    if not RUST_TRACE.is_file():
        r = subprocess.run(["cargo", "build", "-p", "smtpd-filter-examples", "--bin",
                            "filter-trace"], cwd=REPO, capture_output=True, text=True,
                           timeout=900)
        if r.returncode != 0 or not RUST_TRACE.is_file():
            pytest.skip("no Rust filter-trace (cargo build failed):\n" + r.stderr[-2000:])
    dst = bindir / "filter-trace-rust"
    shutil.copy(RUST_TRACE, dst)
    os.chmod(dst, 0o755)
    return dst


def filtered_daemon(make_daemon, filters):
    """A daemon with one extra listener per filter: filters is [(name, command)];
    returns (daemon, {name: port})."""
    d = make_daemon(rules=DEFAULT_RULES, start=False)
    for attempt in range(3):
        # The extra listeners' ports are picked here: another test may take one
        # between free_port() and the daemon's bind, so try again with new ones.
        ports = {}
        extra = []
        for name, command in filters:
            extra.append('filter "%s" proc-exec "%s"' % (name, command))
        for name, _ in filters:
            ports[name] = free_port()
            extra.append('listen on 127.0.0.1 port %d hostname mx.test.example filter "%s"'
                         % (ports[name], name))
        d.extra = "\n".join(extra) + "\n"
        mark = len(d.log())
        try:
            d.start()
            break
        except RuntimeError:
            if attempt == 2:
                raise
    for name, _ in filters:
        pat = r"filter %s registered name=" % re.escape(name)
        assert wait_until(lambda: re.search(pat, d.log()[mark:]), 15), \
            "filter %s did not register; log tail:\n%s" % (name, d.log()[-3000:])
    return d, ports


def client_on(port):
    return SMTPRaw(port, host="127.0.0.1", timeout=10.0)


def test_c_stub_unchanged_logs_each_session(make_daemon, bindir):
    d, ports = filtered_daemon(make_daemon, [("stub", bindir / "filter-stub")])
    assert d.wait_log(r"filter stub registered name=filter-stub hooks=0x1 ", 15), \
        d.log()[-2000:]
    with client_on(ports["stub"]) as c:
        c.ehlo("client.test")
        assert c.cmd("QUIT").code == 221
    assert d.wait_log(r"filter stub: filter-stub: OHAI, SOMEONE CONNECTED !"), d.log()[-3000:]
    # One session, one line (the probe session of the main listener has no filter).
    time.sleep(0.3)
    assert d.log().count("filter-stub: OHAI, SOMEONE CONNECTED !") == 1, d.log()[-3000:]


MESSAGE = (b"Subject: trace\r\nFrom: alice@example.org\r\n\r\nbody line\r\n"
           b"..leading dot\r\n\r\nlast line\r\n.\r\n")


def trace_sessions(ports):
    """Two sessions on each traced listener: EHLO with a message, HELO with <>."""
    for port in ports:
        with client_on(port) as c:
            c.ehlo("client.test")
            c.expect("MAIL FROM:<alice@example.org>", 250)
            c.expect("RCPT TO:<bob@example.test>", 250)
            c.expect("DATA", 354)
            c.send(MESSAGE)
            accepted_id(c.reply())
            c.expect("RSET", 250)
            assert c.cmd("QUIT").code == 221
            c.wait_closed(5)
        with client_on(port) as c:
            c.helo("other.test")
            c.expect("MAIL FROM:<>", 250)
            c.cmd("RCPT TO:<postmaster>")
            assert c.cmd("QUIT").code == 221
            c.wait_closed(5)


def trace_lines(log, name):
    """{session: [event lines]} of filter `name`, ports and message ids blanked."""
    out = {}
    order = []
    for m in re.finditer(r"filter %s: ([0-9a-f]{16}) (.*)" % re.escape(name), log):
        sid, line = m.group(1), m.group(2)
        line = re.sub(r"(local|remote)=(\S+):\d+", r"\1=\2:PORT", line)
        line = re.sub(r"^commit [0-9a-f]+$", "commit MSGID", line)
        if sid not in out:
            out[sid] = []
            order.append(sid)
        out[sid].append(line)
    return [out[s] for s in order]


def test_c_trace_prints_what_rust_trace_prints(make_daemon, bindir):
    rust = rust_trace(bindir)
    d, ports = filtered_daemon(make_daemon, [("ctrace", bindir / "filter-trace"),
                                             ("rtrace", rust)])
    trace_sessions([ports["ctrace"], ports["rtrace"]])

    def done():
        log = d.log()
        return all(sum(l[-1] == "disconnect" for l in trace_lines(log, n)) == 2
                   for n in ("ctrace", "rtrace"))

    assert wait_until(done, 10), d.log()[-4000:]
    log = d.log()
    c, r = trace_lines(log, "ctrace"), trace_lines(log, "rtrace")
    assert c == r, "C trace:\n%s\nRust trace:\n%s" % (c, r)
    # And the trace says what happened.
    first = c[0]
    assert first[0] == "connect local=127.0.0.1:PORT remote=127.0.0.1:PORT hostname=", first
    for want in ["ehlo client.test", "mail <alice@example.org>", "rcpt <bob@example.test>",
                 "data", "data-line Subject: trace", "data-line ", "data-line .leading dot",
                 "data-line last line", "commit MSGID", "disconnect"]:
        assert want in first, (want, first)
    assert any(l.startswith("eom size=") for l in first), first
    assert "helo other.test" in c[1] and "mail <>" in c[1], c[1]
    # The message went through the C filter unchanged.
    bodies = sorted(m.body() for m in d.messages())
    assert len(bodies) == 2 and bodies[0] == bodies[1], bodies
    assert bodies[0].endswith(b"\n\nbody line\n.leading dot\n\nlast line\n"), bodies[0]


def test_c_reject_refuses_sender_and_rewrites_body(make_daemon, bindir):
    cmd = "%s -w colour=color spammer@bad.example" % (bindir / "filter-reject")
    d, ports = filtered_daemon(make_daemon, [("reject", cmd)])
    with client_on(ports["reject"]) as c:
        c.ehlo("client.test")
        r = c.cmd("MAIL FROM:<spammer@bad.example>")
        assert r.code == 550 and r.lines[-1] == \
            "550 5.7.1 Sender <spammer@bad.example> rejected by filter", r
        r = c.cmd("MAIL FROM:<Spammer@BAD.example>")
        assert r.code == 550, r
        c.expect("MAIL FROM:<alice@example.org>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: colour test\r\n\r\nThe colour is red.\r\ncolourful colour\r\n.\r\n")
        msgid = accepted_id(c.reply())
        assert c.cmd("QUIT").code == 221
    msgs = d.wait_messages(1)
    assert [m.msgid for m in msgs] == [msgid]
    body = msgs[0].body()
    assert b"Subject: colour test\n" in body, body  # the header section is left alone
    assert b"X-Filter-Reject: 3 replacements\n" in body, body
    assert body.endswith(b"\n\nThe color is red.\ncolorful color\n"), body
    assert msgs[0].envelopes[0]["sender"] == "alice@example.org"


def test_c_line_too_long_refuses_message_filter_survives(make_daemon, bindir):
    # Each "a" becomes "aaaa": a 20000-byte line grows to 80000, more than a filter may
    # send back; the library refuses the message at its end instead.
    cmd = "%s -w a=aaaa nobody@nowhere.example" % (bindir / "filter-reject")
    d, ports = filtered_daemon(make_daemon, [("grow", cmd)])
    with client_on(ports["grow"]) as c:
        c.ehlo("client.test")
        c.expect("MAIL FROM:<alice@example.org>", 250)
        c.expect("RCPT TO:<bob@example.test>", 250)
        c.expect("DATA", 354)
        c.send(b"Subject: x\r\n\r\n" + b"a" * 20000 + b"\r\n.\r\n")
        r = c.reply()
        assert r.code == 451 and "filter produced an invalid line" in r.text, r
        # The same session and filter go on: a message that fits passes.
        c.expect("MAIL FROM:<alice@example.org>", 250)
        c.expect("RCPT TO:<bob@example.test>", 250)
        c.expect("DATA", 354)
        c.send(b"Subject: y\r\n\r\nbanana\r\n.\r\n")
        accepted_id(c.reply())
        assert c.cmd("QUIT").code == 221
    msgs = d.wait_messages(1)
    assert len(msgs) == 1 and msgs[0].body().endswith(b"\n\nbaaaanaaaanaaaa\n"), msgs
    assert d.wait_log(r"a message line longer than 65535 bytes", 15), d.log()[-3000:]
    log = d.log()
    assert "a message line longer than 65535 bytes cannot be passed on" in log, log[-3000:]
    assert "failing its sessions and restarting it" not in log, log[-3000:]
