"""A DNS server for the tests, and a fixture that runs daemons which see only it.

`TestDNS` answers questions over UDP and TCP on ADDRESS:53 (root only) from a dict
(Debian's python3-dnspython builds the messages):

    records = {("relay.dns.test", "A"): ["127.0.0.1"],
               ("relay.dns.test", "AAAA"): ["::1"],
               ("alias.dns.test", "CNAME"): ["relay.dns.test."],
               ("dns.test", "MX"): ["10 relay.dns.test."],
               ("_25._tcp.relay.dns.test", "TLSA"): ["3 1 1 ABCD"],
               ("dns.test", "TXT"): ['"v=spf1 -all"'],
               ("1.0.0.127.in-addr.arpa", "PTR"): ["good.test."]}

Names are compared in lowercase without the final dot. A CNAME is followed in the
answer, as a recursive resolver does; a name with no record of the type asked but others
gets NODATA, an unknown name NXDOMAIN; both carry a SOA whose MINIMUM is `neg_ttl` (no
SOA when it is None). What the server does can change while it runs (attributes):

    ad              set the AD bit in answers
    truncate        UDP answers are TC=1 without records; TCP answers are whole
    rcode           "SERVFAIL" or "REFUSED": every answer is that error
    silent          no answer at all (UDP and TCP)
    wrong_id_first  each UDP answer is preceded by one with another id (and the
                    address 127.0.0.66 for A questions)
    ttl             the TTL of the records (default 60)
    delay           seconds every UDP answer waits before it is sent (default 0)
    delays          {(name, type): seconds}: the wait of those answers (over `delay`)
    hold            {(name, type)}: those UDP answers are kept until `release()`
Delayed answers wait on their own: one slow answer holds no other back.

`questions` lists what was asked, in order: (name, type, "udp"|"tcp").

The `dns_world` fixture (import it into a test module) makes servers and daemons: a
daemon runs in a private mount namespace (unshare -m) in which /etc/resolv.conf names
the servers made so far, with the `options` given, and /etc/hosts holds only localhost
(or the text given), and it logs the resolver's `dns query` lines (debug level).
"""

import heapq
import os
import random
import shutil
import socket
import struct
import threading
import time

import pytest

try:
    import dns.flags
    import dns.message
    import dns.name
    import dns.rcode
    import dns.rdatatype
    import dns.rrset
except ImportError:  # pragma: no cover - the fixture skips
    dns = None

from conftest import Daemon, DaemonFactory

# Preferred addresses of the servers; another loopback address when one is taken (a
# test run beside this one).
ADDRESSES = ["127.0.0.153", "127.0.0.154", "127.0.0.155"]
RUN_FOR = 600  # seconds a server thread lives at most
POISON = "127.0.0.66"


def _bind(kind, preferred, taken):
    """A socket of `kind` bound to port 53 of `preferred` or, when it is busy, of a
    random address of 127.53.0.0/16 that is not in `taken`."""
    candidates = [preferred] + ["127.53.%d.%d" % (random.randint(0, 255), random.randint(1, 254))
                                for _ in range(20)]
    for addr in candidates:
        if addr in taken:
            continue
        s = socket.socket(socket.AF_INET, kind)
        try:
            s.bind((addr, 53))
        except OSError:
            s.close()
            continue
        return s, addr
    raise RuntimeError("no loopback address free for a DNS server")


