"""SMTP AUTH (RFC 4954, PLAIN and LOGIN) and what hangs on it: `smtpctl encrypt`,
credentials tables, system accounts, the failure penalty, `senders`, `from auth`,
`received-auth` and what the logs and the spool never hold.
"""

import base64
import ctypes
import json
import os
import re
import shutil
import smtplib
import ssl
import subprocess
import time
import warnings
from pathlib import Path

import pytest

from conftest import (DEFAULT_RULES, HOSTNAME, allow_traversal, filter_dir, free_port, needs_root,
                      smtpd_bin)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # noqa: E402  (Debian's Python 3.11 has it, deprecated)


# ---------------------------------------------------------------------------
# smtpctl encrypt
# ---------------------------------------------------------------------------


def encrypt(*args, input=None):
    r = subprocess.run([str(smtpd_bin()), "ctl", "encrypt", *args], input=input,
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.decode().splitlines()


def test_encrypt_an_argument():
    (h,) = encrypt("correct", "horse")
    assert h.startswith("$y$") or h.startswith("$6$"), h
    assert crypt.crypt("correct horse", h) == h
    assert crypt.crypt("correct  horse", h) != h
    # A new salt each time.
    assert encrypt("correct", "horse") != [h]


def test_encrypt_lines_of_the_standard_input():
    password = bytes(range(1, 256)).replace(b"\n", b"").replace(b"\r", b"")
    hashes = encrypt(input=b"first\r\n" + password + b"\n\nthird")
    assert len(hashes) == 3, hashes
    assert crypt.crypt("first", hashes[0]) == hashes[0]
    assert crypt.crypt("third", hashes[2]) == hashes[2]
    # Any octet but NUL and the line end (the daemon checks such a hash below).
    assert hashes[1].startswith("$") and hashes[1] != hashes[0]


def test_encrypt_needs_no_daemon_nor_configuration(tmp_path):
    r = subprocess.run([str(smtpd_bin()), "ctl", "-f", str(tmp_path / "missing.conf"), "encrypt", "x"],
                       capture_output=True, timeout=30, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert crypt.crypt("x", r.stdout.decode().strip()) == r.stdout.decode().strip()


# ---------------------------------------------------------------------------
# smtpd -n: every AUTH keyword, the credentials table format
# ---------------------------------------------------------------------------

# Made with mkpasswd (yescrypt, bcrypt), openssl passwd -6 and Python's crypt.
HASHES = {
    "yescrypt": "$y$j9T$.Yl7mOMqTuglHybKwdg6D1$z517WuLJgaeyZsfvX1/.dJvvBZW.gi/nGN3zQ/Op707",
    "sha512": "$6$wupqMKI.5Nd/nfGE$Xp3ayXrVKO7Rd39lUEdRVzSvWeaw2RTg5lvcCr5IfFnnmLY3LlUuDim4UOfRwMrMY4HIQYQ7UDuzwYMZLKv7W.",
    "bcrypt": "$2b$05$NlN2kRBSBtn8TkiOD42CreDJV35Rq.Qfg1XZB7tKxAv7nIRdayAoe",
}
PASSWORD = "correct horse"


def check_config(tmp_path, text):
    conf = tmp_path / "smtpd.conf"
    conf.write_text(text)
    return subprocess.run([str(smtpd_bin()), "-n", "-f", str(conf)], capture_output=True, text=True,
                          timeout=30, cwd=tmp_path)


def test_every_auth_keyword_passes_the_check(tmp_path):
    creds = tmp_path / "credentials"
    creds.write_text("# user hash, and OpenSMTPD's user:hash form\n"
                     "alice %s\nBob bob:%s\ncarol:%s\n" % (HASHES["yescrypt"], HASHES["sha512"], HASHES["bcrypt"]))
    senders = tmp_path / "senders"
    senders.write_text("alice: alice@example.org, @example.net\nbob bob@example.org\n")
    cert, key = make_cert(tmp_path)
    r = check_config(tmp_path, """\
pki test cert "%s"
pki test key "%s"
table credentials file:%s
table senders file:%s
listen on 127.0.0.1 port %d tls pki test auth <credentials> senders <senders> masquerade received-auth
listen on 127.0.0.1 port %d tls-require pki test auth-optional
listen on 127.0.0.1 port %d smtps pki test auth
listen on 127.0.0.1 port %d pki test smtps auth-optional { bob = "%s" } senders <senders>
smtp limit max-auth-failures 5
action "out" relay host "smtp://127.0.0.1:2"
action "local" maildir "%s/mail"
match from auth for any action "out"
match from auth alice for any action "out"
match from auth <senders> for any action "out"
match from any auth { carol } for any action "out"
match from any !auth for local action "local"
match auth for local action "local"
""" % (cert, key, creds, senders, free_port(), free_port(), free_port(), free_port(), HASHES["sha512"], tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "configuration OK"


BAD_AUTH = [
    ("a password in clear", "table c { bob = secret }\nlisten on 127.0.0.1 port 2525 auth <c>\n", 2,
     r"table 'c': the entry of 'bob' is no crypt\(3\) hash \(make one with 'smtpctl encrypt'\)"),
    ("auth without TLS", "listen on 127.0.0.1 port 2525 auth\n", 1,
     r"'auth' needs tls, tls-require or smtps"),
    ("auth twice", "listen on 127.0.0.1 port 2525 auth auth-optional\n", 1,
     r"'auth' or 'auth-optional' given twice"),
    ("senders without auth", "table s { bob = b@example.org }\nlisten on 127.0.0.1 port 2525 senders <s>\n", 2,
     r"'senders' needs 'auth' or 'auth-optional'"),
    ("received-auth without auth", "listen on 127.0.0.1 port 2525 received-auth\n", 1,
     r"'received-auth' needs 'auth' or 'auth-optional'"),
    ("senders without a table", "listen on 127.0.0.1 port 2525 auth senders\n", 1, r"expected '<'"),
    ("undefined credentials", "listen on 127.0.0.1 port 2525 auth <nope>\n", 1, r"undefined table 'nope'"),
    ("no failures allowed", "listen on 127.0.0.1 port 2525\nsmtp limit max-auth-failures 0\n", 2,
     r"max-auth-failures: 0 is out of range"),
    ("auth on the socket", "listen on 127.0.0.1 port 2525\nlisten on socket auth\n", 2, r"unexpected 'auth'"),
]


@pytest.mark.parametrize("name,text,line,msg", BAD_AUTH, ids=[b[0] for b in BAD_AUTH])
def test_auth_configuration_errors(tmp_path, name, text, line, msg):
    r = check_config(tmp_path, text)
    assert r.returncode == 1, r.stdout
    assert re.search(r"smtpd.conf:%d: %s" % (line, msg), r.stderr), r.stderr


# ---------------------------------------------------------------------------
# Before STARTTLS: AUTH is neither offered nor accepted
# ---------------------------------------------------------------------------


def plain_ir(user, password, authzid=b""):
    if isinstance(user, str):
        user = user.encode()
    if isinstance(password, str):
        password = password.encode()
    return base64.b64encode(authzid + b"\0" + user + b"\0" + password).decode()


def credentials_file(path, **users):
    path.write_text("".join("%s %s\n" % (u, h) for u, h in users.items()))
    return path


def test_auth_is_refused_before_tls(secure, tmp_path):
    creds = credentials_file(tmp_path / "creds", bob=HASHES["sha512"])
    d = secure.daemon("auth <creds>", extra="table creds file:%s\n" % creds)
    with d.client() as c:
        r = c.ehlo()
        assert not any("AUTH" in line for line in r.lines), r
        ir = plain_ir("bob", PASSWORD)
        c.expect("AUTH PLAIN " + ir, 538, "5.7.11")
        c.expect("AUTH LOGIN", 538, "5.7.11")
        c.expect("AUTH CRAM-MD5", 504, "5.5.4")
        # auth: MAIL needs AUTH first (RFC 4954 §6).
        c.expect("MAIL FROM:<bob@example.test>", 530, "5.7.0")
        c.expect("QUIT", 221)
    log = d.log()
    assert ir not in log and PASSWORD not in log
    assert 'command="AUTH PLAIN (hidden)"' in log, log[-2000:]


def test_auth_optional_and_listeners_without_auth(secure, make_daemon):
    d = secure.daemon("auth-optional")
    with d.client() as c:
        c.ehlo()
        c.expect("AUTH PLAIN", 538, "5.7.11")
        c.send_message("a@example.test", ["root@example.test"], "Subject: x\r\n\r\nbody\r\n")
    d2 = make_daemon()
    with d2.client() as c:
        c.ehlo()
        c.expect("AUTH PLAIN", 503, "5.5.1")
        c.expect("MAIL FROM:<a@example.test> AUTH=<>", 250, "2.1.0")


# ---------------------------------------------------------------------------
# Sessions protected by TLS
# ---------------------------------------------------------------------------



def make_cert(directory, name=HOSTNAME):
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=" + name,
                    "-addext", "subjectAltName=DNS:" + name],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class Secure:
    """Daemons whose listener offers STARTTLS (`tls pki test`), for the tests of AUTH,
    and clients that use it."""

    def __init__(self, make_daemon, tmp_path):
        self.make = make_daemon
        self.dir = tmp_path
        pki = tmp_path / "pki"
        pki.mkdir()
        self.cert, self.key = make_cert(pki)

    def daemon(self, listen_opts, extra="", **kw):
        extra = 'pki test cert "%s"\npki test key "%s"\n%s' % (self.cert, self.key, extra)
        return self.make(extra=extra, listen_opts="tls pki test " + listen_opts, **kw)

    def client(self, d, source=None):
        """A client after EHLO in a session protected by STARTTLS; `.ehlo_reply` is the
        reply to the EHLO after it."""
        c = d.client(source=source)
        c.ehlo()
        c.expect("STARTTLS", 220)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.sock = ctx.wrap_socket(c.sock, server_hostname=HOSTNAME)
        r = c.cmd("EHLO client.test")
        assert r.code == 250, r
        c.ehlo_reply = r
        return c


@pytest.fixture
def secure(make_daemon, tmp_path):
    return Secure(make_daemon, tmp_path)


def hashes_of_tools(password):
    """Hashes of `password` made by other tools: mkpasswd (yescrypt), openssl passwd -6,
    Python's crypt (bcrypt)."""
    if not shutil.which("mkpasswd"):
        pytest.skip("mkpasswd (Debian package whois) is missing")
    out = {}
    out["yescrypt"] = subprocess.run(["mkpasswd", "-m", "yescrypt", "-s"], input=password,
                                     capture_output=True, text=True, check=True,
                                     timeout=30).stdout.strip()
    out["sha512"] = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password,
                                   capture_output=True, text=True, check=True,
                                   timeout=30).stdout.strip()
    out["bcrypt"] = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))
    assert out["yescrypt"].startswith("$y$") and out["sha512"].startswith("$6$")
    assert out["bcrypt"].startswith("$2b$")
    return out


