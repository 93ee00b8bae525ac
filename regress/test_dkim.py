"""filters/dkim (filter-dkim(8)): messages of internal sessions signed with RSA and
Ed25519 keys, in both canonicalizations, and the signatures checked by dkimpy
(python3-dkim) and by opendkim's verifier (opendkim-testmsg); messages of other sessions
verified, with an Authentication-Results field, the keys asked of a test DNS server
(regress/dnstest.py), and the verdicts compared with dkimpy's on a corpus of messages
dkimpy signs here (valid ones, changed bodies and headers, l=, simple and relaxed, a
missing key, a revoked one); what is internal (the local socket, an authenticated
session, an internal network); forged results of ours deleted; a failing DNS server.

The daemon and its filter run in a private mount namespace whose /etc/resolv.conf
names the test DNS server only (DnsWorld); opendkim-testmsg runs in one too.
"""

import base64
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import DEFAULT_RULES, REPO, accepted_id, data_of, smtpd_bin
from dnstest import DnsWorld, can_run
from filterlib import FilterDaemon
from test_auth import make_cert, plain_ir

dkim = pytest.importorskip("dkim")

DOMAIN = "example.test"
AUTHSERV = "mx.test.example"


@pytest.fixture(scope="module")
def base(request):
    """/tmp/smtpd-dkim-XXXX (0755: the filter runs as _smtpd): the filter's binary and
    the keys; removed at the end unless a test failed."""
    why = can_run()
    if why:
        pytest.skip(why)
    d = Path(tempfile.mkdtemp(prefix="smtpd-dkim-", dir="/tmp"))
    os.chmod(d, 0o755)
    prog = REPO / "target" / "debug" / "filter-dkim"
    if not prog.is_file():
        r = subprocess.run(["cargo", "build", "-p", "filter-dkim"], cwd=REPO, capture_output=True,
                           text=True, timeout=900)
        if r.returncode != 0:
            pytest.fail("cargo build -p filter-dkim failed:\n" + r.stderr[-4000:])
    shutil.copy(prog, d / "filter-dkim")
    os.chmod(d / "filter-dkim", 0o755)
    failed = request.session.testsfailed
    yield d
    if request.session.testsfailed == failed:
        shutil.rmtree(d, ignore_errors=True)
    else:
        print("\ntest_dkim.py: test directories kept in %s" % d)


class Key:
    """A private key made by openssl, readable by the filter's user only, with its DNS
    record (what `filter-dkim -p` prints, checked against openssl's public key)."""

    def __init__(self, d, name, kind):
        self.path = d / ("%s.pem" % name)
        args = ["-algorithm", "ed25519"] if kind == "ed25519" else \
            ["-algorithm", "rsa", "-pkeyopt", "rsa_keygen_bits:2048"]
        subprocess.run(["openssl", "genpkey", *args, "-out", str(self.path)], check=True,
                       capture_output=True, timeout=60)
        if kind == "rsa-pkcs1":
            subprocess.run(["openssl", "rsa", "-in", str(self.path), "-traditional", "-out",
                            str(self.path)], check=True, capture_output=True, timeout=60)
        assert self.path.read_text().startswith(
            "-----BEGIN RSA PRIVATE KEY-----" if kind == "rsa-pkcs1" else "-----BEGIN PRIVATE KEY-----")
        der = subprocess.run(["openssl", "pkey", "-in", str(self.path), "-pubout", "-outform", "DER"],
                             check=True, capture_output=True, timeout=60).stdout
        self.kind = "ed25519" if kind == "ed25519" else "rsa"
        # RFC 8463: the 32 bytes of the Ed25519 key; RSA: the SubjectPublicKeyInfo.
        p = der[-32:] if self.kind == "ed25519" else der
        self.record = "v=DKIM1; k=%s; p=%s" % (self.kind, base64.b64encode(p).decode())
        # dkimpy signs with the PEM (RSA) or the base64 seed (Ed25519).
        raw = subprocess.run(["openssl", "pkey", "-in", str(self.path), "-outform", "DER"],
                             check=True, capture_output=True, timeout=60).stdout
        self.dkimpy = base64.b64encode(raw[-32:]) if self.kind == "ed25519" else self.path.read_bytes()
        shutil.chown(self.path, "_smtpd")
        os.chmod(self.path, 0o600)


