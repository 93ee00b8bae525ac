package smtpd;

# smtpd filters in Perl: the module behind `filter-perl SCRIPT [ARGS...]`.
#
# The wire format of filters/api/src/codec.rs, with pack/unpack:
#
#   frame  = u32 length | u8 kind | u64 session | payload     (big-endian)
#   length = 9 + payload length
#   string = u16 length | bytes
#   lines  = u16 count | string * count
#
# Core Perl 5 only.  The API for scripts is described in README.md.

use strict;
use warnings;
use Time::HiRes ();

our $VERSION = '1.0';

use constant {
    PROTOCOL_VERSION => 1,
    HEADER => 13,
    MAX_FRAME => 1 << 20,
    MAX_STR => 0xFFFF,
    MAX_LINE => 65535,

    EV_CONNECT => 1 << 0, EV_HELO => 1 << 1, EV_EHLO => 1 << 2, EV_STARTTLS => 1 << 3,
    EV_AUTH => 1 << 4, EV_MAIL => 1 << 5, EV_RCPT => 1 << 6, EV_DATA => 1 << 7,
    EV_DATA_LINES => 1 << 8, EV_EOM => 1 << 9, EV_COMMIT => 1 << 10,
    EV_ROLLBACK => 1 << 11, EV_DISCONNECT => 1 << 12, EV_PROTOCOL => 1 << 13,
    EV_TLS => 1 << 14, EV_AUTH_RESULT => 1 << 15,

    REGISTER => 0x01, READY => 0x02, REFUSED => 0x03,
    CONNECT => 0x10, HELO => 0x11, EHLO => 0x12, STARTTLS => 0x13, AUTH => 0x14,
    MAIL => 0x15, RCPT => 0x16, DATA => 0x17, DATA_LINES => 0x18, DATA_END => 0x19,
    EOM => 0x1a, COMMIT => 0x1b, ROLLBACK => 0x1c, DISCONNECT => 0x1d, PROTOCOL => 0x1e,
    TLS => 0x40, AUTH_RESULT => 0x41,
    PROCEED => 0x20, REJECT => 0x21, TEMPFAIL => 0x22, DISCONNECT_ANSWER => 0x23,
    JUNK => 0x24, REWRITE => 0x25,
    ADD_HEADER => 0x30, INSERT_HEADER => 0x31, CHANGE_HEADER => 0x32,
    REPLACE_BODY => 0x33, ADD_RCPT => 0x34, DEL_RCPT => 0x35, CHANGE_FROM => 0x36,
    QUARANTINE => 0x37, DISCARD => 0x38, LOG => 0x3f,
};

# Payload layout of each kind: u16 u32 u64 str lines dir.
our %SCHEMA = (
    REGISTER, [qw(u16 u32 u32 str)],
    READY, [qw(u16 u32 u32)],
    REFUSED, [qw(str)],
    CONNECT, [qw(str str str)],
    HELO, [qw(str)], EHLO, [qw(str)], STARTTLS, [], AUTH, [qw(str str)],
    MAIL, [qw(str)], RCPT, [qw(str)], DATA, [],
    DATA_LINES, [qw(lines)], DATA_END, [],
    EOM, [qw(u64)], COMMIT, [qw(str)], ROLLBACK, [], DISCONNECT, [],
    PROTOCOL, [qw(dir str)],
    TLS, [qw(str str u16 str str)], AUTH_RESULT, [qw(str str str)],
    PROCEED, [], REJECT, [qw(u16 str)], TEMPFAIL, [qw(str)],
    DISCONNECT_ANSWER, [qw(u16 str)], JUNK, [], REWRITE, [qw(str)],
    ADD_HEADER, [qw(str str)], INSERT_HEADER, [qw(u32 str str)],
    CHANGE_HEADER, [qw(u32 str str)], REPLACE_BODY, [qw(str)],
    ADD_RCPT, [qw(str)], DEL_RCPT, [qw(str)], CHANGE_FROM, [qw(str)],
    QUARANTINE, [qw(str)], DISCARD, [], LOG, [qw(str)],
);

