"""report_bdat.py - the bdat phase's part of bench/report.py (standard library only).

  rows(D, rows), section(D)
      The rows of the results table (DATA against BDAT) and the "BDAT phase" section.

The phase's blasts are those of every other phase (bench/probe.py, the Maildir, the
exactly-once check); only the client differs: bench/tlsload's chunk-source, DATA for
smtpd, OpenSMTPD and Postfix, BDAT for smtpd-bdat (the same smtpd).
"""
from report import fmt, fr, md_table, ratio

PHASE = 'bdat'
SIZES = ((1024, '1 KiB'), (65536, '64 KiB'))
COLS = (('accept', 'accepted msgs/s'), ('e2e', 'end-to-end msgs/s'),
        ('cpu1k', 'CPU s per 1000 msgs (server)'), ('client1k', 'client (chunk-source) CPU s per 1000 msgs'))


def ran(D):
    return any(r[0] == PHASE for r in D.blasts)


def rows(D, rows):
    """DATA and BDAT rows of the results table: smtpd, OpenSMTPD, Postfix with DATA;
    smtpd with BDAT, its ratios to the peers' DATA"""
    if not ran(D):
        return
    for col, what in COLS:
        for size, sl in SIZES:
            s, o, p = [D.b(PHASE, x, size, col) for x in ('smtpd', 'osmtpd', 'pfx')]
            rows.append(('DATA %s, %s, 20 sessions (chunk-source)' % (what, sl),
                         fmt(s), fmt(o), fmt(p), fr(ratio(s, o)), fr(ratio(s, p))))
            bd = D.b(PHASE, 'smtpd-bdat', size, col)
            rows.append(('BDAT %s, %s, 20 sessions (chunk-source, one chunk a message; smtpd BDAT / DATA %s)'
                         % (what, sl, fr(ratio(bd, s))), fmt(bd), 'n/a', 'n/a', fr(ratio(bd, o)), fr(ratio(bd, p))))


def section(D):
    """what the phase does, and its per-run values (markdown), or ''"""
    if not ran(D):
        return ''
    L = ['## BDAT phase\n']
    L.append('- Client: bench/tlsload\'s `chunk-source` in smtp-source\'s place (same options, `-d -s 20`, the '
             'messages of thr20: a few header fields, a unique Message-ID, lines of 80 octets), plain text, '
             'every reply code checked. With DATA: MAIL, RCPT, DATA, each waiting for its reply, then the '
             'message and its dot. With BDAT (RFC 3030): MAIL and RCPT likewise, then the whole message in one '
             '`BDAT n LAST` (no 354 to wait for, no dot-stuffing to do).')
    L.append('- Servers: smtpd (the configuration above) with DATA, and the same smtpd as `smtpd-bdat` with '
             'BDAT, interleaved with OpenSMTPD and Postfix, which get DATA for scale (OpenSMTPD 6.8 offers no '
             'CHUNKING; Postfix 3.7 does, without BINARYMIME).\n')
    out = []
    for srv in ('smtpd', 'smtpd-bdat', 'osmtpd', 'pfx'):
        for size, sl in SIZES:
            vals = [' '.join(fmt(v) for v in D.bvals(PHASE, srv, size, col)) or '-' for col, _ in COLS]
            out.append((srv, 'BDAT' if srv.endswith('-bdat') else 'DATA', sl, *vals))
    L.append(md_table(['server', 'client sends', 'size'] + [w for _, w in COLS], out) + '\n')
    return '\n'.join(L)
