"""The metrics listener (`metrics` in smtpd.conf) and `smtpctl show metrics`.

1. Scraped while smtp-source sends mail through a filter, every scrape parses with
   Debian's prometheus_client parser; once the load is over the counters agree with
   the daemon's log and its maildirs (messages accepted, deliveries, refused
   recipients, the filter's answers), and `smtpctl show metrics` says the same.
2. HTTP: 404, 405, 400, HEAD; at most 8 clients at once (the ninth is closed at
   once), an idle client closed after 10 seconds, and the listener still serves.
3. The statement: defaults, refusals at `smtpd -n`.
"""

import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import free_port, smtpd_bin, wait_until

parser = pytest.importorskip("prometheus_client.parser")

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
RULES = """
table vusers { "@example.test" = root }
action "virt" maildir "{MAILDIR}/%{user.username}" virtual <vusers>
match from any for domain "example.test" action "virt"
"""

# A filter of OpenSMTPD's text protocol: refuses the recipient refuse@example.test.
FILTER = r'''
import sys
for line in sys.stdin:
    f = line.rstrip("\n").split("|")
    if f[0] == "config" and f[1] == "ready":
        print("register|filter|smtp-in|rcpt-to")
        print("register|ready", flush=True)
    elif f[0] == "filter" and len(f) >= 8:
        sid, token, param = f[5], f[6], "|".join(f[7:])
        answer = "reject|550 5.7.1 Refused here" if param.startswith("refuse@") else "proceed"
        print("filter-result|%s|%s|%s" % (sid, token, answer), flush=True)
'''


def samples(text):
    """{(name, frozenset(labels)): value} of a scrape, which must parse."""
    out = {}
    for fam in parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(smp, name, **labels):
    return smp.get((name, frozenset(labels.items())), 0)


def scrape(port, path="/metrics"):
    with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def metrics_daemon(make_daemon, tmp_path, **kw):
    prog = tmp_path / "filter.py"
    prog.write_text(FILTER)
    os.chmod(prog, 0o644)
    os.chmod(tmp_path, 0o755)
    mport = free_port()
    extra = ('metrics on 127.0.0.1 port %d\nsmtp limit max-mails 100000\n'
             'filter "obs" proc-exec "/usr/bin/python3 %s"\n' % (mport, prog))
    d = make_daemon(rules=RULES, extra=extra, listen_opts="filter obs", deliver=True, **kw)
    assert wait_until(lambda: "filter obs registered" in d.log(), 15), d.log()[-2000:]
    return d, mport


def raw(port, data, wait_close=True):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(data)
    got = b""
    while wait_close:
        b = s.recv(65536)
        if not b:
            break
        got += b
    s.close()
    return got.decode(errors="replace")