# 64-bit integers in pack ('Q>' needs them and perl 5.10); else two 'N'.
# (SMTPD_FILTER_NO_Q=1 forces the fallback, to test it on a 64-bit perl.)
our $HAVE_Q = !$ENV{SMTPD_FILTER_NO_Q}
    && eval { length(pack('Q>', 1)) == 8 && unpack('Q>', pack('Q>', 1)) == 1 } ? 1 : 0;

# Numbers (EOM size).  Without 64-bit integers, values of 2**53 and more are exact
# decimal strings (Math::BigInt, core) rather than lossy floating point.
sub _u64_pack {
    my ($v) = @_;
    return pack('Q>', $v) if $HAVE_Q;
    if ($v =~ /^\d{16,}\z/ || ref $v) {
        require Math::BigInt;
        my $n = Math::BigInt->new("$v");
        my ($q, $r) = $n->copy->bdiv(4294967296);
        return pack('NN', $q->numify, $r->numify);
    }
    my $hi = int($v / 4294967296);
    return pack('NN', $hi, $v - $hi * 4294967296);
}

# Session ids: integers where perl has 64-bit integers, else strings of 16 hex digits
# (opaque either way: compare them with eq, print them with smtpd::id_hex).
sub _id_pack {
    my ($v) = @_;
    return pack('Q>', $v) if $HAVE_Q;
    return pack('NN', hex(substr($v, 0, 8)), hex(substr($v, 8, 8)))
        if $v =~ /^[0-9a-fA-F]{16}\z/;
    return _u64_pack($v);
}

sub _u64_unpack {
    my ($bytes, $as_id) = @_;
    return unpack('Q>', $bytes) if $HAVE_Q;
    my ($hi, $lo) = unpack('NN', $bytes);
    return sprintf('%08x%08x', $hi, $lo) if $as_id;
    return $hi * 4294967296 + $lo if $hi < 0x200000;  # below 2**53: exact
    require Math::BigInt;
    return Math::BigInt->new($hi)->bmul(4294967296)->badd($lo)->bstr;
}

# The 16 hex digits of a session id (what the Rust filters print with {:016x}).
sub id_hex {
    my ($id) = @_;
    return lc $id if !$HAVE_Q;
    return sprintf('%016x', $id);
}

# Bytes as UTF-8 text with each maximal invalid subpart replaced by U+FFFD, exactly
# like Rust's String::from_utf8_lossy (what the Rust filters print).  Returns bytes.
my $UTF8_VALID = qr/(?:[\x00-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]
    |[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]
    |\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})+/x;
my $UTF8_BAD = qr/\xe0[\xa0-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]|\xed[\x80-\x9f]
    |\xf0[\x90-\xbf][\x80-\xbf]?|[\xf1-\xf3][\x80-\xbf]{1,2}|\xf4[\x80-\x8f][\x80-\xbf]?
    |[\x80-\xff]/x;

sub lossy {
    my $s = _bytes($_[0]);
    my $o = '';
    pos($s) = 0;
    while (pos($s) < length $s) {
        if ($s =~ /\G($UTF8_VALID)/gc) { $o .= $1 }
        elsif ($s =~ /\G$UTF8_BAD/gc) { $o .= "\xef\xbf\xbd" }
        else { last }  # not reached: every byte starts one or the other
    }
    return $o;
}

sub _bytes {
    my ($s) = @_;
    $s = '' unless defined $s;
    if (utf8::is_utf8($s)) {
        $s = "$s";
        utf8::encode($s);
    }
    return $s;
}

sub _put_str {
    my $s = _bytes($_[0]);
    $s = substr($s, 0, MAX_STR) if length($s) > MAX_STR;  # as the Rust codec
    return pack('n', length $s) . $s;
}

