"""PIPELINING (RFC 2920) and unauthorised pipelining after HELO (RFC 5321 bad sync)."""

import select
import socket
import time

import pytest

from conftest import accepted_id, data_of


def test_group_replies_in_order(daemon):
    with daemon.client() as c:
        c.ehlo()
        c.send(b"RSET\r\n"
               b"MAIL FROM:<a@origin.example>\r\n"
               b"RCPT TO:<one@example.test>\r\n"
               b"RCPT TO:<x@foreign.example>\r\n"
               b"RCPT TO:<bad address>\r\n"
               b"RCPT TO:<two@example.test>\r\n"
               b"NOOP\r\n"
               b"DATA\r\n")
        rs = c.replies(8)
        got = [(r.code, r.esc) for r in rs]
        assert got == [(250, "2.0.0"), (250, "2.1.0"), (250, "2.1.5"), (550, "5.7.1"), (553, "5.1.3"),
                       (250, "2.1.5"), (250, "2.0.0"), (354, "")], rs
        c.send(data_of(["Subject: grouped", "", "x"]) + b".\r\nQUIT\r\n")
        msgid = accepted_id(c.reply())
        assert c.reply().is_(221, "2.0.0")
    (m,) = daemon.wait_messages(1)
    assert m.msgid == msgid
    assert sorted(e["rcpt"] for e in m.envelopes) == ["one@example.test", "two@example.test"]


def test_many_commands_one_write(daemon):
    """50 transactions' MAIL/RCPT/RSET in one write; every reply comes, in order."""
    with daemon.client() as c:
        c.ehlo()
        buf = b""
        want = []
        for i in range(50):
            buf += b"MAIL FROM:<a%d@origin.example>\r\n" % i
            want.append((250, "2.1.0"))
            for j in range(3):
                buf += b"RCPT TO:<r%d.%d@example.test>\r\n" % (i, j)
                want.append((250, "2.1.5"))
            buf += b"RSET\r\n"
            want.append((250, "2.0.0"))
        buf += b"MAIL FROM:<last@origin.example>\r\nRCPT TO:<last@example.test>\r\nDATA\r\n"
        want += [(250, "2.1.0"), (250, "2.1.5"), (354, "")]
        c.send(buf)
        rs = c.replies(len(want))
        assert [(r.code, r.esc) for r in rs] == want
        c.send(b"last\r\n.\r\n")
        accepted_id(c.reply())
    (m,) = daemon.wait_messages(1)
    assert [e["rcpt"] for e in m.envelopes] == ["last@example.test"]


def test_two_transactions_in_one_write(daemon):
    """Everything, including both messages and QUIT, in one write (ESMTP)."""
    with daemon.client() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@origin.example>\r\nRCPT TO:<first@example.test>\r\nDATA\r\n"
               + data_of(["Subject: first", "", "one"]) + b".\r\n"
               + b"MAIL FROM:<b@origin.example>\r\nRCPT TO:<second@example.test>\r\nDATA\r\n"
               + data_of(["Subject: second", "", "two"]) + b".\r\n"
               + b"QUIT\r\n")
        rs = c.replies(9)
        codes = [r.code for r in rs]
        assert codes == [250, 250, 354, 250, 250, 250, 354, 250, 221], rs
        id1, id2 = accepted_id(rs[3]), accepted_id(rs[7])
        assert id1 != id2
    msgs = {m.msgid: m for m in daemon.wait_messages(2)}
    assert sorted(msgs) == sorted([id1, id2])
    assert msgs[id1].body() == b"Subject: first\n\none\n"
    assert msgs[id2].body() == b"Subject: second\n\ntwo\n"
    assert [e["rcpt"] for e in msgs[id1].envelopes] == ["first@example.test"]
    assert [e["rcpt"] for e in msgs[id2].envelopes] == ["second@example.test"]


