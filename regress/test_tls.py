"""TLS: STARTTLS (RFC 3207) and smtps listeners, with real clients (swaks, smtplib,
openssl s_client), certificates made by the test with openssl.

Covers: swaks --tls and --tls-on-connect, smtplib starttls(), protocol versions (1.2
and 1.3 work, 1.1 is refused), the certificate chosen by SNI among two pki, client
certificates with verify, the STARTTLS injection (CVE-2011-0411), tls-require,
handshakes that stall, send garbage or reset while other sessions go on, a 1 MiB
message intact over TLS, the Received header, match tls, and smtpd -n on TLS
configurations (the sample, a missing key, a key that is not the certificate's).
"""

import re
import shutil
import smtplib
import socket
import ssl
import struct
import subprocess
import time
from pathlib import Path

import pytest

from conftest import (HOSTNAME, REPO, SMTPRaw, accepted_id, filter_dir, free_port, smtpd_bin,
                      wait_until)
from tlscerts import Pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl(1)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def tls_daemon(make_daemon, pki, opts, extra="", **kw):
    return make_daemon(listen_opts=opts, extra=pki.config() + extra, **kw)


def s_client(args, stdin=b"", timeout=20):
    """openssl s_client with `args`; returns its output (stdout and stderr)."""
    p = subprocess.run(["openssl", "s_client", "-no_ign_eof"] + args, input=stdin,
                       capture_output=True, timeout=timeout)
    return (p.stdout + p.stderr).decode("utf-8", "replace")


def served_subject(out):
    m = re.search(r"^subject=(.*)$", out, re.M)
    return m and m.group(1).strip()


def tls_lines(d):
    return [l for l in d.log().splitlines() if " smtp tls " in l or " smtp tls-failed " in l]


def received(msg):
    text = msg.text
    return text[:text.index("\n", text.index("for <") if "for <" in text else 0)]


# ---------------------------------------------------------------- real clients

def test_swaks_starttls(make_daemon, pki):
    d = tls_daemon(make_daemon, pki, "tls pki mx.test.example")
    p = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % d.port, "--tls",
                        "--to", "someone@example.test", "--from", "a@example.org",
                        "--header", "Subject: over starttls"],
                       capture_output=True, timeout=60)
    out = p.stdout.decode()
    assert p.returncode == 0, out
    assert "250-STARTTLS" in out
    assert "TLS started with cipher TLSv1.3:TLS_AES_256_GCM_SHA384:256" in out
    msgs = d.wait_messages(1)
    head = msgs[0].text.split("\n\n")[0]
    assert re.search(r"by mx\.test\.example \(smtpd\) with ESMTPS id [0-9a-f]{8} "
                     r"\(TLSv1\.3:TLS_AES_256_GCM_SHA384:256:NO\)\n", head), head
    assert "Subject: over starttls" in msgs[0].text
    lines = tls_lines(d)
    assert any(re.search(r"smtp tls version=TLSv1\.3 cipher=TLS_AES_256_GCM_SHA384 bits=256 "
                         r"sni=none client-cert=none$", l) for l in lines), lines


def test_keys_readable_by_root_only(make_daemon, pki):
    """The key is read before the engine drops its privileges: a key only root can
    read serves TLS all the same."""
    import os

    if os.geteuid() != 0:
        pytest.skip("needs root (the engine runs as _smtpd only when started as root)")
    os.chmod(pki.dir, 0o700)
    os.chmod(pki.mx[1], 0o600)
    d = tls_daemon(make_daemon, pki, "smtps pki mx.test.example")
    assert d.wait_log(r"engine running as _smtpd", 5)
    with SMTPRaw(d.port) as c:
        c.tls(cafile=str(pki.ca), server_hostname=HOSTNAME)
        c.ehlo()


