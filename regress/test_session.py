"""Session basics: greeting, EHLO/HELO, the transaction commands, parameters, errors.

Replies are checked by code and enhanced status code (src/smtp/reply.rs).
"""

import smtplib
import subprocess

import pytest

from conftest import HOSTNAME, accepted_id, data_of, norm_dest


def test_greeting_and_quit(daemon):
    with daemon.client() as c:
        g = c.reply()
        assert g.code == 220
        assert g.lines == ["220 %s ESMTP smtpd" % HOSTNAME]
        r = c.cmd("QUIT")
        assert r.is_(221, "2.0.0"), r
        assert c.wait_closed(5), "connection still open after 221"


def test_ehlo_lists_extensions(daemon):
    with daemon.client() as c:
        r = c.ehlo("client.test")
        assert r.lines[0] == "250-%s Hello client.test [127.0.0.1], pleased to meet you" % HOSTNAME
        keywords = [l[4:] for l in r.lines[1:]]
        for ext in ["8BITMIME", "ENHANCEDSTATUSCODES", "DSN", "PIPELINING", "SMTPUTF8", "CHUNKING",
                    "BINARYMIME", "HELP"]:
            assert ext in keywords, (ext, r)
        sizes = [k for k in keywords if k.startswith("SIZE ")]
        assert sizes == ["SIZE 36700160"], r  # default max-message-size 35M
        # Not offered: so the client must not use them.
        for ext in ["STARTTLS", "AUTH", "REQUIRETLS"]:
            assert not any(k.split(" ")[0] == ext for k in keywords), (ext, r)
        # Continuation lines use "-", the last " ".
        assert all(l[3] == "-" for l in r.lines[:-1]) and r.lines[-1][3] == " "


def test_ehlo_size_follows_config(make_daemon):
    d = make_daemon(extra="smtp max-message-size 10k")
    with d.client() as c:
        r = c.ehlo()
        assert "250-SIZE 10240" in r.lines or "250 SIZE 10240" in r.lines, r


def test_helo_has_no_extensions(daemon):
    with daemon.client() as c:
        c.greeting()
        r = c.cmd("HELO client.test")
        assert r.lines == ["250 %s Hello client.test [127.0.0.1], pleased to meet you" % HOSTNAME], r


@pytest.mark.parametrize("line", ["HELO", "EHLO", "EHLO   ", "EHLO a<b>"])
def test_helo_syntax(daemon, line):
    with daemon.client() as c:
        c.greeting()
        c.expect(line, 501, "5.5.4")


