# bench/servers.sh - server definitions for the shared harness peers.sh.
#
# bench/run copies peers.sh into a temporary directory and this file into its servers.d/,
# so that peers.sh starts, drives and stops these servers like its own (one at a time, in
# a private mount namespace whose /etc/resolv.conf names 127.0.0.1 only, under setsid,
# stopped by PID).  Not meant to be run by itself.
#
# Every server here differs from the harness's own in three ways only:
#   - START first writes the PID of the server's session leader to DIR/server.pid
#     (AUX likewise to DIR/aux.pid), so that bench/probe.py can add up the CPU time of
#     the server's processes;
#   - COUNT is bench/probe.py, which counts the Maildir, notes the CPU time and the
#     moment the last message arrived, and keeps every message for the exactly-once check;
#   - for ours, the configuration below.
#
# Needs in the environment (exported by bench/run): SMTPD_BIN FILTER_PASS FILTER_PY
# PY_PASS PROBE SMTPD_PORT; for the TLS servers also SMTPD_SMTPS_PORT BENCH_TLS_CERT
# BENCH_TLS_KEY.

# ---------------------------------------------------------------- smtpd (ours)
bench_smtpd_conf() {  # DIR FILTER_DECLARATION LISTEN_SUFFIX
  local d=$1
  mkdir -p "$d/spool"
  mk_maildir "$d/Maildir"
  cat > "$d/smtpd.conf" <<EOF
# smtpd under test (bench/run): same role as the OpenSMTPD and Postfix set-ups of peers.sh
queue path "$d/spool"
smtp limit max-mails 100000
# every client of the benchmark is 127.0.0.1: no per-address limit (default 50)
smtp limit max-sessions-per-address 0
$2
table vusers { "@$DOMAIN" = $BENCH_USER }
listen on 127.0.0.1 port $SMTPD_PORT hostname mx.bench.local $3
action "bench" maildir "$d/Maildir" virtual <vusers>
match from any for domain "$DOMAIN" action "bench"
EOF
  PORT=$SMTPD_PORT
  # run as root: the engine drops to _smtpd, each delivery runs as $BENCH_USER
  START="echo \$\$ > $d/server.pid; exec $SMTPD_BIN -d -f $d/smtpd.conf"
  COUNT="$PROBE count $d/Maildir"
}
srv_smtpd() { bench_smtpd_conf "$1" "" ""; }
# The sandbox's hard limit of open files is 20000 and root may not raise it
# (no CAP_SYS_RESOURCE): the default max-sessions, half the limit less 64 (a socket and a
# message file per session), is then 9968.  An idle session holds one descriptor, so for
# the 10000-session test the limit is set explicitly.
srv_smtpd_c10k() { bench_smtpd_conf "$1" "smtp limit max-sessions 10500" ""; }
# The bdat phase: the same server, which smtp-source-wrap drives with BDAT instead of DATA.
srv_smtpd_bdat() { srv_smtpd "$1"; }
srv_smtpd_filter_rust() {
  bench_smtpd_conf "$1" "filter \"pass\" proc-exec \"$FILTER_PASS\"" 'filter "pass"'
}
srv_smtpd_filter_py() {
  bench_smtpd_conf "$1" "filter \"pass\" proc-exec \"/usr/bin/python3 $FILTER_PY $PY_PASS\"" 'filter "pass"'
}

# ---------------------------------------------------------------- the peers, as peers.sh sets them up
bench_wrap() {  # DIR: PID files and the probe as COUNT
  START="echo \$\$ > $1/server.pid; $START"
  if [ -n "$AUX" ]; then AUX="echo \$\$ > $1/aux.pid; $AUX"; fi
  COUNT="$PROBE count $1/Maildir"
}
srv_osmtpd() { srv_opensmtpd "$1" && bench_wrap "$1"; }
srv_osmtpd_filter() { srv_opensmtpd_filter "$1" && bench_wrap "$1"; }
srv_pfx() { srv_postfix "$1" && bench_wrap "$1"; }
srv_pfx_milter() { srv_postfix_milter "$1" && bench_wrap "$1"; }
# Postfix runs one smtpd process per session; peers.sh allows 600 of them.  For the
# 1000-session memory test allow 1100, or the last 400 connections wait in the backlog.
pfx_maxproc_1100() {  # DIR NAME
  sed -i -E 's/^(127\.0\.0\.1:2527[[:space:]]+inet[[:space:]]+n[[:space:]]+-[[:space:]]+n[[:space:]]+-[[:space:]]+)600 /\11100 /' "$1/etc/master.cf"
  grep -q ' 1100 smtpd' "$1/etc/master.cf" || { log "$2: could not raise maxproc"; return 1; }
}
srv_pfx_1100() {
  srv_postfix "$1" || return 1
  pfx_maxproc_1100 "$1" pfx-1100 || return 1
  bench_wrap "$1"
}

