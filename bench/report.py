#!/usr/bin/python3
"""report.py - the bookkeeping of bench/run (standard library only).

  report.py collect PHASE PEERS_WORK_DIR DATA_DIR
      Reads the work directory of one peers.sh run (kept with -k): the probe.log of every
      server run (bench/probe.py), the exactly-once check of its Maildir, the handshake
      test's handshakes.tsv (bench/tls_conns.py), what the relay phase's sinks and DNS
      server saw (bench/report_relay.py), peers.sh's own results.tsv; appends to
      DATA_DIR/{blasts,verify,handshakes,relay-runs,peers}.tsv.
  report.py report DATA_DIR OUT
      Medians over the repetitions, the table, the targets; writes OUT (markdown) and
      prints the table and the targets.  In an existing OUT, everything after the line
      KEEP_MARK (hand-written analysis) is kept.
  report.py report DATA_DIR OUT HISTORY
      The same, then adds the run's row of headline ratios to HISTORY (bench/history.py;
      bench/run gives bench/HISTORY.md after a full run that wrote bench/RESULTS.md).
"""
import collections
import glob
import importlib.util
import json
import os
import statistics
import sys

sys.dont_write_bytecode = True  # report.py loads probe.py: no __pycache__ in bench/

KEEP_MARK = '<!-- everything below this line is kept by bench/run when it rewrites this file -->'
HERE = os.path.dirname(os.path.abspath(__file__))

NAMES = {
    'smtpd': 'smtpd', 'osmtpd': 'OpenSMTPD', 'pfx': 'Postfix', 'pfx-1100': 'Postfix',
    'smtpd-filter-rust': 'smtpd + filter-pass (Rust)',
    'smtpd-filter-py': 'smtpd + filter-python passfilter.py',
    'osmtpd-filter': 'OpenSMTPD + proc-exec osmtpd_passfilter.py',
    'pfx-milter': 'Postfix + milter pf_passmilter.py',
    'smtpd-tls': 'smtpd (TLS)', 'osmtpd-tls': 'OpenSMTPD (TLS)', 'pfx-tls': 'Postfix (TLS)',
    'smtpd-relay': 'smtpd (relay)', 'osmtpd-relay': 'OpenSMTPD (relay)', 'pfx-relay': 'Postfix (relay)',
    'smtpd-dkim': 'smtpd + filter-dkim (RSA)', 'smtpd-dkim-ed': 'smtpd + filter-dkim (Ed25519)',
    'osmtpd-dkim': 'OpenSMTPD + filter-dkimsign', 'pfx-dkim': 'Postfix + opendkim',
    'smtpd-dkimsign': 'smtpd + filter-dkimsign', 'smtpd-milter-dkim': 'smtpd + filter-milter + opendkim',
    'smtpd-bdat': 'smtpd (BDAT)',
    'smtpd-dnsbl': 'smtpd + filter-dnsbl', 'smtpd-dnsbl-sync': 'smtpd + filter-dnsbl -s (synchronous)',
    'pfx-dnsbl': 'Postfix + reject_rbl_client',
    'smtpd-pgsql': 'smtpd (PostgreSQL)', 'osmtpd-pgsql': 'OpenSMTPD (PostgreSQL)', 'pfx-pgsql': 'Postfix (PostgreSQL)',
}
TLS_SERVERS = ('smtpd-tls', 'osmtpd-tls', 'pfx-tls')


# ---------------------------------------------------------------- collect
def load_probe():
    spec = importlib.util.spec_from_file_location('probe', os.path.join(HERE, 'probe.py'))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


# The phases with a module of their own, bench/report_PHASE.py, in the report's order:
# each has rows(D, rows) and section(D), some targets(D, t) and collect_run(...). They
# import from this module, so they are imported when first used.
PARTS = ('relay', 'dkim', 'bdat', 'dnsbl', 'pgsql')


def parts(*names):
    """the phase modules named (all of PARTS when none is), in that order"""
    return [importlib.import_module('report_' + n) for n in names or PARTS]


def parse_probe_log(path):
    blasts, cur, last_c = [], None, None
    with open(path) as f:
        for line in f:
            w = line.split()
            if not w:
                continue
            if w[0] == 'S':
                cur = {'size': int(w[2]), 'm': int(w[3]), 'sess': int(w[4]), 'ts': float(w[1]),
                       'cpu0': float(w[5]), 'base': int(w[6]), 't0': None, 't1': None, 'rc': None,
                       'tE': None, 'cE': None, 'cpuE': None, 'lastC': None,
                       'busy': float('nan'), 'iowait': float('nan'), 'ccpu': float('nan')}
                blasts.append(cur)
            elif w[0] == 'A' and cur:
                cur['t0'], cur['t1'], cur['rc'] = float(w[1]), float(w[2]), int(w[3])
                if len(w) >= 7:
                    cur['busy'], cur['iowait'], cur['ccpu'] = float(w[4]), float(w[5]), float(w[6])
            elif w[0] == 'E' and cur:
                cur['tE'], cur['cE'], cur['cpuE'] = float(w[1]), int(w[2]), float(w[4])
            elif w[0] == 'C':
                last_c = (float(w[1]), int(w[2]), float(w[3]))
                if cur:
                    cur['lastC'] = last_c
    return blasts