class TestDNS:
    __test__ = False  # not a test class

    def __init__(self, records=None, addr=ADDRESSES[0], taken=(), ad=False, truncate=False,
                 rcode=None, silent=False, wrong_id_first=False, ttl=60, neg_ttl=300,
                 delay=0.0, delays=None, hold=()):
        self.records = {(n.lower().rstrip("."), t.upper()): v for (n, t), v in (records or {}).items()}
        self.ad = ad
        self.truncate = truncate
        self.rcode = rcode
        self.silent = silent
        self.wrong_id_first = wrong_id_first
        self.ttl = ttl
        self.neg_ttl = neg_ttl
        self.delay = delay
        self.delays = {(n.lower().rstrip("."), t.upper()): v for (n, t), v in (delays or {}).items()}
        self.hold = {(n.lower().rstrip("."), t.upper()) for n, t in hold}
        self.held = []  # (wire, peer) kept until release()
        self.later = []  # heap of (when, seq, wire, peer)
        self.later_cv = threading.Condition()
        self.seq = 0
        self.questions = []
        self.lock = threading.Lock()
        self.udp, self.addr = _bind(socket.SOCK_DGRAM, addr, taken)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((self.addr, 53))
        self.tcp.listen(8)
        for s in (self.udp, self.tcp):
            s.settimeout(0.2)
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=f, daemon=True)
                        for f in (self._udp, self._tcp, self._sender)]
        for t in self.threads:
            t.start()

    def close(self):
        self.stop.set()
        with self.later_cv:
            self.later_cv.notify()
        for t in self.threads:
            t.join(5)
        self.udp.close()
        self.tcp.close()

    def asked(self, name, qtype, transport=None):
        """How many times (`name`, `qtype`) was asked (over `transport`, if given)."""
        with self.lock:
            return sum(1 for n, t, tr in self.questions
                       if n == name and t == qtype and transport in (None, tr))

    def _answer(self, query, transport):
        """The answer to `query` (a dns.message), or None to stay silent."""
        q = query.question[0]
        name = q.name.to_text(omit_final_dot=True).lower()
        qtype = dns.rdatatype.to_text(q.rdtype)
        with self.lock:
            self.questions.append((name, qtype, transport))
        if self.silent:
            return None
        r = dns.message.make_response(query)
        if self.rcode:
            r.set_rcode(dns.rcode.from_text(self.rcode))
            return r
        if self.ad:
            r.flags |= dns.flags.AD
        if transport == "udp" and self.truncate:
            r.flags |= dns.flags.TC
            return r
        owner = name
        for _ in range(10):
            target = self.records.get((owner, "CNAME"))
            if qtype == "CNAME" or not target:
                break
            r.answer.append(dns.rrset.from_text(owner + ".", self.ttl, "IN", "CNAME", *target))
            owner = target[0].lower().rstrip(".")
        values = self.records.get((owner, qtype))
        if values:
            r.answer.append(dns.rrset.from_text(owner + ".", self.ttl, "IN", qtype, *values))
            return r
        if not any(n == owner for n, _ in self.records):
            r.set_rcode(dns.rcode.NXDOMAIN)
        if self.neg_ttl is not None:
            r.authority.append(dns.rrset.from_text(
                "test.", 3600, "IN", "SOA", "ns.test. hostmaster.test. 1 3600 600 86400 %d" % self.neg_ttl))
        return r

    def _udp(self):
        deadline = time.monotonic() + RUN_FOR
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                data, peer = self.udp.recvfrom(4096)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - garbage is not answered
                continue
            r = self._answer(query, "udp")
            if r is None:
                continue
            if self.wrong_id_first:
                fake = dns.message.make_response(query)
                fake.id = (query.id + 1) & 0xFFFF
                q = query.question[0]
                if q.rdtype == dns.rdatatype.A:
                    fake.answer.append(dns.rrset.from_text(q.name, self.ttl, "IN", "A", POISON))
                self.udp.sendto(fake.to_wire(), peer)
            q = query.question[0]
            key = (q.name.to_text(omit_final_dot=True).lower(), dns.rdatatype.to_text(q.rdtype))
            if key in self.hold:
                with self.lock:
                    self.held.append((r.to_wire(max_size=65535), peer))
                continue
            wait = self.delay + self.delays.get(key, 0)
            if wait > 0:
                with self.later_cv:
                    self.seq += 1
                    heapq.heappush(self.later, (time.monotonic() + wait, self.seq,
                                                r.to_wire(max_size=65535), peer))
                    self.later_cv.notify()
                continue
            self.udp.sendto(r.to_wire(max_size=65535), peer)

    def release(self):
        """Sends the answers held so far; answers `hold` no more."""
        with self.lock:
            held, self.held, self.hold = self.held, [], set()
        for wire, peer in held:
            self.udp.sendto(wire, peer)

    def _sender(self):
        """Sends the delayed UDP answers when their time comes."""
        while not self.stop.is_set():
            with self.later_cv:
                if not self.later:
                    self.later_cv.wait(0.2)
                    continue
                when, _, wire, peer = self.later[0]
                left = when - time.monotonic()
                if left > 0:
                    self.later_cv.wait(left)
                    continue
                heapq.heappop(self.later)
            try:
                self.udp.sendto(wire, peer)
            except OSError:
                return

    def _tcp(self):
        deadline = time.monotonic() + RUN_FOR
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                c, _ = self.tcp.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                return
            with c:
                c.settimeout(5)
                try:
                    head = self._read(c, 2)
                    query = dns.message.from_wire(self._read(c, struct.unpack("!H", head)[0]))
                except Exception:  # noqa: BLE001 - garbage is not answered
                    continue
                r = self._answer(query, "tcp")
                if r is not None:
                    w = r.to_wire(max_size=65535)
                    c.sendall(struct.pack("!H", len(w)) + w)

    @staticmethod
    def _read(c, n):
        b = b""
        while len(b) < n:
            got = c.recv(n - len(b))
            if not got:
                raise ValueError("short read")
            b += got
        return b


