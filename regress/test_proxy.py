"""The PROXY protocol (haproxy's, versions 1 and 2) on a `proxy-v2` listener.

Raw sockets send the headers a proxy would: the client they name is the session's (the
Received header, the log, `match from src`, filters' link-connect), and the limits by
address count it, not the proxy; a header split across writes, or followed at once by
the client's bytes (commands, a TLS ClientHello) is read to its end and no further;
LOCAL and UNKNOWN keep the connection's own address; garbage, a truncated header and
a header that never comes close the connection without a word; the TLS a proxy says
it terminated is logged, not trusted. A listener without `proxy-v2` treats a header as
the bad command it is. Then a real haproxy (Debian's, in the foreground with a
configuration of the test directory) relays sessions with `send-proxy-v2` and
`send-proxy` from a client bound to 127.0.0.5.
"""

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from conftest import (SMTPRaw, data_of, free_port, stop_process, wait_until)
from tlscerts import Pki

SIG = b"\r\n\r\n\x00\r\nQUIT\n"
BODY = data_of(["Subject: proxied", "", "hello"])

# Mail for example.test is taken only from 192.0.2.0/24; other.test from anyone.
SRC_RULES = """
table vusers { "@example.test" = root, "@other.test" = root }
action "virt" maildir "{MAILDIR}/%{user.username}" virtual <vusers>
match from src 192.0.2.0/24 for domain "example.test" action "virt"
match from any for domain "other.test" action "virt"
"""


def v1(src, dst="198.51.100.1", sport=40000, dport=25):
    proto = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (proto, src, dst, sport, dport)).encode()


def v2(src, dst="198.51.100.1", sport=40000, dport=25, cmd=0x21, tlvs=b""):
    s, t = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    fam = 0x11 if s.version == 4 else 0x21
    block = s.packed + t.packed + struct.pack("!HH", sport, dport) + tlvs
    return SIG + bytes([cmd, fam]) + struct.pack("!H", len(block)) + block


def tlv(kind, value):
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def received(msg):
    return msg.text.split("\n", 1)[0]


def proxy_daemon(make_daemon, opts="proxy-v2", **kw):
    return make_daemon(listen_opts=opts, **kw)


def connected(d, pattern):
    return d.wait_log(r" smtp connected " + pattern + r"\n", 5)


# ------------------------------------------------------------------ raw headers

def test_v1_header_names_the_client(make_daemon):
    d = proxy_daemon(make_daemon)
    with d.client() as c:
        c.send(v1("192.0.2.7"))
        c.ehlo()
        c.send_message("a@example.org", ["x@example.test"], BODY)
    (m,) = d.wait_messages(1)
    assert received(m) == "Received: from client.test (unknown [192.0.2.7])"
    assert connected(d, r"address=192\.0\.2\.7 port=40000 proxy=127\.0\.0\.1:\d+ "
                        r"proxy-header=v1")


def test_v2_header_split_then_commands_in_the_same_write(make_daemon):
    d = proxy_daemon(make_daemon)
    h = v2("::ffff:192.0.2.8", "2001:db8::25", 1234, 25)
    with d.client() as c:
        for piece in (h[:5], h[5:13], h[13:15], h[15:20]):
            c.send(piece)
            time.sleep(0.05)
        # The rest of the header and the client's first command in one segment.
        c.send(h[20:] + b"EHLO client.test\r\n")
        assert c.reply().code == 220
        assert c.reply().code == 250
        c.send_message("a@example.org", ["x@example.test"], BODY)
    (m,) = d.wait_messages(1)
    # An IPv4-mapped address is the IPv4 client.
    assert received(m) == "Received: from client.test (unknown [192.0.2.8])"
    assert connected(d, r"address=192\.0\.2\.8 port=1234 proxy=127\.0\.0\.1:\d+ "
                        r"proxy-header=v2")


