"""smtpd filters in Python: the module behind `filter-python SCRIPT [ARGS...]`.

The bridge loads SCRIPT once, registers with the daemon for the hooks the script
defines (``on_connect``, ``on_helo``, ``on_ehlo``, ``on_mail``, ``on_rcpt``, ``on_data``,
``on_dataline``, ``on_dataend``, ``on_eom``, ``on_commit``, ``on_rollback``,
``on_disconnect``), then speaks the binary protocol of smtpd-filters(7) on its standard
input and output until the daemon closes it.  See README.md for the API.

Python 3 standard library only.  The wire format is the one of filters/api/src/codec.rs::

    frame  = u32 length | u8 kind | u64 session | payload     (big-endian)
    length = 9 + payload length
    string = u16 length | bytes
    lines  = u16 count | string * count
"""

import builtins
import collections
import inspect
import os
import struct
import sys
import threading
import traceback
import types

__all__ = [
    "accept", "reject", "tempfail", "disconnect", "junk", "rewrite", "discard",
    "writeln", "drop", "add_header", "insert_header", "change_header", "replace_body",
    "add_rcpt", "del_rcpt", "change_from", "quarantine", "log", "LATER", "FilterError",
    "passthrough", "name",
]

# ---------------------------------------------------------------------------
# The codec
# ---------------------------------------------------------------------------

VERSION = 1
HEADER = 13
MAX_FRAME = 1 << 20
MAX_STR = 0xFFFF
MAX_LINE = 65535  # the longest string of the protocol

# Event bits (REGISTER hooks/reports).
EV_CONNECT = 1 << 0
EV_HELO = 1 << 1
EV_EHLO = 1 << 2
EV_STARTTLS = 1 << 3
EV_AUTH = 1 << 4
EV_MAIL = 1 << 5
EV_RCPT = 1 << 6
EV_DATA = 1 << 7
EV_DATA_LINES = 1 << 8
EV_EOM = 1 << 9
EV_COMMIT = 1 << 10
EV_ROLLBACK = 1 << 11
EV_DISCONNECT = 1 << 12
EV_PROTOCOL = 1 << 13
EV_TLS = 1 << 14
EV_AUTH_RESULT = 1 << 15
EV_ALL = (1 << 16) - 1

# Frame kinds.
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

# Payload layout of every kind: u16, u32, u64, str (bytes), lines (list of bytes),
# dir (one byte, b'<' or b'>', kept as an int).
SCHEMA = {
    REGISTER: ("u16", "u32", "u32", "str"),
    READY: ("u16", "u32", "u32"),
    REFUSED: ("str",),
    CONNECT: ("str", "str", "str"),
    HELO: ("str",),
    EHLO: ("str",),
    STARTTLS: (),
    AUTH: ("str", "str"),
    MAIL: ("str",),
    RCPT: ("str",),
    DATA: (),
    DATA_LINES: ("lines",),
    DATA_END: (),
    EOM: ("u64",),
    COMMIT: ("str",),
    ROLLBACK: (),
    DISCONNECT: (),
    PROTOCOL: ("dir", "str"),
    TLS: ("str", "str", "u16", "str", "str"),
    AUTH_RESULT: ("str", "str", "str"),
    PROCEED: (),
    REJECT: ("u16", "str"),
    TEMPFAIL: ("str",),
    DISCONNECT_ANSWER: ("u16", "str"),
    JUNK: (),
    REWRITE: ("str",),
    ADD_HEADER: ("str", "str"),
    INSERT_HEADER: ("u32", "str", "str"),
    CHANGE_HEADER: ("u32", "str", "str"),
    REPLACE_BODY: ("str",),
    ADD_RCPT: ("str",),
    DEL_RCPT: ("str",),
    CHANGE_FROM: ("str",),
    QUARANTINE: ("str",),
    DISCARD: (),
    LOG: ("str",),
}

