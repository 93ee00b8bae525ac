"""Local privilege boundaries: what a plain user of the machine can make the binary (its
sendmail, mailq and smtpctl personalities, the setgid copy too) and the daemon do for it.
Each test fails on a leak: a file the user could not read, another user's queued mail, a
sender the user does not own, a .forward or :include: file someone else controls, or a
recipient's local part made into a path."""

import os
import pwd
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import ensure_user, needs_root, smtpd_bin, smtpq_gid, wait_until

SECRET = "Xroot-only-secret-lineX"

RULES = """
action "mb" maildir "{MAILDIR}/%{dest.user:lowercase|strip}" user smtpdtest1
match from any for domain "example.test" action "mb"
"""


@pytest.fixture(autouse=True)
def _root(user1, user2):
    needs_root()


def run_as(user, argv, binary=None, cwd="/", input=b"", timeout=30):
    """Runs `argv` (argv[0] chosen freely) of the binary as `user`, primary group only."""
    pw = pwd.getpwnam(user)

    def drop():
        os.setgroups([])
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return subprocess.run(argv, executable=str(binary or smtpd_bin()), input=input,
                          capture_output=True, cwd=cwd, timeout=timeout, preexec_fn=drop,
                          env={"PATH": "/usr/bin:/bin", "HOME": pw.pw_dir})


def out_of(r):
    return (r.stdout + r.stderr).decode(errors="replace")


def reachable_dir(path):
    """Makes every directory from `path` up to /tmp searchable by others."""
    for p in [path] + list(path.parents):
        if str(p) in ("/", "/tmp"):
            break
        os.chmod(p, (p.stat().st_mode & 0o7777) | 0o011)


@pytest.fixture
def setgid_copy(tmp_path):
    """A copy of the binary, root:_smtpq mode 2755, reachable by every user."""
    d = tmp_path / "bin"
    d.mkdir()
    reachable_dir(d)
    os.chmod(d, 0o755)
    copy = d / "smtpd"
    shutil.copy2(smtpd_bin(), copy)
    os.chown(copy, 0, smtpq_gid())
    os.chmod(copy, 0o2755)
    return copy


def secret_file(path, text, mode=0o600, gid=0):
    path.write_text(text)
    os.chown(path, 0, gid)
    os.chmod(path, mode)
    return path


# --- configuration files ------------------------------------------------------------


def test_configs_naming_root_only_files_leak_nothing(tmp_path, setgid_copy):
    """A plain user names root-only (and _smtpq-only) files as the configuration, or in a
    configuration of its own (a table, a certificate key, a CA): the tools and `smtpd -n`
    fail without quoting a byte of them, through the plain binary and the setgid copy."""
    work = tmp_path / "w"
    work.mkdir()
    reachable_dir(work)
    os.chmod(work, 0o755)
    # A root-only file that is a configuration with an error on its secret line, so a
    # parser that could read it would quote the line.
    rootconf = secret_file(work / "root.conf", "listen on 127.0.0.1\n%s frobnicate\n" % SECRET)
    groupconf = secret_file(work / "group.conf", "listen on 127.0.0.1\n%s frobnicate\n" % SECRET,
                            mode=0o640, gid=smtpq_gid())
    table = secret_file(work / "table", "%s: x\n" % SECRET, mode=0o640, gid=smtpq_gid())
    key = secret_file(work / "key.pem", "-----BEGIN PRIVATE KEY-----\n%s\n" % SECRET)
    # The user's own configuration naming them.
    pw = pwd.getpwnam("smtpdtest1")
    mine = work / "mine.conf"
    mine.write_text('queue path "%s"\nlisten on 127.0.0.1 port 2599\n'
                    'table secrets file:%s\ntable shadow file:/etc/shadow\n'
                    'pki x cert "%s"\npki x key "%s"\nca c cert "%s"\n'
                    'action "a" maildir "%s/box" alias <secrets>\n'
                    'match from any for any action "a"\n'
                    % (work / "spool", table, key, key, table, work))
    os.chown(mine, pw.pw_uid, pw.pw_gid)
    argvs = []
    for f in (rootconf, groupconf, mine, "/etc/shadow"):
        f = str(f)
        argvs += [
            ["smtpd", "-n", "-f", f],
            ["smtpd", "ctl", "-f", f, "show", "queue"],
            ["smtpctl", "-f", f, "show", "stats"],
            ["mailq", "-f", f],
            ["newaliases", "-f", f],
            ["sendmail", "-C", f, "-bp"],
            ["sendmail", "-C", f, "-bi"],
            ["sendmail", "-C", f, "alice@example.test"],
        ]
    for binary in (smtpd_bin(), setgid_copy):
        for argv in argvs:
            r = run_as("smtpdtest1", argv, binary=binary, cwd=str(work),
                       input=b"Subject: x\n\ny\n")
            out = out_of(r)
            assert SECRET not in out, (binary, argv, out)
            assert "root:" not in out, (binary, argv, out)  # a line of /etc/shadow
    # And `smtpd -n` on the user's configuration says why without the content.
    r = run_as("smtpdtest1", ["smtpd", "-n", "-f", str(mine)], cwd=str(work))
    assert r.returncode != 0 and "ermission denied" in out_of(r), out_of(r)


