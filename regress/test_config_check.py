"""`smtpd -n`: configuration check; errors are `FILE:LINE: message` and exit 1."""

import re
import subprocess

import pytest

from conftest import free_port, smtpd_bin

GOOD = """\
# a complete configuration
lan = "127.0.0.1"
table vusers { "bob@example.org" = root, "@example.net" = root }
table nets { 127.0.0.0/8, ::1 }
listen on $lan port 2525 hostname mx.example.org tag IN
queue path "spool"
smtp max-message-size 10M
smtp limit max-rcpt 50 max-mails 10 max-sessions 5 max-sessions-per-address 2 max-errors 3 max-hops 9 max-command-line 1024 max-text-line 2000
smtp timeout 30s
action "virt" maildir virtual <vusers>
action "local" mbox
action "out" relay
match from any for domain "example.org" action "virt"
match from src <nets> for any action "out"
match from any for domain "blocked.example" reject
match for local action "local"
"""


def check(tmp_path, text, *extra):
    conf = tmp_path / "smtpd.conf"
    conf.write_text(text)
    r = subprocess.run([str(smtpd_bin()), "-n", "-f", str(conf), *extra], capture_output=True, text=True,
                       timeout=30, cwd=tmp_path)
    return conf, r


def test_good_config(tmp_path):
    conf, r = check(tmp_path, GOOD)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "configuration OK"
    # -n does not create the queue.
    assert not (tmp_path / "spool").exists()


BAD = [
    # (name, text, line, message regex)
    ("unknown keyword", "listen on 127.0.0.1 port 2525\n\nbogus thing\n", 3, r"unknown keyword 'bogus'"),
    ("undefined table", "listen on 127.0.0.1 port 2525\naction \"a\" mbox alias <nope>\n", 2,
     r"undefined table 'nope'"),
    ("undefined action", "listen on 127.0.0.1 port 2525\naction \"a\" mbox\nmatch from any for any action \"b\"\n", 3,
     r"undefined action 'b'"),
    ("port zero", "listen on 127.0.0.1 port 0\n", 1, r"invalid port '0'"),
    ("port too big", "# c\nlisten on 127.0.0.1 port 70000\n", 2, r"invalid port '70000'"),
    # A name is a service of /etc/services ("port submission"); an unknown one is refused.
    ("port not a number", "listen on 127.0.0.1 port nosuchservice\n", 1,
     r"invalid port 'nosuchservice': no such service in /etc/services"),
    ("limit out of range", "listen on 127.0.0.1 port 2525\nsmtp limit max-rcpt 0\n", 2, r"max-rcpt: 0 is out of range"),
    ("unknown limit", "listen on 127.0.0.1 port 2525\nsmtp limit max-bogus 3\n", 2, r"unknown limit 'max-bogus'"),
    ("bad size", "listen on 127.0.0.1 port 2525\nsmtp max-message-size lots\n", 2, r"invalid size 'lots'"),
    ("bad timeout", "listen on 127.0.0.1 port 2525\nsmtp timeout 0s\n", 2, r"invalid duration '0s'"),
    ("bad network", "listen on 127.0.0.1 port 2525\naction \"a\" mbox\nmatch from src 300.1.1.1 for any action \"a\"\n",
     3, r"invalid address or network '300.1.1.1'"),
    ("action defined twice", "listen on 127.0.0.1 port 2525\naction \"a\" mbox\naction \"a\" mbox\n", 3,
     r"action 'a' defined twice"),
    ("match without decision", "listen on 127.0.0.1 port 2525\nmatch from any for any\n", 2,
     r"'action NAME' or 'reject' expected"),
    ("trailing garbage", "listen on 127.0.0.1 port 2525 bogus\n", 1, r"unexpected 'bogus'"),
]


@pytest.mark.parametrize("name,text,line,msg", BAD, ids=[b[0] for b in BAD])
def test_bad_config(tmp_path, name, text, line, msg):
    conf, r = check(tmp_path, text)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "configuration OK" not in r.stdout
    out = (r.stdout + r.stderr).strip().splitlines()
    pat = re.compile(r"^%s:%d: %s" % (re.escape(str(conf)), line, msg))
    assert any(pat.match(l) for l in out), "wanted %s:%d: %s, got %r" % (conf, line, msg, out)


def test_missing_listener(tmp_path):
    conf, r = check(tmp_path, 'action "a" mbox\nmatch for local action "a"\n')
    assert r.returncode == 1
    out = (r.stdout + r.stderr).strip().splitlines()
    # An error about the file as a whole carries no line number.
    pat = re.compile(r"^%s:(\d+:)? .*no listener" % re.escape(str(conf)))
    assert any(pat.match(l) for l in out), out


def test_missing_file(tmp_path):
    r = subprocess.run([str(smtpd_bin()), "-n", "-f", str(tmp_path / "nope.conf")], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 1
    assert str(tmp_path / "nope.conf") in r.stderr


def test_error_in_included_file_names_that_file(tmp_path):
    inc = tmp_path / "inc.conf"
    inc.write_text("# included\n\nbogus\n")
    conf, r = check(tmp_path, 'listen on 127.0.0.1 port 2525\ninclude "%s"\n' % inc)
    assert r.returncode == 1
    assert any(l.startswith("%s:3: unknown keyword 'bogus'" % inc) for l in r.stderr.splitlines()), r.stderr


def test_macro_from_command_line(tmp_path):
    conf, r = check(tmp_path, "p = 25\nlisten on 127.0.0.1 port $p\n", "-D", "p=0")
    # -D wins over the file: port 0 is refused, at the listen line.
    assert r.returncode == 1
    assert ("%s:2: invalid port '0'" % conf) in r.stderr
    conf, r = check(tmp_path, "p = 25\nlisten on 127.0.0.1 port $p\n", "-D", "p=%d" % free_port())
    assert r.returncode == 0 and r.stdout.strip() == "configuration OK"


def test_bad_flag(tmp_path):
    r = subprocess.run([str(smtpd_bin()), "-Z"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "usage" in r.stderr.lower()