KIND_NAMES = {v: k for k, v in globals().items()
              if isinstance(v, int) and not k.startswith(("EV_", "MAX_", "_"))
              and k.isupper() and v in SCHEMA}

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HDR = struct.Struct(">IBQ")


class WireError(ValueError):
    """Bytes that are not a valid frame (the stream is unusable after it).

    ``what`` is "bad-length" (``value``: the length field), "unknown-kind" or
    "bad-payload" (``value``: the kind byte), or "protocol" (a valid frame out of place).
    """

    def __init__(self, what, value=None, text=None):
        self.what = what
        self.value = value
        if text is None:
            text = {"bad-length": "bad frame length %s",
                    "unknown-kind": "unknown frame kind 0x%02x",
                    "bad-payload": "malformed payload for kind 0x%02x"}[what] % value
        ValueError.__init__(self, text)


def _b(v):
    if isinstance(v, str):
        return v.encode("utf-8", "surrogateescape")
    return bytes(v)


def _put_str(out, s):
    s = _b(s)[:MAX_STR]  # as the Rust codec: longer strings are cut
    out += _U16.pack(len(s))
    out += s


def encode(session, kind, *fields):
    """The bytes of one frame.  Strings may be bytes or str (UTF-8, surrogateescape)."""
    try:
        schema = SCHEMA[kind]
    except KeyError:
        raise WireError("unknown-kind", kind) from None
    if len(fields) != len(schema):
        raise TypeError("kind 0x%02x takes %d fields, not %d" % (kind, len(schema), len(fields)))
    out = bytearray(_HDR.pack(0, kind, session))
    for t, v in zip(schema, fields):
        if t == "str":
            _put_str(out, v)
        elif t == "u16":
            out += _U16.pack(v)
        elif t == "u32":
            out += _U32.pack(v)
        elif t == "u64":
            out += _U64.pack(v)
        elif t == "lines":
            v = list(v)[:MAX_STR]
            out += _U16.pack(len(v))
            for line in v:
                _put_str(out, line)
        elif t == "dir":
            out.append(v if isinstance(v, int) else _b(v)[0])
    _U32.pack_into(out, 0, len(out) - 4)
    return bytes(out)


def decode(buf, start=0):
    """Decodes the frame at buf[start:]: None if incomplete, else
    (session, kind, fields, end) where end is the offset after the frame."""
    if len(buf) - start < 4:
        return None
    (length,) = _U32.unpack_from(buf, start)
    if length < HEADER - 4 or length > MAX_FRAME - 4:
        raise WireError("bad-length", length)
    end = start + 4 + length
    if len(buf) < end:
        return None
    kind = buf[start + 4]
    (session,) = _U64.unpack_from(buf, start + 5)
    schema = SCHEMA.get(kind)
    if schema is None:
        raise WireError("unknown-kind", kind)
    p = start + HEADER
    fields = []

    def need(n):
        if p + n > end:
            raise WireError("bad-payload", kind)

    for t in schema:
        if t == "str":
            need(2)
            (n,) = _U16.unpack_from(buf, p)
            need(2 + n)
            fields.append(bytes(buf[p + 2:p + 2 + n]))
            p += 2 + n
        elif t == "u16":
            need(2)
            fields.append(_U16.unpack_from(buf, p)[0])
            p += 2
        elif t == "u32":
            need(4)
            fields.append(_U32.unpack_from(buf, p)[0])
            p += 4
        elif t == "u64":
            need(8)
            fields.append(_U64.unpack_from(buf, p)[0])
            p += 8
        elif t == "lines":
            need(2)
            (count,) = _U16.unpack_from(buf, p)
            p += 2
            lines = []
            for _ in range(count):
                need(2)
                (n,) = _U16.unpack_from(buf, p)
                need(2 + n)
                lines.append(bytes(buf[p + 2:p + 2 + n]))
                p += 2 + n
            fields.append(lines)
        elif t == "dir":
            need(1)
            d = buf[p]
            if d not in (0x3C, 0x3E):  # '<' '>'
                raise WireError("bad-payload", kind)
            fields.append(d)
            p += 1
    if p != end:
        raise WireError("bad-payload", kind)
    return session, kind, tuple(fields), end


