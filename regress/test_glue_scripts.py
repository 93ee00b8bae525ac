"""The Python and Perl filter bridges (filters/python/filter-python, filters/perl/filter-perl)
against the real daemon.

* The trace examples (trace.py, trace.pl) print, for the same sessions, exactly what the
  Rust filter-trace prints: the three run in one chain, so they see the same sessions.
* reject.py/reject.pl refuse a sender with 550; rewrite.py/rewrite.pl change a word of
  the body; a callback that raises gets 451 and the bridge goes on; EOM edits and an
  on_helo that also answers EHLO work.

Run as root, the filters run as `_smtpd`: the scripts are copied into the test directory
(0755, directories searchable).  Needs `cargo build --workspace` (for filter-trace).
"""

import os
import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, Daemon, accepted_id, allow_traversal, data_of, smtpd_bin, wait_until

PY_DIR = REPO / "filters" / "python"
PL_DIR = REPO / "filters" / "perl"
PERL = shutil.which("perl") or "/usr/bin/perl"
LANGS = ("python", "perl")

_built = {}


def filter_trace_bin():
    """The Rust filter-trace next to the daemon binary, built with the workspace once."""
    for d in (Path(smtpd_bin()).parent, REPO / "target" / "debug"):
        if (d / "filter-trace").is_file():
            return d / "filter-trace"
    if "done" not in _built:
        _built["done"] = True
        r = subprocess.run(["cargo", "build", "--workspace"], cwd=REPO, capture_output=True,
                           text=True, timeout=900)
        if r.returncode != 0:
            pytest.fail("cargo build --workspace failed:\n" + r.stderr[-4000:])
    p = REPO / "target" / "debug" / "filter-trace"
    if not p.is_file():
        pytest.fail("filter-trace not found (cargo build --workspace)")
    return p


class GlueDaemon(Daemon):
    """A conftest Daemon whose configuration declares `filters` before its listener and
    attaches `listen_filter` to it (filters must be declared before the listener that
    names them; conftest writes its own `listen on` line first)."""

    def __init__(self, workdir, filters, listen_filter, **kw):
        super().__init__(workdir, **kw)
        self.filters = filters
        self.listen_filter = listen_filter

    def write_config(self):
        super().write_config()  # keeps conftest's guards on the actions
        text = self.conf.read_text()
        m = re.search(r"^listen on .*$", text, re.M)
        assert m, text
        self.conf.write_text(text[:m.start()] + self.filters.strip("\n") + "\n" + m.group(0)
                             + " filter " + self.listen_filter + text[m.end():])


@pytest.fixture
def glue(tmp_path):
    """The bridges, examples and filter-trace copied where `_smtpd` can run them."""
    d = tmp_path / "glue"
    for sub in ("python/examples", "perl/examples"):
        (d / sub).mkdir(parents=True)
    for name in ("filter-python", "filter.py"):
        shutil.copy(PY_DIR / name, d / "python" / name)
    for f in (PY_DIR / "examples").glob("*.py"):
        shutil.copy(f, d / "python" / "examples" / f.name)
    for name in ("filter-perl", "smtpd.pm"):
        shutil.copy(PL_DIR / name, d / "perl" / name)
    for f in (PL_DIR / "examples").glob("*.pl"):
        shutil.copy(f, d / "perl" / "examples" / f.name)
    for p in [d] + list(d.rglob("*")):
        os.chmod(p, 0o755)
    allow_traversal(d)
    return d


@pytest.fixture
def start(tmp_path):
    """start(filters, listen_filter) -> a started GlueDaemon (stopped after the test)."""
    made = []

    def make(filters, listen_filter):
        d = GlueDaemon(tmp_path / ("smtpd%d" % len(made)), filters, listen_filter,
                       name="smtpd%d" % len(made))
        made.append(d)
        d.start()
        return d

    yield make
    for d in made:
        try:
            d.stop()
        except Exception:  # noqa: BLE001 - teardown goes on
            d._reap_hard()


