"""Reverse DNS of clients for the built-in `rdns` and `fcrdns` checks.

The daemon runs in a private mount namespace whose /etc/resolv.conf names the test's
DNS server (regress/dnstest.py) on 127.0.0.153, so that no query ever reaches the
machine's nameserver. The server answers the client's PTR (127.0.0.1 -> NAME) and
NAME's A record, as each test sets them.
"""

import time

import pytest

from dnstest import dns_world  # noqa: F401 - the fixture
from filterlib import FilterDaemon

PTR = "1.0.0.127.in-addr.arpa"


@pytest.fixture
def dns_daemon(dns_world):  # noqa: F811 - the fixture imported above
    """make(records, filters, listen_filter) -> (daemon, DNS server)."""

    def make(records, filters, listen_filter):
        dns = dns_world.server(records)
        d = dns_world.daemon(FilterDaemon, filters=filters, listen_filter=listen_filter)
        return d, dns

    return make


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
    d, dns = dns_daemon({(PTR, "PTR"): ["good.test."], ("good.test", "A"): ["127.0.0.1"]},
                        FILTERS, "{ needname, tag }")
    msgid = _send(d)
    assert d.wait_log(r"smtp rdns host=good\.test fcrdns=pass"), d.log()[-2000:]
    (m,) = [m for m in d.wait_messages(1) if m.msgid == msgid]
    assert b"(good.test [127.0.0.1])" in m.data, m.data[:300]
    assert b"X-Spam: Yes" in m.data  # rdns { good.test } matched
    assert dns.asked(PTR, "PTR") == 1 and dns.asked("good.test", "A") == 1


def test_fcrdns_fail_is_refused(dns_daemon):
    # The name resolves, but not back to the client.
    d, _ = dns_daemon({(PTR, "PTR"): ["liar.test."], ("liar.test", "A"): ["127.0.0.9"]},
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
    d, dns = dns_daemon({(PTR, "PTR"): ["good.test."]}, 'filter "tag" phase mail-from match src 127.0.0.1 junk\n', "tag")
    _send(d)
    time.sleep(0.5)
    assert dns.questions == []
    assert "smtp rdns" not in d.log()
