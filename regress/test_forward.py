"""~/.forward: a test user (smtpdtest2) forwards to its own mailbox and to a command,
to another address, and a forward-only action without a .forward bounces."""

import os
import re
import time
from pathlib import Path

import pytest

from conftest import ensure_user, needs_root, parse_dsn, wait_until

SENDER = "sender@example.test"

# mail/ is shared by smtpdtest2 (its own deliveries) and smtpdtest1 (example.test).
RULES = """
action "mb" maildir "{MAILDIR}/%{dest.user:lowercase|strip}" user smtpdtest1
action "local" maildir "{MAILDIR}/%{user.username}"
action "fo" forward-only
match from any for rcpt-to "smtpdtest2@fwdonly.test" action "fo"
match from any for domain "example.test" action "mb"
match from any for local action "local"
"""


@pytest.fixture
def fwd(user1, user2):
    """Writes ~smtpdtest2/.forward (owned by it, mode 0644); removed afterwards."""
    needs_root()
    path = Path(user2.pw_dir) / ".forward"

    def write(text, mode=0o644):
        path.write_text(text)
        os.chown(path, user2.pw_uid, user2.pw_gid)
        os.chmod(path, mode)
        return path

    if path.exists():
        path.unlink()
    yield write
    if path.exists():
        path.unlink()


def mk(make_daemon, user2):
    d = make_daemon(rules=RULES, deliver=True, mail_owner="*")
    out = d.dir / "out"
    out.mkdir()
    os.chown(out, user2.pw_uid, user2.pw_gid)
    return d, out


def send(d, rcpt, body=b"Subject: forwarded\r\n\r\nfollow me\r\n"):
    with d.client() as c:
        c.ehlo()
        msgid = c.send_message(SENDER, [rcpt], body)
        c.until_quit()
    return msgid


def check_forward(d, out, user2, msgid, n_dest):
    f = out / "piped"
    # The envelopes of the forward are written before the user's is removed: the queue
    # is empty only once every destination is done.
    assert wait_until(lambda: d.mailbox("smtpdtest2") and d.queue_empty(), 10), d.log()[-3000:]
    assert f.exists(), "the command of the .forward did not run; log:\n" + d.log()[-3000:]
    box = d.mailbox("smtpdtest2")
    assert len(box) == 1
    for data in (box[0][1], f.read_bytes()):
        assert data.startswith(b"Return-Path: <%s>\nDelivered-To: " % SENDER.encode()), data[:200]
        assert ("id %s" % msgid).encode() in data
        assert data.endswith(b"Subject: forwarded\n\nfollow me\n")
    # Both ran as the user of the .forward.
    assert box[0][0].stat().st_uid == user2.pw_uid
    assert f.stat().st_uid == user2.pw_uid
    assert d.wait_log(r"forward of smtpdtest2 to %d destination\(s\)" % n_dest, 15)
    time.sleep(0.3)
    assert len(d.mailbox("smtpdtest2")) == 1  # the copy is not forwarded again
    assert d.mailbox("sender") == []


def test_forward_to_self_and_pipe_two_lines(make_daemon, fwd, user2):
    d, out = mk(make_daemon, user2)
    fwd("# keep a copy and run a command\n\\smtpdtest2\n\"|cat > %s/piped\"\n" % out)
    msgid = send(d, "smtpdtest2@localhost")
    check_forward(d, out, user2, msgid, 2)


def test_forward_to_self_and_pipe_one_line(make_daemon, fwd, user2):
    """The traditional one-line form, as vacation(1) documents it:
    \\user, "|command"."""
    d, out = mk(make_daemon, user2)
    fwd('\\smtpdtest2, "|cat > %s/piped"\n' % out)
    msgid = send(d, "smtpdtest2@localhost")
    check_forward(d, out, user2, msgid, 2)


def test_forward_to_another_address(make_daemon, fwd, user2):
    d, out = mk(make_daemon, user2)
    fwd("elsewhere@example.test\n")
    msgid = send(d, "smtpdtest2@localhost")
    got = d.wait_mailbox("elsewhere", 1, 10)
    assert got and d.wait_queue_empty(10), d.log()[-2000:]
    assert ("id %s" % msgid).encode() in got[0][1]
    # smtpd(8), Local deliveries: Delivered-To is the recipient as the client gave it,
    # smtpdtest2@localhost, whatever forward file led elsewhere.
    assert got[0][1].startswith(b"Return-Path: <%s>\nDelivered-To: smtpdtest2@localhost\n"
                                % SENDER.encode()), got[0][1][:200]
    assert d.mailbox("smtpdtest2") == []


