"""10,000 messages to 100 domains over 3 receivers, one receiver killed in the middle:
every message reaches a receiver, none is lost, and the duplicates (messages a receiver
took whole whose 250 never came back) are counted and bounded by the connections that
were open to the receiver when it died.

Each domain has two exchangers, two of the three receivers (Postfix's smtp-sink,
dumping every transaction to a file), so that the mail of the dead one goes to the
other. Runs in a private network namespace with the test DNS server (see test_mx.py).
"""

import os
import signal
import threading
import time

import pytest

from conftest import SMTPRaw, wait_until
from test_mx import net_for

MESSAGES = 10000
DOMAINS = 100
THREADS = 10
RECEIVERS = ["127.0.0.21", "127.0.0.22", "127.0.0.23"]
END = b"END-OF-MESSAGE"


@pytest.fixture
def net(tmp_path):
    yield from net_for(tmp_path)


def complete_ids(sink):
    """Message-IDs of the transactions a sink took whole (the marker line is the last
    of every message: a dump cut by the kill has none)."""
    ids = []
    for m in sink.messages():
        if END not in m:
            continue
        for line in m.split(b"\n"):
            if line.lower().startswith(b"message-id:"):
                ids.append(line.split(b":", 1)[1].strip().decode())
                break
    return ids


def test_ten_thousand_messages_and_a_receiver_killed(net):
    mx, a = {}, {}
    for i, addr in enumerate(RECEIVERS):
        a["rx%d.load.test" % i] = [addr]
    for d in range(DOMAINS):
        first, second = d % 3, (d + 1) % 3
        mx["d%d.load.test" % d] = ["10 rx%d.load.test." % first, "20 rx%d.load.test." % second]
    net.records(mx=mx, a=a)
    sinks = [net.sink(addr) for addr in RECEIVERS]
    d = net.sender()

    sent = []
    lock = threading.Lock()
    errors = []

    def client(t):
        mine = list(range(t, MESSAGES, THREADS))
        try:
            # 50 messages a session: the server's max-mails is 100.
            for start in range(0, len(mine), 50):
                with SMTPRaw(d.port, timeout=30) as c:
                    c.ehlo()
                    for n in mine[start:start + 50]:
                        mid = "m%05d@origin.test" % n
                        body = ("Subject: load %d\r\nMessage-ID: <%s>\r\n\r\nmessage %d\r\n"
                                "%s\r\n" % (n, mid, n, END.decode())).encode()
                        c.send_message("alice@origin.test",
                                       ["u%d@d%d.load.test" % (n, n % DOMAINS)], body)
                        with lock:
                            sent.append("<%s>" % mid)
                    c.cmd("QUIT")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    # Kill the first receiver once a third of the mail arrived somewhere.
    assert wait_until(lambda: sum(len(complete_ids(s)) for s in sinks) >= MESSAGES // 3, 120)
    victim = sinks[0]
    hosts = d.ctl("show hosts") or ""
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(10)
    killed_at = time.monotonic()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert len(sent) == MESSAGES

    # Deferred mail (connections cut after MAIL) is retried now rather than in minutes.
    def done():
        if d.ctl("show queue").strip() == "":
            return True
        d.ctl("schedule all")
        return False

    assert wait_until(done, 300, interval=2), d.ctl("show queue")[:2000]
    got = [i for s in sinks for i in complete_ids(s)]
    counts = {}
    for i in got:
        counts[i] = counts.get(i, 0) + 1
    missing = set(sent) - set(counts)
    dups = {i: n for i, n in counts.items() if n > 1}
    print("delivered %d, distinct %d, duplicates %d, at the killed receiver %d, "
          "%.1f s after the kill; hosts before: %s"
          % (len(got), len(counts), sum(n - 1 for n in dups.values()),
             len(complete_ids(victim)), time.monotonic() - killed_at, hosts.strip()))
    assert not missing, sorted(missing)[:20]
    assert set(counts) == set(sent)
    # A duplicate is a message the dead receiver took whole before its 250 went out:
    # at most one per connection open to it (max-conn-per-host, 10 by default).
    assert sum(n - 1 for n in dups.values()) <= 10, dups
