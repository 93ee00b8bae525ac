"""Privilege separation, started as root: the parent keeps root, the engine runs as
_smtpd, deliveries run as their user, and the spool belongs to _smtpd."""

import grp
import os
import pwd
import re
import stat
from pathlib import Path

import pytest

from conftest import descendants, needs_root, wait_until

SENDER = "sender@example.test"


@pytest.fixture(autouse=True)
def _root():
    needs_root()


def status(pid):
    """Uid/Gid (real, effective, saved, fs) and Groups of /proc/PID/status."""
    out = {}
    for l in Path("/proc/%d/status" % pid).read_text().splitlines():
        k, _, v = l.partition(":")
        if k in ("Uid", "Gid"):
            out[k] = [int(x) for x in v.split()]
        elif k == "Groups":
            out[k] = [int(x) for x in v.split()]
    return out


def send(d, rcpts, body=b"Subject: privsep\r\n\r\nx\r\n"):
    with d.client() as c:
        c.ehlo()
        msgid = c.send_message(SENDER, rcpts, body)
        c.until_quit()
    return msgid


def test_engine_runs_as_smtpd_parent_as_root(daemon):
    smtpd = pwd.getpwnam("_smtpd")
    parent = status(daemon.pid)
    assert parent["Uid"] == [0, 0, 0, 0], parent
    kids = descendants(daemon.pid)
    assert kids, "no engine process"
    engines = [k for k in kids if status(k)["Uid"][0] == smtpd.pw_uid]
    assert len(engines) == 1, [(k, status(k)) for k in kids]
    e = status(engines[0])
    assert e["Uid"] == [smtpd.pw_uid] * 4, e
    assert e["Gid"] == [smtpd.pw_gid] * 4, e
    assert set(e["Groups"]) <= {smtpd.pw_gid}, e
    # The engine holds the listener and the control socket: the parent does not.
    assert daemon.wait_log(r"smtpd engine running as _smtpd", 15)


def test_spool_owned_by_smtpd(daemon):
    smtpd = pwd.getpwnam("_smtpd")
    send(daemon, ["a@example.test"])
    msgs = daemon.wait_messages(1)
    assert msgs
    root = daemon.queue
    st = root.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (smtpd.pw_uid, 0o711), (st, oct(st.st_mode))
    sock = root / "smtpd.sock"
    assert stat.S_ISSOCK(sock.stat().st_mode) and stat.S_IMODE(sock.stat().st_mode) == 0o666
    try:
        smtpq = grp.getgrnam("_smtpq").gr_gid
    except KeyError:
        smtpq = None
    checked = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p == sock:
                continue
            s = p.lstat()
            if p == root / "offline" and smtpq is not None:
                assert (s.st_uid, s.st_gid, stat.S_IMODE(s.st_mode)) == (0, smtpq, 0o1770), p
                continue
            assert (s.st_uid, s.st_gid) == (smtpd.pw_uid, smtpd.pw_gid), (p, s.st_uid, s.st_gid)
            want = 0o700 if stat.S_ISDIR(s.st_mode) else 0o600
            assert stat.S_IMODE(s.st_mode) == want, (p, oct(s.st_mode))
            checked += 1
    assert checked >= 5
    assert msgs[0].path.stat().st_uid == smtpd.pw_uid


def test_userbase_accounts_give_the_ids_of_virtual_users(make_daemon, user1):
    """A userbase entry UID:GID:HOME (OpenSMTPD's form) runs the delivery of a user
    that is no system account with those ids in that home; root's ids are refused."""
    d = make_daemon(start=False, deliver=True, methods=("mda",), mail_owner="*")
    out = d.dir / "out"
    out.mkdir()
    os.chmod(out, 0o1777)
    d.rules = (
        'table vids { virt = "%(u)d:%(g)d:%(o)s", rooted = "0:0:/root" }\n'
        'action "m" mda "id -u > %(o)s/%%{user.username}.uid; id -g >> %(o)s/%%{user.username}.uid; '
        'pwd >> %(o)s/%%{user.username}.uid" userbase <vids>\n'
        'match from any for domain "mda.test" action "m"\n'
        % {"o": out, "u": user1.pw_uid, "g": user1.pw_gid})
    d.start()
    send(d, ["virt@mda.test", "rooted@mda.test"])
    f = out / "virt.uid"
    assert wait_until(lambda: f.exists() and len(f.read_text().splitlines()) == 3
                      and d.queue_empty(), 15), d.log()[-3000:]
    uid, gid, cwd = f.read_text().splitlines()
    assert (int(uid), int(gid), cwd) == (user1.pw_uid, user1.pw_gid, str(out))
    assert not (out / "rooted.uid").exists()
    assert d.wait_log(r"to=<rooted@mda\.test> result=PermFail stat=\"userbase gives rooted the ids "
                     r"of root: refused\"", 15), d.log()[-3000:]


def test_deliveries_run_as_the_recipient(make_daemon, user1, user2):
    smtpd = pwd.getpwnam("_smtpd")
    d = make_daemon(start=False, deliver=True, methods=("mda",), mail_owner="*")
    out = d.dir / "out"
    out.mkdir()
    os.chmod(out, 0o1777)
    d.rules = (
        'table aliases { piped = "|id -u > %(o)s/pipe.uid; id -G >> %(o)s/pipe.uid" }\n'
        'table ids { smtpdtest1, smtpdtest2 }\n'
        'action "md" maildir "{MAILDIR}/%%{user.username}"\n'
        'action "m" mda "id -u > %(o)s/%%{user.username}.uid; id -G >> %(o)s/%%{user.username}.uid; '
        'pwd >> %(o)s/%%{user.username}.uid; umask >> %(o)s/%%{user.username}.uid" userbase <ids>\n'
        'action "al" maildir "{MAILDIR}/%%{user.username}" alias <aliases>\n'
        'match from any for domain "mda.test" action "m"\n'
        'match from any for rcpt-to "piped@localhost" action "al"\n'
        'match from any for local action "md"\n' % {"o": out})
    d.start()
    send(d, ["smtpdtest1@localhost", "smtpdtest2@localhost"])
    send(d, ["smtpdtest1@mda.test", "smtpdtest2@mda.test"])
    send(d, ["piped@localhost"])
    want = [out / "smtpdtest1.uid", out / "smtpdtest2.uid", out / "pipe.uid"]
    assert wait_until(lambda: all(p.exists() for p in want) and d.queue_empty()
                      and len(d.mailbox("smtpdtest1")) == 1 and len(d.mailbox("smtpdtest2")) == 1, 15), \
        d.log()[-3000:]
    for pw in (user1, user2):
        # maildir: the maildir and the message belong to the user.
        (path, _), = d.mailbox(pw.pw_name)
        for p in (path, path.parent, path.parent.parent):
            s = p.stat()
            assert (s.st_uid, s.st_gid) == (pw.pw_uid, pw.pw_gid), (p, s)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        # mda: uid, only the primary group, in the home directory.
        uid, groups, cwd, umask = (out / ("%s.uid" % pw.pw_name)).read_text().splitlines()
        assert int(uid) == pw.pw_uid
        assert [int(g) for g in groups.split()] == [pw.pw_gid]
        assert cwd == pw.pw_dir
        assert int(umask, 8) == 0o077, umask
    # A pipe named by an alias, with no forward file and no action user: _smtpd.
    uid, groups = (out / "pipe.uid").read_text().splitlines()
    assert int(uid) == smtpd.pw_uid and [int(g) for g in groups.split()] == [smtpd.pw_gid]
