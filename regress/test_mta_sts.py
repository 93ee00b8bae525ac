"""MTA-STS (RFC 8461) for MX delivery: the `_mta-sts` TXT record in the test DNS
server, the policy served over HTTPS by a Python server on port 443 of a 127.0.0.x
address, with a certificate for mta-sts.DOMAIN from the test CA, which the relay
action trusts through its `ca`.

Like test_mx.py, everything runs in a private network namespace (regress/netns.py)
whose only nameserver is the test DNS server; nothing leaves it.
"""

import http.server
import re
import ssl
import threading
import time

import pytest

import tlscerts
from conftest import wait_until
from test_mx import net, send  # noqa: F401 - the fixture is used by name
from threadserver import ThreadedServer

WEB = "127.0.0.80"  # the policy server
NO_WEB = "127.0.0.81"  # nothing listens there
DOMAINS = ["enf.test", "good.test", "badcert.test", "testing.test", "unlisted.test",
           "cache.test", "nofetch.test", "shared.test"]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    p = tlscerts.Pki(tmp_path_factory.mktemp("stspki"))
    p.web = tlscerts.make_leaf(p.dir, "web", "/CN=mta-sts", san=["mta-sts." + d for d in DOMAINS])
    p.exchangers = tlscerts.make_leaf(p.dir, "exch", "/CN=mx.good.test",
                                      san=["mx." + d for d in DOMAINS])
    return p


class PolicyServer:
    """HTTPS on ADDR:443: GET /.well-known/mta-sts.txt answers the policy of the domain
    whose mta-sts host was asked (`policies`), after `delay` seconds; `requests` lists
    the hosts asked, in order."""

    def __init__(self, addr, cert, key, policies):
        self.policies = dict(policies)
        self.requests = []
        self.delay = 0.0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server name
                host = (self.headers.get("Host") or "").split(":")[0].lower()
                outer.requests.append(host)
                if outer.delay:
                    time.sleep(outer.delay)
                domain = host[len("mta-sts."):] if host.startswith("mta-sts.") else None
                policy = outer.policies.get(domain)
                if self.path != "/.well-known/mta-sts.txt" or policy is None:
                    self.send_error(404)
                    return
                body = policy.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.httpd = http.server.ThreadingHTTPServer((addr, 443), Handler)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def web(net, pki):  # noqa: F811 - the fixture of test_mx
    servers = []

    def make(policies):
        s = PolicyServer(WEB, pki.web[0], pki.web[1], policies)
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.close()


def policy(mode, mx, max_age=86400):
    return "version: STSv1\r\nmode: %s\r\n%smax_age: %d\r\n" % (
        mode, "".join("mx: %s\r\n" % m for m in mx), max_age)


def records(net, domain, mx_host, mx_addr, sts_id="1", web_addr=WEB):  # noqa: F811
    """DNS of `domain`: its MX, the exchanger's address, the _mta-sts TXT with
    `sts_id` (none when None), and the policy host's address."""
    txt = {} if sts_id is None else {"_mta-sts." + domain: ['"v=STSv1; id=%s;"' % sts_id]}
    net.records(mx={domain: ["10 %s." % mx_host]},
                a={mx_host: [mx_addr], "mta-sts." + domain: [web_addr]},
                txt=txt)


def sender(net, pki, rules=None):  # noqa: F811
    """The daemon under test: relays by MX, trusting the test CA (`ca testca`)."""
    extra = 'ca testca cert "%s"\n' % pki.ca
    if rules:
        return net.world.daemon(rules=rules, extra=extra, deliver=True)
    return net.sender(relay="ca testca", extra=extra)


def receiver(net, pki, addr, domains, good=True):  # noqa: F811
    """A TLS receiver whose certificate is valid for mx.DOMAIN of every test domain
    (`good`), or only for mx.test.example."""
    cert, key = pki.exchangers if good else pki.mx
    extra = 'pki rx cert "%s"\npki rx key "%s"\n' % (cert, key)
    return net.receiver(addr, domains, listen_opts="tls pki rx", extra=extra)


