#!/usr/bin/env bash
# Profiles a running switchboard-proxy over one window of load: CPU profile (perf, software
# clock), syscalls (strace -c), context switches, malloc calls (uprobes on libc) and CPU
# time, each divided by the requests the proxy served in that window (its admin /stats).
#
#   proxy/profile.sh [PID] [SECONDS] [OUT_DIR]
#
# PID defaults to the newest switchboard-proxy; SECONDS (5) is the length of each of the
# three windows (perf, strace, counters), taken one after another, so the load must last
# about 3×SECONDS + 2. With proxy-bench: start it with PROXY_BENCH_TARGETS=proxy and a long
# PROXY_BENCH_SECS, and call this once during its fixed-rate phase and once during
# saturation. Needs root (perf, uprobes, strace), perf, strace and curl.
set -eu

pid=${1:-$(pgrep -n -x switchboard-pro || true)}
secs=${2:-5}
out=${3:-/tmp/proxy-profile.$$}
[ -n "$pid" ] || { echo "profile.sh: no switchboard-proxy running" >&2; exit 2; }
mkdir -p "$out"

admin=$(tr '\0' '\n' </proc/"$pid"/cmdline | grep -A1 -x -- --admin-address | tail -1)
[ -n "$admin" ] || admin=127.0.0.1:15000
libc=$(ldd /proc/"$pid"/exe | awk '/libc.so/ {print $3}')

requests() {
    curl -fsS "http://$admin/stats" |
        awk '/^switchboard_proxy_requests_total/ {s += $NF} END {printf "%d\n", s}'
}
field() { awk -v f="$1:" '$1 == f {print $2}' /proc/"$pid"/status; }
cpu_ticks() { awk '{print $14 + $15}' /proc/"$pid"/stat; }
per() { awk -v a="$1" -v n="$2" 'BEGIN {if (n > 0) printf "%.2f", a / n; else print "n/a"}'; }

for f in malloc calloc realloc free; do
    perf probe -q -x "$libc" --add "$f" 2>/dev/null || true
done

echo "== perf record -g -e cpu-clock, ${secs}s"
r0=$(requests)
perf record -q -g -e cpu-clock -F 999 -p "$pid" -o "$out/perf.data" -- sleep "$secs" 2>/dev/null
r1=$(requests)
echo "requests in window: $((r1 - r0))"
perf report -i "$out/perf.data" --no-children --stdio -g none --percent-limit 0.7 \
    --sort dso,symbol 2>/dev/null | grep '%' | grep -v '^#' | sed 's/  */ /g' | head -40 |
    tee "$out/perf-top.txt"
echo "-- by DSO"
perf report -i "$out/perf.data" --no-children --stdio -g none --sort dso 2>/dev/null |
    grep '%' | grep -v '^#' | sed 's/  */ /g' | head -8 | tee "$out/perf-dso.txt"

echo "== strace -c -f, ${secs}s"
r0=$(requests)
timeout -s INT "$secs" strace -c -f -q -p "$pid" -o "$out/strace.txt" || true
r1=$(requests)
n=$((r1 - r0))
echo "requests in window: $n (strace slows the proxy; the ratios still hold)"
awk -v n="$n" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ {printf "%-16s %8.2f per request\n", $NF, $4 / n}
    /total/ {printf "%-16s %8.2f per request\n", "TOTAL", $4 / n}' "$out/strace.txt" |
    sort -k2 -nr | head -12

echo "== context switches and CPU, ${secs}s"
# Every thread's switches: /proc/PID/status alone counts only the main thread's.
tsw() { cat /proc/"$pid"/task/*/status | awk -v f="$1:" '$1 == f {s += $2} END {print s}'; }
t0=$(cpu_ticks); r0=$(requests)
tv0=$(tsw voluntary_ctxt_switches); ti0=$(tsw nonvoluntary_ctxt_switches)
sleep "$secs"
r1=$(requests); t1=$(cpu_ticks)
tv1=$(tsw voluntary_ctxt_switches); ti1=$(tsw nonvoluntary_ctxt_switches)
n=$((r1 - r0))
hz=$(getconf CLK_TCK)
echo "requests in window: $n"
echo "CPU-ms per 1,000 requests: $(per "$(( (t1 - t0) * 1000 * 1000 / hz ))" "$n")"
echo "voluntary context switches per request (all threads): $(per $((tv1 - tv0)) "$n")"
echo "involuntary context switches per request (all threads): $(per $((ti1 - ti0)) "$n")"

echo "== malloc calls (uprobes on libc; they slow the proxy, the ratio holds), ${secs}s"
r0=$(requests)
perf stat -x, -e probe_libc:malloc,probe_libc:calloc,probe_libc:realloc,probe_libc:free \
    -p "$pid" -o "$out/mallocs.csv" -- sleep "$secs" 2>/dev/null
r1=$(requests)
n=$((r1 - r0))
allocs=$(awk -F, '/probe_libc:(malloc|calloc|realloc)/ {s += $1} END {print s}' "$out/mallocs.csv")
frees=$(awk -F, '/probe_libc:free/ {s += $1} END {print s}' "$out/mallocs.csv")
echo "requests in window: $n"
echo "malloc+calloc+realloc calls per request: $(per "$allocs" "$n"); free: $(per "$frees" "$n")"
echo "threads: $(ls /proc/"$pid"/task | wc -l), VmRSS: $(field VmRSS) kB"
echo "output in $out"