def can_run():
    """Why the fixture cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (port 53 and a private mount namespace)"
    if not shutil.which("unshare"):
        return "unshare(1) not installed (util-linux)"
    if dns is None:
        return "python3-dnspython not installed"
    return None


class DnsWorld:
    """Test DNS servers and daemons that see only them (see the module's text)."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.servers = []
        self.daemons = DaemonFactory(tmp_path)
        self.extra_addresses = []  # nameservers that are no TestDNS (dnsmasq)
        os.chmod(tmp_path, 0o755)

    def server(self, records=None, **modes):
        """A new TestDNS at the next preferred address (or a free one)."""
        taken = [s.addr for s in self.servers] + self.extra_addresses
        pref = next((a for a in ADDRESSES if a not in taken), ADDRESSES[0])
        s = TestDNS(records, addr=pref, taken=taken, **modes)
        self.servers.append(s)
        return s

    def wrapper(self, name, options="", hosts=None, search=None):
        """An argv wrapper for Daemon: unshare -m, bind mounts of resolv.conf (the
        servers made so far, `search` and `options` lines) and hosts, and the
        resolver's debug log lines."""
        resolv = self.tmp / ("%s.resolv.conf" % name)
        servers = [s.addr for s in self.servers] + self.extra_addresses
        text = "".join("nameserver %s\n" % a for a in servers)
        if search:
            text += "search %s\n" % search
        if options:
            text += "options %s\n" % options
        resolv.write_text(text)
        hostsf = self.tmp / ("%s.hosts" % name)
        hostsf.write_text(hosts if hosts is not None else "127.0.0.1 localhost\n::1 localhost\n")
        for f in (resolv, hostsf):
            os.chmod(f, 0o644)

        def wrap(argv):
            cmd = ("mount --bind '%s' /etc/resolv.conf && mount --bind '%s' /etc/hosts && "
                   "RUST_LOG=info,smtpd::dns=debug exec %s" % (
                       resolv, hostsf, " ".join("'%s'" % a for a in argv)))
            return ["unshare", "-m", "--propagation", "private", "sh", "-c", cmd]

        return wrap

    def daemon(self, cls=Daemon, options="", hosts=None, search=None, start=True, **kw):
        """A daemon of class `cls` (Daemon or a subclass) under the wrapper, started."""
        name = kw.pop("name", self.daemons.next_name())
        wrap = self.wrapper(name, options, hosts, search)
        return self.daemons.add(cls(self.tmp / name, name=name, wrapper=wrap, **kw), start)

    def close(self):
        self.daemons.cleanup()
        for s in self.servers:
            s.close()


@pytest.fixture
def dns_world(tmp_path):
    why = can_run()
    if why:
        pytest.skip(why)
    w = DnsWorld(tmp_path)
    yield w
    w.close()
