"""Protocol limits: line lengths, sizes, counts, sessions, timeout, hops."""

import time

import pytest

from conftest import accepted_id


# --- command and text lines ------------------------------------------------------------


def test_command_line_512_accepted_513_refused(daemon):
    with daemon.client() as c:
        c.ehlo()
        line = b"NOOP " + b"x" * (512 - 2 - 5)
        assert len(line) + 2 == 512
        r = c.cmd(line)
        assert r.is_(250, "2.0.0"), r
        r = c.cmd(line + b"y")  # 513 with CR LF
        assert r.is_(500, "5.5.2"), r
        # The session goes on, and the tail of the long line was not taken as a command.
        c.expect("NOOP", 250, "2.0.0")
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")


def test_very_long_command_line(daemon):
    """A 100 kB line is one error, not many, and nothing of it is executed."""
    with daemon.client() as c:
        c.ehlo()
        c.send(b"NOOP " + b"QUIT\r" * 20000 + b"\r\n")
        r = c.reply()
        assert r.is_(500, "5.5.2"), r
        c.expect("NOOP", 250, "2.0.0")


def test_long_mail_line_with_valid_path_prefix(daemon):
    with daemon.client() as c:
        c.ehlo()
        r = c.cmd(b"MAIL FROM:<a@origin.example> " + b"X" * 600)
        assert r.is_(500, "5.5.2"), r
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")


def _data(c, body):
    c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
    c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
    c.expect("DATA", 354)
    c.send(body + b".\r\n")
    return c.reply()


def test_text_line_1000_accepted(daemon):
    with daemon.client() as c:
        c.ehlo()
        line = b"a" * 998
        msgid = accepted_id(_data(c, b"Subject: long\r\n\r\n" + line + b"\r\n"))
    (m,) = daemon.wait_messages(1)
    assert m.msgid == msgid
    assert m.body() == b"Subject: long\n\n" + line + b"\n"


def test_long_text_lines_accepted_and_kept_intact(daemon):
    """Real senders send lines over RFC 5321's 1000 octets (OpenSMTPD does not fold):
    without a configured max-text-line they are accepted, up to the message size, and
    stored intact, whatever the input buffer's size (a 200 kB line comes in pieces)."""
    lines = [b"a" * 999, b"Subject-ish " + b"b" * 5000, b".." + b"c" * 70000, b"d" * 200000,
             b"." * 3]
    with daemon.client() as c:
        c.ehlo()
        body = b"Subject: " + b"s" * 3000 + b"\r\n\r\n" + b"\r\n".join(lines) + b"\r\n"
        msgid = accepted_id(_data(c, body))
        # The session goes on.
        msgid2 = accepted_id(_data(c, b"ok\r\n"))
    msgs = {m.msgid: m for m in daemon.wait_messages(2)}
    assert set(msgs) == {msgid, msgid2}
    unstuffed = [line[1:] if line.startswith(b".") else line for line in lines]
    assert msgs[msgid].body() == (b"Subject: " + b"s" * 3000 + b"\n\n"
                                  + b"\n".join(unstuffed) + b"\n")


@pytest.fixture
def limited(make_daemon):
    """A daemon with RFC 5321's text line limit set."""
    return make_daemon(extra="smtp limit max-text-line 1000")


def test_text_line_1001_refused_with_a_limit(limited):
    with limited.client() as c:
        c.ehlo()
        r = _data(c, b"Subject: long\r\n\r\n" + b"a" * 999 + b"\r\nafter\r\n")
        assert r.is_(500, "5.5.2"), r
        # The session goes on.
        msgid = accepted_id(_data(c, b"ok\r\n"))
    time.sleep(0.2)
    assert [m.msgid for m in limited.messages()] == [msgid]
    assert limited.incoming() == []


def test_text_line_very_long_refused_with_a_limit(limited):
    """A 200 kB line (bigger than any buffer) is refused and the dot is still found."""
    with limited.client() as c:
        c.ehlo()
        r = _data(c, b"x" * 200000 + b"\r\nafter\r\n")
        assert r.is_(500, "5.5.2"), r
        c.expect("NOOP", 250, "2.0.0")
    assert limited.messages() == []


# --- message size --------------------------------------------------------------------------


