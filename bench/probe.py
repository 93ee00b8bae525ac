#!/usr/bin/python3 -I
"""probe.py - measuring helper of bench/run (standard library only).

  probe.py count MAILDIR        COUNT command of the servers (bench/servers.sh): prints
                                the number of messages in MAILDIR/{new,cur}
  probe.py count-sinks DIR      COUNT command of the relay servers: the messages the
                                relay phase's smtp-sink receivers took (bench/relay-aux)
  probe.py start SIZE M SESS    called by bench/smtp-source-wrap before smtp-source
  probe.py accepted T0 T1 RC [BUSY IOWAIT CLIENT_CPU]
                                called by bench/smtp-source-wrap after smtp-source
  probe.py cpu DIR              prints the CPU seconds of the server started in DIR
  probe.py pids DIR             prints the PIDs of that server's processes
  probe.py verify DIR           exactly-once check of DIR/Maildir, prints one TSV line
  probe.py mem DIR              memory of each server process, by mapping (smaps)

The first count of a server run also writes `probe.py mem` to $PEER_DIR/mem.txt (the
server is idle then: peers.sh counts right before its first blast).

The state of a server run lives in $PEER_DIR (set by peers.sh): server.pid and aux.pid
(written by the START and AUX commands), probe.log (one line per event) and
probe.target (the count that ends the current blast).

CPU time is user + system time, in seconds, of every process of the server: the members
of the sessions led by the PIDs of server.pid and aux.pid, and all their descendants
(filters start their own sessions), each counted with the time of its reaped children
(cutime + cstime), so short-lived delivery processes are included once reaped.

probe.log lines (times are Unix seconds):
  C TIME COUNT CPU                     a count
  S TIME SIZE M SESS CPU BASE          smtp-source starts; BASE = the count before it
  A T0 T1 RC BUSY IOWAIT CLIENT_CPU    smtp-source ran from T0 to T1, exit status RC; the
                                       share of the machine's CPU busy, and in iowait,
                                       meanwhile; smtp-source's own CPU seconds
  E TIME COUNT CPU CPU_SETTLED         the count reached BASE + M (CPU again 0.5 s later)
"""
import glob
import os
import re
import sys
import time

TICK = os.sysconf('SC_CLK_TCK')


def state_dir():
    return os.environ.get('PEER_DIR') or '.'


def log(line):
    with open(os.path.join(state_dir(), 'probe.log'), 'a') as f:
        f.write(line + '\n')


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def proc_table():
    """pid -> (ppid, session, cpu ticks incl. reaped children)"""
    t = {}
    for e in os.listdir('/proc'):
        if not e.isdigit():
            continue
        try:
            with open('/proc/%s/stat' % e, 'rb') as f:
                s = f.read()
        except OSError:
            continue
        fl = s[s.rindex(b')') + 2:].split()
        # fl[1] ppid, fl[3] session, fl[11..14] utime stime cutime cstime
        t[int(e)] = (int(fl[1]), int(fl[3]), sum(int(x) for x in fl[11:15]))
    return t


def server_pids(d):
    roots = [p for p in (read_int(os.path.join(d, 'server.pid')),
                         read_int(os.path.join(d, 'aux.pid'))) if p]
    t = proc_table()
    kids = {}
    for p, (pp, _, _) in t.items():
        kids.setdefault(pp, []).append(p)
    sel = set()
    todo = [p for p, (_, sid, _) in t.items() if sid in roots] + [p for p in roots if p in t]
    while todo:
        p = todo.pop()
        if p not in sel:
            sel.add(p)
            todo.extend(kids.get(p, []))
    return t, sorted(sel)


def cpu_seconds(d):
    t, pids = server_pids(d)
    return sum(t[p][2] for p in pids if p in t) / TICK


def count(maildir):
    n = 0
    for sub in ('new', 'cur'):
        try:
            n += sum(1 for e in os.scandir(os.path.join(maildir, sub)) if not e.name.startswith('.'))
        except OSError:
            pass
    return n


def sink_count(d):
    """messages the smtp-sink receivers of the relay phase took: the sum over
    DIR/sink*.count of the last "mesg=N" each printed (smtp-sink -c writes
    "sess=.. quit=.. mesg=..\\r" whenever a session ends, QUIT comes or a message ends
    with ".", right before its 250: the count is exact when read)"""
    n = 0
    for p in glob.glob(os.path.join(d, 'sink*.count')):
        try:
            with open(p, 'rb') as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 512))
                tail = f.read()
        except OSError:
            continue
        # the last complete record (the text after the last \r may be half written)
        for rec in reversed(tail.split(b'\r')[:-1]):
            m = re.search(rb'mesg=(\d+)', rec)
            if m:
                n += int(m.group(1))
                break
    return n


def smaps_summary(pid):
    """(rss, pss, uss, {mapping: rss}) in KiB from /proc/PID/smaps"""
    tot = {'Rss': 0, 'Pss': 0, 'Private_Clean': 0, 'Private_Dirty': 0}
    by = {}
    cur = None
    try:
        with open('/proc/%d/smaps' % pid) as f:
            for line in f:
                w = line.split()
                if not w:
                    continue
                if not w[0].endswith(':') or '-' in w[0]:
                    # a mapping header: ADDR PERMS OFFSET DEV INODE [PATH]
                    path = w[5] if len(w) > 5 else '[anon]'
                    cur = os.path.basename(path) if path.startswith('/') else path
                    continue
                k = w[0][:-1]
                if k in tot:
                    tot[k] += int(w[1])
                    if k == 'Rss' and cur is not None:
                        by[cur] = by.get(cur, 0) + int(w[1])
    except OSError:
        return None
    return tot['Rss'], tot['Pss'], tot['Private_Clean'] + tot['Private_Dirty'], by