def test_setgid_sendmail_writes_only_in_an_offline_queue(tmp_path, setgid_copy):
    """The setgid copy named sendmail ignores -C, and uses the group's right to write
    only in an offline queue as the daemon makes it (root:_smtpq, mode 1770): a user who
    leads it elsewhere (a configuration of its own, a ./spool symbolic link to another
    directory the group may write) gets the file nowhere."""
    if Path("/etc/smtpd.conf").exists():
        pytest.skip("/etc/smtpd.conf exists: sendmail would use its spool")
    work = tmp_path / "w"
    work.mkdir()
    reachable_dir(work)
    os.chmod(work, 0o777)
    targets = []
    for name, mode in (("queue-like", 0o1770), ("group-dir", 0o770), ("group-dir2", 0o2775)):
        target = tmp_path / name
        target.mkdir()
        (target / "offline").mkdir()
        os.chown(target / "offline", 0, smtpq_gid())
        os.chmod(target / "offline", mode)
        os.chmod(target, 0o755)
        targets.append(target)
    reachable_dir(targets[0])
    conf = work / "my.conf"
    conf.write_text('queue path "%s"\n' % targets[0])
    r = run_as("smtpdtest1", ["sendmail", "-C", str(conf), "bob@example.test"], binary=setgid_copy,
               cwd=str(work), input=b"Subject: x\n\ny\n")
    assert list((targets[0] / "offline").iterdir()) == [], out_of(r)
    for target in targets[1:]:
        link = work / "spool"
        if link.is_symlink():
            link.unlink()
        os.symlink(target, link)
        r = run_as("smtpdtest1", ["sendmail", "bob@example.test"], binary=setgid_copy,
                   cwd=str(work), input=b"Subject: x\n\ny\n")
        assert r.returncode != 0, out_of(r)
        assert list((target / "offline").iterdir()) == [], (target, out_of(r))
    # The control case: the same way into an offline queue as the daemon makes it.
    link = work / "spool"
    link.unlink()
    os.symlink(targets[0], link)
    r = run_as("smtpdtest1", ["sendmail", "bob@example.test"], binary=setgid_copy,
               cwd=str(work), input=b"Subject: x\n\ny\n")
    assert r.returncode == 0 and len(list((targets[0] / "offline").iterdir())) == 1, out_of(r)


# --- the queue ------------------------------------------------------------------------


@pytest.fixture
def held(make_daemon):
    """A daemon whose deliveries are paused, holding a message of root's."""
    d = make_daemon(rules=RULES, mail_owner="smtpdtest1")
    r = d.sendmail(["-f", "ceo@example.test", "private-rcpt@example.test"],
                   b"Subject: %s\n\n%s body\n" % (SECRET.encode(), SECRET.encode()))
    assert r.returncode == 0, r
    assert wait_until(lambda: len(d.messages()) == 1, 10)
    return d