# ---------------------------------------------------------------- TLS (bench/run, phase tls)
# The same three servers with the same certificate and key ($BENCH_TLS_CERT and
# $BENCH_TLS_KEY, made by bench/run; the pki is named after the certificate's name,
# mx.bench.local, the name the TLS client asks for): STARTTLS offered on the usual
# port, and a second listener speaking TLS from the first byte (smtps, RFC 8314) whose
# port is written to DIR/smtps.port for the handshake test (bench/tls_conns.py).
TLS_NAME=mx.bench.local
srv_smtpd_tls() {
  bench_smtpd_conf "$1" "pki $TLS_NAME cert \"$BENCH_TLS_CERT\"
pki $TLS_NAME key \"$BENCH_TLS_KEY\"
listen on 127.0.0.1 port $SMTPD_SMTPS_PORT hostname mx.bench.local smtps pki $TLS_NAME" "tls pki $TLS_NAME"
  echo "$SMTPD_SMTPS_PORT" > "$1/smtps.port"
}
srv_osmtpd_tls() {
  srv_opensmtpd "$1" || return 1
  local c=$1/smtpd.conf
  {
    printf 'pki %s cert "%s"\npki %s key "%s"\n' "$TLS_NAME" "$BENCH_TLS_CERT" "$TLS_NAME" "$BENCH_TLS_KEY"
    sed -E "s/^(listen on 127\\.0\\.0\\.1 port 2526 .*[^ ]) *\$/\\1 tls pki $TLS_NAME\\nlisten on 127.0.0.1 port 2536 hostname mx.bench.local smtps pki $TLS_NAME/" "$c"
  } > "$c.tls" && mv "$c.tls" "$c"
  grep -q "port 2526 .* tls pki $TLS_NAME\$" "$c" && grep -q 'port 2536 .* smtps' "$c" \
    || { log "osmtpd-tls: could not add TLS to $c"; return 1; }
  echo 2536 > "$1/smtps.port"
  bench_wrap "$1"
}
srv_pfx_tls() {
  srv_postfix "$1" || return 1
  printf '%s\n' "smtpd_tls_cert_file = $BENCH_TLS_CERT" "smtpd_tls_key_file = $BENCH_TLS_KEY" \
    "smtpd_tls_security_level = may" >> "$1/etc/main.cf"
  # 1100 processes for the 1000-session memory test, as pfx-1100
  pfx_maxproc_1100 "$1" pfx-tls || return 1
  echo "127.0.0.1:2537 inet n - n - 600 smtpd -o smtpd_tls_wrappermode=yes" >> "$1/etc/master.cf"
  postfix -c "$1/etc" check >> "$1/check.log" 2>&1 || { log "pfx-tls: postfix check failed: $(cat "$1/check.log")"; return 1; }
  echo 2537 > "$1/smtps.port"
  bench_wrap "$1"
}

# ---------------------------------------------------------------- relay (bench/run, phase relay)
# The three servers relaying what smtp-source sends to d1.bench.test ... dN.bench.test,
# by MX, to the smtp-sink receivers of bench/relay-aux (the AUX of each run, started
# before the server: the test DNS server and the sinks; not counted in the server's CPU
# time: no aux.pid).  peers.sh runs in the phase's network namespace, without its own
# resolv.conf (PEERS_NO_DNS_ISOLATION=1): /etc/resolv.conf names the test DNS server
# only.  Plain SMTP on both sides (the sinks speak no TLS).  COUNT is the sinks' count.
# Needs in the environment also RELAY_AUX (bench/relay-aux) and BENCH_RELAY_SMTPD: "mx"
# (smtpd looks the MX records up: `relay` without `host`) or "host" (a smarthost:
# `relay host "smtp://127.0.0.2:25"`, every message to the first sink).
relay_wrap() {  # DIR
  START="echo \$\$ > $1/server.pid; $START"
  AUX="exec $RELAY_AUX $1"
  AUX_READY="test -f $1/relay.ready"
  COUNT="$PROBE count-sinks $1"
}
srv_smtpd_relay() {
  local d=$1 how
  mkdir -p "$d/spool"
  case ${BENCH_RELAY_SMTPD:-mx} in
    mx) how='relay';;
    *) how='relay host "smtp://127.0.0.2:25"';;
  esac
  cat > "$d/smtpd.conf" <<EOC