def auth_log(d, user, result):
    return d.wait_log(r"[0-9a-f]{16} smtp authentication user=%s result=%s\b"
                      % (re.escape(user), result), timeout=5)


def test_plain_and_login_against_a_table(secure, tmp_path):
    h = hashes_of_tools(PASSWORD)
    creds = tmp_path / "creds"
    creds.write_text("alice %s\nbob bob:%s\nCarol %s\n" % (h["yescrypt"], h["sha512"], h["bcrypt"]))
    d = secure.daemon("auth <creds>", extra="table creds file:%s\n" % creds)
    for user in ("alice", "bob", "carol", "CAROL"):
        with secure.client(d) as c:
            assert "AUTH PLAIN LOGIN" in c.ehlo_reply.text
            c.expect("AUTH PLAIN " + plain_ir(user, PASSWORD), 235, "2.7.0")
            c.expect("AUTH PLAIN", 503, "5.5.1")
            c.expect("MAIL FROM:<%s@example.test>" % user, 250)
        assert auth_log(d, user, "ok"), d.log()[-2000:]
    with secure.client(d) as c:
        c.expect("AUTH LOGIN", 334).text == "VXNlcm5hbWU6"
        c.expect(base64.b64encode(b"bob").decode(), 334)
        c.expect(base64.b64encode(PASSWORD.encode()).decode(), 235, "2.7.0")
    with secure.client(d) as c:
        c.expect("AUTH LOGIN " + base64.b64encode(b"alice").decode(), 334)
        c.expect(base64.b64encode(b"wrong").decode(), 535, "5.7.8")
        c.expect("AUTH PLAIN", 334)
        c.expect("*", 501, "5.7.0")
        c.expect("AUTH PLAIN " + plain_ir("nobody", PASSWORD), 535, "5.7.8")
        c.expect("MAIL FROM:<a@example.test>", 530, "5.7.0")
    assert auth_log(d, "alice", "permfail") and auth_log(d, "nobody", "permfail")


