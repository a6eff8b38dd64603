#!/usr/bin/env bash
# Builds Debian's memcached from its source package, unmodified and with symbols (not stripped), into a
# cache directory. The result is the reference the offset tables are derived from
# (kernel-scripts/derive-offsets.sh) and a memcached with symbols for tests.
#
#   build-memcached.sh [--deb-version VERSION] [--print-path] [--force]
#
#   --deb-version V  Debian source version to build (default 1.6.18-1+deb12u1, the one docs/uprobe-targets.md
#                    and Sources/ProbeTargets/Offsets/ describe). Must be in the archive of this release.
#   --print-path     print the binary's path on stdout (all other output goes to stderr).
#   --force          rebuild even if the cache is complete.
#
# Output: $CXL_BMC_CACHE_DIR/memcached-<VERSION>-symbols/memcached (CXL_BMC_CACHE_DIR defaults to
# /var/cache/cxl-bmc), its build tree in build/ beside it, and a stamp. With the stamp present and the
# binary's checksum equal to the stamped one, a run does nothing and needs no network.
#
# What it does, as Debian's package does it (debian/rules, debhelper 13, dpkg-buildpackage):
#   - adds a deb-src entry (/etc/apt/sources.list.d/cxl-bmc-deb-src.sources) if apt cannot find the
#     source version, then `apt-get source --download-only` and `dpkg-source -x` (applies debian/patches);
#   - installs exactly what `make memcached` needs: gcc make libc6-dev dpkg-dev pkg-config libevent-dev
#     libsasl2-dev libssl-dev (not debhelper/autoconf: dh_autoreconf is skipped; not the test suite's perl);
#   - exports `dpkg-buildflags` with debian/rules' DEB_BUILD_MAINT_OPTIONS (hardening=+all) and
#     SOURCE_DATE_EPOCH from debian/changelog, runs ./configure with dh_auto_configure's arguments plus
#     debian/rules' own (--enable-sasl --enable-tls) and builds only the `memcached` target.
# For 1.6.18-1+deb12u1 with gcc 12.2.0-14+deb12u1 the result, stripped, is byte-identical to Debian's
# /usr/bin/memcached except for the build-id note (checked 2026-11-21).
#
# Then it checks the binary: nm lists the functions the probes use, `memcached -h` runs, and a memcached
# started on a free 127.0.0.1 port answers set/get. Only then is the stamp written.
set -euo pipefail

DEFAULT_DEB_VERSION=1.6.18-1+deb12u1
deb_version=$DEFAULT_DEB_VERSION
print_path=false
force=false

die() { echo "build-memcached: error: $*" >&2; exit 1; }
log() { echo "build-memcached: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --print-path) print_path=true ;;
        --force) force=true ;;
        --deb-version) [ $# -ge 2 ] || die "--deb-version needs a value"; deb_version=$2; shift ;;
        --deb-version=*) deb_version=${1#*=} ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

case "$deb_version" in
    *[!A-Za-z0-9.+~:-]*|'') die "bad Debian version '$deb_version'" ;;