def queue_probes(d):
    msg = d.messages()[0]
    msgid = "%08x" % msg.msgid if isinstance(msg.msgid, int) else str(msg.msgid)
    code, out, _ = d.smtpctl("show", "queue")
    assert code == 0 and "private-rcpt" in out, out
    evpid = out.split("|", 1)[0].strip()
    conf = str(d.conf)
    return [
        (["mailq", "-f", conf], None),
        (["sendmail", "-C", conf, "-bp"], None),
        (["smtpctl", "-f", conf, "show", "queue"], None),
        (["smtpctl", "-f", conf, "show", "envelope", evpid], None),
        (["smtpctl", "-f", conf, "show", "message", evpid], None),
        (["smtpctl", "-f", conf, "show", "message", msgid], None),
        (["smtpctl", "-f", conf, "show", "stats"], None),
        (["smtpctl", "-f", conf, "show", "routes"], None),
        (["smtpctl", "-f", conf, "show", "hosts"], None),
        (["smtpctl", "-f", conf, "monitor"], None),
        (["smtpctl", "-f", conf, "schedule", "all"], None),
        (["smtpctl", "-f", conf, "remove", evpid], None),
        (["smtpctl", "-f", conf, "remove", "all"], None),
        (["smtpctl", "-f", conf, "pause", "smtp"], None),
        (["smtpctl", "-f", conf, "resume", "mda"], None),
        (["smtpctl", "-f", conf, "log", "verbose"], None),
        (["smtpctl", "-f", conf, "update", "table", "x"], None),
    ]


def assert_nothing_shown(d, probes, binary=None):
    for argv, _ in probes:
        r = run_as("smtpdtest2", argv, binary=binary, cwd=str(d.dir), timeout=15)
        out = out_of(r)
        assert r.returncode != 0, (argv, out)
        for word in (SECRET, "private-rcpt", "ceo@example.test"):
            assert word not in out, (argv, out)


def test_plain_user_sees_no_queue_and_changes_nothing(held, setgid_copy):
    """mailq, sendmail -bp and every smtpctl verb but submission are root's (and the
    daemon user's), as OpenSMTPD's: a plain user is refused, sees neither envelopes nor
    content, and changes nothing; the same with the daemon stopped (the spool is not
    readable by it), through the plain binary and the setgid copy."""
    probes = queue_probes(held)
    for binary in (None, setgid_copy):
        assert_nothing_shown(held, probes, binary)
        code, out, _ = held.smtpctl("show", "stats")
        assert "paused.smtp=false" in out, out
        assert len(held.messages()) == 1
    r = run_as("smtpdtest2", ["smtpctl", "-f", str(held.conf), "show", "queue"], cwd=str(held.dir))
    assert "permission denied" in out_of(r), out_of(r)
    held.stop()
    for binary in (None, setgid_copy):
        assert_nothing_shown(held, probes[:3], binary)
    assert len(held.messages()) == 1


# --- the envelope sender ----------------------------------------------------------------


def sendmail_as(d, user, args, body=b"Subject: s\n\nbody\n"):
    return run_as(user, ["sendmail", "-C", str(d.conf)] + args, cwd=str(d.dir), input=body)


