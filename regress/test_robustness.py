"""A bug in one session's handling (a panic, made on request in debug builds through
SMTPD_REGRESS_PANIC) ends that session with a 421 and leaves the daemon and the other
sessions running."""

import re
import time

from conftest import accepted_id, smtpd_bin


def test_a_panicking_session_gets_421_and_the_others_go_on(make_daemon, monkeypatch):
    monkeypatch.setenv("SMTPD_REGRESS_PANIC", "XPANIC now")
    d = make_daemon()
    with d.client() as other:
        other.ehlo()
        other.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        with d.client() as c:
            c.ehlo()
            c.expect("MAIL FROM:<b@origin.example>", 250, "2.1.0")
            r = c.cmd("XPANIC now")
            assert r.is_(421, "4.3.0"), r
            assert c.wait_closed(5)
        # The other session, open all along, completes its transaction.
        other.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        other.expect("DATA", 354)
        other.send(b"Subject: still here\r\n\r\nhello\r\n.\r\n")
        msgid = accepted_id(other.reply())
    # New sessions are served, and the panic was logged with its place in the code.
    with d.client() as c:
        c.ehlo()
        c.expect("NOOP", 250, "2.0.0")
    assert [m.msgid for m in d.wait_messages(1)] == [msgid]
    time.sleep(0.2)
    assert d.incoming() == []
    log = d.log()
    assert re.search(r"smtpd: bug: .*src/smtp/conn\.rs", log), log[-2000:]
    assert re.search(r"[0-9a-f]{16} smtp disconnected reason=internal-error", log), log[-2000:]
    assert d.proc.poll() is None
    assert smtpd_bin()