def collect(phase, work, data):
    os.makedirs(data, exist_ok=True)
    probe = load_probe()
    bl = open(os.path.join(data, 'blasts.tsv'), 'a')
    ve = open(os.path.join(data, 'verify.tsv'), 'a')
    for d in sorted(glob.glob(os.path.join(work, '*.r[0-9]*'))):
        if not os.path.isdir(d):
            continue
        name, run = os.path.basename(d).rsplit('.r', 1)
        hs = os.path.join(d, 'handshakes.tsv')
        if os.path.exists(hs):
            with open(hs) as f, open(os.path.join(data, 'handshakes.tsv'), 'a') as out:
                for ln in f:
                    k, _, v = ln.rstrip('\n').partition('\t')
                    out.write('%s\t%s\t%s\t%s\t%s\n' % (phase, name, run, k, v))
        for part in parts('relay', 'dkim'):
            part.collect_run(phase, name, run, d, data)
        plog = os.path.join(d, 'probe.log')
        if not os.path.exists(plog):
            continue
        for b in parse_probe_log(plog):
            if b['t0'] is None:
                continue
            acc = b['m'] / (b['t1'] - b['t0'])
            if b['tE'] is not None:
                delivered, e2e = b['cE'] - b['base'], b['m'] / (b['tE'] - b['t0'])
                cpu = b['cpuE'] - b['cpu0']
            else:
                lc = b['lastC'] or (b['t1'], b['base'], b['cpu0'])
                delivered, e2e, cpu = lc[1] - b['base'], float('nan'), float('nan')
            cpu1k = cpu / delivered * 1000 if delivered > 0 else float('nan')
            errs = 0
            try:
                with open(os.path.join(d, 'source.%d.log' % b['size'])) as f:
                    errs = sum(1 for ln in f if ln.strip())
            except OSError:
                pass
            bl.write('\t'.join(str(x) for x in (
                phase, name, run, b['size'], b['m'], b['sess'], '%.3f' % (b['t1'] - b['t0']),
                b['rc'], errs, '%.1f' % acc, '%.1f' % e2e, delivered, '%.2f' % cpu, '%.3f' % cpu1k,
                '%.3f' % b['busy'], '%.3f' % b['iowait'], '%.3f' % (b['ccpu'] / b['m'] * 1000))) + '\n')
        mt = os.path.join(d, 'mem.txt')
        if os.path.exists(mt):
            with open(mt) as f, open(os.path.join(data, 'memmap.tsv'), 'a') as mm:
                for ln in f:
                    if ln.strip():
                        mm.write('%s\t%s\t%s\t%s\n' % (phase, name, run, ln.strip()))
        # exactly-once check of everything this server run received
        if os.path.isdir(os.path.join(d, 'Maildir')):
            import io
            import contextlib
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                probe.cmd_verify(d)
            ve.write('%s\t%s\t%s\t%s\n' % (phase, name, run, buf.getvalue().strip()))
    bl.close()
    ve.close()
    res = os.path.join(work, 'results.tsv')
    if os.path.exists(res):
        with open(res) as f, open(os.path.join(data, 'peers.tsv'), 'a') as out:
            for line in f:
                out.write(phase + '\t' + line)


# ---------------------------------------------------------------- report
def read_tsv(path):
    try:
        with open(path) as f:
            return [ln.rstrip('\n').split('\t') for ln in f if ln.strip()]
    except OSError:
        return []


def med(v):
    v = [x for x in v if x == x]  # drop NaN
    return statistics.median(v) if v else None


def fmt(x, unit=''):
    if x is None:
        return '-'
    if isinstance(x, str):
        return x
    if abs(x) >= 100:
        s = '%.0f' % x
    elif abs(x) >= 10:
        s = '%.1f' % x
    else:
        s = '%.2f' % x
    return s + unit


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fr(x):
    return '-' if x is None else '%.2fx' % x


class Data:
    def __init__(self, d):
        self.dir = d
        self.meta = dict(r for r in read_tsv(os.path.join(d, 'meta.tsv')) if len(r) == 2)
        self.blasts = read_tsv(os.path.join(d, 'blasts.tsv'))
        self.verify = read_tsv(os.path.join(d, 'verify.tsv'))
        self.peers = read_tsv(os.path.join(d, 'peers.tsv'))
        self.sizes = dict(r for r in read_tsv(os.path.join(d, 'sizes.tsv')) if len(r) == 2)
        self.commands = read_tsv(os.path.join(d, 'commands.tsv'))
        self.memmap = read_tsv(os.path.join(d, 'memmap.tsv'))
        self.phases = read_tsv(os.path.join(d, 'phases.tsv'))
        self.hs = read_tsv(os.path.join(d, 'handshakes.tsv'))
        self.tls = dict(r for r in read_tsv(os.path.join(d, 'tls.tsv')) if len(r) == 2)
        self.relay = dict(r for r in read_tsv(os.path.join(d, 'relay.tsv')) if len(r) == 2)
        self.relay_runs = read_tsv(os.path.join(d, 'relay-runs.tsv'))
        try:
            with open(os.path.join(d, 'notrun.txt')) as f:
                self.notrun = [ln.strip() for ln in f if ln.strip()]
        except OSError:
            self.notrun = []
        try:
            with open(os.path.join(d, 'hyperfine.json')) as f:
                self.hf = {r['command']: r for r in json.load(f)['results']}
        except (OSError, ValueError, KeyError):
            self.hf = {}
        self.profile = {}
        for p in sorted(glob.glob(os.path.join(d, 'profile', '*.txt'))):
            with open(p, errors='replace') as f:
                self.profile[os.path.basename(p)] = f.read()

    def bvals(self, phase, srv, size, col):
        idx = {'accept': 9, 'e2e': 10, 'cpu1k': 13, 'busy': 14, 'iowait': 15, 'client1k': 16}[col]
        return [float(r[idx]) for r in self.blasts
                if r[0] == phase and r[1] == srv and int(r[3]) == size and len(r) > idx]

    def b(self, phase, srv, size, col):
        return med(self.bvals(phase, srv, size, col))

    def pvals(self, phase, srv, key):
        out = []
        for r in self.peers:
            if r[0] == phase and r[1] == srv and r[3] == key:
                try:
                    out.append(float(r[5]))
                except ValueError:
                    pass
        return out

    def p(self, phase, srv, key):
        return med(self.pvals(phase, srv, key))

    def per_session(self, srv, kind, phase='mem'):
        """bytes per idle session, median over the runs of (with - idle) / sessions"""
        conns = int(self.meta.get('conns', '1000') or 1000)
        idle = self.pvals(phase, srv, 'idle_' + kind)
        busy = self.pvals(phase, srv, 'conn_' + kind)
        ok = self.pvals(phase, srv, 'conn_ok')
        v = [(c - i) * 1024 / (n or conns) for i, c, n in zip(idle, busy, ok)]
        return med(v)

    def hsrun(self, srv):
        """the handshake tests of srv: {run: {connections: {key: value}}}"""
        out = collections.OrderedDict()
        for r in self.hs:
            if len(r) >= 5 and r[0] == 'tls-hs' and r[1] == srv and ':' in r[3]:
                c, k = r[3].split(':', 1)
                out.setdefault(r[2], collections.OrderedDict()).setdefault(c, {})[k] = r[4]
        return out

    def hslevels(self):
        return (self.tls.get('hs_conns') or '20').split()

    def hsval(self, srv, conns, f):
        """median over the runs of f(results of the test with conns connections), failed runs left out"""
        v = []
        for res in self.hsrun(srv).values():
            try:
                if res.get(conns, {}).get('rc') == '0':
                    v.append(f(res[conns]))
            except (KeyError, ValueError, ZeroDivisionError):
                pass
        return med(v)


