"""Delivery over LMTP (`action "x" lmtp "127.0.0.1:PORT" [rcpt-to]`) to a small LMTP
server of the test: delivery, a per-recipient 550 that bounces, and a server that is
down at first (temporary failure, then delivered once it is up and the queue is
scheduled)."""

import re
import socket
import time

import pytest

from conftest import free_port, needs_root, parse_dsn, wait_until
from threadserver import ThreadedServer

SENDER = "sender@example.test"


class LMTPServer(ThreadedServer):
    """A threaded LMTP server on 127.0.0.1: one thread per connection, every socket
    with a timeout, at most `max_conns` connections, stopped by `close()`.

    `reject` maps a recipient (as given in RCPT TO, lower case) to the reply it gets;
    `data_reply` likewise for the per-recipient reply after the final dot."""

    def __init__(self, port=0, reject=None, data_reply=None, max_conns=50, path=None,
                 drop_after_data=False):
        self.drop_after_data = drop_after_data
        self.reject = {k.lower(): v for k, v in (reject or {}).items()}
        self.data_reply = {k.lower(): v for k, v in (data_reply or {}).items()}
        self.messages = []  # dicts: greeting verb, helo, sender, rcpts (accepted), data
        self.commands = []
        super().__init__(port=port, path=path, max_conns=max_conns)

    def _serve(self, c):
        c.settimeout(10)
        f = c.makefile("rb")
        w = c.makefile("wb")

        def say(line):
            w.write(line.encode() + b"\r\n")
            w.flush()

        cur = None
        try:
            say("220 lmtp.test LMTP ready")
            for _ in range(1000):
                if self.stop.is_set():
                    break
                line = f.readline(4096)
                if not line:
                    break
                cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
                with self.lock:
                    self.commands.append(cmd)
                verb = cmd.split(" ", 1)[0].upper()
                if verb in ("LHLO", "EHLO", "HELO"):
                    cur = {"verb": verb, "helo": cmd[5:], "sender": None, "rcpts": [], "data": None}
                    say("250-lmtp.test\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES")
                elif verb == "MAIL":
                    m = re.match(r"MAIL FROM:<([^>]*)>", cmd, re.I)
                    cur["sender"] = m.group(1)
                    cur["rcpts"] = []
                    say("250 2.1.0 ok")
                elif verb == "RCPT":
                    m = re.match(r"RCPT TO:<([^>]*)>", cmd, re.I)
                    r = m.group(1)
                    if r.lower() in self.reject:
                        say(self.reject[r.lower()])
                    else:
                        cur["rcpts"].append(r)
                        say("250 2.1.5 ok")
                elif verb == "DATA":
                    if not cur or not cur["rcpts"]:
                        say("503 5.5.1 no valid recipients")
                        continue
                    say("354 go ahead")
                    lines = []
                    while True:
                        l = f.readline(65536)
                        if not l or l == b".\r\n":
                            break
                        if l.startswith(b"."):
                            l = l[1:]
                        lines.append(l)
                    cur["data"] = b"".join(lines)
                    if self.drop_after_data:
                        with self.lock:
                            self.dropped = getattr(self, "dropped", 0) + 1
                        break  # no verdict: the connection is closed
                    with self.lock:
                        self.messages.append(dict(cur))
                    if cur["verb"] == "LHLO":
                        # LMTP: one reply per accepted recipient (RFC 2033 4.2).
                        for r in cur["rcpts"]:
                            say(self.data_reply.get(r.lower(), "250 2.0.0 <%s> delivered" % r))
                    else:
                        say("250 2.0.0 message accepted")
                elif verb == "RSET":
                    say("250 2.0.0 ok")
                elif verb == "QUIT":
                    say("221 2.0.0 bye")
                    break
                else:
                    say("500 5.5.1 unknown command")
        except OSError:
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