def need(lang):
    if lang == "perl" and not os.access(PERL, os.X_OK):
        pytest.skip("no perl")


def command(glue, lang, script, *args, env=None):
    """The proc-exec command running `script` (a path, or an example's name)."""
    bridge = glue / lang / ("filter-python" if lang == "python" else "filter-perl")
    path = Path(script) if os.sep in str(script) else glue / lang / "examples" / script
    words = [str(bridge), str(path)] + list(args)
    if env:
        words = ["env"] + ["%s=%s" % kv for kv in env.items()] + words
    return " ".join(words)


def write_script(glue, name, text):
    p = glue / name
    p.write_text(text)
    os.chmod(p, 0o755)
    return p


def traces(daemon, name):
    """What filter `name` wrote on stderr, as logged by the daemon: {session: [event]}."""
    out = {}
    for m in re.finditer(r"filter %s: ([0-9a-f]{16}) (.*)$" % re.escape(name), daemon.log(), re.M):
        out.setdefault(m.group(1), []).append(m.group(2))
    return out


def session_one(c):
    """EHLO, one message with awkward lines, then a transaction that is reset."""
    c.ehlo("client.test")
    lines = [
        "Subject: colour check",
        "From: <alice@example.org>",
        "",
        "the colour of the sky",
        ".a line that starts with a dot",
        "..two dots",
        b"caf\xc3\xa9 \xe9t\xe9 \xff raw bytes",
        "",
        "x" * 900,
        "\tlast line with a tab",
    ]
    msgid = c.send_message("alice@example.org", ["root@example.test", "bob@example.test"],
                           data_of(lines))
    c.expect("MAIL FROM:<carol@example.org>", 250)
    c.expect("RSET", 250)
    c.until_quit()
    return msgid, lines


def session_two(c):
    """HELO, the null sender, an empty message, a refused recipient."""
    c.helo("other.test")
    c.expect("MAIL FROM:<>", 250)
    r = c.cmd("RCPT TO:<someone@elsewhere.invalid>")
    assert r.code == 550, r
    c.expect("RCPT TO:<root@example.test>", 250)
    c.expect("DATA", 354)
    c.send(b".\r\n")
    accepted_id(c.reply())
    c.until_quit()


def test_trace_same_as_rust(glue, start):
    """Rust, Python and Perl traces in one chain: the same lines for the same sessions,
    and the message comes out of the chain unchanged."""
    need("perl")
    rust = glue / "filter-trace"
    shutil.copy(filter_trace_bin(), rust)
    os.chmod(rust, 0o755)
    filters = "\n".join([
        'filter "rs" proc-exec "%s"' % rust,
        'filter "py" proc-exec "%s"' % command(glue, "python", "trace.py"),
        'filter "pl" proc-exec "%s"' % command(glue, "perl", "trace.pl"),
        'filter "traces" chain { "rs", "py", "pl" }',
    ])
    d = start(filters, '"traces"')
    with d.client() as c:
        msgid, lines = session_one(c)
    with d.client() as c:
        session_two(c)

    def done():
        t = [traces(d, n) for n in ("rs", "py", "pl")]
        ended = [sum(1 for ev in s.values() if ev and ev[-1] == "disconnect") for s in t]
        return t if min(ended) >= 3 and t[0] == t[1] == t[2] else None

    # Three sessions: the daemon's start-up probe and ours.
    got = wait_until(done, timeout=10)
    rs, py, pl = got or [traces(d, n) for n in ("rs", "py", "pl")]
    assert rs, "no trace from filter-trace:\n" + d.log()[-3000:]
    ours = [evs for evs in rs.values() if any(e.startswith(("ehlo", "helo")) for e in evs)]
    assert len(ours) == 2, rs
    first = next(evs for evs in ours if "ehlo client.test" in evs)
    assert first[0].startswith("connect local=127.0.0.1:%d remote=127.0.0.1:" % d.port), first
    assert "mail <alice@example.org>" in first and "rcpt <bob@example.test>" in first
    assert "data-line ..two dots" in first and "commit %s" % msgid in first
    assert "rollback" in first and first[-1] == "disconnect", first
    assert py == rs, "python trace differs:\n%r\n%r" % (py, rs)
    assert pl == rs, "perl trace differs:\n%r\n%r" % (pl, rs)
    # Each trace passed every line back unchanged.
    msg = next(m for m in d.wait_messages(2) if m.msgid == msgid)
    want = b"".join((l.encode() if isinstance(l, str) else l) + b"\n" for l in lines)
    assert msg.body() == want


