"""Prints every event on standard error, in the format of the Rust filter-trace."""
import sys

import filter


def out(session, text):
    # Like Rust's String::from_utf8_lossy: invalid bytes become U+FFFD.
    raw = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    sys.stderr.buffer.write(("%016x %s\n" % (session, raw)).encode("utf-8"))
    sys.stderr.flush()


def on_connect(s, local, remote, hostname):
    out(s, "connect local=%s remote=%s hostname=%s" % (local, remote, hostname))


def on_helo(s, helo):
    out(s, "helo " + helo)


def on_ehlo(s, helo):
    out(s, "ehlo " + helo)


def on_auth(s, mechanism, user):
    out(s, "auth mechanism=%s user=%s" % (mechanism, user))


def on_mail(s, mail):
    out(s, "mail <%s>" % mail)


def on_rcpt(s, rcpt):
    out(s, "rcpt <%s>" % rcpt)


def on_data(s):
    out(s, "data")


def on_dataline(s, line):
    out(s, "data-line " + line)
    filter.writeln(s, line)


def on_eom(s, size):
    out(s, "eom size=%d" % size)


def on_commit(s, msgid):
    out(s, "commit " + msgid)


def on_rollback(s):
    out(s, "rollback")


def on_disconnect(s):
    out(s, "disconnect")


def on_tls(s, version, cipher, bits, sni, subject):
    out(s, "tls version=%s cipher=%s bits=%d sni=%s subject=%s"
        % (version, cipher, bits, sni, subject))


def on_auth_result(s, mechanism, user, result):
    out(s, "auth-result mechanism=%s user=%s result=%s" % (mechanism, user, result))
