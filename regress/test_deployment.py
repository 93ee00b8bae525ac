"""The deployment of smtpd-deploy(7), built in a private network namespace: three
shared-nothing hosts mx1..mx3 (127.0.0.11-13) started from one smtpd.conf with
per-host macros, their users in one PostgreSQL (Debian's opensmtpd-extras
table-postgres), a test DNS server with the MX records of example.test, and haproxy
in front of their PROXY listeners.

1. By MX: an origin smtpd takes 1,500 messages from smtp-source and relays them by MX;
   mx2 is killed with SIGKILL midway and started again on its spool. Every message
   the origin acknowledged is delivered; duplicates stay within the transactions that
   were in flight on mx2 when it died.
2. Through haproxy (`send-proxy-v2`, from its own address 127.0.0.30): 1,500 messages
   from 127.0.0.5; each host sees the client's address (Received, log), and the rule
   that refuses mail from 127.0.0.30 never fires.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import dnstest
import netns
import pgserver
from conftest import Daemon, descendants, ensure_user, smtpd_bin, wait_until

prom = pytest.importorskip("prometheus_client.parser")

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
TABLE_POSTGRES = Path("/usr/libexec/opensmtpd/table-postgres")
HOSTS = {"mx1": "127.0.0.11", "mx2": "127.0.0.12", "mx3": "127.0.0.13"}
USERS = 50

# The one configuration of every host; smtpd -D gives each its address, name, spool
# and maildirs (on real hosts, the same paths on different machines).
CONF = """\
# smtpd.conf of mx1, mx2 and mx3:
#   smtpd -D me=ADDRESS -D name=HOSTNAME -D spool=DIR -D maildir=DIR
queue path $spool
table domains postgres:{pgconf}
table vusers postgres:{pgconf}
table users postgres:{pgconf}
listen on $me port 25 hostname $name
{proxy_listener}
metrics on $me port 9465
action "vmail" maildir $maildir virtual <vusers> userbase <users>
# haproxy's own address: mail that seems to come from it was not given the
# client's address.
match from src 127.0.0.30 for any reject
match from any for domain <domains> action "vmail"
"""

PGCONF = """conninfo host=127.0.0.1 port={port} dbname=postgres user=smtpdtest1
query_domain SELECT domain FROM domains WHERE domain = $1
query_alias SELECT destination FROM virtuals WHERE email = $1
query_userinfo SELECT uid, gid, home FROM users WHERE name = $1
"""


def schema(uid, gid):
    sql = ("CREATE TABLE domains (domain TEXT);\n"
           "CREATE TABLE virtuals (email TEXT, destination TEXT);\n"
           "CREATE TABLE users (name TEXT, uid INTEGER, gid INTEGER, home TEXT);\n"
           "INSERT INTO domains VALUES ('example.test');\n"
           "INSERT INTO users VALUES ('vmail', %d, %d, '/var/empty');\n" % (uid, gid))
    for i in range(USERS):
        sql += "INSERT INTO virtuals VALUES ('user%d@example.test', 'vmail');\n" % i
    return sql


class Host(Daemon):
    """One host: the shared configuration, its own macros."""

    def __init__(self, base, name, addr, shared, wrap, proxy):
        super().__init__(base / name, listen_host=addr, hostname=name + ".example.test",
                         name=name, deliver=True, mail_owner="smtpdtest1")
        self.shared = shared
        self.proxy = proxy
        macros = {"me": addr, "name": self.hostname, "spool": str(self.dir / "spool"),
                  "maildir": str(self.maildir / "vmail")}
        flags = [w for k, v in macros.items() for w in ("-D", "%s=%s" % (k, v))]
        self.wrapper = lambda argv: wrap(argv + flags)

    def write_config(self):
        self.conf = self.shared

    def kill(self):
        """SIGKILL to the whole process tree, as a host that dies."""
        pids = [self.proc.pid] + descendants(self.proc.pid)
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(10)
        for p in pids:
            assert wait_until(lambda: not Path("/proc/%d" % p).exists(), 10)

    def delivered(self):
        """Messages delivered to this host's maildirs: {path: bytes}."""
        out = {}
        for new in self.maildir.glob("vmail/new"):
            for f in new.iterdir():
                out[str(f)] = f.read_bytes()
        return out


