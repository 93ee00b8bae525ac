"""Tests of bench/resultsmd.py, bench/charts.py and bench/history.py (pytest; run by regress/run).

They read bench/RESULTS.md as committed and variants of it; nothing is benchmarked.
"""
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import charts  # noqa: E402
import history  # noqa: E402
import resultsmd as R  # noqa: E402

SVG = '{http://www.w3.org/2000/svg}'


@pytest.fixture
def text():
    with open(os.path.join(HERE, 'RESULTS.md')) as f:
        return f.read()


def marks(data, cls):
    return [e for e in ET.fromstring(data.encode()).iter() if e.get('class') == cls]


def test_parse_results(text):
    res = R.parse(text)
    assert res.date.endswith(' UTC') and len(res.commit) >= 7 and not res.quick
    assert res.names[0] == 'smtpd' and res.names[1].startswith('OpenSMTPD') and res.names[2].startswith('Postfix')
    for size in R.SIZES:
        for n in R.SESSIONS:
            for s in R.SERVERS:
                assert res.value(R.label(R.ACCEPT, size, n), s) > 0
    assert res.value(R.label(R.PER_SESSION, 'RSS'), 'Postfix') > 100 * res.value(R.label(R.PER_SESSION, 'RSS'), 'smtpd')
    # a ratio printed 0.00x is computed from the figures instead
    assert 0 < res.ratio(R.label(R.PER_SESSION, 'RSS'), 'Postfix') < 0.01


def test_cells():
    assert R.num('3246 (1.01)') == 3246 and R.share('3246 (1.01)') == 1.01
    assert R.num('2.90x') == 2.9 and R.num('-') is None and R.num('not run') is None
    assert R.share('n/a') is None


def test_parse_refuses_other_text():
    with pytest.raises(ValueError):
        R.parse('# not a report\n')


def test_charts_well_formed(text):
    files = charts.charts(R.parse(text))
    assert sorted(files) == ['accepted.svg', 'cpu.svg', 'end-to-end.svg', 'idle-session.svg']
    for name, data in files.items():
        root = ET.fromstring(data.encode())
        assert root.tag == SVG + 'svg', name
        assert root.find(SVG + 'text') is not None
    assert len(marks(files['accepted.svg'], 'bar')) == 2 * 3 * 3  # sizes x sessions x servers
    assert len(marks(files['cpu.svg'], 'bar')) == 2 * 3
    assert len(marks(files['idle-session.svg'], 'bar')) == 2 * 3
    assert charts.check(files) == []


def test_bar_heights_follow_figures(text):
    data = charts.charts(R.parse(text))['cpu.svg']
    bars = marks(data, 'bar')
    h = [float(b.get('height')) for b in bars[:3]]
    v = [float(b.find(SVG + 'title').text) for b in bars[:3]]
    assert (h[0] < h[1]) == (v[0] < v[1]) and (h[1] < h[2]) == (v[1] < v[2])


def test_charts_missing_figures_and_markup(text):
    # a peer that did not run, and a server name with markup characters
    t = text.replace('| OpenSMTPD ', '| Open<SMTPD> & co ', 1)
    res = R.parse(t)
    lab = R.label(R.ACCEPT, '1 KiB', 200)
    res.rows[lab] = [res.rows[lab][0], 'not run', '-', '', '']
    res.rows[R.label(R.PER_SESSION, 'PSS')] = ['0.5', '-', '2000', '', '']
    files = charts.charts(res)
    assert charts.check(files) == []
    assert len(marks(files['accepted.svg'], 'na')) == 2
    assert 'Open&lt;SMTPD&gt; &amp; co' in files['accepted.svg']
    assert charts.check({'bad.svg': '<svg><rect></svg>'}) != []


def test_charts_command(tmp_path, text):
    out = tmp_path / 'charts'
    subprocess.run([sys.executable, os.path.join(HERE, 'charts.py'), os.path.join(HERE, 'RESULTS.md'), str(out)],
                   check=True)
    for f in ('accepted.svg', 'end-to-end.svg', 'cpu.svg', 'idle-session.svg'):
        ET.parse(str(out / f))
    subprocess.run([sys.executable, os.path.join(HERE, 'charts.py'), '--check'], check=True)


def test_history_append_idempotent(tmp_path, text):
    res = tmp_path / 'RESULTS.md'
    res.write_text(text)
    h = tmp_path / 'HISTORY.md'
    assert history.append(str(res), str(h))
    first = h.read_text()
    rows = [ln for ln in first.split('\n') if ln.startswith('| ') and not ln.startswith('| date')]
    assert len(rows) == 1 and R.parse(text).commit in rows[0]
    cells = R.split_row(rows[0])
    assert len(cells) == len(history.HEADER)
    assert all(c and c != '- / -' for c in cells), cells
    # kept text survives, the same run again changes nothing
    h.write_text(first + 'analysis\n')
    assert history.append(str(res), str(h))
    assert history.append(str(res), str(h))
    assert h.read_text() == first + 'analysis\n'
    # another run adds a row, sorted by date
    res.write_text(text.replace(R.parse(text).date, '2099-01-01 00:00 UTC'))
    history.append(str(res), str(h))
    rows = [ln for ln in h.read_text().split('\n') if ln.startswith('| ') and not ln.startswith('| date')]
    assert len(rows) == 2 and rows[1].startswith('| 2099-01-01')


def test_history_ignores_quick_runs(tmp_path, text):
    res = tmp_path / 'RESULTS.md'
    res.write_text(text.replace('minutes.\n', 'minutes. **Quick run (-q): fewer messages, one repetition.**\n', 1))
    h = tmp_path / 'HISTORY.md'
    assert not history.append(str(res), str(h))
    assert not h.exists()


def test_committed_history_has_the_latest_run(text):
    res = R.parse(text)
    if res.quick:
        pytest.skip('bench/RESULTS.md is a quick run')
    rows, _ = history.read(os.path.join(HERE, 'HISTORY.md'))
    assert [res.date, res.commit] in [r[:2] for r in rows]
