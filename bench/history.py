#!/usr/bin/python3
"""history.py - bench/HISTORY.md, one row of headline ratios per full run (standard library only).

  history.py append RESULTS.md HISTORY.md
      Adds the row of the run RESULTS.md describes (its date and commit) to HISTORY.md, or
      replaces the row of the same date and commit: running it twice changes nothing.
      A quick run (-q) adds nothing.  bench/report.py does this after a full run.
  history.py seed HISTORY.md
      Adds the rows of every full run found in the git history of bench/RESULTS.md
      (`git log --follow`, each version read with `git show`), and prints which.

In HISTORY.md, everything after the line KEEP_MARK is kept when it is rewritten.
"""
import os
import subprocess
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import resultsmd as R  # noqa: E402

KEEP_MARK = '<!-- everything below this line is kept by bench/history.py when it rewrites this file -->'

HEADER = ['date', 'commit',
          'accepted, 1 KiB', 'accepted, 64 KiB', 'end-to-end, 1 KiB', 'end-to-end, 64 KiB',
          'CPU per msg, 1 KiB', 'CPU per msg, 64 KiB', 'idle RSS', 'KiB per idle session',
          'Rust filter cost, 1 / 64 KiB', 'Python filter cost, 1 / 64 KiB',
          'Python filter, 1 KiB', 'Python filter, 64 KiB']

INTRO = '''# Benchmark history: smtpd against Postfix and OpenSMTPD

One row per full run of `bench/run` (medians of 3 repetitions unless `-r`), from the main table
of `bench/RESULTS.md` as that run wrote it; the latest run's full report is
`bench/RESULTS.md`, earlier ones are in its git history. `bench/report.py` adds the row
of a full run when it writes `bench/RESULTS.md` (`bench/history.py`, see `bench/README.md`).

Each ratio cell is **smtpd / Postfix, then smtpd / OpenSMTPD**: higher is better for rates,
lower for CPU and memory. Rates are msgs/s at 20 sessions, connections reused: "accepted"
until smtp-source has every 250, "end-to-end" until the last message is in the Maildir.
CPU per msg is the server's user + system time, all processes. Idle RSS is smtpd's idle
daemon (MiB, summed over processes), then the ratios; KiB per idle session is smtpd's RSS
growth per idle session, then the ratios. A filter's cost is the throughput it takes
from smtpd without filter at 20 sessions (Rust: filter-pass; Python: filter-python with
a pass-through script; both on every hook, data lines included); the Python filter
columns compare that rate with Postfix + a Python milter and OpenSMTPD + a Python
proc-exec filter. A commit followed by + was built from a work tree with uncommitted
changes; "-" is a figure the run did not produce.
'''


def fx(x):
    """A ratio: two decimals, or three significant digits below 0.1."""
    if x is None:
        return '-'
    if abs(x) >= 0.1:
        return '%.2fx' % x
    return '%.3gx' % x


def both(res, lab):
    return '%s / %s' % (fx(res.ratio(lab, 'Postfix')), fx(res.ratio(lab, 'OpenSMTPD')))


def cost(share):
    return '-' if share is None else '%.0f%%' % ((1 - share) * 100)


def row(res):
    """The cells of the history row of a parsed RESULTS.md."""
    cells = [res.date, res.commit]
    for fmt in (R.ACCEPT, R.E2E):
        for size in R.SIZES:
            cells.append(both(res, R.label(fmt, size, 20)))
    for size in R.SIZES:
        cells.append(both(res, R.label(R.CPU, size)))
    rss = res.value(R.IDLE_RSS, 'smtpd')
    cells.append('%s MiB, %s' % ('-' if rss is None else '%.2f' % rss, both(res, R.IDLE_RSS)))
    per = R.label(R.PER_SESSION, 'RSS')
    kib = res.value(per, 'smtpd')
    cells.append('%s, %s' % ('-' if kib is None else '%.2f' % kib, both(res, per)))
    for fmt in (R.FILTER_RUST, R.FILTER_PY):
        cells.append(' / '.join(cost(R.share(res.cell(R.label(fmt, size), 0))) for size in R.SIZES))
    for size in R.SIZES:
        cells.append(both(res, R.label(R.FILTER_PY, size)))
    return cells


def md_line(cells):
    return '| ' + ' | '.join(cells) + ' |'


def read(path):
    """(rows, kept text) of an existing HISTORY.md; rows as lists of cells."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return [], ''
    kept = ''
    if KEEP_MARK in text:
        text, kept = text.split(KEEP_MARK, 1)
        kept = kept.lstrip('\n')
    rows = []
    for line in text.split('\n'):
        if line.startswith('| ') and not line.startswith('| date |'):
            rows.append(R.split_row(line))
    return rows, kept


def write(path, rows, kept):
    rows = sorted(rows, key=lambda r: (r[0], r[1]))
    L = [INTRO, md_line(HEADER), '|' + '---|' * len(HEADER)]
    L += [md_line(r) for r in rows]
    text = '\n'.join(L) + '\n\n' + KEEP_MARK + '\n\n' + kept
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def merge(rows, new):
    """rows with new in place of the row of the same date and commit (or added)."""
    return [r for r in rows if (r[0], r[1]) != (new[0], new[1])] + [new]


def append(results_path, history_path):
    """Adds (or replaces) the row of the run in results_path; False for a quick run."""
    with open(results_path) as f:
        res = R.parse(f.read())
    if res.quick:
        return False
    rows, kept = read(history_path)
    write(history_path, merge(rows, row(res)), kept)
    return True


def seed(history_path):
    """Adds the rows of every full run in the git history of bench/RESULTS.md."""
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git = ['git', '-C', top]
    log = subprocess.run(git + ['log', '--follow', '--format=%H %cs', '--', 'bench/RESULTS.md'],
                         check=True, capture_output=True, text=True).stdout.split()
    rows, kept = read(history_path)
    seen = set()
    for h in log[::2]:
        text = subprocess.run(git + ['show', '%s:bench/RESULTS.md' % h], capture_output=True, text=True).stdout
        try:
            res = R.parse(text)
        except ValueError as e:
            print('%s: skipped (%s)' % (h[:7], e))
            continue
        key = (res.date, res.commit)
        if res.quick or key in seen:
            print('%s: %s run of %s at %s%s' % (h[:7], 'quick' if res.quick else 'full', res.commit, res.date,
                                                ', already seen' if key in seen else ', skipped'))
            continue
        seen.add(key)
        print('%s: full run of %s at %s' % (h[:7], res.commit, res.date))
        rows = merge(rows, row(res))
    write(history_path, rows, kept)


def main(a):
    if a[:1] == ['append'] and len(a) == 3:
        if not append(a[1], a[2]):
            print('history.py: %s is a quick run, %s unchanged' % (a[1], a[2]))
    elif a[:1] == ['seed'] and len(a) == 2:
        seed(a[1])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