@pytest.mark.parametrize("lang", LANGS)
def test_reject_sender(glue, start, lang):
    """reject.py takes the sender as argument, reject.pl from $REJECT_SENDER."""
    need(lang)
    if lang == "python":
        cmd = command(glue, lang, "reject.py", "spammer@bad.example")
    else:
        cmd = command(glue, lang, "reject.pl", env={"REJECT_SENDER": "spammer@bad.example"})
    d = start('filter "rej" proc-exec "%s"' % cmd, '"rej"')
    with d.client() as c:
        c.ehlo()
        for sender in ("spammer@bad.example", "SPAMMER@Bad.Example"):
            r = c.cmd("MAIL FROM:<%s>" % sender)
            assert r.is_(550, "5.7.1"), r
            # (the daemon lowercases the domain before the filter sees it)
            assert "sender <%s> refused" % sender.lower() in r.text.lower(), r
        msgid = c.send_message("friend@good.example", ["root@example.test"],
                               data_of(["Subject: hi", "", "hello"]))
        c.until_quit()
    msgs = d.wait_messages(1)
    assert [m.msgid for m in msgs] == [msgid]
    assert msgs[0].envelopes[0]["sender"] == "friend@good.example"


@pytest.mark.parametrize("lang", LANGS)
def test_rewrite_body(glue, start, lang):
    """rewrite.py/rewrite.pl colour -> color in the body, headers untouched, across two
    messages of one session."""
    need(lang)
    script = "rewrite.py" if lang == "python" else "rewrite.pl"
    d = start('filter "rw" proc-exec "%s"' % command(glue, lang, script, "colour", "color"),
              '"rw"')
    lines = ["Subject: colour", "", "the colour of colours", ".colour", "plain"]
    with d.client() as c:
        c.ehlo()
        ids = [c.send_message("a@example.org", ["root@example.test"], data_of(lines))
               for _ in range(2)]
        c.until_quit()
    msgs = {m.msgid: m for m in d.wait_messages(2)}
    for i in ids:
        assert msgs[i].body() == (b"Subject: colour\n\nthe color of colors\n.color\nplain\n")


SCRIPTS = {
    "python": '''
import filter

def on_helo(s, name):          # registered for EHLO too
    filter.rewrite(s, "rewritten.example")

def on_mail(s, mail):
    if mail.startswith("boom"):
        raise RuntimeError("a bug in the script")

def on_dataline(s, line):
    if line == "explode":
        raise ValueError("a bug in on_dataline")
    filter.writeln(s, line)

def on_eom(s, size):
    filter.add_header(s, "X-Glue", "python size=%d" % size)
    filter.change_header(s, 1, "Subject", "changed")
''',
    "perl": '''
use strict;
use warnings;

sub on_helo { smtpd::filter_api_rewrite $_[0], 'rewritten.example' }

sub on_mail { die "a bug in the script\\n" if $_[1] =~ /^boom/ }

sub on_dataline {
    my ($s, $line) = @_;
    die "a bug in on_dataline\\n" if $line eq 'explode';
    smtpd::filter_api_writeln $s, $line;
}

sub on_eom {
    my ($s, $size) = @_;
    smtpd::filter_api_header_add $s, 'X-Glue', "perl size=$size";
    smtpd::filter_api_header_change $s, 1, 'Subject', 'changed';
}
''',
}