class Decoder:
    """A growing input buffer that yields whole frames."""

    def __init__(self):
        self.buf = bytearray()
        self.pos = 0

    def feed(self, data):
        if self.pos and self.pos * 2 > len(self.buf):
            del self.buf[:self.pos]
            self.pos = 0
        self.buf += data

    def pending(self):
        return len(self.buf) - self.pos

    def frames(self):
        """Every whole frame buffered: (session, kind, fields)."""
        while True:
            r = decode(self.buf, self.pos)
            if r is None:
                return
            session, kind, fields, self.pos = r
            yield session, kind, fields


# ---------------------------------------------------------------------------
# The API for scripts
# ---------------------------------------------------------------------------


class FilterError(RuntimeError):
    """An answer given where the protocol does not allow it (wrong session or phase)."""


class _Later:
    def __repr__(self):
        return "filter.LATER"


#: Returned by a callback of an answered event: "I will answer later" (from another
#: thread, or from a later callback); the bridge then sends nothing by itself.
LATER = _Later()

#: With passthrough = True, a data line for which on_dataline neither called writeln()
#: nor drop() is kept unchanged (default False: such a line is dropped).
passthrough = False

#: The name the filter registers with (default: the script's file name without .py).
name = "python"

#: From the daemon's READY: its protocol version, largest frame, answer deadline (ms).
daemon_version = None
max_frame = MAX_FRAME
timeout_ms = None

_ANSWERED = {CONNECT: EV_CONNECT, HELO: EV_HELO, EHLO: EV_EHLO, AUTH: EV_AUTH,
             MAIL: EV_MAIL, RCPT: EV_RCPT, DATA: EV_DATA, EOM: EV_EOM}
_REPORTS = {COMMIT: EV_COMMIT, ROLLBACK: EV_ROLLBACK, DISCONNECT: EV_DISCONNECT,
            TLS: EV_TLS, AUTH_RESULT: EV_AUTH_RESULT}
_DECISIONS = (PROCEED, REJECT, TEMPFAIL, DISCONNECT_ANSWER, JUNK, REWRITE, DISCARD)

_lock = threading.RLock()
_main_thread = threading.get_ident()
_batch = None          # bytearray while the main loop dispatches a read, else None
_out_fd = 1
_awaiting = {}         # session -> event kind waiting for our decision
_gone = collections.OrderedDict()  # sessions that ended with an answer pending (1024 kept)
_data = {}             # session -> "lines" | "ended" (state of its message lines)
_lines = {}            # session -> output lines of the frame being handled
_touched = set()       # sessions whose current input line was written or dropped
_failed = set()        # sessions whose on_dataline raised for the current message
_data_session = None   # the session whose lines on_dataline/on_dataend is handling
_TEMPFAIL_TEXT = "Temporary failure in a filter, try again later"


def _write_all(data):
    view = memoryview(data)
    while view:
        n = os.write(_out_fd, view)
        view = view[n:]


def _emit(frame):
    with _lock:
        if _batch is not None and threading.get_ident() == _main_thread:
            _batch.extend(frame)
        else:
            _write_all(frame)


def _sid(session):
    if isinstance(session, bool) or not isinstance(session, int):
        raise TypeError("session id must be the int given to the callback, not %r" % (session,))
    return session


def _answer(session, kind, *fields):
    with _lock:
        ev = _awaiting.get(_sid(session))
        if ev is None and _sid(session) in _gone:
            return  # a late answer for a session that ended: dropped without a word
        if ev is None:
            raise FilterError("session %016x has no event waiting for an answer" % session)
        if kind == REWRITE and ev not in (HELO, EHLO, MAIL, RCPT):
            raise FilterError("rewrite is only for HELO, EHLO, MAIL and RCPT")
        if kind == DISCARD and ev != EOM:
            raise FilterError("discard is only for the end of message")
        del _awaiting[session]
        _emit(encode(session, kind, *fields))