# encode($session, $kind, @fields): the bytes of one frame.  `lines` is an array ref,
# `dir` the character '<' or '>' (or its code).
sub encode {
    my ($session, $kind, @fields) = @_;
    my $schema = $SCHEMA{$kind} or die sprintf("smtpd: unknown frame kind 0x%02x\n", $kind);
    die sprintf("smtpd: kind 0x%02x takes %d fields, not %d\n", $kind, scalar @$schema,
                scalar @fields) if @fields != @$schema;
    my $p = '';
    for my $i (0 .. $#$schema) {
        my ($t, $v) = ($schema->[$i], $fields[$i]);
        if ($t eq 'str') { $p .= _put_str($v) }
        elsif ($t eq 'u16') { $p .= pack('n', $v) }
        elsif ($t eq 'u32') { $p .= pack('N', $v) }
        elsif ($t eq 'u64') { $p .= _u64_pack($v) }
        elsif ($t eq 'lines') {
            my @l = @$v;
            splice(@l, MAX_STR) if @l > MAX_STR;
            $p .= pack('n', scalar @l);
            $p .= _put_str($_) for @l;
        }
        elsif ($t eq 'dir') { $p .= ($v =~ /^\d+$/ ? chr($v) : substr($v, 0, 1)) }
    }
    return pack('NC', 9 + length $p, $kind) . _id_pack($session) . $p;
}

# decode($buf, $offset): () when the frame at $offset is incomplete, else
# ($session, $kind, \@fields, $end).  Dies "smtpd wire: ..." on a malformed frame.
sub decode {
    my $off = $_[1] || 0;
    my $avail = length($_[0]) - $off;
    return () if $avail < 4;
    my $len = unpack('N', substr($_[0], $off, 4));
    die "smtpd wire: bad frame length $len\n" if $len < HEADER - 4 || $len > MAX_FRAME - 4;
    return () if $avail < 4 + $len;
    my $end = $off + 4 + $len;
    my $kind = ord(substr($_[0], $off + 4, 1));
    my $session = _u64_unpack(substr($_[0], $off + 5, 8), 1);
    my $schema = $SCHEMA{$kind};
    die sprintf("smtpd wire: unknown frame kind 0x%02x\n", $kind) unless $schema;
    my $bad = sprintf("smtpd wire: malformed payload for kind 0x%02x\n", $kind);
    my $p = $off + HEADER;
    my @f;
    my $str = sub {
        die $bad if $p + 2 > $end;
        my $n = unpack('n', substr($_[0], $p, 2));
        die $bad if $p + 2 + $n > $end;
        my $s = substr($_[0], $p + 2, $n);
        $p += 2 + $n;
        return $s;
    };
    for my $t (@$schema) {
        if ($t eq 'str') { push @f, $str->($_[0]) }
        elsif ($t eq 'u16') { die $bad if $p + 2 > $end; push @f, unpack('n', substr($_[0], $p, 2)); $p += 2 }
        elsif ($t eq 'u32') { die $bad if $p + 4 > $end; push @f, unpack('N', substr($_[0], $p, 4)); $p += 4 }
        elsif ($t eq 'u64') { die $bad if $p + 8 > $end; push @f, _u64_unpack(substr($_[0], $p, 8)); $p += 8 }
        elsif ($t eq 'lines') {
            die $bad if $p + 2 > $end;
            my $n = unpack('n', substr($_[0], $p, 2));
            $p += 2;
            my @l;
            push @l, $str->($_[0]) for 1 .. $n;
            push @f, \@l;
        }
        elsif ($t eq 'dir') {
            die $bad if $p + 1 > $end;
            my $d = substr($_[0], $p, 1);
            die $bad unless $d eq '<' || $d eq '>';
            push @f, $d;
            $p += 1;
        }
    }
    die $bad if $p != $end;
    return ($session, $kind, \@f, $end);
}

# take_frames(\$buf): every whole frame at the start of $buf, as [$session, $kind,
# \@fields], removed from it; what is left is the start of the next frame.
sub take_frames {
    my ($buf) = @_;
    my @out;
    my $pos = 0;
    while (my ($id, $kind, $f, $end) = decode($$buf, $pos)) {
        push @out, [$id, $kind, $f];
        $pos = $end;
    }
    substr($$buf, 0, $pos, '') if $pos;
    return @out;
}

