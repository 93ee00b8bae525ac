"""SMTPUTF8 (RFC 6531, RFC 6532) on the server side: the extension offered, UTF-8
addresses with it and 553 5.6.7 without it, octets that are not UTF-8 refused, UTF-8
headers kept as sent, the envelope's flag and the Received header (`with UTF8SMTP`);
UTF-8 addresses through a virtual and an alias table into a maildir; domains of
tables and rules matched alike as U-labels and A-labels.

The A-labels are made here with Python's own punycode codec (RFC 3492), not taken
from the daemon.
"""

import smtplib
import subprocess

import pytest

from conftest import accepted_id, data_of, needs_root


def a_label(label):
    return "xn--" + label.encode("punycode").decode("ascii")


BUECHER_A = a_label("bücher") + ".test"  # xn--bcher-kva.test
MUENCHEN_A = a_label("münchen") + ".test"
GRUESSE_A = a_label("grüße") + ".test"


def received(m):
    """Our Received header, unfolded."""
    head = m.data.split(b"\n\n", 1)[0].decode()
    lines = head.split("\n")
    out = [lines[0]]
    for line in lines[1:]:
        if not line.startswith("\t"):
            break
        out.append(line.strip())
    return " ".join(out)


def test_smtplib_sends_with_smtputf8(daemon):
    msg = ("From: Jörg <jörg@bücher.example>\r\nTo: 用户@example.test\r\n"
           "Subject: grüße\r\n\r\nСлава\r\n").encode()
    s = smtplib.SMTP("127.0.0.1", daemon.port, timeout=10)
    try:
        s.ehlo("client.test")
        assert s.has_extn("smtputf8"), s.esmtp_features
        refused = s.sendmail("jörg@bücher.example", ["用户@example.test"], msg,
                             mail_options=["SMTPUTF8", "BODY=8BITMIME"])
        assert refused == {}
    finally:
        s.quit()
    (m,) = daemon.wait_messages(1)
    (e,) = m.envelopes
    assert e["sender"] == "jörg@bücher.example" and e["rcpt"] == "用户@example.test", e
    assert e["smtputf8"] == "1" and e["body"] == "8bitmime", e
    # The envelope file itself stays ASCII (escaped).
    assert all(b < 0x80 for b in m.raw_envelopes[0]), m.raw_envelopes[0]
    rcv = received(m)
    assert " with UTF8SMTP id %s" % m.msgid in rcv and "for <用户@example.test>" in rcv, rcv
    # UTF-8 headers and body as sent.
    assert m.body() == msg.replace(b"\r\n", b"\n")


def test_swaks_without_smtputf8_is_refused_553_5_6_7(daemon):
    argv = ["swaks", "--server", "127.0.0.1", "--port", str(daemon.port),
            "--from", "jörg@bücher.example", "--to", "bob@example.test",
            "--helo", "swaks.test", "--timeout", "10"]
    r = subprocess.run(argv, capture_output=True, timeout=60)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    assert r.returncode != 0, out
    assert "<** 553 5.6.7 " in out, out
    assert daemon.messages() == []


def test_non_ascii_addresses_need_smtputf8(daemon):
    with daemon.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<jörg@example.test>", 553, "5.6.7")
        c.expect("RCPT TO:<bob@bücher.example>", 553, "5.6.7")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("RSET", 250)
        c.expect("MAIL FROM:<jörg@origin.example>", 553, "5.6.7")
        c.expect("MAIL FROM:<a@origin.example> SMTPUTF8=yes", 555, "5.5.4")
        c.expect("MAIL FROM:<jörg@origin.example> SMTPUTF8", 250, "2.1.0")
        c.expect("RCPT TO:<jörg@example.test>", 250, "2.1.5")
    with daemon.client() as c:
        c.helo()
        # A HELO session takes no parameter.
        c.expect("MAIL FROM:<a@origin.example> SMTPUTF8", 555, "5.5.4")


BAD_UTF8 = {
    "overlong-slash": b"\xc0\xaf",
    "overlong-3": b"\xe0\x80\xaf",
    "overlong-nul": b"\xc0\x80",
    "surrogate": b"\xed\xa0\x80",
    "truncated-2": b"\xc3",
    "truncated-4": b"\xf0\x9f\x98",
    "past-10ffff": b"\xf4\x90\x80\x80",
    "continuation": b"\x80",
    "never-used": b"\xff",
}


@pytest.mark.parametrize("bad", list(BAD_UTF8.values()), ids=list(BAD_UTF8))
def test_octets_that_are_not_utf8_are_refused(daemon, bad):
    with daemon.client() as c:
        c.ehlo()
        c.expect(b"MAIL FROM:<j" + bad + b"rg@origin.example> SMTPUTF8", 553, "5.1.7")
        c.expect(b"MAIL FROM:<a@orig" + bad + b"in.example> SMTPUTF8", 553, "5.1.7")
        c.expect("MAIL FROM:<jörg@origin.example> SMTPUTF8", 250, "2.1.0")
        c.expect(b"RCPT TO:<b" + bad + b"ob@example.test>", 553, "5.1.3")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(data_of(["Subject: after", "", "x"]) + b".\r\n")
        accepted_id(c.reply())
    (m,) = daemon.wait_messages(1)
    assert [e["rcpt"] for e in m.envelopes] == ["bob@example.test"]


