"""report_relay.py - the relay phase's part of bench/report.py (standard library only).

  collect_run(PHASE, NAME, RUN, DIR, DATA_DIR)
      What one server run of the relay phase left in its directory besides the blasts:
      each sink's counters (sessions, messages), which sink took the messages of which
      recipient domain (from the sinks' dumps), the test DNS server's queries by type,
      and the server's last error if nothing arrived; appended to DATA_DIR/relay-runs.tsv.
  rows(D, rows), targets(D, t), section(D)
      The rows of the results table, the targets, and the "Relay phase" section.
"""
import collections
import os
import re

from report import NAMES, failures, fmt, fr, md_table, ratio, read_tsv

SERVERS = ('smtpd-relay', 'osmtpd-relay', 'pfx-relay')
# the data phase of each (bench/run runs OpenSMTPD apart, fewer times)
PHASE = {'smtpd-relay': 'relay', 'osmtpd-relay': 'relay-osmtpd', 'pfx-relay': 'relay'}
SIZES = ((1024, '1 KiB'), (65536, '64 KiB'))
RCPT = re.compile(rb'^X-Rcpt-Args: <[^@>]*@([^>]+)>', re.M)
ERROR = re.compile(r'status=(deferred|bounced)|result=.?(TempFail|PermFail)|Failed|failed|error', re.I)


# ---------------------------------------------------------------- collect
def sink_counters(path):
    """the last complete record of smtp-sink -c: {'sess': n, 'quit': n, 'mesg': n}"""
    try:
        with open(path, 'rb') as f:
            recs = f.read().split(b'\r')[:-1]
    except OSError:
        return {}
    for rec in reversed(recs):
        kv = dict(re.findall(rb'(\w+)=(\d+)', rec))
        if b'mesg' in kv:
            return {k.decode(): int(v) for k, v in kv.items()}
    return {}


def last_error(d):
    """the server's last log line that tells of a failed delivery, or ''"""
    found = ''
    for log in ('server.log', 'maillog'):
        try:
            with open(os.path.join(d, log), errors='replace') as f:
                for line in f:
                    if ERROR.search(line):
                        found = line.strip()
        except OSError:
            pass
    return found[:300]


def collect_run(phase, name, run, d, data):
    mxfile = os.path.join(d, 'relay-mx.tsv')
    if not os.path.exists(mxfile):
        return
    primary = dict(r for r in read_tsv(mxfile) if len(r) == 2)
    out = []
    sinks = sorted(e.name[:-len('.count')] for e in os.scandir(d) if e.name.startswith('sink')
                   and e.name.endswith('.count'))
    taken = 0
    for s in sinks:
        c = sink_counters(os.path.join(d, s + '.count'))
        out += [('sessions_' + s, c.get('sess', 0)), ('messages_' + s, c.get('mesg', 0))]
        taken += c.get('mesg', 0)
    # every dump: the sink that took it (its name's prefix, sI.) and the recipient's domain
    off, domains = 0, set()
    try:
        dumps = list(os.scandir(os.path.join(d, 'Maildir', 'new')))
    except OSError:
        dumps = []
    for e in dumps:
        try:
            with open(e.path, 'rb') as f:
                m = RCPT.search(f.read(4096))
        except OSError:
            m = None
        dom = m.group(1).decode(errors='replace').lower() if m else '?'
        domains.add(dom)
        if primary.get(dom) != e.name.split('.', 1)[0]:
            off += 1
    out += [('off_mx', off), ('domains', len(domains))]
    # the DNS server's queries, after relay-aux's own readiness check
    q = collections.Counter()
    try:
        with open(os.path.join(d, 'dns.skip')) as f:
            skip = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        skip = 0
    try:
        with open(os.path.join(d, 'dns.log'), errors='replace') as f:
            for i, line in enumerate(f):
                m = re.search(r'query\[(\w+)\]', line)
                if i >= skip and m:
                    q[m.group(1)] += 1
    except OSError:
        pass
    out += [('dns_' + k, v) for k, v in sorted(q.items())]
    if taken == 0:
        out.append(('error', last_error(d) or 'no message reached a sink, no error logged'))
    with open(os.path.join(data, 'relay-runs.tsv'), 'a') as f:
        for k, v in out:
            f.write('%s\t%s\t%s\t%s\t%s\n' % (phase, name, run, k, v))


