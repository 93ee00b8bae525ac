"""Tables served by processes: OpenSMTPD 6's table programs of Debian's opensmtpd-extras
(`table NAME TYPE:ARG`, the imsg protocol) against real servers the tests start and stop
on the loopback (an SQLite file, PostgreSQL, Redis), a table process of OpenSMTPD 7.6's
line protocol (`proc-exec`, regress/linetable.py), makemap's Berkeley DB files (`db:`),
and `smtpctl update table`.

Each backend serves the same data: the virtual domain virt.example (`for domain`), its
addresses (`virtual`, asked as aliases), the user they deliver to (`userbase`), AUTH
credentials and `senders`.  A table process killed mid-test fails the lookups that
need it with a temporary failure (never an acceptance) until the parent has started it
again.  The table programs run as _smtpd: every file they read is made readable.
"""

import grp
import json
import os
import shutil
import signal
import socket
import socketserver
import sqlite3
import subprocess
import threading
import warnings
from pathlib import Path

import pytest

import netns
import pgserver
from conftest import (REPO, allow_traversal, as_user, descendants, ensure_user, free_port,
                      smtpd_bin, stop_process, wait_until)
from test_auth import Secure, plain_ir
from test_mx import send
from test_relay_options import auth_receiver, certs, net, received  # noqa: F401 (fixtures)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import crypt  # noqa: E402  (Debian's Python 3.11 has it, deprecated)

EXTRAS = Path("/usr/libexec/opensmtpd")
MAKEMAP = Path(os.environ.get("REGRESS_OPENSMTPD", "/opt/opensmtpd")) / "usr/sbin/makemap"
PASSWORD = "correct horse"
HASH = crypt.crypt(PASSWORD, crypt.mksalt(crypt.METHOD_SHA512))

DOMAINS = ["virt.example"]
VIRTUALS = {"alice@virt.example": "vmail", "team@virt.example": "alice@virt.example"}
USERS = {"vmail": (1000, 1000, "/var/empty")}
CREDENTIALS = {"alice@virt.example": HASH}
SENDERS = {"alice@virt.example": ["alice@virt.example", "team@virt.example"]}

TABLES = ("domains", "virtuals", "users", "creds", "senders")

RULES = """
action "virt" maildir "{MAILDIR}/%{user.username}" virtual <virtuals> userbase <users>
match from any for domain <domains> action "virt"
"""

# One configuration for every table: each table's process runs the query of the
# service it is asked for.
SQL = """query_domain SELECT domain FROM domains WHERE domain = {p}
query_alias SELECT destination FROM virtuals WHERE email = {p}
query_userinfo SELECT uid, gid, home FROM users WHERE name = {p}
query_credentials SELECT email, password FROM credentials WHERE email = {p}
query_mailaddrmap SELECT address FROM senders WHERE email = {p}
"""

SCHEMA = """CREATE TABLE domains (domain TEXT);
CREATE TABLE virtuals (email TEXT, destination TEXT);
CREATE TABLE users (name TEXT, uid INTEGER, gid INTEGER, home TEXT);
CREATE TABLE credentials (email TEXT, password TEXT);
CREATE TABLE senders (email TEXT, address TEXT);
"""


def rows(virtuals=VIRTUALS):
    """(table, values) of the test data."""
    out = [("domains", (d,)) for d in DOMAINS]
    out += [("virtuals", kv) for kv in virtuals.items()]
    out += [("users", (n,) + v) for n, v in USERS.items()]
    out += [("credentials", kv) for kv in CREDENTIALS.items()]
    out += [("senders", (u, a)) for u, addrs in SENDERS.items() for a in addrs]
    return out


def need_program(kind):
    p = EXTRAS / ("table-" + kind)
    if not os.access(p, os.X_OK):
        pytest.skip("%s is missing (regress/install extracts Debian's opensmtpd-extras)" % p)


def needs_root():
    if os.geteuid() != 0:
        pytest.skip("the table programs run as _smtpd: smtpd must be started as root")


def readable(*paths):
    for p in paths:
        os.chmod(p, 0o755 if Path(p).is_dir() else 0o644)
        allow_traversal(Path(p).parent)


def tables_extra(kind, conf):
    return "".join("table %s %s:%s\n" % (t, kind, conf) for t in TABLES)


