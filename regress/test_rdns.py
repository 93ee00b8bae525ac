"""Reverse DNS of clients for the built-in `rdns` and `fcrdns` checks.

The daemon runs in a private mount namespace whose /etc/resolv.conf names a small DNS
server of the test on 127.0.0.153 (port 53: root only), so that no query ever reaches
the machine's nameserver. The server answers the client's PTR (127.0.0.1 ->
NAME) and NAME's A record, as each test sets them.
"""

import os
import shutil
import socket
import struct
import subprocess
import threading
import time

import pytest

from filterlib import FilterDaemon

DNS_ADDR = ("127.0.0.153", 53)
PTR = "1.0.0.127.in-addr.arpa"


class FakeDNS:
    """Answers PTR and A questions from `records`: {(name, qtype): value}; NXDOMAIN
    for the rest. Counts the questions it got."""

    def __init__(self, records):
        self.records = records
        self.questions = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(DNS_ADDR)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()

    @staticmethod
    def _name(b, i):
        parts = []
        while b[i]:
            parts.append(b[i + 1:i + 1 + b[i]].decode())
            i += 1 + b[i]
        return ".".join(parts), i + 1

    @staticmethod
    def _enc(n):
        return b"".join(bytes([len(p)]) + p.encode() for p in n.split(".")) + b"\0"

    def _serve(self):
        for _ in range(10000):  # bounded; each turn waits at most 0.2 s
            if self.stop.is_set():
                return
            try:
                q, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            name, i = self._name(q, 12)
            qtype = struct.unpack("!H", q[i:i + 2])[0]
            self.questions.append((name, qtype))
            value = self.records.get((name, qtype))
            head = q[:2] + (b"\x81\x80" if value else b"\x81\x83") + q[4:6]
            head += struct.pack("!H", 1 if value else 0) + b"\0\0\0\0"
            body = q[12:i + 4]
            if value:
                rdata = self._enc(value) if qtype == 12 else socket.inet_aton(value)
                body += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
            self.sock.sendto(head + body, peer)


def _can_run():
    if os.geteuid() != 0:
        return "needs root (port 53 and a private mount namespace)"
    if not shutil.which("unshare"):
        return "unshare(1) not installed (util-linux)"
    return None


@pytest.fixture
def dns_daemon(tmp_path):
    why = _can_run()
    if why:
        pytest.skip(why)
    made = []
    servers = []
    os.chmod(tmp_path, 0o755)
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver %s\n" % DNS_ADDR[0])
    os.chmod(resolv, 0o644)

    def wrap(argv):
        cmd = "mount --bind '%s' /etc/resolv.conf && exec %s" % (
            resolv, " ".join("'%s'" % a for a in argv))
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", cmd]

    def make(records, filters, listen_filter):
        dns = FakeDNS(records)
        servers.append(dns)
        d = FilterDaemon(tmp_path / ("smtpd%d" % len(made)), filters=filters,
                         listen_filter=listen_filter, wrapper=wrap, name="smtpd%d" % len(made))
        made.append(d)
        d.start()
        return d, dns

    yield make
    for d in made:
        d.stop()
    for s in servers:
        s.close()


FILTERS = """
filter "needname" phase connect match !fcrdns disconnect "550 5.7.1 no forward-confirmed name"
filter "tag" phase mail-from match rdns { good.test } junk
"""


def _send(d):
    with d.client() as c:
        c.ehlo()
        msgid = c.send_message("a@origin.example", ["bob@example.test"], b"Subject: x\r\n\r\nhi\r\n")
        c.until_quit()
    return msgid


def test_fcrdns_pass_names_the_client(dns_daemon):
    d, dns = dns_daemon({(PTR, 12): "good.test", ("good.test", 1): "127.0.0.1"},
                        FILTERS, "{ needname, tag }")
    msgid = _send(d)
    assert d.wait_log(r"smtp rdns host=good\.test fcrdns=pass"), d.log()[-2000:]
    (m,) = [m for m in d.wait_messages(1) if m.msgid == msgid]
    assert b"(good.test [127.0.0.1])" in m.data, m.data[:300]
    assert b"X-Spam: Yes" in m.data  # rdns { good.test } matched
    assert (PTR, 12) in dns.questions and ("good.test", 1) in dns.questions


def test_fcrdns_fail_is_refused(dns_daemon):
    # The name resolves, but not back to the client.
    d, _ = dns_daemon({(PTR, 12): "liar.test", ("liar.test", 1): "127.0.0.9"},
                      FILTERS, "{ needname, tag }")
    with d.client() as c:
        r = c.reply()
        assert r.is_(550, "5.7.1"), r
    assert d.wait_log(r"smtp rdns host=liar\.test fcrdns=fail")


def test_no_ptr_record(dns_daemon):
    d, _ = dns_daemon({}, FILTERS, "{ needname, tag }")
    with d.client() as c:
        r = c.reply()
        assert r.is_(550, "5.7.1"), r
    assert d.wait_log(r"smtp rdns host=unknown fcrdns=fail")


def test_no_lookup_without_rdns_checks(dns_daemon):
    # Without rdns/fcrdns checks the daemon asks nothing.
    d, dns = dns_daemon({(PTR, 12): "good.test"}, 'filter "tag" phase mail-from match src 127.0.0.1 junk\n', "tag")
    _send(d)
    time.sleep(0.5)
    assert dns.questions == []
    assert "smtp rdns" not in d.log()