esac
upstream_version=${deb_version#*:}
upstream_version=${upstream_version%-*}

cache_root=${CXL_BMC_CACHE_DIR:-/var/cache/cxl-bmc}
out_dir=$cache_root/memcached-$deb_version-symbols
binary=$out_dir/memcached
stamp=$out_dir/stamp

# The functions the probes and the offset table use; a build without them is not the one we want.
required_symbols=(
    do_store_item limited_get item_get do_item_unlink lru_pull_tail do_add_delta item_touch
    process_command_ascii try_read_command_binary do_item_unlink_nolock do_item_link item_get_locked
    limited_get_locked
)

finish() {
    if $print_path; then echo "$binary"; else log "memcached with symbols: $binary"; fi
    exit 0
}

stamp_value() { sed -n "s/^$1=//p" "$stamp" 2>/dev/null | head -n1; }

cache_is_complete() {
    [ -f "$stamp" ] && [ -x "$binary" ] || return 1
    [ "$(stamp_value deb_version)" = "$deb_version" ] || return 1
    [ "$(stamp_value sha256)" = "$(sha256sum "$binary" | cut -d' ' -f1)" ]
}

# ---- fast path: nothing to do, no network, no root needed ----
if ! $force && cache_is_complete; then
    finish
fi

[ "$(id -u)" -eq 0 ] || die "$binary is not built yet; building it installs Debian packages and writes $cache_root: run as root"
[ -r /etc/os-release ] || die "/etc/os-release missing: this script needs Debian"
# shellcheck disable=SC1091
. /etc/os-release
[ "${ID:-}" = debian ] || die "this script needs Debian (found ID=${ID:-unknown})"
codename=${VERSION_CODENAME:-}
[ -n "$codename" ] || die "cannot tell the Debian release from /etc/os-release"
command -v apt-get >/dev/null || die "apt-get not found"
command -v flock >/dev/null || die "flock not found (package util-linux)"

mkdir -p "$out_dir"
exec 9>"$out_dir/.lock"
flock 9
# Another run may have finished the build while this one waited for the lock.
if ! $force && cache_is_complete; then
    finish
fi
rm -f "$stamp"

export DEBIAN_FRONTEND=noninteractive
apt_updated=false
apt_update() {
    $apt_updated && return 0
    log "apt-get update"
    apt-get update -q >&2 || die "apt-get update failed (network? /etc/apt/sources.list.d?)"
    apt_updated=true
}

# ---- source package index (first, so that one apt-get update serves the installs too) ----
source_available() {
    apt-cache showsrc --only-source memcached 2>/dev/null | grep -qx "Version: $deb_version"
}
src_list=/etc/apt/sources.list.d/cxl-bmc-deb-src.sources
if ! source_available; then
    # Either the deb-src index is missing or stale: add our entry if needed, then update once.
    if [ ! -e "$src_list" ]; then
        keyring=/usr/share/keyrings/debian-archive-keyring.gpg
        [ -r "$keyring" ] || die "$keyring missing (package debian-archive-keyring)"
        log "adding deb-src entries for $codename, $codename-updates, $codename-security in $src_list"
        cat >"$src_list" <<EOF
# Added by cxl-bmc kernel-scripts/build-memcached.sh: Debian source packages, to rebuild memcached with symbols.
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: main
Signed-By: $keyring

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: $codename-security
Components: main
Signed-By: $keyring
EOF
    fi
    apt_updated=false # the lists predate the deb-src entry
    apt_update
    source_available || die "apt has no source package memcached $deb_version for $codename \
(apt-cache showsrc memcached lists: $(apt-cache showsrc --only-source memcached 2>/dev/null | sed -n 's/^Version: //p' | tr '\n' ' ')). \
If Debian has superseded it, add a deb-src line for Debian's snapshot archive at the date of that upload."
fi

# ---- build dependencies (only the missing ones) ----
build_packages=(gcc make libc6-dev dpkg-dev pkg-config libevent-dev libsasl2-dev libssl-dev)
is_installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }
missing=()
for p in "${build_packages[@]}"; do is_installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    apt_update
    log "installing ${missing[*]}"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
fi
for p in "${build_packages[@]}"; do is_installed "$p" || die "package $p still missing"; done

# ---- source package ----
build_dir=$out_dir/build
rm -rf "$build_dir"
mkdir -p "$build_dir/download"
# apt downloads as user _apt when it can write the directory; otherwise it warns and downloads as root.
id _apt >/dev/null 2>&1 && chown _apt "$build_dir/download"
log "downloading source memcached $deb_version"
(cd "$build_dir/download" && apt-get source -q --download-only --only-source "memcached=$deb_version" >&2) \
    || die "apt-get source memcached=$deb_version failed"
dsc=$(ls "$build_dir"/download/memcached_*.dsc 2>/dev/null | head -n1)
[ -n "$dsc" ] || die "no .dsc downloaded for memcached $deb_version"
src=$build_dir/memcached-$upstream_version
# Unpacks the orig tarball and applies debian/patches (format 3.0 quilt), as dpkg-buildpackage does.
# The files' integrity is checked by apt against the signed Sources index.
dpkg-source -x "$dsc" "$src" >&2 || die "dpkg-source -x $dsc failed"

# ---- configure + make, as debian/rules does ----
cd "$src"
rules=debian/rules
[ -f "$rules" ] || die "$src/$rules missing"
# DEB_BUILD_MAINT_OPTIONS as debian/rules exports it (hardening=+all for 1.6.18-1+deb12u1).
maint_options=$(sed -n 's/^export[[:space:]]\{1,\}DEB_BUILD_MAINT_OPTIONS[[:space:]]*[:?]\{0,1\}=[[:space:]]*//p' "$rules" | tail -n1)
# The arguments debian/rules gives dh_auto_configure (--enable-sasl --enable-tls for 1.6.18).
rules_configure_args=$(sed -n 's/^[[:space:]]*dh_auto_configure[[:space:]]\{1,\}--[[:space:]]*//p' "$rules" | tail -n1)
if grep -qE '\$[({]|\\$' <<<"$rules_configure_args"; then
    die "debian/rules passes dh_auto_configure arguments this script cannot evaluate: $rules_configure_args"
