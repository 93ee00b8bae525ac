"""Relaying by MX to real mail servers: Postfix and OpenSMTPD as the exchangers.

Runs in the private network namespace of test_mx.py: the test DNS server names the
exchangers, the peers of regress/peers.py listen on 127.0.0.x:25 and keep what they
receive in a Maildir of the test, and the daemon under test relays by MX. What each
side logged is checked against the other: our `mta transaction` line carries the
peer's reply, the peer's Received header the TLS it saw.
"""

import hashlib
import re
import subprocess

import pytest

import netns
import peers
import tlscerts
from test_mx import net_for, send, spki_sha256


@pytest.fixture
def net(tmp_path):
    yield from net_for(tmp_path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return tlscerts.Pki(tmp_path_factory.mktemp("peerpki"))


class Peers:
    """Starts Postfix and OpenSMTPD instances in the test's namespace (skipping the
    test, with the reason, when one cannot run here) and stops them all at the end."""

    def __init__(self, net, tmp_path):
        self.net, self.tmp = net, tmp_path
        self.resolv = netns.write_resolv(tmp_path, server=net.dns.addr)
        self.started = []

    def _start(self, cls, missing, addr, domains, cert, **kw):
        why = missing()
        if why:
            pytest.skip(why)
        p = cls(self.tmp / ("%s-%s" % (cls.kind, addr)), addr, domains, self.resolv,
                cert=cert[0] if cert else None, key=cert[1] if cert else None, **kw)
        self.started.append(p)
        return p.start()

    def postfix(self, addr, domains, cert=None, settings=()):
        """Postfix on ADDR:25 for `domains`; STARTTLS with `cert` = (cert, key);
        `settings`, more main.cf lines."""
        return self._start(peers.Postfix, peers.postfix_missing, addr, domains, cert,
                           settings=settings)

    def opensmtpd(self, addr, domains, cert=None):
        """OpenSMTPD on ADDR:25 for `domains`; `tls pki` with `cert` = (cert, key)."""
        return self._start(peers.OpenSMTPD, peers.opensmtpd_missing, addr, domains, cert)

    def stop(self):
        for p in self.started:
            p.stop()


@pytest.fixture
def peer(net, tmp_path):
    p = Peers(net, tmp_path)
    yield p
    p.stop()


def mx(net, domain, addr):
    """One exchanger, mx.DOMAIN at ADDR."""
    net.records(mx={domain: ["10 mx.%s." % domain]}, a={"mx." + domain: [addr]})


def received(message):
    """The peer's own Received header (the first one), unfolded."""
    head = message.split(b"\n\n", 1)[0].decode(errors="replace")
    m = re.search(r"^Received: (.*?)(?=^\S)", head + "\nX", re.S | re.M)
    assert m, head
    return " ".join(m.group(1).split())


def transaction(d, host):
    """Our log's `mta transaction` line for `host`."""
    m = re.search(r"mta transaction host=%s .*" % re.escape(host), d.log())
    assert m, d.log()[-3000:]
    return m.group(0)


def queued_as(line):
    """Postfix's queue id in its 250 reply, as our log shows it."""
    m = re.search(r'result="250 2\.0\.0 Ok: queued as (\w+)"', line)
    assert m, line
    return m.group(1)


# ---------------------------------------------------------------- Postfix

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "starttls"])
def test_relay_by_mx_to_postfix(net, certs, peer, tls):
    mx(net, "pf.test", "127.0.0.60")
    pf = peer.postfix("127.0.0.60", ["pf.test"], cert=certs.mx if tls else None)
    d = net.sender()
    msgid = send(d, ["bob@pf.test"], "pf")
    (m,) = pf.wait_messages(1)
    assert b"Subject: pf" in m, m[:600]
    assert re.search(rb"\(smtpd\) with ESMTP id %s" % msgid.encode(), m), m[:600]
    assert re.search(rb"^Delivered-To: bob@pf\.test$", m, re.M), m[:600]
    rcv = received(m)
    line = transaction(d, "mx.pf.test")
    assert "address=127.0.0.60:25" in line and " msgid=%s " % msgid in line, line
    # The message Postfix queued is the one our log names: its queue id in both.
    qid = queued_as(line)
    assert pf.wait_log(r"postfix/virtual\[\d+\]: %s: to=<bob@pf\.test>.* status=sent" % qid, 15), pf.log()[-3000:]
    assert "id %s" % qid in rcv, rcv
    if tls:
        assert re.search(r"\(using TLSv1\.3 with cipher \S+ \(\d+/\d+ bits\)", rcv), rcv
        assert "with ESMTPS id" in rcv, rcv
        assert re.search(r" tls=TLSv1\.3:\S+:\d+ verified=no policy=opportunistic ", line), line
        assert pf.wait_log(r"Anonymous TLS connection established from \S+\[127\.0\.0\.1\]: "
                         r"TLSv1\.3", 15), pf.log()[-3000:]
    else:
        assert "with ESMTP id" in rcv and "using TLS" not in rcv, rcv
        assert " tls=none " in line, line