@pytest.fixture
def small(make_daemon):
    return make_daemon(extra="smtp max-message-size 10000")


def test_size_param_over_limit(small):
    with small.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example> SIZE=10001", 552, "5.3.4")
        c.expect("MAIL FROM:<a@origin.example> SIZE=99999999999999999999", 552, "5.3.4")
        c.expect("MAIL FROM:<a@origin.example> SIZE=10000", 250, "2.1.0")


def test_content_at_limit_accepted_over_refused(small):
    line = b"y" * 98 + b"\r\n"  # 100 octets
    with small.client() as c:
        c.ehlo()
        msgid = accepted_id(_data(c, line * 100))  # exactly 10000
        r = _data(c, line * 101)
        assert r.is_(552, "5.3.4"), r
        # Content over the limit while SIZE= claimed less.
        c.expect("MAIL FROM:<a@origin.example> SIZE=500", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(line * 150 + b".\r\n")
        r = c.reply()
        assert r.is_(552, "5.3.4"), r
    time.sleep(0.2)
    assert [m.msgid for m in small.messages()] == [msgid]
    assert small.incoming() == []


# --- counts ----------------------------------------------------------------------------------


def test_max_rcpt(make_daemon):
    d = make_daemon(extra="smtp limit max-rcpt 3")
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        for i in range(3):
            c.expect("RCPT TO:<r%d@example.test>" % i, 250, "2.1.5")
        c.expect("RCPT TO:<r3@example.test>", 452, "4.5.3")
        c.expect("RCPT TO:<r4@example.test>", 452, "4.5.3")
        c.expect("DATA", 354)
        c.send(b"x\r\n.\r\n")
        msgid = accepted_id(c.reply())
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    assert sorted(e["rcpt"] for e in m.envelopes) == ["r0@example.test", "r1@example.test", "r2@example.test"]


def test_max_mails(make_daemon):
    d = make_daemon(extra="smtp limit max-mails 2")
    with d.client() as c:
        c.ehlo()
        ids = [c.send_message("a@origin.example", ["b@example.test"], b"n\r\n") for _ in range(2)]
        c.expect("MAIL FROM:<a@origin.example>", 452, "4.5.3")
    with d.client() as c:  # a new session may send again
        c.ehlo()
        ids.append(c.send_message("a@origin.example", ["b@example.test"], b"n\r\n"))
    assert sorted(m.msgid for m in d.wait_messages(3)) == sorted(ids)


def test_max_errors(make_daemon):
    d = make_daemon(extra="smtp limit max-errors 3")
    with d.client() as c:
        c.ehlo()
        c.expect("BOGUS", 500, "5.5.2")
        c.expect("MAIL FROM:<bad>", 553, "5.1.7")
        c.expect("VRFY x", 502, "5.5.1")
        r = c.reply()
        assert r.is_(421, "4.7.0"), r
        assert c.wait_closed(5)


def test_max_errors_closes_in_data_refusal(make_daemon):
    """A refused message counts as an error, and the 421 follows its reply."""
    d = make_daemon(extra="smtp limit max-errors 2")
    with d.client() as c:
        c.ehlo()
        c.expect("BOGUS", 500, "5.5.2")
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"bare\nlf\r\n.\r\n")
        r = c.reply()
        assert r.is_(550, "5.5.2"), r
        r = c.reply()
        assert r.is_(421, "4.7.0"), r
        assert c.wait_closed(5)
    assert d.messages() == []


def test_max_hops(make_daemon):
    d = make_daemon(extra="smtp limit max-hops 5")
    hop = b"Received: from h%d.example by relay.example; Thu, 1 Jan 2025 00:00:00 +0000\r\n"
    with d.client() as c:
        c.ehlo()
        r = _data(c, b"".join(hop % i for i in range(5)) + b"Subject: loop\r\n\r\nbody\r\n")
        assert r.is_(554, "5.4.6"), r
        # Case does not matter for the header name.
        r = _data(c, b"".join((hop % i).replace(b"Received", b"RECEIVED") for i in range(5)) + b"\r\nb\r\n")
        assert r.is_(554, "5.4.6"), r
        msgid = accepted_id(_data(c, b"".join(hop % i for i in range(4)) + b"Subject: ok\r\n\r\nbody\r\n"))
        # "Received:" lines in the body are not hops.
        msgid2 = accepted_id(_data(c, b"Subject: b\r\n\r\n" + b"".join(hop % i for i in range(10))))
    msgs = {m.msgid: m for m in d.wait_messages(2)}
    assert sorted(msgs) == sorted([msgid, msgid2])
    # Our own Received header plus the client's 4.
    assert msgs[msgid].data.count(b"Received: ") == 5


