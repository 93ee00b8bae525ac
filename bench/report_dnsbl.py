"""report_dnsbl.py - the dnsbl phase's part of bench/report.py (standard library only).

  rows(D, rows), targets(D, t), section(D)
      The rows of the results table, the target, and the "DNSBL phase" section.

The phase's blasts are those of every other phase (bench/probe.py, the Maildir, the
exactly-once check), with 200 sessions and a new connection per message; the lookups
are answered by bench/dnsbl-aux, every answer DELAY milliseconds late (data/dnsbl.tsv).
"""
import os

from report import NAMES, fmt, fr, md_table, ratio, read_tsv

PHASE = 'dnsbl'
PLAIN, ASYNC, SYNC, PFX = 'smtpd', 'smtpd-dnsbl', 'smtpd-dnsbl-sync', 'pfx-dnsbl'
SIZE = 1024
COLS = (('accept', 'accepted msgs/s'), ('e2e', 'end-to-end msgs/s'), ('cpu1k', 'CPU s per 1000 msgs (server)'))


def ran(D):
    return any(r[0] == PHASE for r in D.blasts)


def setup(D):
    return {r[0]: r[1] for r in read_tsv(os.path.join(D.dir, 'dnsbl.tsv')) if len(r) == 2}


def cap(D):
    """the rate the lookups allow: sessions / delay"""
    s = setup(D)
    try:
        return int(s['sessions']) / (int(s['delay_ms']) / 1000.0)
    except (KeyError, ValueError, ZeroDivisionError):
        return None


def rows(D, rows):
    """smtpd unfiltered, with the filter answering later, with it synchronous; Postfix
    with reject_rbl_client in its column"""
    if not ran(D):
        return
    for col, what in COLS:
        plain, a, s, p = [D.b(PHASE, x, SIZE, col) for x in (PLAIN, ASYNC, SYNC, PFX)]
        rows.append(('DNSBL lookup per connection, 200 sessions, 1 KiB, answers 50 ms late: %s, '
                     'filter-dnsbl answering later (unfiltered smtpd %s; the same filter synchronous %s)'
                     % (what, fmt(plain), fmt(s)), fmt(a), 'n/a', fmt(p), '', fr(ratio(a, p))))


def targets(D, t):
    """the asynchronous filter reaches 80% of the lower of the unfiltered rate and the
    rate the lookups allow"""
    if not ran(D):
        return
    plain, a = D.b(PHASE, PLAIN, SIZE, 'accept'), D.b(PHASE, ASYNC, SIZE, 'accept')
    lim = [x for x in (plain, cap(D)) if x is not None]
    goal = 0.8 * min(lim) if lim else None
    t('DNSBL filter answering later, accepted msgs/s, 200 sessions, answers 50 ms late',
      fmt(a), '>= %s (80%% of min(unfiltered, sessions / delay))' % fmt(goal),
      None if a is None or goal is None else a >= goal)


def section(D):
    """what the phase does, and its per-run values (markdown), or ''"""
    if not ran(D) and not any(x.startswith('dnsbl') for x in D.notrun):
        return ''
    s = setup(D)
    L = ['## DNSBL phase\n']
    L.append('- Load: smtp-source, 200 sessions, **a new connection per message** (no `-d`), 1 KiB; every '
             'connection brings one blocklist lookup of 1.0.0.127.%s (the client is 127.0.0.1).'
             % s.get('zone', 'bl.bench.test'))
    L.append('- DNS: bench/dnsbl-aux on 127.0.0.1:53, the name server of the harness\'s private '
             '/etc/resolv.conf, answers every question with NXDOMAIN %s ms after it came (each answer waits on '
             'its own); its CPU time is not counted. So 200 sessions allow at most %s msgs/s.'
             % (s.get('delay_ms', '?'), fmt(cap(D))))
    L.append('- **smtpd + filter-dnsbl**: `filter "dnsbl" proc-exec "target/release/filter-dnsbl -t 5000 -r '
             'RESOLV.CONF bl.bench.test"` on the listener: the Rust example filter, which answers each '
             'connection later, when its lookup ends, and serves the other sessions meanwhile. The '
             'synchronous row is the same filter with `-s`: it waits for each answer in the callback, as a '
             'filter without deferred answers must, so one lookup at a time.')
    L.append('- **Postfix**: the harness\'s configuration plus `smtpd_client_restrictions = reject_rbl_client '
             'bl.bench.test` (one smtpd process per session, each asking the same server).\n')
    out = []
    for srv in (PLAIN, ASYNC, SYNC, PFX):
        vals = [' '.join(fmt(v) for v in D.bvals(PHASE, srv, SIZE, col)) or '-' for col, _ in COLS]
        out.append((NAMES.get(srv, srv), *vals))
    L.append(md_table(['server'] + [w for _, w in COLS], out) + '\n')
    return '\n'.join(L)
