#!/usr/bin/env bash
# Instructions per request of a switchboard-proxy binary, counted by valgrind's callgrind:
# user-space work only (the proxy's code, its libraries and libc; not the kernel), and the
# same from run to run within a few tenths of a percent, where CPU time on this shared
# machine moves by more than the changes being measured.
#
#   [INSTRUCTIONS_TARGET=proxy-log] proxy/instructions.sh BIN [OUT_DIR] [SECONDS]
#
# Runs proxy-bench (PROXY_BENCH_TARGETS=proxy, or INSTRUCTIONS_TARGET: `proxy-log` measures
# the same with the default access log on; one worker) with BIN under callgrind. Once
# requests flow at the fixed rate (1,000 rps, which the proxy keeps up with even under
# callgrind), it zeroes the counts, waits SECONDS (15), dumps them and divides by the
# requests the proxy's admin /stats counted meanwhile; proxy-bench then runs its
# saturation phase and stops (about a minute in all). Prints one line:
#   requests=N instructions=I instructions/request=I/N
# and leaves the profile in OUT_DIR/callgrind.out for callgrind_annotate (add
# --inclusive=yes, or --tree=caller to see who calls what). Needs valgrind and curl, and
# target/release/proxy-bench built (cargo build --release -p switchboard-loadtest).
set -eu

bin=$(realpath "${1:?usage: proxy/instructions.sh BIN [OUT_DIR] [SECONDS]}")
out=${2:-/tmp/proxy-instructions.$$}
secs=${3:-15}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
out=$(realpath "$out")
rm -f "$out"/callgrind.out*

wrapper="$out/under-callgrind.sh"
cat >"$wrapper" <<EOF
#!/bin/sh
exec valgrind --tool=callgrind --callgrind-out-file=$out/callgrind.out.%p "$bin" "\$@"
EOF
chmod +x "$wrapper"

SWITCHBOARD_PROXY_BIN=$wrapper PROXY_BENCH_TARGETS=${INSTRUCTIONS_TARGET:-proxy} PROXY_BENCH_SECS=$((secs + 8)) \
    PROXY_BENCH_WORKERS=1 "$here/target/release/proxy-bench" >"$out/bench.log" 2>&1 &
bench=$!

# The proxy under callgrind (proxy-bench first runs `BIN --version`, which has no admin
# address).
pid=
for _ in $(seq 1 240); do
    pid=$(pgrep -n -f "^[^ ]*valgrind[^ ]* --tool=callgrind .*--admin-address" || true)
    [ -n "$pid" ] && break
    sleep 0.5
done
[ -n "$pid" ] || { echo "instructions.sh: the proxy did not start; see $out/bench.log" >&2; exit 1; }
admin=$(tr '\0' '\n' </proc/"$pid"/cmdline | grep -A1 -x -- --admin-address | tail -1)
requests() {
    curl -fsS "http://$admin/stats" |
        awk '/^switchboard_proxy_requests_total/ {s += $NF} END {printf "%d\n", s}'
}
for _ in $(seq 1 240); do
    n=$(requests 2>/dev/null || echo 0)
    [ "${n:-0}" -gt 2000 ] && break
    sleep 0.5
done

callgrind_control -z "$pid" >/dev/null
r0=$(requests)
sleep "$secs"
callgrind_control -d "$pid" >/dev/null
r1=$(requests)
# proxy-bench goes on to its saturation phase and then stops everything it started.
wait "$bench" || true
# The dump asked for above is the first numbered one; the file without a number is what
# callgrind writes when the proxy exits.
mv "$out/callgrind.out.$pid.1" "$out/callgrind.out"
rm -f "$out"/callgrind.out.*

n=$((r1 - r0))
total=$(callgrind_annotate "$out/callgrind.out" 2>/dev/null |
    awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
awk -v n="$n" -v i="$total" \
    'BEGIN {printf "requests=%d instructions=%d instructions/request=%.0f\n", n, i, (n > 0 ? i / n : 0)}'
