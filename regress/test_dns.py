"""The engine's DNS resolver, seen through an outgoing session to a relay host given by
name (`relay host smtp://NAME:PORT`): the name is resolved through the test's DNS
servers (regress/dnstest.py), the session connects to the address found, and the
resolver's `dns query` log lines and the servers' question logs tell what was asked.

Covered: A, AAAA (IPv6 first), a CNAME, /etc/hosts first, the search domains, a
truncated UDP answer asked again over TCP, SERVFAIL from the first server then the
second, a server that never answers (the recipients are deferred, nothing hangs), an
answer with a wrong id first (ignored), the cache (one query for two sessions, a new one
after the TTL), negative caching, and dnsmasq from Debian as the nameserver.
"""

import os
import re
import shutil
import socket
import subprocess
import threading
import time

import pytest

from conftest import wait_until
from dnstest import POISON, dns_world  # noqa: F401 - the fixture

RELAY = "relay.dns.test"
SENDER = "sender@example.test"


class Sink:
    """An SMTP server on `host` (IPv4 or IPv6) that accepts every message; counts the
    connections that ended."""

    def __init__(self, host="127.0.0.1"):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.messages = []  # recipient lists
        self.closed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()

    def _run(self):
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            try:
                self._serve(c)
            except OSError:
                pass
            finally:
                c.close()
                self.closed += 1

    def _serve(self, c):
        c.settimeout(10)
        f = c.makefile("rb")

        def say(s):
            c.sendall(s.encode() + b"\r\n")

        say("220 sink.test ESMTP")
        rcpts = []
        for _ in range(1000):
            line = f.readline(4096)
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                say("250-sink.test\r\n250 PIPELINING")
            elif verb == b"RCPT":
                rcpts.append(re.search(rb"<([^>]*)>", line).group(1).decode())
                say("250 2.1.5 ok")
            elif verb == b"DATA":
                say("354 go ahead")
                while f.readline(65536) not in (b".\r\n", b""):
                    pass
                self.messages.append(rcpts)
                rcpts = []
                say("250 2.0.0 accepted")
            elif verb == b"QUIT":
                say("221 2.0.0 bye")
                return
            else:
                say("250 2.0.0 ok")

    def wait(self, n, timeout=15):
        return wait_until(lambda: len(self.messages) >= n, timeout)


def rules(port, host=RELAY):
    return ('action "out" relay host "smtp://%s:%d"\n'
            'match from any for domain "relay.test" action "out"\n' % (host, port))


def start(world, sink, host=RELAY, options="timeout:1 attempts:2", **kw):
    return world.daemon(rules=rules(sink.port, host), deliver=True, options=options, **kw)


def send(d, rcpt="someone@relay.test"):
    with d.client() as c:
        c.ehlo()
        msgid = c.send_message(SENDER, [rcpt], b"Subject: dns\r\n\r\nhello\r\n")
        c.until_quit()
    return msgid


def records(more=None):
    r = {(RELAY, "A"): ["127.0.0.1"]}
    r.update(more or {})
    return r


def test_relay_host_by_name(dns_world):
    """A and AAAA asked (absolute name), the A record used (AAAA: NODATA)."""
    srv = dns_world.server(records())
    with Sink() as sink:
        d = start(dns_world, sink)
        send(d)
        assert sink.wait(1), d.log()[-3000:]
    assert srv.asked(RELAY, "A") == 1 and srv.asked(RELAY, "AAAA") == 1, srv.questions
    assert d.wait_log(r"dns query name=relay\.dns\.test type=A result=ok records=1 ttl=60")
    assert d.wait_log(r"dns query name=relay\.dns\.test type=AAAA result=nodata")


def test_ipv6_first_and_cname(dns_world):
    """The name is a CNAME of a host with A and AAAA: the chain is followed and the
    IPv6 address is used first."""
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    srv = dns_world.server(records({("alias.dns.test", "CNAME"): [RELAY + "."],
                                    (RELAY, "AAAA"): ["::1"]}))
    with Sink("::1") as sink:
        d = start(dns_world, sink, host="alias.dns.test")
        send(d)
        assert sink.wait(1), d.log()[-3000:]
    assert srv.asked("alias.dns.test", "AAAA") == 1
    assert d.wait_log(r"dns query name=alias\.dns\.test type=AAAA result=ok records=1")


def test_hosts_file_first_and_search_domains(dns_world):
    """/etc/hosts answers without a query; a short name gets the search domains."""
    srv = dns_world.server(records())
    with Sink() as sink:
        d = start(dns_world, sink, host="relay.hosts.test",
                  hosts="127.0.0.1 localhost relay.hosts.test\n")
        send(d)
        assert sink.wait(1), d.log()[-3000:]
        assert srv.questions == []
        d2 = dns_world.daemon(rules=rules(sink.port, "relay"), deliver=True,
                              options="timeout:1", search="dns.test")
        send(d2)
        assert sink.wait(2), d2.log()[-3000:]
    assert srv.asked(RELAY, "A") == 1 and srv.asked("relay", "A") == 0, srv.questions


def test_truncated_answer_goes_over_tcp(dns_world):
    srv = dns_world.server(records(), truncate=True)
    with Sink() as sink:
        d = start(dns_world, sink)
        send(d)
        assert sink.wait(1), d.log()[-3000:]
    assert srv.asked(RELAY, "A", "udp") == 1 and srv.asked(RELAY, "A", "tcp") == 1, srv.questions


