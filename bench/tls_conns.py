#!/usr/bin/python3 -I
"""tls_conns.py - the connection test of the TLS phase of bench/run (standard library only).

bench/run gives the TLS phase its own copy of the shared harness in which this file
stands in for hold_conns.py.  peers.sh runs it, as it runs hold_conns.py, right after
measuring a server's idle memory:

    hold_conns.py HOST PORT N HOLD_S

and waits for a line "READY OK FAILED SECONDS" before it measures the memory again.
What it does depends on BENCH_TLS_MODE (set by bench/run):

  hold        N sessions that completed STARTTLS and EHLO, held HOLD_S seconds or
              until killed (bench/tlsload tls-hold, $TLS_HOLD; exec'd, so peers.sh
              stops it by its PID as it stops hold_conns.py)
  handshakes  TLS handshakes per second against the server's implicit-TLS port (the
              number in $PEER_DIR/smtps.port; bench/tlsload tls-handshakes,
              $TLS_HANDSHAKES), $BENCH_TLS_SECS seconds with each number of
              connections in parallel of $BENCH_TLS_HS_CONNS (default N), one after
              the other; writes $PEER_DIR/handshakes.tsv (CONNECTIONS:KEY TAB VALUE):
              the client's result line, the server's CPU seconds meanwhile (as
              bench/probe.py counts them, $PROBE), the client's own CPU seconds, the
              kernel's listen queue overflows and drops, and on a failure the client's
              error and the server's last log line about TLS; then READY.

Only HOST, a loopback address, is contacted.
"""
import importlib.util
import os
import resource
import subprocess
import sys
import time

sys.dont_write_bytecode = True


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 64)), hard))


def listen_overflows():
    """TcpExt ListenOverflows + ListenDrops: connections refused a full accept queue"""
    try:
        with open('/proc/net/netstat') as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith('TcpExt:'):
            kv = dict(zip(names.split()[1:], values.split()[1:]))
            return int(kv.get('ListenOverflows', 0)) + int(kv.get('ListenDrops', 0))
    return 0


def probe_cpu():
    """the server's CPU seconds, or None without the probe or the state directory"""
    d, p = os.environ.get('PEER_DIR'), os.environ.get('PROBE')
    if not d or not p:
        return None
    spec = importlib.util.spec_from_file_location('probe', p)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m.cpu_seconds(d)


def server_tls_error(d):
    """the last line of the server's log that speaks of TLS or SSL (why it failed)"""
    last = ''
    try:
        with open(os.path.join(d, 'server.log'), errors='replace') as f:
            for ln in f:
                if 'SSL' in ln or 'TLS' in ln:
                    last = ln.strip()
    except OSError:
        pass
    return last[-300:]


def measure(host, port, n, secs):
    """one test with n connections in parallel: {key: value}"""
    out = {'duration': secs}
    try:
        cmd = [os.environ['TLS_HANDSHAKES'], '-c', str(n), '-T', str(secs), '%s:%d' % (host, port)]
        out['command'] = ' '.join(cmd)
        cpu0, ov0 = probe_cpu(), listen_overflows()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=secs + 120)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu1, ov1 = probe_cpu(), listen_overflows()
        out['rc'] = r.returncode
        w = r.stdout.split()
        out.update(zip(w[::2], w[1::2]))  # handshakes N seconds S rate R version ...
        if r.returncode != 0:
            out['error'] = ' / '.join(r.stderr.strip().splitlines()[-3:])
        out['client_cpu'] = '%.2f' % (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime)
        if cpu0 is not None and cpu1 is not None:
            out['server_cpu'] = '%.2f' % (cpu1 - cpu0)
        out['listen_overflows'] = ov1 - ov0
    except (OSError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
        out['rc'] = -1
        out['error'] = repr(e)
    return out


def handshakes(host, n):
    d = os.environ.get('PEER_DIR', '.')
    secs = int(os.environ.get('BENCH_TLS_SECS', '10'))
    levels = [int(x) for x in os.environ.get('BENCH_TLS_HS_CONNS', str(n)).split()]
    t0 = time.time()
    res, total, ok = {}, 0, True
    try:
        with open(os.path.join(d, 'smtps.port')) as f:
            port = int(f.read().split()[0])
    except (OSError, ValueError, IndexError) as e:
        port, ok = None, False
        res['%d:rc' % levels[0]], res['%d:error' % levels[0]] = -1, 'no smtps port: %r' % e
    for c in levels if port else []:
        out = measure(host, port, c, secs)
        if out.get('rc') != 0:
            out['server_error'] = server_tls_error(d)
            ok = False
        total += int(out.get('handshakes', 0))
        res.update(('%d:%s' % (c, k), v) for k, v in out.items())
        if not ok:
            break  # a server that fails at one level fails at the next
    with open(os.path.join(d, 'handshakes.tsv'), 'w') as f:
        for k, v in res.items():
            f.write('%s\t%s\n' % (k, str(v).replace('\t', ' ').replace('\n', ' ')))
    print('READY %d %d %.2f' % (total, 0 if ok else 1, time.time() - t0), flush=True)
    if not ok:
        sys.stderr.write('tls_conns.py: handshakes failed: %s\n'
                         % ' / '.join(str(v) for k, v in res.items() if k.endswith('error')))


def main(a):
    if len(a) != 4:
        sys.stderr.write(__doc__)
        return 2
    host, port, n, hold = a[0], int(a[1]), int(a[2]), a[3]
    raise_nofile(n)
    mode = os.environ.get('BENCH_TLS_MODE')
    if mode == 'hold':
        exe = os.environ['TLS_HOLD']
        os.execv(exe, [exe, '-n', str(n), '-T', hold, '%s:%d' % (host, port)])
    if mode == 'handshakes':
        handshakes(host, n)
        return 0
    sys.stderr.write('tls_conns.py: BENCH_TLS_MODE must be hold or handshakes\n')
    return 2


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
