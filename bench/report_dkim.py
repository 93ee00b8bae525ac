"""report_dkim.py - the dkim phase's part of bench/report.py (standard library, and
python3-dkim for the check of the signatures when it is there).

  collect_run(PHASE, NAME, RUN, DIR, DATA_DIR)
      For a server run of the dkim phase: how many messages of its Maildir carry a
      DKIM-Signature field, and how many of a sample (the first SAMPLE, by name) dkimpy
      verifies with the keys' records (DATA_DIR/dkim.tsv, written by bench/run);
      appended to DATA_DIR/dkim-runs.tsv.
  rows(D, rows), targets(D, t), section(D)
      The rows of the results table, the targets, and the "DKIM phase" section.
"""
import collections
import os

from report import NAMES, failures, fmt, fr, md_table, med, ratio, read_tsv

PHASE = 'dkim'
PLAIN, OURS, OURS_ED, OSMTPD, PFX = 'smtpd', 'smtpd-dkim', 'smtpd-dkim-ed', 'osmtpd-dkim', 'pfx-dkim'
# the peers' own signers behind smtpd: OpenSMTPD's text-protocol filter, opendkim by milter
TEXT, MILTER = 'smtpd-dkimsign', 'smtpd-milter-dkim'
SIZES = ((1024, '1 KiB'), (65536, '64 KiB'))
SAMPLE = 50


# ---------------------------------------------------------------- collect
def signed(path):
    """True if the header of the message at path has a DKIM-Signature field"""
    with open(path, 'rb') as f:
        head = f.read(64 * 1024).split(b'\n\n', 1)[0]
    return any(ln.lower().startswith(b'dkim-signature:') for ln in head.split(b'\n'))


def collect_run(phase, name, run, d, data):
    if phase != PHASE:
        return
    files = []
    for sub in ('new', 'cur'):
        try:
            files += sorted(os.path.join(d, 'Maildir', sub, e.name)
                            for e in os.scandir(os.path.join(d, 'Maildir', sub)) if not e.name.startswith('.'))
        except OSError:
            pass
    n_signed = sum(1 for p in files if signed(p))
    out = [('messages', len(files)), ('signed', n_signed)]
    records = {r[0]: r[1].encode() for r in read_tsv(os.path.join(data, 'dkim.tsv')) if len(r) == 2}
    try:
        import dkim
    except ImportError:
        dkim = None
    if dkim is not None and records and name != PLAIN:
        def dns(qname, timeout=5):
            q = qname.decode() if isinstance(qname, bytes) else qname
            return records.get(q.split('.', 1)[0], b'')
        ok = 0
        sample = files[:SAMPLE]
        for p in sample:
            with open(p, 'rb') as f:
                text = f.read().replace(b'\r\n', b'\n').replace(b'\n', b'\r\n')
            try:
                ok += bool(dkim.verify(text, dnsfunc=dns))
            except Exception:  # noqa: BLE001 - any failure is a message that did not verify
                pass
        out += [('sampled', len(sample)), ('verified', ok)]
    with open(os.path.join(data, 'dkim-runs.tsv'), 'a') as f:
        for k, v in out:
            f.write('%s\t%s\t%s\t%s\t%s\n' % (phase, name, run, k, v))


# ---------------------------------------------------------------- report
def runs(D, srv):
    """{run: {key: value}} of srv in dkim-runs.tsv"""
    out = collections.OrderedDict()
    for r in read_tsv(os.path.join(D.dir, 'dkim-runs.tsv')):
        if len(r) >= 5 and r[0] == PHASE and r[1] == srv:
            out.setdefault(r[2], {})[r[3]] = r[4]
    return out


def run_ratio(D, a, b, size, col='accept'):
    """median over the runs of a's value / b's in the same run (neighbours in time)"""
    idx = {'accept': 9, 'e2e': 10}[col]
    va = {r[2]: float(r[idx]) for r in D.blasts if r[0] == PHASE and r[1] == a and int(r[3]) == size}
    vb = {r[2]: float(r[idx]) for r in D.blasts if r[0] == PHASE and r[1] == b and int(r[3]) == size}
    return med([va[k] / vb[k] for k in va if k in vb and vb[k] > 0])


def ran(D):
    return any(r[0] == PHASE for r in D.blasts)