def _edit(session, kind, *fields):
    with _lock:
        if _sid(session) not in _awaiting and _sid(session) in _gone:
            return
        if _awaiting.get(_sid(session)) != EOM:
            raise FilterError("message edits are only allowed at the end of message, "
                              "before its decision")
        _emit(encode(session, kind, *fields))


def _check_text(text, what):
    t = _b(text)
    if len(t) > 400 or any(c < 0x20 or c == 0x7F for c in t):
        raise ValueError("%s: at most 400 bytes, no control characters" % what)
    return t


def _check_code(code):
    if isinstance(code, bool) or not isinstance(code, int) or not 400 <= code <= 599:
        raise ValueError("reply code must be an int from 400 to 599, not %r" % (code,))
    return code


def accept(session):
    """Lets the event through (PROCEED)."""
    _answer(session, PROCEED)


proceed = accept


def reject(session, code, text):
    """Refuses the command with a 4xx/5xx reply (the text may start with an enhanced
    status code, e.g. "5.7.1 not wanted")."""
    _answer(session, REJECT, _check_code(code), _check_text(text, "reject text"))


def tempfail(session, text=""):
    """Refuses for now: 451 (454 at AUTH; 421 and close at connect)."""
    _answer(session, TEMPFAIL, _check_text(text, "tempfail text"))


def disconnect(session, code, text):
    """Replies and closes the connection."""
    _answer(session, DISCONNECT_ANSWER, _check_code(code), _check_text(text, "disconnect text"))


def junk(session):
    """Lets the event through and marks the message as spam."""
    _answer(session, JUNK)


def rewrite(session, value):
    """Lets HELO/EHLO/MAIL/RCPT through with this name or address instead."""
    v = _b(value)
    if not v or len(v) > 255 or any(c < 0x20 or c == 0x7F for c in v):
        raise ValueError("rewrite value: 1 to 255 bytes, no control characters")
    _answer(session, REWRITE, v)


def discard(session):
    """At end of message: accept the message and drop it."""
    _answer(session, DISCARD)


def add_header(session, name, value):
    """At end of message: append a header."""
    _edit(session, ADD_HEADER, name, value)


def insert_header(session, index, name, value):
    """At end of message: insert a header at index (0 = first)."""
    _edit(session, INSERT_HEADER, index, name, value)


def change_header(session, index, name, value):
    """At end of message: change the index-th (1-based) header called name; an empty
    value deletes it."""
    _edit(session, CHANGE_HEADER, index, name, value)


def _body_chunks(body, limit):
    """Cuts a body into REPLACE_BODY chunks: after a LF when possible, never inside a
    UTF-8 sequence nor between CR and LF (the daemon joins the chunks)."""
    pos = 0
    while pos < len(body):
        end = min(pos + limit, len(body))
        if end < len(body):
            nl = body.rfind(b"\n", pos, end)
            if nl >= pos:
                end = nl + 1
            else:
                while end > pos + 1 and (0x80 <= body[end] <= 0xBF or body[end - 1] == 0x0D):
                    end -= 1
        yield body[pos:end]
        pos = end


def replace_body(session, text):
    """At end of message: replace the body (lines ending in LF or CR LF).  Sent in as
    many REPLACE_BODY chunks as needed."""
    body = _b(text)
    limit = min(MAX_STR, (max_frame or MAX_FRAME) - HEADER - 2)
    with _lock:
        if _awaiting.get(_sid(session)) != EOM:
            raise FilterError("message edits are only allowed at the end of message, "
                              "before its decision")
        for chunk in _body_chunks(body, limit) if body else [b""]:
            _emit(encode(session, REPLACE_BODY, chunk))


def add_rcpt(session, addr):
    """At end of message: add a recipient."""
    _edit(session, ADD_RCPT, addr)


def del_rcpt(session, addr):
    """At end of message: remove a recipient."""
    _edit(session, DEL_RCPT, addr)