def test_mail_right_after_final_dot(daemon):
    """RFC 2920 style: content after 354; the next MAIL/RCPT/DATA follow the dot at once."""
    with daemon.client() as c:
        c.ehlo()
        c.send(b"MAIL FROM:<a@origin.example>\r\nRCPT TO:<first@example.test>\r\nDATA\r\n")
        assert [r.code for r in c.replies(3)] == [250, 250, 354]
        c.send(data_of(["one"]) + b".\r\nMAIL FROM:<b@origin.example>\r\nRCPT TO:<second@example.test>\r\nDATA\r\n")
        rs = c.replies(4)
        id1 = accepted_id(rs[0])
        assert [(r.code, r.esc) for r in rs[1:]] == [(250, "2.1.0"), (250, "2.1.5"), (354, "")]
        c.send(data_of(["two"]) + b".\r\n")
        id2 = accepted_id(c.reply())
    msgs = {m.msgid: m for m in daemon.wait_messages(2)}
    assert sorted(msgs) == sorted([id1, id2])


def test_helo_bytes_after_dot_are_refused(daemon):
    """No PIPELINING offered (HELO): bytes after the final dot -> 554 5.5.0, close, nothing queued."""
    with daemon.client() as c:
        c.helo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: sync\r\n\r\nbody\r\n.\r\nMAIL FROM:<x@origin.example>\r\n")
        r = c.reply()
        assert r.is_(554, "5.5.0"), r
        assert c.wait_closed(5), "connection not closed after 554 5.5.0"
        assert c.buf == b"", "more replies after 554: %r" % c.buf
    time.sleep(0.3)
    assert daemon.messages() == []
    assert daemon.incoming() == []


def test_helo_without_extra_bytes_is_fine(daemon):
    with daemon.client() as c:
        c.helo()
        msgid = c.send_message("a@origin.example", ["bob@example.test"], data_of(["x"]))
        c.expect("QUIT", 221, "2.0.0")
    (m,) = daemon.wait_messages(1)
    assert m.msgid == msgid
    assert "with SMTP id %s" % msgid in m.text


def test_pipelined_group_before_ehlo_reply_is_answered(daemon):
    """EHLO ends a group, but a client that sends it all at once still gets every reply."""
    with daemon.client() as c:
        c.greeting()
        c.send(b"EHLO c.test\r\nMAIL FROM:<a@origin.example>\r\nRCPT TO:<b@example.test>\r\nQUIT\r\n")
        rs = c.replies(4)
        assert [r.code for r in rs] == [250, 250, 250, 221]


def test_helo_bytes_sent_before_250_are_refused(daemon):
    """Bytes sent after the dot but before the 250 was written, in a separate segment.

    protocols.md section 3: reject "client bytes already waiting in the buffer before the
    250 reply to the final dot has been sent, when PIPELINING was not offered".  Here the
    MAIL leaves the client in its own write, shortly after the dot, while the daemon is
    still committing (no reply has reached the client yet, checked with select()).  An
    iteration where the 250 had already arrived proves nothing and is not counted.
    """
    conclusive = []
    for _ in range(10):
        with daemon.client() as c:
            c.helo()
            c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
            c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
            c.expect("DATA", 354)
            c.send(b"body\r\n.\r\n")
            time.sleep(0.0005)
            early = bool(select.select([c.sock], [], [], 0)[0])
            c.send(b"MAIL FROM:<x@origin.example>\r\n")
            rs = c.drain(quiet=0.5, limit=5)
            if not early:
                conclusive.append([r.first for r in rs])
        if len(conclusive) >= 4:
            break
    if len(conclusive) < 2:
        pytest.skip("the 250 nearly always arrived before the pipelined MAIL could be sent")
    accepted = [lines for lines in conclusive if not (lines and lines[0].startswith("554 5.5.0"))]
    # One acceptance may be the 250 leaving between our select() and send(): allow it.
    assert len(accepted) <= 1, \
        "MAIL sent before the 250 to the dot (HELO session) was accepted in %d of %d tries: %r" % (
            len(accepted), len(conclusive), accepted[:2])


def test_half_close_after_pipelined_quit(daemon):
    """A client that pipelines a whole session and then shuts down its sending side
    still gets every reply, and its message is queued."""
    with daemon.client() as c:
        c.greeting()
        c.send(b"EHLO c.test\r\nMAIL FROM:<a@origin.example>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
               b"Subject: half-close\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        rs = c.replies(6)
        assert [r.code for r in rs] == [250, 250, 250, 354, 250, 221], rs
        msgid = accepted_id(rs[4])
        assert c.wait_closed(5)
    (m,) = daemon.wait_messages(1)
    assert m.msgid == msgid and m.body() == b"Subject: half-close\n\nbody\n"
