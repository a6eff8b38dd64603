#!/usr/bin/env bash
# Soak: cxl-bmc fully attached (L1 + uprobes + L3 in an emulated CXL pool) in front of Debian's
# memcached in a netns testbed, under `mc-load mixed` (gets, multi-gets, sets, TTLs, deletes,
# touches, incrs, flush_all) with its stale checker, for SOAK_SECONDS (default 600).
#
#   soak.sh BUILD_DIR            (BUILD_DIR holds cxl-bmc and mc-load; run as root)
#
# Every SOAK_SAMPLE seconds (default 15) it samples the daemon's RSS (its own: the pool's shared pages excluded) and the entry count of every
# BPF map the daemon holds (hash maps counted with bpftool; arrays and ring buffers are fixed-size).
# Pass: 0 stale, 0 expired served, 0 corrupt, 0 ring-buffer events lost, 0 L3 failures, pool check
# clean after the stop, daemon RSS flat (the peak after warm-up at most the warm-up sample +
# max(16 MiB, 25 %)), every hash map's peak in the second half at most 1.5 x its first-half peak +
# 256 entries, and no non-LRU hash map full. The last line of stdout is a JSON summary.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BUILD=${1:?usage: soak.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd)
SECONDS_TOTAL=${SOAK_SECONDS:-600}
SAMPLE=${SOAK_SAMPLE:-15}
CXLBMC=$BUILD/cxl-bmc
MCLOAD=$BUILD/mc-load
[ "$(id -u)" -eq 0 ] || { echo "soak: needs root" >&2; exit 1; }
for tool in "$CXLBMC" "$MCLOAD"; do [ -x "$tool" ] || { echo "soak: $tool missing; build first" >&2; exit 1; }; done
command -v bpftool >/dev/null && command -v jq >/dev/null || { echo "soak: needs bpftool and jq (make deps)" >&2; exit 1; }

NAME=soak$$
POOL=/dev/shm/cxl-bmc-soak-$$
WORK=$(mktemp -d /tmp/cxl-bmc-soak.XXXXXX)
DAEMON=

cleanup() {
    if [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; then
        kill -TERM "$DAEMON" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DAEMON" 2>/dev/null || true
    fi
    bash "$HERE/testbed.sh" down "$NAME" >/dev/null 2>&1 || true
    rm -f "$POOL"
    rm -rf "$WORK"
}
trap cleanup EXIT

eval "$(bash "$HERE/testbed.sh" up "$NAME")"
bash "$HERE/testbed.sh" memcached "$NAME" -t 2 -m 64 >/dev/null
"$CXLBMC" pool create "$POOL" --size 256M >/dev/null

# SOAK_L3=pool (default): L3 in the pool; memory: --no-cxl; none: L1 and the uprobes only.
case ${SOAK_L3:-pool} in
    pool)   l3_args=(--pool "$POOL" --memcached-addr "$SERVER_IP4:11211"); ready='^L3:' ;;
    memory) l3_args=(--no-cxl --memcached-addr "$SERVER_IP4:11211"); ready='^L3:' ;;
    none)   l3_args=(); ready='^uprobes:' ;;
    *) echo "soak: SOAK_L3 must be pool, memory or none" >&2; exit 1 ;;
esac
nsenter --net="/run/netns/$SERVER_NS" "$CXLBMC" attach "$SERVER_IF" --tc-attach \
    --memcached /usr/bin/memcached "${l3_args[@]}" >"$WORK/daemon.log" 2>&1 &
DAEMON=$!   # nsenter execs cxl-bmc: this is the daemon's pid
for _ in $(seq 300); do grep -q "$ready" "$WORK/daemon.log" && break; kill -0 "$DAEMON" || break; sleep 0.1; done
grep -q "$ready" "$WORK/daemon.log" || { cat "$WORK/daemon.log" >&2; echo "soak: attach failed" >&2; exit 1; }

stats_json() { "$CXLBMC" stats "$SERVER_IF" --json | jq -c ".\"$SERVER_IF\""; }
# The daemon's own memory: RSS less the pool's shared pages it has touched (RssShmem), which
# grow with the item log up to the pool's size and belong to the pool, not to the process.
rss_kib() { awk '/^RssAnon:|^RssFile:/ {own += $2} /^RssShmem:/ {shm = $2} END {print own, shm}' "/proc/$DAEMON/status"; }

