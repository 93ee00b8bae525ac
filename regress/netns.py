"""A private network namespace for relay tests.

Inside it, loopback is the only interface, every 127.0.0.x address has a free port 25,
and nothing reaches the machine's network or nameserver. The test's main thread enters
it (setns(2) on that thread only), so that every socket the test opens and every process
it starts (daemons, receivers, the DNS server) lives there; it leaves when the test ends.
Unix sockets (the control socket) are files and work across namespaces.

Daemons under test also get a private mount namespace in which /etc/resolv.conf names
the test's DNS server (see `resolv_wrapper`).
"""

import contextlib
import ctypes
import itertools
import os
import shutil
import subprocess
import tempfile

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_names = itertools.count()


def can_run():
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, port 25)"
    for tool in ("ip", "unshare"):
        if not shutil.which(tool):
            return "%s(8) not installed" % tool
    return None


def _setns(fd):
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "setns: " + os.strerror(err))


class NetNS:
    """A named network namespace with loopback up."""

    def __init__(self):
        self.name = "smtpd-test-%d-%d" % (os.getpid(), next(_names))
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self._own = None
        try:
            subprocess.run(["ip", "-n", self.name, "link", "set", "lo", "up"], check=True)
        except Exception:
            self.close()
            raise

    def enter(self):
        """Moves the calling thread into the namespace."""
        if self._own is None:
            self._own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open("/run/netns/" + self.name, os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    def leave(self):
        """Back to the namespace the thread came from."""
        if self._own is not None:
            _setns(self._own)
            os.close(self._own)
            self._own = None

    @contextlib.contextmanager
    def inside(self):
        self.enter()
        try:
            yield self
        finally:
            self.leave()

    def close(self):
        self.leave()
        subprocess.run(["ip", "netns", "delete", self.name], check=False,
                       stderr=subprocess.DEVNULL)


def resolv_wrapper(resolv_conf):
    """An argv wrapper that runs a command in a private mount namespace whose
    /etc/resolv.conf is `resolv_conf`."""

    def wrap(argv):
        cmd = "mount --bind '%s' /etc/resolv.conf && exec %s" % (
            resolv_conf, " ".join("'%s'" % a for a in argv))
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", cmd]

    return wrap


def write_resolv(directory, server="127.0.0.53", options=""):
    """A resolv.conf naming only the test's server, readable by the daemon's user."""
    path = os.path.join(str(directory), "resolv.conf")
    with open(path, "w") as f:
        f.write("nameserver %s\n" % server)
        if options:
            f.write("options %s\n" % options)
    os.chmod(path, 0o644)
    return path


class Sink:
    """Postfix's smtp-sink on ADDR:PORT, dumping every transaction into a directory.
    `flags` are smtp-sink options (e.g. ["-Q", "CONNECT"] answers 421 at once)."""

    def __init__(self, addr, port=25, flags=(), workdir=None):
        self.addr, self.port = addr, port
        self.dir = tempfile.mkdtemp(prefix="sink-", dir=workdir)
        os.chmod(self.dir, 0o777)
        host = "[%s]" % addr if ":" in addr else addr
        argv = ["smtp-sink", "-u", "nobody", "-d", os.path.join(self.dir, "%H%M%S."),
                "-h", "sink-" + addr] + list(flags) + ["%s:%d" % (host, port), "100"]
        self.log = open(os.path.join(self.dir, "sink.log"), "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=self.log)

    def messages(self):
        """The dumped transactions, as bytes, one per file."""
        out = []
        for name in sorted(os.listdir(self.dir)):
            p = os.path.join(self.dir, name)
            if name != "sink.log" and os.path.isfile(p):
                with open(p, "rb") as f:
                    out.append(f.read())
        return out

    def message_ids(self):
        """The Message-ID header of every dumped transaction."""
        ids = []
        for m in self.messages():
            for line in m.split(b"\n"):
                if line.lower().startswith(b"message-id:"):
                    ids.append(line.split(b":", 1)[1].strip().decode(errors="replace"))
                    break
        return ids

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()

    def close(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