MATCH_RULES = """
table doms { "bücher.test", "%s" }
table vusers { "jörg@bücher.test" = smtpdtest1, "@%s" = smtpdtest2, "@grüße.test" = root }
action "virt" maildir "{MAILDIR}/%%{user.username}" virtual <vusers>
match from any for domain <doms> action "virt"
match from any for domain "grüße.test" action "virt"
""" % (MUENCHEN_A, MUENCHEN_A)


def test_table_keys_match_u_labels_and_a_labels_both_ways(make_daemon, user1, user2):
    d = make_daemon(rules=MATCH_RULES)
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example> SMTPUTF8", 250, "2.1.0")
        # A U-label key, an A-label recipient.
        c.expect("RCPT TO:<jörg@%s>" % BUECHER_A, 250, "2.1.5")
        # An A-label key, a U-label recipient.
        c.expect("RCPT TO:<anna@münchen.test>", 250, "2.1.5")
        # Case does not matter, in U-labels either.
        c.expect("RCPT TO:<otto@MÜNCHEN.test>", 250, "2.1.5")
        c.expect("RCPT TO:<x@bucher.test>", 550, "5.7.1")
        c.expect("DATA", 354)
        c.send(data_of(["Subject: keys", "", "x"]) + b".\r\n")
        accepted_id(c.reply())
        # Without SMTPUTF8: an all-ASCII address with A-labels, matched against
        # U-label keys of `for domain` and of the virtual table.
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<x@%s>" % GRUESSE_A.upper(), 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(data_of(["Subject: ascii", "", "x"]) + b".\r\n")
        accepted_id(c.reply())
    m1, m2 = sorted(d.wait_messages(2), key=lambda m: b"Subject: ascii" in m.data)
    dests = {e["rcpt"]: e["dest"] for e in m1.envelopes}
    assert dests == {"jörg@%s" % BUECHER_A: "user:smtpdtest1",
                     "anna@münchen.test": "user:smtpdtest2",
                     "otto@münchen.test": "user:smtpdtest2"}, dests
    assert all(e["smtputf8"] == "1" for e in m1.envelopes)
    (e,) = m2.envelopes
    assert e["rcpt"] == "x@%s" % GRUESSE_A and e["dest"] == "user:root", e
    assert "smtputf8" not in e, e


DELIVERY_RULES = """
table vusers { "jörg@bücher.test" = smtpdtest1 }
table aliases { "grüße" = smtpdtest1 }
action "virt" maildir "{MAILDIR}/%{user.username}" virtual <vusers>
action "loc" maildir "{MAILDIR}/%{user.username}" alias <aliases>
match from any for domain "bücher.test" action "virt"
match from any for local action "loc"
"""


def test_utf8_addresses_through_virtual_and_alias_into_a_maildir(make_daemon, user1):
    needs_root()
    d = make_daemon(rules=DELIVERY_RULES, deliver=True, mail_owner="smtpdtest1")
    body = "Subject: Grüße\r\nFrom: ünal@origin.example\r\n\r\nÜber\r\n".encode()
    for rcpt in ("jörg@bücher.test", "jörg@%s" % BUECHER_A, "grüße@localhost"):
        with d.client() as c:
            c.ehlo()
            c.send_message("ünal@origin.example", [rcpt], body, params="SMTPUTF8")
            c.until_quit()
    got = d.wait_mailbox("smtpdtest1", 3)
    assert len(got) == 3, d.log()[-3000:]
    delivered_to = set()
    for _, m in got:
        head, rest = m.split(b"\n\n", 1)
        assert head.startswith("Return-Path: <ünal@origin.example>\n".encode()), m[:300]
        assert "Subject: Grüße".encode() in head and rest == "Über\n".encode(), m
        assert b" with UTF8SMTP id " in head, head
        delivered_to |= {line for line in head.decode().split("\n")
                         if line.startswith("Delivered-To: ")}
    assert delivered_to == {"Delivered-To: jörg@bücher.test",
                            "Delivered-To: jörg@%s" % BUECHER_A,
                            "Delivered-To: grüße@localhost"}, delivered_to


def test_sendmail_submits_utf8_addresses(make_daemon, user1):
    needs_root()
    d = make_daemon(rules=DELIVERY_RULES, deliver=True, mail_owner="smtpdtest1")
    r = d.sendmail(["-f", "ünal@origin.example", "grüße@localhost"],
                   "Subject: über sendmail\n\nhi\n".encode())
    assert r.returncode == 0, r
    (got,) = d.wait_mailbox("smtpdtest1", 1)
    head = got[1].split(b"\n\n", 1)[0].decode()
    assert "Return-Path: <ünal@origin.example>" in head and "Subject: über sendmail" in head, head
    assert "Delivered-To: grüße@localhost" in head and " with UTF8SMTP id " in head, head