def rules(port, extra=""):
    # lmtp actions: "l" gives the recipient as the client wrote it, "lu" the user name.
    return (
        'table lusers { bob, carol, dave }\n'
        'action "mb" maildir "{MAILDIR}/%%{dest.user:lowercase|strip}" user smtpdtest1\n'
        'action "l" lmtp "127.0.0.1:%d" rcpt-to userbase <lusers>\n'
        'action "lu" lmtp "127.0.0.1:%d" userbase <lusers>\n'
        '%s'
        'match from any for domain "lmtp.test" action "l"\n'
        'match from any for domain "user.test" action "lu"\n'
        'match from any for domain "example.test" action "mb"\n' % (port, port, extra))


def mk(make_daemon, port, deliver=True):
    return make_daemon(rules=rules(port), deliver=deliver, methods=("lmtp",),
                       mail_owner="smtpdtest1")


def send(d, rcpts, body=b"Subject: over lmtp\r\n\r\nhello lmtp\r\n.dot line\r\n", sender=SENDER):
    with d.client() as c:
        c.ehlo()
        msgid = c.send_message(sender, rcpts, body.replace(b"\r\n.", b"\r\n.."))
        c.until_quit()
    return msgid


def test_lmtp_delivery(make_daemon):
    with LMTPServer() as srv:
        d = mk(make_daemon, srv.port, deliver=False)
        msgid = send(d, ["Bob+Lists@lmtp.test", "carol@user.test"])
        stored = d.wait_messages(1)[0].data
        assert d.smtpctl("resume", "mda")[0] == 0  # lmtp actions are mda deliveries
        got = srv.wait_messages(2)
        assert d.wait_queue_empty(10), d.log()[-2000:]
        assert len(got) == 2, (got, srv.commands)
        by_rcpt = {m["rcpts"][0]: m for m in got}
        # rcpt-to: the recipient as the client wrote it; without: the user name.
        assert set(by_rcpt) == {"Bob+Lists@lmtp.test", "carol"}, by_rcpt.keys()
        for m in got:
            assert m["verb"] == "LHLO", m
            assert m["sender"] == SENDER
            assert len(m["rcpts"]) == 1
            # As stored, without the fields of local deliveries, CR LF, unstuffed.
            assert m["data"] == stored.replace(b"\n", b"\r\n"), (m["data"], stored)
        assert b"Return-Path" not in got[0]["data"]
        assert ("id %s" % msgid).encode() in got[0]["data"]
        assert b"\r\n.dot line\r\n" in got[0]["data"]
        log = d.log()
        assert len(re.findall(r"mda delivery evpid=%s[0-9a-f]{8} .*result=Ok" % msgid, log)) == 2, log
        assert not any(c.upper().startswith(("STARTTLS", "AUTH")) for c in srv.commands)


def test_lmtp_recipient_550_bounces(make_daemon):
    with LMTPServer(reject={"bob@lmtp.test": "550 5.1.1 <bob@lmtp.test>: no such user here"}) as srv:
        d = mk(make_daemon, srv.port)
        msgid = send(d, ["bob@lmtp.test", "dave@lmtp.test"])
        got = srv.wait_messages(1)
        assert [m["rcpts"] for m in got] == [["dave@lmtp.test"]], got
        bounce = d.wait_mailbox("sender", 1, 15)
        assert bounce, d.log()[-3000:]
        assert d.wait_queue_empty(10)
        _, rcpts, _, returned = parse_dsn(bounce[0][1])
        assert len(rcpts) == 1
        r = rcpts[0]
        assert r["Action"] == "failed" and r["Status"] == "5.1.1", r
        assert r["Final-Recipient"].replace(" ", "") == "rfc822;bob@lmtp.test", r
        assert r["Diagnostic-Code"].startswith("smtp; 550 5.1.1"), r
        assert "no such user here" in r["Diagnostic-Code"], r
        assert ("id %s" % msgid) in str(returned)
        time.sleep(0.5)
        assert len(srv.messages) == 1 and len(d.mailbox("sender")) == 1


