"""CHUNKING and BINARYMIME (RFC 3030) on the server side, over raw sockets.

A chunk is as long as its BDAT says: its octets are never commands, no dot ends the
message, and the chunks of a message are one stream (a CR LF cut by a chunk boundary
is a line end).  A text body (7BIT, 8BITMIME) keeps the rules of DATA's content: a
bare CR or LF, or a NUL, refuses the message at its LAST chunk, so the smuggling
endings of protocols.md section 3 carry nothing through BDAT either.  A BINARYMIME
body is stored as it came, octet for octet.  A refused BDAT (no transaction, a size
over max-message-size...) has its octets skipped, then the error: the stream stays in
step.
"""

import time

import pytest

from conftest import accepted_id
from test_smuggling import ENDINGS, SMUGGLED


def bdat(payload, last=False):
    if isinstance(payload, str):
        payload = payload.encode()
    return b"BDAT %d%s\r\n" % (len(payload), b" LAST" if last else b"") + payload


def open_tx(c, params="", rcpt="bob@example.test"):
    c.ehlo()
    c.expect("MAIL FROM:<a@origin.example>" + params, 250, "2.1.0")
    c.expect("RCPT TO:<%s>" % rcpt, 250, "2.1.5")


def spooled(body):
    """The spool's form of a text body: LF line ends."""
    return body.replace(b"\r\n", b"\n")


def test_ehlo_offers_chunking_and_binarymime(daemon):
    with daemon.client() as c:
        r = c.ehlo()
        keywords = [l[4:] for l in r.lines[1:]]
        assert "CHUNKING" in keywords and "BINARYMIME" in keywords, r
    with daemon.client() as c:
        r = c.helo()
        assert "CHUNKING" not in r.first


BODY = "Subject: chunks \u00e9t\u00e9\r\nFrom: a@origin.example\r\n\r\nline\r\n.\r\n..\r\n\u00e9\u00e9\r\nend\r\n".encode()
CUTS = {
    "inside-crlf": BODY.index(b"\r\n") + 1,
    "inside-utf8": BODY.index("\u00e9".encode()) + 1,
    "at-lone-dot": BODY.index(b"\r\n.\r\n") + 2,
    "after-lone-dot": BODY.index(b"\r\n.\r\n") + 3,
    "none": len(BODY),
}


@pytest.mark.parametrize("cut", list(CUTS))
def test_chunk_boundaries_store_the_message_intact(daemon, cut):
    at = CUTS[cut]
    with daemon.client() as c:
        open_tx(c, " BODY=8BITMIME")
        c.send(bdat(BODY[:at]))
        assert c.reply().is_(250, "2.0.0"), "first chunk"
        c.send(bdat(BODY[at:]))
        assert c.reply().is_(250, "2.0.0")
        # A zero-length LAST chunk ends the message.
        c.send(bdat(b"", True))
        r = c.reply()
        msgid = accepted_id(r)
    (m,) = daemon.messages()
    assert m.msgid == msgid
    assert m.body() == spooled(BODY)


def test_pipelined_chunks_and_transactions_in_one_write(daemon):
    wire = b"EHLO client.test\r\n"
    for i in range(3):
        wire += b"MAIL FROM:<a@origin.example>\r\nRCPT TO:<bob@example.test>\r\n"
        body = b"Subject: %d\r\n\r\n" % i + b"x" * 5000 + b"\r\n"
        wire += bdat(body[:7]) + bdat(body[7:4000]) + bdat(body[4000:], True)
    wire += b"QUIT\r\n"
    with daemon.client() as c:
        c.greeting()
        c.send(wire)
        replies = c.until_quit()
    codes = [r.code for r in replies]
    assert codes == [250] + [250, 250, 250, 250, 250] * 3 + [221], replies
    assert replies[3].first.startswith("250 2.0.0 7 octets received"), replies
    msgs = sorted(daemon.messages(), key=lambda m: m.body())
    assert [m.body()[:11] for m in msgs] == [b"Subject: %d\n" % i for i in range(3)]
    assert all(m.body().endswith(b"x" * 5000 + b"\n") for m in msgs)