def failures(bad):
    """the "Not run, or failed" list of a phase's section (markdown lines), or []"""
    return ['Not run, or failed:\n'] + ['- ' + b for b in bad] + [''] if bad else []


def tls_rows(D, rows):
    """the TLS phase's rows of the results table"""
    S, O, P = TLS_SERVERS
    conns = D.meta.get('conns', '1000')

    def nr(x, unit=''):
        return 'not run' if x is None else fmt(x, unit)

    def row(label, s, o, p, unit='', ratios=True):
        rows.append((label, nr(s, unit), nr(o, unit), nr(p, unit),
                     fr(ratio(s, o)) if ratios else '', fr(ratio(s, p)) if ratios else ''))

    for c in D.hslevels():
        def hs(f):
            return [D.hsval(x, c, f) for x in (S, O, P)]

        def cores(srv):
            v = [D.hsval(srv, c, lambda r, k=k: float(r[k]) / float(r['seconds']))
                 for k in ('server_cpu', 'client_cpu')]
            return 'not run' if None in v else '%.2f / %.2f' % tuple(v)
        row('TLS handshakes/s, %s connections in parallel (implicit TLS, a new connection each, until the 220 '
            'greeting)' % c, *hs(lambda r: float(r['handshakes']) / float(r['seconds'])))
        row('TLS handshake, %s in parallel: server CPU ms per handshake (user+sys, all processes)' % c,
            *hs(lambda r: float(r['server_cpu']) / float(r['handshakes']) * 1000))
        row('TLS handshake, %s in parallel: client (tls-handshakes) CPU ms per handshake' % c,
            *hs(lambda r: float(r['client_cpu']) / float(r['handshakes']) * 1000), ratios=False)
        rows.append(('TLS handshake, %s in parallel: cores busy, server / client (2 cores)' % c,
                     cores(S), cores(O), cores(P), '', ''))
        row('TLS handshake, %s in parallel: listen queue overflows and drops' % c,
            *hs(lambda r: float(r['listen_overflows'])), ratios=False)
    for col, what in (('accept', 'accepted'), ('e2e', 'end-to-end')):
        for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
            row('TLS %s msgs/s, %s, 20 sessions (STARTTLS, connections reused)' % (what, sl),
                *[D.b('tls20', x, size, col) for x in (S, O, P)])
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        row('TLS CPU s per 1000 msgs (server user+sys, all processes), %s, 20 sessions' % sl,
            *[D.b('tls20', x, size, 'cpu1k') for x in (S, O, P)])
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        row('TLS client (tls-source) CPU s per 1000 msgs, %s, 20 sessions' % sl,
            *[D.b('tls20', x, size, 'client1k') for x in (S, O, P)], ratios=False)
    row('idle TLS sessions held (STARTTLS and EHLO done; of %s)' % conns,
        *[D.p('tls-mem', x, 'conn_ok') for x in (S, O, P)])
    row('RSS with %s idle TLS sessions, MiB' % conns,
        *[None if v is None else v / 1024 for v in (D.p('tls-mem', x, 'conn_rss') for x in (S, O, P))])
    for kind in ('rss', 'pss'):
        row('KiB per idle TLS session (%s delta)' % kind.upper(),
            *[None if v is None else v / 1024 for v in (D.per_session(x, kind, 'tls-mem') for x in (S, O, P))])


def tls_targets(D, t):
    """the TLS phase's targets"""
    S, _, P = TLS_SERVERS
    rate = lambda r: float(r['handshakes']) / float(r['seconds'])  # noqa: E731
    lv = D.hslevels()
    rs = [ratio(D.hsval(S, c, rate), D.hsval(P, c, rate)) for c in lv]
    t('TLS handshakes/s (implicit TLS, new connection each) vs Postfix, %s connections in parallel%s'
      % (lv[0], ''.join('; with %s: %s' % (c, fr(x)) for c, x in zip(lv[1:], rs[1:]))),
      fr(rs[0]), '>= 2x', None if rs[0] is None else rs[0] >= 2)
    cpu = lambda srv, c: D.hsval(srv, c, lambda r: float(r['server_cpu']) / float(r['handshakes']))  # noqa: E731
    r = ratio(cpu(S, lv[0]), cpu(P, lv[0])) if lv else None
    t('TLS handshake, server CPU per handshake vs Postfix, %s in parallel' % (lv[0] if lv else '-'),
      fr(r), '<= 0.5x', None if r is None else r <= 0.5)
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        r = ratio(D.b('tls20', S, size, 'accept'), D.b('tls20', P, size, 'accept'))
        t('TLS accepted msgs/s at 20 sessions, %s, vs Postfix' % sl, fr(r), '>= 2x', None if r is None else r >= 2)
        r = ratio(D.b('tls20', S, size, 'cpu1k'), D.b('tls20', P, size, 'cpu1k'))
        t('TLS CPU per message at 20 sessions, %s, vs Postfix' % sl, fr(r), '<= 0.5x', None if r is None else r <= 0.5)
    ps, pp = D.per_session(S, 'rss', 'tls-mem'), D.per_session(S, 'pss', 'tls-mem')
    t('memory per idle TLS session (RSS delta; PSS delta %s)' % fmt(None if pp is None else pp / 1024, ' KiB'),
      fmt(None if ps is None else ps / 1024, ' KiB'), '<= 48 KiB', None if ps is None else ps <= 48 * 1024)


