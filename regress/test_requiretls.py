"""REQUIRETLS (RFC 8689): offered on TLS sessions only and kept with the envelopes;
relayed only over verified TLS to a server that offers it, else returned to the sender
(5.7.30) with the header section only, the message never sent in clear.

The relaying daemon's tests use the scriptable receiver of test_relay_client.py, which
offers no STARTTLS.
"""

import re
import shutil

import pytest

from conftest import SMTPRaw, parse_dsn
from test_relay_client import Receiver, relay_rules
from tlscerts import Pki

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl(1)")

BODY = "Subject: secret\r\nFrom: sender@example.test\r\n\r\nthe secret body\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


def send_requiretls(d, rcpt, sender="sender@example.test"):
    with SMTPRaw(d.port) as c:
        r = c.ehlo()
        assert not any("REQUIRETLS" in l for l in r.lines), r
        # Not offered in clear: the parameter is refused.
        assert c.cmd("MAIL FROM:<%s> REQUIRETLS" % sender).is_(555, "5.7.10")
        c.expect("STARTTLS", 220)
        c.tls()
        r = c.cmd("EHLO client.test")
        assert "250-REQUIRETLS" in r.lines or "250 REQUIRETLS" in r.lines, r
        msgid = c.send_message(sender, [rcpt], BODY, params="REQUIRETLS")
        c.until_quit()
    return msgid


def test_offered_on_tls_and_kept_with_the_envelope(make_daemon, pki):
    d = make_daemon(listen_opts="tls pki mx.test.example", extra=pki.config())
    msgid = send_requiretls(d, "x@example.test")
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    assert m.envelopes[0].get("requiretls") == "1", m.envelopes


def test_relay_without_tls_returns_the_message_unsent(make_daemon, pki, user1):
    with Receiver() as rx:
        d = make_daemon(deliver=True, methods=(), mail_owner="smtpdtest1",
                        rules=relay_rules(rx.port),
                        listen_opts="tls pki mx.test.example", extra=pki.config())
        # The sender is a local mailbox of the daemon: the notice comes back there.
        send_requiretls(d, "r1@relay.test", sender="smtpdtest1@example.test")
        bounce = d.wait_mailbox("smtpdtest1", 1, 20)
        assert bounce, d.log()[-3000:]
        msg, reports, _, returned = parse_dsn(bounce[0][1])
        assert reports[0]["Status"] == "5.7.30", reports
        assert "REQUIRETLS" in reports[0]["Diagnostic-Code"]
        # Only the header section comes back, and the server never saw a MAIL.
        assert returned.get_content_type() == "text/rfc822-headers", returned.get_content_type()
        assert b"the secret body" not in bounce[0][1]
        assert not [c for c in rx.commands if c.upper().startswith("MAIL")], rx.commands
        assert d.wait_log(r"result=PermFail stat=\"550 5\.7\.30 REQUIRETLS: no verified TLS", 15), d.log()[-3000:]