def test_plain_user_sender_is_its_own(make_daemon, user1):
    """A plain user's envelope sender is its own address (or <>): another one is
    refused (553 5.7.1) and nothing is queued; the Received header and the log name the
    user's uid. Root still gives any sender."""
    d = make_daemon(rules=RULES, deliver=True, mail_owner="smtpdtest1")
    uid = pwd.getpwnam("smtpdtest2").pw_uid
    for forged in ("ceo@example.test", "root@localhost", "smtpdtest1@example.test",
                   "smtpdtest2@example.test"):
        r = sendmail_as(d, "smtpdtest2", ["-f", forged, "forged@example.test"])
        assert r.returncode != 0 and b"553 5.7.1" in r.stderr, (forged, r)
    r = sendmail_as(d, "smtpdtest2", ["own@example.test"])
    assert r.returncode == 0, r
    r = sendmail_as(d, "smtpdtest2", ["-f", "<>", "null@example.test"])
    assert r.returncode == 0, r
    r = sendmail_as(d, "smtpdtest2", ["-f", "smtpdtest2+tag@localhost", "tagged@example.test"])
    assert r.returncode == 0, r
    r = sendmail_as(d, "smtpdtest2", ["-f", "smtpdtest2", "bare@example.test"])
    assert r.returncode == 0, r
    r = sendmail_as(d, "smtpdtest2", ["-f", "root", "bare-root@example.test"])
    assert r.returncode != 0 and b"553 5.7.1" in r.stderr, r
    got = d.wait_mailbox("own", 1)
    assert got, d.log()[-2000:]
    data = got[0][1]
    assert re.search(rb"^Return-Path: <smtpdtest2@[^>]+>", data, re.M), data[:300]
    assert re.search(rb"^Received: from \S+ \(local uid %d\)" % uid, data, re.M), data[:400]
    assert d.wait_mailbox("null", 1) and d.wait_mailbox("tagged", 1) and d.wait_mailbox("bare", 1)
    assert d.wait_log(r"smtp connected address=local uid=%d" % uid)
    # Nothing of the refused ones was queued or delivered.
    assert d.wait_queue_empty(10)
    assert d.mailbox("forged") == [] and d.mailbox("bare-root") == []
    # Root gives any sender.
    assert d.sendmail(["-f", "ceo@example.test", "byroot@example.test"], b"Subject: r\n\nx\n").returncode == 0
    assert d.wait_mailbox("byroot", 1)


def test_plain_user_sender_over_smtp_on_stdin(make_daemon):
    """`sendmail -bs` by a plain user gets the same check."""
    d = make_daemon(rules=RULES, mail_owner="smtpdtest1")
    script = (b"EHLO x\r\nMAIL FROM:<ceo@example.test>\r\nMAIL FROM:<smtpdtest2@localhost>\r\n"
              b"QUIT\r\n")
    r = run_as("smtpdtest2", ["sendmail", "-C", str(d.conf), "-bs"], cwd=str(d.dir), input=script)
    replies = [l for l in r.stdout.decode().splitlines() if l[:3].isdigit() and l[3:4] == " "]
    codes = [l[:3] for l in replies]
    assert codes[-3:] == ["553", "250", "221"], r.stdout


def test_socket_senders_table_allows_more(make_daemon):
    """`listen on socket senders <t>` lets the users it lists give more senders;
    others keep their own addresses only."""
    d = make_daemon(rules=RULES, mail_owner="smtpdtest1",
                    extra='table lists { smtpdtest1 = "@lists.example.test, ceo@example.test" }\n'
                          'listen on socket senders <lists>')
    for user, sender, ok in (("smtpdtest1", "owner@lists.example.test", True),
                             ("smtpdtest1", "ceo@example.test", True),
                             ("smtpdtest1", "cfo@example.test", False),
                             ("smtpdtest1", "smtpdtest1@localhost", True),
                             ("smtpdtest2", "owner@lists.example.test", False),
                             ("smtpdtest2", "smtpdtest2@localhost", True)):
        r = sendmail_as(d, user, ["-f", sender, "x@example.test"])
        assert (r.returncode == 0) == ok, (user, sender, r)


def test_offline_submission_with_a_forged_sender_is_dropped(make_daemon, setgid_copy, user2):
    """A forged sender left in offline/ while the daemon was down is refused when the
    daemon submits it at start as its user: not delivered, the file removed."""
    if Path("/etc/smtpd.conf").exists():
        pytest.skip("/etc/smtpd.conf exists: sendmail would use its spool")
    d = make_daemon(rules=RULES, deliver=True, mail_owner="smtpdtest1")
    assert d.stop() == 0
    for args in (["-f", "ceo@example.test", "forged@example.test"], ["honest@example.test"]):
        r = run_as("smtpdtest2", ["sendmail"] + args, binary=setgid_copy, cwd=str(d.dir),
                   input=b"Subject: offline\n\nx\n")
        assert r.returncode == 0 and b"queued offline" in r.stderr, r
    d.start()
    assert d.wait_mailbox("honest", 1, 15), d.log()[-3000:]
    assert wait_until(lambda: not list((d.queue / "offline").iterdir()), 15), d.log()[-2000:]
    assert d.wait_queue_empty(10)
    assert d.mailbox("forged") == []


