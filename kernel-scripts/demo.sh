#!/usr/bin/env bash
# `make demo`: L1 in front of Debian's memcached in a two-namespace test bed, the user's flow
# step by step: attach, pin and tc-attach the egress filter by hand, load, stats, a write, detach;
# then two hosts, each with Debian's memcached and cxl-bmc (L1 + uprobes + L3 over the cluster) and
# one emulated CXL pool both map: a Zipf load with a live stats table, one memcached killed, its
# keys re-sharded to the other host and served from L3.
# Everything it creates is removed at the end (or on Ctrl-C). Needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$here/../.build/debug}
cxlbmc=$bin/cxl-bmc
mcload=$bin/mc-load
name=demo$$
attach_pid=
pids=()

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
cleanup() {
    [ -n "$attach_pid" ] && kill -TERM "$attach_pid" 2>/dev/null && wait "$attach_pid" 2>/dev/null
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
    for bed in "$name" "${name}a" "${name}b"; do bash "$here/testbed.sh" down "$bed" >/dev/null 2>&1 || true; done
    [ -n "${conf:-}" ] && rm -rf "$conf"
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

step "Two hosts A and B (each with its own client namespace), joined by a link; one CXL pool both map"
bash "$here/testbed.sh" down "$name" >/dev/null
eval "$(bash "$here/testbed.sh" up "${name}a" | sed 's/^/A_/')"
eval "$(bash "$here/testbed.sh" up "${name}b" | sed 's/^/B_/')"
eval "$(bash "$here/testbed.sh" link "${name}a" "${name}b")"
conf=$(mktemp -d)
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$conf/peer.key"
chmod 600 "$conf/peer.key"
for id in 0 1; do
    printf '%s\n' "local_node_id=$id" "num_nodes=2" \
        "node0=$LINK_IP4:11311:0x0:0x4000000" "node1=$LINK_PEER_IP4:11311:0x4000000:0x4000000" \
        "psk_file=peer.key" > "$conf/node$id.conf"
done
cat "$conf/node0.conf"
pool=/dev/shm/cxl-bmc-$name.pool
"$cxlbmc" pool create "$pool" --size 128M --config "$conf/node0.conf"
A() { nsenter --net="/run/netns/${name}a-$1" "${@:2}"; }
B() { nsenter --net="/run/netns/${name}b-$1" "${@:2}"; }

step "memcached -U 11211 on each host; cxl-bmc attach IFACE --memcached /usr/bin/memcached --pool POOL --config nodeN.conf on each"
eval "$(bash "$here/testbed.sh" memcached "${name}a" -t 1 | sed 's/^/A_/')"
eval "$(bash "$here/testbed.sh" memcached "${name}b" -t 1 | sed 's/^/B_/')"
nsenter --net="/run/netns/${name}a-srv" "$cxlbmc" attach "$A_SERVER_IF" --tc-attach --memcached /usr/bin/memcached \
    --pool "$pool" --config "$conf/node0.conf" --memcached-addr "$A_SERVER_IP4:11211" > "$conf/A.log" 2>&1 &
pids+=($!)
nsenter --net="/run/netns/${name}b-srv" "$cxlbmc" attach "$B_SERVER_IF" --tc-attach --memcached /usr/bin/memcached \
    --pool "$pool" --config "$conf/node1.conf" --memcached-addr "$B_SERVER_IP4:11211" > "$conf/B.log" 2>&1 &
pids+=($!)
for host in A B; do
    for _ in $(seq 200); do grep -q "peers served on" "$conf/$host.log" 2>/dev/null && break; sleep 0.1; done
    echo "host $host: $(grep '^L3:' "$conf/$host.log")"
done
sleep 1
B srv "$cxlbmc" cluster status --config "$conf/node1.conf"

step "Clients write 3000 keys per host over TCP (memcached's store events write them through to each key's home partition)"
A cli "$mcload" populate --server "$A_SERVER_IP4" --keys 3000 --prefix a: --value-size 100 | tail -1
B cli "$mcload" populate --server "$B_SERVER_IP4" --keys 3000 --prefix b: --value-size 100 | tail -1

# One row per host, from `cxl-bmc stats IFACE --json`.
table() {
    CXLBMC=$cxlbmc python3 - "$@" <<'PY'
import json, os, subprocess, sys
rows = [("host", "UDP GETs", "L1 hits", "mc stores", "mc misses", "L3 local", "L3 direct", "L3 remote", "promoted")]
args = sys.argv[1:]
for host, ns, iface in zip(args[0::3], args[1::3], args[2::3]):
    out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", os.environ["CXLBMC"], "stats", iface, "--json"],
                         capture_output=True, text=True).stdout
    try:
        s = json.loads(out)[iface]
    except Exception:
        rows.append((host,) + ("-",) * 8)
        continue
    e, l3, c = s.get("events", {}), s.get("l3", {}), s.get("cluster", {})
    rows.append((host, s.get("get_seen", 0), s.get("hit", 0), e.get("store", 0), e.get("miss", 0),
                 c.get("local_hits", 0), c.get("direct_hits", 0), c.get("remote_hits", 0), l3.get("promoted", 0)))
for r in rows:
    print("  ".join(str(x).rjust(10) for x in r))
PY
}
tables() { table A "${name}a-srv" "$A_SERVER_IF" B "${name}b-srv" "$B_SERVER_IF"; }
# A table refreshed in place every second for $1 seconds (on a terminal; a new block per 3 s otherwise).
live() {
    local first=1 i
    for i in $(seq "$1"); do
        sleep 1
        if [ -t 1 ]; then
            [ $first = 1 ] || printf '\033[3A'
            first=0
            tables
        elif [ $((i % 3)) = 0 ]; then
            tables; echo
        fi
    done
}
ratio() {
    python3 -c "import json,sys; r=json.loads(open(sys.argv[1]).read().splitlines()[-1]); t=r['hits']+r['misses']; print(f\"{100*r['hits']/max(1,t):.1f}% hits ({r['hits']}/{t}), {r.get('validationErrors', r.get('validation_errors', 0))} wrong values\")" "$1"
}