@pytest.fixture
def secure(make_daemon, tmp_path):
    needs_root()
    return Secure(make_daemon, tmp_path)


def start(secure, extra):
    return secure.daemon("auth-optional <creds> senders <senders>", extra=extra, rules=RULES)


def rcpt(d, address):
    """The reply to RCPT TO:<address> in a new session."""
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<someone@else.example>", 250)
        return c.cmd("RCPT TO:<%s>" % address)


def check_lookups(secure, d, unknown=550, senders=True):
    """What every backend answers the same way; `unknown` is the reply code to an
    address of the domain that is not listed, `senders` whether the backend serves the
    `senders` table."""
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<someone@else.example>", 250)
        c.expect("RCPT TO:<alice@virt.example>", 250)
        # Through the alias's address, and with a key in capitals (lower-cased).
        c.expect("RCPT TO:<team@virt.example>", 250)
        c.expect("RCPT TO:<Alice@VIRT.example>", 250)
        r = c.cmd("RCPT TO:<nobody@virt.example>")
        assert r.code == unknown, r
        # Not a domain of the table: no rule takes it.
        c.expect("RCPT TO:<alice@other.example>", 550)
    with secure.client(d) as c:
        c.expect("AUTH PLAIN " + plain_ir("alice@virt.example", PASSWORD), 235, "2.7.0")
        if senders:
            c.expect("MAIL FROM:<team@virt.example>", 250)
            c.expect("RSET", 250)
            c.expect("MAIL FROM:<bob@virt.example>", 553, "5.7.1")
        else:
            # A table that cannot answer refuses for now, it never lets the sender through.
            r = c.cmd("MAIL FROM:<bob@virt.example>")
            assert r.code == 451, r
    with secure.client(d) as c:
        c.expect("AUTH PLAIN " + plain_ir("alice@virt.example", "wrong"), 535, "5.7.8")


def sqlite_setup(directory, virtuals=VIRTUALS, name="mail.sqlite"):
    db = directory / name
    con = sqlite3.connect(db)
    con.executescript(SCHEMA)
    for table, values in rows(virtuals):
        con.execute("INSERT INTO %s VALUES (%s)" % (table, ",".join("?" * len(values))), values)
    con.commit()
    con.close()
    readable(db)
    return db


def sqlite_conf(directory, db):
    conf = directory / "sqlite.conf"
    conf.write_text("dbpath %s\n%s" % (db, SQL.format(p="?")))
    readable(conf)
    return conf


def table_pids(d, marker):
    """PIDs of the daemon's processes with `marker` as an argument (a table program's
    argv[0] is its table's name)."""
    out = []
    for pid in descendants(d.pid):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
            with open("/proc/%d/stat" % pid, "rb") as f:
                if b") Z " in f.read():
                    continue
        except OSError:
            continue
        if marker.encode() in argv:
            out.append(pid)
    return out


def gone(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return b") Z " in f.read()
    except OSError:
        return True


def kill_and_recover(d, marker, address):
    """Kills the table process `marker` while a session waits to say RCPT: that RCPT
    is refused for now (451), and one made once the parent restarted it is taken."""
    (pid,) = table_pids(d, marker)
    with d.client() as c:
        c.ehlo()
        c.expect("MAIL FROM:<someone@else.example>", 250)
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: gone(pid), 5)
        # The parent waits a second before it starts the process again.
        r = c.cmd("RCPT TO:<%s>" % address)
        assert r.code == 451 and "4.3.0" in r.text, r
    assert d.wait_log(r"table \S+ exited with status \d+, restarting in 1s", 5), d.log()[-3000:]
    assert wait_until(lambda: rcpt(d, address).code == 250, 10), d.log()[-3000:]
    assert table_pids(d, marker) and pid not in table_pids(d, marker)


# ---------------------------------------------------------------------------
# SQLite (table-sqlite)
# ---------------------------------------------------------------------------


def test_sqlite(secure, tmp_path):
    need_program("sqlite")
    db = sqlite_setup(tmp_path)
    conf = sqlite_conf(tmp_path, db)
    d = start(secure, tables_extra("sqlite", conf))
    check_lookups(secure, d)
    # One process per table, each run as OpenSMTPD 6 runs it.
    for t in TABLES:
        assert len(table_pids(d, t)) == 1, t
    # New rows are seen at once: the table asks the database each time.
    con = sqlite3.connect(db)
    con.execute("INSERT INTO virtuals VALUES ('carol@virt.example', 'vmail')")
    con.commit()
    con.close()
    assert rcpt(d, "carol@virt.example").code == 250


