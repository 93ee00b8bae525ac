"""A PostgreSQL server of the tests: its own data directory, owned by the test user
smtpdtest1, on a free port of 127.0.0.1 of the network namespace it is started in, with
no Unix socket and no fsync; stopped (immediately) by `stop()`."""

import glob
import os
import signal
import subprocess
from pathlib import Path

from conftest import allow_traversal, as_user, ensure_user, free_port


def bindir():
    """The directory of PostgreSQL's programs, or None when it is not installed."""
    initdb = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(initdb[-1]).parent if initdb else None


class PgServer:
    def __init__(self, base, sql):
        """Creates a cluster in `base` (a new directory), starts it and runs `sql` in its
        database `postgres`; raises AssertionError with the server's log on failure."""
        self.bin = bindir()
        assert self.bin, "PostgreSQL is missing (Debian package postgresql)"
        pw = ensure_user("smtpdtest1")
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        allow_traversal(self.base)
        os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self.data, self.port = self.base / "data", free_port()
        r = self._run([str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                       "smtpdtest1", "-E", "UTF8", "--no-sync"])
        assert r.returncode == 0, r.stderr
        opts = ("-c listen_addresses=127.0.0.1 -p %d -c unix_socket_directories='' "
                "-c fsync=off" % self.port)
        r = self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-l",
                       str(self.base / "server.log"), "-w", "-t", "60", "-o", opts, "start"])
        assert r.returncode == 0, r.stderr + (self.base / "server.log").read_text(errors="replace")
        try:
            self.psql(sql)
        except AssertionError:
            self.stop()
            raise

    def _run(self, argv):
        return subprocess.run(as_user("smtpdtest1") + argv, capture_output=True, text=True,
                              timeout=120, cwd=self.base)

    def psql(self, sql):
        r = subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                            "smtpdtest1", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"],
                           input=sql, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr

    def stop(self):
        r = self._run([str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w",
                       "stop"])
        if r.returncode != 0:
            pidfile = self.data / "postmaster.pid"
            if pidfile.exists():
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)
