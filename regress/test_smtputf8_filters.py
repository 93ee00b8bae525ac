"""UTF-8 addresses (SMTPUTF8, RFC 6531) through filters: the binary protocol (the Rust
example filter-trace, a Python filter of regress/filterlib.py), OpenSMTPD's text
protocol and the milter bridge see the addresses as the client wrote them, and a
filter may rewrite or add a UTF-8 address, which the spool then keeps with the
message marked as needing SMTPUTF8.
"""

import re

from conftest import accepted_id
from test_filters import BODY, check_spool, fbase, fbin, fx, session_of  # noqa: F401
from test_filters import filter_lines, transaction, wait_filter_line
from test_milter import env, wait_record  # noqa: F401
from test_text_filters import traced, tx, wait_registered  # noqa: F401

SENDER = "jörg@bücher.test"
RCPT = "用户@example.test"


def utf8_transaction(c, sender, rcpts, lines=BODY):
    c.expect("MAIL FROM:<%s> SMTPUTF8" % sender, 250, "2.1.0")
    for r in rcpts:
        c.expect("RCPT TO:<%s>" % r, 250, "2.1.5")
    c.expect("DATA", 354)
    c.send(("\r\n".join(lines) + "\r\n.\r\n").encode())
    return c.reply()


def escaped(s):
    """`s` as the daemon logs a filter's standard error (Rust's escape_ascii)."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and chr(b) not in "\\'\"" else "\\x%02x" % b
                   for b in s.encode())


def test_binary_protocol_filter_sees_utf8_addresses(fx):
    d = fx(fx.ex("tr", "filter-trace"), "tr")
    with d.client() as c:
        c.ehlo("client.test")
        sid = session_of(d, c)
        msgid = accepted_id(utf8_transaction(c, SENDER, [RCPT]))
        c.until_quit()
    wait_filter_line(d, "tr", sid, "disconnect")
    lines = filter_lines(d, "tr", sid)
    assert escaped("mail <%s>" % SENDER) in lines, lines
    assert escaped("rcpt <%s>" % RCPT) in lines, lines
    (m,) = check_spool(d, [msgid])
    assert [(e["sender"], e["rcpt"]) for e in m.envelopes] == [(SENDER, RCPT)]


def test_a_filter_rewrites_and_adds_utf8_addresses(fx):
    spec = {"answers": {"rcpt": {"do": "rewrite", "value": "jürgen@example.test",
                                 "when": "^bob@"}},
            "edits": [["add-rcpt", "grüße@example.test"]]}
    d = fx(fx.py("py", spec), "py")
    with d.client() as c:
        c.ehlo()
        # A transaction without SMTPUTF8: the filter brings UTF-8 in.
        msgid = accepted_id(transaction(c, "alice@example.test", ["bob@example.test"], BODY))
    (m,) = check_spool(d, [msgid])
    envs = sorted(m.envelopes, key=lambda e: e["rcpt"])
    assert [e["rcpt"] for e in envs] == ["grüße@example.test", "jürgen@example.test"], envs
    assert all(e.get("smtputf8") == "1" for e in envs), envs


def test_text_protocol_filter_sees_and_rewrites_utf8_addresses(tx):
    spec = {"reports": ["tx-mail", "tx-rcpt"], "phases": ["mail-from", "rcpt-to"],
            "rules": [{"phase": "rcpt-to", "when": "^carol@",
                       "answer": "rewrite|grüße@example.test"}]}
    d = tx('filter tf proc-exec "%s"\n' % tx.text("tf", spec), "tf")
    wait_registered(d, "tf")
    with d.client() as c:
        c.ehlo("client.test")
        sid = session_of(d, c)
        msgid = accepted_id(utf8_transaction(c, SENDER, [RCPT, "carol@example.test"]))
        c.until_quit()
    seen = traced(tx, "tf", sid)
    questions = [(e, f[-1]) for k, e, f in seen if k == "filter"]
    assert questions == [("mail-from", SENDER), ("rcpt-to", RCPT),
                         ("rcpt-to", "carol@example.test")], seen
    # The argument of the command, as OpenSMTPD reports it (parameters included).
    reports = [(e, f[-1]) for k, e, f in seen if k == "report"]
    assert ("tx-mail", "<%s> SMTPUTF8" % SENDER) in reports, seen
    assert ("tx-rcpt", "<%s>" % RCPT) in reports, seen
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    assert sorted(e["rcpt"] for e in m.envelopes) == sorted([RCPT, "grüße@example.test"])


def test_milter_sees_utf8_addresses(env):
    spec, rec = env.test_milter()
    d = env.daemon("-t 10 " + spec)
    with d.client() as c:
        c.ehlo("client.test")
        r = utf8_transaction(c, SENDER, [RCPT], ["Subject: milter grüße", "", "x"])
        assert r.code == 250, r
        c.until_quit()
    rcd = wait_record(rec, lambda r: r["mail"] is not None and "bücher" in r["mail"])
    assert rcd["mail"] == "<%s>" % SENDER and rcd["rcpts"] == ["<%s>" % RCPT], rcd
    assert rcd["macros"]["mail"]["{mail_addr}"] == SENDER
    assert rcd["macros"]["mail"]["{mail_host}"] == "bücher.test"
    assert rcd["macros"]["rcpt"]["{rcpt_addr}"] == RCPT
    assert ["Subject", "milter grüße"] in rcd["headers"], rcd["headers"]
    (m,) = d.wait_messages(1)
    assert re.search(r"\(smtpd\) with UTF8SMTP id", m.text), m.text[:400]