def test_lmtp_data_reply_tempfail_then_ok(make_daemon):
    """A 452 after the final dot is a temporary failure; the envelope is kept."""
    with LMTPServer(data_reply={"carol@lmtp.test": "452 4.2.2 mailbox full"}) as srv:
        d = mk(make_daemon, srv.port)
        send(d, ["carol@lmtp.test"])
        m = d.wait_log(r"result=TempFail retry-in=\d+s stat=\"452 4.2.2 mailbox full\"")
        assert m, d.log()[-2000:]
        code, q, _ = d.smtpctl("show", "queue")
        f = q.strip().split("|")
        assert f[7] == "1" and f[9] == "452 4.2.2 mailbox full", q
        srv.data_reply.clear()
        assert d.smtpctl("schedule", "all")[1].strip() == "1 envelope(s) scheduled"
        assert wait_until(lambda: len(srv.messages) == 2 and d.queue_empty(), 10), d.log()[-2000:]
        assert d.mailbox("sender") == []


def test_lmtp_server_down_then_up(make_daemon):
    port = free_port()
    d = mk(make_daemon, port)
    msgid = send(d, ["dave@lmtp.test"])
    m = d.wait_log(r"mda delivery evpid=(%s[0-9a-f]{8}) .*result=TempFail retry-in=(\d+)s" % msgid)
    assert m, d.log()[-2000:]
    code, q, _ = d.smtpctl("show", "queue")
    f = q.strip().split("|")
    assert code == 0 and f[0] == m.group(1) and f[7] == "1" and f[8] == "pending" and f[9], q
    assert d.mailbox("sender") == []
    with LMTPServer(port=port) as srv:
        code, out, _ = d.smtpctl("schedule", "all")
        assert code == 0 and out.strip() == "1 envelope(s) scheduled", out
        got = srv.wait_messages(1)
        assert len(got) == 1 and got[0]["rcpts"] == ["dave@lmtp.test"], got
        assert d.wait_queue_empty(10)
    assert d.mailbox("sender") == []
    assert d.wait_log(r"mda delivery evpid=%s .*result=Ok" % m.group(1), 15)


def test_lmtp_unix_socket(make_daemon):
    d = make_daemon(start=False, deliver=True, methods=("lmtp",), mail_owner="smtpdtest1")
    path = d.dir / "lmtp.sock"
    with LMTPServer(path=path) as srv:
        d.rules = ('table lusers { bob }\n'
                   'action "ls" lmtp "%s" rcpt-to userbase <lusers>\n'
                   'match from any for domain "lmtp.test" action "ls"\n' % path)
        d.start()
        msgid = send(d, ["bob@lmtp.test"])
        got = srv.wait_messages(1)
        assert len(got) == 1 and got[0]["rcpts"] == ["bob@lmtp.test"], (got, d.log()[-2000:])
        assert ("id %s" % msgid).encode() in got[0]["data"]
        assert d.wait_queue_empty(10)


def test_lmtp_connection_lost_before_verdict_is_tempfail(make_daemon):
    with LMTPServer(drop_after_data=True) as srv:
        d = mk(make_daemon, srv.port)
        send(d, ["dave@lmtp.test"])
        assert d.wait_log(r"result=TempFail"), d.log()[-2000:]
        assert re.search(r"result=Ok", d.log()) is None
        assert srv.messages == [] and getattr(srv, "dropped", 0) == 1
        srv.drop_after_data = False
        assert d.smtpctl("schedule", "all")[1].strip() == "1 envelope(s) scheduled"
        assert wait_until(lambda: len(srv.messages) == 1 and d.queue_empty(), 10), d.log()[-2000:]
        assert d.mailbox("sender") == []