def change_from(session, addr):
    """At end of message: change the sender."""
    _edit(session, CHANGE_FROM, addr)


def quarantine(session, reason):
    """At end of message: hold the message in the queue."""
    _edit(session, QUARANTINE, reason)


def writeln(session, line):
    """During on_dataline/on_dataend: output a message line (no line end; a string with
    LF in it is several lines).  Lines are dot-unstuffed, at most 65535 bytes."""
    if type(line) is str and "\n" not in line and "\r" not in line and "\0" not in line:
        # The common case, one line of text, without the general path's copies.
        b = line.encode("utf-8", "surrogateescape")
        if len(b) > MAX_LINE:
            raise ValueError("message line over %d bytes or with CR or NUL" % MAX_LINE)
        out = (b,)
    else:
        b = _b(line)
        parts = b.split(b"\n") if b"\n" in b else [b]
        out = []
        for p in parts:
            if p.endswith(b"\r"):
                p = p[:-1]
            if len(p) > MAX_LINE or b"\r" in p or b"\0" in p:
                raise ValueError("message line over %d bytes or with CR or NUL" % MAX_LINE)
            out.append(p)
    # Only the main thread, during its session's on_dataline or on_dataend, gets past
    # this; _lines and _touched are the main thread's alone.
    if (type(session) is not int or session != _data_session
            or threading.get_ident() != _main_thread):
        if threading.get_ident() != _main_thread or _sid(session) != _data_session:
            raise FilterError("writeln is only allowed in on_dataline and on_dataend, "
                              "for their own session")
    _lines.setdefault(session, []).extend(out)
    _touched.add(session)


def drop(session):
    """During on_dataline: drop the current line (only needed with passthrough = True)."""
    if _sid(session) != _data_session:
        raise FilterError("drop is only allowed in on_dataline, for its own session")
    _touched.add(session)


def log(text):
    """A line for the daemon's log."""
    for line in _b(text).split(b"\n"):
        _emit(encode(0, LOG, line))


# ---------------------------------------------------------------------------
# The bridge
# ---------------------------------------------------------------------------

_hooks = {}
_names = {}  # kind -> the script's function name, for error messages


def _text(b):
    return b.decode("utf-8", "surrogateescape")


def _complain(what, session):
    sys.stderr.write("filter-python: %s failed for session %016x:\n%s"
                     % (what, session, traceback.format_exc()))
    sys.stderr.flush()


def _arity(fn):
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    n = 0
    for p in params:
        if p.kind == p.VAR_POSITIONAL:
            return 2
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            n += 1
    return n


def _registration(ns):
    """The hooks the script's namespace defines -> (callbacks by kind, hooks, reports)."""
    cb = {}

    def fn(n):
        f = ns.get(n)
        return f if callable(f) else None

    for kind, n in ((CONNECT, "on_connect"), (HELO, "on_helo"), (EHLO, "on_ehlo"),
                    (AUTH, "on_auth"), (MAIL, "on_mail"), (RCPT, "on_rcpt"),
                    (DATA, "on_data"), (EOM, "on_eom"), (COMMIT, "on_commit"),
                    (ROLLBACK, "on_rollback"), (DISCONNECT, "on_disconnect"),
                    (TLS, "on_tls"), (AUTH_RESULT, "on_auth_result")):
        if fn(n):
            cb[kind] = fn(n)
    # An on_helo alone also answers EHLO (the name is what most scripts check).
    if HELO in cb and EHLO not in cb:
        cb[EHLO] = cb[HELO]
    _names.clear()
    _names.update((k, getattr(f, "__name__", "callback")) for k, f in cb.items())
    if COMMIT in cb and _arity(cb[COMMIT]) < 2:
        one = cb[COMMIT]
        cb[COMMIT] = lambda s, _msgid, one=one: one(s)
    if fn("on_dataline"):
        cb[DATA_LINES] = fn("on_dataline")
    if fn("on_dataend"):
        cb[DATA_END] = fn("on_dataend")
    hooks = reports = 0
    for kind, bit in _ANSWERED.items():
        if kind in cb:
            hooks |= bit
    for kind, bit in _REPORTS.items():
        if kind in cb:
            reports |= bit
    # DISCONNECT always: it forgets sessions that leave mid-message or with an answer
    # pending (whose late answer is then dropped without an error).
    reports |= EV_DISCONNECT
    if DATA_LINES in cb or DATA_END in cb:
        # EOM too: a message whose on_dataline raised is refused (451) there.
        hooks |= EV_DATA_LINES | EV_EOM
    return cb, hooks, reports


