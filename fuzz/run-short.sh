#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each for a short time.
#
#   fuzz/run-short.sh [SECONDS] [TARGET...]
#
# SECONDS defaults to 15 per target; TARGETs default to all of them. Exits non-zero if
# a target crashes (or fails to build); crash inputs land in fuzz/artifacts/TARGET/ and
# logs in fuzz/artifacts/logs/. The corpus grows in fuzz/corpus/TARGET/ (not in git),
# seeded from fuzz/seeds/TARGET/.
#
# Environment:
#   FUZZ_SANITIZER=address|none   force a sanitizer (default: address, falling back to
#                                 none if the address-sanitizer build fails); none
#                                 runs about 5x more inputs per second (the crate is
#                                 safe Rust but for FFI in sys.rs, which ASan guards)
#   FUZZ_JOBS=N                   libFuzzer -fork=N (default: one process per target)
#   FUZZ_RUNS=N                   stop each target after N inputs instead of after
#                                 SECONDS (fuzz/campaign.sh uses it)
#   FUZZ_SEED=N                   libFuzzer -seed=N: the same inputs in the same order
#                                 on every run (CI uses it, so that a red run is
#                                 reproduced by running it again); random by default
#
# Only a stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it take cargo-fuzz's -Z
# flags (-Zsanitizer=address).
set -u -o pipefail

secs=${1:-15}
[ $# -gt 0 ] && shift
case $secs in
'' | *[!0-9]*)
	echo "usage: $0 [SECONDS] [TARGET...]" >&2
	exit 2
	;;
esac

fuzz_dir=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$fuzz_dir")
cd "$root" || exit 2

all_targets=(command session linebuf bdat envelope spoolfile filtercodec milter dnswire mtaclient textfilter proxyhdr idna config bounce)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all_targets[@]}")

export RUSTC_BOOTSTRAP=1
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! cargo fuzz --version >/dev/null 2>&1; then
	echo "== installing cargo-fuzz"
	t0=$(date +%s)
	cargo install cargo-fuzz --locked || {
		echo "cannot install cargo-fuzz" >&2
		exit 2
	}
	echo "== cargo-fuzz installed in $(($(date +%s) - t0)) s"
fi
echo "== $(cargo fuzz --version), $(rustc --version)"

t0=$(date +%s)
san=${FUZZ_SANITIZER:-}
if [ -n "$san" ]; then
	echo "== building (sanitizer $san)"
	cargo fuzz build --fuzz-dir "$fuzz_dir" -s "$san" || {
		echo "build failed" >&2
		exit 2
	}
else
	san=address
	echo "== building (sanitizer address)"
	if ! cargo fuzz build --fuzz-dir "$fuzz_dir" -s address; then
		echo "== address sanitizer build failed; trying -s none"
		san=none
		cargo fuzz build --fuzz-dir "$fuzz_dir" -s none || {
			echo "build failed" >&2
			exit 2
		}
	fi
fi
echo "== built in $(($(date +%s) - t0)) s (sanitizer $san)"

# Run the binaries just built (as `cargo fuzz run` would, without rebuilding).
triple=$(rustc -vV | sed -n 's/^host: //p')
bindir="$fuzz_dir/target/$triple/release"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}"

logs="$fuzz_dir/artifacts/logs"
mkdir -p "$logs"
failed=()
summary=()
for t in "${targets[@]}"; do
	if [ ! -f "$fuzz_dir/fuzz_targets/$t.rs" ]; then
		echo "no such target: $t" >&2
		failed+=("$t")
		continue
	fi
	mkdir -p "$fuzz_dir/corpus/$t" "$fuzz_dir/artifacts/$t"
	corpora=("$fuzz_dir/corpus/$t")
	[ -d "$fuzz_dir/seeds/$t" ] && corpora+=("$fuzz_dir/seeds/$t")
	if [ -n "${FUZZ_RUNS:-}" ]; then
		args=(-runs="$FUZZ_RUNS" -timeout=10 -print_final_stats=1)
	else
		args=(-max_total_time="$secs" -timeout=10 -print_final_stats=1)
	fi
	case $t in
	envelope | spoolfile) args+=(-dict="$fuzz_dir/dict/envelope.dict") ;;
	command | session | bdat) args+=(-dict="$fuzz_dir/dict/smtp.dict") ;;
	esac
	[ -n "${FUZZ_JOBS:-}" ] && args+=(-fork="$FUZZ_JOBS")
	[ -n "${FUZZ_SEED:-}" ] && args+=(-seed="$FUZZ_SEED")
	log="$logs/$t.log"
	if [ -n "${FUZZ_RUNS:-}" ]; then
		echo "== fuzzing $t for $FUZZ_RUNS inputs (log: ${log#"$root"/})"
	else
		echo "== fuzzing $t for $secs s (log: ${log#"$root"/})"
	fi
	run=("$bindir/$t")
	if [ "$t" = config ]; then
		# `listen on NAME` resolves NAME: the parser runs where resolv.conf names
		# a loopback address nothing answers on, never the machine's nameserver.
		if ! unshare -m true 2>/dev/null; then
			echo "== skipping config: a private mount namespace needs root"
			continue
		fi
		printf 'nameserver 127.0.0.254\noptions timeout:1 attempts:1\n' >"$fuzz_dir/artifacts/resolv.conf"
		run=(unshare -m --propagation private sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
			"$fuzz_dir/artifacts/resolv.conf" "$bindir/$t")
	fi
	"${run[@]}" -artifact_prefix="$fuzz_dir/artifacts/$t/" "${args[@]}" "${corpora[@]}" >"$log" 2>&1
	rc=$?
	runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
	cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1)
	corpus=$(find "$fuzz_dir/corpus/$t" -type f | wc -l)
	if [ $rc -ne 0 ]; then
		failed+=("$t")
		summary+=("$(printf '%-9s CRASH (exit %s)' "$t" "$rc")")
		echo "!! $t failed (exit $rc):"
		grep -E "panicked at|^(thread|SUMMARY|==[0-9]+==ERROR)" -A2 "$log" | head -20
		for a in $(grep -o "$fuzz_dir/artifacts/$t/[a-z-]*[0-9a-f]*" "$log" | sort -u); do
			[ -f "$a" ] || continue
			echo "input ($a, hex): $(od -An -v -tx1 "$a" | tr -d ' \n' | head -c 2000)"
			echo "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $t ${a#"$root"/}"
		done
	else
		summary+=("$(printf '%-9s ok  %10s runs  %7s exec/s  %s  corpus %s' "$t" "${runs:-?}" "${speed:-?}" "${cov:-cov: ?}" "$corpus")")
	fi
done

per="$secs s"
[ -n "${FUZZ_RUNS:-}" ] && per="$FUZZ_RUNS inputs"
echo "== summary ($per per target, sanitizer $san)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
	echo "== FAILED: ${failed[*]}"
	exit 1
fi
echo "== all targets ran without a crash"
