"""Relaying by MX: exchangers looked up in a test DNS server, tried in order, and the
outgoing TLS they offer (opportunistic, verified, DANE).

Everything runs in a private network namespace (regress/netns.py): the daemon under
test relays to receivers (second smtpd instances and Postfix's smtp-sink) on port 25 of
127.0.0.x addresses, and its /etc/resolv.conf names only the test DNS server
(regress/dnstest.py). Nothing leaves the namespace.
"""

import re
import socket
import subprocess
import time

import pytest

import dnstest
import netns
import tlscerts
from conftest import Daemon, SMTPRaw, wait_until

SENDER_RULES = """
action "out" relay{relay}
match from any for any action "out"
"""


def rx_rules(domains):
    """Rules of a receiver that keeps (in its spool) mail for `domains`."""
    table = ", ".join('"@%s" = root' % d for d in domains)
    return ('table vusers { %s }\n'
            'action "virt" maildir "{MAILDIR}/%%{user.username}" virtual <vusers>\n'
            'match from any for any action "virt"\n' % table)


class Net:
    """A namespace with a DNS server, receivers and the daemon under test."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.ns = netns.NetNS()
        self.ns.enter()
        self.world = dnstest.DnsWorld(tmp_path)
        self.dns = self.world.server({})
        self.sinks = []
        self.receivers = []

    def records(self, **kw):
        """Replaces the DNS records: mx={domain: ["10 host."]}, a={host: [addr]},
        tlsa={name: ["3 1 1 HEX"]}, txt={...}, aaaa={...}."""
        rec = {}
        for kind, table in kw.items():
            for name, values in table.items():
                rec[(name, kind.upper())] = values
        self.dns.records = rec

    def sink(self, addr, flags=()):
        s = netns.Sink(addr, 25, flags, workdir=str(self.tmp))
        self.sinks.append(s)
        assert wait_until(lambda: _listening(addr), 5), "smtp-sink did not start on " + addr
        return s

    def receiver(self, addr, domains, listen_opts="", extra="", hostname=None):
        """A second smtpd on ADDR:25 that keeps mail for `domains` in its spool."""
        d = Daemon(self.tmp / ("rx-" + addr), rules=rx_rules(domains), extra=extra,
                   listen_host=addr, hostname=hostname or "rx-%s.test" % addr,
                   name="rx" + addr.replace(".", "-"), listen_opts=listen_opts)
        d.start(port=25)
        self.receivers.append(d)
        return d

    def sender(self, relay="", extra=""):
        """The daemon under test: it relays everything by MX (action options `relay`)."""
        rules = SENDER_RULES.replace("{relay}", (" " + relay) if relay else "")
        return self.world.daemon(rules=rules, extra=extra, deliver=True)

    def close(self):
        try:
            for r in self.receivers:
                r.stop()
            for s in self.sinks:
                s.close()
            self.world.close()
        finally:
            self.ns.close()


def _listening(addr, port=25):
    try:
        socket.create_connection((addr, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def net_for(tmp_path):
    """A Net for one test (the body of the `net` fixtures of the relay test modules):
    the test is skipped, with the reason, when namespaces or the DNS server cannot run
    here."""
    why = netns.can_run() or dnstest.can_run()
    if why:
        pytest.skip(why)
    n = Net(tmp_path)
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def net(tmp_path):
    if not __import__("shutil").which("smtp-sink"):
        pytest.skip("smtp-sink (postfix) not installed")
    yield from net_for(tmp_path)


def send(d, rcpts, subject="mx", sender="alice@origin.test"):
    with d.client() as c:
        c.ehlo()
        msgid = c.send_message(sender, rcpts, ("Subject: %s\r\nMessage-ID: <%s@origin.test>\r\n"
                                               "\r\nhello\r\n" % (subject, subject)).encode())
        c.until_quit()
    return msgid


def test_exchangers_in_order_and_the_next_when_one_refuses(net):
    # mx1 (preferred) has no server: connection refused; mx2 takes the mail.
    net.records(mx={"d1.test": ["10 mx1.d1.test.", "20 mx2.d1.test."]},
                a={"mx1.d1.test": ["127.0.0.2"], "mx2.d1.test": ["127.0.0.3"]})
    rx = net.receiver("127.0.0.3", ["d1.test"])
    d = net.sender()
    send(d, ["bob@d1.test"], "order")
    (m,) = rx.wait_messages(1, timeout=15)
    assert b"Subject: order" in m.data
    assert d.wait_log(r"mta transaction host=mx2\.d1\.test", 15), d.log()[-3000:]
    log = d.log()
    assert re.search(r"mta attempt-failed host=mx1\.d1\.test address=127\.0\.0\.2:25", log), log[-3000:]
    assert re.search(r"mta transaction host=mx2\.d1\.test address=127\.0\.0\.3:25", log), log[-3000:]
    assert net.dns.asked("d1.test", "MX") == 1
    # The address that refused is skipped for a while, by every destination.
    out = d.ctl("show hosts")
    assert re.search(r"127\.0\.0\.2 mx1\.d1\.test conns=0 failures=1 skipped=\d+s", out), out
    assert "mx:d1.test" in d.ctl("show routes")


def test_a_421_greeting_sends_the_mail_to_the_next_exchanger(net):
    net.records(mx={"d2.test": ["10 mx1.d2.test.", "20 mx2.d2.test."]},
                a={"mx1.d2.test": ["127.0.0.2"], "mx2.d2.test": ["127.0.0.3"]})
    bad = net.sink("127.0.0.2", ["-Q", "CONNECT"])
    good = net.sink("127.0.0.3")
    d = net.sender()
    send(d, ["bob@d2.test"], "greet421")
    assert wait_until(lambda: len(good.message_ids()) == 1, 15), d.log()[-3000:]
    assert bad.message_ids() == []


def test_a_silent_exchanger_times_out_and_the_next_takes_the_mail(net):
    net.records(mx={"slow.test": ["10 mx1.slow.test.", "20 mx2.slow.test."]},
                a={"mx1.slow.test": ["127.0.0.13"], "mx2.slow.test": ["127.0.0.14"]})
    # mx1 accepts connections (the kernel does) and never says a word.
    silent = socket.socket()
    silent.bind(("127.0.0.13", 25))
    silent.listen(8)
    rx = net.receiver("127.0.0.14", ["slow.test"])
    try:
        d = net.sender(extra="mta timeout 2s")
        t0 = time.monotonic()
        send(d, ["bob@slow.test"], "silent")
        rx.wait_messages(1, timeout=20)
        assert time.monotonic() - t0 >= 2
        assert d.wait_log(r"mta attempt-failed host=mx1\.slow\.test .*reason=\"timeout", 15), \
            d.log()[-3000:]
    finally:
        silent.close()


def test_no_mx_means_the_domain_itself(net):
    net.records(a={"plain.test": ["127.0.0.4"]})
    rx = net.receiver("127.0.0.4", ["plain.test"])
    d = net.sender()
    send(d, ["bob@plain.test"], "implicit")
    rx.wait_messages(1, timeout=15)


@pytest.mark.parametrize("case", ["nullmx", "nxdomain", "noaddress", "loop"])
def test_destinations_that_cannot_take_mail_bounce_at_once(net, case):
    net.records(mx={"null.test": ["0 ."], "noaddr.test": ["10 gone.noaddr.test."],
                    "loop.test": ["10 mx.test.example."]})
    want = {"nullmx": ("null.test", "556 5.1.10"), "nxdomain": ("missing.test", "550 5.1.2"),
            "noaddress": ("noaddr.test", "550 5.4.4"), "loop": ("loop.test", "554 5.4.6")}
    domain, code = want[case]
    d = net.sender()
    send(d, ["bob@" + domain], case)
    m = d.wait_log(r"result=PermFail stat=\"%s" % re.escape(code), timeout=15)
    assert m, d.log()[-3000:]
    # No second attempt: the envelope is gone (the bounce to origin.test fails too).
    assert wait_until(lambda: d.ctl("show queue").strip() == "", 15), d.ctl("show queue")


def test_a_failing_dns_server_defers_then_the_mail_goes(net):
    net.records(mx={"flaky.test": ["10 mx.flaky.test."]}, a={"mx.flaky.test": ["127.0.0.5"]})
    rx = net.receiver("127.0.0.5", ["flaky.test"])
    net.dns.rcode = "SERVFAIL"
    d = net.sender()
    send(d, ["bob@flaky.test"], "servfail")
    assert d.wait_log(r"result=TempFail .*stat=\"451 4\.4\.3 MX lookup for flaky\.test", 20), \
        d.log()[-3000:]
    net.dns.rcode = None
    code, out, _ = d.smtpctl("schedule", "all")
    assert code == 0, out
    rx.wait_messages(1, timeout=15)


def test_per_address_failures_do_not_hold_other_domains(net):
    # Two domains: one whose only exchanger is down, one that works.
    net.records(mx={"down.test": ["10 mx.down.test."], "up.test": ["10 mx.up.test."]},
                a={"mx.down.test": ["127.0.0.6"], "mx.up.test": ["127.0.0.7"]})
    rx = net.receiver("127.0.0.7", ["up.test"])
    d = net.sender()
    send(d, ["bob@down.test"], "down1")
    assert d.wait_log(r"result=TempFail", 15)
    send(d, ["bob@up.test"], "up1")
    rx.wait_messages(1, timeout=15)
    routes = d.ctl("show routes")
    assert re.search(r"out mx:down\.test sessions=0 waiting=0 failures=1 suspended=\d+s", routes), routes
    assert re.search(r"out mx:up\.test sessions=\d waiting=0 failures=0", routes), routes


# ---------------------------------------------------------------- TLS and DANE

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return tlscerts.Pki(tmp_path_factory.mktemp("mxpki"))


def tls_receiver(net, certs, addr, domains):
    extra = certs.config()
    return net.receiver(addr, domains, listen_opts="tls pki mx.test.example", extra=extra,
                        hostname="mx.test.example")


def spki_sha256(cert):
    pub = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-pubkey"],
                         check=True, capture_output=True).stdout
    der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                         check=True, capture_output=True).stdout
    return __import__("hashlib").sha256(der).hexdigest()


def test_opportunistic_starttls_with_any_certificate(net, certs):
    net.records(mx={"tls.test": ["10 mx.tls.test."]}, a={"mx.tls.test": ["127.0.0.8"]})
    rx = tls_receiver(net, certs, "127.0.0.8", ["tls.test"])
    d = net.sender()
    send(d, ["bob@tls.test"], "opp")
    (m,) = rx.wait_messages(1, timeout=15)
    assert re.search(rb"with ESMTPS id \S+ \(TLSv1\.[23]:", m.data), m.data[:400]
    assert d.wait_log(r"mta transaction host=mx\.tls\.test address=127\.0\.0\.8:25 "
                     r"tls=TLSv1\.[23]:\S+:\d+ verified=no policy=opportunistic", 15), \
        d.log()[-3000:]


def test_tls_verify_defers_a_certificate_not_for_the_exchanger(net, certs):
    # The certificate is for mx.test.example, signed by a CA the sender does not trust.
    net.records(mx={"strict.test": ["10 mx.strict.test."]}, a={"mx.strict.test": ["127.0.0.9"]})
    rx = tls_receiver(net, certs, "127.0.0.9", ["strict.test"])
    d = net.sender(relay="tls")
    send(d, ["bob@strict.test"], "strict")
    assert d.wait_log(r"result=TempFail", 20), d.log()[-3000:]
    assert d.wait_log(r"mta disconnected host=mx\.strict\.test .*reason=\"TLS: invalid peer "
                     r"certificate: UnknownIssuer", 15), d.log()[-3000:]
    assert rx.messages() == []


def _dane(net, certs, addr, domain, tlsa, ad=True):
    host = "mx." + domain
    net.records(mx={domain: ["10 %s." % host]}, a={host: [addr]},
                tlsa={"_25._tcp." + host: [tlsa]})
    net.dns.ad = ad
    rx = tls_receiver(net, certs, addr, [domain])
    d = net.sender()
    send(d, ["bob@" + domain], "dane-" + domain.split(".")[0])
    return rx, d


def test_dane_ee_match_is_delivered_and_verified(net, certs):
    rx, d = _dane(net, certs, "127.0.0.10", "dane.test", "3 1 1 " + spki_sha256(certs.mx[0]))
    rx.wait_messages(1, timeout=15)
    assert d.wait_log(r"mta transaction host=mx\.dane\.test .* verified=dane-ee policy=dane", 15), d.log()[-3000:]
    assert net.dns.asked("_25._tcp.mx.dane.test", "TLSA") >= 1


def test_dane_mismatch_defers_and_never_falls_back_to_plain_text(net, certs):
    rx, d = _dane(net, certs, "127.0.0.11", "danebad.test", "3 1 1 " + "00" * 32)
    assert d.wait_log(r"result=TempFail", 20), d.log()[-3000:]
    time.sleep(1)
    assert rx.messages() == []
    assert not re.search(r"mta transaction host=mx\.danebad\.test", d.log())


def test_an_unauthenticated_tlsa_answer_is_ignored(net, certs):
    # Without the AD bit the records prove nothing: opportunistic TLS, delivered.
    rx, d = _dane(net, certs, "127.0.0.12", "insecure.test", "3 1 1 " + "00" * 32, ad=False)
    rx.wait_messages(1, timeout=15)
    assert d.wait_log(r"mta transaction host=mx\.insecure\.test .* policy=opportunistic", 15), d.log()[-3000:]


def test_one_message_from_swaks_through_mx_and_dane_to_the_receiver(net, certs):
    """The path a message takes, seen in both daemons' logs: swaks submits, the MX and
    TLSA records are looked up, STARTTLS is verified by DANE, the receiver keeps it."""
    host = "mx.trace.test"
    net.records(mx={"trace.test": ["10 %s." % host]}, a={host: ["127.0.0.15"]},
                tlsa={"_25._tcp." + host: ["3 1 1 " + spki_sha256(certs.mx[0])]})
    net.dns.ad = True
    rx = tls_receiver(net, certs, "127.0.0.15", ["trace.test"])
    d = net.sender()
    r = subprocess.run(["swaks", "--server", "127.0.0.1:%d" % d.port, "--from",
                        "alice@origin.test", "--to", "bob@trace.test", "--header",
                        "Subject: trace", "--body", "traced"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    (m,) = rx.wait_messages(1, timeout=15)
    for pattern in [r"smtp message msgid=\w+ .*from=<alice@origin\.test>",
                    r"dns query name=trace\.test type=MX result=ok",
                    r"dns query name=mx\.trace\.test type=A result=ok",
                    r"dns query name=_25\._tcp\.mx\.trace\.test type=TLSA result=ok",
                    r"mta transaction host=mx\.trace\.test address=127\.0\.0\.15:25 "
                    r"tls=TLSv1\.3:\S+ verified=dane-ee policy=dane .*result=\"250 ",
                    r"mda delivery .* to=<bob@trace\.test> .*result=Ok"]:
        assert d.wait_log(pattern, 15), (pattern, d.log()[-3000:])
    assert rx.wait_log(r"smtp tls .*version=TLSv1\.3", 15) or "ESMTPS" in received_of(m)
    assert rx.wait_log(r"smtp message msgid=\w+ .*from=<alice@origin\.test>", 15)


def received_of(m):
    return m.data.split(b"\n\n", 1)[0].decode(errors="replace")
