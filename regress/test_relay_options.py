"""The options of a relay action towards a smarthost or the exchangers: smtps://,
AUTH over STARTTLS, src and helo-src, mail-from, a domain table, backup MX.

Runs in the private network namespace of test_mx.py, receivers being second smtpd
instances whose spool shows what they received.
"""

import re
import subprocess

import pytest

import tlscerts
from conftest import smtpd_bin
from conftest import wait_until
from test_mx import net_for, send


@pytest.fixture
def net(tmp_path):
    yield from net_for(tmp_path)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return tlscerts.Pki(tmp_path_factory.mktemp("relaypki"))


def received(m):
    """The first Received header of a message the receiver kept (our own)."""
    head = m.data.split(b"\n\n", 1)[0].decode(errors="replace")
    return re.search(r"^Received: .*?(?=^\S)", head + "\nX", re.S | re.M).group(0)


def test_smtps_to_a_smarthost(net, certs):
    rx = net.receiver("127.0.0.30", ["s.test"], extra=certs.config(),
                      listen_opts="smtps pki mx.test.example", hostname="mx.test.example")
    # The receiver listens on 25 with implicit TLS; the URL names the port.
    d = net.sender(relay='host "smtps://127.0.0.30:25"')
    send(d, ["bob@s.test"], "smtps")
    (m,) = rx.wait_messages(1, timeout=15)
    assert "with ESMTPS" in received(m)
    assert d.wait_log(r"mta transaction host=127\.0\.0\.30 .*tls=TLSv1\.3:\S+:\d+ verified=no "
                     r"policy=encrypt", 15), d.log()[-3000:]


def auth_receiver(net, certs, addr, domain, password):
    """A receiver that takes mail only from `relayuser` with `password`, over TLS."""
    h = subprocess.run([str(smtpd_bin()), "ctl", "encrypt", password], check=True,
                       capture_output=True, text=True).stdout.strip()
    extra = certs.config() + 'table creds { relayuser = "%s" }\n' % h
    return net.receiver(addr, [domain], extra=extra, hostname="mx.test.example",
                        listen_opts="tls-require pki mx.test.example auth <creds>")


def test_auth_to_a_smarthost_over_starttls(net, certs):
    rx = auth_receiver(net, certs, "127.0.0.31", "a.test", "s3cret pass")
    secrets = 'table secrets { isp = "relayuser:s3cret pass" }\n'
    d = net.sender(relay='host "smtp+tls://isp@127.0.0.31:25" auth <secrets>', extra=secrets)
    send(d, ["bob@a.test"], "auth")
    (m,) = rx.wait_messages(1, timeout=15)
    assert "with ESMTPSA" in received(m), received(m)
    assert "s3cret" not in d.log()
    assert re.search(r"auth=ok user=relayuser", rx.log()) or "ESMTPSA" in received(m)


def test_wrong_credentials_defer(net, certs):
    rx = auth_receiver(net, certs, "127.0.0.36", "w.test", "right")
    secrets = 'table secrets { isp = "relayuser:wrong" }\n'
    d = net.sender(relay='host "smtp+tls://isp@127.0.0.36:25" auth <secrets>', extra=secrets)
    send(d, ["bob@w.test"], "wrongauth")
    assert d.wait_log(r"result=TempFail .*535", 20), d.log()[-3000:]
    assert "wrong" not in d.log().split("smtpd listening")[1]
    assert rx.messages() == []


def test_src_helo_src_and_mail_from(net):
    rx = net.receiver("127.0.0.32", ["o.test"])
    extra = "table helos { 127.0.0.99 = out99.example.org }\n"
    d = net.sender(relay='host "smtp://127.0.0.32" src 127.0.0.99 helo-src <helos> '
                         'mail-from "bounces@origin.test"', extra=extra)
    send(d, ["bob@o.test"], "src")
    (m,) = rx.wait_messages(1, timeout=15)
    assert re.search(r"from out99\.example\.org \(\S* ?\[127\.0\.0\.99\]\)", received(m)), received(m)
    assert m.envelopes[0]["sender"] == "bounces@origin.test", m.envelopes


def test_a_domain_table_names_the_smarthost(net):
    rx = net.receiver("127.0.0.33", ["dt.test"])
    extra = 'table routes { "dt.test" = "smtp://127.0.0.33" }\n'
    d = net.sender(relay="domain <routes>", extra=extra)
    send(d, ["bob@dt.test"], "dtable")
    rx.wait_messages(1, timeout=15)
    assert net.dns.asked("dt.test", "MX") == 0


