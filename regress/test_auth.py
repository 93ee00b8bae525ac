"""SMTP AUTH (RFC 4954, PLAIN and LOGIN) and what hangs on it: `smtpctl encrypt`,
credentials tables, system accounts, the failure penalty, `senders`, `from auth`,
`received-auth` and what the logs and the spool never hold.
"""

import re
import subprocess
import warnings

import pytest

from conftest import free_port, smtpd_bin

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
    r = check_config(tmp_path, """\
table credentials file:%s
table senders file:%s
listen on 127.0.0.1 port %d auth <credentials> senders <senders> masquerade received-auth
listen on 127.0.0.1 port %d auth-optional
listen on 127.0.0.1 port %d auth
listen on 127.0.0.1 port %d auth-optional { bob = "%s" } senders <senders>
smtp limit max-auth-failures 5
action "out" relay host "smtp://127.0.0.1:2"
action "local" maildir "%s/mail"
match from auth for any action "out"
match from auth alice for any action "out"
match from auth <senders> for any action "out"
match from any auth { carol } for any action "out"
match from any !auth for local action "local"
match auth for local action "local"
""" % (creds, senders, free_port(), free_port(), free_port(), free_port(), HASHES["sha512"], tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "configuration OK"


BAD_AUTH = [
    ("a password in clear", "table c { bob = secret }\nlisten on 127.0.0.1 port 2525 auth <c>\n", 2,
     r"table 'c': the entry of 'bob' is no crypt\(3\) hash \(make one with 'smtpctl encrypt'\)"),
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