def test_scrapes_during_load_agree_with_the_log_and_the_maildirs(make_daemon, tmp_path):
    if not os.access(SMTP_SOURCE, os.X_OK):
        pytest.fail("smtp-source is missing: regress/install installs postfix")
    d, mport = metrics_daemon(make_daemon, tmp_path)
    n = 400
    load = subprocess.Popen([SMTP_SOURCE, "-s", "5", "-m", str(n), "-l", "1024",
                             "-f", "a@example.test", "-t", "bob@example.test",
                             "127.0.0.1:%d" % d.port],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    scrapes = 0
    while load.poll() is None and scrapes < 200:
        smp = samples(scrape(mport))
        assert value(smp, "smtpd_sessions_open") <= 6
        scrapes += 1
        time.sleep(0.05)
    assert load.wait(120) == 0, load.stdout.read()
    assert scrapes >= 1
    # Refused recipients: two by the filter, one unknown domain (no rule).
    with d.client() as c:
        c.ehlo("client.test")
        c.expect("MAIL FROM:<a@example.test>", 250)
        for r in ("refuse@example.test", "refuse@example.test"):
            assert c.cmd("RCPT TO:<%s>" % r).code == 550
        assert c.cmd("RCPT TO:<x@nowhere.test>").code == 550
        c.until_quit()
    maildir = d.maildir / "root" / "new"
    assert wait_until(lambda: maildir.is_dir() and len(os.listdir(maildir)) == n, 60)
    assert wait_until(lambda: value(samples(scrape(mport)), "smtpd_queue_envelopes") == 0, 30)
    smp = samples(scrape(mport))
    assert wait_until(lambda: len(re.findall(r"mda delivery .* result=Ok", d.log())) >= n, 30)
    log = d.log()
    accepted = len(re.findall(r"smtp message msgid=", log))
    assert accepted == n
    assert value(smp, "smtpd_messages_accepted_total") == accepted
    delivered = len(re.findall(r"mda delivery .* result=Ok", log))
    assert delivered == n
    assert value(smp, "smtpd_deliveries_total", method="maildir", result="ok") == delivered
    refused = len(re.findall(r'failed-command command="RCPT TO:<[^"]*" result="550', log))
    assert refused == 3, log[-3000:]
    assert value(smp, "smtpd_replies_refused_total", phase="RCPT", code="550") == refused
    sessions = len(re.findall(r"smtp connected address=", log))
    assert value(smp, "smtpd_sessions_total") == sessions >= 6
    assert value(smp, "smtpd_sessions_open") == 0
    # One question to the filter per recipient, every one answered.
    assert value(smp, "smtpd_filter_answer_seconds_count", filter="obs") == n + 3
    assert value(smp, "smtpd_filter_answer_seconds_bucket", filter="obs", le="+Inf") == n + 3
    assert value(smp, "smtpd_filter_restarts_total", filter="obs") == 0
    assert value(smp, "smtpd_queue_inflight") == 0
    # smtpctl prints the same counters.
    rc, out, err = d.smtpctl("show", "metrics")
    assert rc == 0, err
    ctl = samples(out)
    for name in ("smtpd_messages_accepted_total", "smtpd_sessions_total"):
        assert value(ctl, name) == value(smp, name), name


def test_http_answers_and_client_limits(make_daemon, tmp_path):
    d, mport = metrics_daemon(make_daemon, tmp_path)
    assert raw(mport, b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n").startswith("HTTP/1.1 404")
    assert raw(mport, b"POST /metrics HTTP/1.1\r\n\r\n").startswith("HTTP/1.1 405")
    assert raw(mport, b"HELO there\r\n\r\n").startswith("HTTP/1.1 400")
    head = raw(mport, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert head.startswith("HTTP/1.1 200") and head.endswith("\r\n\r\n"), head
    # A request head that never ends is cut at 8 KiB (9000 octets: all read, so the
    # close comes with no reset).
    long = b"GET /metrics HTTP/1.1\r\n" + b"X" * 8975 + b"\r\n"
    assert len(long) == 9000
    assert raw(mport, long).startswith("HTTP/1.1 400")
    # Eight idle clients take every place: a ninth is closed at once.
    idle = [socket.create_connection(("127.0.0.1", mport), timeout=15) for _ in range(8)]
    time.sleep(0.3)
    extra = socket.create_connection(("127.0.0.1", mport), timeout=5)
    assert extra.recv(100) == b""
    extra.close()
    # The idle ones are closed after 10 seconds; then scrapes work again.
    t0 = time.monotonic()
    for s in idle:
        assert s.recv(100) == b""
        s.close()
    assert time.monotonic() - t0 < 14
    assert "smtpd_sessions_total" in scrape(mport)
    assert "smtpd_sessions_total" in scrape(mport, "/")
    assert "metrics refused a client: too many at once" in d.log()


def test_the_statement(tmp_path):
    def check(text):
        conf = tmp_path / "m.conf"
        conf.write_text('queue path "%s"\nlisten on 127.0.0.1 port 2525\n%s\n'
                        % (tmp_path / "spool", text))
        r = subprocess.run([str(smtpd_bin()), "-n", "-f", str(conf)], capture_output=True,
                           text=True, timeout=30)
        return r.returncode, (r.stdout + r.stderr).strip()
    assert check("metrics")[0] == 0
    assert check("metrics on localhost port 9999")[0] == 0
    assert check("metrics port 9999 on lo")[0] == 0
    rc, out = check("metrics\nmetrics port 2")
    assert rc != 0 and "m.conf:4: metrics: given twice" in out, out
    rc, out = check("metrics port 0")
    assert rc != 0 and "invalid port '0'" in out, out
    rc, out = check("metrics listen on lo")
    assert rc != 0 and "after 'metrics': on ADDRESS or port PORT" in out, out