def test_chunk_octets_that_look_like_commands_are_stored(daemon):
    payload = (b"Subject: commands\r\n\r\n.\r\nRSET\r\nMAIL FROM:<x@y.example>\r\n"
               b"RCPT TO:<victim@example.test>\r\nDATA\r\nBDAT 5 LAST\r\nQUIT\r\n")
    with daemon.client() as c:
        open_tx(c)
        c.send(bdat(payload, True))
        accepted_id(c.reply())
        c.expect("NOOP", 250, "2.0.0")
    (m,) = daemon.messages()
    assert m.body() == spooled(payload)
    assert [e["rcpt"] for e in m.envelopes] == ["bob@example.test"]


def test_bdat_mixed_with_data(daemon):
    with daemon.client() as c:
        open_tx(c)
        c.send(bdat(b"Subject: x\r\n") + b"DATA\r\n")
        assert c.reply().is_(250, "2.0.0")
        r = c.reply()
        assert r.is_(503, "5.5.1"), r
        c.expect("RCPT TO:<carol@example.test>", 503, "5.5.1")
        c.send(bdat(b"\r\nbody\r\n", True))
        accepted_id(c.reply())
    (m,) = daemon.messages()
    assert m.body() == b"Subject: x\n\nbody\n"
    # After DATA's 354 everything up to the dot is content, a BDAT line included.
    with daemon.client() as c:
        open_tx(c)
        c.expect("DATA", 354)
        c.send(b"BDAT 3 LAST\r\nabc\r\n.\r\n")
        accepted_id(c.reply())
    bodies = sorted(m.body() for m in daemon.messages())
    assert b"BDAT 3 LAST\nabc\n" in bodies


def test_binarymime_takes_no_data(daemon):
    with daemon.client() as c:
        open_tx(c, " BODY=BINARYMIME")
        c.expect("DATA", 503, "5.5.1")
        c.send(bdat(b"Subject: b\r\n\r\n\x00\x01\x02", True))
        accepted_id(c.reply())
    (m,) = daemon.messages()
    assert m.body() == b"Subject: b\n\n\x00\x01\x02"


@pytest.mark.parametrize("before", ["greeting", "ehlo", "helo", "mail"])
def test_bdat_out_of_sequence_skips_its_chunk(daemon, before):
    smuggled = b"MAIL FROM:<x@y.example>\r\nRCPT TO:<victim@example.test>\r\nQUIT\r\n"
    want = {"greeting": "need HELO", "ehlo": "need MAIL", "helo": "needs EHLO",
            "mail": "need RCPT"}[before]
    with daemon.client() as c:
        if before == "greeting":
            c.greeting()
        elif before == "helo":
            c.helo()
        else:
            c.ehlo()
        if before == "mail":
            c.expect("MAIL FROM:<a@origin.example>", 250)
        # Byte by byte, so that the skipping is done across many reads.
        wire = bdat(smuggled, True) + b"NOOP\r\n"
        for i in range(len(wire)):
            c.send(wire[i:i + 1])
        r = c.reply()
        assert r.code == 503 and r.esc == "5.5.1", r
        assert want.replace("need HELO", "send HELO") in r.first, r
        r = c.reply()
        assert r.is_(250, "2.0.0"), "the NOOP after the chunk: %r" % r
        # The transaction, if any, is over.
        c.expect("RCPT TO:<bob@example.test>", 503, "5.5.1")
    time.sleep(0.2)
    assert daemon.messages() == []


def test_bdat_with_a_size_that_cannot_be_read_closes(daemon):
    for line in [b"BDAT 12x", b"BDAT", b"BDAT 5 LAST please", b"BDAT -1"]:
        with daemon.client() as c:
            open_tx(c)
            c.send(line + b"\r\nQUIT\r\n")
            r = c.reply()
            assert r.is_(501, "5.5.4"), (line, r)
            assert c.wait_closed(5), "still open after %r" % line
            assert c.buf == b"", "the QUIT after it was answered: %r" % c.buf