@pytest.fixture(scope="module")
def keys(base):
    d = base / "keys"
    d.mkdir()
    os.chmod(d, 0o755)
    return {"rsa": Key(d, "rsa", "rsa"), "ed": Key(d, "ed", "ed25519"),
            "pkcs1": Key(d, "pkcs1", "rsa-pkcs1")}


@pytest.fixture
def world(request, base):
    # Short: the spool's control socket path must fit in sun_path (108 bytes).
    n = len(list(base.iterdir()))
    d = base / ("%02d-%s" % (n, re.sub(r"[^A-Za-z0-9]+", "", request.node.name)[4:24]))
    d.mkdir()
    w = DnsWorld(d)
    yield w
    w.close()


def records(keys, more=None):
    r = {("%s._domainkey.%s" % (sel, DOMAIN), "TXT"): [txt_strings(keys[sel].record)]
         for sel in ("rsa", "ed", "pkcs1")}
    r.update(more or {})
    return r


def txt_strings(record):
    """A TXT record's text as TestDNS takes it: strings of at most 255 octets."""
    return " ".join('"%s"' % record[i:i + 255] for i in range(0, len(record), 255))


def start(world, base, args, **kw):
    cmd = "%s/filter-dkim -r %s %s" % (base, AUTHSERV, args)
    d = world.daemon(cls=FilterDaemon, filters='filter dkim proc-exec "%s"\n' % cmd,
                     listen_filter="dkim", **kw)
    assert d.wait_log(r"filter dkim registered", timeout=20), d.log()[-3000:]
    return d


BODY = ["From: Alice <alice@example.test>", "To: bob@example.test",
        "Subject: a folded", "\t subject  line", "Date: Mon, 7 Dec 2026 02:00:00 +0000",
        "Message-ID: <dkim-1@example.test>", "", "Hello  Bob,", "", ".a dotted line",
        "trailing white space \t", "", "", ""]


def send(d, lines=BODY, sender="alice@example.test"):
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<%s>" % sender, 250)
        c.expect("RCPT TO:<bob@example.test>", 250)
        c.expect("DATA", 354)
        c.send(data_of(lines) + b".\r\n")
        msgid = accepted_id(c.reply())
        c.until_quit()
    return msgid


def stored(d, msgid, n=1):
    msgs = d.wait_messages(n)
    (m,) = [m for m in msgs if m.msgid == msgid]
    return m.body().replace(b"\n", b"\r\n")


def fields(wire, name):
    """The values of the header fields called `name`, unfolded."""
    head = wire.split(b"\r\n\r\n", 1)[0].decode()
    out = []
    for f in re.split(r"\r\n(?![ \t])", head):
        n, _, v = f.partition(":")
        if n.lower() == name.lower():
            out.append(re.sub(r"\r\n", "", v).strip())
    return out