def test_system_accounts_checked_by_the_parent(secure, user1):
    needs_root()
    name = user1.pw_name
    assert name.startswith("smtpdtest"), name
    old = subprocess.run(["getent", "shadow", name], capture_output=True, text=True,
                         timeout=30).stdout.split(":")[1]
    password = "Sys-%s-pw" % os.getpid()
    subprocess.run(["chpasswd"], input="%s:%s\n" % (name, password), text=True, check=True,
                   timeout=30)
    try:
        d = secure.daemon("auth")
        with secure.client(d) as c:
            c.expect("AUTH PLAIN " + plain_ir(name, "wrong"), 535, "5.7.8")
            c.expect("AUTH PLAIN " + plain_ir("no-such-user-here", password), 535, "5.7.8")
            c.expect("AUTH PLAIN " + plain_ir(name, password), 235, "2.7.0")
        assert auth_log(d, name, "ok") and auth_log(d, name, "permfail")
        assert password not in d.log()
    finally:
        subprocess.run(["usermod", "-p", old, name], check=True, timeout=30)


def test_failures_cost_the_client(secure, tmp_path):
    creds = credentials_file(tmp_path / "creds", bob=HASHES["sha512"])
    d = secure.daemon("auth <creds>", extra="table creds file:%s\nsmtp limit max-auth-failures 2\n" % creds)
    times = []
    with secure.client(d) as c:
        for _ in range(2):
            t = time.monotonic()
            r = c.cmd("AUTH PLAIN " + plain_ir("bob", "wrong"))
            times.append(time.monotonic() - t)
            assert r.is_(535, "5.7.8"), r
        r = c.reply()
        assert r.is_(421, "4.7.0"), r
        assert c.wait_closed()
    # The next session from the same address starts where the last one left off: its
    # first failure waits as long as a third one (2 s; 0.5 s and 1 s before).
    with secure.client(d) as c:
        t = time.monotonic()
        c.expect("AUTH PLAIN " + plain_ir("bob", "wrong"), 535, "5.7.8")
        times.append(time.monotonic() - t)
        c.expect("AUTH PLAIN " + plain_ir("bob", PASSWORD), 235, "2.7.0")
    assert times[0] >= 0.45 and times[1] >= 0.95 and times[2] >= 1.95, times
    assert d.wait_log(r"smtp disconnected reason=limit")


