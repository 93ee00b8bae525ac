"""A test milter for regress/test_milter.py (Debian's python3-milter, run with /usr/bin/python3).

    /usr/bin/python3 testmilter.py SOCKET RECORDS

SOCKET is a libmilter socket spec (unix:/path); RECORDS a file where one JSON line is
appended per message at end of message (kind "eom") and per connection when it closes
(kind "close"), with what the milter saw: connection data, macros by stage, HELO,
envelope, headers, body, and every callback in order.

What it does is driven by the session, so that one milter serves every case:

  client address 127.0.0.3     REJECT at connect
  client address 127.0.0.4     TEMPFAIL at connect
  HELO reject.helo             REJECT at HELO
  MAIL FROM reject-mail@...    REJECT at MAIL
  RCPT TO reject-rcpt@...      REJECT (this recipient only)
  RCPT TO tempfail-rcpt@...    TEMPFAIL (this recipient only)
  RCPT TO code-rcpt@...        setreply 550 5.7.1 (multi-line, with a '%') and REJECT
  RCPT TO code421-rcpt@...     setreply 421 4.7.0 and TEMPFAIL (closes the session)
  RCPT TO discard@...          DISCARD (the whole message)
  RCPT TO accept@...           ACCEPT (no more milter events for the message)
  body line REJECT-BODY        REJECT in the body callback (answered at end of message)
  header X-Test-Action: ACTION at end of message, ACTION being
      reject | tempfail | discard | code | shutdown-code (421) | hang (sleeps 60 s) |
      progress (3.5 s of progress calls, then continue) | skip (SKIP after the first
      body chunk) | edits (every modification, then ACCEPT) | accept | continue (default)

Every message that reaches end of message without another action gets
`X-Test-Milter: yes` added.
"""

import json
import os
import sys
import threading
import time

import Milter

RECORDS = None
LOCK = threading.Lock()

MACROS = ("j", "_", "v", "i", "{daemon_name}", "{daemon_addr}", "{daemon_port}", "{if_addr}",
          "{if_name}", "{client_addr}", "{client_port}", "{client_name}", "{client_ptr}",
          "{auth_type}", "{auth_authen}", "{mail_addr}", "{mail_host}", "{mail_mailer}",
          "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}", "{x_custom}", "{tls_version}", "{cipher}",
          "{cipher_bits}", "{cert_subject}")


def record(obj):
    with LOCK:
        with open(RECORDS, "a") as f:
            f.write(json.dumps(obj) + "\n")


def text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return v


