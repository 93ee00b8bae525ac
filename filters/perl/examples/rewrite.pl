# Replaces a word in the message body: `filter-perl rewrite.pl [FROM [TO]]`
# (default: colour -> color).  Headers are left alone.
use strict;
use warnings;

my $from = $ARGV[0] // 'colour';
my $to = $ARGV[1] // 'color';
my %in_body;  # sessions whose message is past its header section

sub on_dataline {
    my ($id, $line) = @_;
    if ($in_body{$id}) {
        $line =~ s/\Q$from\E/$to/g;
    } elsif ($line eq '') {
        $in_body{$id} = 1;
    }
    smtpd::filter_api_writeln $id, $line;
}

sub on_eom { delete $in_body{$_[0]} }
sub on_rollback { delete $in_body{$_[0]} }
sub on_disconnect { delete $in_body{$_[0]} }
