"""SMTP AUTH (RFC 4954, PLAIN and LOGIN) and what hangs on it: `smtpctl encrypt`,
credentials tables, system accounts, the failure penalty, `senders`, `from auth`,
`received-auth` and what the logs and the spool never hold.
"""

import subprocess
import warnings

from conftest import smtpd_bin

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
