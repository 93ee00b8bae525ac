#!/usr/bin/env bash
# A fuzzing campaign: every target (or those named) runs RUNS inputs (default 10^7),
# without a sanitizer for speed (FUZZ_SANITIZER=address to keep ASan), one after
# the other; then each target's corpus is minimized into fuzz/seeds/TARGET (kept in
# git, replayed by every run, CI's included; seeds named by hand stay as they are), and a line per target is added to
# fuzz/campaigns.md: date, inputs, inputs per second, coverage, seeds kept, result.
#
#   fuzz/campaign.sh [RUNS] [TARGET...]
#
# Logs stay in fuzz/artifacts/logs/; a crash's input in fuzz/artifacts/TARGET/, to be
# turned into a regression test before it is fixed. Exits non-zero after a crash.
set -u -o pipefail
fuzz_dir=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$fuzz_dir")
runs=${1:-10000000}
[ $# -gt 0 ] && shift
case $runs in '' | *[!0-9]*) echo "usage: $0 [RUNS] [TARGET...]" >&2; exit 2 ;; esac
export FUZZ_RUNS=$runs FUZZ_SANITIZER=${FUZZ_SANITIZER:-none}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$fuzz_dir/run-short.sh" 0 "$@" | tee "$out"
rc=${PIPESTATUS[0]}
export RUSTC_BOOTSTRAP=1
triple=$(rustc -vV | sed -n 's/^host: //p')
bindir="$fuzz_dir/target/$triple/release"
report="$fuzz_dir/campaigns.md"
[ -f "$report" ] || printf '# Fuzzing campaigns\n\nWritten by fuzz/campaign.sh.\n\n| date | target | inputs | inputs/s | coverage | seeds | result |\n|---|---|---|---:|---:|---:|---|\n' >"$report"
sed -n '/^== summary/,$p' "$out" | while read -r t status rest; do
	case $status in ok | CRASH) ;; *) continue ;; esac
	log="$fuzz_dir/artifacts/logs/$t.log"
	n=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
	seeds="$fuzz_dir/seeds/$t"
	if [ "$status" = ok ]; then
		# Minimize: the seeds plus the corpus grown, merged into a fresh directory.
		# Seeds with a name of their own (regressions, hand-written) are kept as
		# they are.
		fresh=$(mktemp -d)
		mkdir -p "$seeds" "$fuzz_dir/corpus/$t"
		find "$seeds" -type f ! -regex '.*/[0-9a-f]\{40\}' -exec cp {} "$fresh/" \;
		if "$bindir/$t" -merge=1 "$fresh" "$seeds" "$fuzz_dir/corpus/$t" >/dev/null 2>&1; then
			rm -rf "$seeds" && mv "$fresh" "$seeds"
		else
			rm -rf "$fresh"
		fi
	fi
	kept=$(find "$seeds" -type f 2>/dev/null | wc -l)
	printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$(date -u +%Y-%m-%d)" "$t" "${n:-?}" \
		"${speed:-?}" "${cov:-?}" "$kept" "$status" >>"$report"
done
exit "$rc"
