"""Replays the golden vectors of filters/api/tests/vectors/*.hex against the codec of
filter.py (format: filters/api/tests/vectors/README).

    /usr/bin/python3 -m pytest -q filters/python/test_vectors.py
    python3 filters/python/test_vectors.py          # without pytest
"""

import os
import re
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import filter as F  # noqa: E402

VECTORS = os.environ.get("SMTPD_FILTER_VECTORS") or os.path.normpath(
    os.path.join(HERE, "..", "api", "tests", "vectors"))

# Field names of each kind, in wire order (README "Kinds and fields").
FIELDS = {
    "REGISTER": "version hooks reports name", "READY": "version max_frame timeout_ms",
    "REFUSED": "reason", "CONNECT": "local remote hostname", "HELO": "name", "EHLO": "name",
    "STARTTLS": "", "AUTH": "mechanism user", "MAIL": "address", "RCPT": "address", "DATA": "",
    "DATA_LINES": "lines", "DATA_END": "", "EOM": "size", "COMMIT": "msgid", "ROLLBACK": "",
    "DISCONNECT": "", "PROTOCOL": "dir line", "TLS": "version cipher bits sni subject",
    "AUTH_RESULT": "mechanism user result", "PROCEED": "", "REJECT": "code text",
    "TEMPFAIL": "text", "DISCONNECT_ANSWER": "code text", "JUNK": "", "REWRITE": "value",
    "ADD_HEADER": "name value", "INSERT_HEADER": "index name value",
    "CHANGE_HEADER": "index name value", "REPLACE_BODY": "chunk", "ADD_RCPT": "address",
    "DEL_RCPT": "address", "CHANGE_FROM": "address", "QUARANTINE": "reason", "DISCARD": "",
    "LOG": "text",
}
LIMITS = {"u16": 0xFFFF, "u32": 0xFFFFFFFF, "u64": 0xFFFFFFFFFFFFFFFF}
ESCAPES = {"\\": 0x5C, '"': 0x22, "r": 0x0D, "n": 0x0A, "t": 0x09, "0": 0x00}


class Desc:
    """The tokens of a description line (after "# ")."""

    def __init__(self, s):
        self.s, self.pos = s, 0

    def ws(self):
        while self.pos < len(self.s) and self.s[self.pos].isspace():
            self.pos += 1

    def at_end(self):
        self.ws()
        return self.pos >= len(self.s)

    def word(self):
        self.ws()
        m = re.compile(r"[^\s=]+").match(self.s, self.pos)
        if not m:
            raise ValueError("a word was expected at %r" % self.s[self.pos:])
        self.pos = m.end()
        return m.group(0)

    def int(self):
        w = self.word()
        return int(w[2:], 16) if w.startswith("0x") else int(w, 10)

    def string(self):
        self.ws()
        if self.s[self.pos:self.pos + 1] != '"':
            raise ValueError("a quoted string was expected")
        self.pos += 1
        out = bytearray()
        while True:
            if self.pos >= len(self.s):
                raise ValueError("unterminated string")
            c = self.s[self.pos]
            self.pos += 1
            if c == '"':
                return bytes(out)
            if c != "\\":
                out += c.encode("utf-8")
                continue
            e = self.s[self.pos:self.pos + 1]
            self.pos += 1
            if e == "x":
                out.append(int(self.s[self.pos:self.pos + 2], 16))
                self.pos += 2
            elif e in ESCAPES:
                out.append(ESCAPES[e])
            else:
                raise ValueError("unknown escape \\%s" % e)

    def value(self):
        self.ws()
        c = self.s[self.pos:self.pos + 1]
        if c == '"':
            return self.string()
        if c == "[":
            self.pos += 1
            items = []
            while True:
                self.ws()
                if self.s[self.pos:self.pos + 1] == "]":
                    self.pos += 1
                    return items
                if items:
                    if self.s[self.pos:self.pos + 1] != ",":
                        raise ValueError("',' or ']' expected in a list")
                    self.pos += 1
                items.append(self.string())
        return self.int()

    def fields(self):
        out = {}
        while not self.at_end():
            k = self.word()
            if self.s[self.pos:self.pos + 1] != "=":
                raise ValueError("'=' expected after %r" % k)
            self.pos += 1
            if k in out:
                raise ValueError("field %r given twice" % k)
            out[k] = self.value()
        return out


class Vector:
    def __init__(self, at, desc):
        self.at, self.hex = at, ""
        d = Desc(desc)
        self.type = d.word()
        if self.type == "kind":
            self.kind = d.word()
            if d.word() != "session":
                raise ValueError("%s: 'session' expected" % at)
            self.session = d.int()
            self.fields = d.fields()
        elif self.type == "invalid":
            self.error = d.word()
            f = d.fields()
            if len(f) != 1:
                raise ValueError("%s: invalid takes one field" % at)
            self.value = list(f.values())[0]
        elif self.type == "incomplete":
            if not d.at_end():
                raise ValueError("%s: nothing may follow 'incomplete'" % at)
        else:
            raise ValueError("%s: unknown vector type %r" % (at, self.type))

    @property
    def bytes(self):
        if len(self.hex) % 2:
            raise ValueError("%s: odd number of hex digits" % self.at)
        return bytes.fromhex(self.hex)

    def frame(self):
        """(kind byte, positional fields for F.encode) from the description."""
        if self.kind not in FIELDS:
            raise ValueError("%s: unknown kind %s" % (self.at, self.kind))
        kind = getattr(F, self.kind)
        names = FIELDS[self.kind].split()
        if sorted(names) != sorted(self.fields):
            raise ValueError("%s: fields %s, want %s" % (self.at, sorted(self.fields), names))
        out = []
        for name, t in zip(names, F.SCHEMA[kind]):
            v = self.fields[name]
            if t in LIMITS:
                assert isinstance(v, int) and 0 <= v <= LIMITS[t], (self.at, name, v)
            elif t == "str":
                assert isinstance(v, bytes), (self.at, name)
            elif t == "lines":
                assert isinstance(v, list), (self.at, name)
            elif t == "dir":
                assert isinstance(v, bytes) and len(v) == 1, (self.at, name)
                v = v[0]
            out.append(v)
        return kind, tuple(out)