def _flush_lines(session, out):
    lines = _lines.pop(session, None)
    if not lines:
        return
    limit = (max_frame or MAX_FRAME) - HEADER - 2
    chunk, size = [], 0
    for line in lines:
        if chunk and (len(chunk) == MAX_STR or size + 2 + len(line) > limit):
            out.extend(encode(session, DATA_LINES, chunk))
            chunk, size = [], 0
        chunk.append(line)
        size += 2 + len(line)
    out.extend(encode(session, DATA_LINES, chunk))


def _dispatch(session, kind, fields):
    global _data_session
    cb = _hooks.get(kind)
    if kind == DATA_LINES:
        if _data.get(session) != "lines":  # the first lines of a new message
            _data[session] = "lines"
            _failed.discard(session)
        lines = fields[0]
        if cb is None or session in _failed:
            _lines.setdefault(session, []).extend(lines)
        else:
            _data_session = session
            try:
                for i, line in enumerate(lines):
                    _touched.discard(session)
                    try:
                        cb(session, _text(line))
                    except Exception:  # noqa: BLE001 - a script bug fails the message only
                        _complain("on_dataline", session)
                        _failed.add(session)
                        # The message is refused at EOM; the rest goes through as is.
                        _lines.setdefault(session, []).extend(lines[i + 1:])
                        break
                    if passthrough and session not in _touched:
                        _lines.setdefault(session, []).append(line)
            finally:
                _touched.discard(session)
                _data_session = None
        _flush_lines(session, _batch)
        return
    if kind == DATA_END:
        if _data.get(session) != "lines":  # an empty message
            _failed.discard(session)
        _data[session] = "lines"
        if cb is not None and session not in _failed:
            _data_session = session
            try:
                cb(session)
            except Exception:  # noqa: BLE001
                _complain("on_dataend", session)
                _failed.add(session)
            finally:
                _data_session = None
        _flush_lines(session, _batch)
        _data[session] = "ended"
        _batch.extend(encode(session, DATA_END))
        return
    if kind in _ANSWERED:
        args = [_text(f) if isinstance(f, bytes) else f for f in fields]
        with _lock:
            if session in _awaiting:
                sys.stderr.write("filter-python: session %016x: new event before our "
                                 "answer to the last one\n" % session)
            _awaiting[session] = kind
        if kind == EOM:
            _data.pop(session, None)
            if session in _failed:
                _failed.discard(session)
                tempfail(session, _TEMPFAIL_TEXT)
                return
        r = None
        if cb is not None:
            try:
                r = cb(session, *args)
            except Exception:  # noqa: BLE001 - answer tempfail, keep the bridge up
                _complain(_names.get(kind, "callback"), session)
                with _lock:
                    if session in _awaiting:
                        _awaiting.pop(session)
                        _emit(encode(session, TEMPFAIL, _TEMPFAIL_TEXT))
                return
        if r is not LATER:
            with _lock:
                if _awaiting.get(session) == kind:
                    del _awaiting[session]
                    _emit(encode(session, PROCEED))
        return
    if kind in _REPORTS:
        if kind == DISCONNECT:
            for d in (_data, _lines):
                d.pop(session, None)
            _failed.discard(session)
            with _lock:
                if _awaiting.pop(session, None) is not None:
                    _gone[session] = True
                    while len(_gone) > 1024:
                        _gone.popitem(last=False)
        if cb is not None:
            args = [_text(f) if isinstance(f, bytes) else f for f in fields]
            try:
                cb(session, *args)
            except Exception:  # noqa: BLE001
                _complain(_names.get(kind, "callback"), session)
        return
    # Nothing else is sent to a filter that did not register for it (STARTTLS and
    # PROTOCOL never are); like the Rust glue, ignore what is left.


