# Refuses one sender with 550: `filter-perl reject.pl ADDRESS`, or $REJECT_SENDER.
# The comparison ignores case; an address starting with "@" refuses a whole domain.
use strict;
use warnings;

my $target = lc($ARGV[0] // $ENV{REJECT_SENDER} // '');
die "reject.pl: give the sender to refuse as argument or in \$REJECT_SENDER\n"
    if $target eq '';

sub on_mail {
    my ($id, $mail) = @_;
    my $m = lc $mail;
    if ($m eq $target || (substr($target, 0, 1) eq '@' && substr($m, -length $target) eq $target)) {
        smtpd::filter_api_reject $id, 550, "5.7.1 Sender <$mail> refused";
    }
}