def proxy_supported(base):
    conf = base / "probe.conf"
    conf.write_text('queue path "%s"\nlisten on 127.0.0.1 port 2526 proxy-v2\n' % (base / "q"))
    r = subprocess.run([str(smtpd_bin()), "-n", "-f", str(conf)], capture_output=True, text=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = netns.can_run() or dnstest.can_run()
    if why:
        pytest.skip(why)
    for p in (SMTP_SOURCE, HAPROXY, TABLE_POSTGRES):
        if not os.access(p, os.X_OK):
            pytest.fail("%s is missing: regress/install installs it" % p)
    if not pgserver.bindir():
        pytest.fail("PostgreSQL is missing: regress/install installs it")
    base = tmp_path_factory.mktemp("deploy")
    os.chmod(base, 0o755)
    ns = netns.NetNS()
    ns.enter()
    world = dnstest.DnsWorld(base)
    pg = None
    hosts = []
    try:
        records = {("example.test", "MX"): ["10 %s.example.test." % h for h in HOSTS]}
        for h, a in HOSTS.items():
            records[("%s.example.test" % h, "A")] = [a]
        world.server(records)
        pw = ensure_user("smtpdtest1")
        pg = pgserver.PgServer(base / "pg", schema(pw.pw_uid, pw.pw_gid))
        pgconf = base / "postgres.conf"
        pgconf.write_text(PGCONF.format(port=pg.port))
        os.chmod(pgconf, 0o644)
        proxy = proxy_supported(base)
        shared = base / "smtpd.conf"
        shared.write_text(CONF.format(
            pgconf=pgconf,
            proxy_listener="listen on $me port 26 hostname $name proxy-v2" if proxy else ""))
        os.chmod(shared, 0o644)
        for name, addr in HOSTS.items():
            h = Host(base, name, addr, shared, world.wrapper(name), proxy)
            h.start(port=25)
            hosts.append(h)
        origin = world.daemon(
            rules='action "out" relay\nmatch from any for any action "out"\n',
            extra="smtp limit max-mails 100000", deliver=True, hostname="origin.test",
            name="origin")
        yield {"base": base, "hosts": hosts, "origin": origin, "world": world, "proxy": proxy}
    finally:
        for h in hosts:
            h.stop()
        world.close()
        if pg:
            pg.stop()
        ns.close()


def origin_ids(message):
    """The msgid the origin gave a message, from its Received header."""
    m = re.search(rb"by origin\.test \(smtpd\) with E?SMTPS? id ([0-9a-f]{8})", message)
    return m.group(1).decode() if m else None


def test_by_mx_with_a_host_killed_midway(cluster):
    hosts, origin = cluster["hosts"], cluster["origin"]
    n = 1500
    load = subprocess.Popen([SMTP_SOURCE, "-s", "10", "-m", str(n), "-l", "512",
                             "-f", "sender@origin.test", "-t", "user7@example.test",
                             "127.0.0.1:%d" % origin.port],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    mx2 = hosts[1]
    # Midway: mx2 dies while the origin is relaying to it.
    assert wait_until(lambda: len(mx2.delivered()) >= 100 or load.poll() is not None, 60)
    mx2.kill()
    killed_with = len(mx2.delivered())
    assert load.wait(120) == 0, load.stdout.read()
    time.sleep(1)
    mx2.start(port=25)
    acknowledged = set(re.findall(r"smtp message msgid=([0-9a-f]{8})", origin.log()))
    assert len(acknowledged) == n
    # Transactions cut by the kill wait for their retry: now.
    rc, out, err = origin.smtpctl("schedule", "all")
    assert rc == 0, err

    def counts():
        seen = {}
        for h in hosts:
            for data in h.delivered().values():
                i = origin_ids(data)
                if i in acknowledged:
                    seen[i] = seen.get(i, 0) + 1
        return seen
    assert wait_until(lambda: len(counts()) == n, 120), (
        "%d of %d delivered" % (len(counts()), n))
    assert origin.wait_queue_empty(60)
    seen = counts()
    dups = sum(c - 1 for c in seen.values())
    per_host = [len(h.delivered()) for h in hosts]
    print("\nby MX: %d messages, mx2 killed after %d deliveries; per host %s; duplicates %d"
          % (n, killed_with, per_host, dups))
    # A duplicate is a transaction mx2 committed and could not acknowledge: at most one
    # per session the origin had open to it.
    assert dups <= 10, seen
    assert all(c > 0 for c in per_host), per_host
    # The users are PostgreSQL's: delivered with the account its users table gives.
    uid = ensure_user("smtpdtest1").pw_uid
    for h in hosts:
        assert all(Path(p).stat().st_uid == uid for p in h.delivered())


def test_through_haproxy_with_the_clients_address(cluster):
    if not cluster["proxy"]:
        pytest.skip("this smtpd refuses proxy-v2")
    base, hosts = cluster["base"], cluster["hosts"]
    port = 25
    conf = base / "haproxy.cfg"
    servers = "".join("    server %s %s:26 send-proxy-v2 source 127.0.0.30\n" % (h, a)
                      for h, a in HOSTS.items())
    conf.write_text("global\n    maxconn 200\n"
                    "defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n"
                    "    timeout server 60s\n"
                    "frontend smtp\n    bind 127.0.0.20:%d\n    default_backend mx\n"
                    "backend mx\n    balance roundrobin\n%s" % (port, servers))
    log = open(base / "haproxy.log", "wb")
    ha = subprocess.Popen([HAPROXY, "-db", "-f", str(conf)], stdout=log, stderr=log)
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.20", port), timeout=1).close()
                return True
            except OSError:
                return False
        assert wait_until(up, 10), (base / "haproxy.log").read_text()
        before = {h.name: set(h.delivered()) for h in hosts}
        n = 1500
        # smtp-source has no source address option: a client of our own binds 127.0.0.5.
        sent = send_many("127.0.0.20", port, "127.0.0.5", n)
        assert sent == n

        def new():
            return [(h, data) for h in hosts for p, data in h.delivered().items()
                    if p not in before[h.name]]
        assert wait_until(lambda: len(new()) == n, 120), "%d of %d" % (len(new()), n)
        for h, data in new():
            first = data.split(b"\n\tby ", 1)[0]
            assert b"[127.0.0.5]" in first, first
            assert b"127.0.0.30" not in data
        for h in hosts:
            assert "address=127.0.0.5" in h.log()
            # The balancer's address is only ever named as the proxy.
            assert "127.0.0.30" not in re.sub(r"proxy=127\.0\.0\.30:\d+", "", h.log())
        print("\nhaproxy: %d messages, per host %s" % (
            n, [sum(1 for x, _ in new() if x is h) for h in hosts]))
        # Each host's counters agree with its maildir (mx1 and mx3 ran from the start;
        # mx2's counters began again with its restart).
        for h in (hosts[0], hosts[2]):
            text = urllib.request.urlopen("http://%s:9465/metrics" % h.host, timeout=10).read()
            smp = {}
            for fam in prom.text_string_to_metric_families(text.decode()):
                for sm in fam.samples:
                    smp[(sm.name, tuple(sorted(sm.labels.items())))] = sm.value
            got = len(h.delivered())
            assert wait_until(lambda: h.queue_empty(), 30)
            assert smp[("smtpd_messages_accepted_total", ())] == got
            assert smp[("smtpd_deliveries_total", (("method", "maildir"), ("result", "ok")))] == got
            print("%s metrics: %s" % (h.name, ", ".join(
                "%s%s=%g" % (k[0], dict(k[1]) or "", v) for k, v in sorted(smp.items())
                if k[0] in ("smtpd_messages_accepted_total", "smtpd_deliveries_total",
                            "smtpd_sessions_total", "smtpd_queue_envelopes")
                or (k[0] == "smtpd_replies_refused_total"))))
    finally:
        ha.terminate()
        ha.wait(10)
        log.close()


def send_many(host, port, source, n, sessions=30):
    """n messages over `sessions` sessions from `source`: 50 each, below the hosts'
    LIMITS MAILMAX of 100."""
    sent = 0
    per = n // sessions
    for s in range(sessions):
        c = socket.create_connection((host, port), timeout=30, source_address=(source, 0))
        f = c.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                assert line, "connection closed"
                if line[3:4] != b"-":
                    return line
        assert reply().startswith(b"220")
        c.sendall(b"EHLO client.test\r\n")
        assert reply().startswith(b"250")
        for i in range(per):
            body = ("Subject: through haproxy %d/%d\r\n\r\nhello\r\n.\r\n" % (s, i)).encode()
            c.sendall(b"MAIL FROM:<sender@client.test>\r\nRCPT TO:<user%d@example.test>\r\n"
                      b"DATA\r\n" % ((s * per + i) % USERS))
            for code in (b"250", b"250", b"354"):
                line = reply()
                assert line.startswith(code), line
            c.sendall(body)
            assert reply().startswith(b"250")
            sent += 1
        c.sendall(b"QUIT\r\n")
        reply()
        c.close()
    return sent