# --- .forward and :include: ---------------------------------------------------------------

FWD_RULES = """
action "local" maildir "{MAILDIR}/%{user.username}"
match from any for rcpt-to regex "^smtpdtest[0-9]+@localhost$" action "local"
"""


@pytest.fixture
def user4():
    """smtpdtest4: a user of these tests only, whose home they may change."""
    pw = ensure_user("smtpdtest4")
    home = Path(pw.pw_dir)
    fwd = home / ".forward"
    mode = home.stat().st_mode & 0o7777
    yield pw
    os.chmod(home, mode)
    if fwd.is_symlink() or fwd.exists():
        fwd.unlink()


def send_to(d, rcpt):
    with d.client() as c:
        c.ehlo()
        msgid = c.send_message("sender@example.test", [rcpt], b"Subject: f\r\n\r\nx\r\n")
        c.until_quit()
    return msgid


@pytest.mark.parametrize("kind", ["symlink", "fifo", "home-writable", "other-owner"])
def test_untrusted_forward_is_ignored(make_daemon, user4, user2, tmp_path, kind):
    """A .forward that is a symbolic link (even to a file of root's the user may read), a
    FIFO, in a home directory others may write, or owned by another user, is ignored:
    the mail goes to the user's own mailbox, never where the file points."""
    home = Path(user4.pw_dir)
    fwd = home / ".forward"
    target = tmp_path / "forward-target"
    target.write_text("smtpdtest2@localhost\n")
    os.chmod(target, 0o644)
    reachable_dir(tmp_path)
    if kind == "symlink":
        os.symlink(target, fwd)
        os.lchown(fwd, user4.pw_uid, user4.pw_gid)
    elif kind == "fifo":
        os.mkfifo(fwd, 0o600)
        os.chown(fwd, user4.pw_uid, user4.pw_gid)
    else:
        fwd.write_text("smtpdtest2@localhost\n")
        os.chmod(fwd, 0o644)
        if kind == "home-writable":
            os.chown(fwd, user4.pw_uid, user4.pw_gid)
            os.chmod(home, 0o777)
        else:
            os.chown(fwd, user2.pw_uid, user2.pw_gid)
    d = make_daemon(rules=FWD_RULES, deliver=True, mail_owner="*")
    send_to(d, "smtpdtest4@localhost")
    assert d.wait_mailbox("smtpdtest4", 1, 15), d.log()[-3000:]
    assert d.wait_queue_empty(10), d.log()[-2000:]
    assert d.mailbox("smtpdtest2") == []
    assert re.search(r"\.forward: .*ignored", d.log()), d.log()[-2000:]


def test_safe_forward_still_works(make_daemon, user4, user2):
    """The control case: a regular .forward of the user's, in a home only it may write."""
    home = Path(user4.pw_dir)
    os.chmod(home, 0o755)
    fwd = home / ".forward"
    fwd.write_text("smtpdtest2@localhost\n")
    os.chown(fwd, user4.pw_uid, user4.pw_gid)
    os.chmod(fwd, 0o644)
    d = make_daemon(rules=FWD_RULES, deliver=True, mail_owner="*")
    send_to(d, "smtpdtest4@localhost")
    assert d.wait_mailbox("smtpdtest2", 1, 15), d.log()[-3000:]
    assert d.mailbox("smtpdtest4") == []


def include_daemon(make_daemon, tmp_path, path):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    os.chmod(out, 0o1777)
    rules = ('table aliases { list = ":include:%s" }\n'
             'action "mb" maildir "{MAILDIR}/%%{dest.user:lowercase|strip}" alias <aliases> '
             'user smtpdtest1\n'
             'match from any for domain "example.test" action "mb"\n' % path)
    return make_daemon(rules=rules, deliver=True, mail_owner="smtpdtest1"), out