def test_sqlite_update_table_and_a_killed_process(secure, tmp_path):
    need_program("sqlite")
    db = sqlite_setup(tmp_path)
    conf = sqlite_conf(tmp_path, db)
    d = start(secure, tables_extra("sqlite", conf))
    assert rcpt(d, "bob@virt.example").code == 550
    # The configuration now names another database: the process reads it on update.
    db2 = sqlite_setup(tmp_path, dict(VIRTUALS, **{"bob@virt.example": "vmail"}), "mail2.sqlite")
    sqlite_conf(tmp_path, db2)
    assert rcpt(d, "bob@virt.example").code == 550
    rc, out, err = d.smtpctl("update", "table", "virtuals")
    assert rc == 0 and "table virtuals: updated" in out, (rc, out, err)
    assert rcpt(d, "bob@virt.example").code == 250
    rc, out, err = d.smtpctl("update", "table", "nosuch")
    assert rc != 0 and "no table 'nosuch'" in out, (rc, out, err)
    kill_and_recover(d, "virtuals", "bob@virt.example")
    # The domain check of the rule too.
    kill_and_recover(d, "domains", "alice@virt.example")


# ---------------------------------------------------------------------------
# PostgreSQL (table-postgres), a server of the test on 127.0.0.1
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    """A PostgreSQL server of the test user smtpdtest1 on a loopback port, with the
    test data in its database `postgres`; stopped at the end."""
    needs_root()
    need_program("postgres")
    if not pgserver.bindir():
        pytest.skip("PostgreSQL is missing (Debian package postgresql)")
    sql = SCHEMA + "".join(
        "INSERT INTO %s VALUES (%s);\n" % (t, ",".join(
            str(v) if isinstance(v, int) else "'%s'" % v.replace("'", "''") for v in values))
        for t, values in rows())
    pg = pgserver.PgServer(tmp_path_factory.mktemp("pg"), sql)
    try:
        yield pg.port
    finally:
        pg.stop()


def test_postgres(secure, tmp_path, postgres):
    conf = tmp_path / "postgres.conf"
    conf.write_text("conninfo host=127.0.0.1 port=%d dbname=postgres user=smtpdtest1\n%s"
                    % (postgres, SQL.format(p="$1")))
    readable(conf)
    d = start(secure, tables_extra("postgres", conf))
    check_lookups(secure, d)
    rc, out, err = d.smtpctl("update", "table", "creds")
    assert rc == 0 and "table creds: updated" in out, (rc, out, err)
    kill_and_recover(d, "virtuals", "alice@virt.example")


# ---------------------------------------------------------------------------
# Redis (table-redis), a server of the test on 127.0.0.1:6379 of its own namespace
# ---------------------------------------------------------------------------


