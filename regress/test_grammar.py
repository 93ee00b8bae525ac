"""OpenSMTPD statements and options at work: `mask-src`, `no-dsn`, `hostnames` and the
local socket's `tag`; `regex` conditions; `queue encryption` (the spool's message files
unreadable, mail delivered, `smtpctl show message`, the key from the standard input);
`mda wrapper` and format specifiers inside single quotes; SRS on a forwarding relay and
a bounce taken back; `smtp ciphers` as the listeners' default."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import HOSTNAME, accepted_id, needs_root, wait_until
from test_relay_client import Receiver
from tlscerts import Pki

SENDER = "sender@example.test"
KEY = "0123456789abcdef0123456789abcdef"
DELIVER = 'action "mb" maildir "{MAILDIR}/%{dest.user:lowercase|strip}" user smtpdtest1\n'


def ehlo_lines(c):
    return c.ehlo().lines


def send(d, rcpts, body=b"Subject: grammar\r\n\r\nhello\r\n", sender=SENDER):
    with d.client() as c:
        c.ehlo()
        msgid = c.send_message(sender, rcpts, body)
        c.until_quit()
    return msgid


def spool_files(d):
    q = Path(d.spool_root()) / "queue"
    return [p for p in q.rglob("*") if p.is_file() and re.fullmatch(r"[0-9a-f]{8}", p.name)]


# ------------------------------------------------------------------ listener options

def test_mask_src_and_no_dsn(make_daemon):
    d = make_daemon(listen_opts="mask-src no-dsn")
    with d.client() as c:
        lines = ehlo_lines(c)
        assert not any(l[4:] == "DSN" for l in lines), lines
        c.expect("MAIL FROM:<%s> RET=HDRS" % SENDER, 555, "5.5.4")
        c.expect("MAIL FROM:<%s> ENVID=x" % SENDER, 555, "5.5.4")
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        c.expect("RCPT TO:<root@example.test> NOTIFY=NEVER", 555, "5.5.4")
        c.expect("RCPT TO:<root@example.test>", 250)
        c.expect("DATA", 354)
        c.send(b"Subject: masked\r\n\r\nhi\r\n.\r\n")
        msgid = accepted_id(c.reply())
        c.until_quit()
    data = d.wait_messages(1)[0].data
    assert data.startswith(b"Received: by %s (smtpd) with ESMTP id %s" % (HOSTNAME.encode(),
                                                                          msgid.encode())), data[:200]
    assert b"127.0.0.1" not in data.split(b"\n\n")[0]
    # Without the options, DSN is offered and the client named.
    plain = make_daemon()
    with plain.client() as c:
        assert "250-DSN" in ehlo_lines(c)


def test_hostnames_by_local_address(make_daemon):
    d = make_daemon(extra="table names { 127.0.0.1 = named.test.example }",
                    listen_opts="hostnames <names>")
    with d.client() as c:
        assert c.greeting().first == "220 named.test.example ESMTP smtpd"
        c.expect("EHLO client.test", 250)
        # The name is one of the server's own: `for local` takes it.
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        c.expect("RCPT TO:<root@named.test.example>", 250)
        c.until_quit()


def test_socket_tag_and_mask_src(make_daemon, user1):
    needs_root()
    rules = (DELIVER + 'match from socket tag LOCAL for domain "tagged.test" action "mb"\n'
             'match from any for domain "tagged.test" reject\n')
    d = make_daemon(rules=rules, extra="listen on socket tag LOCAL mask-src", mail_owner="smtpdtest1")
    r = d.sendmail(["-f", SENDER, "alice@tagged.test"], b"Subject: local\n\nhi\n")
    assert r.returncode == 0, (r.stdout, r.stderr, d.log()[-2000:])
    data = d.wait_messages(1)[0].data
    assert data.startswith(b"Received: by "), data[:200]


# ------------------------------------------------------------------ regex

def test_regex_conditions(make_daemon):
    rules = ('table pats { "^CAROL\\\\+", "^(alice|bob)\\\\+[a-z]+@example\\\\.org$" }\n'
             'action "virt" maildir "{MAILDIR}/%{user.username}" '
             'virtual { "@example.org" = root, "@sub42.example.org" = root }\n'
             'match from any mail-from regex "(?i)@SPAM\\\\.example$" for any reject\n'
             'match from any for rcpt-to regex <pats> action "virt"\n'
             'match from any for domain regex "^sub[0-9]+\\\\.example\\\\.org$" action "virt"\n')
    d = make_daemon(rules=rules)
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<%s>" % SENDER, 250)
        c.expect("RCPT TO:<alice+lists@example.org>", 250)
        c.expect("RCPT TO:<CAROL+x@example.org>", 250)
        # The table's keys are compared as written: "^CAROL" is not "^carol".
        c.expect("RCPT TO:<carol+x@example.org>", 550, "5.7.1")
        c.expect("RCPT TO:<alice+lists@example.org.evil>", 550, "5.7.1")
        c.expect("RCPT TO:<x@sub42.example.org>", 250)
        c.expect("RSET", 250)
        c.expect("MAIL FROM:<x@spam.EXAMPLE>", 250)
        c.expect("RCPT TO:<alice+lists@example.org>", 550, "5.7.1")
        c.until_quit()


# ------------------------------------------------------------------ queue encryption

def test_queue_encryption_seals_the_spool_and_delivers(make_daemon, user1):
    needs_root()
    d = make_daemon(rules=DELIVER + 'match from any for domain "example.test" action "mb"\n',
                    extra="queue encryption %s" % KEY, mail_owner="smtpdtest1")
    marker = b"the secret plaintext of this message"
    body = b"Subject: sealed\r\n\r\n" + (marker + b"\r\n") * 3000
    msgid = send(d, ["alice@example.test"], body)
    files = spool_files(d)
    assert len(files) == 1
    raw = files[0].read_bytes()
    assert marker not in raw and b"Subject: sealed" not in raw
    assert raw.startswith(b"\0SMTPDQE")
    # The envelopes stay readable; smtpctl shows the message decrypted.
    assert b"alice@example.test" in raw
    code, out, err = d.smtpctl("show", "message", msgid)
    assert code == 0, (out, err)
    assert out.startswith("Received: ") and out.count(marker.decode()) == 3000
    code, out, err = d.smtpctl("resume", "mda")
    assert code == 0, (out, err)
    got = d.wait_mailbox("alice")
    assert len(got) == 1, d.log()[-2000:]
    assert got[0][1].count(marker) == 3000 and b"Subject: sealed" in got[0][1]
    assert d.wait_queue_empty(10)


def test_queue_encryption_with_end_of_message_edits(make_daemon):
    """A message that a filter marked as junk is written again with its X-Spam header:
    read back decrypted, written sealed."""
    d = make_daemon(extra='queue encryption %s\nfilter "j" phase connect match src 127.0.0.1 junk'
                    % KEY, listen_opts='filter "j"')
    msgid = send(d, ["root@example.test"], b"Subject: junk\r\n\r\nspam body\r\n")
    raw = spool_files(d)[0].read_bytes()
    assert b"spam body" not in raw and b"X-Spam" not in raw
    code, out, err = d.smtpctl("show", "message", msgid)
    assert code == 0, (out, err)
    assert "X-Spam: Yes" in out and out.endswith("Subject: junk\n\nspam body\n"), out


def test_queue_key_from_stdin_and_a_bounce_sealed_too(make_daemon, user1, tmp_path):
    needs_root()
    keyfile = tmp_path / "queue.key"
    keyfile.write_text(KEY + "\n")

    def stdin_key(argv):
        return ["/bin/sh", "-c", 'exec "$0" "$@" < "%s"' % keyfile] + argv

    rules = (DELIVER + 'action "fail" mda "exit 64" user smtpdtest1\n'
             'match from any for domain "fail.test" action "fail"\n'
             'match from any for domain "example.test" action "mb"\n')
    d = make_daemon(rules=rules, extra="queue encryption stdin", wrapper=stdin_key,
                    methods=("mda",), mail_owner="smtpdtest1")
    msgid = send(d, ["x@fail.test"], b"Subject: to bounce\r\n\r\nreturned content\r\n")
    code, out, err = d.smtpctl("show", "message", msgid)
    assert code == 0 and "returned content" in out, (out, err)
    d.smtpctl("resume", "mda")
    # The bounce is written sealed, read back sealed and delivered in clear.
    got = d.wait_mailbox("sender", 1, 15)
    assert got, d.log()[-3000:]
    assert b"returned content" in got[0][1]
    assert b"Subject: to bounce" in got[0][1]


# ------------------------------------------------------------------ mda wrapper

def test_mda_wrapper_and_single_quoted_specifiers(make_daemon, user1):
    needs_root()
    d = make_daemon(start=False, deliver=True, methods=("mda",), mail_owner="smtpdtest1")
    out = d.dir / "out"
    out.mkdir()
    shutil.chown(out, "smtpdtest1")
    d.rules = (
        'mda wrapper "mark" "touch %s/wrapped-%%{sender.user:lowercase}; %%{mda}"\n'
        'action "m" mda "cat > \'%s/%%{sender.user:lowercase}.msg\'" wrapper "mark" user smtpdtest1\n'
        'match from any for domain "mda.test" action "m"\n' % (out, out))
    d.start()
    send(d, ["bob@mda.test"], b"Subject: wrapped\r\n\r\nbody\r\n", sender="Carol@x.test")
    # A quote in the value cannot end the single-quoted part: it is sanitized.
    send(d, ["bob@mda.test"], b"Subject: quoted\r\n\r\nbody\r\n", sender="o'neil@x.test")
    assert wait_until(lambda: (out / "carol.msg").exists() and (out / "o:neil.msg").exists(), 15), \
        (sorted(p.name for p in out.iterdir()), d.log()[-3000:])
    assert (out / "wrapped-carol").exists() and (out / "wrapped-o:neil").exists()
    assert b"Subject: wrapped" in (out / "carol.msg").read_bytes()
    assert b"Subject: quoted" in (out / "o:neil.msg").read_bytes()


# ------------------------------------------------------------------ SRS

def test_srs_rewrites_forwarded_mail_and_takes_bounces_back(make_daemon, user1):
    needs_root()
    with Receiver() as rx:
        # The spool is sealed too: the relay client reads the messages decrypted.
        rules = ('srs key "regress-key"\nqueue encryption %s\n' % KEY +
                 'table fwd { "fwd@example.test" = "dest@relay.test" }\n'
                 'action "fwd" maildir "{MAILDIR}/%%{dest.user}" virtual <fwd> user smtpdtest1\n'
                 'action "out" relay host "smtp://127.0.0.1:%d" srs\n'
                 'match from any for domain "example.test" action "fwd"\n'
                 'match from any for domain "relay.test" action "out"\n'
                 'match from local for any action "out"\n' % rx.port)
        d = make_daemon(rules=rules, deliver=True, mail_owner="smtpdtest1")
        send(d, ["fwd@example.test"], sender="alice@origin.test")
        send(d, ["direct@relay.test"], sender="bob@origin.test")
        msgs = rx.wait_messages(2, 15)
        assert len(msgs) == 2, d.log()[-3000:]
        assert all(b"Subject: grammar" in m["data"] for m in msgs)
        by_rcpt = {re.match(r"RCPT TO:<([^>]*)>", m["rcpts"][0]).group(1): m for m in msgs}
        fwd = by_rcpt["dest@relay.test"]["mail"]
        m = re.match(r"MAIL FROM:<(SRS0=[A-Za-z0-9+/]{4}=[A-Z2-7]{2}=origin\.test=alice@example\.test)>",
                     fwd)
        assert m, fwd
        srs = m.group(1)
        # Mail that was not forwarded keeps its sender.
        assert by_rcpt["direct@relay.test"]["mail"].startswith("MAIL FROM:<bob@origin.test>")
        # A bounce to the rewritten address goes back to the original sender; a forged
        # one is refused.
        forged = "SRS0=AAAA" + srs[9:]
        with d.client() as c:
            c.ehlo()
            c.expect("MAIL FROM:<>", 250)
            c.expect("RCPT TO:<%s>" % forged, 550)
            c.expect("RCPT TO:<%s>" % srs, 250)
            c.expect("DATA", 354)
            c.send(b"Subject: bounce\r\n\r\nreturned\r\n.\r\n")
            accepted_id(c.reply())
            c.until_quit()
        msgs = rx.wait_messages(3, 15)
        assert len(msgs) == 3, d.log()[-3000:]
        assert msgs[2]["mail"].startswith("MAIL FROM:<>")
        assert [r.split(" ")[1] for r in msgs[2]["rcpts"]] == ["TO:<alice@origin.test>"]


# ------------------------------------------------------------------ smtp ciphers

@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl(1)")
def test_smtp_ciphers_is_the_listeners_default(make_daemon, tmp_path):
    pki = Pki(tmp_path / "pki")
    d = make_daemon(listen_opts="tls pki mx.test.example",
                    extra=pki.config() + 'smtp ciphers "ECDHE-ECDSA-AES128-GCM-SHA256"')

    def handshake(cipher):
        p = subprocess.run(["openssl", "s_client", "-no_ign_eof", "-connect", "127.0.0.1:%d" % d.port,
                            "-starttls", "smtp", "-tls1_2", "-cipher", cipher],
                           input=b"QUIT\r\n", capture_output=True, timeout=20)
        return (p.stdout + p.stderr).decode("utf-8", "replace")

    assert "Cipher is ECDHE-ECDSA-AES128-GCM-SHA256" in handshake("ECDHE-ECDSA-AES128-GCM-SHA256")
    out = handshake("ECDHE-ECDSA-AES256-GCM-SHA384")
    assert "Cipher is ECDHE-ECDSA-AES256-GCM-SHA384" not in out
    assert "Cipher is (NONE)" in out or "alert" in out or "handshake failure" in out, out
