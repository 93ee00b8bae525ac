"""The sendmail personality (`smtpd sendmail -C CONF`, links named sendmail), newaliases,
the offline queue (as root and through a setgid _smtpq copy as a plain user), and GNU
mailutils' mail(1) sending through our sendmail."""

import email
import email.utils
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import needs_root, parse_dsn, smtpd_bin, smtpq_gid, wait_until

RULES = """
action "mb" maildir "{MAILDIR}/%{dest.user:lowercase|strip}" user smtpdtest1
match from any for domain "example.test" action "mb"
"""


@pytest.fixture(autouse=True)
def _root(user1):
    needs_root()


@pytest.fixture
def d(make_daemon):
    return make_daemon(rules=RULES, deliver=True, mail_owner="smtpdtest1")


def headers_of(data):
    """Header fields of a delivered message (after our Return-Path/Delivered-To)."""
    return email.message_from_bytes(data)


def one(d, box, timeout=10):
    got = d.wait_mailbox(box, 1, timeout)
    assert len(got) == 1, (box, got, d.log()[-2000:])
    return got[0][1]


def no_etc_conf():
    if Path("/etc/smtpd.conf").exists():
        pytest.skip("/etc/smtpd.conf exists: the tools would use its spool")


# ---------------------------------------------------------------------------


def test_sendmail_adds_missing_headers(d):
    r = d.sendmail(["alice@example.test"], b"Subject: plain\n\nhello from sendmail\n")
    assert r.returncode == 0 and r.stderr == b"", r
    data = one(d, "alice")
    assert d.wait_queue_empty(10)
    m = headers_of(data)
    assert re.fullmatch(r"<root@[^>]+>", m["Return-Path"]), m["Return-Path"]
    assert m["Delivered-To"] == "alice@example.test"
    assert m["From"] == m["Return-Path"][1:-1], (m["From"], m["Return-Path"])
    assert email.utils.parsedate_tz(m["Date"]) is not None, m["Date"]
    assert re.fullmatch(r"<[^@<>]+@[^@<>]+>", m["Message-ID"]), m["Message-ID"]
    assert m["Subject"] == "plain"
    assert data.endswith(b"\n\nhello from sendmail\n")
    # From the local socket.
    assert re.search(rb"Received: from localhost \(", data), data[:300]
    assert d.wait_log(r"smtp connected address=local uid=0", 15)


def test_sendmail_keeps_present_headers_and_full_name(d):
    msg = (b"From: Someone <someone@origin.example>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n"
           b"Message-ID: <fixed@origin.example>\nSubject: complete\n\nbody\n")
    assert d.sendmail(["alice@example.test"], msg).returncode == 0
    m = headers_of(one(d, "alice"))
    for h, v in (("From", "Someone <someone@origin.example>"), ("Message-ID", "<fixed@origin.example>"),
                 ("Date", "Mon, 1 Jan 2024 00:00:00 +0000")):
        assert m.get_all(h) == [v], (h, m.get_all(h))
    r = d.sendmail(["-F", "Full Name", "bob@example.test"], b"Subject: named\n\nx\n")
    assert r.returncode == 0, r
    m = headers_of(one(d, "bob"))
    assert re.fullmatch(r"Full Name <root@[^>]+>", m["From"]), m["From"]
    # Input without a header section becomes the body.
    assert d.sendmail(["carol@example.test"], b"just a body line\nand another\n").returncode == 0
    data = one(d, "carol")
    assert data.endswith(b"\n\njust a body line\nand another\n"), data


