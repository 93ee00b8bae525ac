"""The filter protocol in Python (stdlib only), for regress/test_filters.py.

Two uses:

* a library for the tests: frame encoding/decoding (`encode`, `Decoder`), and
  `FilterDaemon`, a conftest `Daemon` whose configuration declares filters before its
  listener (`filter ...` lines must come before the `listen on` that names them);
* a filter program driven by a JSON spec: `python3 filterlib.py SPEC.json`.  The daemon
  runs it as `/bin/sh -c "exec COMMAND"`, as `_smtpd`, on a socketpair (stdin/stdout).

The wire format (filters/api/src/codec.rs):

    frame   = u32 length | u8 kind | u64 session | payload     (big-endian)
    length  = 9 + payload length
    string  = u16 length | bytes
    lines   = u16 count | string * count

The spec of the filter program (every key optional):

    {
      "name": "py",                      # name in REGISTER
      "hooks": ["mail", ...],            # answered events (default: every answerable one
                                         #   and data-lines when needs_lines(spec))
      "reports": ["commit", ...],        # observed events (default: commit, rollback,
                                         #   disconnect)
      "answers": {PHASE: ANSWER | [ANSWER, ...], ...},
                                         # PHASE: connect helo ehlo auth mail rcpt data
                                         #   eom (at auth, `when` matches the user),
                                         #   or data-line (only crash, garbage, hang);
                                         #   a list: the first one whose conditions hold
      "lines": [[FROM, TO], ...],        # data lines: each replacement applied in order
      "append": ["line", ...],           # lines added at the end of the message
      "edits": [EDIT, ...],              # at eom, before the answer
      "register_version": 1,
      "register_delay": 0,               # seconds to wait before REGISTER
    }

    ANSWER = {"do": "proceed" | "reject" | "tempfail" | "disconnect" | "junk" |
                    "rewrite" | "discard" | "crash" | "garbage" | "hang" |
                    "bad-kind" | "edit" (an edit, then proceed) | "empty-rewrite" |
                    "flood" (see below) | "oversized" (a frame header that
                    announces 64 MiB, then bytes without end),
              "code": 550, "text": "5.7.1 ...", "value": "...",
              "when": REGEX,       # only when the parameter (or, at eom, the message's
                                   # text) matches; else proceed
              "once": PATH}        # only when PATH does not exist (it is created first)
    EDIT = ["add-header", NAME, VALUE] | ["insert-header", INDEX, NAME, VALUE] |
           ["change-header", INDEX, NAME, VALUE] | ["replace-body", TEXT] |
           ["add-rcpt", ADDR] | ["del-rcpt", ADDR] | ["change-from", ADDR] |
           ["quarantine", REASON]
           with an optional trailing {"when": REGEX} object.

A "flood" answer does not answer the event: the filter writes the frames of "frames"
(default ["proceed"]; also "data-lines", "data-end", "log") without end, as fast as the
socket takes them and without reading, for sessions nobody asked about ("session":
"unknown", the default) or for the session of the event ("session": "self"); with
"frames": ["stderr"] it writes lines on its standard error instead.

Every event is also written on standard error (`SESSION EVENT ARG`), which the
daemon logs as `filter NAME: ...`: reports too (`protocol < LINE`, `tls version=...`,
`auth-result MECHANISM USER RESULT`), when registered.
"""

import json
import os
import re
import struct
import sys
import time

VERSION = 1
MAX_FRAME = 1 << 20

# Event bits (codec.rs `event`).
EV = {
    "connect": 1 << 0,
    "helo": 1 << 1,
    "ehlo": 1 << 2,
    "starttls": 1 << 3,
    "auth": 1 << 4,
    "mail": 1 << 5,
    "rcpt": 1 << 6,
    "data": 1 << 7,
    "data-lines": 1 << 8,
    "eom": 1 << 9,
    "commit": 1 << 10,
    "rollback": 1 << 11,
    "disconnect": 1 << 12,
    "protocol": 1 << 13,
    "tls": 1 << 14,
    "auth-result": 1 << 15,
}
ANSWERABLE = ("connect", "helo", "ehlo", "mail", "rcpt", "data", "eom")

