"""Forms of OpenSMTPD's grammar that `smtpd -n` refuses with the line and a sentence
(a check of a value its phase does not know yet, an option or condition given twice, a
keyword taken for a maildir path, a list where a mapping is needed, `user` where
OpenSMTPD forbids it, an option of the other kind of action, a duration without its
unit), and OpenSMTPD 6.8's `smtpd -n` on the same file where regress/install extracted
it; and the `getpwnam` table type of OpenSMTPD 6.8 at work."""

import subprocess

import pytest

from conftest import smtpd_bin
from test_config_corpus import OPENSMTPD

BASE = 'listen on 127.0.0.1 port 2599\naction "local" maildir\nmatch for local action "local"\n'
FIRST = BASE.count("\n") + 1  # the line of a case's first line

MAILDIR_TLS = 'maildir: \'tls\' is an option of relay actions, not a path (quote a directory ' \
              'of that name: maildir "tls")'

# (id, lines after BASE, offending line among them (1-based), message, OpenSMTPD 6.8's
# verdict: "error", "ok", or None when 6.8 cannot read the file for another reason)
CASES = [
    # A built-in filter's check of a value its phase does not know yet.
    ("helo-at-connect", 'filter "f" phase connect match !helo { good.example } disconnect "421 no"', 1,
     "check 'helo' is not possible in phase 'connect': the HELO name is known from phase "
     "'helo' on", "error"),
    ("mail-from-at-ehlo", 'filter "f" phase ehlo match mail-from { a@example.org } junk', 1,
     "check 'mail-from' is not possible in phase 'ehlo': the sender is known from phase "
     "'mail-from' on", "error"),
    ("rcpt-to-at-data", 'filter "f" phase data match rcpt-to { a@example.org } reject "550 no"', 1,
     "check 'rcpt-to' is not possible in phase 'data': a recipient is known in phase "
     "'rcpt-to' only", "error"),
    ("rcpt-to-at-commit", 'filter "f" phase commit match !rcpt-to { a@example.org } reject "550 no"', 1,
     "check 'rcpt-to' is not possible in phase 'commit': a recipient is known in phase "
     "'rcpt-to' only", "error"),
    ("auth-at-helo", 'filter "f" phase helo match auth junk', 1,
     "check 'auth' is not possible in phase 'helo': AUTH comes after EHLO, so check it from "
     "phase 'mail-from' on", "error"),
    # Listener options given twice.
    ("listen-port-twice", "listen on 127.0.0.1 port 2601 port 2602", 1, "'port' given twice", "error"),
    ("listen-tag-twice", "listen on 127.0.0.1 port 2601 tag A tag B", 1, "'tag' given twice", "error"),
    ("listen-hostname-twice", "listen on 127.0.0.1 port 2601 hostname a.example hostname b.example", 1,
     "'hostname' given twice", "error"),
    ("listen-filter-twice",
     'filter "f" phase connect match rdns junk\nlisten on 127.0.0.1 port 2601 filter "f" filter "f"', 2,
     "'filter' given twice", "error"),
    ("listen-mask-src-twice", "listen on 127.0.0.1 port 2601 mask-src mask-src", 1,
     "'mask-src' given twice", "error"),
    ("listen-family-twice", "listen on 127.0.0.1 port 2601 inet4 inet4", 1,
     "only one of inet4 and inet6 may be given", "error"),
    ("socket-mask-src-twice", "listen on socket mask-src mask-src", 1, "'mask-src' given twice", "error"),
    # Action options given twice.
    ("relay-helo-twice", "action a1 relay helo a.example helo b.example", 1, "'helo' given twice", "error"),
    ("maildir-alias-twice", "action a1 maildir alias { a = b } alias { a = b }", 1,
     "'alias' given twice", "error"),
    ("ttl-twice", "action a1 maildir ttl 1d ttl 2d", 1, "'ttl' given twice", "error"),
    ("user-twice", "action a1 maildir user nobody user root", 1, "'user' given twice", "error"),
    ("relay-src-twice", "action a1 relay src 127.0.0.1 src 127.0.0.2", 1, "'src' given twice", "error"),
    ("relay-mail-from-twice", "action a1 relay mail-from a@example.org mail-from b@example.org", 1,
     "'mail-from' given twice", "error"),
    ("relay-tls-twice", "action a1 relay tls tls no-verify", 1, "'tls' given twice", "error"),
    ("relay-backup-twice", "action a1 relay backup backup mx mx.example.org", 1,
     "'backup' given twice", "error"),
    # Match conditions given twice.
    ("rule-tag-twice", 'match from any tag A tag B for any action "local"', 1,
     "'tag' given twice in one rule", "error"),
    ("rule-auth-twice", 'match from any auth auth for any action "local"', 1,
     "'auth' given twice in one rule", "error"),
    ("rule-from-auth-and-auth", 'match from auth !auth root for any action "local"', 1,
     "'auth' given twice in one rule", "error"),
    ("rule-helo-twice", 'match from any helo a.example !helo b.example for any action "local"', 1,
     "'helo' given twice in one rule", "error"),
    ("rule-mail-from-twice", 'match from mail-from a@example.org mail-from b@example.org for any '
     'action "local"', 1, "'mail-from' given twice in one rule", "error"),
    # A keyword of the action grammar where a maildir path may stand.
    ("maildir-tls", "action a1 maildir tls", 1, MAILDIR_TLS, "error"),
    ("maildir-helo", "action a1 maildir helo", 1,
     'maildir: \'helo\' is an option of relay actions, not a path (quote a directory of that '
     'name: maildir "helo")', "error"),
    # A list where a mapping is needed.
    ("relay-domain-list", "action a1 relay domain { example.com }", 1,
     "the table given to 'domain' must be a mapping (key => value): 'example.com' has no value",
     "error"),
    ("alias-list", "action a1 maildir alias { root }", 1,
     "the table given to 'alias' must be a mapping (key => value): 'root' has no value", "error"),
    ("helo-src-list", "action a1 relay helo-src { 127.0.0.1 }", 1,
     "the table given to 'helo-src' must be a mapping (key => value): '127.0.0.1' has no value",
     "error"),
    ("virtual-list-table", 'table t { "@example.org", "a@example.net" }\naction a1 maildir virtual <t>', 2,
     "the table given to 'virtual' must be a mapping (key => value): '@example.org' has no value",
     "error"),
    # `user` where OpenSMTPD forbids it.
    ("mbox-user", "action a1 mbox user nobody", 1,
     "'user' may not be given to mbox: each mailbox of /var/mail is written as its own user "
     "(deliver with maildir or mda to write as one account)", "error"),
    ("forward-only-user", "action a1 forward-only user nobody", 1,
     "'user' may not be given to forward-only: it delivers nothing itself, only where forward "
     "files send the mail", "error"),
    ("expand-only-user", "action a1 expand-only user nobody", 1,
     "'user' may not be given to expand-only: it delivers nothing itself, only where aliases "
     "and virtual mappings send the mail", "error"),
    # An option of the other kind of action.
    ("relay-alias", "action a1 relay alias { a = b }", 1,
     "'alias' is an option of local delivery actions, not of relay", "error"),
    ("relay-user", "action a1 relay user nobody", 1,
     "'user' is an option of local delivery actions, not of relay", "error"),
    ("mbox-helo", "action a1 mbox helo a.example", 1,
     "'helo' is an option of relay actions, not of mbox", "error"),
    # The socket's options; masquerade.
    ("socket-port", "listen on socket port 25", 1,
     "unexpected 'port': 'listen on socket' takes only filter, tag, mask-src, no-dsn and senders", "error"),
    ("masquerade-without-senders", "listen on 127.0.0.1 port 2601 mask-src masquerade", 1,
     "'masquerade' follows 'senders <table>', as in 'senders <users> masquerade'", "error"),
    # Table types of OpenSMTPD.
    ("getpwnam-as-domains", 'table t1 getpwnam\nmatch from any for domain <t1> action "local"', 2,
     "table 't1' (getpwnam) holds the system's accounts: it can be given to 'userbase' only",
     "error"),
    ("proc-table", "table t1 proc:/usr/bin/cat", 1,
     "table type 'proc' is not supported: a program of OpenSMTPD 7.6's line protocol is run by "
     "'table t1 proc-exec \"/usr/bin/cat\"'; one of OpenSMTPD 6's imsg protocol is installed as "
     "/usr/libexec/opensmtpd/table-NAME and named NAME:ARG", "ok"),
    # Limits and durations.
    ("session-keepalive", "mta limit session-keepalive 10", 1,
     "mta limit session-keepalive is not supported: an outgoing session sends QUIT as soon as "
     "no message waits for its destination, instead of staying open idle", "ok"),
    ("queue-ttl-without-unit", "queue ttl 3", 1,
     "invalid duration '3': give its unit, as in 3s, 3m, 3h or 3d", "error"),
    ("action-ttl-without-unit", "action a1 maildir ttl 3", 1,
     "invalid duration '3': give its unit, as in 3s, 3m, 3h or 3d", "error"),
]