@pytest.mark.parametrize("header,kind", [
    (SIG + b"\x20\x00\x00\x00", "v2-local"),
    (SIG + b"\x20\x11\x00\x0c" + bytes(12), "v2-local"),
    (b"PROXY UNKNOWN\r\n", "v1-unknown"),
    (b"PROXY UNKNOWN 192.0.2.7 198.51.100.1 1 2\r\n", "v1-unknown"),
], ids=["v2-local", "v2-local-tcp4-block", "v1-unknown", "v1-unknown-addresses"])
def test_local_and_unknown_keep_the_connection_address(make_daemon, header, kind):
    d = proxy_daemon(make_daemon)
    with d.client(source="127.0.0.3") as c:
        port = c.sock.getsockname()[1]
        c.send(header)
        c.ehlo()
        c.send_message("a@example.org", ["x@example.test"], BODY)
    (m,) = d.wait_messages(1)
    assert received(m) == "Received: from client.test (unknown [127.0.0.3])"
    assert connected(d, r"address=127\.0\.0\.3 port=%d proxy=127\.0\.0\.3:%d proxy-header=%s"
                     % (port, port, kind))


def test_rules_match_the_header_address(make_daemon):
    d = proxy_daemon(make_daemon, rules=SRC_RULES)
    with d.client() as c:
        c.send(v1("192.0.2.7"))
        c.ehlo()
        c.send_message("a@example.org", ["x@example.test"], BODY)
    with d.client() as c:
        c.send(v2("198.51.100.7"))
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 250)
        r = c.cmd("RCPT TO:<x@example.test>")
        assert r.code == 550, r
    assert len(d.messages()) == 1


def test_sessions_per_address_count_the_client_not_the_proxy(make_daemon):
    d = proxy_daemon(make_daemon, extra="smtp limit max-sessions-per-address 1")
    first = d.client()
    try:
        first.send(v1("192.0.2.7", sport=1001))
        first.greeting()
        with d.client() as c:
            c.send(v2("192.0.2.7", sport=1002))
            r = c.reply()
            assert r.is_(421, "4.7.0"), r
            assert c.wait_closed(5)
        # Every connection comes from 127.0.0.1, the proxy: another client is served.
        with d.client() as c:
            c.send(v1("192.0.2.8"))
            c.greeting()
            c.expect("NOOP", 250)
        assert d.wait_log(r"smtp refused address=192\.0\.2\.7 reason=max-sessions-per-address")
        assert "refused address=127.0.0.1" not in d.log()
    finally:
        first.close()

    # The client's slot is freed with its session.
    def served():
        with d.client() as c:
            c.send(v1("192.0.2.7", sport=1003))
            return c.reply().code == 220

    assert wait_until(served, 5)