def test_servfail_then_the_second_server(dns_world):
    bad = dns_world.server(records(), rcode="SERVFAIL")
    good = dns_world.server(records())
    with Sink() as sink:
        d = start(dns_world, sink)
        send(d)
        assert sink.wait(1), d.log()[-3000:]
    assert bad.asked(RELAY, "A") == 1 and good.asked(RELAY, "A") == 1
    assert d.wait_log(r"dns query name=relay\.dns\.test type=A server=%s:53 failed: SERVFAIL"
                      % re.escape(bad.addr))


def test_silent_server_defers_the_recipients(dns_world):
    """No answer at all: after every try (1 s, 2 attempts) the session's recipients are
    deferred with a line that says why; the daemon goes on serving meanwhile."""
    srv = dns_world.server(records(), silent=True)
    with Sink() as sink:
        d = start(dns_world, sink)
        t0 = time.monotonic()
        send(d)
        # The daemon is not stuck while the resolver waits.
        with d.client() as c:
            c.ehlo()
            c.until_quit()
        assert d.wait_log(r"to=<someone@relay\.test> result=TempFail retry-in=\d+s "
                          r"stat=\"cannot resolve relay\.dns\.test: temporary DNS failure: "
                          r"no answer from the nameservers \(last: timeout\)\"", 15), d.log()[-3000:]
        assert time.monotonic() - t0 < 10
        assert sink.messages == [] and sink.closed == 0
    assert srv.asked(RELAY, "A") == 2 and srv.asked(RELAY, "AAAA") == 2, srv.questions
    code, q, _ = d.smtpctl("show", "queue")
    assert "someone@relay.test" in q, q


def test_wrong_id_is_ignored(dns_world):
    """Each answer comes after one with another id (naming 127.0.0.66): it is ignored."""
    dns_world.server(records(), wrong_id_first=True)
    with Sink() as sink:
        d = start(dns_world, sink)
        send(d)
        assert sink.wait(1), d.log()[-3000:]
    assert d.wait_log(r"name=relay\.dns\.test type=A: a datagram that is not the answer ignored")
    assert POISON not in d.log()


def test_cache_then_a_new_query_after_the_ttl(dns_world):
    srv = dns_world.server(records(), ttl=3)
    with Sink() as sink:
        d = start(dns_world, sink)
        send(d, "a@relay.test")
        assert sink.wait(1) and wait_until(lambda: sink.closed == 1, 10), d.log()[-3000:]
        t1 = time.monotonic()
        send(d, "b@relay.test")
        assert sink.wait(2) and wait_until(lambda: sink.closed == 2, 10), d.log()[-3000:]
        assert srv.asked(RELAY, "A") == 1, srv.questions
        assert d.wait_log(r"dns query name=relay\.dns\.test type=A result=ok records=1 ttl=[0-3] cached")
        time.sleep(max(0.0, 3.2 - (time.monotonic() - t1)))
        send(d, "c@relay.test")
        assert sink.wait(3), d.log()[-3000:]
    assert srv.asked(RELAY, "A") == 2, srv.questions


def test_negative_answers_are_cached(dns_world):
    """NXDOMAIN (with a SOA of MINIMUM 60) defers the recipient; the retry asks nothing."""
    srv = dns_world.server(records(), neg_ttl=60)
    with Sink() as sink:
        d = start(dns_world, sink, host="nx.dns.test")
        send(d)
        line = r"stat=\"cannot resolve nx\.dns\.test: no address\""
        assert d.wait_log(line), d.log()[-3000:]
        assert d.smtpctl("schedule", "all")[0] == 0
        assert wait_until(lambda: len(re.findall(line, d.log())) == 2, 10), d.log()[-3000:]
        assert sink.messages == []
    assert srv.asked("nx.dns.test", "A") == 1 and srv.asked("nx.dns.test", "AAAA") == 1
    assert d.wait_log(r"dns query name=nx\.dns\.test type=A result=nxdomain cached")


def test_dnsmasq_as_the_nameserver(dns_world, tmp_path):
    """Debian's dnsmasq (dnsmasq-base) serves the relay host's address."""
    exe = shutil.which("dnsmasq") or ("/usr/sbin/dnsmasq" if os.path.exists("/usr/sbin/dnsmasq") else None)
    if not exe:
        pytest.skip("dnsmasq not installed (dnsmasq-base)")
    addr = "127.0.0.156"
    log = open(tmp_path / "dnsmasq.log", "wb")
    p = subprocess.Popen([exe, "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                          "--port=53", "--listen-address=" + addr, "--bind-interfaces",
                          "--local=/test/", "--log-queries", "--log-facility=-",
                          "--host-record=relay.dnsmasq.test,127.0.0.1"],
                         stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: "started" in (tmp_path / "dnsmasq.log").read_text(), 10)
        dns_world.extra_addresses.append(addr)
        with Sink() as sink:
            d = start(dns_world, sink, host="relay.dnsmasq.test")
            send(d)
            assert sink.wait(1), d.log()[-3000:]
        assert d.wait_log(r"dns query name=relay\.dnsmasq\.test type=A result=ok records=1")
        assert "query[A] relay.dnsmasq.test" in (tmp_path / "dnsmasq.log").read_text()
    finally:
        p.terminate()
        p.wait(10)
        log.close()