def rows(D, rows):
    """the dkim phase's rows of the results table: smtpd + filters/dkim in the smtpd
    column, OpenSMTPD + filter-dkimsign and Postfix + opendkim in theirs"""
    if not ran(D):
        return

    def cell(v, share=None):
        if v is None:
            return 'not run'
        return fmt(v) if share is None else '%s (%.2f)' % (fmt(v), share)

    for col, what in (('accept', 'accepted'), ('e2e', 'end-to-end')):
        for size, sl in SIZES:
            s, o, p = [D.b(PHASE, x, size, col) for x in (OURS, OSMTPD, PFX)]
            rows.append(('DKIM signing, RSA 2048, %s msgs/s, %s, 20 sessions (share of the same server '
                         'unsigned)' % (what, sl),
                         cell(s, run_ratio(D, OURS, PLAIN, size, col)), cell(o), cell(p),
                         fr(ratio(s, o)), fr(ratio(s, p))))
    for size, sl in SIZES:
        s = D.b(PHASE, OURS_ED, size, 'accept')
        rows.append(('DKIM signing, Ed25519, accepted msgs/s, %s, 20 sessions (share of unsigned)' % sl,
                     cell(s, run_ratio(D, OURS_ED, PLAIN, size)), 'n/a', 'n/a', '', ''))
    for size, sl in SIZES:
        s, o, p = [D.b(PHASE, x, size, 'cpu1k') for x in (OURS, OSMTPD, PFX)]
        rows.append(('DKIM signing, RSA 2048, CPU s per 1000 msgs (server, signer included), %s' % sl,
                     cell(s), cell(o), cell(p), fr(ratio(s, o)), fr(ratio(s, p))))
    # The same signer in both columns: OpenSMTPD's filter-dkimsign (text protocol) in
    # smtpd and in OpenSMTPD; opendkim by milter in smtpd and in Postfix.
    for srv, peer, what in ((TEXT, OSMTPD, 'OpenSMTPD\'s filter-dkimsign (text protocol)'),
                            (MILTER, PFX, 'opendkim by milter (smtpd: filter-milter)')):
        for size, sl in SIZES:
            s, q = D.b(PHASE, srv, size, 'accept'), D.b(PHASE, peer, size, 'accept')
            cells = [cell(s, run_ratio(D, srv, PLAIN, size)), 'n/a', 'n/a', '', '']
            col = 1 if peer == OSMTPD else 2
            cells[col] = cell(q)
            cells[2 + col] = fr(ratio(s, q))
            rows.append(('%s, accepted msgs/s, %s, 20 sessions (share of the same server unsigned)'
                         % (what, sl), *cells))
        for size, sl in SIZES:
            s, q = D.b(PHASE, srv, size, 'cpu1k'), D.b(PHASE, peer, size, 'cpu1k')
            cells = [cell(s), 'n/a', 'n/a', '', '']
            col = 1 if peer == OSMTPD else 2
            cells[col] = cell(q)
            cells[2 + col] = fr(ratio(s, q))
            rows.append(('%s, CPU s per 1000 msgs (server, signer included), %s' % (what, sl), *cells))


def targets(D, t):
    """the dkim phase's targets"""
    if not ran(D):
        return
    for size, sl in SIZES:
        r = run_ratio(D, OURS, PLAIN, size)
        cost = None if r is None else 1 - r
        t('DKIM signing (RSA 2048): throughput cost against unsigned smtpd, %s' % sl,
          '-' if cost is None else '%.0f%%' % (cost * 100), '<= 20%', None if cost is None else cost <= 0.2)
    for peer, name in ((OSMTPD, 'OpenSMTPD + filter-dkimsign'), (PFX, 'Postfix + opendkim')):
        for size, sl in SIZES:
            r = ratio(D.b(PHASE, OURS, size, 'accept'), D.b(PHASE, peer, size, 'accept'))
            t('DKIM signing accepted msgs/s, %s, vs %s' % (sl, name), fr(r), '>= 3x', None if r is None else r >= 3)
    # The peers' own signers behind smtpd: the text-protocol filter at least twice as fast
    # as in OpenSMTPD for half the CPU; opendkim by milter costing smtpd less CPU per
    # message than it costs Postfix, at a higher rate. (The share of each server's own
    # unsigned rate is in the rows: smtpd, much faster unsigned, loses more of it.)
    for size, sl in SIZES:
        r = ratio(D.b(PHASE, TEXT, size, 'accept'), D.b(PHASE, OSMTPD, size, 'accept'))
        t('filter-dkimsign (text protocol) accepted msgs/s, %s, smtpd vs OpenSMTPD' % sl, fr(r), '>= 2x',
          None if r is None else r >= 2)
        r = ratio(D.b(PHASE, TEXT, size, 'cpu1k'), D.b(PHASE, OSMTPD, size, 'cpu1k'))
        t('filter-dkimsign (text protocol) CPU per message, %s, smtpd vs OpenSMTPD' % sl, fr(r), '<= 0.5x',
          None if r is None else r <= 0.5)
    for size, sl in SIZES:
        r = ratio(D.b(PHASE, MILTER, size, 'cpu1k'), D.b(PHASE, PFX, size, 'cpu1k'))
        t('opendkim by milter: CPU per message, %s, smtpd (filter-milter) vs Postfix' % sl, fr(r), '< 1x',
          None if r is None else r < 1)
        r = ratio(D.b(PHASE, MILTER, size, 'accept'), D.b(PHASE, PFX, size, 'accept'))
        t('opendkim by milter: accepted msgs/s, %s, smtpd (filter-milter) vs Postfix' % sl, fr(r), '> 1x',
          None if r is None else r > 1)


