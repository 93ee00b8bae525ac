"""Slow lookups and spool work hold only the session that waits for them.

A shim preloaded into the daemon (LD_PRELOAD; smtpd is not setuid, so glibc honours
it) makes getpwnam(3)/getpwnam_r(3) take five seconds for one user name, as an NSS
backend (LDAP, sssd) that stalls would, or makes the creation of a rewritten incoming
message file take as long.  Meanwhile a second client must be served at once.
"""

import os
import select
import shutil
import subprocess
import time

import pytest

from conftest import accepted_id, allow_traversal, data_of
from filterlib import FilterDaemon

STALL = 5

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Marks that a stall began (mkdir: not interposed here), then sleeps. */
static void stall(void)
{
    const char *mark = getenv("SMTPD_TEST_STALL_MARK");
    if (mark)
        mkdir(mark, 0755);
    sleep(%(stall)d);
}

static int stalled_user(const char *name)
{
    const char *who = getenv("SMTPD_TEST_STALL_USER");
    return who && name && strcmp(who, name) == 0;
}

struct passwd *getpwnam(const char *name)
{
    struct passwd *(*real)(const char *) =
        (struct passwd *(*)(const char *))dlsym(RTLD_NEXT, "getpwnam");
    if (stalled_user(name))
        stall();
    return real(name);
}

int getpwnam_r(const char *name, struct passwd *pw, char *buf, size_t len,
               struct passwd **res)
{
    int (*real)(const char *, struct passwd *, char *, size_t, struct passwd **) =
        (int (*)(const char *, struct passwd *, char *, size_t, struct passwd **))
            dlsym(RTLD_NEXT, "getpwnam_r");
    if (stalled_user(name))
        stall();
    return real(name, pw, buf, len, res);
}

/* An incoming message being rewritten: a temporary file of incoming/ (a large
   message), or the message itself opened to be written over without following a
   link (a small one, rewritten in its own file). */
static int stalled_path(const char *path, int flags)
{
    size_t n = path ? strlen(path) : 0;
    int in_place = (flags & O_NOFOLLOW) && (flags & O_ACCMODE) == O_WRONLY && !(flags & O_CREAT);
    return getenv("SMTPD_TEST_STALL_REWRITE") && strstr(path, "/incoming/") &&
           ((n > 4 && strcmp(path + n - 4, ".tmp") == 0) || in_place);
}

static int open_with(const char *sym, const char *path, int flags, va_list ap)
{
    int (*real)(const char *, int, ...) = (int (*)(const char *, int, ...))dlsym(RTLD_NEXT, sym);
    mode_t mode = (flags & (O_CREAT | O_TMPFILE)) ? (mode_t)va_arg(ap, int) : 0;
    if (stalled_path(path, flags))
        stall();
    return real(path, flags, mode);
}

int open(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int r = open_with("open", path, flags, ap);
    va_end(ap);
    return r;
}