ACCEPTED = [
    # OpenSMTPD 6.8's built-in table of the system's accounts, as a userbase.
    ("getpwnam-userbase", 'table t1 getpwnam\naction a1 maildir userbase <t1>'),
    # `static:` is OpenSMTPD's name of the file backend.
    ("static-table", 'table t1 static:/etc/hosts'),
    # A quoted keyword is a path; checks of values known at the phase.
    ("maildir-quoted-keyword", 'action a1 maildir "tls" junk'),
    ("checks-known-at-their-phase",
     'filter "a" phase connect match !fcrdns junk\n'
     'filter "b" phase helo match helo { bad.example } reject "550 no"\n'
     'filter "c" phase mail-from match auth { bob } junk\n'
     'filter "d" phase rcpt-to match rcpt-to { a@example.org } reject "550 no"\n'
     'filter "e" phase commit match mail-from { a@example.org } reject "550 no"'),
    ("a-mapping-where-one-is-needed", 'action a1 maildir alias { root = bob } user nobody ttl 4d'),
]


def check(binary, tmp_path, text):
    conf = tmp_path / "smtpd.conf"
    conf.write_text(text)
    r = subprocess.run([str(binary), "-n", "-f", str(conf)], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path, stdin=subprocess.DEVNULL)
    return conf, r, (r.stdout + r.stderr).strip()