def section(D):
    """set-up, failures and per-run checks of the dkim phase (markdown), or ''"""
    if not ran(D) and not any(x.startswith('dkim') for x in D.notrun):
        return ''
    L = ['## DKIM phase\n']
    L.append('- Keys made at run time by `openssl genpkey` (RSA 2048 for all three servers, and Ed25519 for a '
             'second smtpd run), selector `bench` (`benched` for Ed25519), domain bench.test; every message '
             'is signed (smtp-source writes `From: <a@bench.test>`), relaxed/relaxed. Load as thr20: 20 '
             'sessions, connections reused.')
    L.append('- **smtpd**: the configuration above plus `filter "dkim" proc-exec "target/release/filter-dkim -a '
             '-m sign -c relaxed/relaxed -k bench.test:bench:KEY"` and `filter "dkim"` on the listener (`-a`: '
             'every session is internal). The share in brackets is the rate over the unsigned smtpd\'s in the '
             'same repetition.')
    L.append('- **OpenSMTPD**: the harness\'s configuration plus `filter "dkim" proc-exec '
             '"/usr/libexec/opensmtpd/filter-dkimsign -c relaxed/relaxed -d bench.test -s bench -k KEY"` '
             '(Debian\'s opensmtpd-filter-dkimsign) on its listener.')
    L.append('- **Postfix**: the harness\'s configuration plus `smtpd_milters = unix:DIR/opendkim.sock`, '
             '`milter_default_action = tempfail`, and opendkim (Debian\'s) with `Mode s`, `Domain bench.test`, '
             '`Selector bench`, `KeyFile KEY`, `Canonicalization relaxed/relaxed`, `InternalHosts 127.0.0.1`; '
             'its CPU time is counted with Postfix\'s.')
    L.append('- **smtpd + filter-dkimsign**: the smtpd configuration above with OpenSMTPD\'s signer as it is '
             '(`filter "dkim" proc-exec "/usr/libexec/opensmtpd/filter-dkimsign -c relaxed/relaxed -d bench.test '
             '-s bench -k KEY"`), spoken to in OpenSMTPD\'s text protocol. **smtpd + filter-milter + opendkim**: '
             '`filter "dkim" proc-exec "target/release/filter-milter unix:DIR/opendkim.sock"`, opendkim set up '
             'as for Postfix, its CPU time counted with smtpd\'s.')
    L.append('- Check: every message of each run is looked at for a DKIM-Signature field, and the first %d '
             '(by file name) are verified by dkimpy against the records `filter-dkim -p` printed for the keys.\n'
             % SAMPLE)
    bad = [x for x in D.notrun if x.startswith('dkim')]
    rows_ = []
    for srv in (PLAIN, OURS, OURS_ED, OSMTPD, PFX, TEXT, MILTER):
        for run, v in runs(D, srv).items():
            rows_.append((NAMES.get(srv, srv), run, v.get('messages', '-'), v.get('signed', '-'),
                          '%s / %s' % (v.get('verified', '-'), v.get('sampled', '-'))))
            if srv != PLAIN and v.get('signed') != v.get('messages'):
                bad.append('dkim %s run %s: %s of %s messages signed' % (NAMES.get(srv, srv), run,
                                                                        v.get('signed'), v.get('messages')))
            if srv != PLAIN and 'sampled' in v and v.get('verified') != v.get('sampled'):
                bad.append('dkim %s run %s: dkimpy verified %s of %s sampled signatures'
                           % (NAMES.get(srv, srv), run, v.get('verified'), v.get('sampled')))
    L += failures(bad)
    if rows_:
        L.append('Per server run (both message sizes together):\n')
        L.append(md_table(['server', 'run', 'messages', 'with DKIM-Signature', 'verified by dkimpy / sampled'],
                          rows_) + '\n')
    return '\n'.join(L)