# ---------------------------------------------------------------------------
# The API for scripts
# ---------------------------------------------------------------------------

# With $smtpd::passthrough = 1, a data line for which on_dataline neither called
# filter_api_writeln nor filter_api_drop is kept unchanged (default: dropped).
our $passthrough = 0;
# The name the filter registers with (default: the script's file name).
our $name = 'perl';
# From the daemon's READY.
our ($daemon_version, $max_frame, $timeout_ms) = (undef, MAX_FRAME, undef);

my %ANSWERED = (CONNECT, EV_CONNECT, HELO, EV_HELO, EHLO, EV_EHLO, AUTH, EV_AUTH,
                MAIL, EV_MAIL, RCPT, EV_RCPT, DATA, EV_DATA, EOM, EV_EOM);
my %REPORTS = (COMMIT, EV_COMMIT, ROLLBACK, EV_ROLLBACK, DISCONNECT, EV_DISCONNECT,
               TLS, EV_TLS, AUTH_RESULT, EV_AUTH_RESULT);
my $TEMPFAIL_TEXT = 'Temporary failure in a filter, try again later';

my $out_fh;           # the protocol's output
my $batch;            # output of the current read, written at once
my %awaiting;         # session -> event kind waiting for our decision
my %data;             # session -> 'lines' | 'ended'
my %lines;            # session -> [output lines of the frame being handled]
my %failed;           # sessions whose on_dataline died for the current message
my %gone;             # sessions that ended while their answer was pending
my @gone;             # the same, oldest first (at most 1024 remembered)
our $data_session;    # the session whose lines the script is handling
my $touched;          # the current line was written or dropped

sub _emit {
    if (defined $batch) { $batch .= $_[0] } else { _write_all($_[0]) }
}

sub _write_all {
    my ($data) = @_;
    my $off = 0;
    while ($off < length $data) {
        my $n = syswrite($out_fh, $data, length($data) - $off, $off);
        if (!defined $n) {
            next if $!{EINTR};
            die "smtpd: write: $!\n";
        }
        $off += $n;
    }
}

sub _answer {
    my ($id, $kind, @f) = @_;
    my $ev = $awaiting{$id};
    # A late answer for a session that ended meanwhile: dropped without a word.
    return 0 if !defined $ev && $gone{$id};
    die sprintf("smtpd: session %s has no event waiting for an answer\n", id_hex($id))
        unless defined $ev;
    die "smtpd: rewrite is only for HELO, EHLO, MAIL and RCPT\n"
        if $kind == REWRITE && !($ev == HELO || $ev == EHLO || $ev == MAIL || $ev == RCPT);
    die "smtpd: discard is only for the end of message\n" if $kind == DISCARD && $ev != EOM;
    delete $awaiting{$id};
    _emit(encode($id, $kind, @f));
    return 1;
}

