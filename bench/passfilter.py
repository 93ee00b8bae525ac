"""Pass-through filter for filter-python (filters/python): registers every hook that is
answered, message lines included, and lets everything through unchanged.  The same work
as filter-pass (Rust), OpenSMTPD's osmtpd_passfilter.py and Postfix's pf_passmilter.py.
Run as: filter-python passfilter.py"""
import filter

filter.name = "pass"


def on_connect(s, local, remote, hostname):
    pass


def on_helo(s, helo):
    pass


def on_ehlo(s, helo):
    pass


def on_mail(s, mail):
    pass


def on_rcpt(s, rcpt):
    pass


def on_data(s):
    pass


def on_dataline(s, line):
    filter.writeln(s, line)


def on_eom(s, size):
    pass
