"""The relay client (`action "out" relay host "smtp://127.0.0.1:PORT"`) against real
receivers: a scriptable Python SMTP server of this file (which records what the client
had already sent when each reply went out), Postfix's smtp-sink, and a second smtpd.
PIPELINING batches and lock-step without it, per-recipient refusals among accepted
ones, EHLO refused -> HELO, SIZE and 8-bit content refused before MAIL (bounced), DSN
parameters passed on and the "relayed" notice for a server without DSN, greetings and
421 that defer, and the log lines of the client."""

import os
import re
import select
import shutil
import socket
import subprocess
import time

import pytest

from conftest import (accepted_id, allow_traversal, free_port, needs_root, parse_dsn, read_spool,
                      wait_until)
from threadserver import ThreadedServer

SENDER = "sender@example.test"
ALL = ("PIPELINING", "SIZE 10485760", "8BITMIME", "DSN", "ENHANCEDSTATUSCODES")


class Receiver(ThreadedServer):
    """A threaded SMTP server on 127.0.0.1: one thread per connection, sockets with a
    timeout, at most 20 connections, stopped by `close()`.

    `keywords` are the EHLO keywords (None: EHLO refused with 502, HELO only);
    `rcpt` maps a recipient (lower case) to its reply; `greeting` is the first reply.
    At MAIL it notes which lines the client had already sent (`batches`): with
    PIPELINING it first waits (2 s at most) for the DATA of the batch; without, it
    waits 0.3 s and a well-behaved client has sent nothing more."""

    def __init__(self, keywords=ALL, rcpt=None, greeting="220 rx.test ESMTP ready",
                 mail_reply="250 2.1.0 ok", batch_wait=2.0, chunk_replies=None):
        self.keywords = keywords
        # BDAT (with CHUNKING among the keywords): the reply to the Nth chunk, from 1.
        self.chunk_replies = chunk_replies or {}
        self.batch_wait = batch_wait
        self.rcpt = {k.lower(): v for k, v in (rcpt or {}).items()}
        self.greeting = greeting
        self.mail_reply = mail_reply
        self.commands = []   # every command line, in order
        self.batches = []    # at each MAIL: [MAIL line, lines already buffered...]
        self.messages = []   # dicts: mail, rcpts (accepted RCPT lines), data, chunks
        super().__init__(max_conns=20)

    def _serve(self, c):
        c.settimeout(10)
        buf = bytearray()

        def fill(wait):
            r, _, _ = select.select([c], [], [], wait)
            if not r:
                return False
            data = c.recv(65536)
            if not data:
                raise EOFError
            buf.extend(data)
            return True

        def line(limit=10.0):
            deadline = time.monotonic() + limit
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0 or self.stop.is_set():
                    raise EOFError
                fill(min(left, 0.2))
            i = buf.index(b"\n")
            out = bytes(buf[:i + 1])
            del buf[:i + 1]
            return out

        def buffered():
            return [l.decode("latin-1") for l in bytes(buf).split(b"\r\n") if l]

        def say(text):
            c.sendall(text.encode() + b"\r\n")

        pipelining = self.keywords is not None and "PIPELINING" in self.keywords
        cur = None
        try:
            say(self.greeting)
            if not self.greeting.startswith("220"):
                line(5.0)  # QUIT
                say("221 2.0.0 bye")
                return
            for _ in range(2000):
                cmd = line().rstrip(b"\r\n").decode("latin-1")
                with self.lock:
                    self.commands.append(cmd)
                verb = cmd.split(" ", 1)[0].split(":", 1)[0].upper()
                if verb == "EHLO":
                    if self.keywords is None:
                        say("502 5.5.2 Error: command not recognized")
                        continue
                    lines = ["rx.test hello"] + list(self.keywords)
                    say("\r\n".join("250%s%s" % ("-" if i < len(lines) - 1 else " ", l)
                                    for i, l in enumerate(lines)))
                elif verb == "HELO":
                    say("250 rx.test")
                elif verb == "MAIL":
                    if pipelining:
                        deadline = time.monotonic() + self.batch_wait
                        while ("DATA" not in buffered() and time.monotonic() < deadline):
                            fill(0.1)
                    else:
                        fill(0.3)
                    with self.lock:
                        self.batches.append([cmd] + buffered())
                    cur = {"mail": cmd, "rcpts": [], "data": None}
                    say(self.mail_reply)
                elif verb == "RCPT":
                    addr = re.match(r"RCPT TO:<([^>]*)>", cmd, re.I).group(1).lower()
                    reply = self.rcpt.get(addr, "250 2.1.5 ok")
                    if reply.startswith("421"):
                        say(reply)
                        return
                    if reply.startswith("2") and cur is not None:
                        cur["rcpts"].append(cmd)
                    say(reply)
                elif verb == "DATA":
                    if cur is None or not cur["rcpts"]:
                        say("554 5.5.1 Error: no valid recipients")
                        continue
                    say("354 End data with <CR><LF>.<CR><LF>")
                    data = []
                    longest = 0
                    for _ in range(200000):
                        l = line(limit=10.0)
                        if l == b".\r\n":
                            break
                        longest = max(longest, len(l))
                        data.append(l[1:] if l.startswith(b".") else l)
                    cur["data"] = b"".join(data)
                    cur["longest"] = longest  # on the wire, CR LF included
                    with self.lock:
                        self.messages.append(cur)
                    cur = None
                    say("250 2.0.0 Ok: queued as RX1")
                elif verb == "BDAT":
                    # RFC 3030: exactly that many octets follow the line.
                    m = re.fullmatch(r"BDAT (\d+)( LAST)?", cmd)
                    if not m:
                        say("501 5.5.4 Syntax: BDAT octets [LAST]")
                        return
                    n, last = int(m.group(1)), bool(m.group(2))
                    deadline = time.monotonic() + 10
                    while len(buf) < n and time.monotonic() < deadline:
                        fill(0.2)
                    chunk = bytes(buf[:n])
                    del buf[:n]
                    if cur is None or not cur["rcpts"] or cur.get("failed"):
                        say("503 5.5.1 Error: no transaction")
                        continue
                    cur.setdefault("chunks", []).append(chunk)
                    reply = self.chunk_replies.get(len(cur["chunks"]))
                    if reply:
                        cur["failed"] = True
                        say(reply)
                    elif last:
                        cur["data"] = b"".join(cur["chunks"])
                        with self.lock:
                            self.messages.append(cur)
                        cur = None
                        say("250 2.0.0 Ok: queued as RX1")
                    else:
                        say("250 2.0.0 %d octets received" % n)
                elif verb == "RSET":
                    cur = None
                    say("250 2.0.0 Ok")
                elif verb == "QUIT":
                    say("221 2.0.0 Bye")
                    return
                else:
                    say("502 5.5.2 Error: command not recognized")
        except (OSError, EOFError):
            pass
        finally:
            c.close()

    def wait_messages(self, n, timeout=10):
        wait_until(lambda: len(self.messages) >= n, timeout)
        with self.lock:
            return list(self.messages)