# --- sessions and time ---------------------------------------------------------------------


def test_timeout(make_daemon):
    d = make_daemon(extra="smtp timeout 2s")
    with d.client() as c:
        c.ehlo()
        t0 = time.monotonic()
        r = c.reply(timeout=8)
        waited = time.monotonic() - t0
        assert r.is_(421, "4.4.2"), r
        assert 1.5 <= waited <= 5, waited
        assert c.wait_closed(3)


def test_timeout_in_data_discards(make_daemon):
    d = make_daemon(extra="smtp timeout 2s")
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<b@example.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: half\r\n\r\nhalf a message\r\n")
        r = c.reply(timeout=8)
        assert r.is_(421, "4.4.2"), r
        assert c.wait_closed(3)
    time.sleep(0.2)
    assert d.messages() == []
    assert d.incoming() == []


def test_activity_defers_timeout(make_daemon):
    d = make_daemon(extra="smtp timeout 2s")
    with d.client() as c:
        c.ehlo()
        for _ in range(3):
            time.sleep(1.0)
            c.expect("NOOP", 250, "2.0.0")


def test_max_sessions(make_daemon):
    d = make_daemon(extra="smtp limit max-sessions 2")
    a, b = d.client(), d.client()
    try:
        a.greeting()
        b.greeting()
        with d.client() as c:
            r = c.reply()
            assert r.is_(421, "4.3.2"), r
            assert c.wait_closed(5)
        # The two sessions still work.
        a.expect("EHLO a.test", 250)
        b.expect("EHLO b.test", 250)
        a.expect("QUIT", 221, "2.0.0")
        assert a.wait_closed(5)
        time.sleep(0.2)
        # A slot is free again.
        with d.client() as c:
            c.greeting()
    finally:
        a.close()
        b.close()


def test_max_sessions_per_address(make_daemon):
    d = make_daemon(extra="smtp limit max-sessions-per-address 1")
    a = d.client(source="127.0.0.1")
    try:
        a.greeting()
        with d.client(source="127.0.0.1") as c:
            r = c.reply()
            assert r.is_(421, "4.7.0"), r
            assert c.wait_closed(5)
        # Another address is not affected.
        with d.client(source="127.0.0.2") as c:
            c.greeting()
            c.expect("EHLO other.test", 250)
        a.expect("EHLO a.test", 250)
    finally:
        a.close()


def _open_sessions(d, n, source):
    """n sessions from `source`, each greeted; the caller closes them."""
    held = []
    try:
        for _ in range(n):
            held.append(d.client(source=source))
            held[-1].greeting()
    except BaseException:
        for c in held:
            c.close()
        raise
    return held


def _refused_per_address(d, source):
    """A connection from `source` gets 421 4.7.0 and is closed."""
    with d.client(source=source) as c:
        r = c.reply()
        assert r.is_(421, "4.7.0"), r
        assert c.wait_closed(5)


def test_max_sessions_per_address_default_50(daemon):
    """Without a setting, one address gets 50 sessions; the 51st is refused, others
    still get in."""
    held = _open_sessions(daemon, 50, "127.0.0.1")
    try:
        _refused_per_address(daemon, "127.0.0.1")
        assert daemon.wait_log(r"smtp refused address=127\.0\.0\.1 reason=max-sessions-per-address", 5)
        with daemon.client(source="127.0.0.2") as c:
            c.greeting()
        held[0].expect("EHLO a.test", 250)
    finally:
        for c in held:
            c.close()


def test_max_sessions_per_address_0_is_no_limit(make_daemon):
    d = make_daemon(extra="smtp limit max-sessions-per-address 0")
    for c in _open_sessions(d, 60, "127.0.0.1"):
        c.close()