def tls_sections(D):
    """set-up, failures and per-run values of the TLS phase (markdown), or ''"""
    if not (D.hs or D.tls or any(r[0].startswith('tls') for r in D.blasts)):
        return ''
    L = ['## TLS phase\n']
    L.append('- Certificate: one self-signed certificate made by `openssl req -x509 -newkey rsa:2048` at run '
             'time (%s), CN and subjectAltName mx.bench.local, served by all three servers (pki `mx.bench.local`; '
             'the client sends that name in SNI). The client does not verify the certificate (self-signed) but '
             'checks the server\'s handshake signature with its key; no session is resumed (rustls client with '
             'ring, resumption disabled, a full handshake on every connection).' % D.tls.get('cert', '?'))
    L.append('- **smtpd**: the configuration above plus `pki mx.bench.local cert|key FILE`, `tls pki mx.bench.local` '
             'on the port 2529 listener and `listen on 127.0.0.1 port 2539 hostname mx.bench.local smtps pki '
             'mx.bench.local`.')
    L.append('- **OpenSMTPD**: the harness\'s configuration plus the same `pki` lines, `tls pki mx.bench.local` on '
             'its listener (2526) and `listen on 127.0.0.1 port 2536 hostname mx.bench.local smtps pki mx.bench.local`.')
    osm = [r.get('rc') for lv in D.hsrun('osmtpd-tls').values() for r in lv.values()]
    if osm and '0' not in osm:
        L.append('  OpenSMTPD 6.8.0p2 as Debian 12 builds it, with OpenSSL 3, fails every TLS handshake: its '
                 'network process signs through the key kept by another process (privilege separation), and '
                 'OpenSSL 3 finds no private key there (`missing private key`, then `error:0A080006:SSL '
                 'routines::EVP lib` in its log). Checked by hand with an RSA-2048 and an ECDSA P-256 key, TLS 1.2 '
                 'and 1.3 (OpenSMTPD issues #1171 and #1239; pull request #1208 fixed it upstream in 2023). Its '
                 'TLS figures are therefore "not run".')
    L.append('- **Postfix**: the harness\'s configuration plus `smtpd_tls_cert_file`, `smtpd_tls_key_file`, '
             '`smtpd_tls_security_level = may` (STARTTLS on 2527, maxproc 1100) and a master.cf service '
             '`127.0.0.1:2537 inet n - n - 600 smtpd -o smtpd_tls_wrappermode=yes`.')
    L.append('- Handshakes: `tls-handshakes -c N -T %s` against the implicit-TLS port, N = %s one after the '
             'other: each connection makes a full handshake, reads the 220 greeting through TLS (counted then), '
             'sends QUIT, reads the 221 and closes; the server\'s CPU time is counted as in the other phases, '
             'the client\'s from its rusage. A greeting that comes late lowers the rate at 20 connections; 100 '
             'keep the servers busy in spite of it. (Postfix\'s does come late: it writes its TLS 1.3 session '
             'ticket and its 220 as two small segments, and the second waits, under Nagle\'s algorithm, for the '
             'client\'s delayed acknowledgement of the first: about 40 ms a connection.)'
             % (D.tls.get('hs_secs', '?'), ' and '.join(D.hslevels())))
    L.append('- Messages: `tls-source` in place of smtp-source (same options, `-d -s 20`): STARTTLS, then '
             'EHLO, then message after message on the same connection, every reply code checked.')
    L.append('- Memory: `tls-hold`, in place of the harness\'s hold_conns.py: %s sessions that completed '
             'STARTTLS and EHLO, held idle; RSS and PSS of the server before and with them.\n'
             % D.meta.get('conns', '?'))
    bad = [b for b in D.notrun if b.startswith('tls')]
    for srv in TLS_SERVERS:
        for run, lv in D.hsrun(srv).items():
            for c, res in lv.items():
                if res.get('rc') != '0':
                    bad.append('tls-hs %s run %s, %s connections: the handshake test failed (rc %s): %s; the '
                               'server\'s log: `%s`' % (NAMES[srv], run, c, res.get('rc'), res.get('error', '?'),
                                                         res.get('server_error', '?')))
    L += failures(bad)
    rows = []
    for srv in TLS_SERVERS:
        for run, lv in D.hsrun(srv).items():
            for c, r in lv.items():
                rows.append((NAMES[srv], run, c) + tuple(r.get(k, '-') for k in (
                    'handshakes', 'seconds', 'rate', 'server_cpu', 'client_cpu', 'listen_overflows',
                    'version', 'suite', 'group', 'rc')))
    if rows:
        L.append('Handshake test, per run:\n')
        L.append(md_table(['server', 'run', 'connections', 'handshakes', 's', 'handshakes/s', 'server CPU s',
                           'client CPU s', 'listen overflows', 'version', 'cipher suite', 'key exchange', 'rc'],
                          rows) + '\n')
    return '\n'.join(L)


