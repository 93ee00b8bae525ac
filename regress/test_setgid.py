"""The binary installed setgid _smtpq (for sendmail's offline queue), run by a plain user
under every name and flag: the group is given up at entry, taken back only to create
the offline file, which no other user can read; a daemon started by a plain user never
reads other users' offline files."""

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, needs_root, smtpd_bin, smtpq_gid, wait_until

SECRET = "Xsecret-of-the-smtpq-groupX"


@pytest.fixture(autouse=True)
def _root():
    needs_root()


@pytest.fixture
def setgid_copy(tmp_path, user1):
    """A copy of the binary, root:_smtpq mode 2755, in a directory every user can reach."""
    gid = smtpq_gid()
    d = tmp_path / "bin"
    d.mkdir()
    for p in [d] + list(d.parents):
        if str(p) in ("/", "/tmp"):
            break
        os.chmod(p, (p.stat().st_mode & 0o7777) | 0o011)
    copy = d / "smtpd"
    shutil.copy2(smtpd_bin(), copy)
    os.chown(copy, 0, gid)
    os.chmod(copy, 0o2755)
    return copy


def run_as(user, binary, argv, cwd, input=b"", timeout=20):
    """Runs `binary` with argv (argv[0] chosen by the caller, as execv allows) as `user`,
    with its primary group only."""
    pw = pwd.getpwnam(user)

    def drop():
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return subprocess.run(argv, executable=str(binary), input=input, capture_output=True,
                          cwd=cwd, timeout=timeout, preexec_fn=drop,
                          env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir})


def group_file(tmp_path):
    """A file only root and the group _smtpq may read, holding a secret line."""
    gid = smtpq_gid()
    f = tmp_path / "group-only.conf"
    f.write_text("%s\nlisten on 127.0.0.1\n" % SECRET)
    os.chown(f, 0, gid)
    os.chmod(f, 0o640)
    return f


CASES = [
    ["smtpd", "-n", "-f", "{F}"],
    ["smtpd", "-d", "-f", "{F}"],
    ["smtpd", "-F", "-f", "{F}"],
    ["smtpd", "-n", "-D", "x=y", "-f", "{F}"],
    ["whatever", "-n", "-f", "{F}"],
    ["smtpd", "ctl", "-f", "{F}", "show", "queue"],
    ["smtpctl", "-f", "{F}", "show", "stats"],
    ["mailq", "-f", "{F}"],
    ["newaliases", "-f", "{F}"],
    ["smtpd", "newaliases", "-f", "{F}"],
    ["sendmail", "-C", "{F}", "-bp"],
    ["sendmail", "-C", "{F}", "-bi"],
    ["sendmail", "-C", "{F}", "-bs"],
    ["sendmail", "-C", "{F}", "alice@example.test"],
    ["smtpd", "sendmail", "-C", "{F}", "-bp"],
]


@pytest.mark.parametrize("argv", CASES, ids=[" ".join(c[:2]) + "..." for c in CASES])
def test_no_personality_reads_group_files(tmp_path, setgid_copy, argv):
    """Whatever name and flags the caller gives, the setgid group does not open files."""
    f = group_file(tmp_path)
    argv = [a.replace("{F}", str(f)) for a in argv]
    r = run_as("smtpdtest1", setgid_copy, argv, cwd="/", input=b"Subject: x\n\ny\n")
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert SECRET not in out, (argv, out)


def test_setgid_daemon_by_plain_user_gets_no_group(tmp_path, setgid_copy):
    """A daemon started from the setgid copy runs with the caller's group only: it cannot
    read a file of the group (the configuration is refused with permission denied)."""
    f = group_file(tmp_path)
    r = run_as("smtpdtest1", setgid_copy, ["smtpd", "-n", "-f", str(f)], cwd="/")
    assert r.returncode != 0, r
    assert b"ermission denied" in r.stderr, r


def test_offline_file_private_and_not_taken_by_a_user_daemon(make_daemon, tmp_path, setgid_copy,
                                                               user1, user2):
    """An offline file is created readable by its owner only. A plain user who starts the
    setgid copy as a daemon whose spool's offline/ leads to the real one (a symlink)
    does not read it, does not deliver it and does not remove it."""
    if Path("/etc/smtpd.conf").exists():
        pytest.skip("/etc/smtpd.conf exists: sendmail would use its spool")
    gid = smtpq_gid()
    d = make_daemon(rules='action "mb" maildir "{MAILDIR}/%{dest.user}" user smtpdtest1\n'
                          'match from any for domain "example.test" action "mb"\n',
                    deliver=True, mail_owner="smtpdtest1")
    assert d.stop() == 0
    off = d.queue / "offline"
    assert (off.stat().st_gid, off.stat().st_mode & 0o7777) == (gid, 0o1770)
    # smtpdtest2 queues a message offline through the setgid copy named sendmail
    # (without /etc/smtpd.conf it takes ./spool of its working directory).
    r = run_as("smtpdtest2", setgid_copy, ["sendmail", "victim@example.test"], cwd=d.dir,
               input=b"Subject: private\n\n%s\n" % SECRET.encode())
    assert r.returncode == 0 and b"queued offline" in r.stderr, r
    files = list(off.iterdir())
    assert len(files) == 1, files
    st = files[0].stat()
    assert st.st_uid == user2.pw_uid
    assert st.st_mode & 0o077 == 0, oct(st.st_mode)

    # smtpdtest1's own daemon: spool in its home-like directory, offline/ a symlink.
    mine = tmp_path / "mine"
    mine.mkdir()
    os.chown(mine, user1.pw_uid, user1.pw_gid)
    spool = mine / "spool"
    spool.mkdir()
    os.symlink(off, spool / "offline")
    os.chown(spool, user1.pw_uid, user1.pw_gid)
    os.lchown(spool / "offline", user1.pw_uid, user1.pw_gid)
    box = mine / "box"
    conf = mine / "smtpd.conf"
    port = free_port("127.0.0.1")
    conf.write_text('queue path "%s"\nlisten on 127.0.0.1 port %d\n'
                    'action "mb" maildir "%s" user smtpdtest1\n'
                    'match from any for any action "mb"\n' % (spool, port, box))
    os.chown(conf, user1.pw_uid, user1.pw_gid)
    pw = pwd.getpwnam("smtpdtest1")

    def drop():
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    log = open(mine / "log", "wb")
    p = subprocess.Popen(["smtpd", "-d", "-f", str(conf)], executable=str(setgid_copy),
                         stdout=log, stderr=log, cwd=str(mine), preexec_fn=drop,
                         env={"PATH": "/usr/bin:/bin"}, start_new_session=True)
    try:
        wait_until(lambda: p.poll() is not None or "offline" in (mine / "log").read_text(), 5)
        time.sleep(1.0)
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
        log.close()
    delivered = [f for f in box.rglob("*") if f.is_file()] if box.exists() else []
    leaked = [f for f in delivered if SECRET.encode() in f.read_bytes()]
    assert not leaked, (leaked, (mine / "log").read_text()[-2000:])
    assert files[0].exists(), (mine / "log").read_text()[-2000:]
    assert SECRET not in (mine / "log").read_text()