# Frame kinds (codec.rs `kind`).
REGISTER = 0x01
READY = 0x02
REFUSED = 0x03
CONNECT = 0x10
HELO = 0x11
EHLO = 0x12
STARTTLS = 0x13
AUTH = 0x14
MAIL = 0x15
RCPT = 0x16
DATA = 0x17
DATA_LINES = 0x18
DATA_END = 0x19
EOM = 0x1A
COMMIT = 0x1B
ROLLBACK = 0x1C
DISCONNECT = 0x1D
PROTOCOL = 0x1E
TLS = 0x40
AUTH_RESULT = 0x41
PROCEED = 0x20
REJECT = 0x21
TEMPFAIL = 0x22
DISCONNECT_ANSWER = 0x23
JUNK = 0x24
REWRITE = 0x25
ADD_HEADER = 0x30
INSERT_HEADER = 0x31
CHANGE_HEADER = 0x32
REPLACE_BODY = 0x33
ADD_RCPT = 0x34
DEL_RCPT = 0x35
CHANGE_FROM = 0x36
QUARANTINE = 0x37
DISCARD = 0x38
LOG = 0x3F

PHASE_OF_KIND = {CONNECT: "connect", HELO: "helo", EHLO: "ehlo", MAIL: "mail", RCPT: "rcpt",
                 DATA: "data", EOM: "eom"}


def _b(s):
    return s if isinstance(s, bytes) else str(s).encode()


def s16(s):
    s = _b(s)
    return struct.pack(">H", len(s)) + s


def frame(kind, session, payload=b""):
    return struct.pack(">IBQ", 9 + len(payload), kind, session) + payload


def register(hooks, reports, name, version=VERSION):
    return frame(REGISTER, 0, struct.pack(">HII", version, hooks, reports) + s16(name))


def lines_payload(lines):
    return struct.pack(">H", len(lines)) + b"".join(s16(l) for l in lines)


class Decoder:
    """Whole frames from a byte stream: (kind, session, payload)."""

    def __init__(self):
        self.buf = b""

    def feed(self, data):
        self.buf += data

    def next(self):
        if len(self.buf) < 4:
            return None
        (n,) = struct.unpack(">I", self.buf[:4])
        if n < 9 or n > MAX_FRAME - 4:
            raise ValueError("bad frame length %d" % n)
        if len(self.buf) < 4 + n:
            return None
        kind, session = struct.unpack(">BQ", self.buf[4:13])
        payload = self.buf[13:4 + n]
        self.buf = self.buf[4 + n:]
        return kind, session, payload


class Reader:
    """Fields of a payload, in order."""

    def __init__(self, b):
        self.b = b
        self.i = 0

    def u16(self):
        (v,) = struct.unpack(">H", self.b[self.i:self.i + 2])
        self.i += 2
        return v

    def u32(self):
        (v,) = struct.unpack(">I", self.b[self.i:self.i + 4])
        self.i += 4
        return v

    def u64(self):
        (v,) = struct.unpack(">Q", self.b[self.i:self.i + 8])
        self.i += 8
        return v

    def str(self):
        n = self.u16()
        s = self.b[self.i:self.i + n]
        self.i += n
        return s

    def lines(self):
        return [self.str() for _ in range(self.u16())]


# ---------------------------------------------------------------------------
# The filter program
# ---------------------------------------------------------------------------


def needs_lines(spec):
    """Whether the filter must see the message's lines: it changes them, or decides at
    end of message on its content (`when` of an eom answer or of an edit)."""
    answers = spec.get("answers", {})
    eom = answers.get("eom")
    eom = eom if isinstance(eom, list) else [eom] if eom else []
    return bool(spec.get("lines") or spec.get("append") or "data-line" in answers
                or any("when" in a for a in eom)
                or any(e and isinstance(e[-1], dict) for e in spec.get("edits", [])))