def build(d):
    D = Data(d)
    S, O, P = 'smtpd', 'osmtpd', 'pfx'
    rows = []  # (label, smtpd, osmtpd, postfix, ratio_o, ratio_p)

    def row(label, s, o, p, unit=''):
        rows.append((label, fmt(s, unit), fmt(o, unit), fmt(p, unit), fr(ratio(s, o)), fr(ratio(s, p))))

    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        for ph, n in (('thr1', 1), ('thr20', 20), ('thr200', 200)):
            row('accepted msgs/s, %s, %d session%s' % (sl, n, '' if n == 1 else 's'),
                D.b(ph, S, size, 'accept'), D.b(ph, O, size, 'accept'), D.b(ph, P, size, 'accept'))
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        for ph, n in (('thr1', 1), ('thr20', 20), ('thr200', 200)):
            row('end-to-end msgs/s (all in the Maildir), %s, %d session%s' % (sl, n, '' if n == 1 else 's'),
                D.b(ph, S, size, 'e2e'), D.b(ph, O, size, 'e2e'), D.b(ph, P, size, 'e2e'))
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        row('CPU s per 1000 msgs (server user+sys, all processes), %s, 20 sessions' % sl,
            D.b('thr20', S, size, 'cpu1k'), D.b('thr20', O, size, 'cpu1k'), D.b('thr20', P, size, 'cpu1k'))
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        def busy(srv):
            b, w = D.b('thr20', srv, size, 'busy'), D.b('thr20', srv, size, 'iowait')
            return None if b is None else '%.0f%% (%.0f%%)' % (b * 100, (w or 0) * 100)
        rows.append(('machine CPU busy (in iowait) during the blast, %s, 20 sessions' % sl,
                     busy(S) or '-', busy(O) or '-', busy(P) or '-', '', ''))
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        row('client (smtp-source) CPU s per 1000 msgs, %s, 20 sessions' % sl,
            D.b('thr20', S, size, 'client1k'), D.b('thr20', O, size, 'client1k'), D.b('thr20', P, size, 'client1k'))
    conns = D.meta.get('conns', '1000')
    PM = 'pfx-1100'
    row('RSS idle, MiB (sum over processes)', *[None if x is None else x / 1024 for x in
        (D.p('mem', S, 'idle_rss'), D.p('mem', O, 'idle_rss'), D.p('mem', PM, 'idle_rss'))])
    row('PSS idle, MiB', *[None if x is None else x / 1024 for x in
        (D.p('mem', S, 'idle_pss'), D.p('mem', O, 'idle_pss'), D.p('mem', PM, 'idle_pss'))])
    row('processes idle', D.p('mem', S, 'idle_procs'), D.p('mem', O, 'idle_procs'), D.p('mem', PM, 'idle_procs'))
    row('RSS with %s idle sessions, MiB' % conns, *[None if x is None else x / 1024 for x in
        (D.p('mem', S, 'conn_rss'), D.p('mem', O, 'conn_rss'), D.p('mem', PM, 'conn_rss'))])
    row('PSS with %s idle sessions, MiB' % conns, *[None if x is None else x / 1024 for x in
        (D.p('mem', S, 'conn_pss'), D.p('mem', O, 'conn_pss'), D.p('mem', PM, 'conn_pss'))])
    row('idle sessions held (of %s)' % conns, D.p('mem', S, 'conn_ok'), D.p('mem', O, 'conn_ok'), D.p('mem', PM, 'conn_ok'))
    row('KiB per idle session (RSS delta)', *[None if x is None else x / 1024 for x in
        (D.per_session(S, 'rss'), D.per_session(O, 'rss'), D.per_session(PM, 'rss'))])
    row('KiB per idle session (PSS delta)', *[None if x is None else x / 1024 for x in
        (D.per_session(S, 'pss'), D.per_session(O, 'pss'), D.per_session(PM, 'pss'))])
    for srv, what in ((S, 'default limits'), ('smtpd-c10k', 'smtp limit max-sessions 10500')):
        ok, rss = D.p('c10k', srv, 'conn_ok'), D.p('c10k', srv, 'conn_rss')
        rows.append(('10000 idle sessions, smtpd with %s: held / RSS' % what,
                     '%s / %s' % (fmt(ok), fmt(None if rss is None else rss / 1024, ' MiB')), 'not run', 'not run', '', ''))
    # filters: throughput at 20 sessions, and as a share of the same server without filter
    F = {'rust': 'smtpd-filter-rust', 'spy': 'smtpd-filter-py', 'o': 'osmtpd-filter', 'p': 'pfx-milter'}
    frat = {}
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        base = {k: D.b('thr20', k, size, 'accept') for k in (S, O, P)}
        fv = {k: D.b('thr20', v, size, 'accept') for k, v in F.items()}
        # ratio per run (same repetition, neighbouring in time), then the median
        def run_ratio(fsrv, bsrv):
            fa = {r[2]: float(r[9]) for r in D.blasts if r[0] == 'thr20' and r[1] == fsrv and int(r[3]) == size}
            ba = {r[2]: float(r[9]) for r in D.blasts if r[0] == 'thr20' and r[1] == bsrv and int(r[3]) == size}
            return med([fa[k] / ba[k] for k in fa if k in ba and ba[k] > 0])
        frat[('rust', size)] = run_ratio(F['rust'], S)
        frat[('spy', size)] = run_ratio(F['spy'], S)
        frat[('o', size)] = run_ratio(F['o'], O)
        frat[('p', size)] = run_ratio(F['p'], P)

        def cell(v, r):
            return '-' if v is None else '%s (%s)' % (fmt(v), '-' if r is None else '%.2f' % r)
        rows.append(('pass-through filter in Rust (filter-pass), %s, 20 sessions: msgs/s (share of no filter)' % sl,
                     cell(fv['rust'], frat[('rust', size)]), 'n/a', 'n/a', '', ''))
        rows.append(('pass-through filter in Python, %s, 20 sessions: msgs/s (share of no filter)' % sl,
                     cell(fv['spy'], frat[('spy', size)]), cell(fv['o'], frat[('o', size)]),
                     cell(fv['p'], frat[('p', size)]), fr(ratio(fv['spy'], fv['o'])), fr(ratio(fv['spy'], fv['p']))))
        del base
    tls_rows(D, rows)
    for part in parts():
        part.rows(D, rows)
    sz = {k: (int(v) if v.isdigit() else None) for k, v in D.sizes.items()}
    row('binary size, KiB (smtpd: stripped copy; OpenSMTPD: smtpd; Postfix: smtpd + libpostfix-*.so)',
        *[None if sz.get(k) is None else sz[k] / 1024 for k in ('size_smtpd', 'size_osmtpd', 'size_postfix')])
    hs, ho = D.hf.get('smtpd'), D.hf.get('opensmtpd')
    row('`smtpd -n` start-up (config check), ms (hyperfine mean)',
        None if hs is None else hs['mean'] * 1000, None if ho is None else ho['mean'] * 1000, None)
    return D, rows, frat