@pytest.mark.parametrize("owner", ["root", "smtpdtest2"])
def test_include_file_of_a_user_runs_no_command(make_daemon, tmp_path, owner):
    """An :include: file a plain user owns gives addresses only: its commands and files
    would run as the daemon's user, so they are skipped. Root's file gives all."""
    inc_dir = tmp_path / "inc"
    inc_dir.mkdir()
    reachable_dir(inc_dir)
    os.chmod(inc_dir, 0o755)
    out = tmp_path / "out"
    inc = inc_dir / "members"
    inc.write_text("member\n|/bin/sh -c 'touch %s/ran'\n%s/appended\n" % (out, out))
    pw = pwd.getpwnam(owner)
    os.chown(inc, pw.pw_uid, pw.pw_gid)
    os.chmod(inc, 0o644)
    d, out = include_daemon(make_daemon, tmp_path, inc)
    send_to(d, "list@example.test")
    assert d.wait_mailbox("member", 1, 15), d.log()[-3000:]
    assert d.wait_queue_empty(15), d.log()[-3000:]
    ran = (out / "ran").exists() or (out / "appended").exists()
    if owner == "root":
        assert ran, d.log()[-3000:]
    else:
        assert not ran, d.log()[-3000:]
        assert "not owned by root: skipped" in d.log()


@pytest.mark.parametrize("kind", ["symlink", "group-writable", "fifo"])
def test_unsafe_include_file_is_not_read(make_daemon, tmp_path, kind):
    """An :include: file that is a symbolic link, a FIFO, or writable by others than its
    owner is not read: the recipient is deferred (451), nothing is delivered."""
    inc_dir = tmp_path / "inc"
    inc_dir.mkdir()
    reachable_dir(inc_dir)
    os.chmod(inc_dir, 0o755)
    real = inc_dir / "real"
    real.write_text("member\n")
    os.chmod(real, 0o644)
    inc = inc_dir / "members"
    if kind == "symlink":
        os.symlink(real, inc)
    elif kind == "fifo":
        os.mkfifo(inc, 0o644)
    else:
        inc.write_text("member\n")
        os.chmod(inc, 0o664)
    d, _ = include_daemon(make_daemon, tmp_path, inc)
    with d.client() as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<s@example.test>").is_(250)
        r = c.cmd("RCPT TO:<list@example.test>", timeout=15)
        assert r.is_(451), r
    assert d.mailbox("member") == []


# --- recipients as paths ---------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["%{rcpt.user}", "%{rcpt.user:raw}", "%{rcpt}"])
def test_recipient_local_parts_never_become_paths(make_daemon, fmt):
    """Local parts with '/', '..', leading dots or control bytes, taken by a catch-all,
    land (if at all) in one directory right under the maildir root, never elsewhere."""
    d = make_daemon(rules='table catch { "@example.test" = smtpdtest1 }\n'
                          'action "mb" maildir "{MAILDIR}/box/%s" virtual <catch> user smtpdtest1\n'
                          'match from any for domain "example.test" action "mb"\n' % fmt,
                    deliver=True, mail_owner="smtpdtest1")
    root = d.maildir / "box"
    before = set(p for p in d.dir.rglob("*") if not str(p).startswith(str(d.maildir)))
    locals_ = ['"../../escape"', '"a/b"', '"/etc/x"', '".."', '"..\\/x"', '".hidden"',
               '"a\\\x01b"', '"x\\\x7fy"', '"a\\\\b"', 'dots..in..middle', '"%2e%2e"']
    accepted = 0
    with d.client() as c:
        c.ehlo()
        for lp in locals_:
            r = c.cmd("MAIL FROM:<s@example.test>")
            assert r.is_(250), r
            r = c.cmd("RCPT TO:<%s@example.test>" % lp)
            if r.is_(250):
                r = c.cmd("DATA")
                assert r.is_(354), r
                r = c.cmd("Subject: p\r\n\r\nx\r\n.")
                assert r.is_(250), r
                accepted += 1
            else:
                c.cmd("RSET")
    assert accepted >= 5
    assert wait_until(lambda: d.queue_empty(), 20), d.log()[-3000:]
    # Every maildir is one level under the root; nothing appeared elsewhere.
    for p in d.maildir.rglob("*"):
        rel = p.relative_to(root) if str(p).startswith(str(root) + "/") else None
        if p == root:
            continue
        assert rel is not None, p
        assert len(rel.parts) <= 3 and not rel.parts[0].startswith("."), p
        assert rel.parts[0] not in ("..", "."), p
        assert not any(ord(ch) < 32 or ord(ch) == 127 for ch in rel.parts[0]), p
    after = set(p for p in d.dir.rglob("*") if not str(p).startswith(str(d.maildir)))
    new = [p for p in after - before if "spool" not in p.parts and not p.name.endswith(".log")]
    assert new == [], new
    assert not Path("/etc/x").exists()
    boxes = [p for p in root.iterdir()] if root.exists() else []
    assert len(boxes) >= 1, d.log()[-2000:]