class SpecFilter:
    def __init__(self, spec):
        self.spec = spec
        self.name = spec.get("name", "py")
        hooks = spec.get("hooks")
        if hooks is None:
            hooks = list(ANSWERABLE)
            if needs_lines(spec):
                hooks.append("data-lines")
        self.hooks = sum(EV[h] for h in hooks)
        self.reports = sum(EV[r] for r in spec.get("reports", ["commit", "rollback", "disconnect"]))
        self.answers = spec.get("answers", {})
        self.msg = {}  # session -> list of message lines seen (as output)
        self.out = bytearray()

    def log(self, session, what):
        sys.stderr.write("%016x %s\n" % (session, what))
        sys.stderr.flush()

    def send(self, data):
        self.out += data

    def flush(self):
        while self.out:
            n = os.write(1, self.out)
            del self.out[:n]

    def answer_for(self, phase, param):
        """The first answer of `phase` whose conditions hold, else proceed."""
        given = self.answers.get(phase)
        for a in given if isinstance(given, list) else [given] if given else []:
            when = a.get("when")
            if when is not None and not re.search(when, param):
                continue
            once = a.get("once")
            if once:
                if os.path.exists(once):
                    continue
                with open(once, "w") as f:
                    f.write("x")
            return a
        return {"do": "proceed"}

    def answer(self, session, a):
        do = a.get("do", "proceed")
        if do == "proceed":
            self.send(frame(PROCEED, session))
        elif do == "reject":
            self.send(frame(REJECT, session, struct.pack(">H", a["code"]) + s16(a.get("text", ""))))
        elif do == "tempfail":
            self.send(frame(TEMPFAIL, session, s16(a.get("text", ""))))
        elif do == "disconnect":
            self.send(frame(DISCONNECT_ANSWER, session,
                            struct.pack(">H", a["code"]) + s16(a.get("text", ""))))
        elif do == "junk":
            self.send(frame(JUNK, session))
        elif do == "rewrite":
            self.send(frame(REWRITE, session, s16(a["value"])))
        elif do == "discard":
            self.send(frame(DISCARD, session))
        elif do == "bad-kind":
            self.send(frame(0x7F, session))
        elif do == "edit":
            self.send(frame(ADD_HEADER, session, s16("X-Out-Of-Place") + s16("yes")))
            self.send(frame(PROCEED, session))
        elif do == "empty-rewrite":
            self.send(frame(REWRITE, session, s16("")))
        elif do == "crash":
            self.log(session, "crashing")
            os._exit(3)
        elif do == "garbage":
            self.log(session, "writing garbage")
            os.write(1, b"\xde\xad\xbe\xef garbage, not a frame \x00\x01\x02" * 4)
            # Stay alive: the daemon must notice the garbage itself.
            time.sleep(120)
            os._exit(0)
        elif do == "flood":
            self.flood(session, a)
        elif do == "oversized":
            self.flush()
            self.log(session, "writing an oversized frame")
            os.write(1, struct.pack(">IBQ", 64 << 20, PROCEED, session))
            while True:
                os.write(1, b"\0" * 65536)
        elif do == "hang":
            self.log(session, "hanging")
            time.sleep(120)
            os._exit(0)
        else:
            raise ValueError("unknown answer %r" % do)

    def flood(self, session, a):
        """Writes frames nobody asked for until the daemon kills the filter: the same
        megabyte of frames over and over (message lines as long as allowed, and as many
        as a frame holds)."""
        self.flush()
        self.log(session, "flooding")
        line = b"x" * 998
        one = {"proceed": lambda s: frame(PROCEED, s),
               "data-lines": lambda s: frame(DATA_LINES, s, lines_payload([line] * 1000)),
               "data-end": lambda s: frame(DATA_END, s),
               "log": lambda s: frame(LOG, 0, s16("flooding the log"))}
        fd, chunk = 1, bytearray()
        if a.get("frames") == ["stderr"]:
            fd, chunk = 2, b"flooding the log\n" * 60000
        kinds = [one[k] for k in a.get("frames", ["proceed"]) if k != "stderr"]
        n = 0
        while kinds and len(chunk) < 1 << 20:
            s = session if a.get("session") == "self" else 0x5EED000000000000 + n
            chunk += kinds[n % len(kinds)](s)
            n += 1
        view = memoryview(bytes(chunk))
        while True:
            off = 0
            while off < len(view):
                off += os.write(fd, view[off:])

    def edits(self, session):
        text = b"\n".join(self.msg.get(session, [])).decode("utf-8", "replace")
        for e in self.spec.get("edits", []):
            if e and isinstance(e[-1], dict):
                cond = e[-1]
                e = e[:-1]
                if "when" in cond and not re.search(cond["when"], text):
                    continue
            op = e[0]
            if op == "add-header":
                self.send(frame(ADD_HEADER, session, s16(e[1]) + s16(e[2])))
            elif op == "insert-header":
                self.send(frame(INSERT_HEADER, session, struct.pack(">I", e[1]) + s16(e[2]) + s16(e[3])))
            elif op == "change-header":
                self.send(frame(CHANGE_HEADER, session, struct.pack(">I", e[1]) + s16(e[2]) + s16(e[3])))
            elif op == "replace-body":
                self.send(frame(REPLACE_BODY, session, s16(e[1])))
            elif op == "add-rcpt":
                self.send(frame(ADD_RCPT, session, s16(e[1])))
            elif op == "del-rcpt":
                self.send(frame(DEL_RCPT, session, s16(e[1])))
            elif op == "change-from":
                self.send(frame(CHANGE_FROM, session, s16(e[1])))
            elif op == "quarantine":
                self.send(frame(QUARANTINE, session, s16(e[1])))
            else:
                raise ValueError("unknown edit %r" % op)

    def on_lines(self, session, lines):
        out = []
        for l in lines:
            self.log(session, "data-line " + l.decode("utf-8", "backslashreplace"))
            a = self.answer_for("data-line", l.decode("utf-8", "replace"))
            if a.get("do", "proceed") != "proceed":
                self.flush()
                self.answer(session, a)
            for frm, to in self.spec.get("lines", []):
                l = l.replace(_b(frm), _b(to))
            out.append(l)
        self.msg.setdefault(session, []).extend(out)
        if out:
            self.send(frame(DATA_LINES, session, lines_payload(out)))

    def on_end(self, session):
        extra = [_b(l) for l in self.spec.get("append", [])]
        if extra:
            self.msg.setdefault(session, []).extend(extra)
            self.send(frame(DATA_LINES, session, lines_payload(extra)))
        self.log(session, "data-end")
        self.send(frame(DATA_END, session))

    def handle(self, kind, session, payload):
        r = Reader(payload)
        if kind == CONNECT:
            local, remote, host = r.str(), r.str(), r.str()
            self.log(session, "connect local=%s remote=%s hostname=%s"
                     % (local.decode(), remote.decode(), host.decode()))
            self.answer(session, self.answer_for("connect", remote.decode()))
        elif kind in (HELO, EHLO, MAIL, RCPT):
            p = r.str().decode("utf-8", "replace")
            phase = PHASE_OF_KIND[kind]
            self.log(session, "%s %s" % (phase, p))
            if kind == MAIL:
                self.msg[session] = []
            self.answer(session, self.answer_for(phase, p))
        elif kind == AUTH:
            mechanism, user = r.str().decode(), r.str().decode("utf-8", "replace")
            self.log(session, "auth %s %s" % (mechanism, user))
            self.answer(session, self.answer_for("auth", user))
        elif kind == DATA:
            self.log(session, "data")
            self.msg[session] = []
            self.answer(session, self.answer_for("data", ""))
        elif kind == DATA_LINES:
            self.on_lines(session, r.lines())
        elif kind == DATA_END:
            self.on_end(session)
        elif kind == EOM:
            size = r.u64()
            self.log(session, "eom size=%d" % size)
            text = b"\n".join(self.msg.get(session, [])).decode("utf-8", "replace")
            a = self.answer_for("eom", text)
            if a.get("do", "proceed") in ("proceed", "junk", "discard"):
                self.edits(session)
            self.answer(session, a)
        elif kind == COMMIT:
            self.log(session, "commit %s" % r.str().decode())
        elif kind == ROLLBACK:
            self.log(session, "rollback")
        elif kind == DISCONNECT:
            self.log(session, "disconnect")
            self.msg.pop(session, None)
        elif kind == PROTOCOL:
            d = chr(r.b[0])
            r.i = 1
            self.log(session, "protocol %s %s" % (d, r.str().decode("utf-8", "backslashreplace")))
        elif kind == TLS:
            version, cipher, bits = r.str().decode(), r.str().decode(), r.u16()
            sni, subject = r.str().decode(), r.str().decode("utf-8", "replace")
            self.log(session, "tls version=%s cipher=%s bits=%d sni=%s subject=%s"
                     % (version, cipher, bits, sni, subject))
        elif kind == AUTH_RESULT:
            mechanism, user, result = (r.str().decode("utf-8", "replace") for _ in range(3))
            self.log(session, "auth-result %s %s %s" % (mechanism, user, result))
        else:
            self.log(session, "unexpected kind 0x%02x" % kind)

    def run(self):
        v = self.spec.get("register_version", VERSION)
        time.sleep(self.spec.get("register_delay", 0))
        os.write(1, register(self.hooks, self.reports, self.name, v))
        dec = Decoder()
        ready = False
        pre = b""
        while True:
            data = os.read(0, 65536)
            if not data:
                return 0
            if pre is not None:
                data, pre = skip_config(pre + data)
            dec.feed(data)
            while True:
                f = dec.next()
                if f is None:
                    break
                kind, session, payload = f
                if not ready:
                    if kind == READY:
                        r = Reader(payload)
                        ver, maxf, tmo = r.u16(), r.u32(), r.u32()
                        self.log(0, "ready version=%d max_frame=%d timeout_ms=%d" % (ver, maxf, tmo))
                        ready = True
                        continue
                    if kind == REFUSED:
                        self.log(0, "refused " + Reader(payload).str().decode())
                        return 1
                    self.log(0, "event before READY")
                    return 1
                self.handle(kind, session, payload)
            self.flush()