int open64(const char *path, int flags, ...)
{
    va_list ap;
    va_start(ap, flags);
    int r = open_with("open64", path, flags, ap);
    va_end(ap);
    return r;
}
""" % {"stall": STALL}


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the stalling shim (regress/packages)")
    d = tmp_path_factory.mktemp("shim")
    src, so = d / "stall.c", d / "stall.so"
    src.write_text(SHIM_C)
    r = subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-o", str(so), str(src), "-ldl"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    os.chmod(d, 0o755)
    os.chmod(so, 0o755)
    allow_traversal(d)
    return so


def stalling(shim, mark, **env):
    """A Daemon wrapper that starts smtpd with the shim preloaded."""
    def wrap(argv):
        extra = ["%s=%s" % kv for kv in sorted(env.items())]
        return ["env", "LD_PRELOAD=%s" % shim, "SMTPD_TEST_STALL_MARK=%s" % mark] + extra + argv
    return wrap


def mark_dir(tmp_path):
    """Where the shim marks the start of a stall (writable by the engine's user)."""
    d = tmp_path / "marks"
    d.mkdir()
    os.chmod(d, 0o1777)
    allow_traversal(d)
    return d / "stalled"


def wait_for(path, timeout):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, "%s never appeared" % path
        time.sleep(0.02)


def unanswered(c):
    """Whether the server has said nothing more to client `c` yet."""
    return not c.buf and not select.select([c.sock], [], [], 0)[0]


def quick_transaction(c, sender, rcpt):
    """EHLO, MAIL, RCPT, DATA and the message; returns the accepted id."""
    c.ehlo()
    c.expect("MAIL FROM:<%s>" % sender, 250, "2.1.0")
    c.expect("RCPT TO:<%s>" % rcpt, 250, "2.1.5")
    c.expect("DATA", 354)
    c.send(data_of(["Subject: quick", "", "not held"]) + b".\r\n")
    return accepted_id(c.reply())


def test_stalled_user_lookup_holds_only_its_session(make_daemon, shim, tmp_path):
    mark = mark_dir(tmp_path)
    d = make_daemon(wrapper=stalling(shim, mark, SMTPD_TEST_STALL_USER="nobody"))
    with d.client(timeout=STALL * 3) as slow, d.client() as fast:
        slow.ehlo()
        slow.expect("MAIL FROM:<a@example.test>", 250, "2.1.0")
        # A pipelined group whose first recipient's password lookup stalls.
        slow.send(b"RCPT TO:<nobody@mx.test.example>\r\n"
                  b"RCPT TO:<root@mx.test.example>\r\n"
                  b"DATA\r\n")
        wait_for(mark, STALL)
        t0 = time.monotonic()
        fast_id = quick_transaction(fast, "b@example.test", "root@mx.test.example")
        elapsed = time.monotonic() - t0
        # Served while the stalled lookup still holds the first session's reply...
        assert elapsed < 1.0, "the other session took %.2f s" % elapsed
        assert unanswered(slow), slow.buf
        assert fast.until_quit()[-1].code == 221
        # ...which then gets the right replies, in order.
        rs = slow.replies(3)
        assert [(r.code, r.esc) for r in rs] == [(250, "2.1.5"), (250, "2.1.5"), (354, "")], rs
        slow.send(data_of(["Subject: slow", "", "held"]) + b".\r\n")
        slow_id = accepted_id(slow.reply())
    msgs = {m.msgid: m for m in d.wait_messages(2)}
    assert sorted(e["rcpt"] for e in msgs[slow_id].envelopes) == [
        "nobody@mx.test.example", "root@mx.test.example"]
    assert [e["rcpt"] for e in msgs[fast_id].envelopes] == ["root@mx.test.example"]


# A small message is rewritten in its own file, a large one (over 256 KiB) in a new one.
@pytest.mark.parametrize("body_lines", [1, 5000], ids=["in-place", "new-file"])
def test_rewrite_of_an_edited_message_holds_only_its_session(make_daemon, shim, tmp_path, body_lines):
    mark = mark_dir(tmp_path)
    # The junk verdict adds X-Spam: Yes, an end-of-message header edit.
    d = FilterDaemon(make_daemon.tmp / "edits",
                     filters='filter jk phase commit match mail-from "slow@example.test" junk',
                     listen_filter="jk",
                     wrapper=stalling(shim, mark, SMTPD_TEST_STALL_REWRITE="1"))
    make_daemon.add(d)
    with d.client(timeout=STALL * 3) as slow, d.client() as fast:
        slow.ehlo()
        slow.expect("MAIL FROM:<slow@example.test>", 250, "2.1.0")
        slow.expect("RCPT TO:<a@example.test>", 250, "2.1.5")
        slow.expect("DATA", 354)
        body = ["body"] if body_lines == 1 else ["%064d" % i for i in range(body_lines)]
        slow.send(data_of(["Subject: edited", ""] + body) + b".\r\n")
        wait_for(mark, STALL)
        t0 = time.monotonic()
        fast_id = quick_transaction(fast, "fast@example.test", "b@example.test")
        elapsed = time.monotonic() - t0
        assert elapsed < 1.0, "the other session took %.2f s" % elapsed
        assert unanswered(slow), slow.buf
        slow_id = accepted_id(slow.reply())
    msgs = {m.msgid: m for m in d.wait_messages(2)}
    assert msgs[slow_id].body().startswith(b"X-Spam: Yes\nSubject: edited\n"), msgs[slow_id].data
    assert b"X-Spam" not in msgs[fast_id].data
