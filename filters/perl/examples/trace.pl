# Prints every event on standard error, in the format of the Rust filter-trace.
use strict;
use warnings;

sub out {
    my ($id, $text) = @_;
    # Like Rust's String::from_utf8_lossy: invalid UTF-8 becomes U+FFFD.
    print STDERR smtpd::id_hex($id) . ' ' . smtpd::lossy($text) . "\n";
}

sub on_connect { my ($id, $local, $remote, $host) = @_;
                 out($id, "connect local=$local remote=$remote hostname=$host") }
sub on_helo { out($_[0], "helo $_[1]") }
sub on_ehlo { out($_[0], "ehlo $_[1]") }
sub on_auth { out($_[0], "auth mechanism=$_[1] user=$_[2]") }
sub on_mail { out($_[0], "mail <$_[1]>") }
sub on_rcpt { out($_[0], "rcpt <$_[1]>") }
sub on_data { out($_[0], 'data') }
sub on_dataline {
    my ($id, $line) = @_;
    out($id, "data-line $line");
    smtpd::filter_api_writeln $id, $line;
}
sub on_eom { out($_[0], "eom size=$_[1]") }
sub on_commit { out($_[0], "commit $_[1]") }
sub on_rollback { out($_[0], 'rollback') }
sub on_disconnect { out($_[0], 'disconnect') }
sub on_tls { my ($id, $version, $cipher, $bits, $sni, $subject) = @_;
             out($id, "tls version=$version cipher=$cipher bits=$bits sni=$sni subject=$subject") }
sub on_auth_result { out($_[0], "auth-result mechanism=$_[1] user=$_[2] result=$_[3]") }