def test_relay_over_smtp_and_pause_mta(make_daemon):
    """relay host smtp://127.0.0.1:PORT: EHLO, the recipient as given; held while the
    mta agent is paused, while local deliveries go on."""
    with LMTPServer() as srv:
        d = make_daemon(deliver=True, methods=(), mail_owner="smtpdtest1", start=False,
                        rules=('action "mb" maildir "{MAILDIR}/%%{dest.user:lowercase|strip}" user smtpdtest1\n'
                               'action "out" relay host "smtp://127.0.0.1:%d"\n'
                               'match from any for domain "relay.test" action "out"\n'
                               'match from any for domain "example.test" action "mb"\n' % srv.port))
        d.start()
        assert d.smtpctl("pause", "mta")[1].strip() == "mta paused"
        msgid = send(d, ["Someone+x@relay.test", "alice@example.test"])
        assert d.wait_mailbox("alice", 1, 10)
        time.sleep(1.0)
        assert srv.messages == []
        code, q, _ = d.smtpctl("show", "queue")
        assert q.count("\n") == 1 and "|relay:Someone+x@relay.test|out|" in q, q
        assert d.smtpctl("resume", "mta")[1].strip() == "mta resumed"
        got = srv.wait_messages(1)
        assert len(got) == 1, d.log()[-2000:]
        assert got[0]["verb"] == "EHLO" and got[0]["rcpts"] == ["Someone+x@relay.test"], got
        assert got[0]["sender"] == SENDER
        assert ("id %s" % msgid).encode() in got[0]["data"]
        assert d.wait_queue_empty(10)


def test_relay_ehlo_name_and_long_lines(make_daemon):
    """The relay client says EHLO with the action's `helo` name, else a fully qualified
    server name (never a bare host name); lines longer than RFC 5321 allows are folded
    for the SMTP next hop and delivered intact over LMTP."""
    with LMTPServer() as srv:
        d = make_daemon(deliver=True, methods=("lmtp",), mail_owner="smtpdtest1",
                        rules=rules(srv.port,
                                    'action "out" relay host "smtp://127.0.0.1:%d"\n'
                                    'action "named" relay host "smtp://127.0.0.1:%d" helo relay.example.org\n'
                                    'match from any for domain "relay.test" action "out"\n'
                                    'match from any for domain "named.test" action "named"\n'
                                    % (srv.port, srv.port)))
        subject = " ".join("word%d" % i for i in range(600))  # about 4.5 kB
        long_body = "x" * 5000
        words = " ".join(["lorem ipsum"] * 300)
        body = ("Subject: %s\r\n\r\n%s\r\n%s\r\n.%s\r\n" % (subject, long_body, words, long_body)).encode()
        send(d, ["a@relay.test", "b@named.test", "bob@lmtp.test"], body=body)
        got = srv.wait_messages(3)
        assert len(got) == 3 and d.wait_queue_empty(10), d.log()[-2000:]
        by_verb = {}
        for m in got:
            by_verb.setdefault(m["verb"], []).append(m)
        helos = sorted(m["helo"] for m in by_verb["EHLO"])
        assert "relay.example.org" in helos, helos
        default = [h for h in helos if h != "relay.example.org"][0]
        assert "." in default, helos
        # SMTP: every line fits, the header unfolds and the body rejoins to the original.
        for m in by_verb["EHLO"]:
            data = m["data"]
            assert all(len(l) <= 998 for l in data.split(b"\r\n")), max(map(len, data.split(b"\r\n")))
            head, _, rest = data.partition(b"\r\n\r\n")
            assert ("Subject: " + subject).encode() in head.replace(b"\r\n ", b" ")
            joined = rest.replace(b"\r\n", b"")
            assert (long_body + words + "." + long_body).encode() in joined
        # LMTP: intact.
        (lm,) = by_verb["LHLO"]
        assert ("\r\n%s\r\n%s\r\n.%s\r\n" % (long_body, words, long_body)).encode() in lm["data"]
        assert ("Subject: %s\r\n" % subject).encode() in lm["data"]