def redis_command(port, *words):
    """One command in RESP; its reply's first line."""
    req = b"*%d\r\n" % len(words) + b"".join(
        b"$%d\r\n%s\r\n" % (len(w.encode()), w.encode()) for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(req)
        return s.recv(512).split(b"\r\n")[0]


@pytest.fixture
def redis(tmp_path):
    """A redis-server of the test user smtpdtest1 on 127.0.0.1:6379 in a private network
    namespace (which the test's daemon shares), with the test data under table-redis's
    default keys; stopped by PID at the end.  Debian's table-redis 6.7.1 never reads its
    configuration file (its read loop's condition is inverted): it always asks
    127.0.0.1:6379, with its default queries."""
    needs_root()
    need_program("redis")
    server = shutil.which("redis-server")
    if not server:
        pytest.skip("redis-server is missing (Debian package redis-server)")
    why = netns.can_run()
    if why:
        pytest.skip(why)
    ensure_user("smtpdtest1")
    base = tmp_path / "redis"
    base.mkdir()
    ns = netns.NetNS()
    ns.enter()
    log = open(base / "redis.log", "wb")
    proc = None
    try:
        proc = subprocess.Popen(as_user("smtpdtest1") + [
            server, "--port", "6379", "--bind", "127.0.0.1", "--save", "", "--appendonly",
            "no", "--dir", "/tmp", "--daemonize", "no"], stdout=log, stderr=log,
            stdin=subprocess.DEVNULL)

        def up():
            try:
                return redis_command(6379, "PING") == b"+PONG"
            except OSError:
                return False
        assert wait_until(up, 10), (base / "redis.log").read_text(errors="replace")
        for dom in DOMAINS:
            assert redis_command(6379, "SET", "domain:" + dom, dom) == b"+OK"
        for k, v in VIRTUALS.items():
            redis_command(6379, "SET", "alias:" + k, v)
        for n, (uid, gid, home) in USERS.items():
            redis_command(6379, "SET", "userinfo:" + n, "%d:%d:%s" % (uid, gid, home))
        for u, h in CREDENTIALS.items():
            redis_command(6379, "SET", "credentials:" + u, h)
        yield 6379
    finally:
        if proc is not None:
            stop_process(proc)
        log.close()
        ns.leave()
        ns.close()


def test_redis(redis, secure, tmp_path):
    conf = tmp_path / "redis.conf"
    conf.write_text("master 127.0.0.1\nmaster_port %d\n" % redis)
    readable(conf)
    d = start(secure, tables_extra("redis", conf))
    # table-redis answers an error, not "not found", for a key it does not hold, and has
    # no query for `senders`: both are temporary failures, never acceptances.
    check_lookups(secure, d, unknown=451, senders=False)
    redis_command(redis, "SET", "alias:dave@virt.example", "vmail")
    assert rcpt(d, "dave@virt.example").code == 250
    kill_and_recover(d, "users", "dave@virt.example")


# ---------------------------------------------------------------------------
# table-passwd: credentials and users from a passwd(5) file
# ---------------------------------------------------------------------------


def test_passwd_credentials(secure, tmp_path):
    need_program("passwd")
    passwd = tmp_path / "passwd"
    passwd.write_text("alice@virt.example:%s:1000:1000::/var/empty:/sbin/nologin\n"
                      "vmail:*:1000:1000::/var/empty:/sbin/nologin\n" % HASH)
    readable(passwd)
    extra = ("table domains { virt.example }\ntable virtuals { alice@virt.example = vmail, "
             "team@virt.example = alice@virt.example }\n"
             "table senders { alice@virt.example = \"alice@virt.example, team@virt.example\" }\n"
             "table creds passwd:%s\ntable users passwd:%s\n" % (passwd, passwd))
    d = start(secure, extra)
    check_lookups(secure, d)


# ---------------------------------------------------------------------------
# table-socketmap: lookups asked of a server on a UNIX socket
# ---------------------------------------------------------------------------


class SocketMap(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A socketmap server as table-socketmap speaks it (`NAME KEY` lines answered by
    `OK VALUE` or `NOTFOUND `), from {table name: {key: value}}; stopped at the end."""

    daemon_threads = True

    def __init__(self, path, maps):
        self.maps = maps
        self.asked = []

        class Handler(socketserver.StreamRequestHandler):
            timeout = 10

            def handle(h):
                for _ in range(1000):
                    line = h.rfile.readline()
                    if not line:
                        return
                    name, _, key = line.decode().rstrip("\n").partition(" ")
                    self.asked.append((name, key))
                    value = self.maps.get(name, {}).get(key)
                    h.wfile.write(b"NOTFOUND \n" if value is None else b"OK %s\n" % value.encode())
                    h.wfile.flush()

        super().__init__(str(path), Handler)
        os.chmod(path, 0o666)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.shutdown()
        self.server_close()


def test_socketmap(secure, tmp_path):
    need_program("socketmap")
    sock = tmp_path / "sm.sock"
    sm = SocketMap(sock, {"virtuals": dict(VIRTUALS), "users": {"vmail": "1000:1000:/var/empty"}})
    try:
        readable(tmp_path)
        extra = ("table domains { virt.example }\ntable virtuals socketmap:%s\n"
                 "table users socketmap:%s\ntable creds { x = \"%s\" }\ntable senders { x = y }\n"
                 % (sock, sock, HASH))
        d = start(secure, extra)
        assert rcpt(d, "alice@virt.example").code == 250
        assert rcpt(d, "team@virt.example").code == 250
        assert rcpt(d, "nobody@virt.example").code == 550
        assert ("virtuals", "alice@virt.example") in sm.asked and ("users", "vmail") in sm.asked
        # table-socketmap answers no check: a rule's domain table it serves fails for now.
        d.stop()
        d.extra = d.extra.replace("table domains { virt.example }",
                                  "table domains socketmap:%s" % sock)
        d.start()
        r = rcpt(d, "alice@virt.example")
        assert r.code == 451, r
    finally:
        sm.close()


# ---------------------------------------------------------------------------
# OpenSMTPD 7.6's line protocol (proc-exec), makemap's db files
# ---------------------------------------------------------------------------


def line_table(tmp_path, data):
    lib = tmp_path / "lt"
    lib.mkdir(exist_ok=True)
    shutil.copy(REPO / "regress" / "linetable.py", lib / "linetable.py")
    (lib / "data.json").write_text(json.dumps(data))
    readable(lib, lib / "linetable.py", lib / "data.json")
    return lib / "data.json"


def test_line_protocol_table(secure, tmp_path):
    needs_root()
    data = {"domain": {d: d for d in DOMAINS}, "alias": dict(VIRTUALS),
            "userinfo": {n: "%d:%d:%s" % v for n, v in USERS.items()},
            "credentials": dict(CREDENTIALS),
            "mailaddrmap": {u: ", ".join(a) for u, a in SENDERS.items()}}
    path = line_table(tmp_path, data)
    # The table's name as a last argument (the program ignores it) tells the processes
    # apart.
    cmd = "/usr/bin/python3 %s %s" % (path.parent / "linetable.py", path)
    extra = "".join('table %s proc-exec "%s %s"\n' % (t, cmd, t) for t in TABLES)
    d = start(secure, extra)
    check_lookups(secure, d)
    assert "request table|0.1|" in d.log()
    # Read again on update; a failed update keeps what the table had.
    data["alias"]["bob@virt.example"] = "vmail"
    path.write_text(json.dumps(data))
    assert rcpt(d, "bob@virt.example").code == 550
    rc, out, err = d.smtpctl("update", "table", "virtuals")
    assert rc == 0 and "updated" in out, (rc, out, err)
    assert rcpt(d, "bob@virt.example").code == 250
    path.write_text(json.dumps(dict(data, update="error")))
    rc, out, err = d.smtpctl("update", "table", "virtuals")
    assert rc != 0 and "update failed" in out, (rc, out, err)
    assert rcpt(d, "bob@virt.example").code == 250
    kill_and_recover(d, "virtuals", "bob@virt.example")


def test_line_protocol_table_without_the_service(secure, tmp_path):
    needs_root()
    # It registers `domain` only: what else it is asked fails for now, unasked.
    path = line_table(tmp_path, {"domain": {"virt.example": "virt.example"}})
    cmd = "/usr/bin/python3 %s %s" % (path.parent / "linetable.py", path)
    extra = ('table domains proc-exec "%s"\ntable virtuals proc-exec "%s"\n'
             "table users { vmail }\ntable creds proc-exec \"%s\"\ntable senders { x = y }\n"
             % (cmd, cmd, cmd))
    d = start(secure, extra)
    r = rcpt(d, "alice@virt.example")
    assert r.code == 451, r
    with secure.client(d) as c:
        c.expect("AUTH PLAIN " + plain_ir("alice@virt.example", PASSWORD), 454, "4.7.0")
    assert "does not serve alias lookups" in d.log()


def makemap(*args):
    """OpenSMTPD's makemap (its smtpctl), with the group it must run as (it is installed
    setgid opensmtpq; the extracted one is not)."""
    try:
        gid = grp.getgrnam("opensmtpq").gr_gid
    except KeyError:
        pytest.skip("no group opensmtpq (regress/install makes it)")
    r = subprocess.run(["setpriv", "--regid=%d" % gid, "--clear-groups", str(MAKEMAP)]
                       + [str(a) for a in args], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr


def test_db_tables_made_by_makemap(make_daemon, tmp_path):
    needs_root()
    if not os.access(MAKEMAP, os.X_OK):
        pytest.skip("%s is missing (regress/install extracts OpenSMTPD)" % MAKEMAP)
    src = tmp_path / "virtuals"
    # A value longer than a page goes to overflow pages.
    long = ", ".join("root" for _ in range(1500))
    src.write_text("Alice@Virt.Example root\nteam@virt.example %s\n" % long)
    domains = tmp_path / "domains"
    domains.write_text("virt.example\n")
    makemap(src)
    makemap("-t", "set", domains)
    extra = "table virtuals db:%s.db\ntable domains db:%s.db\n" % (src, domains)
    rules = ('action "virt" maildir "{MAILDIR}/%{user.username}" virtual <virtuals>\n'
             "match from any for domain <domains> action \"virt\"\n")
    d = make_daemon(extra=extra, rules=rules)
    assert rcpt(d, "alice@virt.example").code == 250
    assert rcpt(d, "team@virt.example").code == 250
    assert rcpt(d, "bob@virt.example").code == 550
    src.write_text("bob@virt.example root\n")
    makemap(src)
    rc, out, err = d.smtpctl("update", "table", "virtuals")
    assert rc == 0 and "table virtuals: updated, 1 entries" in out, (rc, out, err)
    assert rcpt(d, "bob@virt.example").code == 250
    assert rcpt(d, "alice@virt.example").code == 550


# ---------------------------------------------------------------------------
# A relay's secret in a table process
# ---------------------------------------------------------------------------


def test_relay_secret_from_a_table_process(net, certs, tmp_path):
    needs_root()
    rx = auth_receiver(net, certs, "127.0.0.38", "ts.test", "s3cret pass")
    path = line_table(tmp_path, {"credentials": {"isp": "relayuser:s3cret pass"}})
    extra = 'table secrets proc-exec "/usr/bin/python3 %s %s"\n' % (path.parent / "linetable.py", path)
    d = net.sender(relay='host "smtp+tls://isp@127.0.0.38:25" auth <secrets>', extra=extra)
    send(d, ["bob@ts.test"], "tablesecret")
    (m,) = rx.wait_messages(1, timeout=15)
    assert "with ESMTPSA" in received(m), received(m)
    assert "lookup|credentials|" in d.log() and "s3cret" not in d.log().split("smtpd listening")[-1]


# ---------------------------------------------------------------------------
# What the configuration refuses
# ---------------------------------------------------------------------------


def smtpd_n(tmp_path, text):
    conf = tmp_path / "smtpd.conf"
    conf.write_text("listen on 127.0.0.1 port %d\n%s" % (free_port(), text))
    return subprocess.run([str(smtpd_bin()), "-n", "-f", str(conf)], capture_output=True,
                          text=True, timeout=30, cwd=tmp_path)


def test_configuration_of_table_processes(tmp_path):
    r = smtpd_n(tmp_path, "table t nosuchkind:/etc/x.conf\n")
    assert r.returncode != 0
    assert "unsupported table type 'nosuchkind': no /usr/libexec/opensmtpd/table-nosuchkind" \
        in r.stderr, r.stderr
    # The loop reads a relay's routes itself: a table process cannot serve them.
    r = smtpd_n(tmp_path, 'table routes proc-exec "/bin/cat"\n'
                "action out relay domain <routes>\n"
                "match from any for any action out\n")
    assert r.returncode != 0
    assert "table 'routes': a relay's 'domain' needs a file, db or inline table" in r.stderr, r.stderr
    r = smtpd_n(tmp_path, 'table "a|b" proc-exec "/bin/cat"\n')
    assert r.returncode != 0 and "without '|'" in r.stderr, r.stderr
    r = smtpd_n(tmp_path, 'table t proc-exec "/bin/cat" user nobody group nogroup\n'
                'table d db:%s\n' % (tmp_path / "missing.db"))
    assert r.returncode != 0 and "missing.db" in r.stderr, r.stderr
    (tmp_path / "plain.db").write_text("not a database\n")
    r = smtpd_n(tmp_path, "table d db:%s\n" % (tmp_path / "plain.db"))
    assert r.returncode != 0 and "not a Berkeley DB" in r.stderr, r.stderr
    r = smtpd_n(tmp_path, 'table t proc-exec "/bin/cat" user nobody group nogroup\n')
    assert r.returncode == 0, r.stderr
