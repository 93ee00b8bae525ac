"""Report events for observing filters (smtpd-filters(7) "REPORT EVENTS"): the PROTOCOL
report carries every command line and reply, but never the credentials of SMTP AUTH:
what follows the mechanism of an AUTH command is replaced by "(hidden)".

The filter is regress/filterlib.py, registered for reports only; it writes each report
on its standard error, which the daemon logs as `filter NAME: SESSION EVENT ...`.
"""

from test_filters import (fbase, fbin, fx, filter_lines, session_of,  # noqa: F401
                          wait_filter_line)

# PLAIN's initial response for alice / "secret": \0alice\0secret in base64.
PLAIN = "AGFsaWNlAHNlY3JldA=="


def test_protocol_report_hides_auth_credentials(fx):
    spec = {"hooks": [], "reports": ["protocol", "disconnect"]}
    d = fx(fx.py("obs", spec), "obs")
    with d.client() as c:
        c.ehlo("client.test")
        sid = session_of(d, c)
        c.cmd("AUTH PLAIN " + PLAIN)
        c.cmd("auth login YWxpY2U=")
        c.cmd("AUTH LOGIN")
        c.expect("NOOP", 250)
        c.until_quit()
    wait_filter_line(d, "obs", sid, "disconnect")
    seen = filter_lines(d, "obs", sid)
    client = [l[len("protocol < "):] for l in seen if l.startswith("protocol < ")]
    assert client == ["EHLO client.test", "AUTH PLAIN (hidden)", "auth login (hidden)",
                      "AUTH LOGIN", "NOOP", "QUIT"], seen
    # Every reply was reported, and no credential anywhere.
    assert sum(l.startswith("protocol > ") for l in seen) == 7, seen  # with the greeting
    assert not any(PLAIN in l or "YWxpY2U=" in l for l in seen), seen
    assert PLAIN not in "\n".join(filter_lines(d, "obs")), d.log()[-3000:]
