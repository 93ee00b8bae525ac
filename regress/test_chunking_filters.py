"""Messages sent with BDAT (RFC 3030) through filters, as smtpd-filters(7) says
("Messages sent with BDAT"): the lines of the chunks put end to end, a line cut by a
chunk boundary given whole; a text body exactly as DATA would give it; a BINARYMIME
body only when it is made of CR LF lines (the filters' output then stored with CR LF
in the body), refused with 554 5.6.1 otherwise; a transaction dropped between chunks
has its data chain ended and the session goes on. For OpenSMTPD's text protocol, the
lines are dot-stuffed, DATA and commit are asked, tx-data is reported.
"""

import re

from conftest import accepted_id
from test_filters import check_spool, fbase, fbin, fx  # noqa: F401 - fixtures
from test_text_filters import tx, traced, wait_registered  # noqa: F401 - tx is a fixture
from test_filters import session_of


def bdat(payload, last=False):
    return b"BDAT %d%s\r\n" % (len(payload), b" LAST" if last else b"") + payload


def chunked(c, chunks, params="", rcpt="b@example.test"):
    """A transaction whose content goes in `chunks` (the last one LAST); the replies
    to the chunks."""
    c.expect("MAIL FROM:<a@example.test>%s" % params, 250, "2.1.0")
    c.expect("RCPT TO:<%s>" % rcpt, 250, "2.1.5")
    c.send(b"".join(bdat(p, i == len(chunks) - 1) for i, p in enumerate(chunks)))
    return c.replies(len(chunks))


TEXT = b"Subject: colour\r\n\r\nthe colour red\r\n.colour after a dot\r\nlast colour"


def test_text_chunks_through_a_data_filter(fx):
    d = fx(fx.py("py", {"lines": [["colour", "color"]], "append": ["-- scanned"]}), "py")
    # Cut inside "colour", inside a CR LF, and right before a leading dot.
    cuts = [TEXT.index(b"lour red"), TEXT.index(b"\r\n.colour") + 1, TEXT.index(b".colour")]
    chunks = [TEXT[:cuts[0]], TEXT[cuts[0]:cuts[1]], TEXT[cuts[1]:cuts[2]], TEXT[cuts[2]:]]
    with d.client() as c:
        c.ehlo()
        replies = chunked(c, chunks)
        assert all(r.is_(250, "2.0.0") for r in replies[:-1]), replies
        msgid = accepted_id(replies[-1])
    (m,) = check_spool(d, [msgid])
    # The last line had no CR LF: it is a line all the same.
    assert m.body() == (b"Subject: color\n\nthe color red\n.color after a dot\nlast color\n"
                        b"-- scanned\n")


def test_binary_made_of_lines_goes_through_and_keeps_cr_lf(fx):
    d = fx(fx.py("py", {"lines": [["colour", "color"]]}), "py")
    body = b"colour \xff\xfe\r\n\r\n.\r\n\x7fcolour\r\n"
    with d.client() as c:
        c.ehlo()
        replies = chunked(c, [b"Subject: colour\r\n\r\n" + body[:3], body[3:]],
                          params=" BODY=BINARYMIME")
        msgid = accepted_id(replies[-1])
    (m,) = check_spool(d, [msgid])
    assert m.body() == b"Subject: color\n\n" + body.replace(b"colour", b"color")
    assert [e["body"] for e in m.envelopes] == ["binarymime"]


def test_binary_not_made_of_lines_is_refused_with_filters(fx):
    d = fx(fx.py("py", {"lines": [["unused", "unused"]]}), "py")
    bodies = [b"bare\nLF\r\n", b"bare\rCR\r\n", b"NUL\x00\r\n", b"no final CR LF",
              b"ends with CR\r", b"x" * 70000 + b"\r\n"]
    with d.client() as c:
        c.ehlo()
        for body in bodies:
            replies = chunked(c, [b"Subject: bin\r\n\r\n", body], params=" BODY=BINARYMIME")
            assert replies[0].is_(250, "2.0.0")
            assert replies[1].is_(554, "5.6.1"), (body[:20], replies)
        # The session goes on: a binary body made of lines is taken.
        msgid = accepted_id(chunked(c, [b"Subject: ok\r\n\r\nfine\r\n"], params=" BODY=BINARYMIME")[0])
    check_spool(d, [msgid])