def dnsfunc(table):
    def lookup(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        return table.get(name.rstrip(".").lower(), b"")
    return lookup


def dkimpy_verdicts(wire, table):
    """dkimpy's verdict on each signature of `wire` (DKIM.verify raises on most
    failures, where dkim.verify, which checks the first one only, returns False)."""
    out = []
    for i in range(len(fields(wire, "DKIM-Signature"))):
        try:
            out.append(bool(dkim.DKIM(wire).verify(idx=i, dnsfunc=dnsfunc(table))))
        except dkim.DKIMException:
            out.append(False)
    return out


def opendkim_testmsg(world, wire):
    """opendkim-testmsg's verdict on `wire`, asking the test DNS server for the keys:
    (exit status, what it printed)."""
    if not shutil.which("opendkim-testmsg"):
        pytest.fail("opendkim-testmsg is missing: regress/install installs opendkim-tools")
    argv = world.wrapper("testmsg")(["/usr/sbin/opendkim-testmsg"])
    r = subprocess.run(argv, input=wire, capture_output=True, timeout=60)
    return r.returncode, (r.stdout + r.stderr).decode(errors="replace")


@pytest.mark.parametrize("canon", ["relaxed/relaxed", "simple/simple"])
def test_signatures_verify_with_dkimpy_and_opendkim(world, base, keys, canon):
    world.server(records(keys))
    d = start(world, base, "-m sign -i 127.0.0.0/8 -c %s -k %s:rsa:%s -K %s"
              % (canon, DOMAIN, keys["rsa"].path, keytable(base, keys)))
    wire = stored(d, send(d))
    sigs = fields(wire, "DKIM-Signature")
    assert len(sigs) == 2, wire
    algs = sorted(re.search(r"a=([a-z0-9-]+);", s).group(1) for s in sigs)
    assert algs == ["ed25519-sha256", "rsa-sha256"], sigs
    for s in sigs:
        assert "c=%s;" % canon in s and "d=%s;" % DOMAIN in s, s
        assert "h=from:from:subject:date:to:message-id;" in s, s
        assert re.search(r"t=\d{10};", s), s
    table = {"%s._domainkey.%s" % (k, DOMAIN): keys[k].record.encode() for k in ("rsa", "ed")}
    assert dkimpy_verdicts(wire, table) == [True, True], wire
    code, out = opendkim_testmsg(world, wire)
    assert code == 0, out
    # Changed, neither verifies.
    changed = wire.replace(b"Hello  Bob", b"Hello  Bobby")
    assert dkimpy_verdicts(changed, table) == [False, False]
    assert opendkim_testmsg(world, changed)[0] != 0
    # A second From field cannot be slipped in: From is oversigned.
    added = b"From: mallory@example.test\r\n" + wire
    assert dkimpy_verdicts(added, table) == [False, False]


def keytable(base, keys):
    t = base / "keytable"
    if not t.exists():
        t.write_text("# domain selector key\n%s ed %s\n" % (DOMAIN, keys["ed"].path))
        os.chmod(t, 0o644)
    return t


def test_published_records_and_pkcs1_keys(world, base, keys):
    """`filter-dkim -p` prints the records openssl's public keys give; a PKCS#1 RSA key
    signs as well as a PKCS#8 one."""
    r = subprocess.run([str(base / "filter-dkim"), "-p", "-k", "%s:rsa:%s" % (DOMAIN, keys["rsa"].path),
                        "-k", "%s:ed:%s" % (DOMAIN, keys["ed"].path)], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    for sel in ("rsa", "ed"):
        line = "%s._domainkey.%s. IN TXT %s" % (sel, DOMAIN, txt_strings(keys[sel].record))
        assert line in r.stdout.splitlines(), r.stdout
    world.server(records(keys))
    d = start(world, base, "-a -m sign -k %s:pkcs1:%s" % (DOMAIN, keys["pkcs1"].path))
    wire = stored(d, send(d))
    table = {"pkcs1._domainkey.%s" % DOMAIN: keys["pkcs1"].record.encode()}
    assert dkimpy_verdicts(wire, table) == [True]


def test_only_internal_sessions_are_signed(world, base, keys, tmp_path):
    """By default: the local socket and authenticated sessions are signed; a client of
    the network is not, and its message is verified instead."""
    world.server(records(keys))
    pki = world.tmp / "pki"
    pki.mkdir()
    cert, key = make_cert(pki, AUTHSERV)
    secret = subprocess.run([str(smtpd_bin()), "ctl", "encrypt", "pw"], capture_output=True,
                            text=True, check=True, timeout=30).stdout.strip()
    creds = world.tmp / "creds"
    creds.write_text("alice %s\n" % secret)
    os.chmod(creds, 0o644)
    extra = 'pki test cert "%s"\npki test key "%s"\ntable creds file:%s\n' % (cert, key, creds)
    d = start(world, base, "-k %s:ed:%s" % (DOMAIN, keys["ed"].path), extra=extra,
              listen_opts="tls pki test auth-optional <creds>",
              rules='listen on socket filter "dkim"\n' + DEFAULT_RULES)
    table = {"ed._domainkey.%s" % DOMAIN: keys["ed"].record.encode()}
    # A client of the network: verified (no signature: dkim=none), not signed.
    plain = stored(d, send(d))
    assert fields(plain, "DKIM-Signature") == [], plain
    assert fields(plain, "Authentication-Results") == ["%s; dkim=none" % AUTHSERV], plain
    # The local socket: signed.
    r = d.sendmail(["-f", "alice@example.test", "bob@example.test"], data_of(BODY))
    assert r.returncode == 0, r.stderr
    msgs = d.wait_messages(2)
    local = [m for m in msgs if b"DKIM-Signature" in m.data]
    assert len(local) == 1, [m.data[:300] for m in msgs]
    assert dkimpy_verdicts(local[0].body().replace(b"\n", b"\r\n"), table) == [True]
    # Authenticated: signed.
    with d.client() as c:
        c.ehlo()
        c.expect("STARTTLS", 220)
        c.tls(server_hostname=AUTHSERV)
        c.expect("EHLO client.test", 250)
        c.expect("AUTH PLAIN " + plain_ir("alice", "pw"), 235)
        c.expect("MAIL FROM:<alice@example.test>", 250)
        c.expect("RCPT TO:<bob@example.test>", 250)
        c.expect("DATA", 354)
        c.send(data_of(BODY) + b".\r\n")
        msgid = accepted_id(c.reply())
        c.until_quit()
    wire = stored(d, msgid, 3)
    assert len(fields(wire, "DKIM-Signature")) == 1, wire
    assert fields(wire, "Authentication-Results") == [], wire
    assert dkimpy_verdicts(wire, table) == [True]



# ---------------------------------------------------------------------------
# Verification: a corpus signed by dkimpy, its verdicts against ours
# ---------------------------------------------------------------------------

PLAIN = (b"From: Carol <carol@example.test>\r\nTo: dave@example.test\r\n"
         b"Subject:  Quarterly \r\n\tfigures\r\nDate: Mon, 7 Dec 2026 03:00:00 +0000\r\n"
         b"Message-ID: <corpus@example.test>\r\n\r\n"
         b"Dear  Dave,\r\n\r\nthe figures\t are attached. \r\n.\r\n..two dots\r\n\r\n\r\n")


def dkimpy_sign(keys, sel, msg, canon=(b"relaxed", b"relaxed"), length=False, key=None):
    k = keys[key or sel]
    alg = b"ed25519-sha256" if k.kind == "ed25519" else b"rsa-sha256"
    return dkim.sign(msg, sel.encode(), DOMAIN.encode(), k.dkimpy, canonicalize=canon,
                     signature_algorithm=alg, length=length) + msg


def corpus(keys):
    """(name, message, what our results must say of each signature, top first)."""
    def s(*a, **k):
        return dkimpy_sign(keys, *a, **k)
    ss = (b"simple", b"simple")
    out = [
        ("rsa relaxed", s("rsa", PLAIN), ["pass"]),
        ("rsa simple", s("rsa", PLAIN, ss), ["pass"]),
        ("rsa relaxed/simple", s("rsa", PLAIN, (b"relaxed", b"simple")), ["pass"]),
        ("ed25519", s("ed", PLAIN), ["pass"]),
        ("ed25519 simple", s("ed", PLAIN, ss), ["pass"]),
        ("body changed", s("rsa", PLAIN).replace(b"attached", b"enclosed"), ["fail"]),
        ("header changed", s("rsa", PLAIN, ss).replace(b"Quarterly", b"Yearly"), ["fail"]),
        ("relaxed white space", s("rsa", PLAIN).replace(b"Dear  Dave", b"Dear Dave"), ["pass"]),
        ("simple white space", s("ed", PLAIN, ss).replace(b"Dear  Dave", b"Dear Dave"), ["fail"]),
        ("l= body appended", s("rsa", PLAIN, length=True) + b"P.S. appended\r\n", ["pass"]),
        ("l= body changed", s("rsa", PLAIN, length=True).replace(b"figures\t", b"numbers\t"),
         ["fail"]),
        ("missing key", s("nokey", PLAIN, key="rsa"), ["permerror"]),
        ("revoked key", s("gone", PLAIN, key="rsa"), ["permerror"]),
        ("two signatures", s("ed", s("rsa", PLAIN)), ["pass", "pass"]),
        ("unsigned", PLAIN, ["none"]),
    ]
    # The second of two signatures broken (a character of its b= changed): only its
    # own verdict changes.
    both = s("ed", s("rsa", PLAIN))
    top, sep, rest = both.partition(b"\r\nDKIM-Signature:")
    i = rest.index(b" b=") + 3
    flip = b"A" if rest[i:i + 1] != b"A" else b"B"
    out.append(("second signature broken", top + sep + rest[:i] + flip + rest[i + 1:],
                ["pass", "fail"]))
    return out


def results_of(value):
    """The dkim results of an Authentication-Results value, in order."""
    assert value.startswith(AUTHSERV + ";"), value
    return [m.group(1) for m in re.finditer(r"dkim=([a-z]+)", value)]


def test_verifier_agrees_with_dkimpy(world, base, keys):
    world.server(records(keys, {("gone._domainkey.%s" % DOMAIN, "TXT"): ['"v=DKIM1; p="']}))
    table = {"%s._domainkey.%s" % (k, DOMAIN): keys[k].record.encode() for k in ("rsa", "ed")}
    table["gone._domainkey.%s" % DOMAIN] = b"v=DKIM1; p="
    d = start(world, base, "-m verify")
    for n, (name, msg, want) in enumerate(corpus(keys), 1):
        lines = msg.split(b"\r\n")
        assert lines[-1] == b"", name
        wire = stored(d, send(d, lines[:-1], sender="carol@example.test"), n)
        # The message is stored as it came, the results on top.
        assert wire.startswith(b"Authentication-Results: ") and wire.endswith(msg), name
        (ar,) = fields(wire, "Authentication-Results")
        ours = results_of(ar)
        assert ours == want, (name, ar)
        verdicts = [r == "pass" for r in ours if r != "none"]
        assert verdicts == dkimpy_verdicts(wire, table), (name, ar)
        if want == ["none"]:
            assert ar == "%s; dkim=none" % AUTHSERV, ar


def test_forged_results_go_and_a_failing_dns_is_a_temporary_error(world, base, keys):
    """RFC 8601 §5: results that claim our authserv-id are deleted, others kept; a
    nameserver that fails gives a temperror, not a fail."""
    server = world.server(records(keys))
    d = start(world, base, "-m verify")
    signed = dkimpy_sign(keys, "ed", PLAIN)
    forged = (b"Authentication-Results: " + AUTHSERV.upper().encode() + b"; dkim=pass\r\n"
              b"Authentication-Results: other.example; dkim=pass\r\n") + signed
    wire = stored(d, send(d, forged.split(b"\r\n")[:-1], sender="carol@example.test"))
    ours, kept = fields(wire, "Authentication-Results")
    assert re.fullmatch(r"%s;\tdkim=pass header\.d=%s header\.i=@%s header\.s=ed "
                        r"header\.a=ed25519-sha256 header\.b=(\S{8}|\"\S{8}\")" % (AUTHSERV, DOMAIN, DOMAIN),
                        ours), ours
    assert kept == "other.example; dkim=pass", wire
    server.rcode = "SERVFAIL"
    other = dkimpy_sign(keys, "rsa", PLAIN.replace(b"corpus@", b"corpus2@"))
    wire = stored(d, send(d, other.split(b"\r\n")[:-1], sender="carol@example.test"), 2)
    (ar,) = fields(wire, "Authentication-Results")
    assert results_of(ar) == ["temperror"], ar
    assert 'reason="key lookup failed: rcode 2 from ' in ar, ar