def test_max_connection_rate(make_daemon):
    """New connections a minute from one address, refused ones included; another
    address has its own count.  (127.0.0.3: the start-up probe came from 127.0.0.1.)"""
    d = make_daemon(extra="smtp limit max-connection-rate 5")
    for _ in range(5):
        with d.client(source="127.0.0.3") as c:
            c.greeting()
            c.expect("QUIT", 221, "2.0.0")
            assert c.wait_closed(5)
    # No session open: it is the rate that refuses.
    _refused_per_address(d, "127.0.0.3")
    _refused_per_address(d, "127.0.0.3")
    assert d.wait_log(r"smtp refused address=127\.0\.0\.3 reason=max-connection-rate", 5)
    with d.client(source="127.0.0.4") as c:
        c.greeting()


# --- more line-length edges ------------------------------------------------------------


def test_stuffed_dot_not_counted_in_text_line(limited):
    """RFC 5321 4.5.3.1.6: 1000 octets incl. CR LF "not counting the leading dot
    duplicated for transparency".  A line of 998 octets that starts with a dot is sent
    as 999 + CR LF = 1001 octets and must be accepted."""
    line = b"." + b"d" * 997  # 998 octets as stored
    with limited.client() as c:
        c.ehlo()
        r = _data(c, b"Subject: dot\r\n\r\n." + line + b"\r\n")
        msgid = accepted_id(r)
    (m,) = limited.wait_messages(1)
    assert m.msgid == msgid
    assert m.body() == b"Subject: dot\n\n" + line + b"\n"


def test_stuffed_dot_line_over_limit_refused(limited):
    """... while a stuffed line of 999 octets (1002 on the wire) is too long."""
    with limited.client() as c:
        c.ehlo()
        r = _data(c, b"Subject: dot\r\n\r\n.." + b"d" * 998 + b"\r\n")
        assert r.is_(500, "5.5.2"), r


def test_command_line_limit_bytewise(daemon):
    """The limit holds when the line arrives one octet per segment (CR and LF split)."""
    with daemon.client() as c:
        c.ehlo()
        for extra, want in ((0, (250, "2.0.0")), (1, (500, "5.5.2"))):
            line = b"NOOP " + b"x" * (512 - 2 - 5 + extra) + b"\r\n"
            for i in range(len(line)):
                c.send(line[i:i + 1])
            r = c.reply()
            assert r.is_(*want), (len(line), r)
        c.expect("NOOP", 250, "2.0.0")


def test_long_command_cr_lf_split_across_writes(daemon):
    with daemon.client() as c:
        c.ehlo()
        c.send(b"NOOP " + b"x" * 600 + b"\r")
        time.sleep(0.2)
        c.send(b"\nNOOP\r\n")
        rs = c.replies(2)
        assert rs[0].is_(500, "5.5.2") and rs[1].is_(250, "2.0.0"), rs


def test_long_text_line_cr_lf_split_then_dot(daemon, limited):
    """A CR LF split across two reads still ends the line: with the limit the long line
    is refused; without it the line is stored whole (16383 octets then a CR fill the
    16 KiB input buffer, whose piece keeps the CR for the LF to come)."""
    for d, n in ((limited, 3000), (daemon, 16383)):
        with d.client() as c:
            c.ehlo()
            c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
            c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
            c.expect("DATA", 354)
            c.send(b"t" * n + b"\r")
            time.sleep(0.2)
            c.send(b"\n.\r\n")
            r = c.reply()
            if d is limited:
                assert r.is_(500, "5.5.2"), r
            else:
                accepted_id(r)
            c.expect("NOOP", 250, "2.0.0")
    assert limited.messages() == []
    (m,) = daemon.wait_messages(1)
    assert m.body() == b"t" * 16383 + b"\n"


def test_configured_line_limits(make_daemon):
    d = make_daemon(extra="smtp limit max-command-line 1024 max-text-line 2000")
    with d.client() as c:
        c.ehlo()
        c.expect(b"NOOP " + b"x" * (1024 - 7), 250, "2.0.0")
        c.expect(b"NOOP " + b"x" * (1024 - 6), 500, "5.5.2")
        msgid = accepted_id(_data(c, b"s\r\n\r\n" + b"w" * 1998 + b"\r\n"))
        r = _data(c, b"s\r\n\r\n" + b"w" * 1999 + b"\r\n")
        assert r.is_(500, "5.5.2"), r
    assert [m.msgid for m in d.wait_messages(1)] == [msgid]


