//! Tests that keep man/smtpd.conf.5 and smtpd.conf.sample in step with the parser.
