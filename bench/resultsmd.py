"""resultsmd.py - reads back a bench/RESULTS.md written by bench/report.py (standard library only).

The report's main table is the input of bench/history.py (one row of headline ratios per
full run) and bench/charts.py (the SVG charts): the raw data of a run lives in a temporary
directory that is gone after the run, the table stays, in the work tree and in git.
"""
import re

# Labels of the main table's rows, as bench/report.py writes them (stable since the first run).
ACCEPT = 'accepted msgs/s, %s, %d session%s'
E2E = 'end-to-end msgs/s (all in the Maildir), %s, %d session%s'
CPU = 'CPU s per 1000 msgs (server user+sys, all processes), %s, 20 sessions'
IDLE_RSS = 'RSS idle, MiB (sum over processes)'
PER_SESSION = 'KiB per idle session (%s delta)'
FILTER_RUST = 'pass-through filter in Rust (filter-pass), %s, 20 sessions: msgs/s (share of no filter)'
FILTER_PY = 'pass-through filter in Python, %s, 20 sessions: msgs/s (share of no filter)'

SIZES = ('1 KiB', '64 KiB')
SESSIONS = (1, 20, 200)
SERVERS = ('smtpd', 'OpenSMTPD', 'Postfix')

_NUM = re.compile(r'^\s*(-?[0-9]+(?:\.[0-9]+)?)')
_SHARE = re.compile(r'\(([0-9]+(?:\.[0-9]+)?)\)')


def label(fmt, size, sessions=None):
    """The row label for a size (and a number of sessions, for the rate rows)."""
    if sessions is None:
        return fmt % size
    return fmt % (size, sessions, '' if sessions == 1 else 's')


def num(cell):
    """The leading number of a cell ('3200', '32.5', '3246 (1.01)', '2.90x'), or None ('-', 'not run')."""
    if cell is None:
        return None
    m = _NUM.match(cell)
    return float(m.group(1)) if m else None


def share(cell):
    """The share in parentheses of a filter cell ('3246 (1.01)' gives 1.01), or None."""
    if cell is None:
        return None
    m = _SHARE.search(cell)
    return float(m.group(1)) if m else None


class Results:
    """One RESULTS.md: its date, commit, whether it was a quick run, and its main table.

    rows maps a row label to its five cells: smtpd, OpenSMTPD, Postfix,
    smtpd / OpenSMTPD, smtpd / Postfix (strings, as written); names the three servers as
    the table's header does ('OpenSMTPD 6.8.0p2-4').
    """

    def __init__(self, date, commit, quick, rows, names=SERVERS):
        self.date = date
        self.commit = commit
        self.quick = quick
        self.rows = rows
        self.names = names

    def cell(self, lab, col):
        """The cell of a row (col 0 to 4), None when the row or the cell is absent."""
        r = self.rows.get(lab)
        return r[col] if r is not None and col < len(r) else None

    def value(self, lab, server):
        """The figure of one server (one of SERVERS) in a row, as a float, or None."""
        return num(self.cell(lab, SERVERS.index(server)))

    def ratio(self, lab, peer):
        """smtpd / peer for a row (peer 'OpenSMTPD' or 'Postfix'), or None.

        The ratio as printed, unless it is below 0.1 (printed 0.00x or 0.03x): then from the
        two figures, which keep three significant digits.
        """
        printed = num(self.cell(lab, 3 if peer == 'OpenSMTPD' else 4))
        if printed is not None and abs(printed) >= 0.1:
            return printed
        s, p = self.value(lab, 'smtpd'), self.value(lab, peer)
        if s is not None and p:
            return s / p
        return printed


def split_row(line):
    """The cells of a markdown table line ('| a | b |' gives ['a', 'b'])."""
    line = line.strip()
    if line.startswith('|'):
        line = line[1:]
    if line.endswith('|'):
        line = line[:-1]
    return [c.strip() for c in line.split('|')]


def parse(text):
    """A Results from the text of a RESULTS.md; ValueError if it has no date, commit or table."""
    m = re.search(r'^Written by `bench/run`.* on ([0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2} UTC)', text, re.M)
    if not m:
        raise ValueError('no "Written by bench/run ... on DATE" line')
    date = m.group(1)
    quick = 'Quick run (-q)' in text[m.start():text.find('\n', m.start())]
    m = re.search(r'^- smtpd at commit ([0-9a-f]+)( \(working tree with uncommitted changes\))?', text, re.M)
    if not m:
        raise ValueError('no "smtpd at commit" line')
    commit = m.group(1) + ('+' if m.group(2) else '')
    rows = {}
    names = SERVERS
    start = text.find('\n## Results\n')
    if start < 0:
        raise ValueError('no Results section')
    for line in text[start:].split('\n')[2:]:
        if line.startswith('## '):
            break
        if not line.startswith('| ') or line.startswith('|---'):
            continue
        cells = split_row(line)
        if cells[0].startswith('measure ('):
            if len(cells) >= 4:
                names = tuple(cells[1:4])
            continue
        rows[cells[0]] = cells[1:]
    if not rows:
        raise ValueError('empty Results table')
    return Results(date, commit, quick, rows, names)