def test_swaks_tls_on_connect(make_daemon, pki):
    d = tls_daemon(make_daemon, pki, "smtps pki mx.test.example")
    p = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % d.port, "--tls-on-connect",
                        "--to", "someone@example.test", "--from", "a@example.org"],
                       capture_output=True, timeout=60)
    out = p.stdout.decode()
    assert p.returncode == 0, out
    # TLS from the first byte: STARTTLS is never offered.
    assert "STARTTLS" not in out
    assert "<~  220 mx.test.example ESMTP" in out
    msgs = d.wait_messages(1)
    assert " with ESMTPS id " in msgs[0].text.split("\n\n")[0]


def test_smtplib_starttls_1mib_intact(make_daemon, pki):
    d = tls_daemon(make_daemon, pki, "tls pki mx.test.example")
    lines = [("%06d " % i + "abcdefghijklmnopqrstuvwxyz" * 3).encode() for i in range(13000)]
    body = b"Subject: big\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
    assert len(body) > 1024 * 1024
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.check_hostname = False  # connected by address; the chain is still verified
    with smtplib.SMTP("127.0.0.1", d.port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.has_extn("starttls")
        code, _ = s.starttls(context=ctx)
        assert code == 220
        s.ehlo("client.test")
        assert not s.has_extn("starttls")
        s.sendmail("a@example.org", ["big@example.test"], body)
    msgs = d.wait_messages(1)
    assert msgs[0].body() == body.replace(b"\r\n", b"\n")


@pytest.mark.parametrize("flag,version", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_openssl_versions(make_daemon, pki, flag, version):
    d = tls_daemon(make_daemon, pki, "tls pki mx.test.example")
    out = s_client(["-starttls", "smtp", "-connect", "127.0.0.1:%d" % d.port, flag,
                    "-CAfile", str(pki.ca), "-verify_return_error", "-servername", HOSTNAME],
                   b"EHLO client.test\r\nQUIT\r\n")
    assert re.search(r"New, %s, Cipher is " % re.escape(version), out), out
    assert "Verify return code: 0 (ok)" in out
    assert "250 HELP" in out
    assert wait_until(lambda: any("version=%s" % version in l for l in tls_lines(d)), 5)


def test_tls11_refused(make_daemon, pki):
    d = tls_daemon(make_daemon, pki, "smtps pki mx.test.example")
    out = s_client(["-connect", "127.0.0.1:%d" % d.port, "-tls1_1",
                    "-cipher", "DEFAULT:@SECLEVEL=0"])
    assert "Cipher is (NONE)" in out and "alert handshake failure" in out, out
    assert "220 " not in out
    # The server saw the ClientHello and refused it (the daemon's start-up probe
    # closed without a ClientHello: that one is "connection closed").
    assert wait_until(lambda: any("tls-failed" in l and "connection closed" not in l
                                  for l in tls_lines(d)), 5), tls_lines(d)


def test_sni_chooses_among_every_pki(make_daemon, pki):
    # The listener names only mx; other.test.example is declared all the same.
    d = tls_daemon(make_daemon, pki, "smtps pki mx.test.example")
    base = ["-connect", "127.0.0.1:%d" % d.port, "-CAfile", str(pki.ca)]
    assert "CN = mx.test.example" in served_subject(s_client(base))
    out = s_client(base + ["-servername", "other.test.example"], b"EHLO x\r\nQUIT\r\n")
    assert served_subject(out) == "O = Other Org, CN = other.test.example", out
    assert "Verify return code: 0 (ok)" in out
    assert "CN = mx.test.example" in served_subject(
        s_client(base + ["-servername", "OTHER.test.example.invalid"]))
    assert "CN = other.test.example" in served_subject(
        s_client(base + ["-servername", "Other.Test.Example"]))
    assert wait_until(lambda: any("sni=other.test.example" in l for l in tls_lines(d)), 5)


def test_listener_first_pki_is_the_default(make_daemon, pki):
    d = tls_daemon(make_daemon, pki, "tls pki other.test.example pki mx.test.example")
    out = s_client(["-starttls", "smtp", "-connect", "127.0.0.1:%d" % d.port])
    assert "CN = other.test.example" in served_subject(out), out


# ---------------------------------------------------------------- client certificates

def test_client_certificate_verified(make_daemon, pki, tmp_path):
    # A filter sees the subject too, as an RFC 4514 string, even when the handshake
    # ends before the filter registered: its reports wait for it.
    spec = {"name": "f", "hooks": [], "reports": ["tls"], "register_delay": 1}
    d = tls_daemon(make_daemon, pki, "smtps verify pki mx.test.example ca testca filter f",
                   extra=filter_dir(tmp_path, spec))
    with SMTPRaw(d.port) as c:
        c.tls(cafile=str(pki.ca), server_hostname=HOSTNAME, cert=pki.client)
        c.ehlo()
        c.send_message("a@example.org", ["x@example.test"], "Subject: cert\r\n\r\nhi\r\n")
        c.until_quit()
    msgs = d.wait_messages(1)
    assert ":256:YES)" in msgs[0].text.split("\n\n")[0]
    assert any('client-cert="/O=Test Org/CN=client.test"' in l for l in tls_lines(d))
    assert d.wait_log(r"filter f: [0-9a-f]{16} tls version=TLSv1\.3 cipher=TLS_\w+ bits=\d+ "
                      r"sni=mx\.test\.example subject=CN=client\.test,O=Test Org\n"), d.log()[-2000:]


@pytest.mark.parametrize("which", ["none", "stranger"])
def test_client_certificate_refused(make_daemon, pki, which):
    d = tls_daemon(make_daemon, pki, "smtps verify pki mx.test.example ca testca")
    cert = None if which == "none" else pki.stranger
    with pytest.raises((ssl.SSLError, OSError, Exception)):
        with SMTPRaw(d.port, timeout=5) as c:
            c.tls(cafile=str(pki.ca), server_hostname=HOSTNAME, cert=cert)
            # TLS 1.3: the refusal of the certificate may come with the first read.
            c.greeting()
    assert wait_until(lambda: any("tls-failed" in l for l in tls_lines(d)), 5)
    assert not d.messages()


def test_tls_require_verify_with_starttls(make_daemon, pki):
    d = tls_daemon(make_daemon, pki, "tls-require verify pki mx.test.example ca testca")
    with SMTPRaw(d.port) as c:
        c.ehlo()
        c.expect("STARTTLS", 220, "2.0.0")
        c.tls(cafile=str(pki.ca), server_hostname=HOSTNAME, cert=pki.client)
        c.cmd("EHLO client.test")
        c.send_message("a@example.org", ["x@example.test"], "Subject: v\r\n\r\nhi\r\n")


# ---------------------------------------------------------------- the dialog

def test_starttls_injection_discarded(make_daemon, pki):
    """CVE-2011-0411: a command sent with STARTTLS, before the handshake, is never
    answered nor executed."""
    d = tls_daemon(make_daemon, pki, "tls pki mx.test.example")
    with SMTPRaw(d.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 250)
        c.expect("RSET", 250)
        c.send(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
        r = c.reply()
        assert r.is_(220, "2.0.0"), r
        c.tls()
        # The first reply after the handshake is the EHLO's, not the injected MAIL's.
        r = c.cmd("EHLO client.test")
        assert r.code == 250 and r.lines[0].startswith("250-%s Hello" % HOSTNAME), r
        assert all("STARTTLS" not in l for l in r.lines)
        # No transaction was opened by the injected MAIL: a new one starts cleanly.
        c.send_message("a@example.org", ["x@example.test"], "Subject: x\r\n\r\nhi\r\n")
        c.until_quit()
    msgs = d.wait_messages(1)
    assert msgs[0].envelopes[0]["sender"] == "a@example.org"
    assert d.wait_log(r"smtp starttls-injection discarded=\d+ ", 15)


def test_starttls_rset_injection_never_answered(make_daemon, pki):
    d = tls_daemon(make_daemon, pki, "tls pki mx.test.example")
    with SMTPRaw(d.port) as c:
        c.ehlo()
        c.send(b"STARTTLS\r\nRSET\r\n")
        assert c.reply().is_(220)
        c.tls()
        c.send(b"NOOP\r\n")
        r = c.reply()
        # The RSET's "250 2.0.0 Ok" would come first; the NOOP's is the only one.
        assert r.is_(250, "2.0.0"), r
        assert c.drain(quiet=0.5) == []
    assert "discarded=6 " in d.log()


def test_starttls_refusals(make_daemon, pki):
    d = tls_daemon(make_daemon, pki, "tls pki mx.test.example")
    with SMTPRaw(d.port) as c:
        c.ehlo()
        c.expect("STARTTLS now", 501, "5.5.4")
        c.expect("STARTTLS", 220)
        c.tls()
        c.expect("MAIL FROM:<a@example.org>", 503, "5.5.1")  # EHLO again first
        c.cmd("EHLO client.test")
        c.expect("STARTTLS", 503, "5.5.1")
    plain = make_daemon()
    with SMTPRaw(plain.port) as c:
        r = c.ehlo()
        assert all("STARTTLS" not in l for l in r.lines)
        c.expect("STARTTLS", 500, "5.5.2")


def test_tls_require_refuses_mail_before_starttls(make_daemon, pki):
    d = tls_daemon(make_daemon, pki, "tls-require pki mx.test.example")
    with SMTPRaw(d.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 530, "5.7.0")
        c.expect("NOOP", 250)
        c.expect("STARTTLS", 220)
        c.tls()
        c.cmd("EHLO client.test")
        c.send_message("a@example.org", ["x@example.test"], "Subject: x\r\n\r\nhi\r\n")
    assert len(d.wait_messages(1)) == 1


def test_match_tls(make_daemon, pki):
    rules = """
action "virt" maildir "{MAILDIR}/%{user.username}" virtual { "@example.test" = root }
match from any tls for domain "example.test" action "virt"
"""
    d = tls_daemon(make_daemon, pki, "tls pki mx.test.example", rules=rules)
    with SMTPRaw(d.port) as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 250)
        c.expect("RCPT TO:<x@example.test>", 550, "5.7.1")
        c.expect("RSET", 250)
        c.expect("STARTTLS", 220)
        c.tls()
        c.cmd("EHLO client.test")
        c.send_message("a@example.org", ["x@example.test"], "Subject: x\r\n\r\nhi\r\n")


# ---------------------------------------------------------------- bad handshakes

def test_bad_handshakes_hurt_no_one_else(make_daemon, pki):
    plain_port = free_port()
    d = tls_daemon(make_daemon, pki, "smtps pki mx.test.example",
                   extra="listen on 127.0.0.1 port %d hostname %s\nsmtp timeout 3s\n"
                   % (plain_port, HOSTNAME))
    # Stalls: half a ClientHello, then nothing.
    stall = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    stall.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    # Garbage where a ClientHello should be.
    garbage = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    garbage.sendall(b"EHLO client.test\r\n" * 20)
    # Resets in the middle of its ClientHello.
    reset = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    reset.sendall(b"\x16\x03\x01\x02\x00\x01")
    reset.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reset.close()
    # A STARTTLS client that stalls after the 220.
    with SMTPRaw(plain_port) as c:
        c.ehlo()
        r = c.cmd("STARTTLS")
        assert r.is_(500, "5.5.2")  # the plain listener offers no TLS
    try:
        # Meanwhile, another session completes a message, and a TLS one too.
        with SMTPRaw(plain_port) as c:
            c.ehlo()
            accepted_id_ = c.send_message("a@example.org", ["x@example.test"],
                                          "Subject: plain\r\n\r\nhi\r\n")
            assert accepted_id_
        with SMTPRaw(d.port) as c:
            c.tls()
            c.ehlo()
            c.send_message("a@example.org", ["x@example.test"], "Subject: tls\r\n\r\nhi\r\n")
        assert len(d.wait_messages(2)) == 2
        # The garbage got an alert, and its connection is closed.
        garbage.settimeout(5)
        data = b""
        for _ in range(10):
            chunk = garbage.recv(4096)
            if not chunk:
                break
            data += chunk
        assert data[:1] == b"\x15", data  # a TLS alert record
        # The stalled handshake is ended by its deadline (smtp timeout 3s).
        stall.settimeout(10)
        t0 = time.monotonic()
        while stall.recv(4096):
            pass
        assert time.monotonic() - t0 < 9
    finally:
        stall.close()
        garbage.close()
    assert wait_until(lambda: 'tls-failed reason="handshake timeout"' in d.log(), 5)
    failed = [l for l in tls_lines(d) if "tls-failed" in l]
    assert len(failed) >= 3, failed


def test_stalled_starttls_handshake_times_out(make_daemon, pki):
    d = tls_daemon(make_daemon, pki, "tls pki mx.test.example", extra="smtp timeout 2s\n")
    with SMTPRaw(d.port) as c:
        c.ehlo()
        c.expect("STARTTLS", 220)
        # No ClientHello: the handshake's deadline closes the connection.
        assert c.wait_closed(timeout=8)
    assert wait_until(lambda: 'tls-failed reason="handshake timeout"' in d.log(), 5)
    assert wait_until(lambda: "disconnected reason=timeout" in d.log(), 5)


# ---------------------------------------------------------------- smtpd -n

def check(conf):
    p = subprocess.run([str(smtpd_bin()), "-n", "-f", str(conf)], capture_output=True,
                       timeout=30)
    return p.returncode, (p.stdout + p.stderr).decode()


def test_config_check_sample_tls(tmp_path, pki):
    """Every TLS keyword of smtpd.conf.sample is accepted, with its files present."""
    text = (REPO / "smtpd.conf.sample").read_text()
    for word in ("pki", "tls", "tls-require", "smtps", "protocols", "ciphers", "dhe"):
        assert re.search(r"^[^#\n]*\b%s\b" % word, text, re.M), word
    ssl_dir = tmp_path / "ssl"
    (ssl_dir / "private").mkdir(parents=True)
    for name in re.findall(r'"/etc/ssl/([^"]+)"', text):
        src = {"crt": pki.mx[0], "key": pki.mx[1], "pem": pki.ca}[name.rsplit(".", 1)[1]]
        shutil.copy(src, ssl_dir / name)
    conf = tmp_path / "smtpd.conf"
    conf.write_text(text.replace('"/etc/ssl/', '"%s/' % ssl_dir))
    code, out = check(conf)
    assert code == 0 and "configuration OK" in out, out


def test_config_check_tls_errors(tmp_path, pki):
    base = ('pki mx.test.example cert "%s"\n' % pki.mx[0]) + "%s\n" + \
        "listen on 127.0.0.1 port 2525 hostname mx.test.example tls\n"
    cases = [
        ('pki mx.test.example key "%s"' % (tmp_path / "missing.key"),
         r":2: pki mx.test.example: .*missing\.key: .*No such file"),
        ('pki mx.test.example key "%s"' % pki.other[1],
         r":2: pki mx.test.example: the key in .* does not match the certificate"),
        ('pki mx.test.example key "%s"' % pki.ca,
         r":2: pki mx.test.example: .*ca\.pem: no PEM section found"),
    ]
    for i, (line, want) in enumerate(cases):
        conf = tmp_path / ("c%d.conf" % i)
        conf.write_text(base % line)
        code, out = check(conf)
        assert code == 1 and re.search(re.escape(str(conf)) + want, out), (line, out)
    conf = tmp_path / "verify.conf"
    conf.write_text(base % ('pki mx.test.example key "%s"\nca x cert "%s"' %
                            (pki.mx[1], tmp_path / "nope.pem")) +
                    "listen on 127.0.0.1 port 2526 smtps verify ca x pki mx.test.example\n")
    code, out = check(conf)
    assert code == 1 and re.search(re.escape(str(conf)) + r":3: ca x: .*nope\.pem", out), out