def test_forward_command_of_account_without_login_shell_is_ignored(make_daemon):
    """As Sendmail does: an account whose shell is not in /etc/shells (a system account
    with nologin) runs no command through its .forward; the .forward is ignored, with a
    log line, and the mail stays in the mailbox."""
    needs_root()
    nologin = "/usr/sbin/nologin"
    pw = ensure_user("smtpdtest3", shell=nologin)
    assert pw.pw_shell == nologin, pw
    assert nologin not in Path("/etc/shells").read_text().split(), "nologin is a login shell here"
    path = Path(pw.pw_dir) / ".forward"
    d = make_daemon(rules=RULES, deliver=True, mail_owner="*")
    out = d.dir / "out"
    out.mkdir()
    os.chown(out, pw.pw_uid, pw.pw_gid)
    path.write_text('"|touch %s/ran"\n' % out)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    try:
        send(d, "smtpdtest3@localhost")
        assert d.wait_mailbox("smtpdtest3", 1, 10), d.log()[-2000:]
        assert d.wait_queue_empty(10)
    finally:
        path.unlink()
    assert not (out / "ran").exists()
    assert d.wait_log(r"\.forward: a command or file for smtpdtest3, whose shell "
                     r"\"/usr/sbin/nologin\" is not in /etc/shells: ignored", 15), d.log()[-2000:]


def test_unsafe_forward_is_ignored(make_daemon, fwd, user2):
    """A .forward that others may write is ignored: the mail stays in the mailbox."""
    d, out = mk(make_daemon, user2)
    fwd("elsewhere@example.test\n", mode=0o666)
    send(d, "smtpdtest2@localhost")
    assert d.wait_mailbox("smtpdtest2", 1, 10), d.log()[-2000:]
    assert d.wait_queue_empty(10)
    assert d.mailbox("elsewhere") == []


def test_forward_only_with_forward(make_daemon, fwd, user2):
    d, out = mk(make_daemon, user2)
    fwd("|cat > %s/piped\n" % out)
    msgid = send(d, "smtpdtest2@fwdonly.test")
    f = out / "piped"
    assert wait_until(lambda: f.exists() and d.queue_empty(), 10), d.log()[-2000:]
    assert ("id %s" % msgid) in f.read_text()
    assert f.stat().st_uid == user2.pw_uid
    assert d.mailbox("smtpdtest2") == [] and d.mailbox("sender") == []


def test_forward_only_without_forward_bounces(make_daemon, fwd, user2):
    d, out = mk(make_daemon, user2)
    msgid = send(d, "smtpdtest2@fwdonly.test")
    got = d.wait_mailbox("sender", 1, 15)
    assert got, d.log()[-2000:]
    assert d.wait_queue_empty(10)
    _, rcpts, _, returned = parse_dsn(got[0][1])
    r = rcpts[0]
    assert r["Action"] == "failed" and re.fullmatch(r"5\.\d+\.\d+", r["Status"]), r
    assert r["Final-Recipient"].replace(" ", "") == "rfc822;smtpdtest2@fwdonly.test", r
    assert "forward" in r.get("Diagnostic-Code", ""), r
    assert ("id %s" % msgid) in str(returned)
    assert d.mailbox("smtpdtest2") == []


def test_forward_bare_own_name_and_address(make_daemon, fwd, user2):
    d, out = mk(make_daemon, user2)
    fwd("smtpdtest2, copy@example.test\n")
    msgid = send(d, "smtpdtest2@localhost")
    assert wait_until(lambda: d.mailbox("smtpdtest2") and d.mailbox("copy") and d.queue_empty(), 10), \
        d.log()[-2000:]
    time.sleep(0.3)
    assert len(d.mailbox("smtpdtest2")) == 1 and len(d.mailbox("copy")) == 1
    assert d.wait_log(r"forward of smtpdtest2 to 2 destination\(s\)", 15)
