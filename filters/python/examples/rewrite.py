"""Replaces a word in the message body: `filter-python rewrite.py [FROM [TO]]`
(default: colour -> color).  Headers are left alone."""
import sys

import filter

FROM = sys.argv[1] if len(sys.argv) > 1 else "colour"
TO = sys.argv[2] if len(sys.argv) > 2 else "color"
in_body = set()  # sessions whose message is past its header section


def on_dataline(s, line):
    if s in in_body:
        line = line.replace(FROM, TO)
    elif line == "":
        in_body.add(s)
    filter.writeln(s, line)


def on_eom(s, size):
    in_body.discard(s)


def on_disconnect(s):
    in_body.discard(s)


def on_rollback(s):
    in_body.discard(s)