def test_too_big_chunk_refused_before_its_octets(make_daemon):
    d = make_daemon(extra="smtp max-message-size 10k")
    with d.client() as c:
        open_tx(c)
        c.send(bdat(b"Subject: big\r\n\r\n"))
        assert c.reply().is_(250, "2.0.0")
        c.send(b"BDAT 50000 LAST\r\n")
        # The octets are taken and dropped as they come: no reply before the last one,
        # and the message file, already open, does not grow.
        c.send(b"y" * 30000)
        assert c.drain(quiet=0.5) == []
        c.send(b"y" * 20000)
        r = c.reply()
        assert r.is_(552, "5.3.4"), r
        # The transaction is over; the session goes on.
        c.expect("NOOP", 250, "2.0.0")
        c.send(bdat(b"more", True))
        assert c.reply().is_(503, "5.5.1")
    assert d.messages() == []
    assert d.incoming() == []
    # Up to the limit, in several chunks, is fine.
    with d.client() as c:
        open_tx(c)
        c.send(bdat(b"x" * 5000) + bdat(b"y" * 5000) + bdat(b"", True))
        assert c.reply().is_(250) and c.reply().is_(250)
        accepted_id(c.reply())


def test_rset_drops_a_chunked_message(daemon):
    with daemon.client() as c:
        open_tx(c)
        c.send(bdat(b"Subject: half\r\n"))
        assert c.reply().is_(250, "2.0.0")
        assert len(daemon.incoming()) == 1, "the message is open"
        c.expect("RSET", 250, "2.0.0")
        c.send(bdat(b"rest\r\n", True))
        assert c.reply().is_(503, "5.5.1")
    time.sleep(0.2)
    assert daemon.incoming() == [] and daemon.messages() == []


@pytest.mark.parametrize("data,want", [
    (b"a bare\nLF\r\n", "550 5.5.2"),
    (b"a bare\rCR\r\n", "550 5.5.2"),
    (b"ends with CR\r", "550 5.5.2"),
    (b"a NUL \x00 here\r\n", "550 5.6.0"),
])
def test_bare_cr_lf_nul_refuse_a_text_body(daemon, data, want):
    with daemon.client() as c:
        open_tx(c)
        c.send(bdat(b"Subject: x\r\n\r\n") + bdat(data) + bdat(b"more\r\n", True))
        r1, r2, r3 = c.replies(3)
        assert r1.is_(250) and r2.is_(250), (r1, r2)
        assert r3.first.startswith(want), r3
        c.expect("NOOP", 250, "2.0.0")
    time.sleep(0.2)
    assert daemon.messages() == [] and daemon.incoming() == []