def targets(D, frat):
    S, O, P = 'smtpd', 'osmtpd', 'pfx'
    out = []

    def t(label, value, goal, ok):
        out.append((label, value, goal, '-' if ok is None else ('met' if ok else '**missed**')))

    # The goals of the second round of speed work (bench/README.md, Targets).
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        s = D.b('thr20', S, size, 'accept')
        for peer, name, k in ((P, 'Postfix', 4), (O, 'OpenSMTPD', 3)):
            r = ratio(s, D.b('thr20', peer, size, 'accept'))
            t('accepted msgs/s at 20 sessions, %s, vs %s' % (sl, name), fr(r), '>= %dx' % k,
              None if r is None else r >= k)
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        r = ratio(D.b('thr20', S, size, 'e2e'), D.b('thr20', P, size, 'e2e'))
        t('end-to-end msgs/s at 20 sessions, %s, vs Postfix' % sl, fr(r), '>= 4x', None if r is None else r >= 4)
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        r = ratio(D.b('thr20', S, size, 'cpu1k'), D.b('thr20', P, size, 'cpu1k'))
        t('CPU per message, %s, vs Postfix' % sl, fr(r), '<= 0.2x', None if r is None else r <= 0.2)
    ps = D.per_session(S, 'rss')
    t('memory per idle session (RSS delta)', fmt(None if ps is None else ps / 1024, ' KiB'), '<= 16 KiB',
      None if ps is None else ps <= 16 * 1024)
    ir = D.p('mem', S, 'idle_rss')
    ip = D.p('mem', S, 'idle_pss')
    t('idle daemon RSS (parent + engine, summed; PSS %s)' % fmt(None if ip is None else ip / 1024, ' MiB'),
      fmt(None if ir is None else ir / 1024, ' MiB'), '<= 4 MiB', None if ir is None else ir <= 4096)
    held, held_default = D.p('c10k', 'smtpd-c10k', 'conn_ok'), D.p('c10k', S, 'conn_ok')
    t('10000 concurrent idle sessions held (smtp limit max-sessions 10500; with the default limit: %s, '
      'see the notes)' % fmt(held_default), fmt(held), '10000', None if held is None else held >= 10000)
    for size, sl, lim in ((1024, '1 KiB', 0.10), (65536, '64 KiB', 0.15)):
        r = frat.get(('rust', size))
        cost = None if r is None else 1 - r
        t('Rust pass-through filter: throughput cost, %s' % sl,
          '-' if cost is None else '%.0f%%' % (cost * 100), '<= %d%%' % (lim * 100),
          None if cost is None else cost <= lim)
    for size, sl in ((1024, '1 KiB'), (65536, '64 KiB')):
        r = ratio(D.b('thr20', 'smtpd-filter-py', size, 'accept'), D.b('thr20', 'pfx-milter', size, 'accept'))
        t('Python pass-through filter, accepted msgs/s, %s, vs Postfix + Python milter' % sl, fr(r), '> 1x',
          None if r is None else r > 1)
    tls_targets(D, t)
    for part in parts('relay', 'dkim', 'dnsbl', 'pgsql'):
        part.targets(D, t)
    return out


def md_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(lines)


def verify_section(D):
    tot_sent = tot_del = 0
    bad = []
    for r in D.verify:
        phase, srv, run, sent, deliv, distinct, dups, noid = r[:8]
        sent, deliv, distinct, dups, noid = int(sent), int(deliv), int(distinct), int(dups), int(noid)
        tot_sent += sent
        tot_del += deliv
        if sent != deliv or dups or noid or distinct != deliv:
            bad.append('%s %s run %s: sent %d, in the Maildir %d, distinct Message-IDs %d, duplicates %d, without Message-ID %d'
                       % (phase, NAMES.get(srv, srv), run, sent, deliv, distinct, dups, noid))
    if not D.verify:
        return 'No server run to check.'
    head = ('%d server runs, %d messages sent by smtp-source, %d in the Maildirs; every file read, '
            'Message-ID distinct per server run' % (len(D.verify), tot_sent, tot_del))
    if not bad:
        return head + ': **every message arrived exactly once** (all servers, all runs).'
    return head + '. Mismatches:\n\n' + '\n'.join('- ' + b for b in bad)