def load(path, args=()):
    """Runs the script once in a fresh module namespace (like `python3 SCRIPT ARGS`,
    but with __name__ == "__filter__") and returns that namespace."""
    path = os.path.abspath(path)
    with open(path, "rb") as f:
        source = f.read()
    mod = types.ModuleType("__filter__")
    mod.__file__ = path
    mod.__builtins__ = builtins
    sys.modules["__filter__"] = mod
    sys.argv = [path] + list(args)
    script_dir = os.path.dirname(path)
    if script_dir not in sys.path:
        sys.path.insert(1, script_dir)
    exec(compile(source, path, "exec"), mod.__dict__)
    return mod.__dict__


def _protect_stdio():
    """The protocol moves to private descriptors; fd 0 becomes /dev/null and fd 1 a copy
    of stderr, so that print() or a child process cannot corrupt the stream."""
    global _out_fd
    in_fd = os.dup(0)
    _out_fd = os.dup(1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return in_fd


def skip_config(buf):
    """Drops the configuration lines of OpenSMTPD's protocol that a daemon sends a filter
    it heard nothing from for a second (they start with "c", a frame with a zero byte).
    Returns the bytes to decode and what to keep looking at (None once done)."""
    while buf[:1] == b"c":
        nl = buf.find(b"\n")
        if nl < 0:
            return b"", buf
        buf = buf[nl + 1:]
    return (buf, None) if buf else (b"", b"")


def run(in_fd=0):
    """Registers and serves the daemon until it closes the stream.  Returns 0, or 1 if
    the daemon refused us or spoke garbage."""
    global _batch, daemon_version, max_frame, timeout_ms
    hooks, reports = _registration_bits
    _write_all(encode(0, REGISTER, VERSION, hooks, reports, name))
    dec = Decoder()
    ready = False
    pre = b""
    while True:
        try:
            data = os.read(in_fd, 65536)
        except ConnectionResetError:
            data = b""
        if not data:
            return 0
        if pre is not None:
            data, pre = skip_config(pre + data)
        dec.feed(data)
        with _lock:
            _batch = bytearray()
        try:
            for session, kind, fields in dec.frames():
                if not ready:
                    if kind == READY:
                        daemon_version, max_frame, timeout_ms = fields
                        max_frame = min(max_frame, MAX_FRAME) or MAX_FRAME
                        ready = True
                        continue
                    if kind == REFUSED:
                        sys.stderr.write("filter-python: refused by the daemon: %s\n"
                                         % fields[0].decode("utf-8", "replace"))
                        return 1
                    raise WireError("protocol", text="event before READY")
                _dispatch(session, kind, fields)
        except WireError as e:
            sys.stderr.write("filter-python: protocol error: %s\n" % e)
            return 1
        finally:
            with _lock:
                out, _batch = _batch, None
                if out:
                    _write_all(out)


_registration_bits = (0, 0)


def main(argv=None):
    global _hooks, _registration_bits, name
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        sys.stderr.write("usage: filter-python SCRIPT [ARGS...]\n")
        return 2
    script = argv[0]
    name = os.path.splitext(os.path.basename(script))[0] or "python"
    in_fd = _protect_stdio()
    try:
        ns = load(script, argv[1:])
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    except Exception:  # noqa: BLE001
        sys.stderr.write("filter-python: cannot load %s:\n%s" % (script, traceback.format_exc()))
        return 1
    _hooks, hooks, reports = _registration(ns)
    _registration_bits = (hooks, reports)
    try:
        return run(in_fd)
    except BrokenPipeError:
        return 0
