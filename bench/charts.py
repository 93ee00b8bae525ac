#!/usr/bin/python3
"""charts.py - the headline comparisons of bench/RESULTS.md as SVG charts (standard library only).

  charts.py RESULTS.md OUTDIR
      Reads the main table of RESULTS.md and writes OUTDIR/accepted.svg, end-to-end.svg
      (msgs/s against sessions, 1 KiB and 64 KiB), cpu.svg (CPU s per 1000 msgs) and
      idle-session.svg (KiB per idle session, log scale). bench/run calls it after a full
      run, with bench/RESULTS.md and bench/charts.
  charts.py --check [RESULTS.md]
      Builds the same charts (from bench/RESULTS.md by default) without writing them and
      checks that each is well-formed XML with a bar or a mark for every figure.
"""
import math
import os
import sys
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import resultsmd as R  # noqa: E402

COLORS = ('#1f6fb4', '#e0801a', '#3a9a3a')  # smtpd, OpenSMTPD, Postfix
FONT = 'font-family="Helvetica, Arial, sans-serif"'
PANEL_W, PANEL_H = 430, 300
TOP, LEFT, BOTTOM = 78, 70, 56


def fmt(x):
    """A figure as bench/report.py writes it: three significant digits or so."""
    if abs(x) >= 100:
        return '%.0f' % x
    if abs(x) >= 10:
        return '%.1f' % x
    return '%.2f' % x


def nice_ticks(top):
    """Ticks from 0 to at least top, 4 to 8 of them, at 1, 2 or 5 times a power of ten."""
    if top <= 0:
        return [0, 1]
    p = 10 ** math.floor(math.log10(top / 5))
    for m in (1, 2, 5, 10):
        step = m * p
        if top / step <= 7:
            break
    n = math.ceil(top / step - 1e-9)
    return [i * step for i in range(n + 1)]


def tick(t):
    """An axis tick: 0, 0.5, 20, 1,000."""
    return '{:,.0f}'.format(t) if t == int(t) else '%g' % t


def text(x, y, s, size=12, anchor='middle', extra=''):
    return '<text x="%.1f" y="%.1f" font-size="%d" text-anchor="%s" %s%s>%s</text>' % (
        x, y, size, anchor, FONT, extra, escape(s))