def test_sendmail_t_takes_recipients_and_strips_bcc(d):
    msg = (b"To: Alice <alice@example.test>, bob@example.test\nCc: \"Carol, C.\" <carol@example.test>\n"
           b"Bcc: dave@example.test,\n eve@example.test\nSubject: dash t\n\nBcc: in the body stays\n")
    r = d.sendmail(["-t", "frank@example.test"], msg)
    assert r.returncode == 0, r
    for box in ("alice", "bob", "carol", "dave", "eve", "frank"):
        data = one(d, box)
        head, body = data.split(b"\n\n", 1)
        trace = b"Return-Path: <root@"
        assert head.startswith(trace), head
        head = head.split(b"\n", 2)[2]  # without Return-Path and Delivered-To
        assert b"\nBcc:" not in head and not head.startswith(b"Bcc:"), (box, head)
        assert b"dave@" not in head and b"eve@" not in head, (box, head)
        assert body == b"Bcc: in the body stays\n"
        assert b"To: Alice <alice@example.test>, bob@example.test\n" in head
    assert d.wait_queue_empty(10)
    assert len(list(d.maildir.glob("*/new/*"))) == 6


def test_sendmail_f_sets_envelope_sender(d):
    assert d.sendmail(["-f", "someone@origin.example", "alice@example.test"], b"Subject: f\n\nx\n").returncode == 0
    assert headers_of(one(d, "alice"))["Return-Path"] == "<someone@origin.example>"
    assert d.sendmail(["-f", "<>", "bob@example.test"], b"Subject: null\n\nx\n").returncode == 0
    assert headers_of(one(d, "bob"))["Return-Path"] == "<>"
    assert d.sendmail(["-r", "<other@origin.example>", "carol@example.test"], b"Subject: r\n\nx\n").returncode == 0
    assert headers_of(one(d, "carol"))["Return-Path"] == "<other@origin.example>"


def test_sendmail_dot_line(d):
    msg = b"Subject: dots\n\nline one\n.\nline two\n..two dots\n"
    assert d.sendmail(["alice@example.test"], msg).returncode == 0
    assert one(d, "alice").endswith(b"\n\nline one\n")
    for flag, box in (("-i", "bob"), ("-oi", "carol")):
        assert d.sendmail([flag, "%s@example.test" % box], msg).returncode == 0
        assert one(d, box).endswith(b"\n\nline one\n.\nline two\n..two dots\n"), box


def test_sendmail_bs_speaks_smtp(d):
    script = (b"EHLO me.example\r\nMAIL FROM:<bs@origin.example>\r\nRCPT TO:<alice@example.test>\r\n"
              b"DATA\r\nSubject: via bs\r\n\r\n..stuffed\r\nover stdio\r\n.\r\nQUIT\r\n")
    r = d.run_tool(["sendmail", "-C", str(d.conf), "-bs"], input=script)
    assert r.returncode == 0, r
    out = r.stdout.decode()
    codes = [l[:4] for l in out.splitlines()]
    assert codes[0] == "220 ", out
    assert "221 " in codes[-1:], out
    m = re.search(r"^250 2\.0\.0 ([0-9a-f]{8}) Message accepted for delivery", out, re.M)
    assert m, out
    data = one(d, "alice")
    assert ("id %s" % m.group(1)).encode() in data
    assert data.startswith(b"Return-Path: <bs@origin.example>\n")
    assert data.endswith(b"Subject: via bs\n\n.stuffed\nover stdio\n")
    # -bs with no daemon: exit 75.
    d.stop()
    r = d.run_tool(["sendmail", "-C", str(d.conf), "-bs"], input=b"QUIT\r\n")
    assert r.returncode == 75, r


def test_sendmail_bp_lists_the_queue(make_daemon, tmp_path):
    no_etc_conf()
    d = make_daemon(rules=RULES, mail_owner="smtpdtest1")  # delivery held
    assert d.sendmail(["alice@example.test"], b"Subject: q\n\nx\n").returncode == 0
    want = d.smtpctl("show", "queue")[1]
    assert re.match(r"[0-9a-f]{16}\|root@[^|]+\|alice@example.test\|user:alice\|mb\|", want), want
    # The spool of /etc/smtpd.conf, else ./spool.
    r = d.run_tool(["sendmail", "-bp"], cwd=d.dir)
    assert r.returncode == 0 and r.stdout.decode() == want, r
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sendmail").symlink_to(smtpd_bin())
    r = d.run_tool(["-bp"], argv0=bindir / "sendmail", cwd=d.dir)
    assert r.returncode == 0 and r.stdout.decode() == want, r