# ---------------------------------------------------------------- report
def runs(D, srv):
    """{run: {key: value}} of srv in relay-runs.tsv"""
    out = collections.OrderedDict()
    for r in D.relay_runs:
        if len(r) >= 5 and r[0] == PHASE[srv] and r[1] == srv:
            out.setdefault(r[2], {})[r[3]] = r[4]
    return out


def failed(D, srv):
    """True if every run of srv relayed nothing (then its figures are "not run")"""
    rs = runs(D, srv)
    return bool(rs) and all('error' in v for v in rs.values())


def b(D, srv, size, col):
    return None if failed(D, srv) else D.b(PHASE[srv], srv, size, col)


def mode_note(D):
    return '' if D.relay.get('smtpd_mode') == 'mx' else ' (smtpd: relay host, not by MX; see Relay phase)'


def rows(D, rows):
    """the relay phase's rows of the results table"""
    if not D.relay:
        return

    def nr(x):
        return 'not run' if x is None else fmt(x)

    def row(label, col, size):
        s, o, p = [b(D, x, size, col) for x in SERVERS]
        rows.append((label, nr(s), nr(o), nr(p), fr(ratio(s, o)), fr(ratio(s, p))))
    n = D.relay.get('domains', '?')
    for size, sl in SIZES:
        row('relay end-to-end msgs/s (until the last is taken by a sink), %s, 20 sessions, %s domains by MX%s'
            % (sl, n, mode_note(D)), 'e2e', size)
    for size, sl in SIZES:
        row('relay accepted msgs/s (smtp-source into the server), %s, 20 sessions' % sl, 'accept', size)
    for size, sl in SIZES:
        row('relay CPU s per 1000 msgs (server user+sys, all processes), %s' % sl, 'cpu1k', size)


def targets(D, t):
    """the relay phase's targets"""
    if not D.relay:
        return
    S, _, P = SERVERS
    for size, sl in SIZES:
        r = ratio(b(D, S, size, 'e2e'), b(D, P, size, 'e2e'))
        t('relay end-to-end msgs/s, %s, vs Postfix%s' % (sl, mode_note(D)), fr(r), '>= 2x',
          None if r is None else r >= 2)
    for size, sl in SIZES:
        r = ratio(b(D, S, size, 'cpu1k'), b(D, P, size, 'cpu1k'))
        t('relay CPU per message, %s, vs Postfix%s' % (sl, mode_note(D)), fr(r), '<= 0.5x',
          None if r is None else r <= 0.5)