def test_enforce_defers_when_no_exchanger_matches(net, pki, web):  # noqa: F811
    records(net, "enf.test", "mx.elsewhere.test", "127.0.0.2")
    # A listener that only counts connections (it serves none).
    listener = ThreadedServer(port=25, host="127.0.0.2", max_conns=0)
    try:
        w = web({"enf.test": policy("enforce", ["mx.enf.test", "*.enf.test"])})
        d = sender(net, pki)
        send(d, ["bob@enf.test"], "enf")
        assert d.wait_log(r'result=TempFail .*stat="451 4\.7\.5 MTA-STS: no exchanger of '
                          r'enf\.test matches its policy', 20), d.log()[-3000:]
        assert w.requests == ["mta-sts.enf.test"]
        assert d.wait_log(r"mta-sts policy domain=enf\.test id=1 mode=enforce max_age=86400 "
                         r"mx=mx\.enf\.test,\*\.enf\.test", 15), d.log()[-3000:]
        # The exchanger outside the policy was never connected to.
        assert listener.conns == 0
        assert "host=mx.elsewhere.test" not in d.log()
        assert net.dns.asked("_mta-sts.enf.test", "TXT") == 1
    finally:
        listener.close()


def test_enforce_delivers_to_a_listed_exchanger_verified_by_pkix(net, pki, web):  # noqa: F811
    records(net, "good.test", "mx.good.test", "127.0.0.2")
    rx = receiver(net, pki, "127.0.0.2", ["good.test"])
    web({"good.test": policy("enforce", ["mx.good.test"])})
    d = sender(net, pki)
    send(d, ["bob@good.test"], "good")
    rx.wait_messages(1, timeout=15)
    assert d.wait_log(r"mta transaction host=mx\.good\.test address=127\.0\.0\.2:25 "
                     r"tls=TLSv1\.[23]:\S+:\d+ verified=pkix policy=mta-sts", 15), \
        d.log()[-3000:]
    out = d.ctl("show mta-sts")
    assert re.search(r"^good\.test mode=enforce id=1 max_age=86400 expires=\d+s mx=mx\.good\.test$",
                     out, re.M), out


def test_enforce_defers_a_certificate_not_valid_for_the_exchanger(net, pki, web):  # noqa: F811
    records(net, "badcert.test", "mx.badcert.test", "127.0.0.2")
    rx = receiver(net, pki, "127.0.0.2", ["badcert.test"], good=False)
    web({"badcert.test": policy("enforce", ["mx.badcert.test"])})
    d = sender(net, pki)
    send(d, ["bob@badcert.test"], "badcert")
    assert d.wait_log(r"result=TempFail", 20), d.log()[-3000:]
    assert d.wait_log(r'mta disconnected host=mx\.badcert\.test .*reason="TLS: invalid peer '
                     r'certificate: .*valid for none of: mx\.badcert\.test', 15), d.log()[-3000:]
    # Never in plain text instead.
    time.sleep(0.5)
    assert rx.messages() == []
    assert not re.search(r"mta transaction host=mx\.badcert\.test", d.log())


def test_testing_mode_delivers_and_reports(net, pki, web):  # noqa: F811
    # testing.test: its exchanger is listed, its certificate is not for its name;
    # unlisted.test: its exchanger is not listed.
    net.records(mx={"testing.test": ["10 mx.testing.test."],
                    "unlisted.test": ["10 mx.other.test."]},
                a={"mx.testing.test": ["127.0.0.2"], "mx.other.test": ["127.0.0.3"],
                   "mta-sts.testing.test": [WEB], "mta-sts.unlisted.test": [WEB]},
                txt={"_mta-sts.testing.test": ['"v=STSv1; id=t1;"'],
                     "_mta-sts.unlisted.test": ['"v=STSv1; id=u1;"']})
    rx1 = receiver(net, pki, "127.0.0.2", ["testing.test"], good=False)
    rx2 = receiver(net, pki, "127.0.0.3", ["unlisted.test"])
    web({"testing.test": policy("testing", ["mx.testing.test"]),
         "unlisted.test": policy("testing", ["mx.unlisted.test"])})
    d = sender(net, pki)
    send(d, ["bob@testing.test"], "testing")
    send(d, ["bob@unlisted.test"], "unlisted")
    rx1.wait_messages(1, timeout=15)
    rx2.wait_messages(1, timeout=15)
    assert wait_until(lambda: len(re.findall(r"mta transaction ", d.log())) >= 2, 15), \
        d.log()[-3000:]
    log = d.log()
    assert re.search(r'mta sts-testing host=mx\.testing\.test address=127\.0\.0\.2:25 '
                     r'tls=TLSv1\.[23]:\S+ verified=no policy=opportunistic reason="the '
                     r'certificate does not pass PKIX for mx\.testing\.test"', log), log[-3000:]
    assert re.search(r'mta sts-testing host=mx\.other\.test address=127\.0\.0\.3:25 '
                     r'reason="not an exchanger of the policy of unlisted\.test"', log), log[-3000:]
    assert re.search(r"mta transaction host=mx\.testing\.test .* verified=no policy=opportunistic",
                     log), log[-3000:]
    assert len(re.findall(r"mta sts-testing", log)) == 2, log[-3000:]


