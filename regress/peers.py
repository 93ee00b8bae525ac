"""Real mail servers as receivers of the relay tests: Postfix and OpenSMTPD.

Each instance listens on ADDR:25 in the test's network namespace (regress/netns.py: the
process is started from the test's main thread, which is in it) and keeps what it
receives in a Maildir of its own directory, delivered as the test user smtpdtest1:

- Postfix 3.7 (Debian's `postfix` package): a private configuration directory, queue
  and data directory under the test directory; `master` runs in the foreground, started
  directly (never `postfix start`, never the system service; /etc/postfix is only read).
  virtual(8) delivers into DIR/Maildir; Postfix logs to DIR/maillog (postlogd).
- OpenSMTPD 6.8 (Debian 12's `opensmtpd`, which conflicts with `postfix`: extracted by
  regress/install into /opt/opensmtpd, as bench/run does, its helpers in
  /usr/libexec/opensmtpd, the users `opensmtpd` and `opensmtpq`). Its spool
  (/var/spool/smtpd) and control socket (/var/run/smtpd.sock) are compiled in: it runs
  in a private mount namespace where the test's directories are mounted over
  /var/spool/smtpd and /run, so that it shares nothing with another instance (the
  bench's, another test session's). A `maildir` action delivers into DIR/Maildir; its
  log is DIR/opensmtpd.log (`-d` output).

Both see a resolv.conf naming only the test's DNS server (their lookups of the client's
name stay in the namespace). Every process is stopped by PID (SIGTERM to the server, its
children waited for, SIGKILL by PID for anything that lingers).
"""

import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

from conftest import allow_traversal, ensure_user, stop_process, wait_until

MAIL_USER = "smtpdtest1"
PF_DAEMONS = Path("/usr/lib/postfix/sbin")
OSMTPD_ROOT = Path(os.environ.get("REGRESS_OPENSMTPD", "/opt/opensmtpd"))
OSMTPD_BIN = OSMTPD_ROOT / "usr/sbin/smtpd"
OSMTPD_LIBEXEC = Path("/usr/libexec/opensmtpd")  # compiled into Debian's build
OSMTPD_SPOOL = Path("/var/spool/smtpd")  # compiled in too: a mount point here
OSMTPD_CHROOT = Path("/var/lib/opensmtpd/empty")


def _common_missing():
    if os.geteuid() != 0:
        return "needs root (port 25, mount namespaces, deliveries as a test user)"
    if not shutil.which("unshare"):
        return "unshare(1) not installed (util-linux)"
    return None


def postfix_missing():
    """None when a Postfix instance can be started here, else why not."""
    why = _common_missing()
    if why:
        return why
    if not (PF_DAEMONS / "master").is_file() or not shutil.which("postfix"):
        return "Postfix is not installed (Debian package postfix, see regress/install)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "no user postfix (made by the postfix package)"
    return None


