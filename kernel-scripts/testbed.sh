#!/usr/bin/env bash
# A two-host test network: namespaces NAME-srv and NAME-cli joined by a veth pair.
#
#   testbed.sh up NAME              create it; prints SERVER_IP4=… lines (shell-evaluable)
#   testbed.sh down NAME            remove everything `up` and `memcached` created; safe to repeat
#   testbed.sh memcached NAME [ARG…] start /usr/bin/memcached in NAME-srv on both addresses,
#                                   UDP and TCP port 11211 unless ARGs override; prints MEMCACHED_PID=…
#   testbed.sh link NAME OTHER      join NAME-srv and OTHER-srv (two test beds: two hosts) by a veth
#                                   pair; prints LINK_IP4=… (NAME's end) and LINK_PEER_IP4=… (OTHER's)
#   testbed.sh lan NAME MEMBER…     a hosts' network for more than two hosts: a bridge in namespace
#                                   NAME-lan, one veth from it to each MEMBER-srv (NAME may be a
#                                   member); prints LAN_IP4_<MEMBER>=10.215.N.<i> (i = 1, 2, … in
#                                   order); `down NAME` removes it
#
# Environment: TESTBED_SUBNET=N picks 10.213.N.0/24 and fd00:213:N::/64 (N in 1..254); by default
# N is derived from NAME. Commands run inside with `nsenter --net=/run/netns/NAME-cli …`, which,
# unlike `ip netns exec`, keeps the host's /sys/fs/bpf visible.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)

STATE_ROOT=/run/cxl-bmc-testbed

die() { echo "testbed: $*" >&2; exit 1; }

usage() {
    sed -n '2,14s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

# Sets the per-testbed names; interface names must fit in IFNAMSIZ-1 = 15 characters.
setup_names() {
    NAME=$1
    [[ $NAME =~ ^[A-Za-z0-9_-]{1,13}$ ]] || die "NAME must be 1-13 characters of [A-Za-z0-9_-]: '$NAME'"
    SERVER_NS=$NAME-srv
    CLIENT_NS=$NAME-cli
    SERVER_IF=$NAME-s
    CLIENT_IF=$NAME-c
    STATE=$STATE_ROOT/$NAME

    local n
    if [ -n "${TESTBED_SUBNET:-}" ]; then
        n=$TESTBED_SUBNET
        [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 254 ] || die "TESTBED_SUBNET must be 1..254"
    else
        n=$(( $(printf '%s' "$NAME" | cksum | cut -d' ' -f1) % 254 + 1 ))
    fi
    SUBNET=$n
    SERVER_IP4=10.213.$n.1
    CLIENT_IP4=10.213.$n.2
    SERVER_IP6=fd00:213:$n::1
    CLIENT_IP6=fd00:213:$n::2
}

in_ns() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }

print_env() {
    cat <<EOF
SERVER_NS=$SERVER_NS
CLIENT_NS=$CLIENT_NS
SERVER_IF=$SERVER_IF
CLIENT_IF=$CLIENT_IF
SERVER_IP4=$SERVER_IP4
CLIENT_IP4=$CLIENT_IP4
SERVER_IP6=$SERVER_IP6
CLIENT_IP6=$CLIENT_IP6
EOF
}

cmd_up() {
    [ -e "$STATE" ] && die "$NAME is already up (run: $0 down $NAME)"
    for ns in "$SERVER_NS" "$CLIENT_NS"; do
        [ -e "/run/netns/$ns" ] && die "namespace $ns exists but was not made by this script"
    done
    mkdir -p "$STATE"
    # Any failure from here on (set -e, or die) exits: undo what was made.
    trap 'echo "testbed: up failed, cleaning up" >&2; cmd_down' EXIT

    ip netns add "$SERVER_NS"
    ip netns add "$CLIENT_NS"
    ip link add "$SERVER_IF" netns "$SERVER_NS" type veth peer name "$CLIENT_IF" netns "$CLIENT_NS"

    ip -n "$SERVER_NS" addr add "$SERVER_IP4/24" dev "$SERVER_IF"
    ip -n "$CLIENT_NS" addr add "$CLIENT_IP4/24" dev "$CLIENT_IF"
    ip -n "$SERVER_NS" -6 addr add "$SERVER_IP6/64" dev "$SERVER_IF" nodad
    ip -n "$CLIENT_NS" -6 addr add "$CLIENT_IP6/64" dev "$CLIENT_IF" nodad
    for pair in "$SERVER_NS:$SERVER_IF" "$CLIENT_NS:$CLIENT_IF"; do
        ip -n "${pair%%:*}" link set lo up
        ip -n "${pair%%:*}" link set "${pair#*:}" up
    done

    # veth delivers XDP_TX frames only to a peer in NAPI mode, as a real NIC's peer always is.
    # GRO alone did not get the client side there on kernel 6.18 (XDP_TX replies were counted
    # and silently lost); a no-op XDP program on it does. Checksum offload off makes the client
    # send complete checksums, so the server's XDP program sees what a real wire would carry.
    in_ns "$CLIENT_NS" ethtool -K "$CLIENT_IF" gro on tx off >/dev/null
    in_ns "$CLIENT_NS" ethtool -k "$CLIENT_IF" | grep -qx 'generic-receive-offload: on' \
        || die "could not enable GRO on $CLIENT_IF"
    local helpers
    helpers=$("$HERE/build-helper-bpf.sh") || die "could not build the test bed's helper XDP programs"
    ip -n "$CLIENT_NS" link set dev "$CLIENT_IF" xdpdrv obj "$helpers/xdp_pass.o" sec xdp \
        || die "could not attach the no-op XDP program to $CLIENT_IF"

    trap - EXIT
    print_env | tee "$STATE/env"
}

