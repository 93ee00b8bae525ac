"""The ruleset (`match ... action|reject`): first match wins, no open relay, user lookup.

The listener is on 127.0.0.1; clients bind other loopback sources (127.0.0.2,
127.0.0.3) to exercise `from src`.
"""

import pytest

from conftest import data_of, norm_dest

RULES = """
table vusers { "bob@virt.example" = root, "@catchall.example" = root }
table trusted { 127.0.0.2 }
action "virt" maildir "{MAILDIR}/%{user.username}" virtual <vusers>
action "local" maildir "{MAILDIR}/%{user.username}"
action "out" relay
match from src 127.0.0.3 for any reject
match from any for domain "fm-reject.example" reject
match from any for domain "fm-reject.example" action "out"
match from any for domain "fm-accept.example" action "out"
match from any for domain "fm-accept.example" reject
match from any for domain "blocked.example" reject
match from any for domain { virt.example, catchall.example } action "virt"
match from src <trusted> for any action "out"
match from any for local action "local"
"""


@pytest.fixture
def d(make_daemon):
    return make_daemon(rules=RULES)


def rcpt(d, addr, source=None):
    with d.client(source=source) as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@origin.example>", 250, "2.1.0")
        return c.cmd("RCPT TO:<%s>" % addr)


def test_relay_refused_for_foreign_domain(d):
    r = rcpt(d, "x@foreign.example")
    assert r.is_(550, "5.7.1"), r


def test_relay_allowed_from_trusted_src(d):
    with d.client(source="127.0.0.2") as c:
        c.ehlo()
        msgid = c.send_message("s@origin.example", ["x@foreign.example"], data_of(["Subject: relay", "", "x"]))
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    (e,) = m.envelopes
    assert e["action"] == "out" and norm_dest(e["dest"]) == "x@foreign.example" and e["client"] == "127.0.0.2"


def test_from_src_reject_rule_is_first(d):
    # 127.0.0.3 is rejected by the first rule even for an address the virtual table knows.
    r = rcpt(d, "bob@virt.example", source="127.0.0.3")
    assert r.is_(550, "5.7.1"), r
    r = rcpt(d, "bob@virt.example", source="127.0.0.4")
    assert r.is_(250, "2.1.5"), r


def test_unknown_local_user(d):
    r = rcpt(d, "no-such-user-zz@localhost")
    assert r.is_(550, "5.1.1"), r
    r = rcpt(d, "no-such-user-zz@%s" % d.hostname)
    assert r.is_(550, "5.1.1"), r


def test_known_local_user_and_postmaster(d):
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<root@localhost>", 250, "2.1.5")
        c.expect("RCPT TO:<root+tag@%s>" % d.hostname, 250, "2.1.5")
        c.expect("RCPT TO:<Postmaster>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"x\r\n.\r\n")
        c.reply()
    (m,) = d.wait_messages(1)
    assert sorted((e["action"], norm_dest(e["dest"])) for e in m.envelopes) == [("local", "root")] * 3


def test_virtual_table(d):
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@virt.example>", 250, "2.1.5")
        c.expect("RCPT TO:<BOB@Virt.Example>", 250, "2.1.5")
        c.expect("RCPT TO:<alice@virt.example>", 550, "5.1.1")  # not in the table
        c.expect("RCPT TO:<anyone@catchall.example>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"x\r\n.\r\n")
        c.reply()
    (m,) = d.wait_messages(1)
    assert len(m.envelopes) == 3
    assert {e["action"] for e in m.envelopes} == {"virt"}
    assert {norm_dest(e["dest"]) for e in m.envelopes} == {"root"}


def test_reject_rule(d):
    r = rcpt(d, "x@blocked.example")
    assert r.is_(550, "5.7.1"), r
    # Also from the trusted source: the reject rule comes before the relay rule.
    r = rcpt(d, "x@blocked.example", source="127.0.0.2")
    assert r.is_(550, "5.7.1"), r


def test_first_match_wins(d):
    r = rcpt(d, "x@fm-reject.example")
    assert r.is_(550, "5.7.1"), r
    r = rcpt(d, "x@fm-accept.example")
    assert r.is_(250, "2.1.5"), r


def test_for_domain_rule_only_its_domain(d):
    assert rcpt(d, "bob@virt.example").is_(250, "2.1.5")
    assert rcpt(d, "bob@sub.virt.example").is_(550, "5.7.1")
    assert rcpt(d, "bob@virt.example.evil").is_(550, "5.7.1")


def test_refused_rcpts_get_no_envelope(d):
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<s@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<x@foreign.example>", 550, "5.7.1")
        c.expect("RCPT TO:<bob@virt.example>", 250, "2.1.5")
        c.expect("RCPT TO:<x@blocked.example>", 550, "5.7.1")
        c.expect("DATA", 354)
        c.send(b"x\r\n.\r\n")
        c.reply()
    (m,) = d.wait_messages(1)
    assert [e["rcpt"] for e in m.envelopes] == ["bob@virt.example"]


def test_no_rules_refuses_everything(make_daemon):
    d = make_daemon(rules='action "local" maildir "{MAILDIR}/%{user.username}"\n')
    assert rcpt(d, "root@localhost").is_(550, "5.7.1")
    assert rcpt(d, "x@foreign.example").is_(550, "5.7.1")
