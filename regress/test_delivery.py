"""Local delivery end to end: maildir, mbox, mda (environment, shell metacharacters in
the sender), temporary failures and retries, permanent failures and bounces, expiry,
NOTIFY, and a restart with a full queue.

Every delivery runs as the test user smtpdtest1 (an action `user`, or the recipient for
mbox), into directories of the test; mbox only for that user, whose /var/mail file is
removed afterwards.
"""

import os
import pwd
import re
import stat
import time
from pathlib import Path

import pytest

from conftest import accepted_id, needs_root, parse_dsn, wait_until

# smtpdtest1 delivers everything @example.test into mail/LOCALPART (sub-address
# stripped); tests add their own actions and rules in front.
MAILDIR_RULES = """
action "mb" maildir "{MAILDIR}/%{dest.user:lowercase|strip}" user smtpdtest1
"""
CATCH_ALL = """
match from any for domain "example.test" action "mb"
"""

SENDER = "sender@example.test"


@pytest.fixture(autouse=True)
def _root(user1):
    needs_root()


def out_dir(d, owner="smtpdtest1"):
    """A directory of the test that the deliveries (as `owner`) may write to."""
    p = d.dir / "out"
    p.mkdir(exist_ok=True)
    pw = pwd.getpwnam(owner)
    os.chown(p, pw.pw_uid, pw.pw_gid)
    return p


def mk(make_daemon, actions="", matches="", deliver=True, methods=("mda",), start=True, **kw):
    """A daemon delivering as smtpdtest1; `actions`/`matches` come before the catch-all."""
    d = make_daemon(rules=MAILDIR_RULES + actions + matches + CATCH_ALL, deliver=deliver,
                    methods=methods, mail_owner="smtpdtest1", start=False, **kw)
    if start:
        d.start()
    return d