fi
read -r -a extra_args <<<"$rules_configure_args"

# dpkg-buildflags maps the build directory with -ffile-prefix-map=$PWD=., so it runs from $src. It runs in an
# empty environment so that a caller's DEB_BUILD_OPTIONS / DEB_CFLAGS_APPEND etc. cannot change the flags, and
# the caller's compiler settings are dropped for the same reason.
eval "$(env -i PATH="$PATH" DEB_BUILD_MAINT_OPTIONS="$maint_options" dpkg-buildflags --export=sh)"
unset CC CPP LIBS CPATH C_INCLUDE_PATH LIBRARY_PATH GCC_EXEC_PREFIX COMPILER_PATH MAKEFLAGS MFLAGS
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -STimestamp)
export SOURCE_DATE_EPOCH
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
build_type=$(dpkg-architecture -qDEB_BUILD_GNU_TYPE)

# debhelper 13's dh_auto_configure arguments for autoconf, then debian/rules' own.
configure_args=(
    --build="$build_type" --prefix=/usr '--includedir=${prefix}/include' '--mandir=${prefix}/share/man'
    '--infodir=${prefix}/share/info' --sysconfdir=/etc --localstatedir=/var --disable-option-checking
    --disable-silent-rules "--libdir=\${prefix}/lib/$multiarch" --runstatedir=/run
    --disable-maintainer-mode --disable-dependency-tracking "${extra_args[@]}"
)
log "configure ${extra_args[*]} (DEB_BUILD_MAINT_OPTIONS=$maint_options, CFLAGS=$CFLAGS)"
./configure "${configure_args[@]}" >"$build_dir/configure.log" 2>&1 \
    || { tail -n 30 "$build_dir/configure.log" >&2; die "configure failed; log: $build_dir/configure.log"; }
log "make memcached"
make -j"$(nproc)" memcached >"$build_dir/make.log" 2>&1 \
    || { tail -n 30 "$build_dir/make.log" >&2; die "make memcached failed; log: $build_dir/make.log"; }
[ -x memcached ] || die "make did not produce $src/memcached"

# ---- checks ----
nm_out=$(nm --defined-only memcached) || die "nm $src/memcached failed"
absent=()
for s in "${required_symbols[@]}"; do
    grep -qE "^[0-9a-f]+ [Tt] $s\$" <<<"$nm_out" || absent+=("$s")
done
[ ${#absent[@]} -eq 0 ] || die "$src/memcached has no symbol for: ${absent[*]}"
./memcached -h >/dev/null || die "$src/memcached -h failed"

smoke_test() {
    local bin=$1 port pid fd reply try user_args=()
    [ "$(id -u)" -eq 0 ] && user_args=(-u nobody)
    for try in 1 2 3 4 5; do
        port=$((20000 + (RANDOM % 20000)))
        "$bin" "${user_args[@]}" -l 127.0.0.1 -p "$port" -U 0 -m 8 -c 64 -t 1 >/dev/null 2>&1 &
        pid=$!
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
            sleep 0.1
        done
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            continue # port taken: try another
        fi
        reply=$(exec 3<>"/dev/tcp/127.0.0.1/$port" &&
            printf 'set cxlbmc 0 0 5\r\nhello\r\nget cxlbmc\r\nquit\r\n' >&3 &&
            timeout 5 cat <&3) || true
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        [ "$reply" = $'STORED\r\nVALUE cxlbmc 0 5\r\nhello\r\nEND\r' ] && { log "set/get on 127.0.0.1:$port OK"; return 0; }
        echo "build-memcached: set/get on 127.0.0.1:$port answered: $(printf %q "$reply")" >&2
        return 1
    done
    echo "build-memcached: could not start memcached on a free loopback port" >&2
    return 1
}
smoke_test "$src/memcached" || die "$src/memcached did not serve set/get"

install -m 755 memcached "$binary.tmp"
mv -f "$binary.tmp" "$binary"
cat >"$stamp.tmp" <<EOF
deb_version=$deb_version
source=$src
gcc=$(dpkg-query -W -f='${Version}' "gcc-$(gcc -dumpversion | cut -d. -f1)" 2>/dev/null || gcc -dumpfullversion)
cflags=$CFLAGS
cppflags=$CPPFLAGS
ldflags=$LDFLAGS
configure=${extra_args[*]}
built=$(date -u +%Y-%m-%dT%H:%M:%SZ)
sha256=$(sha256sum "$binary" | cut -d' ' -f1)
EOF
mv -f "$stamp.tmp" "$stamp"
log "built in $SECONDS s"
finish
