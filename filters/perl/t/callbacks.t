#!/usr/bin/perl
# The callbacks of filter-perl for TLS and AUTH, run as the daemon runs a script: the
# daemon's frames on standard input, the answers read back from standard output.
#   prove filters/perl/t
use strict;
use warnings;
use Cwd qw(realpath);
use File::Basename qw(dirname);
use File::Temp qw(tempdir);
use Test::More;

my $here;
BEGIN { $here = dirname(realpath(__FILE__)); unshift @INC, dirname($here) }
use smtpd;

my $dir = tempdir(CLEANUP => 1);
my $script = "$dir/ta.pl";
open(my $s, '>', $script) or die "$script: $!";
print $s <<'PERL';
use strict;
use warnings;
sub out { print STDERR "$_[0]\n" }
sub on_tls {
    my ($id, $version, $cipher, $bits, $sni, $subject) = @_;
    out(smtpd::id_hex($id) . " tls $version $cipher $bits sni=$sni subject=$subject");
}
sub on_auth {
    my ($id, $mechanism, $user) = @_;
    out(smtpd::id_hex($id) . " auth $mechanism $user");
    if ($user eq 'mallory') { smtpd::filter_api_reject($id, 535, '5.7.8 not from here') }
    elsif ($user eq 'later') { smtpd::filter_api_tempfail($id, 'directory down') }
    elsif ($user eq 'rw') {
        if (!eval { smtpd::filter_api_rewrite($id, 'root'); 1 }) { chomp(my $e = $@); out("refused: $e") }
    }
}
sub on_auth_result {
    my ($id, $mechanism, $user, $result) = @_;
    out(smtpd::id_hex($id) . " auth-result $mechanism $user $result");
}
1;
PERL
close $s;

my $in = join '',
    smtpd::encode(0, smtpd::READY, 1, smtpd::MAX_FRAME, 30000),
    smtpd::encode(9, smtpd::TLS, 'TLSv1.3', 'TLS_AES_256_GCM_SHA384', 256, 'mx.example.org', ''),
    smtpd::encode(9, smtpd::AUTH, 'PLAIN', 'alice'),
    smtpd::encode(9, smtpd::AUTH_RESULT, 'PLAIN', 'alice', 'ok'),
    smtpd::encode(9, smtpd::AUTH, 'LOGIN', 'mallory'),
    smtpd::encode(9, smtpd::AUTH, 'PLAIN', 'later'),
    smtpd::encode(9, smtpd::AUTH, 'PLAIN', 'rw'),
    smtpd::encode(9, smtpd::AUTH_RESULT, 'LOGIN', '', 'tempfail');
open(my $f, '>:raw', "$dir/in") or die "$dir/in: $!";
print $f $in;
close $f;

my $bridge = dirname($here) . '/filter-perl';
my $rc = system("'$^X' '$bridge' '$script' <'$dir/in' >'$dir/out' 2>'$dir/err'");
is($rc, 0, 'filter-perl ran to the end of its input');

sub slurp { open(my $h, '<:raw', $_[0]) or die "$_[0]: $!"; local $/; my $t = <$h>; $t // '' }
my $out = slurp("$dir/out");
# Session ids as hex: without 64-bit integers they are strings.
my @got = map { [smtpd::id_hex($_->[0]), @$_[1, 2]] } smtpd::take_frames(\$out);
is($out, '', 'nothing but whole frames');
is_deeply(\@got, [
    ['0' x 16, smtpd::REGISTER, [1, smtpd::EV_AUTH,
        smtpd::EV_TLS | smtpd::EV_AUTH_RESULT | smtpd::EV_DISCONNECT, 'ta']],
    ['0' x 15 . '9', smtpd::PROCEED, []],
    ['0' x 15 . '9', smtpd::REJECT, [535, '5.7.8 not from here']],
    ['0' x 15 . '9', smtpd::TEMPFAIL, ['directory down']],
    ['0' x 15 . '9', smtpd::PROCEED, []],
], 'registration and answers');
is(slurp("$dir/err"), join('', map { "$_\n" }
    '0000000000000009 tls TLSv1.3 TLS_AES_256_GCM_SHA384 256 sni=mx.example.org subject=',
    '0000000000000009 auth PLAIN alice',
    '0000000000000009 auth-result PLAIN alice ok',
    '0000000000000009 auth LOGIN mallory',
    '0000000000000009 auth PLAIN later',
    '0000000000000009 auth PLAIN rw',
    'refused: smtpd: rewrite is only for HELO, EHLO, MAIL and RCPT',
    '0000000000000009 auth-result LOGIN  tempfail',
), 'the callbacks saw every event');
done_testing;