def raw_section(D):
    rows = []
    key = collections.OrderedDict()
    for r in D.blasts:
        key.setdefault((r[0], r[1], int(r[3])), []).append(r)
    for (ph, srv, size), rs in key.items():
        rows.append((ph, NAMES.get(srv, srv), '%d KiB' % (size // 1024), rs[0][5], rs[0][4],
                     ' '.join(r[9] for r in rs), ' '.join(r[10] for r in rs),
                     ' '.join(r[13] for r in rs), ' '.join('%s/%s' % (r[11], r[4]) for r in rs),
                     ' '.join(r[7] + ('' if r[8] == '0' else '+%s' % r[8]) for r in rs),
                     ' '.join('%.0f' % (float(r[14]) * 100) if len(r) > 14 and r[14] != 'nan' else '-' for r in rs)))
    return md_table(['phase', 'server', 'size', 'sessions', 'msgs', 'accepted msgs/s', 'end-to-end msgs/s',
                     'CPU s/1000', 'delivered', 'smtp-source rc(+output lines)', 'machine busy %'], rows)


def mem_raw(D):
    rows = []
    for ph in ('mem', 'c10k', 'tls-mem'):
        for srv in ('smtpd', 'smtpd-c10k', 'osmtpd', 'pfx-1100') + TLS_SERVERS:
            vals = {k: ' '.join('%g' % v for v in D.pvals(ph, srv, k))
                    for k in ('idle_rss', 'idle_pss', 'idle_procs', 'conn_rss', 'conn_pss', 'conn_procs', 'conn_ok')}
            if any(vals.values()):
                rows.append((ph, NAMES.get(srv, srv)) + tuple(vals[k] or '-' for k in
                            ('idle_rss', 'idle_pss', 'idle_procs', 'conn_rss', 'conn_pss', 'conn_procs', 'conn_ok')))
    return md_table(['phase', 'server', 'idle RSS KiB', 'idle PSS KiB', 'procs', 'busy RSS KiB', 'busy PSS KiB',
                     'procs', 'sessions held'], rows)


def profile_path(out):
    base, ext = os.path.splitext(out)
    return base + '-profile' + (ext or '.md')


SYSCALLS = ('fsync', 'fdatasync', 'clone', 'wait4', 'openat', 'rename', 'mkdir', 'unlink', 'unlinkat',
            'write', 'sendto', 'recvfrom', 'read', 'futex')


def profile_table(D):
    rows = []
    keys = sorted({k[:-len('.txt')].rsplit('.', 1)[0] for k in D.profile if k.endswith('.txt')})
    for k in keys:
        parts = k.split('.')
        if len(parts) < 4:
            continue
        srv, size, msgs = parts[0], int(parts[2]), int(parts[3])
        st = D.profile.get(k + '.strace.txt', '')
        calls, total = {}, 0
        for ln in st.splitlines():
            w = ln.split()
            if len(w) >= 5 and w[0][0].isdigit() and w[-1] != 'total':
                try:
                    calls[w[-1]] = int(w[3])
                    total += int(w[3])
                except ValueError:
                    pass
        cs = task = None
        for ln in D.profile.get(k + '.stat.txt', '').splitlines():
            w = ln.split()
            if len(w) >= 2 and w[1] == 'context-switches':
                cs = float(w[0].replace(',', ''))
            if len(w) >= 3 and w[1] == 'msec' and w[2] == 'task-clock':
                task = float(w[0].replace(',', ''))
        if not calls and cs is None:
            continue
        if st:
            rows.append([NAMES.get(srv, srv), '%d KiB' % (size // 1024), 'strace', str(msgs)]
                        + ['%.2f' % (calls.get(s, 0) / msgs) for s in SYSCALLS] + ['%.1f' % (total / msgs), '', ''])
        if cs is not None:
            rows.append([NAMES.get(srv, srv), '%d KiB' % (size // 1024), 'perf stat', str(msgs)]
                        + [''] * len(SYSCALLS) + ['', '%.1f' % (cs / msgs),
                                                  '-' if task is None else '%.2f' % (task / msgs)])
    return md_table(['server', 'size', 'tool', 'msgs in the blast'] + list(SYSCALLS) + ['all syscalls', 'context switches',
                                                                           'CPU ms (task-clock)'], rows)


def report(d, out):
    D, rows, frat = build(d)
    m = D.meta
    tbl = md_table(['measure (medians of %s runs)' % m.get('runs', '?'), 'smtpd', 'OpenSMTPD %s' % m.get('opensmtpd', ''),
                    'Postfix %s' % m.get('postfix', ''), 'smtpd / OpenSMTPD', 'smtpd / Postfix'], rows)
    tg = targets(D, frat)
    ttbl = md_table(['target', 'measured', 'goal', 'verdict'], tg)
    print(tbl)
    print()
    print(ttbl)
    print()
    print(verify_section(D))

    L = []
    L.append('# Benchmark results: smtpd vs OpenSMTPD and Postfix\n')
    L.append('Written by `bench/run` (see `bench/README.md`) on %s; the run took %s minutes.%s\n' % (
        m.get('date', '?'), int(m.get('duration_s', '0') or 0) // 60,
        ' **Quick run (-q): fewer messages, one repetition.**' if m.get('quick') == '1' else ''))
    L.append('## Machine\n')
    L.append('- %s cores, %s (%s), %s RAM, %s; spools and Maildirs on %s' % (
        m.get('cores'), m.get('cpu'), m.get('kernel'), m.get('memory'), m.get('os'), m.get('fs')))
    L.append('- smtpd at commit %s, built with %s (`cargo build --release --workspace`: LTO, codegen-units 1)' % (
        m.get('commit'), m.get('rustc')))
    L.append('- OpenSMTPD %s (Debian package, extracted in /opt/opensmtpd), Postfix %s (Debian package)' % (
        m.get('opensmtpd'), m.get('postfix')))
    L.append('- The machine was shared: other engineers\' test suites ran at the same time, so every figure '
             'is the **median of %s repetitions**, the repetitions of the servers interleaved '
             '(smtpd, OpenSMTPD, Postfix, smtpd, ...). Share of the 2 cores busy with other work during the 2 s '
             'before each phase (nothing of the benchmark running): %s.\n' % (
                 m.get('runs'), ', '.join('%s %s' % (r[0], r[2]) for r in D.phases if len(r) >= 3 and r[1] == 'before')))
    L.append('## Results\n')
    L.append('Ratios are smtpd ÷ peer (higher is better for rates, lower for CPU and memory). '
             'smtp-source runs with `-d` (connections reused; OpenSMTPD with `smtp limit max-mails 100000`). '
             '"Accepted" is messages ÷ smtp-source\'s wall time (every 250 received); "end-to-end" runs from the '
             'same start until the last message is in the Maildir. CPU time is user + system time of every '
             'process of the server (its session and descendants, reaped children included: delivery agents, '
             'filters; for Postfix + milter the milter too), from the start of the blast until all is delivered.\n')
    L.append(tbl + '\n')
    L.append('## Targets\n')
    L.append(ttbl + '\n')
    L.append('## Exactly once\n')
    L.append(verify_section(D) + '\n')
    L.append('## Set-ups\n')
    L.append('- **smtpd**: `target/release/smtpd -d -f smtpd.conf`, started as root (parent keeps root, engine '
             'runs as `_smtpd`, each delivery as `benchmail`), configuration:\n')
    L.append('```\nqueue path "DIR/spool"\nsmtp limit max-mails 100000\nsmtp limit max-sessions-per-address 0\n'
             'table vusers { "@bench.test" = benchmail }\n'
             'listen on 127.0.0.1 port 2529 hostname mx.bench.local\naction "bench" maildir "DIR/Maildir" virtual <vusers>\n'
             'match from any for domain "bench.test" action "bench"\n```\n')
    L.append('  With a filter: `filter "pass" proc-exec "target/release/filter-pass"` (or '
             '`"/usr/bin/python3 filters/python/filter-python bench/passfilter.py"`) and `filter "pass"` on the listener. '
             'Both register every hook, data lines included, and let everything through.')
    L.append('- **OpenSMTPD** and **Postfix**: as `the shared harness peers.sh` sets them up (Maildir delivery for '
             'bench.test to `benchmail`; Postfix through virtual(8), no chroot, `maxproc` 600, 1100 for the memory '
             'test; OpenSMTPD with `smtp limit max-mails 100000`; filters: OpenSMTPD proc-exec '
             '`osmtpd_passfilter.py`, Postfix milter `pf_passmilter.py` (python3-milter)).')
    L.append('- Durability differs: smtpd and Postfix fsync a message before its 250; OpenSMTPD 6.8 does not '
             '(see the README.md beside it).\n')
    tl = tls_sections(D)
    if tl:
        L.append(tl)
    for part in parts():
        sec = part.section(D)
        if sec:
            L.append(sec)
    L.append('## Commands\n')
    L.append('`%s` (as root, from the top of the work tree). It ran, through a copy of '
             '`the shared harness peers.sh` with `bench/servers.sh` as `servers.d/bench.sh`, '
             'SMTP_SOURCE=`bench/smtp-source-wrap` and PEERS_OSMTPD_EXTRA="smtp limit max-mails 100000":\n' % m.get('command', 'bench/run'))
    L.append('```')
    for r in D.commands:
        L.append('%-8s %s' % (r[0], r[1]))
    L.append('```')
    L.append('smtp-source is called by peers.sh as `smtp-source -d -s SESSIONS -m COUNT -l SIZE -M client.bench.test '
             '-f a@bench.test -t u@bench.test 127.0.0.1:PORT`; -z gives SIZE:COUNT, -c the idle sessions of the '
             'memory test (shared/bench/hold_conns.py, measured with shared/bench/rss.py). In the TLS phases '
             '(tls-hs, tls20, tls-mem) bench/tlsload\'s `tls-source` takes smtp-source\'s place, and '
             'bench/tls_conns.py hold_conns.py\'s (see the TLS phase above). In the relay phase peers.sh runs in '
             'the phase\'s network namespace, bench/relay-aux is the AUX of each server run (the DNS server and '
             'the sinks), and smtp-source-wrap runs one smtp-source per recipient domain (see the Relay phase '
             'above). In the bdat phase bench/tlsload\'s `chunk-source` takes smtp-source\'s place (see the '
             'BDAT phase above). In the dnsbl phase smtp-source runs without `-d` (a new connection per '
             'message) and bench/dnsbl-aux is the AUX of each server run (see the DNSBL phase above).\n')
    L.append('## Per-run values\n')
    L.append(raw_section(D) + '\n')
    L.append(mem_raw(D) + '\n')
    mm = [r for srv in ('smtpd', 'osmtpd', 'pfx') for r in D.memmap if r[0] == 'thr20' and r[2] == '1' and r[1] == srv]
    if mm:
        L.append('## Idle memory by process (first repetition of the 20-session phase, before its first blast)\n')
        L.append('RSS counts shared pages (libc, the program text) once per process; PSS shares them out; '
                 '"private" is what the process alone holds. Largest mappings by RSS, KiB.\n')
        for r in mm:
            L.append('- %s: %s' % (NAMES.get(r[1], r[1]), r[3]))
        L.append('')
    if D.profile:
        L.append('## System calls and context switches per message (bench/run -p)\n')
        L.append('From the profiling runs (20 sessions, connections reused): `strace -c -f` attached to every '
                 'process of the server during a blast and until its last delivery (counts only: strace slows '
                 'the server down), and `perf stat` (context switches, CPU time) in a separate blast. Raw output, '
                 'with `perf record` call graphs, in `%s`.\n' % os.path.basename(profile_path(out)))
        L.append(profile_table(D) + '\n')
    body = '\n'.join(L) + '\n'
    kept = ''
    if os.path.exists(out):
        with open(out) as f:
            old = f.read()
        if KEEP_MARK in old:
            kept = old[old.index(KEEP_MARK) + len(KEEP_MARK):].lstrip('\n')
    with open(out, 'w') as f:
        f.write(body + '\n' + KEEP_MARK + '\n\n' + kept)
    if D.profile:
        P = ['# Profiles of smtpd (and Postfix) under load\n',
             'Raw output of `bench/run -p` (%s, %s). Files are SERVER.rRUN.SIZE.MESSAGES.KIND: '
             '`pid` perf samples by process, `self` by function (self time), `children` by function '
             'including callees (`perf record -e cpu-clock -F 499 --call-graph dwarf` on every server process), '
             '`stat` perf stat, `strace` strace -c -f.\n' % (m.get('date', '?'), m.get('commit', '?'))]
        for name, text in D.profile.items():
            P.append('## %s\n\n```\n%s\n```\n' % (name, text.rstrip()))
        with open(profile_path(out), 'w') as f:
            f.write('\n'.join(P))


def main(a):
    if a[:1] == ['collect'] and len(a) == 4:
        collect(*a[1:])
    elif a[:1] == ['report'] and len(a) in (3, 4):
        report(*a[1:3])
        if len(a) == 4:
            import history
            history.append(a[2], a[3])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
