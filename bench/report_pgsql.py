"""report_pgsql.py - the pgsql phase's part of bench/report.py (standard library only).

  rows(D, rows), targets(D, t), section(D)
      The rows of the results table (recipients looked up in PostgreSQL), the targets
      and the "PostgreSQL phase" section.

The phase's blasts are those of every other phase (bench/probe.py, the Maildir, the
exactly-once check); only the servers' recipient table differs: a table in a
PostgreSQL server of the run.
"""
from report import failures, fmt, fr, md_table, ratio

PHASE = 'pgsql'
SERVERS = ('smtpd-pgsql', 'osmtpd-pgsql', 'pfx-pgsql')
SIZES = ((1024, '1 KiB'), (65536, '64 KiB'))
COLS = (('accept', 'accepted msgs/s'), ('e2e', 'end-to-end msgs/s'),
        ('cpu1k', 'CPU s per 1000 msgs (server, PostgreSQL not included)'))


def ran(D):
    return any(r[0] == PHASE for r in D.blasts)


def rows(D, rows):
    """the rows of the results table: each server with its recipients in PostgreSQL"""
    if not ran(D):
        return
    for col, what in COLS:
        for size, sl in SIZES:
            s, o, p = [D.b(PHASE, x, size, col) for x in SERVERS]
            rows.append(('recipients in PostgreSQL, %s, %s, 20 sessions' % (what, sl),
                         fmt(s), fmt(o), fmt(p), fr(ratio(s, o)), fr(ratio(s, p))))


def targets(D, t):
    """at least twice the better peer's rate, at most half the CPU of the thriftier one"""
    if not ran(D):
        return
    for size, sl in SIZES:
        s, o, p = [D.b(PHASE, x, size, 'accept') for x in SERVERS]
        peers = [x for x in (o, p) if x is not None]
        r = ratio(s, max(peers)) if peers else None
        t('recipients in PostgreSQL, accepted msgs/s, %s, vs the better peer' % sl, fr(r), '>= 2x',
          None if r is None else r >= 2)
        s, o, p = [D.b(PHASE, x, size, 'cpu1k') for x in SERVERS]
        peers = [x for x in (o, p) if x is not None]
        r = ratio(s, min(peers)) if peers else None
        t('recipients in PostgreSQL, CPU per message, %s, vs the thriftier peer' % sl, fr(r), '<= 0.5x',
          None if r is None else r <= 0.5)


def section(D):
    """what the phase does, and its per-run values (markdown), or ''"""
    if not ran(D) and not any(x.startswith('pgsql') for x in D.notrun):
        return ''
    L = ['## PostgreSQL phase\n']
    L.append('- A PostgreSQL server of the run (Debian\'s, `initdb -A trust`, on 127.0.0.1, fsync off, as the '
             'user postgres) holds the recipient table `vusers (k, v)`: `u@bench.test` and `@bench.test`, both '
             'to benchmail. Its CPU time is not counted with any server\'s. Load as thr20: 20 sessions, '
             'connections reused.')
    L.append('- **smtpd** and **OpenSMTPD**: the configurations above with `table vusers postgres:FILE`, '
             'the same `table-postgres` program (Debian\'s opensmtpd-extras) and the same file: `conninfo '
             'host=127.0.0.1 ...` and `query_alias SELECT v FROM vusers WHERE k = $1`.')
    L.append('- **Postfix**: the harness\'s configuration with `virtual_mailbox_maps = pgsql:FILE` '
             '(postfix-pgsql), `query = SELECT \'Maildir/\' FROM vusers WHERE k = \'%s\'`; smtpd(8) looks '
             'the recipient up at RCPT and virtual(8) again at delivery.\n')
    L += failures([x for x in D.notrun if x.startswith('pgsql')])
    out = []
    for srv in SERVERS:
        for size, sl in SIZES:
            vals = [' '.join(fmt(v) for v in D.bvals(PHASE, srv, size, col)) or '-' for col, _ in COLS]
            out.append((srv, sl, *vals))
    L.append(md_table(['server', 'size'] + [w for _, w in COLS], out) + '\n')
    return '\n'.join(L)