def test_senders_masquerade_received_and_relaying(secure, tmp_path):
    creds = credentials_file(tmp_path / "creds", bob=HASHES["sha512"])
    rules = DEFAULT_RULES + 'action "out" relay host "smtp://127.0.0.1:9"\nmatch from auth for any action "out"\n'
    d = secure.daemon("auth-optional <creds> senders <senders> masquerade received-auth",
                      extra="table creds file:%s\ntable senders { bob = \"bob@example.test\" }\n" % creds,
                      rules=rules)
    with secure.client(d) as c:
        # Without AUTH: no relaying, no sender check.
        c.expect("MAIL FROM:<alice@example.test>", 250)
        c.expect("RCPT TO:<x@elsewhere.example>", 550, "5.7.1")
        c.expect("RSET", 250)
        c.expect("AUTH PLAIN " + plain_ir("bob", PASSWORD), 235)
        c.expect("MAIL FROM:<alice@example.test>", 553, "5.7.1")
        msgid = c.send_message("bob+tag@example.test", ["x@elsewhere.example"],
                               "From: Bob Builder <builder@other.example>\r\nSubject: hi\r\n\r\nbody\r\n")
    m = [m for m in d.messages() if m.msgid == msgid][0]
    text = m.text
    assert "From: Bob Builder <bob+tag@example.test>\n" in text, text
    assert re.search(r"with ESMTPSA id %s \(TLSv1\.3:\S+:\d+:NO\) \(auth=yes user=bob\)" % msgid,
                     text), text


