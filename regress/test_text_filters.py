"""Filters of OpenSMTPD's text protocol (smtpd-filters(7), "OpenSMTPD filters"): a
Python filter speaking it (every report, every phase, reject, junk, rewrites of
sessions and of message lines, disconnect), a filter built with Debian's libopensmtpd,
the `proc` form of smtpd.conf, Debian's filter-dkimsign (the signature checked with
dkimpy), and hostile filters (garbage, truncated lines, wrong tokens, a filter that
exits at once): the sessions waiting fail with a 4xx, the filter is restarted and the
daemon goes on.

The Python filter appends every line it reads to a trace file of the test directory
(not its standard error, which the daemon logs at most 100 lines a 10 s).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEFAULT_RULES, DaemonFactory, accepted_id, data_of, wait_until
from filterlib import FilterDaemon
from test_filters import fbase, session_of  # noqa: F401 - fbase is a fixture

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
LOGPFX = r"(?m)^\[[A-Z]+ *\] "
BODY = ["Subject: text filter", "From: alice@example.test", "", "a secret line", ".dot first",
        "last"]

# A filter of OpenSMTPD's protocol, driven by a JSON spec (see Factory.text).
TEXTFILTER = r'''
import json, os, re, sys
spec = json.load(open(sys.argv[1]))
trace = open(spec["trace"], "a", buffering=1)
out = sys.stdout
started = set()

def send(line):
    out.write(line + "\n")
    out.flush()

def register():
    for r in spec.get("reports", []):
        send("register|report|smtp-in|" + r)
    for p in spec.get("phases", []):
        send("register|filter|smtp-in|" + p)
    send("register|ready")

def fault(phase):
    f = spec.get("fault")
    if not f or f["phase"] != phase:
        return None
    once = f.get("once")
    if once:
        if os.path.exists(once):
            return None
        open(once, "w").close()
    return f["how"]

def hostile(how, phase, sid, token, param):
    other = "%016x" % ((int(token, 16) + 1) % (1 << 64))
    if how == "garbage":
        send("this is not the protocol")
    elif how == "wrong-token" and phase == "data-line":
        send("filter-dataline|%s|%s|%s" % (sid, other, param))
    elif how == "wrong-token":
        send("filter-result|%s|%s|proceed" % (sid, other))
    elif how == "truncated":
        out.write("filter-result|%s|%s|pro" % (sid, token))
        out.flush()
        os._exit(0)
    elif how == "exit":
        os._exit(3)
    elif how == "hang":
        pass
    elif how == "bad-reply":
        send("filter-result|%s|%s|reject|250 that is no refusal" % (sid, token))

if spec.get("speak_first"):
    register()
for raw in sys.stdin:
    line = raw.rstrip("\n")
    trace.write(line + "\n")
    if line == "config|ready":
        if not spec.get("speak_first"):
            register()
        continue
    if not line.startswith("filter|"):
        continue
    f = line.split("|", 7)
    phase, sid, token, param = f[4], f[5], f[6], f[7] if len(f) > 7 else ""
    how = fault(phase)
    if how:
        hostile(how, phase, sid, token, param)
        continue
    if phase == "data-line":
        if sid not in started:
            started.add(sid)
            for h in spec.get("add_headers", []):
                send("filter-dataline|%s|%s|%s" % (sid, token, h))
        if param == ".":
            started.discard(sid)
        else:
            for a, b in spec.get("replace", []):
                param = param.replace(a, b)
        send("filter-dataline|%s|%s|%s" % (sid, token, param))
        continue
    answer = "proceed"
    for rule in spec.get("rules", []):
        if rule["phase"] == phase and re.search(rule.get("when", ""), param):
            answer = rule["answer"]
            break
    send("filter-result|%s|%s|%s" % (sid, token, answer))
'''

ALL_PHASES = ["connect", "helo", "ehlo", "mail-from", "rcpt-to", "data", "data-line", "commit"]


class Factory(DaemonFactory):
    def __init__(self, d):
        super().__init__(d)
        self.dir = d
        self.state = d / "state"
        self.state.mkdir()
        os.chmod(self.state, 0o1777)
        prog = d / "textfilter.py"
        prog.write_text(TEXTFILTER)
        os.chmod(prog, 0o644)
        self.prog = prog

    def text(self, name, spec):
        """The command of a Python text filter; its trace is self.trace(name)."""
        spec = dict(spec)
        spec["trace"] = str(self.trace(name))
        p = self.dir / ("spec-%s.json" % name)
        p.write_text(json.dumps(spec))
        os.chmod(p, 0o644)
        return "%s %s %s" % (PY, self.prog, p)

    def trace(self, name):
        return self.state / ("trace-%s" % name)

    def marker(self, name):
        return str(self.state / name)

    def __call__(self, filters, listen_filter, rules=DEFAULT_RULES, **kw):
        name = self.next_name()
        return self.add(FilterDaemon(self.dir / name, filters=filters,
                                     listen_filter=listen_filter, rules=rules, name=name, **kw))


@pytest.fixture
def tx(request, fbase):
    n = len(list(fbase.iterdir()))
    d = fbase / ("%02d-%s" % (n, re.sub(r"[^A-Za-z0-9]+", "", request.node.name)[5:21]))
    d.mkdir()
    os.chmod(d, 0o755)
    f = Factory(d)
    yield f
    f.cleanup()


def traced(tx, name, sid, kind=None):
    """The lines filter `name` read about session `sid`: (kind, event, fields) with the
    version, timestamp, subsystem and session taken out."""
    out = []
    path = tx.trace(name)
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        f = line.split("|")
        if f[0] not in ("report", "filter") or len(f) < 6 or f[5] != sid:
            continue
        assert f[1] == "0.7" and f[3] == "smtp-in", line
        assert re.fullmatch(r"\d+\.\d{6}", f[2]), line
        if kind is None or f[0] == kind:
            out.append((f[0], f[4], f[6:]))
    return out


def transaction(c, sender, rcpts, lines):
    c.expect("MAIL FROM:<%s>" % sender, 250)
    for r in rcpts:
        c.expect("RCPT TO:<%s>" % r, 250)
    return content(c, lines)


def content(c, lines):
    """DATA and the message; the final reply."""
    c.expect("DATA", 354)
    c.send(data_of(lines) + b".\r\n")
    return c.reply()


def wait_registered(d, name, n=1, timeout=15.0):
    pat = LOGPFX + r"filter %s registered \(OpenSMTPD protocol 0\.7\)" % re.escape(name)
    ok = wait_until(lambda: len(re.findall(pat, d.log())) >= n, timeout)
    assert ok, "filter %s registered fewer than %d times:\n%s" % (name, n, d.log()[-3000:])


# ---------------------------------------------------------------------------
# A Python filter of OpenSMTPD's protocol
# ---------------------------------------------------------------------------


def test_reports_and_questions_of_a_transaction(tx):
    spec = {"reports": ["*"], "phases": ALL_PHASES}
    d = tx('filter tf proc-exec "%s"\n' % tx.text("tf", spec), "tf")
    wait_registered(d, "tf")
    assert d.wait_log(LOGPFX + r"filter tf: silent at start, taken for a filter of OpenSMTPD")
    # The configuration lines came first.
    head = tx.trace("tf").read_text().splitlines()[:6]
    assert head[0].startswith("config|smtpd-version|"), head
    assert head[1:4] == ["config|protocol|0.7", "config|smtp-session-timeout|300",
                         "config|subsystem|smtp-in"], head
    assert re.fullmatch(r"config\|admd\|[^|]+", head[4]) and head[5] == "config|ready", head
    with d.client() as c:
        c.ehlo("client.test")
        sid = session_of(d, c)
        cport, dport = c.sock.getsockname()[1], d.port
        msgid = accepted_id(transaction(c, "alice@example.test", ["bob@example.test"], BODY))
        c.expect("MAIL FROM:<carol@example.test>", 250)
        c.expect("RSET", 250)
        assert [r.code for r in c.until_quit()] == [221]
    assert wait_until(lambda: ("report", "link-disconnect", []) in traced(tx, "tf", sid), 5)
    reports = [(e, f) for k, e, f in traced(tx, "tf", sid, "report")]
    names = [e for e, _ in reports if e not in ("protocol-client", "protocol-server")]
    assert names == [
        "link-connect", "filter-response", "link-greeting",
        "filter-response", "link-identify",
        "filter-response", "tx-begin", "tx-mail",
        "filter-response", "tx-rcpt",
        "filter-response", "tx-data",
        "filter-response", "tx-envelope", "tx-commit", "tx-reset",
        "filter-response", "tx-begin", "tx-mail", "tx-rollback", "tx-reset",
        "link-disconnect"], reports
    get = lambda name: [f for e, f in reports if e == name]  # noqa: E731
    assert get("link-connect") == [["<unknown>", "fail", "127.0.0.1:%d" % cport,
                                    "127.0.0.1:%d" % dport]]
    assert get("link-greeting") == [[d.hostname]]
    assert get("link-identify") == [["EHLO", "client.test"]]
    assert get("tx-begin")[0] == [msgid]
    assert get("tx-mail")[0] == [msgid, "ok", "<alice@example.test>"]
    assert get("tx-rcpt") == [[msgid, "ok", "<bob@example.test>"]]
    assert get("tx-data") == [[msgid, "ok"]]
    (env,) = get("tx-envelope")
    assert env[0] == msgid and re.fullmatch(msgid + "[0-9a-f]{8}", env[1]), env
    (commit,) = get("tx-commit")
    assert commit[0] == msgid and int(commit[1]) > 0
    second = get("tx-begin")[1][0]
    assert get("tx-rollback") == [[second]] and get("tx-reset") == [[msgid], [second]]
    assert get("filter-response")[:2] == [["connected", "proceed"], ["ehlo", "proceed"]]
    clients = [f[0] for e, f in reports if e == "protocol-client"]
    assert clients == ["EHLO client.test", "MAIL FROM:<alice@example.test>",
                       "RCPT TO:<bob@example.test>", "DATA", ".",
                       "MAIL FROM:<carol@example.test>", "RSET", "QUIT"]
    servers = [f[0] for e, f in reports if e == "protocol-server"]
    assert servers[0].startswith("220 %s " % d.hostname)
    assert "250 2.0.0 %s Message accepted for delivery" % msgid in servers or \
        any(s.startswith("250 ") and msgid in s for s in servers), servers
    # Every phase was asked, with its parameter; the message's lines dot-stuffed.
    asked = [(e, f) for k, e, f in traced(tx, "tf", sid, "filter")]
    token = lambda f: f[0]  # noqa: E731
    assert all(re.fullmatch(r"[0-9a-f]{16}", token(f)) for _, f in asked)
    params = [(e, f[1:]) for e, f in asked]
    lines = [p[0] for e, p in params if e == "data-line"]
    assert lines == ["Subject: text filter", "From: alice@example.test", "", "a secret line",
                     "..dot first", "last", "."], params
    rest = [(e, p) for e, p in params if e != "data-line"]
    assert rest == [("connect", ["<unknown>", "127.0.0.1"]), ("ehlo", ["client.test"]),
                    ("mail-from", ["alice@example.test"]), ("rcpt-to", ["bob@example.test"]),
                    ("data", [""]), ("commit", [""]),
                    ("mail-from", ["carol@example.test"])], params
    # One token for the whole message.
    assert len({token(f) for e, f in asked if e == "data-line"}) == 1
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    assert m.body().endswith(b"a secret line\n.dot first\nlast\n"), m.data


def test_reject_junk_rewrites_and_disconnect(tx):
    spec = {
        "reports": ["tx-rcpt"],
        "phases": ALL_PHASES,
        "rules": [
            {"phase": "rcpt-to", "when": "^blocked@", "answer": "reject|550 5.7.1 Not for you"},
            {"phase": "rcpt-to", "when": "^old@", "answer": "rewrite|<new@example.test>"},
            {"phase": "mail-from", "when": "^spammer@", "answer": "junk"},
            {"phase": "helo", "when": "^bad\\.", "answer": "disconnect|554 5.7.0 Go away"},
            {"phase": "mail-from", "when": "^later@", "answer": "reject|421 4.7.0 Come back later"},
        ],
        "replace": [["secret", "public"]],
        "add_headers": ["X-Text-Filter: yes"],
    }
    d = tx('filter tf proc-exec "%s"\n' % tx.text("tf", spec), "tf")
    with d.client() as c:
        c.ehlo()
        sid = session_of(d, c)
        c.expect("MAIL FROM:<spammer@example.test>", 250)
        c.expect("RCPT TO:<blocked@example.test>", 550, "5.7.1")
        assert c.cmd("RCPT TO:<blocked@example.test>").lines == ["550 5.7.1 Not for you"]
        c.expect("RCPT TO:<old@example.test>", 250)
        msgid = accepted_id(content(c, BODY))
        c.until_quit()
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    assert [e["rcpt"] for e in m.envelopes] == ["new@example.test"]
    text = m.body()
    assert b"X-Spam: Yes\n" in text, text
    assert b"X-Text-Filter: yes\n" in text and b"a public line\n.dot first\n" in text, text
    assert b"secret" not in text
    rcpts = [f for _, e, f in traced(tx, "tf", sid, "report") if e == "tx-rcpt"]
    assert [r[1:] for r in rcpts] == [["permfail", "<blocked@example.test>"],
                                      ["permfail", "<blocked@example.test>"],
                                      ["ok", "<old@example.test>"]], rcpts
    # A disconnect at HELO, and a 421 reject that closes as OpenSMTPD's does.
    with d.client() as c:
        c.greeting()
        assert c.cmd("HELO bad.example").lines == ["554 5.7.0 Go away"]
        assert c.wait_closed(5)
    with d.client() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<later@example.test>").lines == ["421 4.7.0 Come back later"]
        assert c.wait_closed(5)
    assert len(d.messages()) == 1


def test_filter_speaking_first_and_the_proc_form(tx):
    spec = {"phases": ["rcpt-to"], "speak_first": True,
            "rules": [{"phase": "rcpt-to", "when": "^no@", "answer": "reject|550 No"}]}
    conf = ('admd "mx.example.org"\nproc tp "%s" user _smtpd\nfilter tf proc tp timeout 5s\n'
            % tx.text("tf", spec))
    d = tx(conf, "tf")
    wait_registered(d, "tf")
    # The proc form is served in OpenSMTPD's protocol at once: no waiting for a byte.
    assert not re.search(r"filter tf: silent at start", d.log())
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.test>", 250)
        assert c.cmd("RCPT TO:<no@example.test>").lines == ["550 No"]
        c.expect("RCPT TO:<yes@example.test>", 250)
        c.until_quit()
    lines = tx.trace("tf").read_text().splitlines()
    assert "config|ready" in lines
    # `admd` names the authserv-id filters put in Authentication-Results.
    assert "config|admd|mx.example.org" in lines, lines


def test_slow_binary_filter_is_still_served_in_binary(tx):
    """A filter of the binary protocol that registers only after the second of silence:
    it was sent OpenSMTPD's configuration lines, skips them, and is served in its own
    protocol."""
    lib = tx.dir / "filterlib.py"
    shutil.copy(Path(__file__).with_name("filterlib.py"), lib)
    os.chmod(lib, 0o644)
    spec = tx.dir / "slow.json"
    spec.write_text(json.dumps({"register_delay": 2, "answers": {"rcpt": {
        "do": "reject", "code": 550, "text": "5.7.1 Slow but here", "when": "^no@"}}}))
    os.chmod(spec, 0o644)
    d = tx('filter slow proc-exec "%s %s %s"\n' % (PY, lib, spec), "slow")
    assert d.wait_log(LOGPFX + r"filter slow: silent at start, taken for a filter of OpenSMTPD")
    assert d.wait_log(LOGPFX + r"filter slow registered name=\S+ hooks=", 10), d.log()[-3000:]
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.test>", 250)
        assert c.cmd("RCPT TO:<no@example.test>").lines == ["550 5.7.1 Slow but here"]
        c.expect("RCPT TO:<yes@example.test>", 250)
        c.until_quit()
    assert not re.search(r"filter slow: .*(failing|restarting)", d.log()), d.log()[-3000:]


# ---------------------------------------------------------------------------
# Hostile filters: fail closed, restarted, the daemon goes on
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("how,phase,want", [
    ("garbage", "rcpt-to", "451 4.3.0"),
    ("wrong-token", "mail-from", "451 4.3.0"),
    ("truncated", "rcpt-to", "451 4.3.0"),
    ("exit", "data", "451 4.3.0"),
    ("wrong-token", "data-line", "451 4.3.0"),
    ("bad-reply", "rcpt-to", "421 4.3.0"),
])
def test_hostile_filter_fails_closed_and_is_restarted(tx, how, phase, want):
    spec = {"phases": ALL_PHASES, "add_headers": ["X-Passed: text"],
            "fault": {"phase": phase, "how": how, "once": tx.marker("fault")}}
    d = tx('filter tf proc-exec "%s" timeout 5s\n' % tx.text("tf", spec), "tf")
    wait_registered(d, "tf")
    with d.client(timeout=15) as c:
        c.ehlo()
        r = None
        for cmd in ("MAIL FROM:<a@example.test>", "RCPT TO:<b@example.test>", "DATA"):
            r = c.cmd(cmd)
            if r.code != 250 and r.code != 354:
                break
        if r.code == 354:
            c.send(data_of(BODY) + b".\r\n")
            r = c.reply()
        assert r.first.startswith(want), r
    if how != "bad-reply":
        assert d.wait_log(LOGPFX + r"filter tf: .*failing its sessions and restarting it", 5)
        wait_registered(d, "tf", 2)
    assert d.running()
    # The next session passes the (restarted) filter.
    with d.client(timeout=15) as c:
        c.ehlo()
        msgid = accepted_id(transaction(c, "a@example.test", ["b@example.test"], BODY))
        c.until_quit()
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid and b"X-Passed: text\n" in m.body()


def test_filter_that_exits_at_once(tx):
    """It registers and exits: every session is refused at connect, the filter is
    restarted with a growing delay, the daemon goes on."""
    prog = tx.dir / "quitter.sh"
    prog.write_text("#!/bin/sh\nprintf 'register|filter|smtp-in|connect\\nregister|ready\\n'\n"
                    "exit 1\n")
    os.chmod(prog, 0o755)
    d = tx('filter tf proc-exec "%s"\n' % prog, "tf")
    for _ in range(2):
        with d.client() as c:
            r = c.reply()
            assert r.lines == ["421 4.3.0 Service temporarily unavailable, closing connection"]
    for delay in (1, 2):
        assert d.wait_log(LOGPFX + r"filter tf exited with status 1, restarting in %ds" % delay,
                          3 + delay), d.log()[-3000:]
    assert d.running()


# ---------------------------------------------------------------------------
# A filter built with Debian's libopensmtpd
# ---------------------------------------------------------------------------

LIBOSMTPD_FILTER = r'''
#include <sys/types.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <opensmtpd.h>

static FILE *trace;

static void
t(struct osmtpd_ctx *ctx, const char *what, const char *arg)
{
	fprintf(trace, "%016llx %s %s\n", (unsigned long long)ctx->reqid, what,
	    arg == NULL ? "" : arg);
	fflush(trace);
}

static void
on_connect(struct osmtpd_ctx *ctx, const char *rdns, enum osmtpd_status fcrdns,
    struct sockaddr_storage *src, struct sockaddr_storage *dst)
{
	t(ctx, "link-connect", rdns);
}

static void
on_identify(struct osmtpd_ctx *ctx, const char *identity)
{
	t(ctx, "link-identify", identity);
}

static void
on_mail(struct osmtpd_ctx *ctx, uint32_t msgid, const char *from, enum osmtpd_status s)
{
	char buf[512];

	snprintf(buf, sizeof(buf), "%08x %s %d", msgid, from, (int)s);
	t(ctx, "tx-mail", buf);
}

static void
on_commit(struct osmtpd_ctx *ctx, uint32_t msgid, size_t size)
{
	char buf[64];

	snprintf(buf, sizeof(buf), "%08x %zu", msgid, size);
	t(ctx, "tx-commit", buf);
}

static void
on_disconnect(struct osmtpd_ctx *ctx)
{
	t(ctx, "link-disconnect", NULL);
}

static void
on_rcpt(struct osmtpd_ctx *ctx, const char *rcpt)
{
	t(ctx, "rcpt-to", rcpt);
	if (strncmp(rcpt, "blocked@", 8) == 0)
		osmtpd_filter_reject(ctx, 550, "5.7.1 Refused by libopensmtpd");
	else
		osmtpd_filter_proceed(ctx);
}

static void
on_line(struct osmtpd_ctx *ctx, const char *line)
{
	if (ctx->local_message == NULL) {
		ctx->local_message = (void *)1;
		osmtpd_filter_dataline(ctx, "X-Libopensmtpd: yes");
	}
	if (strcmp(line, ".") == 0)
		ctx->local_message = NULL;
	osmtpd_filter_dataline(ctx, "%s", line);
}

static void *
msg_new(struct osmtpd_ctx *ctx)
{
	return NULL;
}

static void
msg_free(struct osmtpd_ctx *ctx, void *p)
{
}

int
main(int argc, char *argv[])
{
	if (argc != 2 || (trace = fopen(argv[1], "a")) == NULL)
		return 1;
	osmtpd_local_message(msg_new, msg_free);
	osmtpd_register_filter_rcptto(on_rcpt);
	osmtpd_register_filter_dataline(on_line);
	osmtpd_register_report_connect(1, on_connect);
	osmtpd_register_report_identify(1, on_identify);
	osmtpd_register_report_mail(1, on_mail);
	osmtpd_register_report_commit(1, on_commit);
	osmtpd_register_report_disconnect(1, on_disconnect);
	osmtpd_run();
	return 0;
}
'''


def test_libopensmtpd_filter(tx):
    if not Path("/usr/include/opensmtpd.h").exists():
        pytest.fail("libopensmtpd-dev is missing: regress/install installs it")
    src = tx.dir / "filter-osmtpd.c"
    src.write_text(LIBOSMTPD_FILTER)
    prog = tx.dir / "filter-osmtpd"
    r = subprocess.run(["gcc", "-Wall", "-o", str(prog), str(src), "-lopensmtpd"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    os.chmod(prog, 0o755)
    trace = tx.trace("osmtpd")
    d = tx('filter lo proc-exec "%s %s"\n' % (prog, trace), "lo")
    wait_registered(d, "lo")
    with d.client() as c:
        c.ehlo("client.test")
        sid = session_of(d, c)
        c.expect("MAIL FROM:<alice@example.test>", 250)
        assert c.cmd("RCPT TO:<blocked@example.test>").lines == \
            ["550 5.7.1 Refused by libopensmtpd"]
        c.expect("RCPT TO:<bob@example.test>", 250)
        msgid = accepted_id(content(c, BODY))
        c.until_quit()
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    assert m.body().startswith(b"X-Libopensmtpd: yes\nSubject: text filter\n"), m.body()
    assert m.body().endswith(b"a secret line\n.dot first\nlast\n"), m.body()

    def seen():
        return [line.split(" ", 1)[1] for line in trace.read_text().splitlines()
                if line.startswith(sid + " ")] if trace.exists() else []
    assert wait_until(lambda: "link-disconnect " in seen(), 5), seen()
    # libopensmtpd 0.7 hands the identify callback the rest of the line, method
    # included, as it does with OpenSMTPD's own lines.
    assert seen() == ["link-connect <unknown>", "link-identify EHLO|client.test",
                      "tx-mail %s <alice@example.test> 0" % msgid,
                      "rcpt-to blocked@example.test", "rcpt-to bob@example.test",
                      "tx-commit %s %s" % (msgid, seen()[-2].split()[-1]),
                      "link-disconnect "], seen()
    assert not re.search(r"filter lo: .*(failing|error|invalid)", d.log(), re.I), d.log()[-3000:]


# ---------------------------------------------------------------------------
# Debian's filter-dkimsign
# ---------------------------------------------------------------------------

DKIMSIGN = "/usr/libexec/opensmtpd/filter-dkimsign"


def test_dkimsign_signature_verifies(tx):
    if not Path(DKIMSIGN).exists():
        pytest.fail("opensmtpd-filter-dkimsign is missing: regress/install installs it")
    dkim = pytest.importorskip("dkim")
    key = tx.dir / "dkim.key"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True,
                   capture_output=True)
    shutil.chown(key, "_smtpd")
    os.chmod(key, 0o600)
    pub = subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    import base64
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)
    d = tx('filter dk proc-exec "%s -d example.test -s sel -k %s"\n' % (DKIMSIGN, key), "dk")
    wait_registered(d, "dk")
    body = ["From: alice@example.test", "To: bob@example.test", "Subject: signed",
            "Date: Mon, 7 Dec 2026 02:00:00 +0000", "", "A signed body.", ".dot"]
    with d.client() as c:
        c.ehlo()
        msgid = accepted_id(transaction(c, "alice@example.test", ["bob@example.test"], body))
        c.until_quit()
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    text = m.body()
    assert b"DKIM-Signature:" in text, text
    wire = text.replace(b"\n", b"\r\n")

    def dns(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        assert name.rstrip(".") == "sel._domainkey.example.test", name
        return record
    assert dkim.verify(wire, dnsfunc=dns), text
    # Changed, it does not verify.
    assert not dkim.verify(wire.replace(b"A signed body.", b"A changed body."), dnsfunc=dns)