@pytest.fixture(autouse=True)
def _root(user1):
    needs_root()


def relay_rules(port):
    return ('action "mb" maildir "{MAILDIR}/%%{dest.user:lowercase|strip}" user smtpdtest1\n'
            'action "out" relay host "smtp://127.0.0.1:%d"\n'
            'match from any for domain "relay.test" action "out"\n'
            'match from any for domain "example.test" action "mb"\n' % port)


def sender_daemon(make_daemon, port):
    return make_daemon(deliver=True, methods=(), mail_owner="smtpdtest1", rules=relay_rules(port))


def send(d, rcpts, body=b"Subject: relayed\r\n\r\nhello\r\n", mail_params="", rcpt_params=None):
    """One message from SENDER; `rcpt_params` maps a recipient to its parameters."""
    rcpt_params = rcpt_params or {}
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<%s>%s" % (SENDER, mail_params), 250)
        for r in rcpts:
            c.expect("RCPT TO:<%s>%s" % (r, rcpt_params.get(r, "")), 250)
        c.expect("DATA", 354)
        c.send(body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        msgid = accepted_id(c.reply())
        c.until_quit()
    return msgid


def unfold(value):
    """A header field's value with its folding undone."""
    return " ".join(value.split())


def mta_lines(d, event):
    return re.findall(r"[0-9a-f]{16} mta %s (.*)" % event, d.log())


def test_pipelined_batch_and_a_refused_recipient_among_accepted(make_daemon):
    """PIPELINING offered: MAIL, every RCPT and DATA reach the server before its reply
    to MAIL; the recipient it refuses (550) is the only one bounced, with the server's
    enhanced status; the others get the message once. The log has one transaction
    line and one disconnected line."""
    refused = "r2@relay.test"
    with Receiver(rcpt={refused: "550 5.1.1 <r2@relay.test>: Recipient address rejected"}) as rx:
        d = sender_daemon(make_daemon, rx.port)
        rcpts = ["r1@relay.test", refused, "r3@relay.test"]
        send(d, rcpts)
        (m,) = rx.wait_messages(1)
        assert [re.match(r"RCPT TO:<([^>]*)>", l).group(1) for l in m["rcpts"]] == ["r1@relay.test", "r3@relay.test"]
        assert len(rx.batches) == 1
        batch = rx.batches[0]
        assert batch[0].startswith("MAIL FROM:<%s>" % SENDER), batch
        assert [l.split(" ")[0] for l in batch[1:]] == ["RCPT", "RCPT", "RCPT", "DATA"], batch
        bounce = d.wait_mailbox("sender", 1, 15)
        assert bounce, d.log()[-3000:]
        _, reports, _, _ = parse_dsn(bounce[0][1])
        assert [r["Final-Recipient"].replace(" ", "") for r in reports] == ["rfc822;" + refused]
        assert reports[0]["Status"] == "5.1.1"
        assert "Recipient address rejected" in unfold(reports[0]["Diagnostic-Code"])
        assert d.wait_queue_empty(10)
        assert wait_until(lambda: mta_lines(d, "disconnected"), 10), d.log()[-2000:]
        (tx,) = mta_lines(d, "transaction")
        assert re.match(r'host=127\.0\.0\.1 address=127\.0\.0\.1:%d tls=none msgid=[0-9a-f]{8} '
                        r'from=<%s> rcpts=3 accepted=2 result="250 2\.0\.0 Ok: queued as RX1"$'
                        % (rx.port, SENDER), tx), tx
        (end,) = mta_lines(d, "disconnected")
        assert re.match(r'host=127\.0\.0\.1 address=127\.0\.0\.1:%d tls=none transactions=1 reason="quit"$'
                        % rx.port, end), end


def test_limits_of_the_server_split_the_recipients(make_daemon):
    """RFC 9422: a server that says LIMITS RCPTMAX=2 gets five recipients in three
    transactions of the same session (2, 2, 1), none refused, the message sent each
    time; the log says so. Our own EHLO says what we enforce."""
    rcpts = ["r%d@relay.test" % i for i in range(1, 6)]
    with Receiver(keywords=ALL + ("LIMITS RCPTMAX=2 MAILMAX=10",)) as rx:
        d = sender_daemon(make_daemon, rx.port)
        with d.client() as c:
            r = c.ehlo()
            assert "250-LIMITS RCPTMAX=1000 MAILMAX=100" in r.lines, r
            c.until_quit()
        send(d, rcpts)
        msgs = rx.wait_messages(3)
        assert len(msgs) == 3
        got = [[re.match(r"RCPT TO:<([^>]*)>", l).group(1) for l in m["rcpts"]] for m in msgs]
        assert got == [rcpts[0:2], rcpts[2:4], rcpts[4:5]], got
        assert all(m["data"].endswith(b"hello\r\n") for m in msgs)
        assert d.wait_queue_empty(10)
        assert wait_until(lambda: mta_lines(d, "disconnected"), 10), d.log()[-2000:]
        (end,) = mta_lines(d, "disconnected")
        assert "transactions=3" in end, end
        assert d.wait_mailbox("sender", 1, 1) == [], "nothing bounced"


def test_lines_fit_in_1000_octets_with_the_stuffed_dot(make_daemon):
    """RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CR LF on the
    wire. A line of 998 octets is sent intact; one of 998 that starts with a dot is 999
    once stuffed, so it is folded; the text survives."""
    with Receiver() as rx:
        d = sender_daemon(make_daemon, rx.port)
        x = b"x" * 998
        dotted = b"." + b"y" * 997
        send(d, ["a@relay.test"], body=b"Subject: long\r\n\r\n" + x + b"\r\n" + dotted + b"\r\n")
        (m,) = rx.wait_messages(1)
        assert m["longest"] <= 1000, m["longest"]
        assert b"\r\n" + x + b"\r\n" in m["data"]
        assert dotted in m["data"].replace(b"\r\n", b""), m["data"][-1100:]


def test_without_pipelining_the_client_waits_for_each_reply(make_daemon):
    """No PIPELINING: nothing follows MAIL before its reply (the server waits 0.3 s to
    see), and every recipient is given in turn."""
    with Receiver(keywords=("8BITMIME", "SIZE 1000000")) as rx:
        d = sender_daemon(make_daemon, rx.port)
        send(d, ["a@relay.test", "b@relay.test"])
        (m,) = rx.wait_messages(1)
        assert rx.batches == [[m["mail"]]], rx.batches
        assert len(m["rcpts"]) == 2
        assert re.fullmatch(r"MAIL FROM:<%s> SIZE=\d+" % SENDER, m["mail"]), m["mail"]
        assert d.wait_queue_empty(10)


def test_ehlo_refused_falls_back_to_helo(make_daemon):
    """A server that refuses EHLO (502) gets HELO, and no extension: lock-step, no
    parameter on MAIL; a 7-bit message is delivered."""
    with Receiver(keywords=None) as rx:
        d = sender_daemon(make_daemon, rx.port)
        send(d, ["a@relay.test"])
        (m,) = rx.wait_messages(1)
        verbs = [c.split(" ")[0] for c in rx.commands]
        assert verbs[:3] == ["EHLO", "HELO", "MAIL"], rx.commands
        assert m["mail"] == "MAIL FROM:<%s>" % SENDER
        assert rx.batches == [[m["mail"]]]
        assert d.wait_queue_empty(10)


def test_8bit_content_to_a_server_without_8bitmime_bounces(make_daemon):
    """RFC 6152: 8-bit content never goes raw to a server without 8BITMIME; smtpd does
    not convert: the recipients fail with 554 5.6.3 and no MAIL is sent for it. A 7-bit
    message to the same server is delivered; with 8BITMIME offered the 8-bit message
    goes with BODY=8BITMIME when the client declared it."""
    with Receiver(keywords=("PIPELINING", "SIZE 1000000")) as rx:
        d = sender_daemon(make_daemon, rx.port)
        send(d, ["a@relay.test"], body="Subject: caf\u00e9\r\n\r\nna\u00efve\r\n".encode())
        bounce = d.wait_mailbox("sender", 1, 15)
        assert bounce, d.log()[-3000:]
        _, reports, _, _ = parse_dsn(bounce[0][1])
        assert reports[0]["Status"] == "5.6.3", reports
        assert "conversion to 7 bit needed and not done" in unfold(reports[0]["Diagnostic-Code"])
        assert rx.batches == [] and rx.messages == []
        (ns,) = mta_lines(d, "not-sent")
        assert 'result="554 5.6.3 conversion to 7 bit needed and not done: rx.test does not offer 8BITMIME"' in ns, ns
        send(d, ["b@relay.test"])
        assert len(rx.wait_messages(1)) == 1
        assert d.wait_queue_empty(10)
    with Receiver() as rx:
        d = sender_daemon(make_daemon, rx.port)
        send(d, ["a@relay.test"], body="Subject: x\r\n\r\nna\u00efve\r\n".encode(),
             mail_params=" BODY=8BITMIME")
        (m,) = rx.wait_messages(1)
        assert " BODY=8BITMIME" in m["mail"], m["mail"]
        assert "na\u00efve".encode() in m["data"]


def test_dsn_parameters_pass_on_and_no_notice_from_here(make_daemon):
    """A server with DSN gets RET and ENVID on MAIL, NOTIFY and ORCPT on RCPT (ORCPT
    added from the recipient as received when the client gave none), xtext-encoded;
    the success notice is then the server's to send, none comes from here."""
    rx = make_daemon(hostname="rx.test.example",
                     rules='table v { "@relay.test" = root }\n'
                           'action "keep" maildir "{MAILDIR}/%{user.username}" virtual <v>\n'
                           'match from any for domain "relay.test" action "keep"\n')
    d = sender_daemon(make_daemon, rx.port)
    send(d, ["a@relay.test", "B+tag@relay.test"], mail_params=" RET=HDRS ENVID=id+2B1",
         rcpt_params={"a@relay.test": " NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Alias+2Ba@relay.test"})
    assert wait_until(lambda: len(rx.messages()) == 1, 15), d.log()[-3000:]
    assert d.wait_queue_empty(10)
    (msg,) = read_spool(rx.queue)
    envs = sorted(msg.envelopes, key=lambda e: e["rcpt"])
    assert [e["rcpt"] for e in envs] == ["B+tag@relay.test", "a@relay.test"]
    assert envs[1]["dsn-notify"] == "3" and envs[1]["dsn-orcpt"] == "rfc822;Alias+2Ba@relay.test", envs[1]
    assert envs[0]["dsn-notify"] == "0" and envs[0]["dsn-orcpt"] == "rfc822;B+2Btag@relay.test", envs[0]
    assert envs[1]["dsn-ret"] == "HDRS" and envs[1]["dsn-envid"] == "id+2B1"
    time.sleep(0.5)
    assert d.mailbox("sender") == [] and "kind=" not in d.log()


def test_size_over_the_server_limit_bounces_without_mail(make_daemon):
    """A second smtpd with max-message-size 2000 announces SIZE 2000: a larger message
    is bounced with 552 5.3.4 before any MAIL; a smaller one is sent with SIZE=."""
    rx = make_daemon(hostname="rx.test.example", extra="smtp max-message-size 2000",
                     rules='table v { "@relay.test" = root }\n'
                           'action "keep" maildir "{MAILDIR}/%{user.username}" virtual <v>\n'
                           'match from any for domain "relay.test" action "keep"\n')
    d = sender_daemon(make_daemon, rx.port)
    send(d, ["big@relay.test"], body=b"Subject: big\r\n\r\n" + (b"y" * 60 + b"\r\n") * 60)
    bounce = d.wait_mailbox("sender", 1, 15)
    assert bounce, d.log()[-3000:]
    _, reports, _, _ = parse_dsn(bounce[0][1])
    assert reports[0]["Status"] == "5.3.4"
    assert "message too big for rx.test.example (limit 2000)" in unfold(reports[0]["Diagnostic-Code"]), reports
    assert "MAIL FROM" not in rx.log() and "failed-command" not in rx.log()
    send(d, ["small@relay.test"])
    assert wait_until(lambda: len(rx.messages()) == 1, 15), d.log()[-3000:]
    assert d.wait_queue_empty(10)


def test_relayed_notice_from_a_server_without_dsn(make_daemon):
    """No DSN offered: NOTIFY is not sent; the recipients that asked NOTIFY=SUCCESS get
    one "relayed" notice for the message (RFC 3461 §6.2.3), listing each of them with
    the server's reply and its name as Remote-MTA."""
    with Receiver(keywords=("PIPELINING", "8BITMIME")) as rx:
        d = sender_daemon(make_daemon, rx.port)
        rcpts = ["r1@relay.test", "r2@relay.test", "r3@relay.test"]
        send(d, rcpts, rcpt_params={"r1@relay.test": " NOTIFY=SUCCESS",
                                    "r2@relay.test": " NOTIFY=SUCCESS,FAILURE"})
        (m,) = rx.wait_messages(1)
        assert all("NOTIFY" not in l and "ORCPT" not in l for l in m["rcpts"]), m["rcpts"]
        notice = d.wait_mailbox("sender", 1, 15)
        assert notice, d.log()[-3000:]
        msg, reports, _, third = parse_dsn(notice[0][1])
        assert msg["Subject"] == "Relayed Mail Report"
        assert sorted(r["Final-Recipient"].replace(" ", "") for r in reports) == \
            ["rfc822;r1@relay.test", "rfc822;r2@relay.test"]
        for r in reports:
            assert r["Action"] == "relayed" and r["Status"] == "2.0.0", r
            assert r["Remote-MTA"] == "dns; rx.test", r
            assert unfold(r["Diagnostic-Code"]) == "smtp; 250 2.0.0 Ok: queued as RX1", r
        assert third.get_content_type() == "text/rfc822-headers"
        assert d.wait_queue_empty(10)
        time.sleep(0.5)
        assert len(d.mailbox("sender")) == 1


@pytest.mark.parametrize("greeting", ["554 5.7.1 no service here", "421 4.3.2 busy"])
def test_refused_greeting_defers(make_daemon, greeting):
    """A greeting other than 220 defers the recipients (another server may take them);
    nothing is bounced."""
    with Receiver(greeting=greeting) as rx:
        d = sender_daemon(make_daemon, rx.port)
        send(d, ["a@relay.test"])
        assert d.wait_log(r"result=TempFail retry-in=\d+s stat=\"greeting: %s\"" % re.escape(greeting)
                          if greeting.startswith("5") else
                          r"result=TempFail retry-in=\d+s stat=\"%s\"" % re.escape(greeting), 15), d.log()[-2000:]
        assert wait_until(lambda: mta_lines(d, "disconnected"), 10)
        (end,) = mta_lines(d, "disconnected")
        assert "transactions=0" in end and greeting in end, end
        assert d.mailbox("sender") == []


def test_421_in_a_transaction_defers_the_rest(make_daemon):
    """A 421 to a RCPT ends the session: the recipients without a verdict are deferred,
    the one refused before it bounces."""
    with Receiver(keywords=("8BITMIME",), rcpt={"r1@relay.test": "550 5.1.1 no",
                                                "r2@relay.test": "421 4.4.2 closing"}) as rx:
        d = sender_daemon(make_daemon, rx.port)
        send(d, ["r1@relay.test", "r2@relay.test", "r3@relay.test"])
        assert d.wait_log(r"to=<r2@relay.test> result=TempFail retry-in=\d+s stat=\"421 4.4.2 closing\"", 15), \
            d.log()[-2000:]
        # The recipient not tried yet is deferred with the 421 too: nothing more was sent.
        assert d.wait_log(r"to=<r3@relay.test> result=TempFail retry-in=\d+s stat=\"421 4.4.2 closing\"", 5), \
            d.log()[-2000:]
        assert rx.commands[-1].startswith("RCPT TO:<r2@relay.test>"), rx.commands
        assert d.wait_mailbox("sender", 1, 15)
        assert rx.messages == []


def smtp_sink(tmp_path, port, flags):
    """smtp-sink on 127.0.0.1:PORT with `flags`, dumping each message into a
    directory of the test; returns (process, dump directory)."""
    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not os.path.exists(sink):
        pytest.skip("smtp-sink (postfix) is not installed")
    dump = tmp_path / "sink"
    dump.mkdir()
    os.chmod(dump, 0o777)
    allow_traversal(dump)
    p = subprocess.Popen([sink, "-u", "nobody", "-d", str(dump) + "/%M.", *flags,
                          "127.0.0.1:%d" % port, "10"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_until(lambda: _port_open(port), 5), "smtp-sink did not start"
    return p, dump


def _port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def _stop(p):
    p.terminate()
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(5)


@pytest.mark.parametrize("flags,proto", [([], "ESMTP"), (["-e"], "SMTP"), (["-p", "-N"], "ESMTP")])
def test_smtp_sink_receives(make_daemon, tmp_path, flags, proto):
    """Postfix's smtp-sink as the receiver: with every extension (DSN parameters seen
    in its dump), without ESMTP (HELO), without PIPELINING and DSN."""
    port = free_port()
    p, dump = smtp_sink(tmp_path, port, flags)
    try:
        d = sender_daemon(make_daemon, port)
        send(d, ["a@relay.test", "b@relay.test"], mail_params=" ENVID=e1",
             rcpt_params={"a@relay.test": " NOTIFY=FAILURE"})
        assert wait_until(lambda: list(dump.iterdir()), 15), d.log()[-2000:]
        assert d.wait_queue_empty(10)
        (f,) = list(dump.iterdir())
        text = f.read_bytes().decode("latin-1")
        assert "X-Client-Proto: %s" % proto in text, text
        mail = re.search(r"^X-Mail-Args: (.*)$", text, re.M).group(1)
        rcpts = re.findall(r"^X-Rcpt-Args: (.*)$", text, re.M)
        if proto == "SMTP":
            assert mail == "<%s>" % SENDER, mail
            assert rcpts == ["<a@relay.test>", "<b@relay.test>"], rcpts
        elif "-N" in flags:
            assert mail == "<%s>" % SENDER, mail
            assert rcpts == ["<a@relay.test>", "<b@relay.test>"], rcpts
        else:
            assert mail == "<%s> ENVID=e1" % SENDER, mail
            assert rcpts == ["<a@relay.test> NOTIFY=FAILURE ORCPT=rfc822;a@relay.test",
                             "<b@relay.test> ORCPT=rfc822;b@relay.test"], rcpts
        assert "Subject: relayed" in text
    finally:
        _stop(p)
