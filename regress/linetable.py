#!/usr/bin/python3
"""A table process of OpenSMTPD 7.6's line protocol (smtpd-tables(7)), for the tests:
`linetable.py DATA.json`, where DATA.json maps service names to {key: value}.  It
registers the services of the file, answers check and lookup from it, reads it again
on update (an `"update": "error"` entry makes the update fail), and writes each request
it gets to standard error (logged by smtpd)."""

import json
import sys


def load(path):
    with open(path) as f:
        return json.load(f)


def main():
    path = sys.argv[1]
    data = load(path)
    name = None
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line.startswith("config|tablename|"):
            name = line.split("|", 2)[2]
        if line == "config|ready":
            break
    for service in data:
        if service != "update":
            sys.stdout.write("register|%s\n" % service)
    sys.stdout.write("register|ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        line = line.rstrip("\n")
        print("request " + line, file=sys.stderr, flush=True)
        f = line.split("|", 7)
        if f[:2] != ["table", "0.1"] or f[3] != name:
            sys.exit("bad request %r" % line)
        op = f[4]
        if op == "update":
            rid = f[5]
            try:
                new = load(path)
            except (OSError, ValueError) as e:
                sys.stdout.write("update-result|%s|error|%s\n" % (rid, e))
            else:
                if new.get("update") == "error":
                    sys.stdout.write("update-result|%s|error|told to fail\n" % rid)
                else:
                    data = new
                    sys.stdout.write("update-result|%s|ok\n" % rid)
        else:
            service, rid, key = f[5], f[6], f[7]
            value = data.get(service, {}).get(key)
            if op == "check":
                sys.stdout.write("check-result|%s|%s\n" % (rid, "found" if value is not None else "not-found"))
            elif value is None:
                sys.stdout.write("%s-result|%s|not-found\n" % (op, rid))
            else:
                sys.stdout.write("%s-result|%s|found|%s\n" % (op, rid, value))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