STRANGE_LOCAL_PARTS = ['"../../escape"', '"a/b"', '"/etc/x"', '".."', '".hidden"', '"a\\\x01b"',
                       '"x\\\x7fy"', '"a\\\\b"', 'dots..in..middle']


def send_strange(d, domain):
    """Sends one message to each of STRANGE_LOCAL_PARTS@domain; the addresses taken."""
    taken = []
    with d.client() as c:
        c.ehlo()
        for lp in STRANGE_LOCAL_PARTS:
            assert c.cmd("MAIL FROM:<s@example.test>").is_(250)
            r = c.cmd("RCPT TO:<%s@%s>" % (lp, domain))
            if not r.is_(250):
                c.cmd("RSET")
                continue
            assert c.cmd("DATA").is_(354)
            assert c.cmd("Subject: p\r\n\r\nx\r\n.").is_(250)
            taken.append("%s@%s" % (lp, domain))
    return taken


def test_recipient_local_parts_in_mbox(make_daemon, user1):
    """A catch-all into mbox: whatever the local part, the mailbox is the user's,
    /var/mail/smtpdtest1; nothing else appears in /var/mail."""
    mbox = Path("/var/mail/smtpdtest1")
    for p in (mbox, Path(str(mbox) + ".lock")):
        if p.exists():
            p.unlink()
    before = set(os.listdir("/var/mail"))
    d = make_daemon(rules='table catch { "@example.test" = smtpdtest1 }\n'
                          'table tusers { smtpdtest1 }\n'
                          'action "mbx" mbox virtual <catch> userbase <tusers>\n'
                          'match from any for domain "example.test" action "mbx"\n',
                    deliver=True, methods=("mbox",))
    taken = send_strange(d, "example.test")
    assert len(taken) >= 5, d.log()[-2000:]
    assert d.wait_queue_empty(20), d.log()[-3000:]
    text = mbox.read_bytes()
    assert len([l for l in text.split(b"\n") if l.startswith(b"From ")]) == len(taken), text
    assert set(os.listdir("/var/mail")) - before == {"smtpdtest1"}
    assert not Path("/etc/x").exists()


def test_recipient_local_parts_over_lmtp(make_daemon):
    """A catch-all over LMTP with rcpt-to: each address reaches the LMTP server as it
    was written, in one RCPT command of its own; no byte of it makes another command."""
    from test_lmtp import LMTPServer

    with LMTPServer() as srv:
        d = make_daemon(rules='table catch { "@example.test" = smtpdtest1 }\n'
                              'action "l" lmtp "127.0.0.1:%d" rcpt-to virtual <catch>\n'
                              'match from any for domain "example.test" action "l"\n' % srv.port,
                        deliver=True, methods=("lmtp",))
        taken = send_strange(d, "example.test")
        assert len(taken) >= 5, d.log()[-2000:]
        got = srv.wait_messages(len(taken))
        assert d.wait_queue_empty(20), d.log()[-3000:]
        assert sorted(r for m in got for r in m["rcpts"]) == sorted(taken), (got, taken)
        verbs = [c.split(" ", 1)[0].upper() for c in srv.commands]
        assert set(verbs) <= {"LHLO", "MAIL", "RCPT", "DATA", "QUIT", "RSET"}, srv.commands
        assert verbs.count("RCPT") == len(taken), srv.commands
