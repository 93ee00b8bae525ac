"""Refuses one sender with 550: `filter-python reject.py ADDRESS`, or $REJECT_SENDER.

The comparison ignores case; an address starting with "@" refuses a whole domain.
"""
import os
import sys

import filter

target = (sys.argv[1] if len(sys.argv) > 1 else os.environ.get("REJECT_SENDER", "")).lower()
if not target:
    sys.exit("reject.py: give the sender to refuse as argument or in $REJECT_SENDER")


def on_mail(s, mail):
    m = mail.lower()
    if m == target or (target.startswith("@") and m.endswith(target)):
        filter.reject(s, 550, "5.7.1 Sender <%s> refused" % mail)