def read_vectors(path):
    out = []
    name = os.path.basename(path)
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.startswith(("# kind ", "# invalid ", "# incomplete")):
                out.append(Vector("%s:%d" % (name, i), line[2:]))
            elif line.startswith("#") or not line.strip():
                continue
            else:
                digits = re.sub(r"\s+", "", line)
                if not re.fullmatch(r"[0-9a-fA-F]*", digits):
                    raise ValueError("%s:%d: not hex: %r" % (name, i, line))
                if not out:
                    raise ValueError("%s:%d: hex before any description" % (name, i))
                out[-1].hex += digits.lower()
    return out


def hex_files():
    if not os.path.isdir(VECTORS):
        return []
    return sorted(os.path.join(VECTORS, n) for n in os.listdir(VECTORS) if n.endswith(".hex"))


def check(v):
    """Raises AssertionError (with the vector's place) when the codec disagrees."""
    b = v.bytes
    if v.type == "kind":
        kind, fields = v.frame()
        enc = F.encode(v.session, kind, *fields)
        assert enc == b, "%s: the description encodes to\n  %s\nnot\n  %s" % (v.at, enc.hex(" "), b.hex(" "))
        got = F.decode(b)
        assert got == (v.session, kind, fields, len(b)), "%s: decoded %r" % (v.at, got)
        assert F.encode(got[0], got[1], *got[2]) == b, "%s: re-encoding differs" % v.at
        for n in range(len(b)):
            assert F.decode(b[:n]) is None, "%s: the first %d bytes are not incomplete" % (v.at, n)
        more = F.decode(b + b"\0\0")
        assert more is not None and more[3] == len(b), "%s: trailing bytes: %r" % (v.at, more)
    elif v.type == "invalid":
        try:
            r = F.decode(b)
        except F.WireError as e:
            assert (e.what, e.value) == (v.error, v.value), \
                "%s: error %s %r, want %s %r" % (v.at, e.what, e.value, v.error, v.value)
        else:
            raise AssertionError("%s: decode gave %r, want %s" % (v.at, r, v.error))
    else:
        assert b, "%s: no bytes" % v.at
        assert F.decode(b) is None, "%s: not incomplete" % v.at


def check_stream(path, vectors):
    frames = [v for v in vectors if v.type == "kind"]
    if not frames:
        return
    wire = b"".join(v.bytes for v in frames)
    want = [(v.session,) + v.frame() for v in frames]
    for size in (1, 2, 3, 5, 7, 13, 64, len(wire)):
        d = F.Decoder()
        got = []
        for i in range(0, len(wire), size):
            d.feed(wire[i:i + size])
            got.extend(d.frames())
        assert got == want, "%s in chunks of %d" % (os.path.basename(path), size)
        assert d.pending() == 0


# --- pytest -----------------------------------------------------------------------

def _all():
    return [(p, read_vectors(p)) for p in hex_files()]


def _skip_if_missing():
    if not hex_files():
        import pytest
        pytest.skip("no golden vectors in %s" % VECTORS)


def test_every_vector():
    _skip_if_missing()
    errors, n = [], 0
    for _, vectors in _all():
        for v in vectors:
            n += 1
            try:
                check(v)
            except (AssertionError, ValueError) as e:
                errors.append(str(e))
    assert not errors, "%d of %d vectors failed:\n%s" % (len(errors), n, "\n".join(errors))


def test_every_kind_has_a_vector():
    _skip_if_missing()
    kinds = {v.kind for _, vs in _all() for v in vs if v.type == "kind"}
    assert kinds == set(FIELDS), "kinds without a vector: %s" % sorted(set(FIELDS) - kinds)
    assert set(F.SCHEMA) == {getattr(F, k) for k in FIELDS}


def test_each_file_as_one_stream():
    _skip_if_missing()
    for path, vectors in _all():
        check_stream(path, vectors)


if __name__ == "__main__":
    files = hex_files()
    if not files:
        print("no golden vectors in %s" % VECTORS)
        sys.exit(0)
    failed = total = 0
    for path, vectors in _all():
        for v in vectors:
            total += 1
            try:
                check(v)
            except (AssertionError, ValueError) as e:
                failed += 1
                print("FAIL", e)
        try:
            check_stream(path, vectors)
        except AssertionError as e:
            failed += 1
            print("FAIL", e)
    print("%d vectors in %d files, %d failures" % (total, len(files), failed))
    sys.exit(1 if failed else 0)