def send(d, rcpts, body=b"Subject: test\r\n\r\nhello\r\n", sender=SENDER, rcpt_params=""):
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<%s>" % sender, 250, "2.1.0")
        for r in rcpts:
            c.expect("RCPT TO:<%s>%s" % (r, rcpt_params), 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(body + b".\r\n")
        msgid = accepted_id(c.reply())
        c.until_quit()
    return msgid


def trace(sender, dest):
    return ("Return-Path: <%s>\nDelivered-To: %s\n" % (sender, dest)).encode()


def bounces(d, who="sender", n=1, timeout=15.0):
    got = d.wait_mailbox(who, n, timeout)
    assert len(got) >= n, "no notification in mail/%s; log:\n%s" % (who, d.log()[-3000:])
    return got


# ---------------------------------------------------------------------------


def test_delivered_to_names_the_recipient_as_received(make_daemon, user1):
    """Delivered-To names the address the client gave, not the account it maps to
    (Postfix and OpenSMTPD do the same): a virtual mapping of Bob@Virt.test to the
    account "mapped" gives Delivered-To: Bob@virt.test."""
    d = mk(make_daemon,
           actions='table virt { "bob@virt.test" = "mapped" }\n'
                   'action "v" maildir "{MAILDIR}/%{dest.user}" user smtpdtest1 virtual <virt>\n',
           matches='match from any for domain "virt.test" action "v"\n')
    send(d, ["Bob@Virt.test"])
    got = d.wait_mailbox("mapped", 1, 10)
    assert got, d.log()[-2000:]
    # (the domain, case-insensitive, is kept in lower case from RCPT on)
    assert got[0][1].startswith(trace(SENDER, "Bob@virt.test")), got[0][1][:200]


def test_maildir_delivery(make_daemon, user1):
    d = mk(make_daemon, deliver=False)  # held: read what was committed first
    msgid = send(d, ["alice@example.test", "Bob+Tag@example.test"],
                 b"Subject: maildir\r\n\r\nline one\r\n..dot\r\n")
    msgs = d.wait_messages(1)
    assert [m.msgid for m in msgs] == [msgid]
    stored = msgs[0].data
    code, out, err = d.smtpctl("resume", "mda")
    assert code == 0 and out.strip() == "mda resumed", (code, out, err)

    alice = d.wait_mailbox("alice")
    bob = d.wait_mailbox("bob")
    assert len(alice) == 1 and len(bob) == 1, (alice, bob, d.log()[-2000:])
    assert alice[0][1] == trace(SENDER, "alice@example.test") + stored
    # Delivered-To keeps the case and the sub-address the client wrote.
    assert bob[0][1] == trace(SENDER, "Bob+Tag@example.test") + stored
    # Two recipients: no "for" clause.
    assert stored.startswith(b"Received: from client.test (unknown [127.0.0.1])\n\tby mx.test.example "
                             b"(smtpd) with ESMTP id " + msgid.encode() + b";\n\t")
    assert stored.endswith(b"Subject: maildir\n\nline one\n.dot\n")
    for path, _ in alice + bob:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
        assert st.st_uid == user1.pw_uid
        assert re.fullmatch(r"\d+\.M\d+P\d+Q\d+\.[^/:]+", path.name), path.name
        assert not list((path.parent.parent / "tmp").iterdir())
    # The spool is emptied: no envelope, no message, nothing left in incoming/.
    assert d.wait_queue_empty(10), d.messages()
    assert d.incoming() == []
    assert d.wait_log(r"mda delivery evpid=%s" % msgid, 15), d.log()[-2000:]
    log = d.log()
    assert re.search(r"mda delivery evpid=%s[0-9a-f]{8} from=<%s> to=<alice@example.test> "
                     r"dest=user:alice result=Ok" % (msgid, SENDER), log), log[-2000:]


def test_mbox_delivery(make_daemon, user1):
    mbox = Path("/var/mail/smtpdtest1")
    for p in (mbox, Path(str(mbox) + ".lock")):
        if p.exists():
            p.unlink()
    rules = ('table tusers { smtpdtest1 }\naction "mbx" mbox userbase <tusers>\n'
             'match from any for local action "mbx"\n')
    d = make_daemon(rules=rules, deliver=True, methods=("mbox",))
    body1 = (b"Subject: mbox one\r\n\r\nFrom here\r\n>From there\r\n>>From far\r\nFromage\r\n"
             b" From indented\r\n")
    m1 = send(d, ["smtpdtest1@localhost"], body1)
    assert wait_until(lambda: mbox.exists() and mbox.stat().st_size > 0, 10), d.log()[-2000:]
    m2 = send(d, ["smtpdtest1@localhost"], b"Subject: mbox two\r\n\r\nsecond\r\n", sender="")
    assert d.wait_queue_empty(10), d.log()[-2000:]
    st = mbox.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    assert (st.st_uid, st.st_gid) == (user1.pw_uid, user1.pw_gid)
    text = mbox.read_bytes()
    from_lines = [l for l in text.split(b"\n") if l.startswith(b"From ")]
    assert len(from_lines) == 2, text
    asctime = rb"[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}"
    assert re.fullmatch(rb"From sender@example\.test " + asctime, from_lines[0]), from_lines
    assert re.fullmatch(rb"From MAILER-DAEMON " + asctime, from_lines[1]), from_lines
    first, second = text.split(b"\n\nFrom MAILER-DAEMON ")
    assert first.startswith(from_lines[0] + b"\n" + trace(SENDER, "smtpdtest1@localhost")
                            + b"Received: ")
    assert (b"(smtpd) with ESMTP id %s\n" % m1.encode()) in first
    # mboxrd: one more '>' before every (quoted) From_ line, nothing else touched.
    assert first.endswith(b"Subject: mbox one\n\n>From here\n>>From there\n>>>From far\nFromage\n"
                          b" From indented"), first
    assert second.startswith(from_lines[1][len(b"From MAILER-DAEMON "):] + b"\n"
                             + trace("", "smtpdtest1@localhost") + b"Received: ")
    assert (b"id %s\n" % m2.encode()) in second
    assert second.endswith(b"Subject: mbox two\n\nsecond\n\n"), second
    assert not Path(str(mbox) + ".lock").exists()


def test_mda_delivery(make_daemon, user1):
    d = mk(make_daemon, start=False, deliver=False)
    out = out_dir(d)
    d.rules = MAILDIR_RULES + (
        'action "m" mda "cat > %s/%%{dest.user:lowercase|strip}.msg" user smtpdtest1\n'
        'match from any for domain "mda.test" action "m"\n' % out) + CATCH_ALL
    d.start()
    msgid = send(d, ["carol@mda.test"], b"Subject: mda\r\n\r\nto a command\r\n")
    stored = d.wait_messages(1)[0].data
    d.smtpctl("resume", "mda")
    f = out / "carol.msg"
    assert wait_until(lambda: f.exists() and d.queue_empty(), 10), d.log()[-2000:]
    assert f.read_bytes() == trace(SENDER, "carol@mda.test") + stored
    assert f.stat().st_uid == user1.pw_uid
    assert ("id %s" % msgid) in f.read_text()


def test_mda_environment(make_daemon, user1):
    d = mk(make_daemon, start=False)
    out = out_dir(d)
    d.rules = MAILDIR_RULES + (
        'action "env" mda "env > %s/%%{dest.user:strip}.env" user smtpdtest1\n'
        'match from any for domain "mda.test" action "env"\n' % out) + CATCH_ALL
    d.start()
    send(d, ["bob+ext@mda.test"], sender="s@origin.example")
    send(d, ["carol@mda.test"], sender="")
    assert wait_until(lambda: (out / "bob.env").exists() and (out / "carol.env").exists()
                      and d.queue_empty(), 10), d.log()[-2000:]

    def env(name):
        return dict(l.split("=", 1) for l in (out / name).read_text().splitlines() if "=" in l)

    bob = env("bob.env")
    want = {
        "SENDER": "s@origin.example",
        "RECIPIENT": "bob+ext@mda.test",
        "ORIGINAL_RECIPIENT": "bob+ext@mda.test",
        "EXTENSION": "ext",
        "LOCAL": "bob+ext",
        "DOMAIN": "mda.test",
        "USER": "smtpdtest1",
        "LOGNAME": "smtpdtest1",
        "HOME": user1.pw_dir,
        "SHELL": "/bin/sh",
        "PATH": "/usr/bin:/bin:/usr/sbin:/sbin:/usr/local/bin:/usr/local/sbin",
    }
    for k, v in want.items():
        assert bob.get(k) == v, (k, bob)
    # Nothing of the daemon's own environment leaks (the shell may add PWD and the like).
    extra = set(bob) - set(want) - {"PWD", "OLDPWD", "SHLVL", "_"}
    assert not extra, extra
    carol = env("carol.env")
    assert carol["SENDER"] == "" and carol["RECIPIENT"] == "carol@mda.test", carol
    assert "EXTENSION" not in carol, carol


def test_mda_sender_metacharacters_never_run(make_daemon, user1):
    """Senders full of shell syntax reach the command as data: in %{sender}, in
    %{sender:raw}, in "%{sender:raw}" and in "$SENDER"."""
    d = mk(make_daemon, start=False)
    out = out_dir(d)
    tag = "%d" % os.getpid()
    markers = [Path("/tmp/smtpdpwn%s%s" % (tag, k)) for k in "qbpd"]
    for m in markers:
        if m.exists():
            m.unlink()
    # Valid paths (a quoted string, or atext: ` $ { } | & are atext) must be accepted and
    # delivered; the others are not paths and get 553 5.1.7.
    senders = [
        '"$(touch %s)"@origin.example' % markers[0],
        "a`touch${IFS}%s`b@origin.example" % markers[1],
        "x|touch${IFS}%s@origin.example" % markers[2],
        "a&&b@origin.example",
    ]
    invalid = ["$(touch${IFS}%s)@origin.example" % markers[3], "a;b@origin.example"]
    cmd = ('echo %%{sender:raw} >> %(o)s/raw; echo \\"%%{sender:raw}\\" >> %(o)s/rawq; '
           'echo \\"$SENDER\\" >> %(o)s/env; echo %%{sender} >> %(o)s/clean' % {"o": out})
    d.rules = MAILDIR_RULES + (
        'action "m" mda "%s" user smtpdtest1\n'
        'match from any for domain "mda.test" action "m"\n' % cmd) + CATCH_ALL
    d.start()
    accepted = []
    with d.client() as c:
        c.ehlo()
        for s in invalid:
            c.expect("MAIL FROM:<%s>" % s, 553, "5.1.7")
        for s in senders:
            c.expect("MAIL FROM:<%s>" % s, 250, "2.1.0")
            c.expect("RCPT TO:<m@mda.test>", 250, "2.1.5")
            c.expect("DATA", 354)
            c.send(b"Subject: metachars\r\n\r\nx\r\n.\r\n")
            assert c.reply().code == 250
            accepted.append(s)
    n = len(accepted)
    assert wait_until(lambda: d.queue_empty() and (out / "clean").exists()
                      and len((out / "clean").read_text().splitlines()) == n, 15), d.log()[-3000:]
    try:
        assert not [m for m in markers if m.exists()], "a sender was run as shell code"
    finally:
        for m in markers:
            if m.exists():
                m.unlink()
    # Delivered in order, one after the other or not: compare as sets.
    assert set((out / "raw").read_text().splitlines()) == set(accepted)
    assert set((out / "rawq").read_text().splitlines()) == set(accepted)
    assert set((out / "env").read_text().splitlines()) == set(accepted)
    for line in (out / "clean").read_text().splitlines():
        assert re.fullmatch(r"[A-Za-z0-9@+_=.,:-]+", line), line


def test_tempfail_retried_then_delivered(make_daemon, user1):
    d = mk(make_daemon, start=False)
    out = out_dir(d)
    script = ("echo x >> %(o)s/attempts; if [ -e %(o)s/marker ]; then cat > %(o)s/got; "
              "else touch %(o)s/marker; echo 451 4.2.0 come back later; exit 75; fi" % {"o": out})
    d.rules = MAILDIR_RULES + ('action "t" mda "%s" user smtpdtest1\n'
                               'match from any for domain "mda.test" action "t"\n' % script) + CATCH_ALL
    d.start()
    msgid = send(d, ["t@mda.test"])
    m = d.wait_log(r"mda delivery evpid=(%s[0-9a-f]{8}) .* result=TempFail retry-in=(\d+)s "
                   r"stat=\"451 4.2.0 come back later\"" % msgid)
    assert m, d.log()[-2000:]
    evpid = m.group(1)
    assert 8 <= int(m.group(2)) <= 10, m.group(0)  # 10 s for the first local retry
    code, q, _ = d.smtpctl("show", "queue")
    fields = q.strip().split("|")
    assert code == 0 and len(fields) == 10, q
    assert fields[0] == evpid and fields[7] == "1" and fields[8] == "pending", q
    assert fields[9] == "451 4.2.0 come back later" and int(fields[6]) > 0, q
    # Not retried before its time.
    time.sleep(1.5)
    assert (out / "attempts").read_text().count("x") == 1
    assert not (out / "got").exists()
    code, o, _ = d.smtpctl("schedule", "all")
    assert code == 0 and o.strip() == "1 envelope(s) scheduled", o
    assert wait_until(lambda: (out / "got").exists() and d.queue_empty(), 10), d.log()[-2000:]
    assert (out / "attempts").read_text().count("x") == 2
    assert ("id %s" % msgid) in (out / "got").read_text()
    stats = dict(l.split("=") for l in d.smtpctl("show", "stats")[1].split())
    assert stats["mda.tempfail"] == "1" and stats["mda.delivered"] == "1", stats
    assert stats["queue.bounces"] == "0", stats
    time.sleep(0.3)
    assert d.mailbox("sender") == []


def test_permanent_failure_bounces_to_sender(make_daemon, user1):
    d = mk(make_daemon, actions='action "x67" mda "exit 67" user smtpdtest1\n'
                                'action "x550" mda "echo 550 5.1.1 no such mailbox here; exit 67" '
                                'user smtpdtest1\n',
           matches='match from any for domain "fail.test" action "x67"\n'
                   'match from any for domain "fail550.test" action "x550"\n')
    m1 = send(d, ["gone@fail.test"], b"Subject: doomed\r\nMessage-ID: <doomed@origin>\r\n\r\n"
                                      b"please bounce\r\n")
    got = bounces(d)
    assert d.wait_queue_empty(10)
    assert len(got) == 1
    data = got[0][1]
    assert data.startswith(trace("", SENDER)), data[:200]
    msg, rcpts, per_msg, returned = parse_dsn(data)
    assert msg["To"] == "<%s>" % SENDER
    assert re.fullmatch(r"Mail Delivery System <MAILER-DAEMON@[^>]+>", msg["From"]), msg["From"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert len(rcpts) == 1
    r = rcpts[0]
    assert r["Action"] == "failed"
    assert re.fullmatch(r"5\.\d{1,3}\.\d{1,3}", r["Status"]), r
    assert r["Final-Recipient"].replace(" ", "") == "rfc822;gone@fail.test", r
    assert "67" in r.get("Diagnostic-Code", ""), r
    assert per_msg["Reporting-MTA"].startswith("dns;"), per_msg
    # The whole original comes back.
    assert returned.get_content_type() == "message/rfc822"
    orig = returned.get_payload()[0]
    assert orig["Subject"] == "doomed" and orig["Message-ID"] == "<doomed@origin>"
    assert ("id %s" % m1) in orig["Received"]
    assert "please bounce" in orig.get_payload()

    # A command's own reply line gives the status.
    send(d, ["gone@fail550.test"])
    got = bounces(d, n=2)
    _, rcpts, _, _ = parse_dsn([b for _, b in got if b"gone@fail550.test" in b][0])
    assert rcpts[0]["Status"] == "5.1.1", rcpts
    assert rcpts[0]["Diagnostic-Code"] == "smtp; 550 5.1.1 no such mailbox here", rcpts
    assert d.wait_queue_empty(10)
    stats = dict(l.split("=") for l in d.smtpctl("show", "stats")[1].split())
    assert stats["mda.permfail"] == "2" and stats["queue.bounces"] == "2", stats


def test_null_sender_never_bounced(make_daemon, user1):
    d = mk(make_daemon, actions='action "x67" mda "exit 67" user smtpdtest1\n',
           matches='match from any for domain "fail.test" action "x67"\n')
    send(d, ["gone@fail.test"], sender="")
    assert d.wait_log(r"bounce not sent: the sender is <>"), d.log()[-2000:]
    assert d.wait_queue_empty(10)
    assert d.mailbox("sender") == [] and d.mailbox("mailer-daemon") == []


def test_expiry_bounces_with_5_4_7(make_daemon, user1):
    d = mk(make_daemon, actions='action "x" mda "exit 75" ttl 3s user smtpdtest1\n',
           matches='match from any for domain "slow.test" action "x"\n')
    t0 = time.monotonic()
    send(d, ["late@slow.test"])
    got = bounces(d, timeout=20)
    elapsed = time.monotonic() - t0
    assert 2.0 <= elapsed < 15, elapsed
    assert d.wait_queue_empty(10)
    _, rcpts, _, _ = parse_dsn(got[0][1])
    r = rcpts[0]
    assert r["Action"] == "failed" and r["Status"] == "5.4.7", r
    assert r["Final-Recipient"].replace(" ", "") == "rfc822;late@slow.test"
    assert re.search(r"554 5\.4\.7 expired after \d+ attempts", r["Diagnostic-Code"]), r
    assert d.wait_log(r"result=Expired", 15)
    stats = dict(l.split("=") for l in d.smtpctl("show", "stats")[1].split())
    assert stats["queue.expired"] == "1", stats


def test_notify_never_suppresses_bounce(make_daemon, user1):
    d = mk(make_daemon, actions='action "x67" mda "exit 67" user smtpdtest1\n',
           matches='match from any for domain "fail.test" action "x67"\n')
    send(d, ["gone@fail.test"], rcpt_params=" NOTIFY=NEVER")
    assert d.wait_log(r"bounce not sent: NOTIFY excludes it"), d.log()[-2000:]
    assert d.wait_queue_empty(10)
    time.sleep(0.5)
    assert d.mailbox("sender") == []
    stats = dict(l.split("=") for l in d.smtpctl("show", "stats")[1].split())
    assert stats["queue.bounces"] == "0" and stats["mda.permfail"] == "1", stats


def test_notify_success_reports_delivery(make_daemon, user1):
    d = mk(make_daemon)
    msgid = send(d, ["alice@example.test"], b"Subject: tell me\r\n\r\nsecret body\r\n",
                 rcpt_params=" NOTIFY=SUCCESS ORCPT=rfc822;alice@example.test")
    assert len(d.wait_mailbox("alice")) == 1
    got = bounces(d)
    assert d.wait_queue_empty(10)
    msg, rcpts, _, returned = parse_dsn(got[0][1])
    assert msg["Subject"] == "Successful Mail Delivery Report"
    r = rcpts[0]
    assert r["Action"] == "delivered", r
    assert re.fullmatch(r"2\.\d{1,3}\.\d{1,3}", r["Status"]), r
    assert r["Final-Recipient"].replace(" ", "") == "rfc822;alice@example.test"
    assert r["Original-Recipient"].replace(" ", "") == "rfc822;alice@example.test"
    # A success report carries the header section only.
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"secret body" not in got[0][1]
    assert ("id %s" % msgid).encode() in got[0][1]
    # NOTIFY=SUCCESS alone: a failure is not reported.
    d2 = mk(make_daemon, actions='action "x67" mda "exit 67" user smtpdtest1\n',
            matches='match from any for domain "fail.test" action "x67"\n')
    send(d2, ["gone@fail.test"], rcpt_params=" NOTIFY=SUCCESS")
    assert d2.wait_log(r"bounce not sent: NOTIFY excludes it")
    assert d2.wait_queue_empty(10)
    assert d2.mailbox("sender") == []


def test_restart_with_full_queue_delivers_each_once(make_daemon, user1):
    d = mk(make_daemon, deliver=False)
    n = 8
    ids = set()
    with d.client() as c:
        c.ehlo()
        for i in range(n):
            ids.add(c.send_message(SENDER, ["rcpt%d@example.test" % (i % 3)],
                                   b"Subject: queued %d\r\n\r\nbody %d\r\n" % (i, i)))
    assert len(ids) == n
    assert {m.msgid for m in d.wait_messages(n)} == ids
    assert d.stop() == 0
    assert {m.msgid for m in d.messages()} == ids
    assert d.delivered() == {}
    d.hold_delivery = False
    d.start()
    assert wait_until(lambda: len(d.delivered()) >= n and d.queue_empty(), 20), \
        (len(d.delivered()), d.log()[-3000:])
    time.sleep(1.0)
    files = list(d.maildir.glob("*/new/*"))
    assert len(files) == n, files
    assert set(d.delivered()) == ids
    assert d.wait_log(r"queue: %d envelope\(s\) read back from the spool" % n, 15)
    for f in files:
        body = f.read_bytes()
        i = int(re.search(rb"Subject: queued (\d+)", body).group(1))
        assert f.parent.parent.name == "rcpt%d" % (i % 3)
        assert body.endswith(b"body %d\n" % i)


def test_bounce_ret_hdrs_and_envid(make_daemon, user1):
    d = mk(make_daemon, actions='action "x67" mda "exit 67" user smtpdtest1\n',
           matches='match from any for domain "fail.test" action "x67"\n')
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<%s> RET=HDRS ENVID=env+2Bid42" % SENDER, 250, "2.1.0")
        c.expect("RCPT TO:<gone@fail.test> NOTIFY=FAILURE ORCPT=rfc822;Gone+2Borig@fail.test", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"Subject: headers only\r\n\r\nconfidential body\r\n.\r\n")
        assert c.reply().code == 250
    got = bounces(d)
    msg, rcpts, per_msg, returned = parse_dsn(got[0][1])
    assert per_msg["Original-Envelope-Id"] == "env+id42", per_msg
    assert rcpts[0]["Original-Recipient"].replace(" ", "") == "rfc822;Gone+orig@fail.test", rcpts
    assert returned.get_content_type() == "text/rfc822-headers"
    assert b"Subject: headers only" in got[0][1]
    assert b"confidential body" not in got[0][1]


def test_mbox_concurrent_deliveries_stay_whole(make_daemon, user1):
    mbox = Path("/var/mail/smtpdtest1")
    if mbox.exists():
        mbox.unlink()
    rules = ('table tusers { smtpdtest1 }\naction "mbx" mbox userbase <tusers>\n'
             'match from any for local action "mbx"\n')
    d = make_daemon(rules=rules, methods=("mbox",))  # held, then released at once
    n = 12
    body = b"".join(b"line %d of a longer message\r\n" % i for i in range(2000))
    with d.client() as c:
        c.ehlo()
        ids = [c.send_message(SENDER, ["smtpdtest1@localhost"], b"Subject: n%d\r\n\r\n" % i + body)
               for i in range(n)]
    assert d.smtpctl("resume", "mda")[0] == 0
    assert d.wait_queue_empty(20), d.log()[-2000:]
    text = mbox.read_bytes()
    parts = re.split(rb"(?m)^From sender@example\.test [^\n]+\n", text)
    assert parts[0] == b"" and len(parts) == n + 1, len(parts)
    seen = set()
    for p in parts[1:]:
        m = re.search(rb"with ESMTP id ([0-9a-f]{8})", p)
        seen.add(m.group(1).decode())
        assert p.endswith(b"\n\n" + body.replace(b"\r\n", b"\n") + b"\n"), p[-200:]
    assert seen == set(ids)


def test_mbox_symlink_is_not_followed(make_daemon, user1):
    mbox = Path("/var/mail/smtpdtest1")
    if mbox.exists() or mbox.is_symlink():
        mbox.unlink()
    d = make_daemon(start=False, deliver=True, methods=("mbox",))
    target = d.dir / "victim"
    target.write_bytes(b"precious\n")
    os.chown(target, user1.pw_uid, user1.pw_gid)
    d.rules = ('table tusers { smtpdtest1 }\naction "mbx" mbox userbase <tusers>\n'
               'match from any for local action "mbx"\n')
    mbox.symlink_to(target)
    try:
        d.start()
        send(d, ["smtpdtest1@localhost"])
        assert d.wait_log(r"result=TempFail"), d.log()[-2000:]
        assert target.read_bytes() == b"precious\n"
        assert mbox.is_symlink()
        assert d.smtpctl("remove", "all")[1].strip() == "1 envelope(s) removed"
    finally:
        if mbox.is_symlink():
            mbox.unlink()


def test_mda_large_message(make_daemon, user1):
    d = mk(make_daemon, start=False)
    out = out_dir(d)
    d.rules = MAILDIR_RULES + (
        'action "m" mda "cat > %s/big" user smtpdtest1\n'
        'action "q" mda "exit 0" user smtpdtest1\n'
        'match from any for domain "mda.test" action "m"\n'
        'match from any for domain "quick.test" action "q"\n' % out) + CATCH_ALL
    d.start()
    line = b"0123456789" * 9 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + line * 30000  # about 2.8 MB
    send(d, ["big@mda.test", "x@quick.test"], body)
    assert wait_until(lambda: d.queue_empty(), 20), d.log()[-2000:]
    data = (out / "big").read_bytes()
    assert data.endswith(b"Subject: big\n\n" + line.replace(b"\r\n", b"\n") * 30000)
    # A command that reads nothing and exits 0 has delivered.
    assert len(re.findall(r"result=Ok", d.log())) == 2


def test_retry_state_survives_restart(make_daemon, user1):
    d = mk(make_daemon, start=False)
    out = out_dir(d)
    script = ("echo x >> %(o)s/attempts; [ -e %(o)s/ok ] || { echo 452 4.3.1 later please; exit 75; }; "
              "cat > %(o)s/got" % {"o": out})
    d.rules = MAILDIR_RULES + ('action "t" mda "%s" user smtpdtest1\n'
                               'match from any for domain "mda.test" action "t"\n' % script) + CATCH_ALL
    d.start()
    send(d, ["t@mda.test"])
    assert d.wait_log(r"result=TempFail"), d.log()[-2000:]
    before = d.smtpctl("show", "queue")[1].strip().split("|")
    assert d.stop() == 0
    (out / "ok").touch()
    d.start()
    after = d.smtpctl("show", "queue")[1].strip().split("|")
    # Retry count, last try and reason were written to the spool, and the envelope waits
    # for its retry time instead of being tried at once.
    assert after[:8] == before[:8] and after[9] == "452 4.3.1 later please", (before, after)
    time.sleep(1.0)
    assert (out / "attempts").read_text().count("x") == 1
    assert d.smtpctl("schedule", "all")[1].strip() == "1 envelope(s) scheduled"
    assert wait_until(lambda: (out / "got").exists() and d.queue_empty(), 10), d.log()[-2000:]


@pytest.mark.parametrize("script,result", [
    ("cat > /dev/null; exit 0", "Ok"),
    ("exit 71", "TempFail"),
    ("exit 75", "TempFail"),
    ("exit 1", "PermFail"),
    ("exit 64", "PermFail"),
    ("exit 69", "PermFail"),
    ("kill -KILL $$", "TempFail"),
])
def test_mda_exit_status(make_daemon, user1, script, result):
    d = mk(make_daemon, actions='action "m" mda "%s" user smtpdtest1\n' % script,
           matches='match from any for domain "mda.test" action "m"\n')
    send(d, ["x@mda.test"], sender="")  # no bounce to wait for
    m = d.wait_log(r"to=<x@mda.test> (?:dest=\S+ )?result=(\w+)")
    assert m and m.group(1) == result, (script, d.log()[-1500:])


def test_bounce_of_a_bounce_is_not_sent(make_daemon, user1):
    """The sender's own address fails too: its notification has the null sender, and no
    notification is made about it; the queue empties."""
    d = mk(make_daemon, actions='action "x67" mda "exit 67" user smtpdtest1\n',
           matches='match from any for domain "fail.test" action "x67"\n')
    send(d, ["gone@fail.test"], sender="alsogone@fail.test")
    assert d.wait_log(r"bounce not sent: the sender is <>"), d.log()[-2000:]
    assert d.wait_queue_empty(10)
    s = dict(l.split("=") for l in d.smtpctl("show", "stats")[1].split())
    assert s["mda.permfail"] == "2" and s["queue.bounces"] == "1", s


def test_bounce_to_a_sender_no_rule_accepts_is_dropped(make_daemon, user1):
    d = mk(make_daemon, actions='action "x67" mda "exit 67" user smtpdtest1\n',
           matches='match from any for domain "fail.test" action "x67"\n')
    send(d, ["gone@fail.test"], sender="someone@elsewhere.example")
    assert d.wait_log(r"bounce to <someone@elsewhere.example> not queued"), d.log()[-2000:]
    assert d.wait_queue_empty(10)
    assert not list(d.maildir.glob("*/new/*"))


def test_delay_warning_after_warn_interval(make_daemon, user1):
    """`bounce warn-interval`: a message still retried after the interval gets one
    delay notice (RFC 3464 Action: delayed), and no second one for the same interval."""
    d = mk(make_daemon, actions='bounce warn-interval 1s\n'
                                'action "slow" mda "echo 451 4.2.0 busy; exit 75" user smtpdtest1\n',
           matches='match from any for domain "slow.test" action "slow"\n')
    send(d, ["w@slow.test"], b"Subject: slow\r\n\r\nwait\r\n")
    assert d.wait_log(r"result=TempFail"), d.log()[-2000:]
    assert d.mailbox("sender") == []  # too early for a notice
    time.sleep(1.2)
    code, o, _ = d.smtpctl("schedule", "all")
    assert code == 0, o
    got = bounces(d)
    msg, rcpts, _, _ = parse_dsn(got[0][1])
    assert msg["Subject"] == "Delayed Mail (still being retried)"
    assert rcpts[0]["Action"] == "delayed", rcpts
    assert rcpts[0]["Status"].startswith("4."), rcpts
    assert "Will-Retry-Until" in rcpts[0], rcpts
    # Still queued: a delay notice is not a failure.
    code, q, _ = d.smtpctl("show", "queue")
    assert code == 0 and "w@slow.test" in q, q
    time.sleep(1.2)
    d.smtpctl("schedule", "all")
    assert wait_until(lambda: d.log().count("result=TempFail") >= 3, 10), d.log()[-2000:]
    time.sleep(1.0)
    assert len(d.mailbox("sender")) == 1