def test_relay_batches_recipients_and_reuses_the_connection(make_daemon):
    """A message with 5 recipients on a relay route, then 3 more messages to the same
    route (held by `pause mta`, then released together): one connection, one MAIL per
    message with all of its RCPTs, every recipient delivered once; the recipient the
    server refuses among accepted ones is the only one bounced."""
    refused = "r3@relay.test"
    with LMTPServer(reject={refused: "550 5.1.1 <%s>: no such user here" % refused}) as srv:
        d = make_daemon(deliver=True, methods=(), mail_owner="smtpdtest1",
                        rules=('action "mb" maildir "{MAILDIR}/%%{dest.user:lowercase|strip}" user smtpdtest1\n'
                               'action "out" relay host "smtp://127.0.0.1:%d"\n'
                               'match from any for domain "relay.test" action "out"\n'
                               'match from any for domain "example.test" action "mb"\n' % srv.port))
        assert d.smtpctl("pause", "mta")[1].strip() == "mta paused"
        first = ["r%d@relay.test" % i for i in range(1, 6)]
        batches = [first, ["a@relay.test"], ["b@relay.test", "c@relay.test"], ["d@relay.test"]]
        msgids = [send(d, rcpts) for rcpts in batches]
        assert d.smtpctl("resume", "mta")[1].strip() == "mta resumed"
        got = srv.wait_messages(4)
        assert len(got) == 4, (srv.commands, d.log()[-3000:])
        bounce = d.wait_mailbox("sender", 1, 15)
        assert bounce and d.wait_queue_empty(10), d.log()[-3000:]
        assert srv.conns == 1, srv.commands
        verbs = [c.split(" ", 1)[0].split(":", 1)[0].upper() for c in srv.commands]
        assert verbs.count("EHLO") == 1 and verbs.count("MAIL") == 4, srv.commands
        assert verbs.count("DATA") == 4 and verbs.count("RSET") == 0, srv.commands
        # Each MAIL is followed by every RCPT of its message, then DATA.
        rcpts = [c[len("RCPT TO:<"):-1] for c in srv.commands if c.upper().startswith("RCPT")]
        assert sorted(rcpts) == sorted(sum(batches, [])), rcpts
        by_msgid = {}
        for m in got:
            mid = next(i for i in msgids if ("id %s" % i).encode() in m["data"])
            by_msgid[mid] = m["rcpts"]
        assert by_msgid == {msgids[0]: [r for r in first if r != refused],
                            msgids[1]: batches[1], msgids[2]: batches[2], msgids[3]: batches[3]}, by_msgid
        # Every accepted recipient delivered once, the refused one bounced alone.
        log = d.log()
        ok = re.findall(r"mda delivery evpid=[0-9a-f]{16} from=<%s> to=<([^>]*)> .*result=Ok" % SENDER, log)
        assert sorted(ok) == sorted(r for r in sum(batches, []) if r != refused), log
        _, reports, _, _ = parse_dsn(bounce[0][1])
        assert [r["Final-Recipient"].replace(" ", "") for r in reports] == ["rfc822;" + refused]
        assert reports[0]["Status"] == "5.1.1", reports
        time.sleep(0.5)
        assert len(srv.messages) == 4 and len(d.mailbox("sender")) == 1