step "A Zipf (0.99) UDP GET load on both hosts; live counters, refreshed every second"
A cli "$mcload" load --server "$A_SERVER_IP4" --keys 3000 --prefix a: --value-size 100 --duration 8 --validate --json > "$conf/loadA" &
loadA=$!
B cli "$mcload" load --server "$B_SERVER_IP4" --keys 3000 --prefix b: --value-size 100 --duration 8 --validate --json > "$conf/loadB" &
loadB=$!
live 9
wait "$loadA" "$loadB"
echo "host A's clients: $(ratio "$conf/loadA")"
echo "host B's clients: $(ratio "$conf/loadB")"

step "Host A's memcached dies (kill -9); its clients re-shard its keys to host B"
kill -9 "$A_MEMCACHED_PID"
echo "killed memcached $A_MEMCACHED_PID on host A"
echo "pass 1 over A's 3000 keys at B, uniform: B's memcached never had them; each miss is looked up in L3 and promoted"
B cli "$mcload" load --server "$B_SERVER_IP4" --keys 3000 --prefix a: --value-size 100 --zipf 0 --max-requests 9000 --duration 30 --validate --json > "$conf/pass1" &
pass1=$!
live 4
wait "$pass1"
echo "pass 1: $(ratio "$conf/pass1")"
sleep 1
B cli "$mcload" load --server "$B_SERVER_IP4" --keys 3000 --prefix a: --value-size 100 --zipf 0 --max-requests 9000 --duration 30 --validate --json > "$conf/pass2"
echo "pass 2: $(ratio "$conf/pass2")   (vanilla memcached after a host failure: cold, 0 %)"
tables

step "Detach both (SIGTERM): L1, the uprobes, the peer port; memcached on B untouched; the pool keeps every item"
for pid in "${pids[@]}"; do kill -TERM "$pid"; done
for pid in "${pids[@]}"; do wait "$pid" || true; done
pids=()
grep -h "^cluster:" "$conf/A.log" "$conf/B.log" | sed 's/^/  /'
kill -0 "$B_MEMCACHED_PID" && echo "memcached $B_MEMCACHED_PID on host B still running"
"$cxlbmc" pool check "$pool"

step "Summary"
echo "  L1 answered UDP GETs in the kernel; the uprobes kept it exact and wrote every store through to L3."
echo "  Host A's keys outlived its memcached: at host B, pass 1 $(ratio "$conf/pass1" | cut -d' ' -f1-2), pass 2 $(ratio "$conf/pass2" | cut -d' ' -f1-2)."
echo "  Everything this demo created is removed on exit."