sub _edit {
    my ($id, $kind, @f) = @_;
    return 0 if !exists $awaiting{$id} && $gone{$id};
    die "smtpd: message edits are only allowed at the end of message, before its decision\n"
        unless ($awaiting{$id} // -1) == EOM;
    _emit(encode($id, $kind, @f));
}

sub _text {
    my ($t, $what) = @_;
    $t = _bytes($t);
    die "smtpd: $what: at most 400 bytes, no control characters\n"
        if length($t) > 400 || $t =~ /[\x00-\x1f\x7f]/;
    return $t;
}

sub _code {
    my ($c) = @_;
    die "smtpd: reply code must be a number from 400 to 599\n"
        unless defined $c && $c =~ /^\d+$/ && $c >= 400 && $c <= 599;
    return $c;
}

sub filter_api_accept { _answer($_[0], PROCEED) }
sub filter_api_reject { _answer($_[0], REJECT, _code($_[1]), _text($_[2], 'reject text')) }
sub filter_api_tempfail { _answer($_[0], TEMPFAIL, _text($_[1] // '', 'tempfail text')) }
sub filter_api_disconnect {
    _answer($_[0], DISCONNECT_ANSWER, _code($_[1]), _text($_[2], 'disconnect text'));
}
sub filter_api_junk { _answer($_[0], JUNK) }
sub filter_api_rewrite {
    my $v = _bytes($_[1]);
    die "smtpd: rewrite value: 1 to 255 bytes, no control characters\n"
        if $v eq '' || length($v) > 255 || $v =~ /[\x00-\x1f\x7f]/;
    _answer($_[0], REWRITE, $v);
}
sub filter_api_discard { _answer($_[0], DISCARD) }

sub filter_api_header_add { _edit($_[0], ADD_HEADER, $_[1], $_[2]) }
sub filter_api_header_insert { _edit($_[0], INSERT_HEADER, $_[1], $_[2], $_[3]) }
sub filter_api_header_change { _edit($_[0], CHANGE_HEADER, $_[1], $_[2], $_[3]) }
sub filter_api_rcpt_add { _edit($_[0], ADD_RCPT, $_[1]) }
sub filter_api_rcpt_del { _edit($_[0], DEL_RCPT, $_[1]) }
sub filter_api_from_change { _edit($_[0], CHANGE_FROM, $_[1]) }
sub filter_api_quarantine { _edit($_[0], QUARANTINE, $_[1]) }

# Cuts a body into chunks of at most $limit bytes: after a LF when possible, never
# inside a UTF-8 sequence nor between CR and LF (the daemon joins them).
sub _body_chunks {
    my ($body, $limit) = @_;
    my @c;
    my $pos = 0;
    my $len = length $body;
    while ($pos < $len) {
        my $end = $pos + $limit < $len ? $pos + $limit : $len;
        if ($end < $len) {
            my $nl = rindex($body, "\n", $end - 1);
            if ($nl >= $pos) {
                $end = $nl + 1;
            } else {
                $end-- while $end > $pos + 1
                    && (substr($body, $end, 1) =~ /[\x80-\xbf]/
                        || substr($body, $end - 1, 1) eq "\r");
            }
        }
        push @c, substr($body, $pos, $end - $pos);
        $pos = $end;
    }
    return @c ? @c : ('');
}

sub filter_api_body_replace {
    my ($id, $text) = @_;
    die "smtpd: message edits are only allowed at the end of message, before its decision\n"
        unless ($awaiting{$id} // -1) == EOM;
    my $limit = ($max_frame || MAX_FRAME) - HEADER - 2;
    $limit = MAX_STR if $limit > MAX_STR;
    _emit(encode($id, REPLACE_BODY, $_)) for _body_chunks(_bytes($text), $limit);
}

# The names of the Python module, for those who write both.
{
    no warnings 'once';
    *filter_api_add_header = \&filter_api_header_add;
    *filter_api_insert_header = \&filter_api_header_insert;
    *filter_api_change_header = \&filter_api_header_change;
    *filter_api_replace_body = \&filter_api_body_replace;
    *filter_api_add_rcpt = \&filter_api_rcpt_add;
    *filter_api_del_rcpt = \&filter_api_rcpt_del;
    *filter_api_change_from = \&filter_api_from_change;
    *filter_api_proceed = \&filter_api_accept;
}

sub filter_api_writeln {
    my ($id, $line) = @_;
    die "smtpd: filter_api_writeln is only allowed in on_dataline and on_dataend, for their own session\n"
        unless defined $data_session && $id eq $data_session;
    my @out;
    for my $l (split /\n/, _bytes($line), -1) {
        $l =~ s/\r\z//;
        die "smtpd: message line over " . MAX_LINE . " bytes or with CR or NUL\n"
            if length($l) > MAX_LINE || $l =~ /[\r\0]/;
        push @out, $l;
    }
    @out = ('') unless @out;
    push @{ $lines{$id} }, @out;
    $touched = 1;
}

sub filter_api_drop {
    my ($id) = @_;
    die "smtpd: filter_api_drop is only allowed in on_dataline, for its own session\n"
        unless defined $data_session && $id eq $data_session;
    $touched = 1;
}

# ---------------------------------------------------------------------------
# Answering later: the script's own descriptors and timers
# ---------------------------------------------------------------------------

# Returned by an answered hook: "I will answer later" (from a timer, a watched
# descriptor or another session's hook); the bridge then sends nothing by itself.
my $LATER = \'smtpd::LATER';
sub LATER () { $LATER }

my %watch;        # fd -> { r => bool, w => bool, cb => code }
my %timers;       # id -> [due (seconds), code]
my $timer_id = 0;

sub _fd { my ($f) = @_; ref $f ? fileno($f) : $f }

# watch($fh_or_fd, $mode, $code): calls $code->($fd, $readable, $writable) whenever the
# descriptor is ready for $mode ('r', 'w' or 'rw'); a second watch replaces the first.
sub watch {
    my ($f, $mode, $code) = @_;
    my $fd = _fd($f);
    die "smtpd: watch: not a descriptor
" unless defined $fd && $fd =~ /\A\d+\z/;
    die "smtpd: watch: mode is 'r', 'w' or 'rw'
" unless ($mode // '') =~ /\A(?:r|w|rw)\z/;
    die "smtpd: watch: no code
" unless ref $code eq 'CODE';
    $watch{$fd} = { r => $mode =~ /r/ ? 1 : 0, w => $mode =~ /w/ ? 1 : 0, cb => $code };
    return 1;
}

sub unwatch { delete $watch{ _fd($_[0]) // -1 } ? 1 : 0 }

# timer($seconds, $code): calls $code->() once, $seconds (a fraction is fine) from now;
# returns the timer's id.
sub timer {
    my ($secs, $code) = @_;
    die "smtpd: timer: no code
" unless ref $code eq 'CODE';
    $timers{ ++$timer_id } = [Time::HiRes::time() + ($secs > 0 ? $secs : 0), $code];
    return $timer_id;
}

sub cancel_timer { delete $timers{ $_[0] // 0 } ? 1 : 0 }

# Seconds until the first timer (0 if one is due), undef without timers.
sub _timeout {
    my $first;
    for (values %timers) { $first = $_->[0] if !defined $first || $_->[0] < $first }
    return undef unless defined $first;
    my $left = $first - Time::HiRes::time();
    return $left > 0 ? $left : 0;
}

sub _run_timers {
    my $now = Time::HiRes::time();
    for my $id (sort { $timers{$a}[0] <=> $timers{$b}[0] || $a <=> $b } keys %timers) {
        my $t = $timers{$id} or next;   # cancelled by an earlier one
        next if $t->[0] > $now;
        delete $timers{$id};
        _complain('timer', 0, $@) unless eval { $t->[1]->(); 1 };
    }
}

sub _run_watches {
    my ($rout, $wout) = @_;
    for my $fd (sort { $a <=> $b } keys %watch) {
        my $w = $watch{$fd} or next;    # unwatched by an earlier one
        my ($r, $x) = ($w->{r} && vec($rout, $fd, 1), $w->{w} && vec($wout, $fd, 1));
        next unless $r || $x;
        _complain('watch', 0, $@) unless eval { $w->{cb}->($fd, $r ? 1 : 0, $x ? 1 : 0); 1 };
    }
}

sub log {
    my ($text) = @_;
    _emit(encode(0, LOG, $_)) for split /\n/, _bytes($text), -1;
}

# ---------------------------------------------------------------------------
# The bridge
# ---------------------------------------------------------------------------

my %cb;     # kind -> code ref
my %names;  # kind -> sub name, for error messages

sub _complain {
    my ($what, $id, $err) = @_;
    chomp $err;
    print STDERR "filter-perl: $what failed for session " . id_hex($id) . ": $err\n";
}

sub registration {
    %cb = ();
    for (['on_connect', CONNECT], ['on_helo', HELO], ['on_ehlo', EHLO], ['on_auth', AUTH],
         ['on_mail', MAIL], ['on_rcpt', RCPT], ['on_data', DATA],
         ['on_dataline', DATA_LINES], ['on_dataend', DATA_END], ['on_eom', EOM],
         ['on_commit', COMMIT], ['on_rollback', ROLLBACK], ['on_disconnect', DISCONNECT],
         ['on_tls', TLS], ['on_auth_result', AUTH_RESULT]) {
        my ($n, $k) = @$_;
        no strict 'refs';
        if (defined &{"main::$n"}) {
            $cb{$k} = \&{"main::$n"};
            $names{$k} = $n;
        }
    }
    # An on_helo alone also answers EHLO.
    if ($cb{+HELO} && !$cb{+EHLO}) {
        $cb{+EHLO} = $cb{+HELO};
        $names{+EHLO} = 'on_helo';
    }
    my ($hooks, $reports) = (0, 0);
    for my $k (keys %ANSWERED) { $hooks |= $ANSWERED{$k} if $cb{$k} }
    for my $k (keys %REPORTS) { $reports |= $REPORTS{$k} if $cb{$k} }
    # DISCONNECT always, to forget sessions that leave mid-message or with an answer
    # pending.
    $reports |= EV_DISCONNECT;
    if ($cb{+DATA_LINES} || $cb{+DATA_END}) {
        # EOM too: a message whose on_dataline died is refused (451) there.
        $hooks |= EV_DATA_LINES | EV_EOM;
    }
    return ($hooks, $reports);
}

sub _flush_lines {
    my ($id) = @_;
    my $l = delete $lines{$id};
    return unless $l && @$l;
    my $limit = ($max_frame || MAX_FRAME) - HEADER - 2;
    my ($size, @chunk) = (0);
    for my $line (@$l) {
        if (@chunk && (@chunk == MAX_STR || $size + 2 + length($line) > $limit)) {
            $batch .= encode($id, DATA_LINES, [@chunk]);
            ($size, @chunk) = (0);
        }
        push @chunk, $line;
        $size += 2 + length $line;
    }
    $batch .= encode($id, DATA_LINES, \@chunk);
}

sub dispatch {
    my ($id, $kind, $f) = @_;
    my $cb = $cb{$kind};
    if ($kind == DATA_LINES) {
        if (($data{$id} // '') ne 'lines') {  # the first lines of a new message
            $data{$id} = 'lines';
            delete $failed{$id};
        }
        my $in = $f->[0];
        if (!$cb || $failed{$id}) {
            push @{ $lines{$id} }, @$in;
        } else {
            local $data_session = $id;
            for my $i (0 .. $#$in) {
                $touched = 0;
                my $line = $in->[$i];
                my $ok = eval { $cb->($id, $line); 1 };
                if (!$ok) {
                    _complain('on_dataline', $id, $@);
                    $failed{$id} = 1;
                    # The message is refused at EOM; the rest goes through as is.
                    push @{ $lines{$id} }, @$in[$i + 1 .. $#$in];
                    last;
                }
                push @{ $lines{$id} }, $line if $passthrough && !$touched;
            }
        }
        _flush_lines($id);
        return;
    }
    if ($kind == DATA_END) {
        delete $failed{$id} if ($data{$id} // '') ne 'lines';  # an empty message
        $data{$id} = 'lines';
        if ($cb && !$failed{$id}) {
            local $data_session = $id;
            if (!eval { $cb->($id); 1 }) {
                _complain('on_dataend', $id, $@);
                $failed{$id} = 1;
            }
        }
        _flush_lines($id);
        $data{$id} = 'ended';
        $batch .= encode($id, DATA_END);
        return;
    }
    if ($ANSWERED{$kind}) {
        print STDERR 'filter-perl: session ' . id_hex($id)
            . ": new event before our answer to the last one\n" if exists $awaiting{$id};
        $awaiting{$id} = $kind;
        if ($kind == EOM) {
            delete $data{$id};
            if (delete $failed{$id}) {
                filter_api_tempfail($id, $TEMPFAIL_TEXT);
                return;
            }
        }
        my $r;
        if ($cb && !eval { $r = $cb->($id, @$f); 1 }) {
            _complain($names{$kind}, $id, $@);
            filter_api_tempfail($id, $TEMPFAIL_TEXT) if exists $awaiting{$id};
            return;
        }
        return if ref $r && $r == LATER;
        # Returning without an answer lets the event through.
        filter_api_accept($id) if exists $awaiting{$id};
        return;
    }
    if ($REPORTS{$kind}) {
        if ($kind == DISCONNECT) {
            if (exists $awaiting{$id}) {
                $gone{$id} = 1;
                push @gone, $id;
                delete $gone{ shift @gone } while @gone > 1024;
            }
            delete $_->{$id} for \%data, \%lines, \%awaiting, \%failed;
        }
        if ($cb && !eval { $cb->($id, @$f); 1 }) {
            _complain($names{$kind}, $id, $@);
        }
        return;
    }
    # Nothing else comes to a filter that did not register for it; like the Rust glue,
    # ignore what is left.
}

# Drops whole configuration lines at the start of $$buf; true while a partial one is
# left (more input is needed).
sub _skip_config {
    my ($buf) = @_;
    while (substr($$buf, 0, 1) eq 'c') {
        my $nl = index($$buf, "\n");
        return 1 if $nl < 0;
        substr($$buf, 0, $nl + 1, '');
    }
    return 0;
}

# Serves the daemon on $in/$out until it closes the stream; returns the exit status.
sub run {
    my ($in, $out, $hooks, $reports) = @_;
    $out_fh = $out;
    _write_all(encode(0, REGISTER, PROTOCOL_VERSION, $hooks, $reports, $name));
    my $buf = '';
    my $ready = 0;
    my $in_fd = fileno($in);
    while (1) {
        # The daemon's stream, the watched descriptors and the first timer.
        my ($rin, $win) = ('', '');
        vec($rin, $in_fd, 1) = 1;
        for my $fd (keys %watch) {
            vec($rin, $fd, 1) = 1 if $watch{$fd}{r};
            vec($win, $fd, 1) = 1 if $watch{$fd}{w};
        }
        my ($rout, $wout) = ($rin, $win);
        my $nready = select($rout, $wout, undef, _timeout());
        if ($nready < 0) {
            next if $!{EINTR};
            die "filter-perl: select: $!\n";
        }
        _run_watches($rout, $wout) if $nready > 0;
        _run_timers();
        next unless vec($rout, $in_fd, 1);
        my $n = sysread($in, $buf, 65536, length $buf);
        if (!defined $n) {
            next if $!{EINTR};
            return 0 if $!{ECONNRESET};
            die "filter-perl: read: $!\n";
        }
        return 0 if $n == 0;
        # A daemon that heard nothing from us for a second may have sent the
        # configuration lines of OpenSMTPD's protocol: they start with "c" (a frame
        # with a zero byte) and come before READY.
        next if !$ready && _skip_config(\$buf);
        $batch = '';
        my $status;
        my $ok = eval {
            for my $fr (take_frames(\$buf)) {
                my ($id, $kind, $f) = @$fr;
                if (!$ready) {
                    if ($kind == READY) {
                        ($daemon_version, $max_frame, $timeout_ms) = @$f;
                        $max_frame = MAX_FRAME if !$max_frame || $max_frame > MAX_FRAME;
                        $ready = 1;
                        next;
                    }
                    if ($kind == REFUSED) {
                        print STDERR "filter-perl: refused by the daemon: $f->[0]\n";
                        $status = 1;
                        last;
                    }
                    die "smtpd wire: event before READY\n";
                }
                dispatch($id, $kind, $f);
            }
            1;
        };
        my $err = $@;
        my $outb = $batch;
        $batch = undef;
        _write_all($outb) if length $outb;
        if (!$ok) {
            print STDERR "filter-perl: protocol error: $err";
            return 1;
        }
        return $status if defined $status;
    }
}

1;
