#!/usr/bin/env bash
# Installs the Debian packages cxl-bmc builds and tests with, only those missing.
# Safe to run again: with everything present it changes nothing and needs no network.
set -euo pipefail

packages=(
    libbpf-dev libxdp-dev libelf-dev zlib1g-dev libnuma-dev libdaxctl-dev
    memcached iproute2 ethtool bpftool xdp-tools pkg-config curl
    # memccapable: memcached protocol conformance, with and without cxl-bmc attached
    libmemcached-tools
    # kernel-scripts/build-memcached.sh: Debian's memcached source rebuilt with symbols
    gcc make libc6-dev dpkg-dev libevent-dev libsasl2-dev libssl-dev python3
)

is_installed() {
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
}

missing=()
for p in "${packages[@]}"; do
    is_installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install-deps: all ${#packages[@]} packages present"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing ${missing[*]}; run as root to install" >&2
    exit 1
fi

# Debian's memcached package starts a system memcached on 127.0.0.1:11211. Our tests run their own
# in network namespaces, so one started by this install is stopped again; one already running is left.
memcached_was_installed=false
is_installed memcached && memcached_was_installed=true
memcached_pids_before=" $(pgrep -x memcached | tr '\n' ' ' || true) "

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

if ! $memcached_was_installed; then
    if [ "$(ps -p 1 -o comm= 2>/dev/null)" = systemd ] && systemctl is-active -q memcached 2>/dev/null; then
        echo "install-deps: stopping the memcached service the install started"
        systemctl stop memcached
    fi
    for pid in $(pgrep -x memcached || true); do
        case "$memcached_pids_before" in
            *" $pid "*) ;;
            *)  echo "install-deps: stopping memcached pid $pid started by the install"
                kill "$pid" 2>/dev/null || true ;;
        esac
    done
fi

for p in "${packages[@]}"; do
    is_installed "$p" || { echo "install-deps: $p still missing" >&2; exit 1; }
done
echo "install-deps: done"