def test_sendmail_bp_honours_C(make_daemon, tmp_path):
    """-C FILE finds the spool through FILE, for -bp as for -bi and submission."""
    no_etc_conf()
    d = make_daemon(rules=RULES, mail_owner="smtpdtest1")
    assert d.sendmail(["alice@example.test"], b"Subject: q\n\nx\n").returncode == 0
    want = d.smtpctl("show", "queue")[1]
    assert want
    r = d.run_tool(["sendmail", "-C", str(d.conf), "-bp"], cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.decode() == want, r


def test_sendmail_unknown_recipient_is_returned_not_fatal(d):
    """One recipient the rules refuse does not stop the others (as with Postfix's
    sendmail): the message goes to the valid ones, the sender gets it back in a DSN
    for the refused one, and the exit status is 0."""
    r = d.sendmail(["-t", "-f", "carol@example.test"],
                   b"To: alice@example.test, someone@elsewhere.example\nCc: bob@example.test\n"
                   b"Subject: partly\n\nhello\n")
    assert r.returncode == 0, r
    assert b"<someone@elsewhere.example>: 550" in r.stderr, r
    assert b"returned to <carol@example.test>" in r.stderr, r
    for box in ("alice", "bob"):
        assert headers_of(one(d, box))["Subject"] == "partly"
    dsn, rcpts, _, returned = parse_dsn(one(d, "carol"))
    assert "<MAILER-DAEMON@" in dsn["From"], dsn["From"]
    assert [f["Final-Recipient"] for f in rcpts] == ["rfc822; someone@elsewhere.example"], rcpts
    assert rcpts[0]["Action"] == "failed" and rcpts[0]["Status"].startswith("5."), rcpts
    assert b"hello" in returned.as_bytes(), returned
    assert d.wait_queue_empty(10)
    # Every recipient refused: only the report is queued; still 0.
    r = d.sendmail(["-f", "carol@example.test", "nobody@elsewhere.example"], b"Subject: none\n\nx\n")
    assert r.returncode == 0 and b"returned to <carol@example.test>" in r.stderr, r
    assert d.wait_mailbox("carol", 2, 10)
    # A long line is sent as it is.
    r = d.sendmail(["alice@example.test"], b"Subject: long\n\n" + b"x" * 5000 + b"\n")
    assert r.returncode == 0, r
    got = d.wait_mailbox("alice", 2, 10)
    assert any(b"\n" + b"x" * 5000 + b"\n" in data for _, data in got), got


def test_sendmail_errors(d):
    r = d.sendmail([], b"Subject: none\n\nx\n")
    assert r.returncode == 64 and b"no recipients" in r.stderr, r
    r = d.sendmail(["-bz", "alice@example.test"], b"x\n")
    assert r.returncode == 64, r
    r = d.sendmail(["-Q"], b"x\n")
    assert r.returncode == 64, r
    # Every recipient refused and the sender <>: nobody to tell, EX_NOUSER.
    r = d.sendmail(["-f", "<>", "someone@elsewhere.example"], b"Subject: refused\n\nx\n")
    assert r.returncode == 67 and b"550" in r.stderr, r
    time.sleep(0.5)
    assert d.queue_empty()
    # An unreadable configuration.
    r = d.run_tool(["sendmail", "-C", str(d.dir / "missing.conf"), "alice@example.test"], input=b"x\n")
    assert r.returncode == 78, r


def test_newaliases(make_daemon, tmp_path):
    good = tmp_path / "good.conf"
    (tmp_path / "aliases").write_text("postmaster: root\nabuse: root\n# comment\nstaff: alice, bob\n"
                                      "\tcarol\n")
    good.write_text('queue path "%s"\nlisten on 127.0.0.1 port 2599\n'
                    'table aliases file:%s\n'
                    'table more { info = root, sales = root }\n'
                    'action "local" maildir "%s/mail" alias <aliases>\n'
                    'action "other" maildir "%s/mail2" alias <more>\n'
                    'match from local for local action "local"\n'
                    % (tmp_path / "spool", tmp_path / "aliases", tmp_path, tmp_path))
    r = subprocess.run([str(smtpd_bin()), "newaliases", "-f", str(good)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r
    assert r.stdout.splitlines() == ["aliases: 3 aliases", "more: 2 aliases"], r.stdout
    # A link named newaliases, and sendmail -bi -C.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "newaliases").symlink_to(smtpd_bin())
    r2 = subprocess.run([str(bindir / "newaliases"), "-f", str(good)], capture_output=True, text=True,
                        timeout=30)
    assert (r2.returncode, r2.stdout) == (0, r.stdout), r2
    r3 = subprocess.run([str(smtpd_bin()), "sendmail", "-C", str(good), "-bi"], capture_output=True,
                        text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert (r3.returncode, r3.stdout) == (0, r.stdout), r3
    # No alias table.
    plain = tmp_path / "plain.conf"
    plain.write_text('listen on 127.0.0.1 port 2599\naction "l" maildir "%s/m"\n'
                     'match from local for local action "l"\n' % tmp_path)
    r = subprocess.run([str(smtpd_bin()), "newaliases", "-f", str(plain)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "no alias table in %s" % plain, r
    # Errors: a bad statement, a missing table file; usage.
    bad = tmp_path / "bad.conf"
    bad.write_text(good.read_text().replace("table more", "tabel more"))
    r = subprocess.run([str(smtpd_bin()), "newaliases", "-f", str(bad)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and r.stderr.startswith("%s:4: " % bad), r
    missing = tmp_path / "missing.conf"
    missing.write_text(good.read_text().replace(str(tmp_path / "aliases"), str(tmp_path / "nope")))
    r = subprocess.run([str(smtpd_bin()), "newaliases", "-f", str(missing)], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1 and str(missing) in r.stderr, r
    r = subprocess.run([str(smtpd_bin()), "newaliases", "-x"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 64 and "usage:" in r.stderr, r


def test_offline_queue(make_daemon, user1):
    no_etc_conf()
    gid = smtpq_gid()  # before the first start: offline/ becomes root:_smtpq 1770
    d = make_daemon(rules=RULES, deliver=True, mail_owner="smtpdtest1")
    assert d.stop() == 0
    off = d.queue / "offline"
    st = off.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (0, gid, 0o1770), (st, oct(st.st_mode))

    # As root.
    r = d.sendmail(["alice@example.test"], b"Subject: offline root\n\nfrom root\n")
    assert r.returncode == 0 and b"queued offline" in r.stderr, r
    # A plain user without the setgid copy may not write offline/.
    r = d.sendmail(["alice@example.test"], b"Subject: refused\n\nx\n", user="smtpdtest1")
    assert r.returncode == 75, r
    # The setgid copy named sendmail; it ignores -C (and takes ./spool here).
    bindir = d.dir / "bin"
    bindir.mkdir(mode=0o755)
    sm = bindir / "sendmail"
    shutil.copy2(smtpd_bin(), sm)
    os.chown(sm, 0, gid)
    os.chmod(sm, 0o2755)
    r = d.run_tool(["-C", "/nonexistent/smtpd.conf", "alice@example.test"],
                   input=b"Subject: offline user\n\nfrom smtpdtest1\n", argv0=sm, user="smtpdtest1",
                   cwd=d.dir)
    assert r.returncode == 0 and b"queued offline" in r.stderr, r
    files = sorted(off.iterdir(), key=lambda p: p.stat().st_uid)
    assert [f.stat().st_uid for f in files] == [0, user1.pw_uid], files
    assert files[1].stat().st_gid == gid
    assert all(f.read_bytes().startswith(b"smtpd-offline 1\n") for f in files)

    d.start()
    got = d.wait_mailbox("alice", 2, 15)
    assert len(got) == 2, d.log()[-3000:]
    assert wait_until(lambda: not any(off.iterdir()), 5), list(off.iterdir())
    assert d.wait_queue_empty(10)
    by_subject = {headers_of(b)["Subject"]: headers_of(b) for _, b in got}
    assert set(by_subject) == {"offline root", "offline user"}
    assert re.fullmatch(r"<root@[^>]+>", by_subject["offline root"]["Return-Path"])
    assert re.fullmatch(r"<smtpdtest1@[^>]+>", by_subject["offline user"]["Return-Path"])
    assert re.fullmatch(r"smtpdtest1@[^>]+", by_subject["offline user"]["From"])
    assert d.wait_log(r"offline: 2 message\(s\) submitted", 15), d.log()[-2000:]
    log = d.log()
    assert re.search(r"offline: 2 message\(s\) submitted", log), log[-2000:]
    # Each submitted as its owner.
    uids = re.findall(r"smtp connected address=local uid=(\d+)", log)
    assert sorted(uids) == sorted(["0", str(user1.pw_uid)]), uids


def test_mailutils_mail_through_our_sendmail(d, tmp_path):
    no_etc_conf()
    mail = shutil.which("mail")
    if not mail or "mailutils" not in os.path.realpath(mail):
        pytest.skip("GNU mailutils' mail is not installed (apt-get install mailutils)")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sendmail").symlink_to(smtpd_bin())
    # cwd = the daemon's directory: our sendmail finds ./spool.
    r = subprocess.run([mail, "-E", "set sendmail=sendmail:%s" % (bindir / "sendmail"),
                        "-s", "sent with mail(1)", "alice@example.test"],
                       input=b"a body written by mailutils\n", capture_output=True, cwd=d.dir,
                       timeout=60, env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path)})
    assert r.returncode == 0, r
    data = one(d, "alice", 15)
    m = headers_of(data)
    assert m["Subject"] == "sent with mail(1)"
    assert "mailutils" in m.get("User-Agent", "").lower(), m.items()
    assert re.fullmatch(r"<root@[^>]+>", m["Return-Path"])
    assert data.endswith(b"a body written by mailutils\n")


def test_sendmail_line_ends(d):
    """LF or CR LF in, a lone CR dropped, leading dots kept through the stuffing."""
    msg = b"Subject: ends\r\n\r\ncrlf line\r\nlf line\nlone\rcr\n.leading dot\n"
    assert d.sendmail(["-i", "alice@example.test"], msg).returncode == 0
    data = one(d, "alice")
    assert data.endswith(b"Subject: ends\n\ncrlf line\nlf line\nlonecr\n.leading dot\n"), data


def test_sendmail_refused_after_content(make_daemon):
    """552 5.3.4 after the final dot: a permanent refusal, exit 65, nothing queued
    (src/client.rs; smtpctl(8) lists "refused the message after its content" under 75)."""
    d = make_daemon(rules=RULES, extra="smtp max-message-size 2K", deliver=True,
                    mail_owner="smtpdtest1")
    r = d.sendmail(["alice@example.test"], b"Subject: big\n\n" + (b"y" * 79 + b"\n") * 100)
    assert r.returncode == 65 and b"552" in r.stderr, r
    time.sleep(0.3)
    assert d.queue_empty() and d.mailbox("alice") == []


def test_sendmail_as_plain_user(d, user1):
    r = d.sendmail(["alice@example.test"], b"Subject: from a user\n\nhi\n", user="smtpdtest1")
    assert r.returncode == 0, r
    m = headers_of(one(d, "alice"))
    assert re.fullmatch(r"<smtpdtest1@[^>]+>", m["Return-Path"]), m["Return-Path"]
    assert re.fullmatch(r"smtpdtest1@[^>]+", m["From"]), m["From"]
    assert d.wait_log(r"smtp connected address=local uid=%d\b" % user1.pw_uid, 15)