# Kills a memcached we started, by the pid in its pidfile, after checking it is still that
# memcached in our server namespace (the pid may have been reused).
kill_memcached() {
    local pidfile=$1 pid ns_want ns_have
    pid=$(cat "$pidfile" 2>/dev/null) || return 0
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = memcached ] && [ -e "/run/netns/$SERVER_NS" ]; then
        ns_want=$(stat -L -c %i "/run/netns/$SERVER_NS")
        ns_have=$(stat -L -c %i "/proc/$pid/ns/net" 2>/dev/null || true)
        if [ "$ns_want" = "$ns_have" ]; then
            # SIGKILL: memcached takes ~2 s to act on SIGTERM, and a test memcached has nothing to save.
            kill -9 "$pid" 2>/dev/null || true
            # Done once gone or a zombie: a daemon's reaper is init, which may take its time.
            for _ in $(seq 100); do
                [ "$(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null || echo Z)" = Z ] && break
                sleep 0.02
            done
        fi
    fi
    rm -f "$pidfile"
}

cmd_down() {
    [ -d "$STATE" ] || return 0
    for pidfile in "$STATE"/memcached.*.pid; do
        [ -e "$pidfile" ] && kill_memcached "$pidfile"
    done
    # Deleting a namespace deletes the veth end inside it, and with it the peer.
    for ns in "$SERVER_NS" "$CLIENT_NS" "$NAME-lan"; do
        [ -e "/run/netns/$ns" ] && ip netns del "$ns"
    done
    rm -rf "$STATE"
}

cmd_memcached() {
    [ -f "$STATE/env" ] || die "$NAME is not up"
    local pidfile pid
    pidfile=$(mktemp "$STATE/memcached.XXXXXX.pid")
    rm -f "$pidfile"    # memcached writes it once it has daemonized
    in_ns "$SERVER_NS" /usr/bin/memcached -d -u root -P "$pidfile" \
        -U 11211 -p 11211 -l "$SERVER_IP4,[$SERVER_IP6]" "$@"

    for _ in $(seq 100); do [ -s "$pidfile" ] && break; sleep 0.05; done
    pid=$(cat "$pidfile" 2>/dev/null) || die "memcached wrote no pidfile"
    # Ready once it listens; it binds before daemonizing, but wait rather than rely on that.
    for _ in $(seq 100); do
        in_ns "$SERVER_NS" ss -Hltnp 2>/dev/null | grep -q "pid=$pid," && break
        sleep 0.05
    done
    in_ns "$SERVER_NS" ss -Hltnp | grep -q "pid=$pid," || die "memcached pid $pid is not listening"
    echo "MEMCACHED_PID=$pid"
}

# The hosts' own network (peers talk over it): 10.214.N.0/24, N being NAME's subnet number.
# Deleting either namespace (`down`) deletes the pair.
cmd_link() {
    [ -f "$STATE/env" ] || die "$NAME is not up"
    local other=$1 other_ns=$1-srv
    [ -f "$STATE_ROOT/$other/env" ] || die "$other is not up"
    ip link add "$NAME-p" netns "$SERVER_NS" type veth peer name "$other-p" netns "$other_ns"
    ip -n "$SERVER_NS" addr add "10.214.$SUBNET.1/24" dev "$NAME-p"
    ip -n "$other_ns" addr add "10.214.$SUBNET.2/24" dev "$other-p"
    ip -n "$SERVER_NS" link set "$NAME-p" up
    ip -n "$other_ns" link set "$other-p" up
    echo "LINK_IP4=10.214.$SUBNET.1"
    echo "LINK_PEER_IP4=10.214.$SUBNET.2"
}

# Several hosts on one L2 segment: a bridge in its own namespace (NAME-lan), each member's
# server namespace joined to it by a veth pair named lan0 on the host's side.
cmd_lan() {
    [ -f "$STATE/env" ] || die "$NAME is not up"
    [ $# -ge 1 ] && [ $# -le 250 ] || die "lan needs 1 to 250 members"
    local lan_ns=$NAME-lan member i=0
    for member in "$@"; do
        [ -f "$STATE_ROOT/$member/env" ] || die "$member is not up"
    done
    [ -e "/run/netns/$lan_ns" ] && die "$NAME already has a lan"
    ip netns add "$lan_ns"
    ip -n "$lan_ns" link add br0 type bridge
    ip -n "$lan_ns" link set br0 up
    for member in "$@"; do
        i=$((i + 1))
        ip link add "$member-l" netns "$lan_ns" type veth peer name lan0 netns "$member-srv"
        ip -n "$lan_ns" link set "$member-l" master br0 up
        ip -n "$member-srv" addr add "10.215.$SUBNET.$i/24" dev lan0
        ip -n "$member-srv" link set lan0 up
        echo "LAN_IP4_$member=10.215.$SUBNET.$i"
    done
}

[ $# -ge 2 ] || usage
cmd=$1
setup_names "$2"
shift 2
case $cmd in
    up)        [ $# -eq 0 ] || usage; cmd_up ;;
    down)      [ $# -eq 0 ] || usage; cmd_down ;;
    memcached) cmd_memcached "$@" ;;
    link)      [ $# -eq 1 ] || usage; cmd_link "$1" ;;
    lan)       cmd_lan "$@" ;;
    *)         usage ;;
esac
