"""The relay client and RFC 3030: a BINARYMIME message goes in BDAT chunks, never with
DATA, to a server that offers CHUNKING and BINARYMIME (the scriptable server of
test_relay_client.py, which records every chunk, and a second smtpd), and is bounced
with 554 5.6.3 without MAIL by one that does not (that server, and Postfix, which
offers CHUNKING only); every other message goes with DATA as before, CHUNKING or not.
"""

import re

import pytest

from conftest import accepted_id, needs_root, parse_dsn, read_spool, wait_until
from test_relay_client import SENDER, Receiver, mta_lines, send, sender_daemon, unfold

BINARY_HEAD = b"Subject: binary\r\nContent-Type: application/octet-stream\r\n\r\n"
# Every octet, CR LF . CR LF, bare CR and LF, NUL, no final line end; past 64 KiB so
# that the client sends several chunks.
BINARY_BODY = (bytes(range(256)) * 300 + b"\r\n.\r\n\n.\n\r\x00") * 2
CHUNKED = ("PIPELINING", "SIZE 10485760", "8BITMIME", "CHUNKING", "BINARYMIME",
           "ENHANCEDSTATUSCODES")


@pytest.fixture(autouse=True)
def _root(user1):
    needs_root()


def bdat(payload, last=False):
    return b"BDAT %d%s\r\n" % (len(payload), b" LAST" if last else b"") + payload


def send_binary(d, rcpts, body=BINARY_HEAD + BINARY_BODY):
    """One BINARYMIME message from SENDER, in three chunks."""
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<%s> BODY=BINARYMIME" % SENDER, 250)
        for r in rcpts:
            c.expect("RCPT TO:<%s>" % r, 250)
        third = len(body) // 3
        c.send(bdat(body[:third]) + bdat(body[third:2 * third]) + bdat(body[2 * third:], True))
        assert c.reply().code == 250 and c.reply().code == 250
        msgid = accepted_id(c.reply())
        c.until_quit()
    return msgid


def split_message(data):
    head, body = data.split(b"\r\n\r\n", 1)
    return head + b"\r\n", body


def test_binary_message_goes_in_pipelined_bdat_chunks(make_daemon):
    with Receiver(keywords=CHUNKED, batch_wait=0.3) as rx:
        d = sender_daemon(make_daemon, rx.port)
        send_binary(d, ["a@relay.test", "b@relay.test"])
        (m,) = rx.wait_messages(1, 20)
        assert m["mail"].endswith(" BODY=BINARYMIME"), m["mail"]
        assert len(m["rcpts"]) == 2
        verbs = [c.split(" ")[0] for c in rx.commands]
        assert "DATA" not in verbs, rx.commands
        bdats = [c for c in rx.commands if c.startswith("BDAT ")]
        assert len(bdats) == len(m["chunks"]) >= 2, bdats
        assert all(not c.endswith(" LAST") for c in bdats[:-1]) and bdats[-1].endswith(" LAST")
        assert [int(c.split(" ")[1]) for c in bdats] == [len(x) for x in m["chunks"]]
        head, body = split_message(m["data"])
        # The body octet for octet; the header section, our Received field first, with
        # CR LF line ends and nothing bare in it.
        assert body == BINARY_BODY
        assert head.startswith(b"Received: from client.test")
        assert head.endswith(BINARY_HEAD[:-2])
        assert b"\n" not in head.replace(b"\r\n", b"")
        assert d.wait_queue_empty(10)
        (tx,) = mta_lines(d, "transaction")
        assert 'accepted=2 result="250 2.0.0 Ok: queued as RX1"' in tx, tx


@pytest.mark.parametrize("keywords", [("PIPELINING", "8BITMIME"),
                                      ("PIPELINING", "8BITMIME", "CHUNKING")])
def test_binary_message_to_a_server_without_binarymime_bounces(make_daemon, keywords):
    with Receiver(keywords=keywords) as rx:
        d = sender_daemon(make_daemon, rx.port)
        send_binary(d, ["a@relay.test"])
        bounce = d.wait_mailbox("sender", 1, 15)
        assert bounce, d.log()[-3000:]
        _, reports, _, returned = parse_dsn(bounce[0][1])
        assert reports[0]["Status"] == "5.6.3", reports
        assert "conversion of binary content needed and not done" in unfold(
            reports[0]["Diagnostic-Code"])
        # No MAIL was sent; the notice returns the header section only.
        assert rx.batches == [] and rx.messages == []
        assert b"Subject: binary" in bounce[0][1]
        assert b"text/rfc822-headers" in bounce[0][1]
        assert BINARY_BODY[:300] not in bounce[0][1]
        (ns,) = mta_lines(d, "not-sent")
        assert "does not offer CHUNKING and BINARYMIME" in ns, ns


