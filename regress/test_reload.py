"""Live reload: SIGHUP to the parent, or `smtpctl reload`, reads smtpd.conf again.

1. Under smtp-source load a rule changes: new sessions follow the new rule, a session
   opened before keeps the old one, every acknowledged message is in the spool, no
   session ends but by QUIT, and smtpd_config_reloads_total says 1.
2. A broken configuration keeps the one in force (the log names file:line);
   `smtpctl reload` prints the error and fails, then succeeds once it is fixed.
3. Listeners added, removed and changed; a port that cannot be bound fails the reload.
4. Filter processes: unchanged ones keep running, one whose command changed is
   restarted, a removed one stops.
5. Tables are read again.
6. A renewed certificate whose key only root can read is served after the reload.
7. A table process kept as it was keeps answering (the same process); one whose
   command changed is replaced, the old one stops.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import HOSTNAME, SMTPRaw, descendants, filter_dir, wait_until

RULES = """
table vusers { "@bench.test" = root, "@example.test" = root, "@new.test" = root }
action "bench" maildir "{MAILDIR}/%{user.username}" virtual <vusers>
match from any for domain { bench.test, example.test } action "bench"
"""

NEW_RULES = RULES + 'match from any for domain "new.test" action "bench"\n'

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"


def reload(d):
    """SIGHUP to the parent."""
    os.kill(d.pid, signal.SIGHUP)


def reloads(d):
    return len(re.findall(r"smtpd: configuration reloaded from ", d.log()))


def wait_reloaded(d, n, timeout=15.0):
    """Waits until the engine logged reload number `n`."""
    assert wait_until(lambda: reloads(d) >= n, timeout), d.log()[-3000:]


def rcpt_code(port, rcpt, host="127.0.0.1"):
    with SMTPRaw(port, host=host) as c:
        c.ehlo()
        assert c.cmd("MAIL FROM:<a@bench.test>").code == 250
        code = c.cmd("RCPT TO:<%s>" % rcpt).code
        c.cmd("QUIT")
        return code


def metric(d, name):
    rc, out, err = d.smtpctl("show", "metrics")
    assert rc == 0, err
    m = re.search(r"^%s (\d+)$" % re.escape(name), out, re.M)
    return int(m.group(1)) if m else None


def test_rule_changes_under_load(make_daemon):
    if not os.access(SMTP_SOURCE, os.X_OK):
        pytest.skip("smtp-source not installed (Debian package: postfix)")
    d = make_daemon(rules=RULES, extra="smtp limit max-mails 100000")
    assert rcpt_code(d.port, "x@new.test") == 550
    old = SMTPRaw(d.port)
    old.ehlo("old.test")
    n = 3000
    load = subprocess.Popen([SMTP_SOURCE, "-s", "10", "-m", str(n), "-l", "1024",
                             "-f", "a@bench.test", "-t", "u@bench.test",
                             "127.0.0.1:%d" % d.port],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Midway through the load.
        assert wait_until(lambda: len(d.messages()) >= 300, 60)
        d.rules = NEW_RULES
        d.write_config()
        reload(d)
        wait_reloaded(d, 1)
        # New sessions see the new rule, while the load goes on.
        assert rcpt_code(d.port, "x@new.test") == 250
        out, _ = load.communicate(timeout=300)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait()
    assert load.returncode == 0, out
    # The session opened before the reload keeps the rules it started with.
    assert old.cmd("MAIL FROM:<a@bench.test>").code == 250
    assert old.cmd("RCPT TO:<y@new.test>").code == 550
    assert old.cmd("RCPT TO:<y@bench.test>").code == 250
    assert old.cmd("QUIT").code == 221
    old.close()
    # Every message smtp-source sent was acknowledged and is in the spool.
    assert wait_until(lambda: len(d.messages()) == n, 30), len(d.messages())
    ends = re.findall(r"smtp disconnected reason=(\S+)", d.log())
    assert ends and set(ends) == {"quit"}, sorted(set(ends))
    assert metric(d, "smtpd_config_reloads_total") == 1
    assert metric(d, "smtpd_config_reload_failures_total") == 0
    assert d.stop() == 0


def test_broken_config_keeps_the_old_one(make_daemon):
    d = make_daemon(rules=RULES)
    good = d.conf.read_text()
    d.conf.write_text(good + "match from any for domain new.test action \"nosuch\"\n")
    line = len(good.splitlines()) + 1
    reload(d)
    assert d.wait_log(r"reload failed, the configuration in force is kept: %s:%d: "
                      % (re.escape(str(d.conf)), line), 10)
    # Still served, by the old rules.
    assert rcpt_code(d.port, "x@bench.test") == 250
    assert rcpt_code(d.port, "x@new.test") == 550
    rc, out, err = d.smtpctl("reload")
    assert rc != 0
    assert "error: " in out and "%s:%d:" % (d.conf, line) in out, out
    d.rules = NEW_RULES
    d.write_config()
    rc, out, err = d.smtpctl("reload")
    assert rc == 0 and "configuration reloaded" in out, out + err
    assert rcpt_code(d.port, "x@new.test") == 250
    # The spool is the daemon's: another one needs a restart.
    good = d.conf.read_text()
    d.conf.write_text(good.replace('queue path "%s"' % d.queue, 'queue path "%s.other"' % d.queue))
    # (smtpctl would look for the control socket in the new spool: the socket itself.)
    out = d.ctl("reload", timeout=10)
    assert out.startswith("error: ") and "queue path changed" in out, out
    d.conf.write_text(good)
    assert metric(d, "smtpd_config_reloads_total") == 1
    assert metric(d, "smtpd_config_reload_failures_total") == 3
    assert d.stop() == 0


def greeting(port):
    with SMTPRaw(port) as c:
        g = c.greeting()
        c.cmd("QUIT")
        return " ".join(g.lines)


def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_listeners_added_removed_changed(make_daemon):
    from conftest import free_port

    d = make_daemon(rules=RULES)
    p2 = free_port()
    assert refused(p2)
    base = d.extra
    d.extra = base + "\nlisten on 127.0.0.1 port %d hostname second.test\n" % p2
    d.write_config()
    rc, out, err = d.smtpctl("reload")
    assert rc == 0, out + err
    assert "second.test" in greeting(p2)
    assert HOSTNAME in greeting(d.port)
    # The first listener changes (its name) and keeps its socket; the second goes.
    d.hostname = "renamed.test"
    d.extra = base
    d.write_config()
    rc, out, err = d.smtpctl("reload")
    assert rc == 0, out + err
    assert "renamed.test" in greeting(d.port)
    assert wait_until(lambda: refused(p2), 5)
    # A port held by another socket: the reload fails, the old configuration stays.
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    busy = holder.getsockname()[1]
    try:
        d.hostname = HOSTNAME
        d.extra = base + "\nlisten on 127.0.0.1 port %d\n" % busy
        d.write_config()
        rc, out, err = d.smtpctl("reload")
        assert rc != 0 and "cannot listen on 127.0.0.1:%d" % busy in out, out + err
        assert "renamed.test" in greeting(d.port)
    finally:
        holder.close()
    assert d.stop() == 0


def child_pids(d, program, marker):
    """Pids of the daemon's processes whose command line names `program` and `marker`."""
    out = []
    for pid in descendants(d.pid):
        try:
            cmd = open("/proc/%d/cmdline" % pid, "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if program in cmd and marker in cmd:
            out.append(pid)
    return out


def filter_pids(d, marker):
    """Pids of the test filters (filterlib.py) whose command line names `marker`."""
    return child_pids(d, "filterlib.py", marker)


def filter_line(tmp_path, where, name, spec):
    line = filter_dir(tmp_path / where, spec)
    return line.replace("filter f ", "filter %s " % name)


def test_filters_restarted_only_when_changed(make_daemon, tmp_path):
    for n in ("a", "b", "b2"):
        (tmp_path / n).mkdir()
    fa = filter_line(tmp_path, "a", "a", {"name": "a"})
    fb = filter_line(tmp_path, "b", "b", {"name": "b"})
    fb2 = filter_line(tmp_path, "b2", "b", {"name": "b", "answers": {
        "rcpt": {"do": "reject", "code": 550, "text": "5.7.1 b2 says no", "when": "no@"}}})
    both = 'filter both chain { a, b }\n'
    d = make_daemon(rules=RULES, extra=fa + fb + both, listen_opts="filter both")
    assert wait_until(lambda: filter_pids(d, "/a/") and filter_pids(d, "/b/"), 10)
    pa, pb = filter_pids(d, "/a/"), filter_pids(d, "/b/")
    assert rcpt_code(d.port, "no@bench.test") == 250
    # The same configuration: nothing restarts.
    rc, out, err = d.smtpctl("reload")
    assert rc == 0, out + err
    time.sleep(1)
    assert filter_pids(d, "/a/") == pa and filter_pids(d, "/b/") == pb
    # b's command changes: b restarts, a stays.
    d.extra = fa + fb2 + both
    d.write_config()
    rc, out, err = d.smtpctl("reload")
    assert rc == 0, out + err
    assert wait_until(lambda: filter_pids(d, "/b2/"), 10)
    assert wait_until(lambda: rcpt_code(d.port, "no@bench.test") == 550, 10)
    assert filter_pids(d, "/a/") == pa
    assert wait_until(lambda: not filter_pids(d, "/b/"), 15), d.log()[-2000:]
    # b removed: it stops; a keeps running.
    d.extra = fa + 'filter both chain { a }\n'
    d.write_config()
    rc, out, err = d.smtpctl("reload")
    assert rc == 0, out + err
    assert wait_until(lambda: not filter_pids(d, "/b2/"), 15), d.log()[-2000:]
    assert d.wait_log(r"filter b stopped", 5)
    assert filter_pids(d, "/a/") == pa
    assert rcpt_code(d.port, "no@bench.test") == 250
    assert d.stop() == 0


def test_tables_read_again(make_daemon, tmp_path):
    users = tmp_path / "vusers"
    users.write_text("@bench.test root\n")
    os.chmod(users, 0o600)
    rules = RULES.replace(
        'table vusers { "@bench.test" = root, "@example.test" = root, "@new.test" = root }',
        'table vusers file:%s' % users).replace("{ bench.test, example.test }",
                                               "{ bench.test, new.test }")
    d = make_daemon(rules=rules)
    assert rcpt_code(d.port, "x@bench.test") == 250
    assert rcpt_code(d.port, "x@new.test") == 550
    users.write_text("@bench.test root\n@new.test root\n")
    reload(d)
    wait_reloaded(d, 1)
    assert rcpt_code(d.port, "x@new.test") == 250
    assert d.stop() == 0


def served_serial(port, ca):
    import ssl

    with SMTPRaw(port) as c:
        c.ehlo()
        assert c.cmd("STARTTLS").code == 220
        s = c.tls(cafile=str(ca), server_hostname=HOSTNAME)
        der = s.getpeercert(binary_form=True)
        assert c.cmd("EHLO client.test").code == 250
        c.cmd("QUIT")
    pem = ssl.DER_cert_to_PEM_cert(der)
    r = subprocess.run(["openssl", "x509", "-noout", "-serial"], input=pem,
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


def test_renewed_root_only_certificate(make_daemon, tmp_path):
    from tlscerts import Pki, make_leaf

    if os.geteuid() != 0:
        pytest.skip("needs root (the engine runs as _smtpd only when started as root)")
    pki = Pki(tmp_path / "pki")
    os.chmod(pki.dir, 0o700)
    os.chmod(pki.mx[1], 0o600)
    d = make_daemon(rules=RULES, extra=pki.config(), listen_opts="tls pki mx.test.example")
    assert d.wait_log(r"engine running as _smtpd", 5)
    first = served_serial(d.port, pki.ca)
    cert, key = make_leaf(pki.dir, "mx2", "/CN=mx.test.example", san="mx.test.example")
    os.chmod(key, 0o600)
    os.replace(cert, pki.mx[0])
    os.replace(key, pki.mx[1])
    reload(d)
    wait_reloaded(d, 1)
    second = served_serial(d.port, pki.ca)
    assert first != second
    assert d.stop() == 0


def table_pids(d, marker):
    """Pids of the table processes (linetable.py) whose command line names `marker`."""
    return child_pids(d, "linetable.py", marker)


def test_table_process_kept_or_replaced(make_daemon, tmp_path):
    import json

    from conftest import REPO, allow_traversal

    if os.geteuid() != 0:
        pytest.skip("needs root (table processes run as _smtpd)")
    lib = tmp_path / "lt"
    lib.mkdir()
    shutil.copy(REPO / "regress" / "linetable.py", lib / "linetable.py")
    data = lib / "data.json"
    data.write_text(json.dumps({"domain": {"bench.test": "bench.test"}}))
    for p in (lib / "linetable.py", data):
        os.chmod(p, 0o644)
    os.chmod(lib, 0o755)
    allow_traversal(lib)
    cmd = "/usr/bin/python3 %s %s" % (lib / "linetable.py", data)
    rules = ('table vdom proc-exec "%s one"\n' % cmd
             + RULES.replace("{ bench.test, example.test }", "<vdom>"))
    d = make_daemon(rules=rules)
    assert rcpt_code(d.port, "x@bench.test") == 250
    assert rcpt_code(d.port, "x@new.test") == 550
    assert rcpt_code(d.port, "x@example.test") == 550
    pid = table_pids(d, " one")
    assert len(pid) == 1
    # Another rule, the table as it was: the same process answers.
    d.rules = rules + 'match from any for domain "new.test" action "bench"\n'
    d.write_config()
    rc, out, err = d.smtpctl("reload")
    assert rc == 0, out + err
    assert rcpt_code(d.port, "x@bench.test") == 250
    assert rcpt_code(d.port, "x@new.test") == 250
    assert table_pids(d, " one") == pid
    # Its command changes: a new process, the old one stops.
    data.write_text(json.dumps({"domain": {"bench.test": "bench.test",
                                           "example.test": "example.test"}}))
    d.rules = d.rules.replace("%s one" % cmd, "%s two" % cmd)
    d.write_config()
    rc, out, err = d.smtpctl("reload")
    assert rc == 0, out + err
    assert wait_until(lambda: len(table_pids(d, " two")) == 1, 10)
    assert wait_until(lambda: rcpt_code(d.port, "x@example.test") == 250, 10)
    assert wait_until(lambda: not table_pids(d, " one"), 15), d.log()[-2000:]
    assert d.wait_log(r"table vdom stopped", 5)
    assert d.stop() == 0
