"""Relaying mail received with SMTPUTF8 (RFC 6531) by MX to Postfix: delivered to a
Postfix with `smtputf8_enable = yes`, with SMTPUTF8 on MAIL and the addresses and
header as received; never downgraded for a Postfix with `smtputf8_enable = no`: a
message whose header is UTF-8 bounces to its sender with 5.6.7, without a MAIL
command, while one whose addresses and header are ASCII is delivered. The exchangers
of a domain written with U-labels are looked up by its A-labels.

Runs in the private network namespace of test_mx.py (the test DNS server, Postfix
instances of regress/peers.py on 127.0.0.x:25). The daemon under test relays every
domain but origin.test, whose mail (the bounces) it delivers into a maildir.
"""

import re

import pytest

from conftest import needs_root, parse_dsn
from test_mx import net_for
from test_mx_peers import peer  # noqa: F401 - a fixture

SENDER_RULES = """
table vusers { "@origin.test" = smtpdtest1 }
action "local" maildir "{MAILDIR}/%{user.username}" virtual <vusers>
action "out" relay
match from any for domain "origin.test" action "local"
match from any for any action "out"
"""


@pytest.fixture
def net(tmp_path, user1):
    needs_root()
    yield from net_for(tmp_path)


def postfix(peer, addr, domains, smtputf8):
    return peer.postfix(addr, domains,
                        settings=["smtputf8_enable = %s" % ("yes" if smtputf8 else "no")])


def sender(net):
    return net.world.daemon(rules=SENDER_RULES, deliver=True, mail_owner="smtpdtest1")


def send_utf8(d, sender_addr, rcpt, body):
    """One message with SMTPUTF8; `body` is text with CR LF line ends."""
    with d.client() as c:
        c.ehlo()
        c.send_message(sender_addr, [rcpt], body.encode(), params="SMTPUTF8")
        c.until_quit()


def head_of(m):
    return m.split(b"\n\n", 1)[0].decode()


def test_utf8_message_to_postfix_with_smtputf8_by_a_labels(net, peer):
    a_domain = "xn--" + "bücher".encode("punycode").decode() + ".test"
    net.records(mx={a_domain: ["10 mx.%s." % a_domain]}, a={"mx." + a_domain: ["127.0.0.90"]})
    pf = postfix(peer, "127.0.0.90", ["bücher.test", a_domain], smtputf8=True)
    d = sender(net)
    send_utf8(d, "ünal@origin.test", "jörg@bücher.test",
              "From: Ünal <ünal@origin.test>\r\nSubject: Grüße\r\n\r\nÜber\r\n")
    (m,) = pf.wait_messages(1)
    head = head_of(m)
    assert "Subject: Grüße" in head and m.endswith("Über\n".encode()), m[:800]
    # Postfix took SMTPUTF8 (its Received header says so) and the addresses as sent.
    assert re.search(r"\(Postfix\) with UTF8SMTP id", head), head
    assert re.search(r"\(smtpd\) with UTF8SMTP id", head), head
    assert "Return-Path: <ünal@origin.test>" in head, head
    assert pf.wait_log(r"to=<jörg@bücher\.test>.* status=sent", 15), pf.log()[-3000:]
    line = re.search(r"mta transaction host=mx\.%s .*" % re.escape(a_domain), d.log())
    assert line and "Ok: queued as" in line.group(0), d.log()[-3000:]
    # The DNS was asked by A-labels only.
    assert net.dns.asked(a_domain, "MX") == 1
    assert net.dns.asked("bücher.test", "MX") == 0


def test_no_downgrade_for_postfix_without_smtputf8(net, peer):
    net.records(mx={"plain.test": ["10 mx.plain.test."]}, a={"mx.plain.test": ["127.0.0.91"]})
    pf = postfix(peer, "127.0.0.91", ["plain.test"], smtputf8=False)
    d = sender(net)
    # ASCII addresses, a UTF-8 header: it needs SMTPUTF8, which the server lacks.
    send_utf8(d, "alice@origin.test", "bob@plain.test",
              "Subject: Grüße\r\nMessage-ID: <utf8@origin.test>\r\n\r\nhi\r\n")
    got = d.wait_mailbox("smtpdtest1", 1, 20)
    assert got, d.log()[-3000:]
    _, reports, _, returned = parse_dsn(got[0][1])
    assert reports[0]["Status"] == "5.6.7", reports
    assert "does not offer SMTPUTF8" in " ".join(reports[0]["Diagnostic-Code"].split())
    assert "utf8@origin.test" in returned.as_string()
    ns = re.search(r"mta not-sent .*", d.log())
    assert ns and 'result="553 5.6.7 UTF-8 header and' in ns.group(0), d.log()[-3000:]
    # Received with SMTPUTF8, but ASCII throughout: that one goes.
    send_utf8(d, "alice@origin.test", "carol@plain.test", "Subject: plain\r\n\r\nhi\r\n")
    (m,) = pf.wait_messages(1)
    assert b"Subject: plain" in m and b"Subject: Gr" not in m
    # Postfix never saw a MAIL command for the first message.
    assert len(re.findall(r"postfix/qmgr\[\d+\]: \w+: from=", pf.log())) == 1, pf.log()[-3000:]
    assert "Grüße".encode() not in b"".join(pf.messages())