def test_every_octet_of_a_password_and_nothing_in_logs_spool_or_filters(secure, tmp_path,
                                                                         monkeypatch):
    password = bytes(range(1, 256))
    libcrypt = ctypes.CDLL("libcrypt.so.1")
    libcrypt.crypt.restype = ctypes.c_char_p
    libcrypt.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    h = libcrypt.crypt(password, b"$6$regresssalt").decode()
    printable = "Hunter2-Zq9-secret"
    creds = credentials_file(tmp_path / "creds", bob=h, carol=crypt.crypt(printable, crypt.mksalt()))
    flt = tmp_path / "flt"
    flt.mkdir()
    shutil.copy(Path(__file__).with_name("filterlib.py"), flt / "filterlib.py")
    (flt / "spec.json").write_text(json.dumps({"name": "obs", "hooks": [], "reports": ["protocol"]}))
    for p in (flt, flt / "filterlib.py", flt / "spec.json"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    allow_traversal(flt)
    monkeypatch.setenv("RUST_LOG", "trace")
    d = secure.daemon("auth <creds> filter obs",
                      extra='table creds file:%s\nfilter obs proc-exec "/usr/bin/python3 %s %s"\n'
                      % (creds, flt / "filterlib.py", flt / "spec.json"))
    secrets = [password, printable.encode()]
    with secure.client(d) as c:
        ir = plain_ir("bob", password)
        secrets.append(ir.encode())
        c.expect("AUTH PLAIN " + ir, 235, "2.7.0")
        c.send_message("bob@example.test", ["root@example.test"], "Subject: s\r\n\r\nbody\r\n")
    with secure.client(d) as c:
        c.expect("AUTH LOGIN", 334)
        for part in (b"carol", printable.encode()):
            b64 = base64.b64encode(part).decode()
            secrets.append(b64.encode())
            r = c.cmd(b64)
        assert r.is_(235, "2.7.0"), r
    with secure.client(d) as c:
        ir = plain_ir("carol", printable + "x")
        secrets.append(ir.encode())
        c.expect("AUTH PLAIN " + ir, 535)
    assert d.wait_log(r"filter obs: [0-9a-f]{16} protocol < AUTH PLAIN \(hidden\)")
    assert d.wait_log(r"filter obs: [0-9a-f]{16} protocol < \(hidden\)")
    assert auth_log(d, "carol", "permfail")
    d.stop()
    log = d.logpath.read_bytes()
    assert b"smtp <<< AUTH PLAIN (hidden)" in log
    spool = b"".join(p.read_bytes() for p in Path(d.spool_root()).rglob("*")
                     if p.is_file() and not p.is_symlink())
    for s in secrets:
        assert s not in log, s
        assert s not in spool, s


def test_swaks_and_smtplib_over_starttls(secure, tmp_path):
    h = hashes_of_tools(PASSWORD)
    creds = credentials_file(tmp_path / "creds", alice=h["yescrypt"])
    d = secure.daemon("auth <creds>", extra="table creds file:%s\n" % creds)
    for mech in ("PLAIN", "LOGIN"):
        r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % d.port, "--tls", "--auth", mech,
                            "--auth-user", "alice", "--auth-password", PASSWORD,
                            "--from", "alice@example.test", "--to", "root@example.test"],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "235 2.7.0" in r.stdout
    with smtplib.SMTP("127.0.0.1", d.port, timeout=10) as c:
        c.ehlo()
        assert not c.has_extn("auth")
        c.starttls(context=ssl._create_unverified_context())
        c.ehlo()
        assert c.has_extn("auth")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            c.login("alice", "wrong")
        c.login("alice", PASSWORD)
        c.sendmail("alice@example.test", ["root@example.test"], "Subject: x\r\n\r\nbody\r\n")


