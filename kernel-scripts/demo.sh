#!/usr/bin/env bash
# `make demo`: L1 in front of Debian's memcached in a two-namespace test bed, the user's flow
# step by step: attach, pin and tc-attach the egress filter by hand, load, stats, a write, detach;
# then uprobes on memcached and L3 in an emulated CXL pool: memcached killed and restarted, its
# items promoted back from the pool.
# Everything it creates is removed at the end (or on Ctrl-C). Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../.build/debug}
cxlbmc=$bin/cxl-bmc
mcload=$bin/mc-load
name=demo$$
attach_pid=

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
    [ -n "$attach_pid" ] && kill -TERM "$attach_pid" 2>/dev/null && wait "$attach_pid" 2>/dev/null
    bash "$here/testbed.sh" down "$name" >/dev/null 2>&1 || true
    [ -n "${log:-}" ] && rm -f "$log"
    [ -n "${pool:-}" ] && rm -f "$pool"
}
trap cleanup EXIT INT TERM

[ "$(id -u)" = 0 ] || { echo "demo: run as root (BPF, network namespaces)" >&2; exit 1; }

step "A server and a client namespace joined by veth"
eval "$(bash "$here/testbed.sh" up "$name")"
echo "server $SERVER_IP4 ($SERVER_IF in $SERVER_NS), client $CLIENT_IP4 ($CLIENT_NS)"
srv() { nsenter --net="/run/netns/$SERVER_NS" "$@"; }
cli() { nsenter --net="/run/netns/$CLIENT_NS" "$@"; }

step "Vanilla memcached, unchanged: memcached -U 11211 -p 11211"
eval "$(bash "$here/testbed.sh" memcached "$name" -t 1)"
echo "memcached pid $MEMCACHED_PID"

step "cxl-bmc attach $SERVER_IF"
# nsenter execs cxl-bmc, so $! is cxl-bmc itself (a shell function here would be a subshell).
log=$(mktemp)
nsenter --net="/run/netns/$SERVER_NS" "$cxlbmc" attach "$SERVER_IF" > "$log" 2>&1 &
attach_pid=$!
for _ in $(seq 100); do grep -q "object-pinned" "$log" 2>/dev/null && break; sleep 0.1; done
cat "$log"

step "Attaching the pinned egress filter by hand, as printed"
srv tc qdisc add dev "$SERVER_IF" clsact
srv tc filter add dev "$SERVER_IF" egress bpf da object-pinned "/sys/fs/bpf/cxl-bmc/$SERVER_IF/tc_egress"
srv tc filter show dev "$SERVER_IF" egress
srv "$cxlbmc" status

step "1000 keys written over TCP (L1 learns their TTLs), then UDP GETs, Zipf 0.99"
cli "$mcload" populate --server "$SERVER_IP4" --keys 1000 --value-size 64
for round in 1 2 3; do
    cli "$mcload" load --server "$SERVER_IP4" --keys 1000 --value-size 64 --duration 2 --inflight 16 --validate | sed -n 2,3p
    srv "$cxlbmc" stats "$SERVER_IF" | grep -E "UDP GETs|L1 hits|misses|fills  " | sed "s/^/   round $round: /"
done

step "A write is never followed by the old value"
cli "$mcload" get --udp --server "$SERVER_IP4" k7
cli "$mcload" raw --server "$SERVER_IP4" 'set k7 0 0 9\r\nnew value\r\n'
cli "$mcload" get --udp --server "$SERVER_IP4" k7

step "Counters (cxl-bmc stats)"
srv "$cxlbmc" stats "$SERVER_IF"

step "Detach (SIGTERM): XDP removed, pins removed, memcached untouched"
kill -TERM "$attach_pid"; wait "$attach_pid" || true; attach_pid=
srv ip -d link show "$SERVER_IF" | grep -q "prog/xdp" && echo "XDP still attached!" || echo "no XDP program on $SERVER_IF"
[ -d "/sys/fs/bpf/cxl-bmc/$SERVER_IF" ] && echo "pins left!" || echo "no pins left"
kill -0 "$MEMCACHED_PID" && echo "memcached $MEMCACHED_PID still running"

step "An emulated CXL pool (a shared file in /dev/shm): cxl-bmc pool create"
pool=/dev/shm/cxl-bmc-$name.pool
"$cxlbmc" pool create "$pool" --size 64M

step "cxl-bmc attach $SERVER_IF --memcached /usr/bin/memcached --pool $pool: uprobes invalidate L1, L3 keeps every write"
nsenter --net="/run/netns/$SERVER_NS" "$cxlbmc" attach "$SERVER_IF" --tc-attach --memcached /usr/bin/memcached \
    --pool "$pool" --memcached-addr "$SERVER_IP4:11211" > "$log" 2>&1 &
attach_pid=$!
for _ in $(seq 100); do grep -q "^L3:" "$log" 2>/dev/null && break; sleep 0.1; done
cat "$log"
cli "$mcload" raw --server "$SERVER_IP4" 'set profile:42 7 600 17\r\n{"name":"Ada L."}\r\n'
cli "$mcload" raw --server "$SERVER_IP4" 'set session:9 0 600 5\r\nhello\r\n'
sleep 0.5

step "memcached dies (kill -9) and a new, empty one starts: the probes arm in it by themselves"
kill -9 "$MEMCACHED_PID"
sleep 0.3
eval "$(bash "$here/testbed.sh" memcached "$name" -t 1)"
echo "new memcached pid $MEMCACHED_PID"
sleep 0.5

step "First GET misses in memcached; L3 answers and promotes (ms ... ME: add, never over a newer write)"
cli "$mcload" get --server "$SERVER_IP4" profile:42 session:9 || true
sleep 0.5
echo "again:"
cli "$mcload" get --server "$SERVER_IP4" profile:42 session:9
echo "and over UDP (L1):"
cli "$mcload" get --udp --server "$SERVER_IP4" profile:42

step "Detach: L1 first, then the uprobes; L3's counters; the pool keeps the items"
kill -TERM "$attach_pid"; wait "$attach_pid" || true; attach_pid=
tail -4 "$log"
kill -0 "$MEMCACHED_PID" && echo "memcached $MEMCACHED_PID still running"
"$cxlbmc" pool inspect "$pool"