@pytest.mark.parametrize("lang", LANGS)
def test_errors_edits_and_helo(glue, start, lang):
    """A callback that raises: 451 for that command (or that message), the bridge keeps
    serving; EOM edits apply; on_helo alone answers EHLO with a rewrite."""
    need(lang)
    script = write_script(glue, "edge." + ("py" if lang == "python" else "pl"), SCRIPTS[lang])
    d = start('filter "edge" proc-exec "%s"' % command(glue, lang, script), '"edge"')
    with d.client() as c:
        c.ehlo("client.test")
        r = c.cmd("MAIL FROM:<boom@example.org>")
        assert r.code == 451, r
        c.expect("MAIL FROM:<ok@example.org>", 250)
        c.expect("RCPT TO:<root@example.test>", 250)
        c.expect("DATA", 354)
        c.send(data_of(["Subject: s", "", "a", "explode", "b"]) + b".\r\n")
        r = c.reply()
        assert r.code == 451, r
        msgid = c.send_message("ok@example.org", ["root@example.test"],
                               data_of(["Subject: original", "", "body"]))
        c.until_quit()
    msgs = d.wait_messages(1)
    assert [m.msgid for m in msgs] == [msgid]
    body = msgs[0].body().decode()
    assert body.startswith("Subject: changed\n"), body
    size = int(re.search(r"^X-Glue: %s size=(\d+)$" % lang, body, re.M).group(1))
    assert size > 0
    assert body.endswith("\n\nbody\n"), body
    assert msgs[0].envelopes[0]["helo"] == "rewritten.example"
    assert d.wait_log(r"a bug in", 15), d.log()[-3000:]
    log = d.log()
    assert "a bug in" in log
    assert "restarting" not in log, log[-3000:]


LATER_PL = '''
use strict;
use warnings;

# MAIL from slow@ is answered 2.5 s later, from quick@ 0.2 s later: both from timers.
sub on_mail {
    my ($id, $mail) = @_;
    my $after = $mail =~ /^slow@/ ? 2.5 : 0.2;
    smtpd::timer($after, sub {
        my $r = smtpd::filter_api_accept($id);
        print STDERR smtpd::id_hex($id) . " late accept $r\\n";
    });
    return smtpd::LATER;
}
1;
'''


def test_late_answer_for_an_ended_session(glue, start):
    """A filter answers later (smtpd::LATER); a session that ends while its answer is
    pending takes its deadline with it: the filter, which drops that answer, is not
    taken for hung although its 1 s timeout passes, and nothing is logged against it.
    Meanwhile another session's deferred answer comes through."""
    need("perl")
    script = write_script(glue, "later.pl", LATER_PL)
    d = start('filter "later" proc-exec "%s" timeout 1s' % command(glue, "perl", script),
              '"later"')
    gone = d.client()
    gone.ehlo("gone.test")
    gone.send(b"MAIL FROM:<slow@example.org>\r\n")
    # The filter has the question (its first log line comes only at the answer).
    assert d.wait_log(r"smtp connected") is not None
    with d.client() as c:
        c.ehlo("client.test")
        c.expect("MAIL FROM:<quick@example.org>", 250)
        # The client goes away with a reset: the daemon ends its session at once.
        gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        assert d.wait_log(r"smtp disconnected reason=disconnect") is not None
        # The slow answer comes 2.5 s after its question, past the filter's timeout.
        assert d.wait_log(r"filter later: [0-9a-f]{16} late accept 0") is not None, d.log()[-3000:]
        c.expect("RCPT TO:<root@example.test>", 250)
        c.expect("RSET", 250)
        c.expect("MAIL FROM:<quick@example.org>", 250)
        c.until_quit()
    # Both quick answers logged (the filter's standard error comes on its own pipe).
    assert wait_until(lambda: len(re.findall(r"filter later: [0-9a-f]{16} late accept 1",
                                             d.log())) == 2), d.log()[-3000:]
    log = d.log()
    assert "restarting" not in log and "did not answer" not in log, log[-3000:]
    assert "nobody asked" not in log, log[-3000:]