def test_a_backup_mx_tries_only_the_better_exchangers(net):
    net.records(mx={"b.test": ["10 primary.b.test.", "20 backup.b.test.", "30 third.b.test."]},
                a={"primary.b.test": ["127.0.0.34"], "backup.b.test": ["127.0.0.35"],
                   "third.b.test": ["127.0.0.37"]})
    third = net.receiver("127.0.0.37", ["b.test"])
    d = net.sender(relay="backup mx backup.b.test")
    send(d, ["bob@b.test"], "backup")
    # The primary is down: the mail waits, it never goes to the third.
    assert d.wait_log(r"result=TempFail", 15), d.log()[-3000:]
    assert third.messages() == []
    primary = net.receiver("127.0.0.34", ["b.test"])
    d.smtpctl("schedule", "all")
    primary.wait_messages(1, timeout=15)


def test_ipv6_exchangers_come_first(net):
    net.records(mx={"v6.test": ["10 mx.v6.test."]},
                a={"mx.v6.test": ["127.0.0.40"]}, aaaa={"mx.v6.test": ["::1"]})
    rx6 = net.receiver("::1", ["v6.test"], hostname="rx6.test")
    d = net.sender()
    send(d, ["bob@v6.test"], "six")
    rx6.wait_messages(1, timeout=15)
    assert d.wait_log(r"mta transaction host=mx\.v6\.test address=\[::1\]:25", 15), \
        d.log()[-3000:]


def test_tls_verified_under_the_actions_ca(net, certs):
    # The receiver's certificate is for other.test.example, signed by the test CA: an
    # exchanger of that name verifies under `ca testca`.
    net.records(mx={"v.test": ["10 other.test.example."]},
                a={"other.test.example": ["127.0.0.41"]})
    rx = net.receiver("127.0.0.41", ["v.test"], extra=certs.config(),
                      hostname="other.test.example", listen_opts="tls pki other.test.example")
    d = net.sender(relay="tls ca testca helo out.example.org", extra=certs.config())
    send(d, ["bob@v.test"], "pkix")
    rx.wait_messages(1, timeout=15)
    assert d.wait_log(r"mta transaction host=other\.test\.example .* verified=pkix policy=pkix", 15), d.log()[-3000:]


def test_tls_no_verify_and_notls(net, certs):
    rx = net.receiver("127.0.0.42", ["n.test"], extra=certs.config(), hostname="mx.test.example",
                      listen_opts="tls pki mx.test.example")
    d = net.sender(relay='host "smtp://127.0.0.42" tls no-verify')
    send(d, ["bob@n.test"], "noverify")
    rx.wait_messages(1, timeout=15)
    assert d.wait_log(r"mta transaction host=127\.0\.0\.42 .*tls=TLSv1\.3:\S+ verified=no "
                     r"policy=encrypt", 15), d.log()[-3000:]
    d2 = net.sender(relay='host "smtp+notls://127.0.0.42"')
    send(d2, ["bob@n.test"], "notls")
    rx.wait_messages(2, timeout=15)
    assert d2.wait_log(r"mta transaction host=127\.0\.0\.42 address=127\.0\.0\.42:25 tls=none", 15), d2.log()[-3000:]


def test_a_4xx_is_retried_and_a_5xx_bounced_with_the_reply(net):
    net.records(mx={"r4.test": ["10 mx.r4.test."], "r5.test": ["10 mx.r5.test."]},
                a={"mx.r4.test": ["127.0.0.43"], "mx.r5.test": ["127.0.0.44"]})
    soft = net.sink("127.0.0.43", ["-r", "RCPT"])
    net.sink("127.0.0.44", ["-f", "RCPT"])
    d = net.sender()
    send(d, ["bob@r5.test"], "five")
    assert d.wait_log(r"to=<bob@r5\.test> result=PermFail stat=\"500 5\.3\.0 Error: command "
                      r"failed\"", 15), d.log()[-3000:]
    send(d, ["bob@r4.test"], "four")
    assert d.wait_log(r"to=<bob@r4\.test> result=TempFail .*stat=\"450 4\.3\.0", 15), d.log()[-3000:]
    soft.close()
    good = net.sink("127.0.0.43")
    code, out, _ = d.smtpctl("schedule", "domain", "r4.test")
    assert code == 0 and out.strip() == "1 envelope(s) scheduled", out
    assert wait_until(lambda: len(good.message_ids()) == 1, 15), d.log()[-3000:]