def panel(x0, y0, pwidth, title, groups, log=False, ylabel=''):
    """SVG elements of one bar chart at (x0, y0), pwidth x PANEL_H.

    groups: [(group label, [value or None for each server])].
    """
    vals = [v for _, vs in groups for v in vs if v is not None and v > 0]
    ph = PANEL_H - 40 - BOTTOM  # plot height, below the panel's title and room for a bar's figure
    pw = pwidth - LEFT - 10
    px, py = x0 + LEFT, y0 + 40  # top left of the plot area
    if log:
        lo = 10 ** math.floor(math.log10(min(vals))) if vals else 1
        hi = 10 ** math.ceil(math.log10(max(vals))) if vals else 10
        if hi <= lo:
            hi = lo * 10
        ticks = [lo * 10 ** i for i in range(round(math.log10(hi / lo)) + 1)]

        def ypos(v):
            return py + ph - ph * (math.log10(max(v, lo)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
    else:
        ticks = nice_ticks(max(vals) * 1.08 if vals else 1)
        hi = ticks[-1]

        def ypos(v):
            return py + ph - ph * v / hi
    E = [text(x0 + pwidth / 2, y0 + 16, title, 14, extra=' font-weight="bold"')]
    for t in ticks:
        y = ypos(t)
        E.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>' % (px, y, px + pw, y))
        E.append(text(px - 6, y + 4, tick(t), 11, 'end'))
    E.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>' % (px, py + ph, px + pw, py + ph))
    E.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#333"/>' % (px, py, px, py + ph))
    if ylabel:
        cx, cy = x0 + 14, py + ph / 2
        E.append(text(cx, cy, ylabel, 11, extra=' transform="rotate(-90 %.1f %.1f)"' % (cx, cy)))
    gw = pw / max(len(groups), 1)
    bw = gw * 0.8 / len(COLORS)
    for gi, (glabel, vs) in enumerate(groups):
        gx = px + gi * gw + gw * 0.1
        E.append(text(px + gi * gw + gw / 2, py + ph + 18, glabel, 12))
        for si, v in enumerate(vs):
            bx = gx + si * bw
            if v is None:
                E.append(text(bx + bw / 2, py + ph - 4, 'n/a', 10, extra=' fill="#666" class="na"'))
                continue
            y = ypos(v)
            E.append('<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s">'
                     '<title>%s</title></rect>' % (bx + 1, y, bw - 2, py + ph - y, COLORS[si], escape(fmt(v))))
            E.append(text(bx + bw / 2, y - 4, fmt(v), 10))
    return E


def svg(title, subtitle, names, panels, source):
    """A whole chart: title, legend, panels side by side, the source line; returns the SVG text.

    panels: [(panel title, groups, log, y axis label)].
    """
    pwidth = max(PANEL_W, 620 // len(panels))
    w = pwidth * len(panels) + 20
    h = TOP + PANEL_H + 24
    E = ['<?xml version="1.0" encoding="UTF-8"?>',
         '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d">' % (w, h, w, h),
         '<rect width="100%" height="100%" fill="#fff"/>',
         text(12, 24, title, 17, 'start', ' font-weight="bold"'),
         text(12, 44, subtitle, 12, 'start', ' fill="#444"')]
    lx = 12
    for name, color in zip(names, COLORS):
        E.append('<rect x="%d" y="56" width="12" height="12" fill="%s"/>' % (lx, color))
        E.append(text(lx + 17, 66, name, 12, 'start'))
        lx += 30 + 7 * len(name)
    for i, (ptitle, groups, log, ylabel) in enumerate(panels):
        E += panel(10 + i * pwidth, TOP, pwidth, ptitle, groups, log, ylabel)
    E.append(text(w - 8, h - 8, source, 10, 'end', ' fill="#666"'))
    E.append('</svg>')
    return '\n'.join(E) + '\n'


def charts(res):
    """{file name: SVG text} for a parsed RESULTS.md."""
    src = 'bench/RESULTS.md, %s, smtpd at %s; medians of the repetitions' % (res.date, res.commit)
    servers = R.SERVERS
    out = {}
    for name, fmt_, what in (('accepted.svg', R.ACCEPT, 'Accepted'), ('end-to-end.svg', R.E2E, 'End-to-end')):
        panels = []
        for size in R.SIZES:
            groups = [('%d session%s' % (n, '' if n == 1 else 's'),
                       [res.value(R.label(fmt_, size, n), s) for s in servers]) for n in R.SESSIONS]
            panels.append(('%s messages' % size, groups, False, 'msgs/s'))
        sub = ('msgs/s until smtp-source has every 250' if what == 'Accepted'
               else 'msgs/s until the last message is in the Maildir')
        out[name] = svg('%s messages per second (higher is better)' % what,
                        sub + '; connections reused; smtpd and Postfix fsync before the 250', res.names, panels, src)
    groups = [(size, [res.value(R.label(R.CPU, size), s) for s in servers]) for size in R.SIZES]
    out['cpu.svg'] = svg('CPU seconds per 1000 messages (lower is better)',
                         'user + system time of every process of the server, 20 sessions, until all is delivered',
                         res.names, [('20 sessions', groups, False, 'CPU s / 1000 msgs')], src)
    groups = [('%s delta' % k, [res.value(R.label(R.PER_SESSION, k), s) for s in servers]) for k in ('RSS', 'PSS')]
    out['idle-session.svg'] = svg('Memory per idle session, KiB (lower is better; log scale)',
                                  'growth of the server\'s memory with 1000 idle sessions, divided by 1000',
                                  res.names, [('KiB per idle session', groups, True, 'KiB (log scale)')], src)
    return out


def check(files):
    """Errors of the charts: not well-formed, or without a bar or an n/a mark per figure."""
    errs = []
    for name, data in files.items():
        try:
            root = ET.fromstring(data.encode())
        except ET.ParseError as e:
            errs.append('%s: not well-formed: %s' % (name, e))
            continue
        if root.tag != '{http://www.w3.org/2000/svg}svg':
            errs.append('%s: root element %s' % (name, root.tag))
        marks = [e for e in root.iter() if e.get('class') in ('bar', 'na')]
        if not marks or len(marks) % len(COLORS):
            errs.append('%s: %d bars and n/a marks' % (name, len(marks)))
    return errs


def main(a):
    if a[:1] == ['--check'] and len(a) <= 2:
        path = a[1] if len(a) == 2 else os.path.join(HERE, 'RESULTS.md')
        with open(path) as f:
            errs = check(charts(R.parse(f.read())))
        for e in errs:
            print('charts.py: %s' % e, file=sys.stderr)
        return 1 if errs else 0
    if len(a) != 2 or a[0].startswith('-'):
        sys.stderr.write(__doc__)
        return 2
    with open(a[0]) as f:
        files = charts(R.parse(f.read()))
    errs = check(files)
    if errs:
        for e in errs:
            print('charts.py: %s' % e, file=sys.stderr)
        return 1
    os.makedirs(a[1], exist_ok=True)
    for name, data in files.items():
        tmp = os.path.join(a[1], name + '.tmp')
        with open(tmp, 'w') as f:
            f.write(data)
        os.replace(tmp, os.path.join(a[1], name))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