def test_binary_without_data_filters_is_not_refused(fx):
    """A chain whose filters do not take the message's lines passes a binary body as
    it is."""
    d = fx(fx.py("py", {"hooks": ["mail", "rcpt", "eom"]}), "py")
    body = b"\x00bare\nLF\rCR"
    with d.client() as c:
        c.ehlo()
        msgid = accepted_id(chunked(c, [b"Subject: bin\r\n\r\n" + body],
                                    params=" BODY=BINARYMIME")[0])
    (m,) = check_spool(d, [msgid])
    assert m.body() == b"Subject: bin\n\n" + body


def test_rset_between_chunks_ends_the_data_chain(fx):
    d = fx(fx.py("py", {"lines": [["a", "b"]]}), "py")
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.test>", 250)
        c.expect("RCPT TO:<b@example.test>", 250)
        c.send(bdat(b"Subject: dropped\r\n\r\n" + b"aaaa\r\n" * 2000))
        assert c.reply().is_(250, "2.0.0")
        c.expect("RSET", 250, "2.0.0")
        # A whole message goes through the same chain.
        msgid = accepted_id(chunked(c, [b"Subject: kept\r\n\r\naaa\r\n"])[0])
        c.expect("NOOP", 250)
    (m,) = check_spool(d, [msgid])
    assert m.body() == b"Subject: kept\n\nbbb\n"
    assert "filter py failed" not in d.log()


# ------------------------------------------------------- OpenSMTPD's protocol


def test_text_filter_sees_chunks_as_dot_stuffed_lines(tx):
    spec = {"reports": ["tx-data", "protocol-client"], "phases": ["data", "data-line", "commit"],
            "replace": [["colour", "color"]]}
    d = tx('filter tf proc-exec "%s"\n' % tx.text("tf", spec), "tf")
    wait_registered(d, "tf")
    with d.client() as c:
        c.ehlo()
        sid = session_of(d, c)
        first = b"Subject: colour\r\n\r\n.\r\n..two\r"
        replies = chunked(c, [first, b"\nlast"])
        msgid = accepted_id(replies[-1])
    (m,) = check_spool(d, [msgid])
    assert m.body() == b"Subject: color\n\n.\n..two\nlast\n"
    seen = traced(tx, "tf", sid)
    lines = [f[-1] for k, e, f in seen if e == "data-line"]
    assert lines == ["Subject: colour", "", "..", "...two", "last", "."], seen
    events = [e for k, e, f in seen if e in ("tx-data", "data", "commit", "data-line")]
    assert events[:2] == ["data", "tx-data"] and events[-1] == "commit", events
    protocol = [f[-1] for k, e, f in seen if e == "protocol-client"]
    assert [p for p in protocol if p.startswith("BDAT")] == ["BDAT %d" % len(first),
                                                             "BDAT 5 LAST"], protocol
    assert not re.search(r"protocol-client\|\.$", tx.trace("tf").read_text(), re.M)


def test_a_replaced_binary_body_is_text(fx):
    """A filter that replaces the body of a BINARYMIME message gives it a text body:
    the message is then an 8BITMIME one."""
    d = fx(fx.py("py", {"edits": [["replace-body", "new\r\nbody\r\n"]]}), "py")
    with d.client() as c:
        c.ehlo()
        msgid = accepted_id(chunked(c, [b"Subject: bin\r\n\r\n\x00\r\x01\n"],
                                    params=" BODY=BINARYMIME")[0])
    (m,) = check_spool(d, [msgid])
    assert m.body() == b"Subject: bin\n\nnew\nbody\n"
    assert [e["body"] for e in m.envelopes] == ["8bitmime"]