def test_full_transaction_with_parameters(daemon):
    with daemon.client() as c:
        c.ehlo("client.test")
        c.expect("MAIL FROM:<sender@origin.example> SIZE=100 BODY=8BITMIME RET=HDRS ENVID=abc+2Bdef", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.test", 250, "2.1.5")
        c.expect("RCPT TO:<carol@example.test> NOTIFY=NEVER", 250, "2.1.5")
        c.expect("RCPT TO:<dave@example.test>", 250, "2.1.5")
        r = c.cmd("DATA")
        assert r.is_(354), r
        assert r.lines == ["354 End data with <CR><LF>.<CR><LF>"]
        c.send(data_of(["Subject: params", "", "hello"]) + b".\r\n")
        msgid = accepted_id(c.reply())
        c.expect("QUIT", 221, "2.0.0")
    msgs = daemon.wait_messages(1)
    assert [m.msgid for m in msgs] == [msgid]
    m = msgs[0]
    assert m.body() == b"Subject: params\n\nhello\n"
    envs = {e["rcpt"]: e for e in m.envelopes}
    assert sorted(envs) == ["bob@example.test", "carol@example.test", "dave@example.test"]
    bob = envs["bob@example.test"]
    assert bob["sender"] == "sender@origin.example"
    assert norm_dest(bob["dest"]) == "root" and bob["action"] == "virt"
    assert bob["helo"] == "client.test" and bob["client"] == "127.0.0.1"
    assert bob["hostname"] == HOSTNAME
    assert bob["body"] == "8bitmime"
    assert bob["dsn-ret"] == "HDRS"
    assert bob["dsn-envid"] == "abc+2Bdef"
    assert bob["dsn-notify"] == "3"  # SUCCESS|FAILURE
    assert bob["dsn-orcpt"] == "rfc822;bob@example.test"
    assert envs["carol@example.test"]["dsn-notify"] == "8"  # NEVER
    assert envs["carol@example.test"]["dsn-orcpt"] == ""
    dave = envs["dave@example.test"]
    assert dave["dsn-notify"] == "0" and dave["dsn-orcpt"] == ""
    # One envelope per recipient, each with a distinct id.
    assert len({e["evpid"] for e in m.envelopes}) == 3


def test_defaults_in_envelope(daemon):
    with daemon.client() as c:
        c.ehlo()
        msgid = c.send_message("", ["x@example.test"], data_of(["Subject: bounce", "", "b"]))
    (m,) = daemon.wait_messages(1)
    assert m.msgid == msgid
    (e,) = m.envelopes
    assert e["sender"] == ""  # null reverse-path <>
    assert e["body"] == "7bit" and e["dsn-ret"] == "" and e["dsn-envid"] == ""
    assert e["retry"] == "0" and e["last-try"] == "0" and e["errorline"] == ""


def test_rset_noop_help(daemon):
    with daemon.client() as c:
        c.ehlo()
        c.expect("NOOP", 250, "2.0.0")
        c.expect("NOOP anything at all", 250, "2.0.0")
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("RSET", 250, "2.0.0")
        # RSET dropped the transaction.
        c.expect("RCPT TO:<bob@example.test>", 503, "5.5.1")
        c.expect("DATA", 503, "5.5.1")
        r = c.cmd("HELP")
        assert r.code == 214 and r.esc == "2.0.0", r
        c.expect("RSET extra", 501, "5.5.4")
        c.expect("QUIT now", 501, "5.5.4")
        c.expect("QUIT", 221, "2.0.0")
    assert daemon.messages() == []


def test_vrfy_expn_not_implemented(daemon):
    with daemon.client() as c:
        c.ehlo()
        c.expect("VRFY root", 502, "5.5.1")
        c.expect("EXPN staff", 502, "5.5.1")


@pytest.mark.parametrize("line", ["BOGUS", "MAILFROM:<a@b.example>", "STARTTLS", ""])
def test_unknown_command(daemon, line):
    with daemon.client() as c:
        c.ehlo()
        c.expect(line, 500, "5.5.2")
        c.expect("NOOP", 250, "2.0.0")


def test_auth_on_a_listener_without_it(daemon):
    """AUTH is known (RFC 4954), but this listener does not offer it (test_auth.py)."""
    with daemon.client() as c:
        c.ehlo()
        c.expect("AUTH PLAIN AGVAZQ==", 503, "5.5.1")
        c.expect("NOOP", 250, "2.0.0")


def test_bad_sequence(daemon):
    with daemon.client() as c:
        c.greeting()
        c.expect("MAIL FROM:<a@origin.example>", 503, "5.5.1")  # before HELO
        c.expect("RCPT TO:<bob@example.test>", 503, "5.5.1")
        c.expect("DATA", 503, "5.5.1")
        c.expect("EHLO client.test", 250)
        c.expect("RCPT TO:<bob@example.test>", 503, "5.5.1")  # before MAIL
        c.expect("DATA", 503, "5.5.1")  # before MAIL
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("DATA", 503, "5.5.1")  # before RCPT
        c.expect("MAIL FROM:<a@origin.example>", 503, "5.5.1")  # nested
        # A refused recipient does not count for DATA.
        c.expect("RCPT TO:<x@foreign.example>", 550, "5.7.1")
        c.expect("DATA", 503, "5.5.1")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("DATA", 354)
        c.send(b"x\r\n.\r\n")
        accepted_id(c.reply())


def test_ehlo_resets_transaction(daemon):
    with daemon.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")
        c.expect("EHLO again.test", 250)
        c.expect("DATA", 503, "5.5.1")
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")


@pytest.mark.parametrize("addr", ["<;cmd;>", "<;sleep 66;>", "<a>", "<@>", "<a@>", "<@b.example>",
                                  "<a b@c.example>", "<a@b..example>", "<a@-b.example>",
                                  "<a@[300.1.1.1]>"])
def test_bad_sender_syntax(daemon, addr):
    with daemon.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:" + addr, 553, "5.1.7")
        # The session goes on.
        c.expect("MAIL FROM:<ok@origin.example>", 250, "2.1.0")


@pytest.mark.parametrize("line", ["MAIL FROM:a@b.example", "MAIL TO:<a@b.example>", "MAIL", "MAIL FROM:",
                                  "MAIL FROM:<\"unterminated@b.example>"])
def test_mail_syntax(daemon, line):
    with daemon.client() as c:
        c.ehlo()
        c.expect(line, 501, "5.5.4")


def test_long_local_part_refused(daemon):
    with daemon.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<%s@origin.example>" % ("a" * 65), 553, "5.1.7")
        c.expect("MAIL FROM:<%s@origin.example>" % ("a" * 64), 250, "2.1.0")


@pytest.mark.parametrize("addr", ["<>", "<;cmd;>", "<a>", "<@>", "<a b@example.test>", "<x@exa mple.test>",
                                  "<a@example..test>"])
def test_bad_rcpt_syntax(daemon, addr):
    with daemon.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:" + addr, 553, "5.1.3")
        c.expect("RCPT TO:<bob@example.test>", 250, "2.1.5")


@pytest.mark.parametrize("params", ["FOO=bar", "SIZE=abc", "BODY=9BIT", "RET=ALL", "ENVID=a=b",
                                    "SMTPUTF8=yes", "SMTPUTF8 SMTPUTF8", "BODY=BINARY",
                                    "SIZE=10 SIZE=10"])
def test_unknown_mail_param(daemon, params):
    with daemon.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example> " + params, 555, "5.5.4")
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")


@pytest.mark.parametrize("params", ["FOO=1", "NOTIFY=SOMETIMES", "NOTIFY=NEVER,SUCCESS", "ORCPT=nosemicolon"])
def test_unknown_rcpt_param(daemon, params):
    with daemon.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test> " + params, 555, "5.5.4")


def test_smtputf8_taken(daemon):
    """SMTPUTF8 is offered (test_smtputf8.py): the parameter is taken, and a UTF-8
    address needs it."""
    with daemon.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<j\u00f6rg@origin.example>", 553, "5.6.7")
        c.expect("MAIL FROM:<j\u00f6rg@origin.example> SMTPUTF8", 250, "2.1.0")


def test_parameters_need_ehlo(daemon):
    with daemon.client() as c:
        c.helo()
        c.expect("MAIL FROM:<a@origin.example> BODY=8BITMIME", 555, "5.5.4")
        c.expect("MAIL FROM:<a@origin.example>", 250, "2.1.0")
        c.expect("RCPT TO:<bob@example.test> NOTIFY=NEVER", 555, "5.5.4")


def test_too_many_errors_default(daemon):
    """max-errors defaults to 20: the 20th failed command gets its reply, then 421."""
    with daemon.client() as c:
        c.ehlo()
        for i in range(19):
            c.expect("BOGUS%d" % i, 500, "5.5.2")
        c.expect("BOGUS", 500, "5.5.2")
        r = c.reply()
        assert r.is_(421, "4.7.0"), r
        assert c.wait_closed(5), "session not closed after 421"


def test_smtplib_send(daemon):
    s = smtplib.SMTP("127.0.0.1", daemon.port, local_hostname="pyclient.test", timeout=10)
    try:
        code, _ = s.ehlo()
        assert code == 250
        assert s.has_extn("pipelining") and s.has_extn("size") and s.has_extn("dsn")
        refused = s.sendmail("py@origin.example", ["one@example.test", "two@example.test"],
                             b"Subject: smtplib\r\n\r\n.leading dot\r\nbody\r\n")
        assert refused == {}
    finally:
        s.quit()
    (m,) = daemon.wait_messages(1)
    assert m.body() == b"Subject: smtplib\n\n.leading dot\nbody\n"
    assert sorted(e["rcpt"] for e in m.envelopes) == ["one@example.test", "two@example.test"]
    assert all(e["helo"] == "pyclient.test" for e in m.envelopes)


def test_smtplib_refused_recipient(daemon):
    s = smtplib.SMTP("127.0.0.1", daemon.port, timeout=10)
    try:
        refused = s.sendmail("py@origin.example", ["ok@example.test", "x@foreign.example"], b"Subject: r\r\n\r\nx\r\n")
        assert list(refused) == ["x@foreign.example"]
        assert refused["x@foreign.example"][0] == 550
    finally:
        s.quit()
    (m,) = daemon.wait_messages(1)
    assert [e["rcpt"] for e in m.envelopes] == ["ok@example.test"]


@pytest.mark.parametrize("pipeline", [False, True])
def test_swaks_send(daemon, pipeline):
    argv = ["swaks", "--server", "127.0.0.1", "--port", str(daemon.port), "--from", "swaks@origin.example",
            "--to", "bob@example.test", "--helo", "swaks.test", "--header", "Subject: swaks test",
            "--body", "swaks body line", "--timeout", "10"]
    if pipeline:
        argv.append("--pipeline")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 2.0.0" in r.stdout
    (m,) = daemon.wait_messages(1)
    assert b"Subject: swaks test" in m.data
    assert b"swaks body line" in m.data
    (e,) = m.envelopes
    assert e["sender"] == "swaks@origin.example" and e["rcpt"] == "bob@example.test" and e["helo"] == "swaks.test"


def test_ipv6_listener(make_daemon):
    d = make_daemon(listen_host="::1")
    with d.client() as c:
        r = c.ehlo("v6.test")
        assert r.lines[0] == "250-%s Hello v6.test [::1], pleased to meet you" % HOSTNAME
        msgid = c.send_message("a@origin.example", ["bob@example.test"], b"v6\r\n")
    (m,) = d.wait_messages(1)
    assert m.msgid == msgid
    assert m.envelopes[0]["client"] == "::1"
    assert m.text.startswith("Received: from v6.test (unknown [::1])")


def test_address_literal_helo(daemon):
    with daemon.client() as c:
        c.greeting()
        c.expect("EHLO [127.0.0.1]", 250)
        c.expect("HELO [IPv6:::1]", 250)


def test_verbs_and_keywords_case_insensitive(daemon):
    with daemon.client() as c:
        c.greeting()
        c.expect("ehlo lower.test", 250)
        c.expect("mail from:<a@origin.example> size=10 body=8bitmime", 250, "2.1.0")
        c.expect("Rcpt To:<Bob@Example.TEST> notify=never", 250, "2.1.5")
        c.expect("rcpt to: <carol@example.test>", 250, "2.1.5")  # space after the colon
        c.expect("data", 354)
        c.send(b"x\r\n.\r\n")
        msgid = accepted_id(c.reply())
        c.expect("quit", 221, "2.0.0")
    (m,) = daemon.wait_messages(1)
    assert m.msgid == msgid
    assert sorted(e["rcpt"].lower() for e in m.envelopes) == ["bob@example.test", "carol@example.test"]