def section(D):
    """set-up, failures and per-run values of the relay phase (markdown), or ''"""
    if not D.relay:
        return ''
    n, k = D.relay.get('domains', '?'), D.relay.get('sinks', '?')
    mx = D.relay.get('smtpd_mode') == 'mx'
    L = ['## Relay phase\n']
    L.append('- Everything runs in a private network namespace (`ip netns`, loopback only), whose '
             '`/etc/resolv.conf` names 127.0.0.53 only: dnsmasq there, authoritative for bench.test and nothing '
             'else (no upstream server). The recipient domains d1 ... d%s.bench.test each have two MX records, '
             'sink((i-1) mod %s + 1).bench.test with preference 10 and the next sink with 20; the %s '
             '`smtp-sink` receivers (Postfix\'s test server, `-c` counters, every message dumped to a file) '
             'listen on 127.0.0.2:25 ... The sinks\' addresses are also put on lo, or getaddrinfo\'s '
             'AI_ADDRCONFIG (glibc\'s, and the asr library\'s of OpenSMTPD) finds no IPv4 address but '
             '127.0.0.1 and asks no A record. Plain SMTP on both sides.' % (n, k, k))
    L.append('- Load: as thr20, 20 sessions, connections reused, but %s smtp-source processes in parallel, the '
             'Ith sending to u@dI.bench.test (smtp-source gives every message of a run the same recipient '
             'domain), with the messages and the sessions shared out (1 session each).' % n)
    L.append('- End to end: from the start of the blast until the sinks\' counters (`mesg=`, counted when a '
             'message ends with ".", right before its 250) add up to the messages sent; CPU time as in the '
             'other phases, the server\'s processes only (not the sinks, nor the DNS server). Exactly once: the '
             'sinks\' dumps, every file read (count and distinct Message-IDs), and each message at the primary '
             'MX of its domain ("off MX" below).')
    if mx:
        L.append('- **smtpd**: `action "out" relay` (MX lookups through its own resolver) and '
                 '`match from any for domain "*.bench.test" action "out"`.')
    else:
        L.append('- **smtpd**: `action "out" relay host "smtp://127.0.0.2:25"`, '
                 '`match from any for domain "*.bench.test" action "out"`: **every message to the first sink, '
                 'no DNS lookup** (`SMTPD_RELAY=host` was given). Its figures are those of a relay to a '
                 'smarthost, not of an MX relay.')
    L.append('- **OpenSMTPD**: the harness\'s set-up with `action "bench" relay` (MX lookups through its own '
             'resolver, which reads /etc/resolv.conf) and `match from any for domain "*.bench.test" action '
             '"bench"`; its default `limit mta` values.')
    L.append('- **Postfix**: the harness\'s set-up (mydestination empty, mynetworks 127.0.0.0/8, IPv4 only) plus '
             '`relayhost =`, `default_transport = smtp`, `local_transport = error:...`, '
             '`smtp_tls_security_level = none`, `smtpd_tls_security_level = none`; DNS lookups as by default.')
    L.append('- Concurrency, as each server has it by default (not tuned): smtpd opens at most 10 connections '
             'to one route (%s) and 50 in all, a connection carrying up to 100 messages; Postfix up to 20 per '
             'destination domain (`default_destination_concurrency_limit`, starting at 5), 100 smtp processes in '
             'all, and reuses a connection only while the destination has a backlog; OpenSMTPD up to 10 per MX '
             'host and 5 per route (source address and MX host), but opens no second connection on a route '
             'before the first has delivered, and a delivery that meets one of these limits looks again 5 s '
             'later: it relays in bursts, and its end-to-end rate is set by that wait more than by its work. '
             'Hence OpenSMTPD runs after the others, and fewer times (%s; a full run of it takes about 2.5 '
             'minutes).\n'
             % ('one route per domain' if mx else 'with `relay host`, one route for all',
                D.relay.get('osmtpd_runs', '?')))
    bad = [x for x in D.notrun if x.startswith('relay')]
    for srv in SERVERS:
        for run, v in runs(D, srv).items():
            if 'error' in v:
                bad.append('relay %s run %s: nothing reached a sink; the server\'s log: `%s`'
                           % (NAMES.get(srv, srv), run, v['error']))
    L += failures(bad)
    out = []
    for srv in SERVERS:
        for run, v in runs(D, srv).items():
            sinks = sorted({key.split('_', 1)[1] for key in v if key.startswith('messages_')})
            msgs = sum(int(v.get('messages_' + s, 0)) for s in sinks)
            sess = sum(int(v.get('sessions_' + s, 0)) for s in sinks)
            dns = ', '.join('%s %s' % (key[4:], v[key]) for key in sorted(v) if key.startswith('dns_')) or '0'
            off = 'n/a (relay host)' if srv == SERVERS[0] and not mx else v.get('off_mx', '-')
            out.append((NAMES.get(srv, srv), run, ' / '.join(v.get('messages_' + s, '0') for s in sinks),
                        v.get('domains', '-'), off, sess,
                        '-' if not sess else '%.1f' % (msgs / sess), dns,
                        '-' if not msgs else '%.2f' % (sum(int(v[key]) for key in v if key.startswith('dns_'))
                                                       / msgs)))
    if out:
        L.append('Per server run (both message sizes together):\n')
        L.append(md_table(['server', 'run', 'messages per sink', 'recipient domains', 'off MX', 'connections to '
                           'the sinks', 'messages per connection', 'DNS queries by type', 'DNS queries per message'],
                          out) + '\n')
    return '\n'.join(L)