def opensmtpd_missing():
    """None when an OpenSMTPD instance can be started here, else why not."""
    why = _common_missing()
    if why:
        return why
    if not OSMTPD_BIN.is_file():
        return "OpenSMTPD is not extracted in %s (regress/install does it)" % OSMTPD_ROOT
    if not (OSMTPD_LIBEXEC / "mail.maildir").is_file():
        return "no %s/mail.maildir (regress/install copies OpenSMTPD's helpers)" % OSMTPD_LIBEXEC
    for d in (OSMTPD_SPOOL, OSMTPD_CHROOT):
        if not d.is_dir():
            return "no %s (regress/install makes it)" % d
    for name in ("opensmtpd", "opensmtpq"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            return "no user %s (regress/install makes it)" % name
    r = subprocess.run([str(OSMTPD_BIN), "-h"], capture_output=True, text=True, timeout=10)
    if "OpenSMTPD" not in r.stdout + r.stderr:
        return "%s does not run: %s" % (OSMTPD_BIN, (r.stdout + r.stderr).strip()[-300:])
    return None


def listening(addr, port=25):
    """Whether a socket listens on ADDR:PORT (IPv4) in the calling thread's network
    namespace, from /proc (no connection made, so no session in the server's log)."""
    a, b, c, d = (int(x) for x in addr.split("."))
    want = "%02X%02X%02X%02X:%04X" % (d, c, b, a, port)
    try:
        with open("/proc/thread-self/net/tcp") as f:
            lines = f.read().splitlines()[1:]
    except OSError:
        return False
    return any(f[1] == want and f[3] == "0A" for f in (line.split() for line in lines))


class Peer:
    """One server on ADDR:25 keeping mail for `domains` in DIR/Maildir. Subclasses
    write the configuration (`_configure`) and name the command (`_argv`)."""

    kind = "peer"

    def __init__(self, workdir, addr, domains, resolv, cert=None, key=None,
                 hostname=None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.addr = addr
        self.domains = list(domains)
        self.resolv = Path(resolv)
        self.cert, self.key = cert, key
        self.hostname = hostname or "%s-%s.test" % (self.kind, addr.replace(".", "-"))
        self.proc = None
        self._logf = None
        self.user = ensure_user(MAIL_USER)
        allow_traversal(self.dir)
        os.chmod(self.dir, 0o755)
        self.maildir = self.dir / "Maildir"
        for sub in ("", "new", "cur", "tmp"):
            p = self.maildir / sub
            p.mkdir(exist_ok=True)
            os.chown(p, self.user.pw_uid, self.user.pw_gid)
            os.chmod(p, 0o700)
        self.outpath = self.dir / (self.kind + ".log")  # standard output and error

    # ---------------------------------------------------------------- running

    def _mounts(self):
        """(source, mount point) pairs of the private mount namespace, in order."""
        return [(self.resolv, Path("/etc/resolv.conf"))]

    def start(self, timeout=15.0):
        """Starts the server and waits until ADDR:25 listens."""
        self._configure()
        cmd = " && ".join("mount --bind '%s' '%s'" % m for m in self._mounts())
        cmd += " && exec " + " ".join("'%s'" % a for a in self._argv())
        argv = ["unshare", "-m", "--propagation", "private", "sh", "-c", cmd]
        self._logf = open(self.outpath, "ab")
        # Its own session: a server that signals its process group reaches only its own.
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=self._logf, cwd=self.dir, start_new_session=True)
        if not wait_until(lambda: listening(self.addr) or self.proc.poll() is not None,
                          timeout):
            self.stop()
            raise RuntimeError("%s did not listen on %s:25 in %ds; log:\n%s"
                               % (self.kind, self.addr, timeout, self.log()[-3000:]))
        if self.proc.poll() is not None:
            code = self.proc.returncode
            self.stop()
            raise RuntimeError("%s exited (%s) at start; log:\n%s"
                               % (self.kind, code, self.log()[-3000:]))
        return self

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace=10.0):
        """SIGTERM to the server by PID, SIGKILL after `grace`; its children are waited
        for and killed by PID if they linger. Nothing of it runs afterwards."""
        if self.proc is not None:
            stop_process(self.proc, grace)
            self.proc = None
        if self._logf:
            self._logf.close()
            self._logf = None

    def log(self):
        """The server's output (and, for Postfix, its maillog)."""
        try:
            return self.outpath.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern, timeout=10.0):
        """The first match of the regex `pattern` in log() (bounded wait), else None."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log())
            if m or time.monotonic() > deadline:
                return m
            time.sleep(0.05)

    # ---------------------------------------------------------------- what it received

    def messages(self):
        """The delivered messages (bytes), oldest first."""
        files = [f for sub in ("new", "cur") for f in (self.maildir / sub).iterdir()
                 if f.is_file()]
        files.sort(key=lambda f: (f.stat().st_mtime, f.name))
        return [f.read_bytes() for f in files]

    def wait_messages(self, n, timeout=15.0):
        """The first `n` delivered messages, waiting up to `timeout` seconds."""
        if not wait_until(lambda: len(self.messages()) >= n, timeout):
            raise AssertionError("%s on %s: %d message(s) after %ds, want %d; its log:\n%s"
                                 % (self.kind, self.addr, len(self.messages()), timeout, n,
                                    self.log()[-3000:]))
        return self.messages()[:n]


class Postfix(Peer):
    """Postfix on ADDR:25: virtual(8) delivery of `domains` into DIR/Maildir, STARTTLS
    (`smtpd_tls_security_level = may`) with `cert` and `key` when given, the TLS of
    each session in the Received header (`smtpd_tls_received_header`); `settings`, more
    main.cf lines (`smtputf8_enable = no`)."""

    kind = "postfix"

    # The services this instance uses (name, type, private, wakeup, maxproc, command),
    # none chrooted; local and virtual run as root to deliver as the recipient.
    SERVICES = [
        ("cleanup", "unix", "n", "-", "0", "cleanup"),
        ("qmgr", "unix", "n", "300", "1", "qmgr"),
        ("rewrite", "unix", "-", "-", "-", "trivial-rewrite"),
        ("bounce", "unix", "-", "-", "0", "bounce"),
        ("defer", "unix", "-", "-", "0", "bounce"),
        ("trace", "unix", "-", "-", "0", "bounce"),
        ("verify", "unix", "-", "-", "1", "verify"),
        ("error", "unix", "-", "-", "-", "error"),
        ("retry", "unix", "-", "-", "-", "error"),
        ("discard", "unix", "-", "-", "-", "discard"),
        ("smtp", "unix", "-", "-", "-", "smtp"),
        ("relay", "unix", "-", "-", "-", "smtp"),
        ("local", "unix", "-", "-", "-", "local"),
        ("virtual", "unix", "-", "-", "-", "virtual"),
        ("anvil", "unix", "-", "-", "1", "anvil"),
        ("scache", "unix", "-", "-", "1", "scache"),
        ("tlsmgr", "unix", "-", "1000?", "1", "tlsmgr"),
        ("proxymap", "unix", "-", "-", "-", "proxymap"),
        ("flush", "unix", "n", "1000?", "0", "flush"),
        ("showq", "unix", "n", "-", "-", "showq"),
        ("postlog", "unix-dgram", "n", "-", "1", "postlogd"),
    ]

    def __init__(self, *a, settings=(), **kw):
        super().__init__(*a, **kw)
        self.etc = self.dir / "etc"
        self.maillog = self.dir / "maillog"
        self.settings = list(settings)  # more main.cf lines, last (they win)

    def _configure(self):
        for sub in ("etc", "spool", "data"):
            (self.dir / sub).mkdir(exist_ok=True)
        pf = pwd.getpwnam("postfix")
        os.chown(self.dir / "data", pf.pw_uid, pf.pw_gid)
        main = [
            "compatibility_level = 3.6",
            "queue_directory = %s" % (self.dir / "spool"),
            "data_directory = %s" % (self.dir / "data"),
            "mail_owner = postfix",
            "setgid_group = postdrop",
            "maillog_file = %s" % self.maillog,
            "maillog_file_prefixes = %s" % self.dir,
            "myhostname = %s" % self.hostname,
            "mydestination =",
            # Postfix knows the addresses of interfaces, not all of 127/8: the
            # listener's address is in master.cf.
            "inet_interfaces = loopback-only",
            "inet_protocols = ipv4",
            "mynetworks = 127.0.0.0/8",
            "smtpd_banner = $myhostname ESMTP Postfix",
            "biff = no",
            "alias_maps =",
            "alias_database =",
            "local_recipient_maps =",
            "virtual_mailbox_domains = %s" % ", ".join(self.domains),
            "virtual_mailbox_base = %s" % self.dir,
            "virtual_mailbox_maps = static:Maildir/",
            "virtual_uid_maps = static:%d" % self.user.pw_uid,
            "virtual_gid_maps = static:%d" % self.user.pw_gid,
        ]
        if self.cert:
            main += ["smtpd_tls_cert_file = %s" % self.cert,
                     "smtpd_tls_key_file = %s" % self.key,
                     "smtpd_tls_security_level = may",
                     "smtpd_tls_received_header = yes",
                     "smtpd_tls_loglevel = 1"]
        main += self.settings
        (self.etc / "main.cf").write_text("\n".join(main) + "\n")
        lines = ["%s:25 inet n - n - - smtpd" % self.addr]
        for name, kind, private, wakeup, limit, cmd in self.SERVICES:
            unpriv = "n" if cmd in ("local", "virtual") else "-"
            lines.append("%s %s %s %s n %s %s %s"
                         % (name, kind, private, unpriv, wakeup, limit, cmd))
        (self.etc / "master.cf").write_text("\n".join(lines) + "\n")
        # Creates the queue's directories with their owners, checks the rest.
        check = ["postfix", "-c", str(self.etc), "check"]
        if subprocess.run(check, capture_output=True, timeout=60).returncode != 0:
            # postfix(1) writes its errors on a terminal only: run it on one to tell why.
            r = subprocess.run(["script", "-qec", " ".join(check), "/dev/null"],
                               capture_output=True, text=True, timeout=60)
            raise RuntimeError("postfix check failed: " + r.stdout + r.stderr)

    def _argv(self):
        return [str(PF_DAEMONS / "master"), "-c", str(self.etc), "-d"]

    def log(self):
        try:
            maillog = self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            maillog = ""
        return super().log() + maillog


class OpenSMTPD(Peer):
    """OpenSMTPD on ADDR:25: a `maildir` action for `domains` into DIR/Maildir (as the
    test user, through a virtual table), and `tls pki` on the listener with `cert` and
    `key` when given."""

    kind = "opensmtpd"

    def _configure(self):
        spool = self.dir / "spool"
        spool.mkdir(exist_ok=True)
        os.chown(spool, 0, 0)
        os.chmod(spool, 0o711)  # what OpenSMTPD wants of its spool
        run = self.dir / "run"
        run.mkdir(exist_ok=True)
        os.chmod(run, 0o755)
        resolv = Path(os.path.realpath("/etc/resolv.conf"))
        if resolv.is_relative_to("/run"):
            # /etc/resolv.conf is a link into /run, which the test's directory covers.
            target = run / resolv.relative_to("/run")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self.resolv, target)
            os.chmod(target, 0o644)
        users = ", ".join('"@%s" = %s' % (d, MAIL_USER) for d in self.domains)
        conf = []
        listen = "listen on %s port 25 hostname %s" % (self.addr, self.hostname)
        if self.cert:
            conf += ['pki %s cert "%s"' % (self.hostname, self.cert),
                     'pki %s key "%s"' % (self.hostname, self.key)]
            listen += " tls pki %s" % self.hostname
        conf += ["table vusers { %s }" % users,
                 listen,
                 'action "rx" maildir "%s" virtual <vusers>' % self.maildir]
        conf += ['match from any for domain "%s" action "rx"' % d for d in self.domains]
        self.conf = self.dir / "smtpd.conf"
        self.conf.write_text("\n".join(conf) + "\n")

    def _mounts(self):
        mounts = [(self.dir / "spool", OSMTPD_SPOOL), (self.dir / "run", Path("/run"))]
        if not Path(os.path.realpath("/etc/resolv.conf")).is_relative_to("/run"):
            mounts += super()._mounts()
        return mounts

    def _argv(self):
        return [str(OSMTPD_BIN), "-d", "-f", str(self.conf)]


def tls_handshake_works(addr, timeout=5.0):
    """Whether a STARTTLS handshake with the server on ADDR:25 completes (certificate
    unchecked): (True, "") or (False, why)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((addr, 25), timeout=timeout) as s:
            f = s.makefile("rb")

            def reply():
                """The last line of a reply (at most 50 lines are read)."""
                for _ in range(50):
                    line = f.readline(1024)
                    if line[3:4] != b"-":
                        return line
                return b""

            reply()
            s.sendall(b"EHLO probe.test\r\n")
            reply()
            s.sendall(b"STARTTLS\r\n")
            r = reply()
            if not r.startswith(b"220"):
                return False, "STARTTLS: %r" % r
            with ctx.wrap_socket(s) as t:
                t.sendall(b"QUIT\r\n")
                t.recv(512)
        return True, ""
    except (OSError, ssl.SSLError) as e:
        return False, str(e)