@pytest.mark.parametrize("data,reason", [
    (b"EHLO client.test\r\n", "no PROXY protocol signature"),
    (b"PROXY UNKNOWN " + b"x" * 120, "PROXY v1: no CR LF within 107 octets"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 99999 25\r\n", "PROXY v1: invalid port"),
    (b"PROXY TCP4 192.0.2.300 198.51.100.1 1 25\r\n", "PROXY v1: invalid address"),
    (b"PROXY TCP4 192.0.2.7 198.51.100.1 1 25\n", "PROXY v1: line ended by LF without CR"),
    (b"PROXY TCP5 192.0.2.7 198.51.100.1 1 25\r\n", "PROXY v1: unknown protocol"),
    (v2("192.0.2.7", cmd=0x11), "PROXY v2: unknown version 1"),
    (v2("192.0.2.7", cmd=0x22), "PROXY v2: unknown command 2"),
    (SIG + b"\x21\x12\x00\x0c" + bytes(12), "PROXY v2: family and transport 0x12 refused"),
    (SIG + b"\x21\x11\x07\xd0", "PROXY v2: address block of 2000 octets, more than 1536"),
    (SIG + b"\x21\x11\x00\x08" + bytes(8), "PROXY v2: address block of 8 octets, too short"),
    (v2("192.0.2.7", tlvs=b"\x04\x00\x09x"), "PROXY v2: malformed TLV"),
], ids=["garbage", "v1-too-long", "v1-port", "v1-address", "v1-bare-lf", "v1-protocol",
        "v2-version", "v2-command", "v2-udp", "v2-block-too-long", "v2-block-too-short",
        "v2-tlv-overrun"])
def test_bad_headers_close_without_a_word(make_daemon, data, reason):
    d = proxy_daemon(make_daemon)
    with d.client() as c:
        c.send(data)
        assert c.wait_closed(5)
        assert c.buf == b""
    assert d.wait_log(r"smtp proxy-failed address=127\.0\.0\.1 port=\d+ reason=\"%s"
                      % reason.replace(".", r"\."))
    assert " smtp connected address=192.0.2" not in d.log()


def test_truncated_header_is_closed(make_daemon):
    d = proxy_daemon(make_daemon)
    with d.client() as c:
        c.send(v2("192.0.2.7")[:20])
        c.sock.shutdown(socket.SHUT_WR)
        assert c.wait_closed(5)
        assert c.buf == b""
    assert d.wait_log(r"smtp proxy-failed address=127\.0\.0\.1 port=\d+ "
                      r"reason=\"closed within the header\"")


def test_a_header_that_never_comes_times_out_and_blocks_nothing(make_daemon):
    d = proxy_daemon(make_daemon)
    slow = d.client(timeout=15)
    try:
        slow.send(b"PROXY TCP4 192.0.2.7 ")
        # Meanwhile another connection is served at once.
        with d.client() as c:
            c.send(v1("192.0.2.8"))
            c.ehlo()
            c.send_message("a@example.org", ["x@example.test"], BODY)
        assert slow.wait_closed(10)
        assert slow.buf == b""
    finally:
        slow.close()
    assert d.wait_log(r"smtp proxy-failed address=127\.0\.0\.1 port=\d+ "
                      r"reason=\"no header within 5 s\"")
    assert len(d.messages()) == 1


def test_listener_without_proxy_v2_does_not_honour_a_header(make_daemon):
    d = make_daemon(rules=SRC_RULES)
    with d.client() as c:
        c.send(v1("192.0.2.7"))
        c.greeting()
        r = c.reply()
        assert r.is_(500, "5.5.2"), r
        c.expect("EHLO client.test", 250)
        c.expect("MAIL FROM:<a@example.org>", 250)
        r = c.cmd("RCPT TO:<x@example.test>")
        assert r.code == 550, r
        c.expect("RCPT TO:<y@other.test>", 250)
        c.expect("DATA", 354)
        c.send(BODY + b".\r\n")
        assert c.reply().code == 250
    (m,) = d.wait_messages(1)
    assert received(m) == "Received: from client.test (unknown [127.0.0.1])"
    assert "address=192.0.2.7" not in d.log()
    assert connected(d, r"address=127\.0\.0\.1 port=\d+")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl(1)")
    return Pki(tmp_path_factory.mktemp("pki"))


def test_smtps_reads_the_header_before_the_handshake(make_daemon, pki):
    d = proxy_daemon(make_daemon, "smtps pki mx.test.example proxy-v2", extra=pki.config())
    with SMTPRaw(d.port) as c:
        c.send(v2("192.0.2.9", sport=4650, dport=465))
        c.tls()
        c.ehlo()
        c.send_message("a@example.org", ["x@example.test"], BODY)
    (m,) = d.wait_messages(1)
    assert received(m) == "Received: from client.test (unknown [192.0.2.9])"
    assert " with ESMTPS " in m.text.split("\n\n")[0]
    assert connected(d, r"address=192\.0\.2\.9 port=4650 proxy=127\.0\.0\.1:\d+ "
                        r"proxy-header=v2")


def test_tls_the_proxy_terminated_is_logged_not_trusted(make_daemon, pki):
    d = proxy_daemon(make_daemon, "tls-require pki mx.test.example proxy-v2",
                     extra=pki.config())
    ssl = b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3") + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
    with SMTPRaw(d.port) as c:
        c.send(v2("192.0.2.10", tlvs=tlv(0x20, ssl)))
        c.ehlo()
        # tls-require: the session itself is in clear, whatever the proxy says.
        c.expect("MAIL FROM:<a@example.org>", 530, "5.7.0")
    assert connected(d, r"address=192\.0\.2\.10 port=40000 proxy=127\.0\.0\.1:\d+ "
                        r"proxy-header=v2 proxy-tls=TLSv1\.3 "
                        r"proxy-cipher=TLS_AES_128_GCM_SHA256 proxy-client-cert=none")


LINKFILTER = r'''
import sys
trace = open(sys.argv[1], "a", buffering=1)
for raw in sys.stdin:
    line = raw.rstrip("\n")
    if line == "config|ready":
        print("register|report|smtp-in|link-connect", flush=True)
        print("register|ready", flush=True)
    elif line.startswith("report|"):
        trace.write(line + "\n")
'''


def test_filters_are_told_the_header_addresses(make_daemon, tmp_path):
    prog, trace = tmp_path / "linkfilter.py", tmp_path / "trace"
    prog.write_text(LINKFILTER)
    trace.write_text("")
    os.chmod(prog, 0o644)
    os.chmod(trace, 0o666)
    py = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
    d = proxy_daemon(make_daemon, 'proxy-v2 filter "links"',
                     extra='filter "links" proc-exec "%s %s %s"' % (py, prog, trace))
    with d.client() as c:
        c.send(v1("192.0.2.7", "198.51.100.1", 40000, 2525))
        c.ehlo()
    with d.client() as c:
        c.send(v2("2001:db8::7", "2001:db8::25", 40001, 25))
        c.ehlo()

    def links():
        return [l.split("|")[6:] for l in trace.read_text().splitlines()
                if "|link-connect|" in l]

    assert wait_until(lambda: len(links()) >= 2, 10), trace.read_text()
    assert links()[-2:] == [["<unknown>", "fail", "192.0.2.7:40000", "198.51.100.1:2525"],
                            ["<unknown>", "fail", "[2001:db8::7]:40001", "[2001:db8::25]:25"]]


# ------------------------------------------------------------------ a real haproxy

HAPROXY_CONF = """\
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend in_v2
    bind 127.0.0.1:%(v2)d
    default_backend smtpd_v2

backend smtpd_v2
    server s1 127.0.0.1:%(smtpd)d send-proxy-v2

frontend in_v1
    bind 127.0.0.1:%(v1)d
    default_backend smtpd_v1

backend smtpd_v1
    server s1 127.0.0.1:%(smtpd)d send-proxy
"""


@pytest.fixture
def haproxy(tmp_path):
    """Starts haproxy in the foreground for a daemon's port: start(port) -> (v2 port,
    v1 port); stopped by PID at the end."""
    exe = shutil.which("haproxy") or ("/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy")
                                      else None)
    if exe is None:
        pytest.skip("needs haproxy (Debian package haproxy)")
    procs = []

    def start(smtpd_port):
        ports = {"v2": free_port(), "v1": free_port(), "smtpd": smtpd_port}
        conf = tmp_path / "haproxy.cfg"
        conf.write_text(HAPROXY_CONF % ports)
        log = open(tmp_path / "haproxy.log", "ab")
        p = subprocess.Popen([exe, "-db", "-f", str(conf)], stdin=subprocess.DEVNULL,
                             stdout=log, stderr=log, cwd=tmp_path)
        log.close()
        procs.append(p)

        def listening():
            assert p.poll() is None, (tmp_path / "haproxy.log").read_text()
            for port in (ports["v2"], ports["v1"]):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                except OSError:
                    return False
            return True

        assert wait_until(listening, 10), (tmp_path / "haproxy.log").read_text()
        return ports["v2"], ports["v1"]

    yield start
    for p in procs:
        stop_process(p, grace=5.0)


@pytest.mark.parametrize("version,source", [("v2", "127.0.0.5"), ("v1", "127.0.0.6")])
def test_through_haproxy(make_daemon, haproxy, version, source):
    d = proxy_daemon(make_daemon)
    ports = dict(zip(("v2", "v1"), haproxy(d.port)))
    with SMTPRaw(ports[version], source=source) as c:
        cport = c.sock.getsockname()[1]
        r = c.ehlo()
        assert r.lines[0].startswith("250-mx.test.example"), r
        c.send_message("a@example.org", ["x@example.test"], BODY)
        assert [r.code for r in c.until_quit()] == [221]
    (m,) = d.wait_messages(1)
    assert received(m) == "Received: from client.test (unknown [%s])" % source
    assert connected(d, r"address=%s port=%d proxy=127\.0\.0\.1:\d+ proxy-header=%s"
                     % (source.replace(".", r"\."), cport, version))