# smtpd relaying (bench/run, phase relay)
queue path "$d/spool"
smtp limit max-mails 100000
smtp limit max-sessions-per-address 0
listen on 127.0.0.1 port $SMTPD_PORT hostname mx.bench.local
action "out" $how
match from any for domain "*.bench.test" action "out"
EOC
  PORT=$SMTPD_PORT
  START="exec $SMTPD_BIN -d -f $d/smtpd.conf"
  relay_wrap "$d"
}
srv_osmtpd_relay() {
  # the harness's set-up with a relay action: MX lookups through OpenSMTPD's own
  # resolver, which reads /etc/resolv.conf
  osmtpd_common "$1" 'action "bench" relay' "" "" || return 1
  echo 'match from any for domain "*.bench.test" action "bench"' >> "$1/smtpd.conf"
  relay_wrap "$1"
}
srv_pfx_relay() {
  # the harness's set-up (mydestination empty, mynetworks 127.0.0.0/8, IPv4), then
  # everything not in virtual_mailbox_domains (bench.test) goes to the smtp transport,
  # by MX: no relayhost, DNS lookups as by default, no TLS, no local delivery
  pf_common "$1" "relayhost =
default_transport = smtp
local_transport = error:5.1.1 no local delivery in this test
smtp_tls_security_level = none
smtpd_tls_security_level = none" || return 1
  relay_wrap "$1"
}

# ---------------------------------------------------------------- DKIM (bench/run, phase dkim)
# The three servers signing every message with the same RSA 2048 key ($BENCH_DKIM_KEY,
# made by bench/run, selector "bench", domain bench.test, relaxed/relaxed): smtpd with
# filters/dkim (-a: every session is internal, -m sign: nothing verified), OpenSMTPD with
# Debian's filter-dkimsign (proc-exec), Postfix with opendkim as a milter (Mode s, the
# client 127.0.0.1 is in its default InternalHosts). smtpd-dkim-ed signs with an Ed25519
# key instead ($BENCH_DKIM_ED_KEY, selector "benched"). Needs FILTER_DKIM, DKIMSIGN and
# those keys in the environment.
srv_smtpd_dkim() {
  bench_smtpd_conf "$1" "filter \"dkim\" proc-exec \"$FILTER_DKIM -a -m sign -c relaxed/relaxed -k $DOMAIN:bench:$BENCH_DKIM_KEY\"" 'filter "dkim"'
}
srv_smtpd_dkim_ed() {
  bench_smtpd_conf "$1" "filter \"dkim\" proc-exec \"$FILTER_DKIM -a -m sign -c relaxed/relaxed -k $DOMAIN:benched:$BENCH_DKIM_ED_KEY\"" 'filter "dkim"'
}
# The same signers behind smtpd: OpenSMTPD's filter-dkimsign unchanged, through smtpd's
# support of OpenSMTPD's text protocol (smtpd-dkimsign), and opendkim through smtpd's milter
# bridge, filters/milter (smtpd-milter-dkim; opendkim as for Postfix, its CPU time counted).
# Needs FILTER_MILTER too.
srv_smtpd_dkimsign() {
  bench_smtpd_conf "$1" "filter \"dkim\" proc-exec \"$DKIMSIGN -c relaxed/relaxed -d $DOMAIN -s bench -k $BENCH_DKIM_KEY\"" 'filter "dkim"'
}
opendkim_aux() {  # DIR
  printf '%s\n' "Syslog no" "Mode s" "Domain $DOMAIN" "Selector bench" "KeyFile $BENCH_DKIM_KEY" \
    "Socket local:$1/opendkim.sock" "PidFile $1/opendkim.pid" "UserID root" "UMask 000" \
    "Canonicalization relaxed/relaxed" "InternalHosts 127.0.0.1" "RequireSafeKeys false" > "$1/opendkim.conf"
  AUX="exec opendkim -f -x $1/opendkim.conf"
  AUX_READY="test -S $1/opendkim.sock"
}
srv_smtpd_milter_dkim() {
  bench_smtpd_conf "$1" "filter \"dkim\" proc-exec \"$FILTER_MILTER unix:$1/opendkim.sock\"" 'filter "dkim"'
  opendkim_aux "$1"
  AUX="echo \$\$ > $1/aux.pid; $AUX"
}
srv_osmtpd_dkim() {
  mk_maildir "$1/Maildir"
  osmtpd_common "$1" "action \"bench\" maildir \"$1/Maildir\" virtual <vusers>" 'filter "dkim"' \
    "filter \"dkim\" proc-exec \"$DKIMSIGN -c relaxed/relaxed -d $DOMAIN -s bench -k $BENCH_DKIM_KEY\"" || return 1
  bench_wrap "$1"
}
srv_pfx_dkim() {
  pf_common "$1" "smtpd_milters = unix:$1/opendkim.sock
milter_default_action = tempfail" || return 1
  opendkim_aux "$1"
  bench_wrap "$1"
}

