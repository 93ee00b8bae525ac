#!/usr/bin/perl
# Answers given later by filter-perl: from timers and a watched descriptor, in any
# order, and none for a session that ended while its answer was pending.  The test
# plays the daemon on a socket pair, as the daemon runs a filter.
#   prove filters/perl/t
use strict;
use warnings;
use Cwd qw(realpath);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use IO::Handle;
use Socket qw(AF_UNIX SOCK_STREAM PF_UNSPEC);
use Test::More;

my $here;
BEGIN { $here = dirname(realpath(__FILE__)); unshift @INC, dirname($here) }
use smtpd;

my $dir = tempdir(CLEANUP => 1);
my $script = "$dir/later.pl";
open(my $s, '>', $script) or die "$script: $!";
print $s <<'PERL';
use strict;
use warnings;
pipe(my $r, my $w) or die "pipe: $!";
$w->autoflush(1);
my %asked;   # session -> 1, for the descriptor's answers
smtpd::watch($r, 'r', sub {
    sysread($r, my $b, 8) == 8 or die "short read";
    my $id = unpack('Q>', $b);
    smtpd::filter_api_header_add($id, 'X-Asked', 'yes');
    smtpd::filter_api_accept($id);
});
sub on_mail {
    my ($id, $mail) = @_;
    if ($mail =~ /\Aslow@/) {
        smtpd::timer(0.3, sub {
            my $r = smtpd::filter_api_accept($id);
            print STDERR smtpd::id_hex($id) . " late accept $r\n";
        });
        return smtpd::LATER;
    }
    if ($mail =~ /\Afast@/) {
        my $t = smtpd::timer(0.01, sub { print STDERR "cancelled timer ran\n" });
        smtpd::cancel_timer($t);
        smtpd::timer(0.03, sub { smtpd::filter_api_reject($id, 554, '5.7.1 Listed') });
        return smtpd::LATER;
    }
    return;
}
sub on_eom {
    my ($id) = @_;
    syswrite($w, pack('Q>', $id)) == 8 or die "write: $!";
    return smtpd::LATER;
}
1;
PERL
close $s;

socketpair(my $ours, my $theirs, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or die "socketpair: $!";
$ours->autoflush(1);
my $bridge = dirname($here) . '/filter-perl';
my $pid = fork // die "fork: $!";
if ($pid == 0) {
    close $ours;
    open(STDIN, '<&', $theirs) or die;
    open(STDOUT, '>&', $theirs) or die;
    open(STDERR, '>', "$dir/err") or die;
    exec $^X, $bridge, $script;
    exit 127;
}
close $theirs;

my $buf = '';
# The next frame within 10 s: [id as hex, kind, fields].
sub frame {
    while (1) {
        my @f = smtpd::take_frames(\$buf);
        if (@f) {
            # Keep the rest for later calls.
            my $first = shift @f;
            $buf = join('', map { smtpd::encode(@$_[0, 1], @{ $_->[2] }) } @f) . $buf;
            return [smtpd::id_hex($first->[0]), $first->[1], $first->[2]];
        }
        my $rin = '';
        vec($rin, fileno($ours), 1) = 1;
        select(my $rout = $rin, undef, undef, 10) > 0 or return undef;
        sysread($ours, $buf, 65536, length $buf) or return undef;
    }
}
sub quiet {
    my $rin = '';
    vec($rin, fileno($ours), 1) = 1;
    return length($buf) == 0 && select(my $rout = $rin, undef, undef, $_[0]) == 0;
}
sub send_frames { syswrite($ours, join '', map { smtpd::encode(@$_) } @_) }

my $reg = frame();
is($reg->[1], smtpd::REGISTER, 'registers');
is($reg->[2][2] & smtpd::EV_DISCONNECT, smtpd::EV_DISCONNECT, 'with DISCONNECT');
send_frames([0, smtpd::READY, 1, smtpd::MAX_FRAME, 30000]);

my $A = '000000000000000a';
my $B = '000000000000000b';
send_frames([10, smtpd::MAIL, 'slow@example.org'], [11, smtpd::MAIL, 'fast@example.org']);
is_deeply(frame(), [$B, smtpd::REJECT, [554, '5.7.1 Listed']], 'B answered first');
is_deeply(frame(), [$A, smtpd::PROCEED, []], 'then A');

send_frames([11, smtpd::EOM, 10]);
is_deeply(frame(), [$B, smtpd::ADD_HEADER, ['X-Asked', 'yes']], 'edit from the descriptor');
is_deeply(frame(), [$B, smtpd::PROCEED, []], 'answer from the descriptor');

send_frames([13, smtpd::MAIL, 'slow@example.org'], [13, smtpd::DISCONNECT]);
ok(quiet(0.6), 'nothing for a session that ended');

shutdown($ours, 2);
waitpid($pid, 0);
is($?, 0, 'filter-perl ended cleanly');
open(my $e, '<', "$dir/err") or die;
my $err = do { local $/; <$e> } // '';
is($err, "$A late accept 1\n000000000000000d late accept 0\n",
   'the late answer of the ended session was dropped without a word');
done_testing;