def test_lmtp_one_transaction_and_a_reply_per_recipient(make_daemon):
    """LMTP: the recipients of a message go in one transaction; the server's reply for
    each after the final dot decides each one: a 550 for one of them bounces it alone,
    a 452 keeps it queued, the others are delivered."""
    replies = {"carol@lmtp.test": "550 5.2.1 <carol@lmtp.test>: mailbox disabled",
               "dave@lmtp.test": "452 4.2.2 <dave@lmtp.test>: mailbox full"}
    with LMTPServer(data_reply=replies) as srv:
        d = mk(make_daemon, srv.port, deliver=False)
        rcpts = ["bob@lmtp.test", "carol@lmtp.test", "dave@lmtp.test"]
        send(d, rcpts)
        assert d.smtpctl("resume", "mda")[0] == 0
        got = srv.wait_messages(1)
        assert [m["rcpts"] for m in got] == [rcpts], (got, srv.commands)
        assert srv.conns == 1
        assert d.wait_log(r"result=TempFail retry-in=\d+s stat=\"452 4.2.2"), d.log()[-2000:]
        bounce = d.wait_mailbox("sender", 1, 15)
        assert bounce, d.log()[-3000:]
        _, reports, _, _ = parse_dsn(bounce[0][1])
        assert [r["Final-Recipient"].replace(" ", "") for r in reports] == ["rfc822;carol@lmtp.test"]
        code, q, _ = d.smtpctl("show", "queue")
        assert q.count("\n") == 1 and "dave@lmtp.test" in q, q
        ok = re.findall(r"from=<%s> to=<([^>]*)> .*result=Ok" % SENDER, d.log())
        assert ok == ["bob@lmtp.test"], d.log()


AIOSMTPD_SERVER = r"""
import asyncio, sys
from aiosmtpd.controller import Controller
from aiosmtpd.lmtp import LMTP

class Handler:
    async def handle_DATA(self, server, session, envelope):
        with open(sys.argv[2], "ab") as f:
            for r in envelope.rcpt_tos:
                f.write(b"RCPT " + r.encode() + b"\n")
            f.write(envelope.original_content or envelope.content)
            f.write(b"\n--end--\n")
        return "250 2.0.0 delivered"

class LMTPController(Controller):
    def factory(self):
        return LMTP(self.handler)

c = LMTPController(Handler(), hostname="127.0.0.1", port=int(sys.argv[1]))
c.start()
import time
time.sleep(float(sys.argv[3]))
c.stop()
"""


def test_lmtp_delivery_to_aiosmtpd(make_daemon, tmp_path):
    """Delivery to a real LMTP server: Debian's aiosmtpd in LMTP mode."""
    aiosmtpd = pytest.importorskip("aiosmtpd")
    assert aiosmtpd  # the module is only needed by the server process
    port = free_port()
    out = tmp_path / "lmtp.out"
    import subprocess
    import sys as _sys
    srv = subprocess.Popen([_sys.executable, "-c", AIOSMTPD_SERVER, str(port), str(out), "30"])
    try:
        assert wait_until(lambda: _port_open(port), 10), "aiosmtpd did not start"
        d = mk(make_daemon, port)
        msgid = send(d, ["Bob+Lists@lmtp.test"])
        assert wait_until(lambda: out.exists() and b"--end--" in out.read_bytes(), 15), d.log()[-2000:]
        assert d.wait_queue_empty(10), d.log()[-2000:]
        data = out.read_bytes()
        assert b"RCPT Bob+Lists@lmtp.test" in data, data[:300]
        assert ("id %s" % msgid).encode() in data
        assert d.wait_log(r"mda delivery evpid=%s[0-9a-f]{8} .*result=Ok" % msgid, 15)
    finally:
        srv.terminate()
        srv.wait(10)


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_relay_host_lmtp_url(make_daemon):
    """relay host lmtp://HOST:PORT: the relayed recipients over LMTP (LHLO, the address
    as given)."""
    with LMTPServer() as srv:
        d = make_daemon(start=False, deliver=True)
        d.rules = ('action "out" relay host "lmtp://127.0.0.1:%d"\n'
                   'match from any for domain "lmtp.test" action "out"\n' % srv.port)
        d.start()
        send(d, ["carol@lmtp.test"])
        got = srv.wait_messages(1)
        assert len(got) == 1 and got[0]["verb"] == "LHLO", got
        assert got[0]["rcpts"] == ["carol@lmtp.test"], got
        assert d.wait_queue_empty(10)