# One line per map: id type name max_entries count (count = -1 when not countable).
sample_maps() {
    local ids id info type name max count
    ids=$(for fd in /proc/"$DAEMON"/fdinfo/*; do awk '/^map_id:/ {print $2}' "$fd" 2>/dev/null; done | sort -un)
    for id in $ids; do
        info=$(bpftool -j map show id "$id" 2>/dev/null) || continue
        type=$(jq -r .type <<<"$info"); name=$(jq -r '.name // "?"' <<<"$info"); max=$(jq -r .max_entries <<<"$info")
        case $type in
            hash|lru_hash|percpu_hash|lru_percpu_hash) count=$(bpftool -j map dump id "$id" 2>/dev/null | jq length) ;;
            *) count=-1 ;;
        esac
        echo "$id $type $name $max $count"
    done
}

before=$(stats_json)
nsenter --net="/run/netns/$CLIENT_NS" "$MCLOAD" mixed --server "$SERVER_IP4" --duration "$SECONDS_TOTAL" \
    --keys 512 --counters 8 --readers 2 --multiget-max 8 --flush-every 30 --ttl-share 0.2 \
    --write-interval-us 100 ${SOAK_MIXED_ARGS:-} --json >"$WORK/mixed.out" 2>&1 &
LOAD=$!

start=$(date +%s)
: >"$WORK/samples"
while kill -0 "$LOAD" 2>/dev/null; do
    t=$(( $(date +%s) - start ))
    echo "T $t $(rss_kib)" >>"$WORK/samples"
    sample_maps | sed "s/^/M $t /" >>"$WORK/samples"
    for _ in $(seq "$SAMPLE"); do kill -0 "$LOAD" 2>/dev/null || break; sleep 1; done
done
load_status=0
wait "$LOAD" || load_status=$?
after=$(stats_json)

kill -TERM "$DAEMON"
daemon_status=0
wait "$DAEMON" || daemon_status=$?
DAEMON=
check_status=0
"$CXLBMC" pool check "$POOL" >"$WORK/check.out" 2>&1 || check_status=$?

mixed=$(tail -n 1 "$WORK/mixed.out")
jq -e . >/dev/null 2>&1 <<<"$mixed" || { cat "$WORK/mixed.out" >&2; mixed='{}'; }

# RSS: warm-up sample at 60 s (or a sixth of the run), then the peak after it.
warm_at=$(( SECONDS_TOTAL / 6 < 60 ? SECONDS_TOTAL / 6 : 60 ))
read -r rss_first rss_warm rss_peak rss_last < <(awk -v w="$warm_at" '
    $1 == "T" && $3 != "" { if (first == "") first = $3; if ($2 >= w && warm == "") warm = $3
                            if (warm != "" && $3 > peak) peak = $3; last = $3 }
    END { if (warm == "") warm = last; if (peak == "") peak = last; print first, warm, peak, last }' "$WORK/samples")
rss_bound=$(( rss_warm + (rss_warm / 4 > 16384 ? rss_warm / 4 : 16384) ))

half=$(( SECONDS_TOTAL / 2 ))
maps_report=$(awk -v h="$half" '
    $1 == "M" && $7 >= 0 { key = $5 "(" $4 ")"; max[key] = $6; type[key] = $4
        if ($2 < h) { if ($7 > p1[key]) p1[key] = $7 } else { if ($7 > p2[key]) p2[key] = $7 }
        if ($7 > peak[key]) peak[key] = $7 }
    END { ok = 1
        for (k in peak) { lim = 1.5 * p1[k] + 256
            full = (peak[k] >= max[k] && type[k] !~ /lru/)
            grow = (p2[k] > lim)
            if (full || grow) ok = 0
            printf "%s peak %d of %d (first half %d, second half %d)%s\n", k, peak[k], max[k], p1[k], p2[k], (full ? " FULL" : grow ? " GROWING" : "") }
        print (ok ? "MAPS_OK" : "MAPS_BAD") }' "$WORK/samples")

num() { jq -r "$1 // 0" <<<"$2"; }
lost=$(( $(num '.events.lost' "$after") ))
l3_failures=$(num '.l3.failures' "$after")
promoted=$(num '.l3.promoted' "$after")
gets=$(( $(num .get_seen "$after") - $(num .get_seen "$before") ))
hits=$(( $(num .hit "$after") - $(num .hit "$before") ))
stale=$(num .stale "$mixed"); expired=$(num .expired "$mixed"); corrupt=$(num .corrupt "$mixed")

pass=true
why=()
[ "$load_status" -eq 0 ] || { pass=false; why+=("mc-load mixed exited $load_status"); }
[ "$stale" -eq 0 ] && [ "$expired" -eq 0 ] && [ "$corrupt" -eq 0 ] || { pass=false; why+=("stale $stale, expired $expired, corrupt $corrupt"); }
[ "$lost" -eq 0 ] || { pass=false; why+=("$lost events lost"); }
[ "$l3_failures" -eq 0 ] || { pass=false; why+=("$l3_failures L3 failures"); }
[ "$daemon_status" -eq 0 ] || { pass=false; why+=("daemon exited $daemon_status"); }
[ "$check_status" -eq 0 ] || { pass=false; why+=("pool check exited $check_status"); }
[ "$rss_peak" -le "$rss_bound" ] || { pass=false; why+=("RSS peak $rss_peak KiB above bound $rss_bound KiB"); }
grep -q MAPS_OK <<<"$maps_report" || { pass=false; why+=("a BPF map filled or kept growing"); }

echo "soak: $SECONDS_TOTAL s of mixed load, sampled every $SAMPLE s"
tail -n +1 "$WORK/mixed.out" | grep -v '^{' | sed 's/^/  /'
echo "  L1: $gets UDP GETs seen, $hits answered by XDP"
echo "  events: $(num .events.emitted "$after") emitted, $lost lost; L3 (${SOAK_L3:-pool}): $(num .l3.stores "$after") stores, $promoted promoted, $(num .l3.resyncs "$after") resyncs, $l3_failures failures"
echo "  event kinds: $(jq -c '.events // {} | del(.emitted, .lost, .filtered, .l1_bumps)' <<<"$after")"
echo "  L3 counters: $(jq -c '.l3 // {}' <<<"$after")"
shm_last=$(awk '$1 == "T" && $4 != "" { last = $4 } END { print last + 0 }' "$WORK/samples")
echo "  daemon RSS KiB (without the pool's shared pages): first $rss_first, warm-up $rss_warm, peak after $rss_peak (bound $rss_bound), last $rss_last; pool pages touched at the end: $shm_last KiB"
grep -v '^MAPS_' <<<"$maps_report" | sed 's/^/  map /'
sed 's/^/  pool check: /' "$WORK/check.out"
$pass && echo "  PASS" || echo "  FAIL: ${why[*]}"
jq -cn --argjson mixed "$mixed" --arg pass "$pass" \
    --argjson rss_first "$rss_first" --argjson rss_warm "$rss_warm" --argjson rss_peak "$rss_peak" \
    --argjson rss_bound "$rss_bound" --argjson rss_last "$rss_last" \
    --argjson lost "$lost" --argjson gets "$gets" --argjson hits "$hits" --argjson l3_failures "$l3_failures" --argjson promoted "$promoted" --arg l3 "${SOAK_L3:-pool}" \
    --argjson check "$check_status" --argjson seconds "$SECONDS_TOTAL" \
    --arg maps "$(grep -v '^MAPS_' <<<"$maps_report")" --arg why "${why[*]:-}" \
    '{pass: ($pass == "true"), seconds: $seconds, mixed: $mixed, events_lost: $lost, l1_gets: $gets, l1_hits: $hits,
      l3: $l3, l3_promoted: $promoted, l3_failures: $l3_failures, pool_check: $check, rss_kib: {first: $rss_first, warm: $rss_warm, peak: $rss_peak,
      bound: $rss_bound, last: $rss_last}, maps: ($maps | split("\n")), why: $why}'
$pass