def cmd_mem(d):
    t, pids = server_pids(d)
    out = []
    for p in pids:
        try:
            with open('/proc/%d/comm' % p) as f:
                comm = f.read().strip()
            with open('/proc/%d/status' % p) as f:
                st = dict(ln.split(':', 1) for ln in f if ':' in ln)
        except OSError:
            continue
        s = smaps_summary(p)
        if s is None:
            continue
        rss, pss, uss, by = s
        top = sorted(by.items(), key=lambda kv: -kv[1])[:6]
        out.append('pid %d %s user %s threads %s: RSS %d KiB, PSS %d KiB, private %d KiB; RSS by mapping: %s'
                   % (p, comm, st.get('Uid', '?').split()[0], st.get('Threads', '?').strip(), rss, pss, uss,
                      ', '.join('%s %d' % kv for kv in top)))
    return '\n'.join(out)


def cmd_count(counter):
    """counter() is the number of messages arrived so far"""
    d = state_dir()
    mfile = os.path.join(d, 'mem.txt')
    if not os.path.exists(mfile) and os.path.exists(os.path.join(d, 'server.pid')):
        with open(mfile, 'w') as f:
            f.write(cmd_mem(d) + '\n')
    tfile = os.path.join(d, 'probe.target')
    target = read_int(tfile)
    c = counter()
    if target is not None:
        # peers.sh polls every 0.2 s; wait here instead (up to 10 s per call, peers.sh
        # still sees the progress and its own time bounds), looking every 20 ms, so that
        # the moment the last message arrived is known to about 20 ms
        end = time.time() + 10
        while c < target and time.time() < end:
            time.sleep(0.02)
            c = counter()
        if c >= target:
            t = time.time()
            cpu = cpu_seconds(d)
            time.sleep(0.5)  # let the server finish its bookkeeping (queue removal, logs)
            log('E %.6f %d %.2f %.2f' % (t, c, cpu, cpu_seconds(d)))
            os.unlink(tfile)
    log('C %.6f %d %.2f' % (time.time(), c, cpu_seconds(d)))
    print(c)


def last_count(d):
    last = 0
    try:
        with open(os.path.join(d, 'probe.log')) as f:
            for line in f:
                if line.startswith('C '):
                    last = int(line.split()[2])
    except OSError:
        pass
    return last


def cmd_start(size, m, sess):
    d = state_dir()
    base = last_count(d)
    with open(os.path.join(d, 'probe.target'), 'w') as f:
        f.write('%d\n' % (base + int(m)))
    log('S %.6f %s %s %s %.2f %d' % (time.time(), size, m, sess, cpu_seconds(d), base))


def message_id(path):
    try:
        with open(path, 'rb') as f:
            head = f.read(4096)
    except OSError:
        return None
    for line in head.split(b'\n'):
        if not line.strip():
            break
        if line[:11].lower() == b'message-id:':
            return line[11:].strip()
    return None


def cmd_verify(d):
    """TSV: sent delivered distinct_message_ids duplicates without_message_id"""
    sent = 0
    try:
        with open(os.path.join(d, 'probe.log')) as f:
            for line in f:
                if line.startswith('S '):
                    sent += int(line.split()[3])
    except OSError:
        pass
    files = []
    for sub in ('new', 'cur'):
        try:
            files += [os.path.join(d, 'Maildir', sub, e.name)
                      for e in os.scandir(os.path.join(d, 'Maildir', sub)) if not e.name.startswith('.')]
        except OSError:
            pass
    ids, noid = {}, 0
    for p in files:  # every message is read, not only a sample: it takes a second
        mid = message_id(p)
        if mid is None:
            noid += 1
        else:
            ids[mid] = ids.get(mid, 0) + 1
    dups = sum(n - 1 for n in ids.values() if n > 1)
    print('%d\t%d\t%d\t%d\t%d' % (sent, len(files), len(ids), dups, noid))


def main(a):
    if a[:1] == ['count'] and len(a) == 2:
        cmd_count(lambda: count(a[1]))
    elif a[:1] == ['count-sinks'] and len(a) == 2:
        cmd_count(lambda: sink_count(a[1]))
    elif a[:1] == ['start'] and len(a) == 4:
        cmd_start(*a[1:])
    elif a[:1] == ['accepted'] and len(a) in (4, 7):
        log('A ' + ' '.join(a[1:]))
    elif a[:1] == ['cpu'] and len(a) == 2:
        print('%.2f' % cpu_seconds(a[1]))
    elif a[:1] == ['pids'] and len(a) == 2:
        print(' '.join(str(p) for p in server_pids(a[1])[1]))
    elif a[:1] == ['mem'] and len(a) == 2:
        print(cmd_mem(a[1]))
    elif a[:1] == ['verify'] and len(a) == 2:
        cmd_verify(a[1])
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