def cert_chain(certs):
    """Postfix's certificate file for DANE-TA: other.test.example, then the CA that
    signed it."""
    chain = certs.dir / "other-chain.pem"
    chain.write_bytes(certs.other[0].read_bytes() + certs.ca.read_bytes())
    return chain


def cert_sha256(cert):
    der = subprocess.run(["openssl", "x509", "-in", str(cert), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return hashlib.sha256(der).hexdigest()


@pytest.mark.parametrize("usage", ["dane-ee", "dane-ta"])
def test_dane_verified_starttls_to_postfix(net, certs, peer, usage):
    # DANE-EE: the leaf's public key (3 1 1), whatever names the certificate holds
    # (it is for mx.test.example, the exchanger is mx.dane.test). DANE-TA: the CA's
    # whole certificate (2 0 1), which Postfix sends after its own from its certificate
    # file; the names count then, so the exchanger has the name of the certificate
    # (other.test.example: mx.test.example is the sender's own name).
    if usage == "dane-ee":
        host, cert, tlsa = "mx.dane.test", certs.mx, "3 1 1 " + spki_sha256(certs.mx[0])
    else:
        host, cert = "other.test.example", (cert_chain(certs), certs.other[1])
        tlsa = "2 0 1 " + cert_sha256(certs.ca)
    net.records(mx={"dane.test": ["10 %s." % host]}, a={host: ["127.0.0.61"]},
                tlsa={"_25._tcp." + host: [tlsa]})
    net.dns.ad = True
    pf = peer.postfix("127.0.0.61", ["dane.test"], cert=cert)
    d = net.sender()
    send(d, ["bob@dane.test"], usage)
    (m,) = pf.wait_messages(1)
    rcv = received(m)
    assert re.search(r"\(using TLSv1\.3 with cipher ", rcv) and "with ESMTPS" in rcv, rcv
    line = transaction(d, host)
    assert re.search(r" tls=TLSv1\.3:\S+:\d+ verified=%s policy=dane " % usage, line), line
    assert "id %s" % queued_as(line) in rcv, rcv
    assert net.dns.asked("_25._tcp." + host, "TLSA") >= 1


def test_dane_mismatch_with_postfix_defers_and_sends_nothing(net, certs, peer):
    net.records(mx={"danex.test": ["10 mx.danex.test."]},
                a={"mx.danex.test": ["127.0.0.62"]},
                tlsa={"_25._tcp.mx.danex.test": ["3 1 1 " + "00" * 32]})
    net.dns.ad = True
    pf = peer.postfix("127.0.0.62", ["danex.test"], cert=certs.mx)
    d = net.sender()
    send(d, ["bob@danex.test"], "danex")
    assert d.wait_log(r"to=<bob@danex\.test> result=TempFail", 15), d.log()[-3000:]
    assert not re.search(r"mta transaction host=mx\.danex\.test", d.log()), d.log()[-3000:]
    # Postfix saw the handshake end and never a MAIL command, in TLS or in plain text.
    assert not re.search(r"postfix/smtpd\[\d+\]: \w+: client=", pf.log()), pf.log()[-3000:]
    assert pf.messages() == []


# ---------------------------------------------------------------- OpenSMTPD

def test_relay_by_mx_to_opensmtpd(net, peer):
    mx(net, "os.test", "127.0.0.63")
    osd = peer.opensmtpd("127.0.0.63", ["os.test"])
    d = net.sender()
    send(d, ["bob@os.test"], "osmtpd")
    (m,) = osd.wait_messages(1)
    rcv = received(m)
    assert "(OpenSMTPD) with ESMTP id" in rcv, rcv
    line = transaction(d, "mx.os.test")
    assert " tls=none " in line, line
    # OpenSMTPD's 250 names its message id, the one of its Received header.
    m_id = re.search(r'result="250 2\.0\.0 (\w+) Message accepted for delivery"', line)
    assert m_id and "id %s " % m_id.group(1) in rcv + " ", (line, rcv)
    assert osd.wait_log(r"smtp message msgid=\w+ size=\d+ nrcpt=1 proto=ESMTP", 15)
    assert osd.wait_log(r"mda delivery .* to=<bob@os\.test> .* result=Ok", 15), osd.log()


def test_opensmtpd_offering_starttls(net, certs, peer):
    """OpenSMTPD 6.8 as Debian 12 builds it (with OpenSSL 3) offers STARTTLS and fails
    every handshake: its network process signs through a key another process keeps,
    and OpenSSL 3 reports "missing private key" (its log then says `EVP lib`; fixed
    upstream after 6.8, see bench/RESULTS.md). Against such a build the test checks
    what opportunistic TLS must do then: the same exchanger again in plain text, and
    the mail delivered. Against a build whose TLS works, that TLS was used."""
    mx(net, "ost.test", "127.0.0.64")
    osd = peer.opensmtpd("127.0.0.64", ["ost.test"], cert=certs.mx)
    works, why = peers.tls_handshake_works("127.0.0.64")
    d = net.sender()
    send(d, ["bob@ost.test"], "ostls")
    (m,) = osd.wait_messages(1)
    line = transaction(d, "mx.ost.test")
    if works:
        assert re.search(r" tls=TLSv1\.[23]:\S+:\d+ verified=no policy=opportunistic ", line), line
        assert "with ESMTPS" in received(m), received(m)
        return
    assert "EVP lib" in osd.log(), (why, osd.log()[-2000:])
    assert d.wait_log(r"mta attempt-failed host=mx\.ost\.test address=127\.0\.0\.64:25 "
                     r"tls=\S+ reason=\"TLS", 15), d.log()[-3000:]
    assert " address=127.0.0.64:25 tls=none " in line, line
    assert "with ESMTP id" in received(m), received(m)


# ---------------------------------------------------------------- both

def test_first_exchanger_stopped_the_second_takes_the_mail(net, peer):
    # mx1 is OpenSMTPD, started and stopped: connection refused. mx2 is Postfix.
    net.records(mx={"two.test": ["10 mx1.two.test.", "20 mx2.two.test."]},
                a={"mx1.two.test": ["127.0.0.70"], "mx2.two.test": ["127.0.0.71"]})
    osd = peer.opensmtpd("127.0.0.70", ["two.test"])
    osd.stop()
    assert not peers.listening("127.0.0.70"), "OpenSMTPD still listens after its stop"
    pf = peer.postfix("127.0.0.71", ["two.test"])
    d = net.sender()
    send(d, ["bob@two.test"], "order")
    (m,) = pf.wait_messages(1)
    assert b"Subject: order" in m
    assert d.wait_log(r"mta attempt-failed host=mx1\.two\.test address=127\.0\.0\.70:25 .*"
                     r"reason=\"[^\"]*[Rr]efused", 15), d.log()[-3000:]
    line = transaction(d, "mx2.two.test")
    assert "address=127.0.0.71:25" in line and "Ok: queued as" in line, line
    assert osd.messages() == []