def sessions_ended(d, host, n):
    """Waits until `n` outgoing sessions to `host` ended (a message sent after that
    opens a session of its own), bounded."""
    return wait_until(lambda: d.log().count("mta disconnected host=%s " % host) >= n, 10)


def test_the_cached_policy_serves_until_the_id_changes(net, pki, web):  # noqa: F811
    net.dns.ttl = 0  # every session looks at the TXT record again
    records(net, "cache.test", "mx.cache.test", "127.0.0.2", sts_id="1")
    rx = receiver(net, pki, "127.0.0.2", ["cache.test"])
    w = web({"cache.test": policy("enforce", ["mx.cache.test"])})
    d = sender(net, pki)
    send(d, ["bob@cache.test"], "cache1")
    rx.wait_messages(1, timeout=15)
    assert sessions_ended(d, "mx.cache.test", 1), d.log()[-3000:]
    send(d, ["bob@cache.test"], "cache2")
    rx.wait_messages(2, timeout=15)
    assert sessions_ended(d, "mx.cache.test", 2), d.log()[-3000:]
    assert net.dns.asked("_mta-sts.cache.test", "TXT") == 2
    assert w.requests == ["mta-sts.cache.test"], "the second message used the cached policy"
    cached = (d.spool_root() / "sts" / "cache.test").read_text()
    assert cached.startswith("fetched ") and "\nid 1\n\n" in cached, cached
    # A new id: fetched again.
    w.policies["cache.test"] = policy("enforce", ["mx.cache.test", "mx2.cache.test"], 600)
    records(net, "cache.test", "mx.cache.test", "127.0.0.2", sts_id="2")
    send(d, ["bob@cache.test"], "cache3")
    rx.wait_messages(3, timeout=15)
    assert sessions_ended(d, "mx.cache.test", 3), d.log()[-3000:]
    assert w.requests == ["mta-sts.cache.test"] * 2
    assert d.wait_log(r"mta-sts policy domain=cache\.test id=2 mode=enforce max_age=600", 15), d.log()[-3000:]
    assert "id=2 max_age=600" in d.ctl("show mta-sts")
    # After a restart the policy comes from the spool: no fetch.
    d.stop()
    d.start()
    send(d, ["bob@cache.test"], "cache4")
    rx.wait_messages(4, timeout=15)
    assert w.requests == ["mta-sts.cache.test"] * 2
    assert re.search(r"mta transaction host=mx\.cache\.test .* verified=pkix policy=mta-sts",
                     d.log().split("=== start")[-1]), d.log()[-3000:]


def test_a_failed_fetch_means_no_policy(net, pki):  # noqa: F811
    records(net, "nofetch.test", "mx.nofetch.test", "127.0.0.2", web_addr=NO_WEB)
    rx = receiver(net, pki, "127.0.0.2", ["nofetch.test"], good=False)
    d = sender(net, pki)
    send(d, ["bob@nofetch.test"], "nofetch")
    rx.wait_messages(1, timeout=15)
    assert d.wait_log(r"mta transaction host=mx\.nofetch\.test", 15), d.log()[-3000:]
    log = d.log()
    assert re.search(r'mta-sts fetch-failed domain=nofetch\.test id=1 policy=none reason="'
                     r'127\.0\.0\.81:443: ', log), log[-3000:]
    assert re.search(r"mta transaction host=mx\.nofetch\.test .* policy=opportunistic", log), \
        log[-3000:]
    assert d.ctl("show mta-sts").strip() == ""


def test_sessions_to_a_domain_share_one_fetch(net, pki, web):  # noqa: F811
    # Two relay actions: two routes, two sessions to shared.test at once, while the
    # policy server takes its time.
    records(net, "shared.test", "mx.shared.test", "127.0.0.2")
    rx = receiver(net, pki, "127.0.0.2", ["shared.test"])
    w = web({"shared.test": policy("enforce", ["mx.shared.test"])})
    w.delay = 1.0
    rules = ('action "a1" relay ca testca\naction "a2" relay ca testca\n'
             'match from mail-from "a1@origin.test" for any action "a1"\n'
             'match from any for any action "a2"\n')
    d = sender(net, pki, rules=rules)
    send(d, ["bob@shared.test"], "shared1", sender="a1@origin.test")
    send(d, ["bob@shared.test"], "shared2", sender="a2@origin.test")
    rx.wait_messages(2, timeout=20)
    assert w.requests == ["mta-sts.shared.test"]
    assert wait_until(lambda: len(re.findall(r"mta transaction .* verified=pkix policy=mta-sts", d.log())) == 2, 5), \
        d.log()[-3000:]