@pytest.mark.parametrize("mode", ["onewrite", "split", "bytewise"])
@pytest.mark.parametrize("name", list(ENDINGS))
def test_smuggling_endings_through_bdat(daemon, name, mode):
    """Each bad ending of protocols.md section 3, then a whole smuggled transaction, in
    one chunk or cut right after the ending, sent in one write, in two, or byte by
    byte: the text body is refused; nothing smuggled is ever a command."""
    ending = ENDINGS[name]
    payload = b"From: a@origin.example\r\nSubject: carrier\r\n\r\ntext" + ending + SMUGGLED
    cut = payload.index(ending) + len(ending)
    chunks = [payload] if mode == "onewrite" else [payload[:cut], payload[cut:]]
    wire = b"".join(bdat(p) for p in chunks) + bdat(b"\r\n", True)
    with daemon.client() as c:
        open_tx(c)
        if mode == "bytewise":
            for i in range(len(wire)):
                c.send(wire[i:i + 1])
        else:
            c.send(wire[:len(wire) // 2])
            time.sleep(0.05)
            c.send(wire[len(wire) // 2:])
        replies = c.until_quit()
    lines = [r.first for r in replies]
    assert lines[-1].startswith("221"), lines
    assert all(l.startswith("250 2.0.0") for l in lines[:len(chunks)]), lines
    want = "550 5.6.0" if name.startswith("null") else "550 5.5.2"
    assert lines[len(chunks)].startswith(want), lines
    assert len(lines) == len(chunks) + 2, "something smuggled was answered: %r" % lines
    assert daemon.messages() == [] and daemon.incoming() == []


@pytest.mark.parametrize("name", list(ENDINGS))
def test_smuggling_endings_in_a_binary_body_are_data(daemon, name):
    """In a BINARYMIME body the same octets are data, stored as they came: one message
    with its one recipient, nothing executed."""
    ending = ENDINGS[name]
    payload = b"From: a@origin.example\r\nSubject: carrier\r\n\r\ntext" + ending + SMUGGLED
    cut = payload.index(ending) + 1
    with daemon.client() as c:
        open_tx(c, " BODY=BINARYMIME")
        c.send(bdat(payload[:cut]) + bdat(payload[cut:], True))
        assert c.reply().is_(250)
        accepted_id(c.reply())
        c.expect("NOOP", 250, "2.0.0")
    (m,) = daemon.messages()
    assert m.body() == b"From: a@origin.example\nSubject: carrier\n\n" + payload.split(b"\r\n\r\n", 1)[1]
    assert [e["rcpt"] for e in m.envelopes] == ["bob@example.test"]
    assert [e["body"] for e in m.envelopes] == ["binarymime"]


def test_binary_body_byte_for_byte(daemon):
    head = b"Subject: all octets\r\nContent-Type: application/octet-stream\r\n\r\n"
    body = bytes(range(256)) * 40 + b"\r\n.\r\n\r"
    with daemon.client() as c:
        open_tx(c, " BODY=BINARYMIME")
        # Chunks of prime sizes: every boundary falls somewhere else.
        wire = head + body
        pos, chunks = 0, []
        for n in [1, 13, 4099, 7]:
            chunks.append(wire[pos:pos + n])
            pos += n
        chunks.append(wire[pos:])
        c.send(b"".join(bdat(p) for p in chunks) + bdat(b"", True))
        for _ in chunks:
            assert c.reply().is_(250, "2.0.0")
        accepted_id(c.reply())
    (m,) = daemon.messages()
    assert m.body() == head.replace(b"\r\n", b"\n") + body


def test_binary_header_end_cut_between_its_cr_and_lf(daemon):
    """The empty line that ends the header section, cut by a chunk boundary between its
    CR and its LF, still ends it: the body after it is binary."""
    msg = b"Subject: cut\r\n\r\n\x00bare\nLF\r"
    at = msg.index(b"\r\n\r\n") + 3
    with daemon.client() as c:
        open_tx(c, " BODY=BINARYMIME")
        c.send(bdat(msg[:at]) + bdat(msg[at:], True))
        assert c.reply().is_(250, "2.0.0")
        accepted_id(c.reply())
    (m,) = daemon.messages()
    assert m.body() == b"Subject: cut\n\n\x00bare\nLF\r"


def test_binary_message_delivered_to_a_maildir_as_stored(make_daemon, user1):
    """Local deliveries get a BINARYMIME message as the spool keeps it: the header
    section with LF line ends, the body octet for octet."""
    from test_delivery import SENDER, mk, trace
    d = mk(make_daemon)
    body = b"\x00\x01\r\n.\r\n\n\r\xff" * 100
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<%s> BODY=BINARYMIME" % SENDER, 250)
        c.expect("RCPT TO:<alice@example.test>", 250)
        c.send(bdat(b"Subject: bin\r\n\r\n" + body, True))
        accepted_id(c.reply())
    (path, got) = d.wait_mailbox("alice")[0]
    assert got.startswith(trace(SENDER, "alice@example.test") + b"Received: ")
    assert got.endswith(b"\nSubject: bin\n\n" + body)