def test_path_length_limit(daemon):
    """RFC 5321 4.5.3.1.3: a path is at most 256 octets including < and >."""
    def domain(n):
        labels, left = [], n
        while left > 0:
            k = min(63, left)
            if left - k == 1:  # never leave a lone trailing dot
                k -= 1
            labels.append("d" * k)
            left -= k + 1
        name = ".".join(labels)
        assert len(name) == n, (len(name), n)
        return name

    with daemon.client() as c:
        c.ehlo()
        path = "<%s@%s>" % ("a" * 64, domain(256 - 2 - 65))
        assert len(path) == 256
        c.expect("MAIL FROM:" + path, 250, "2.1.0")
        c.expect("RSET", 250, "2.0.0")
        path = "<%s@%s>" % ("a" * 64, domain(257 - 2 - 65))
        assert len(path) == 257
        c.expect("MAIL FROM:" + path, 553, "5.1.7")


def test_one_hundred_recipients(daemon):
    """RFC 5321 4.5.3.1.8: at least 100 recipients must be accepted."""
    with daemon.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.send(b"".join(b"RCPT TO:<r%03d@example.test>\r\n" % i for i in range(100)))
        rs = c.replies(100)
        assert all(r.is_(250, "2.1.5") for r in rs), [r for r in rs if r.code != 250][:3]
        c.expect("DATA", 354)
        c.send(b"x\r\n.\r\n")
        msgid = accepted_id(c.reply())
    (m,) = daemon.wait_messages(1)
    assert m.msgid == msgid and len(m.envelopes) == 100
    assert len({e["evpid"] for e in m.envelopes}) == 100


def test_reply_backpressure(daemon):
    """20000 pipelined NOOPs (writer thread), every reply read back."""
    import threading

    n = 20000
    with daemon.client(timeout=30) as c:
        c.ehlo()
        err = []

        def writer():
            try:
                c.send(b"NOOP\r\n" * n)
            except OSError as e:
                err.append(e)

        t = threading.Thread(target=writer, daemon=True)
        t.start()
        got = 0
        deadline = time.monotonic() + 30
        while got < n and time.monotonic() < deadline:
            r = c.reply(timeout=10)
            assert r.is_(250, "2.0.0"), r
            got += 1
        t.join(10)
        assert not err, err
        assert got == n
        c.expect("QUIT", 221, "2.0.0")


# --- session accounting --------------------------------------------------------------


def test_session_slots_are_released(make_daemon):
    """Aborted connections (no QUIT, some mid-transaction) give their slot back."""
    d = make_daemon(extra="smtp limit max-sessions 2 max-sessions-per-address 1")

    def connect_when_free():
        # The daemon notices a close on its next loop turn: allow it a moment.
        deadline = time.monotonic() + 3
        while True:
            c = d.client()
            r = c.reply()
            if r.code == 220:
                return c
            c.close()
            assert time.monotonic() < deadline, "slot never released: %r" % r
            time.sleep(0.05)

    for i in range(10):
        c = connect_when_free()
        try:
            if i % 2:
                c.send(b"EHLO x\r\nMAIL FROM:<a@origin.example>\r\n")
                c.replies(2)
        finally:
            c.close()  # no QUIT
    # Refusals do not take slots either: with one session open, refused ones come and go.
    a = connect_when_free()
    try:
        for _ in range(5):
            with d.client() as c:
                assert c.reply().is_(421, "4.7.0")
        with d.client(source="127.0.0.2") as c:
            assert c.reply().code == 220
    finally:
        a.close()


def test_disconnect_in_data_leaves_nothing(daemon):
    c = daemon.client()
    c.ehlo()
    c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
    c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
    c.expect("DATA", 354)
    c.send(b"Subject: gone\r\n\r\n" + b"x" * 100 + b"\r\n")
    time.sleep(0.1)
    c.close()
    deadline = time.monotonic() + 3
    while daemon.incoming() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.incoming() == []
    assert daemon.messages() == []