def test_text_message_goes_with_data_even_when_chunking_is_offered(make_daemon):
    with Receiver(keywords=CHUNKED) as rx:
        d = sender_daemon(make_daemon, rx.port)
        send(d, ["a@relay.test"], body=b"Subject: text\r\n\r\n.dot\r\nline\r\n")
        (m,) = rx.wait_messages(1)
        assert "DATA" in rx.commands and not any(c.startswith("BDAT") for c in rx.commands)
        assert m["data"].endswith(b"Subject: text\r\n\r\n.dot\r\nline\r\n")
        assert "BODY=" not in m["mail"]


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_refused_chunk_fails_the_message_and_resets(make_daemon, pipelining):
    keywords = CHUNKED if pipelining else tuple(k for k in CHUNKED if k != "PIPELINING")
    with Receiver(keywords=keywords, batch_wait=0.3,
                  chunk_replies={2: "552 5.3.4 Message size exceeds fixed limit"}) as rx:
        d = sender_daemon(make_daemon, rx.port)
        send_binary(d, ["a@relay.test"])
        bounce = d.wait_mailbox("sender", 1, 20)
        assert bounce, d.log()[-3000:]
        _, reports, _, _ = parse_dsn(bounce[0][1])
        assert reports[0]["Status"] == "5.3.4", reports
        bdats = [c for c in rx.commands if c.startswith("BDAT ")]
        if not pipelining:
            # Lock-step: nothing after the refused chunk.
            assert len(bdats) == 2, rx.commands
        assert "RSET" in rx.commands[rx.commands.index(bdats[-1]):], rx.commands
        assert rx.messages == []
        (tx,) = mta_lines(d, "transaction")
        assert 'result="552 5.3.4 Message size exceeds fixed limit"' in tx, tx
        # The connection goes on: a text message after it is delivered.
        send(d, ["b@relay.test"])
        assert len(rx.wait_messages(1)) == 1
        assert d.wait_queue_empty(10)


def test_binary_message_relayed_to_a_second_smtpd_octet_for_octet(make_daemon):
    rx = make_daemon(hostname="rx.test.example",
                     rules='table v { "@relay.test" = root }\n'
                           'action "keep" maildir "{MAILDIR}/%{user.username}" virtual <v>\n'
                           'match from any for domain "relay.test" action "keep"\n')
    d = sender_daemon(make_daemon, rx.port)
    send_binary(d, ["a@relay.test"])
    assert wait_until(lambda: len(rx.messages()) == 1, 15), d.log()[-3000:]
    assert d.wait_queue_empty(10)
    (msg,) = read_spool(rx.queue)
    assert [e["body"] for e in msg.envelopes] == ["binarymime"]
    head, body = msg.data.split(b"\n\n", 1)
    assert body == BINARY_BODY
    assert head.endswith(BINARY_HEAD[:-4].replace(b"\r\n", b"\n"))
    # Two Received fields: the receiver's and the sender's.
    assert len(re.findall(rb"(?m)^Received: ", head)) == 2


# ------------------------------------------------------------------ Postfix


@pytest.fixture
def net(tmp_path):
    from test_mx import net_for
    yield from net_for(tmp_path)


@pytest.fixture
def peer(net, tmp_path):
    from test_mx_peers import Peers
    p = Peers(net, tmp_path)
    yield p
    p.stop()


def test_postfix_offers_chunking_without_binarymime(net, peer):
    """Postfix 3.7 offers CHUNKING, not BINARYMIME: a binary message is bounced without
    MAIL, a text message goes with DATA and arrives as it was sent."""
    pf = peer.postfix("127.0.0.63", ["pfc.test"])
    d = net.sender(relay='host "smtp://127.0.0.63"')
    send_binary_to = "bob@pfc.test"
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<alice@origin.test> BODY=BINARYMIME", 250)
        c.expect("RCPT TO:<%s>" % send_binary_to, 250)
        c.send(bdat(BINARY_HEAD + BINARY_BODY, True))
        accepted_id(c.reply())
        text = b"Subject: text over DATA\r\n\r\n.leading dot\r\n" + "caf\u00e9\r\n".encode()
        c.expect("MAIL FROM:<alice@origin.test> BODY=8BITMIME", 250)
        c.expect("RCPT TO:<%s>" % send_binary_to, 250)
        c.expect("DATA", 354)
        c.send(text.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        accepted_id(c.reply())
        c.until_quit()
    (m,) = pf.wait_messages(1, timeout=20)
    head, body = m.split(b"\n\n", 1)
    assert b"\nSubject: text over DATA\n" in head + b"\n", head
    assert body == b".leading dot\n" + "caf\u00e9\n".encode(), body
    assert d.wait_log(r"mta not-sent .*554 5\.6\.3 .*does not offer CHUNKING and BINARYMIME", 15), \
        d.log()[-3000:]
    assert pf.wait_log(r"postfix/smtpd\[\d+\]: \w+: client=", 15)
    # Postfix saw one MAIL only: the text message's.
    assert len(re.findall(r"postfix/qmgr\[\d+\]: \w+: from=<alice@origin\.test>", pf.log())) == 1