def test_smtps_offers_auth_from_the_first_ehlo(make_daemon, tmp_path):
    creds = credentials_file(tmp_path / "creds", alice=HASHES["yescrypt"])
    cert, key = make_cert(tmp_path)
    d = make_daemon(extra='pki test cert "%s"\npki test key "%s"\ntable creds file:%s\n'
                    % (cert, key, creds), listen_opts="smtps pki test auth <creds>")
    r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % d.port, "--tls-on-connect",
                        "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", PASSWORD,
                        "--from", "alice@example.test", "--to", "root@example.test"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250-AUTH PLAIN LOGIN" in r.stdout and "235 2.7.0" in r.stdout
    (m,) = d.messages()
    assert re.search(r"with ESMTPSA id %s \(TLSv1\.3:" % m.msgid, m.text), m.text


def test_filters_see_tls_and_decide_on_auth(secure, tmp_path):
    creds = credentials_file(tmp_path / "creds", bob=HASHES["sha512"], mallory=HASHES["sha512"])
    spec = {"name": "f", "hooks": ["auth"], "reports": ["tls", "auth-result", "disconnect"],
            "answers": {"auth": {"do": "reject", "code": 535, "text": "5.7.8 Not this one",
                                 "when": "^mallory$"}}}
    d = secure.daemon("auth <creds> filter f",
                      extra="table creds file:%s\n%s" % (creds, filter_dir(tmp_path, spec)))
    with secure.client(d) as c:
        # The filter refuses mallory although the password is right: no 235, no login.
        c.expect("AUTH PLAIN " + plain_ir("mallory", PASSWORD), 535, "5.7.8")
        c.expect("MAIL FROM:<mallory@example.test>", 530, "5.7.0")
        c.expect("AUTH PLAIN " + plain_ir("bob", "wrong"), 535, "5.7.8")
        c.expect("AUTH PLAIN " + plain_ir("bob", PASSWORD), 235, "2.7.0")
        c.expect("MAIL FROM:<bob@example.test>", 250)
    line = d.wait_log(r"(?m)filter f: ([0-9a-f]{16}) tls version=TLSv1\.3 cipher=TLS_\w+ bits=(128|256) "
                      r"sni=%s subject=$" % re.escape(HOSTNAME), timeout=10)
    assert line, d.log()[-3000:]
    for user, result in (("mallory", "permfail"), ("bob", "permfail"), ("bob", "ok")):
        assert d.wait_log(r"filter f: [0-9a-f]{16} auth-result PLAIN %s %s" % (user, result),
                          timeout=10), d.log()[-3000:]
    # The filter was asked for the accepted credentials only.
    asked = re.findall(r"filter f: [0-9a-f]{16} auth PLAIN (\w+)", d.log())
    assert asked == ["mallory", "bob"], asked
    assert d.wait_log(r"smtp authentication user=mallory result=filtered")
    assert PASSWORD not in d.log()
