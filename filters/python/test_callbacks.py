"""The callbacks of filter-python for TLS and AUTH, run as the daemon runs a script:
the daemon's frames on standard input, the answers read back from standard output.

    /usr/bin/python3 -m pytest -q filters/python/test_callbacks.py
"""

import os
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import filter as F  # noqa: E402

SCRIPT = r'''
import sys
import filter


def out(text):
    sys.stderr.write(text + "\n")


def on_tls(s, version, cipher, bits, sni, subject):
    out("%x tls %s %s %d sni=%s subject=%s" % (s, version, cipher, bits, sni, subject))


def on_auth(s, mechanism, user):
    out("%x auth %s %s" % (s, mechanism, user))
    if user == "mallory":
        filter.reject(s, 535, "5.7.8 not from here")
    elif user == "later":
        filter.tempfail(s, "directory down")
    elif user == "rw":
        try:
            filter.rewrite(s, "root")
        except filter.FilterError as e:
            out("refused: %s" % e)


def on_auth_result(s, mechanism, user, result):
    out("%x auth-result %s %s %s" % (s, mechanism, user, result))
'''


def run_script(frames, text=SCRIPT):
    """Runs `text` on READY and `frames`; returns (frames it sent, its stderr)."""
    with tempfile.TemporaryDirectory() as d:
        script = os.path.join(d, "ta.py")
        with open(script, "w") as f:
            f.write(text)
        data = F.encode(0, F.READY, 1, F.MAX_FRAME, 30000) + b"".join(frames)
        inp = os.path.join(d, "in")
        with open(inp, "wb") as f:
            f.write(data)
        with open(inp, "rb") as stdin:
            p = subprocess.run([sys.executable, os.path.join(HERE, "filter-python"), script],
                               stdin=stdin, capture_output=True, timeout=30, check=False)
    assert p.returncode == 0, p.stderr.decode()
    dec = F.Decoder()
    dec.feed(p.stdout)
    return list(dec.frames()), p.stderr.decode()


def test_tls_auth_and_auth_result_reach_their_callbacks():
    auth = lambda s, mech, user: F.encode(s, F.AUTH, mech, user)  # noqa: E731
    frames, err = run_script([
        F.encode(9, F.TLS, "TLSv1.3", "TLS_AES_256_GCM_SHA384", 256, "mx.example.org", ""),
        auth(9, "PLAIN", "alice"),
        F.encode(9, F.AUTH_RESULT, "PLAIN", "alice", "ok"),
        auth(9, "LOGIN", "mallory"),
        auth(9, "PLAIN", "later"),
        auth(9, "PLAIN", "rw"),
        F.encode(9, F.AUTH_RESULT, "LOGIN", "", "tempfail"),
    ])
    assert frames == [
        (0, F.REGISTER, (1, F.EV_AUTH, F.EV_TLS | F.EV_AUTH_RESULT | F.EV_DISCONNECT, b"ta")),
        (9, F.PROCEED, ()),
        (9, F.REJECT, (535, b"5.7.8 not from here")),
        (9, F.TEMPFAIL, (b"directory down",)),
        (9, F.PROCEED, ()),
    ]
    assert err.splitlines() == [
        "9 tls TLSv1.3 TLS_AES_256_GCM_SHA384 256 sni=mx.example.org subject=",
        "9 auth PLAIN alice",
        "9 auth-result PLAIN alice ok",
        "9 auth LOGIN mallory",
        "9 auth PLAIN later",
        "9 auth PLAIN rw",
        "refused: rewrite is only for HELO, EHLO, MAIL and RCPT",
        "9 auth-result LOGIN  tempfail",
    ]


LATER = r'''
import sys
import filter

held = []

def on_mail(s, mail):
    if mail.startswith("later@"):
        held.append(s)
        return filter.LATER
    for h in held:              # answered after its session ended: dropped, no error
        filter.add_header(h, "X-Late", "yes")
        filter.accept(h)
        sys.stderr.write("late answer for %x dropped\n" % h)
    return None
'''


def test_a_late_answer_for_an_ended_session_is_dropped():
    frames, err = run_script([
        F.encode(5, F.MAIL, "later@example.org"),
        F.encode(5, F.DISCONNECT),
        F.encode(6, F.MAIL, "now@example.org"),
    ], LATER)
    assert frames == [
        (0, F.REGISTER, (1, F.EV_MAIL, F.EV_DISCONNECT, b"ta")),
        (6, F.PROCEED, ()),
    ]
    assert err == "late answer for 5 dropped\n", err


LINES = r'''
import sys
import threading
import filter


def out(text):
    sys.stderr.write(text + "\n")


def on_mail(s, mail):
    try:
        filter.writeln(s, "outside")
    except filter.FilterError:
        out("mail: refused")


def on_dataline(s, line):
    if line == "two":
        filter.writeln(s, "two-a\ntwo-b\r")     # a line with LF is several lines
    elif line == "bytes":
        filter.writeln(s, b"as bytes")
    elif line == "other":
        for bad in (s + 1, True):
            try:
                filter.writeln(bad, "x")
            except (filter.FilterError, TypeError) as e:
                out("other: %s" % type(e).__name__)
        t = threading.Thread(target=lambda: filter.writeln(s, "from a thread"))
        t.start()
        t.join()                                  # raised in the thread: nothing written
        filter.writeln(s, line)
    elif line == "long":
        try:
            filter.writeln(s, "x" * 70000)
        except ValueError:
            out("long: refused")
    else:
        filter.writeln(s, line)
'''


def test_writeln_lines_and_who_may_write():
    frames, err = run_script([
        F.encode(3, F.MAIL, "a@example.org"),
        F.encode(3, F.DATA_LINES, ["one", "two", "bytes", "other", "long", "caf\u00e9"]),
        F.encode(3, F.DATA_END),
    ], LINES)
    assert frames[1:] == [
        (3, F.PROCEED, ()),
        (3, F.DATA_LINES, ([b"one", b"two-a", b"two-b", b"as bytes", b"other",
                            "caf\u00e9".encode()],)),
        (3, F.DATA_END, ()),
    ], frames
    assert err.count("mail: refused") == 1, err
    assert err.count("other: FilterError") == 1 and err.count("other: TypeError") == 1, err
    assert "long: refused" in err, err