@pytest.mark.parametrize("name,lines,line,message,_", CASES, ids=[c[0] for c in CASES])
def test_refused_with_the_reason(tmp_path, name, lines, line, message, _):
    conf, r, out = check(smtpd_bin(), tmp_path, BASE + lines + "\n")
    assert r.returncode == 1, out
    assert "%s:%d: %s" % (conf, FIRST + line - 1, message) in out.splitlines(), out


@pytest.mark.parametrize("name,lines", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_accepted(tmp_path, name, lines):
    _, r, out = check(smtpd_bin(), tmp_path, BASE + lines + "\n")
    assert r.returncode == 0 and r.stdout.strip() == "configuration OK", out


def opensmtpd():
    if not OPENSMTPD.exists():
        pytest.skip("OpenSMTPD 6.8 is not extracted in %s (regress/install does it)"
                    % OPENSMTPD.parent.parent.parent)
    return OPENSMTPD


@pytest.mark.parametrize("name,lines,_l,_m,verdict", CASES, ids=[c[0] for c in CASES])
def test_opensmtpd_6_8_on_the_refused(tmp_path, name, lines, _l, _m, verdict):
    _, r, out = check(opensmtpd(), tmp_path, BASE + lines + "\n")
    assert (r.returncode == 0) == (verdict == "ok"), out


@pytest.mark.parametrize("name,lines", ACCEPTED, ids=[c[0] for c in ACCEPTED])
def test_opensmtpd_6_8_on_the_accepted(tmp_path, name, lines):
    _, r, out = check(opensmtpd(), tmp_path, BASE + lines + "\n")
    assert r.returncode == 0, out


def test_getpwnam_userbase_is_the_system_accounts(make_daemon):
    rules = ('table pw getpwnam\n'
             'action "m" maildir "{MAILDIR}/%{user.username}" userbase <pw>\n'
             'match from any for domain "example.test" action "m"\n')
    d = make_daemon(rules=rules)
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@example.org>", 250)
        c.expect("RCPT TO:<root@example.test>", 250)
        c.expect("RCPT TO:<no-such-account-here@example.test>", 550, "5.1.1")
        c.until_quit()
