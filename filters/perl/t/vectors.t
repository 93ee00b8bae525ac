#!/usr/bin/perl
# Replays the golden vectors of filters/api/tests/vectors/*.hex against the codec of
# smtpd.pm (format: filters/api/tests/vectors/README).   prove filters/perl/t
use strict;
use warnings;
no warnings 'portable';  # 64-bit hexadecimal session ids
use Cwd qw(realpath);
use File::Basename qw(dirname);
use File::Spec;
use Test::More;

my $here;
BEGIN { $here = dirname(realpath(__FILE__)); unshift @INC, dirname($here) }
use smtpd;

my $dir = $ENV{SMTPD_FILTER_VECTORS}
    // realpath(File::Spec->catdir($here, '..', '..', 'api', 'tests', 'vectors'));
opendir(my $dh, $dir // '') or plan skip_all => "no golden vectors in filters/api/tests/vectors";
my @files = sort map { "$dir/$_" } grep { /\.hex\z/ } readdir $dh;
closedir $dh;
plan skip_all => 'no .hex files' unless @files;

my %FIELDS = (
    REGISTER => 'version hooks reports name', READY => 'version max_frame timeout_ms',
    REFUSED => 'reason', CONNECT => 'local remote hostname', HELO => 'name', EHLO => 'name',
    STARTTLS => '', AUTH => 'mechanism user', MAIL => 'address', RCPT => 'address', DATA => '',
    DATA_LINES => 'lines', DATA_END => '', EOM => 'size', COMMIT => 'msgid',
    ROLLBACK => '', DISCONNECT => '', PROTOCOL => 'dir line',
    TLS => 'version cipher bits sni subject', AUTH_RESULT => 'mechanism user result',
    PROCEED => '',
    REJECT => 'code text', TEMPFAIL => 'text', DISCONNECT_ANSWER => 'code text',
    JUNK => '', REWRITE => 'value', ADD_HEADER => 'name value',
    INSERT_HEADER => 'index name value', CHANGE_HEADER => 'index name value',
    REPLACE_BODY => 'chunk', ADD_RCPT => 'address', DEL_RCPT => 'address',
    CHANGE_FROM => 'address', QUARANTINE => 'reason', DISCARD => '', LOG => 'text',
);
my %ESC = ('\\' => '\\', '"' => '"', r => "\r", n => "\n", t => "\t", 0 => "\0");

# A description's tokens.  Values: numbers, ['s', bytes] strings, ['l', [bytes...]] lists.
sub parse_desc {
    my ($s) = @_;
    my $pos = 0;
    my $ws = sub { $pos++ while $pos < length($s) && substr($s, $pos, 1) =~ /\s/ };
    my $word = sub {
        $ws->();
        substr($s, $pos) =~ /\A([^\s=]+)/ or die "a word was expected at '" . substr($s, $pos) . "'\n";
        $pos += length $1;
        return $1;
    };
    my $int = sub {
        my $w = $word->();
        die "bad number $w\n" unless $w =~ /^0x[0-9a-f]+\z/i || $w =~ /^\d+\z/;
        return $w =~ /^0x(.*)/ ? hex($1) : $w if $smtpd::HAVE_Q;
        # Without 64-bit integers: exact decimal strings.
        require Math::BigInt;
        return Math::BigInt->new($w)->bstr;
    };
    my $string = sub {
        $ws->();
        substr($s, $pos, 1) eq '"' or die "a quoted string was expected\n";
        $pos++;
        my $out = '';
        while (1) {
            die "unterminated string\n" if $pos >= length $s;
            my $c = substr($s, $pos++, 1);
            return $out if $c eq '"';
            if ($c ne '\\') { $out .= $c; next }
            my $e = substr($s, $pos++, 1);
            if ($e eq 'x') { $out .= chr(hex(substr($s, $pos, 2))); $pos += 2 }
            elsif (exists $ESC{$e}) { $out .= $ESC{$e} }
            else { die "unknown escape \\$e\n" }
        }
    };
    my $value = sub {
        $ws->();
        my $c = substr($s, $pos, 1);
        return ['s', $string->()] if $c eq '"';
        if ($c eq '[') {
            $pos++;
            my @l;
            while (1) {
                $ws->();
                if (substr($s, $pos, 1) eq ']') { $pos++; return ['l', \@l] }
                if (@l) { substr($s, $pos, 1) eq ',' or die "',' or ']' expected\n"; $pos++ }
                push @l, $string->();
            }
        }
        return $int->();
    };
    my %d = (type => $word->());
    if ($d{type} eq 'kind') {
        $d{kind} = $word->();
        $word->() eq 'session' or die "'session' expected\n";
        $d{session} = $int->();
    } elsif ($d{type} eq 'invalid') {
        $d{error} = $word->();
    }
    my %f;
    $ws->();
    while ($pos < length $s) {
        my $k = $word->();
        substr($s, $pos, 1) eq '=' or die "'=' expected after $k\n";
        $pos++;
        die "field $k given twice\n" if exists $f{$k};
        $f{$k} = $value->();
        $ws->();
    }
    $d{fields} = \%f;
    die "nothing may follow 'incomplete'\n" if $d{type} eq 'incomplete' && %f;
    return \%d;
}

sub read_vectors {
    my ($path) = @_;
    my $name = (File::Spec->splitpath($path))[2];
    open(my $fh, '<', $path) or die "$path: $!\n";
    my @v;
    while (my $line = <$fh>) {
        chomp $line;
        if ($line =~ /^# (kind |invalid |incomplete)/) {
            my $d = eval { parse_desc(substr($line, 2)) } or die "$name:$.: $@";
            $d->{at} = "$name:$.";
            $d->{hex} = '';
            push @v, $d;
        } elsif ($line =~ /^#/ || $line =~ /^\s*\z/) {
            next;
        } else {
            (my $h = $line) =~ s/\s+//g;
            die "$name:$.: not hex\n" unless $h =~ /\A[0-9a-fA-F]*\z/;
            die "$name:$.: hex before any description\n" unless @v;
            $v[-1]{hex} .= lc $h;
        }
    }
    for (@v) { die "$_->{at}: odd number of hex digits\n" if length($_->{hex}) % 2 }
    return @v;
}

sub session_of {  # as smtpd.pm gives it: an integer, or 16 hex digits without Q
    my ($n) = @_;
    return $n if $smtpd::HAVE_Q;
    require Math::BigInt;
    my $h = Math::BigInt->new($n)->as_hex;
    $h =~ s/^0x//;
    return sprintf('%016s', $h) =~ tr/ /0/r;
}

# (kind byte, [fields as decode gives them]) from a description.
sub frame_of {
    my ($v) = @_;
    my $spec = $FIELDS{$v->{kind}};
    die "unknown kind $v->{kind}\n" unless defined $spec;
    my $kind = smtpd->can($v->{kind})->();
    my @names = split ' ', $spec;
    my $types = $smtpd::SCHEMA{$kind};
    my %given = %{ $v->{fields} };
    my @out;
    for my $i (0 .. $#names) {
        my ($n, $t) = ($names[$i], $types->[$i]);
        die "field $n missing\n" unless exists $given{$n};
        my $val = delete $given{$n};
        if ($t eq 'str' || $t eq 'dir') {
            die "field $n is a string\n" unless ref $val && $val->[0] eq 's';
            die "field $n is one byte\n" if $t eq 'dir' && length($val->[1]) != 1;
            push @out, $val->[1];
        } elsif ($t eq 'lines') {
            die "field $n is a list\n" unless ref $val && $val->[0] eq 'l';
            push @out, $val->[1];
        } else {
            die "field $n is a number\n" if ref $val;
            push @out, $val;
        }
    }
    die 'unknown fields: ' . join(' ', sort keys %given) . "\n" if %given;
    return ($kind, \@out);
}

sub hexs { join ' ', unpack('(H2)*', $_[0]) }

# The error decode() died with, as [name, number].
sub wire_error {
    my ($e) = @_;
    return ['bad-length', $1] if $e =~ /^smtpd wire: bad frame length (\d+)$/;
    return ['unknown-kind', hex $1] if $e =~ /^smtpd wire: unknown frame kind 0x([0-9a-f]{2})$/;
    return ['bad-payload', hex $1] if $e =~ /^smtpd wire: malformed payload for kind 0x([0-9a-f]{2})$/;
    return ['other', $e];
}

my %kinds_seen;
for my $path (@files) {
    my @vectors = read_vectors($path);
    my (@stream, @want);
    for my $v (@vectors) {
        my $b = pack('H*', $v->{hex});
        my $at = $v->{at};
        if ($v->{type} eq 'kind') {
            $kinds_seen{$v->{kind}} = 1;
            my ($kind, $fields) = frame_of($v);
            my $sid = session_of($v->{session});
            my $enc = smtpd::encode($sid, $kind, @$fields);
            is(hexs($enc), hexs($b), "$at: $v->{kind} encodes to the vector");
            my ($s, $k, $f, $end) = smtpd::decode($b, 0);
            is_deeply([$s, $k, $f, $end], [$sid, $kind, $fields, length $b],
                      "$at: decodes to the description");
            is(smtpd::encode($s, $k, @$f), $b, "$at: the decoded frame encodes back");
            my @prefix_bad = grep { my @r = eval { smtpd::decode(substr($b, 0, $_), 0) }; $@ || @r }
                0 .. length($b) - 1;
            is("@prefix_bad", '', "$at: every shorter prefix is incomplete");
            my @more = smtpd::decode($b . "\0\0", 0);
            is($more[3], length $b, "$at: trailing bytes are left for the next frame");
            push @stream, $b;
            push @want, [$sid, $kind, $fields];
        } elsif ($v->{type} eq 'invalid') {
            my ($name, $num) = ($v->{error}, values %{ $v->{fields} });
            my @r = eval { smtpd::decode($b, 0) };
            my $err = $@;
            chomp $err;
            is_deeply($err ? wire_error($err) : ['no error', scalar @r], [$name, $num],
                      "$at: invalid $name");
        } else {
            my @r = eval { smtpd::decode($b, 0) };
            ok(!$@ && !@r && length $b, "$at: incomplete") or diag($@);
        }
    }
    next unless @stream;
    my $wire = join '', @stream;
    for my $size (1, 2, 3, 5, 7, 13, 64, length $wire) {
        my ($buf, @got) = ('');
        for (my $i = 0; $i < length $wire; $i += $size) {
            $buf .= substr($wire, $i, $size);
            push @got, smtpd::take_frames(\$buf);
        }
        is_deeply(\@got, \@want, "$path as one stream in chunks of $size");
        is(length $buf, 0, "nothing left over in chunks of $size");
    }
}

is_deeply([sort keys %kinds_seen], [sort keys %FIELDS], 'every kind has a vector');
is_deeply([sort { $a <=> $b } keys %smtpd::SCHEMA],
          [sort { $a <=> $b } map { smtpd->can($_)->() } keys %FIELDS],
          'the codec knows exactly the kinds of the vectors');

done_testing();