class TestMilter(Milter.Base):
    def __init__(self):
        self.conn = {}
        self.events = []
        self.macros = {}
        self.reset()

    def reset(self):
        self.msg = {"rcpts": [], "headers": [], "body": b"", "mail": None}
        self.action = "continue"
        self.body_reject = False
        self.chunks = 0

    def grab(self, stage):
        got = {}
        for m in MACROS:
            v = self.getsymval(m)
            if v is not None:
                got[m] = text(v)
        self.macros[stage] = got

    def connect(self, hostname, family, hostaddr):
        self.events.append("connect")
        addr = hostaddr[0] if isinstance(hostaddr, tuple) else hostaddr
        port = hostaddr[1] if isinstance(hostaddr, tuple) else None
        self.conn = {"hostname": hostname, "family": int(family), "addr": text(addr), "port": port}
        self.grab("connect")
        if addr == "127.0.0.3":
            return Milter.REJECT
        if addr == "127.0.0.4":
            return Milter.TEMPFAIL
        return Milter.CONTINUE

    def hello(self, name):
        self.events.append("helo")
        self.conn["helo"] = name
        self.grab("helo")
        if name == "reject.helo":
            return Milter.REJECT
        return Milter.CONTINUE

    def envfrom(self, f, *args):
        self.events.append("mail")
        self.reset()
        self.msg["mail"] = f
        self.msg["mail_args"] = list(args)
        self.grab("mail")
        if f.startswith("<reject-mail@"):
            return Milter.REJECT
        return Milter.CONTINUE

    def envrcpt(self, to, *args):
        self.events.append("rcpt")
        self.grab("rcpt")
        local = to.strip("<>").split("@")[0]
        if local == "reject-rcpt":
            return Milter.REJECT
        if local == "tempfail-rcpt":
            return Milter.TEMPFAIL
        if local == "code-rcpt":
            self.setreply("550", "5.7.1", "rcpt refused by test milter", "second line 100%%")
            return Milter.REJECT
        if local == "code421-rcpt":
            self.setreply("421", "4.7.0", "test milter closes")
            return Milter.TEMPFAIL  # libmilter sends a 4xx reply only with TEMPFAIL
        self.msg["rcpts"].append(to)
        if local == "discard":
            return Milter.DISCARD
        if local == "accept":
            return Milter.ACCEPT
        return Milter.CONTINUE

    def data(self):
        self.events.append("data")
        self.grab("data")
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        self.events.append("header")
        self.msg["headers"].append([name, value])
        if name.lower() == "x-test-action":
            self.action = value.strip()
        return Milter.CONTINUE

    def eoh(self):
        self.events.append("eoh")
        self.grab("eoh")
        return Milter.CONTINUE

    def body(self, chunk):
        self.events.append("body")
        self.chunks += 1
        self.msg["body"] += chunk
        if b"REJECT-BODY" in chunk:
            return Milter.REJECT
        if self.action == "skip":
            return Milter.SKIP
        return Milter.CONTINUE

    def eom(self):
        self.events.append("eom")
        self.grab("eom")
        a = self.action
        rec = {"kind": "eom", "conn": self.conn, "macros": self.macros, "action": a,
               "mail": self.msg["mail"], "rcpts": self.msg["rcpts"],
               "headers": self.msg["headers"], "chunks": self.chunks,
               "body": self.msg["body"].decode("utf-8", "surrogateescape"),
               "events": list(self.events)}
        record(rec)
        if a == "hang":
            time.sleep(60)
            return Milter.CONTINUE
        if a == "progress":
            for _ in range(7):
                time.sleep(0.5)
                self.progress()
        if a == "reject":
            return Milter.REJECT
        if a == "tempfail":
            return Milter.TEMPFAIL
        if a == "discard":
            return Milter.DISCARD
        if a == "code":
            self.setreply("554", "5.7.0", "message refused by test milter")
            return Milter.REJECT
        if a == "shutdown-code":
            self.setreply("421", "4.7.0", "test milter shuts down")
            return Milter.TEMPFAIL
        if a == "edits":
            self.addheader("X-Test-Milter", "yes")
            self.addheader("X-Folded", "first part\n\tsecond part")
            self.addheader("X-Inserted", "at the top", 0)
            self.chgheader("Subject", 1, "rewritten by the milter")
            self.chgheader("X-Remove-Me", 1, "")
            self.chgheader("X-Not-There", 1, "added by chgheader")
            self.replacebody(b"replaced body\r\nsecond line\r\n")
            self.addrcpt("<added@example.test>")
            self.delrcpt("<removed@example.test>")
            self.chgfrom("<bounce@example.test>")
            self.quarantine("held by the test milter")
            return Milter.ACCEPT
        self.addheader("X-Test-Milter", "yes")
        if a == "accept":
            return Milter.ACCEPT
        return Milter.CONTINUE

    def abort(self):
        self.events.append("abort")
        return Milter.CONTINUE

    def close(self):
        self.events.append("close")
        record({"kind": "close", "conn": self.conn, "events": list(self.events)})
        return Milter.CONTINUE


def main(argv):
    global RECORDS
    sock, RECORDS = argv[1], argv[2]
    Milter.factory = TestMilter
    Milter.runmilter("testmilter", sock, 240)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