def skip_config(buf):
    """Drops the configuration lines of OpenSMTPD's protocol that the daemon sends a filter
    it heard nothing from for a second (they start with "c", a frame with a zero byte).
    Returns the bytes to decode and what to keep looking at (None once done)."""
    while buf[:1] == b"c":
        nl = buf.find(b"\n")
        if nl < 0:
            return b"", buf
        buf = buf[nl + 1:]
    return (buf, None) if buf else (b"", b"")


def main(argv):
    with open(argv[1]) as f:
        spec = json.load(f)
    return SpecFilter(spec).run()


# ---------------------------------------------------------------------------
# Test helpers (imported by test_filters.py; not used by the filter program)
# ---------------------------------------------------------------------------

if __name__ != "__main__":
    from conftest import Daemon

    class FilterDaemon(Daemon):
        """A Daemon whose configuration starts with `filters` (declarations) and whose
        TCP listener is `listen on ... filter LISTEN_FILTER` (a name or `{ A, B }`)."""

        def __init__(self, workdir, filters="", listen_filter=None, **kw):
            super().__init__(workdir, **kw)
            self.filters = filters
            self.listen_filter = listen_filter

        def write_config(self):
            super().write_config()  # conftest's guards on the actions
            text = self.conf.read_text()
            head, sep, rest = text.partition("\nlisten on ")
            assert sep, text
            line, nl, tail = rest.partition("\n")
            if self.listen_filter:
                line += " filter " + self.listen_filter
            self.conf.write_text(head + "\n" + self.filters.strip("\n") + "\nlisten on " + line
                                 + nl + tail)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