# ---------------------------------------------------------------- DNSBL (bench/run, phase dnsbl)
# A DNS blocklist lookup per connection: bench/dnsbl-aux (AUX, started before the server;
# its CPU time is not counted: no aux.pid) answers every question on 127.0.0.1:53, the
# name server of the harness's private /etc/resolv.conf, with NXDOMAIN after
# $BENCH_DNSBL_DELAY_MS. smtpd with the Rust filter-dnsbl answering later, and the same
# filter synchronous (-s), both told that server by $BENCH_DNSBL_RESOLV; Postfix with
# reject_rbl_client (its resolver reads /etc/resolv.conf). Needs in the environment
# also FILTER_DNSBL, DNSBL_AUX, BENCH_DNSBL_ZONE, BENCH_DNSBL_DELAY_MS, BENCH_DNSBL_RESOLV.
dnsbl_aux() {  # DIR
  AUX="exec /usr/bin/python3 $DNSBL_AUX $1 $BENCH_DNSBL_DELAY_MS"
  AUX_READY="test -f $1/dns.ready"
}
srv_smtpd_dnsbl() {
  bench_smtpd_conf "$1" "filter \"dnsbl\" proc-exec \"$FILTER_DNSBL -t 5000 -r $BENCH_DNSBL_RESOLV $BENCH_DNSBL_ZONE\"" 'filter "dnsbl"'
  dnsbl_aux "$1"
}
srv_smtpd_dnsbl_sync() {
  bench_smtpd_conf "$1" "filter \"dnsbl\" proc-exec \"$FILTER_DNSBL -s -t 5000 -r $BENCH_DNSBL_RESOLV $BENCH_DNSBL_ZONE\"" 'filter "dnsbl"'
  dnsbl_aux "$1"
}
srv_pfx_dnsbl() {
  pf_common "$1" "smtpd_client_restrictions = reject_rbl_client $BENCH_DNSBL_ZONE" || return 1
  bench_wrap "$1"
  dnsbl_aux "$1"
}

# ---------------------------------------------------------------- PostgreSQL (bench/run, phase pgsql)
# The recipient table in a PostgreSQL server of the run: smtpd and OpenSMTPD with the same
# table-postgres program (opensmtpd-extras) and query file ($BENCH_PG_TABLE), Postfix with
# a pgsql: map ($BENCH_PG_POSTFIX). Needs both files, readable by every server's user.
pg_table() {  # DIR: the configuration's recipient table, from PostgreSQL
  sed -i "s|^table vusers .*|table vusers postgres:$BENCH_PG_TABLE|" "$1/smtpd.conf"
}
srv_smtpd_pgsql() { bench_smtpd_conf "$1" "" "" && pg_table "$1"; }
srv_osmtpd_pgsql() {
  mk_maildir "$1/Maildir"
  osmtpd_common "$1" "action \"bench\" maildir \"$1/Maildir\" virtual <vusers>" "" "" || return 1
  pg_table "$1"
  bench_wrap "$1"
}
srv_pfx_pgsql() {
  pf_common "$1" "virtual_mailbox_maps = pgsql:$BENCH_PG_POSTFIX" || return 1
  bench_wrap "$1"
}
