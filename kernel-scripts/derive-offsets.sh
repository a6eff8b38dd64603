#!/usr/bin/env bash
# Derives the uprobe offset table for a stripped Debian memcached (docs/uprobe-targets.md, "Deriving a table
# for another build"):
#
#   derive-offsets.sh [--deb-version V] [--names a,b,...] [--compare TABLE] [-v] STRIPPED_BINARY [OUT]
#
#   --deb-version V  Debian version of the package STRIPPED_BINARY comes from. Default: the installed version of
#                    the package that owns STRIPPED_BINARY (dpkg -S), e.g. 1.6.18-1+deb12u1 for /usr/bin/memcached.
#   --names LIST     emit only these functions (default: every function matched uniquely).
#   --compare TABLE  also compare with TABLE (every entry, global data addresses); exit 1 on any difference.
#   -v               list the functions that were not matched.
#   OUT              where to write the table (default: stdout).
#
# 1. kernel-scripts/build-memcached.sh --deb-version V rebuilds that source package with Debian's compiler and
#    flags, not stripped (cached in /var/cache/cxl-bmc/memcached-V-symbols; a second run reuses it).
# 2. kernel-scripts/derive_offsets.py matches the normalised disassembly of every function of the rebuild against
#    the stripped binary split at function starts, accepts unique identical matches only, and writes
#    `name 0xOFFSET size=N prologue=HEX` lines under a header with the stripped binary's build-id.
# The rebuild must use the same gcc as Debian's build (the buildinfo of the upload names it); with another gcc
# few or no functions match, and the script says so.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
die() { echo "derive-offsets: error: $*" >&2; exit 1; }
log() { echo "derive-offsets: $*" >&2; }

deb_version=
py_args=()
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --deb-version) [ $# -ge 2 ] || die "--deb-version needs a value"; deb_version=$2; shift ;;
        --deb-version=*) deb_version=${1#*=} ;;
        --names) [ $# -ge 2 ] || die "--names needs a value"; py_args+=(--names "$2"); shift ;;
        --names=*) py_args+=(--names "${1#*=}") ;;
        --compare) [ $# -ge 2 ] || die "--compare needs a value"; py_args+=(--compare "$2"); shift ;;
        --compare=*) py_args+=(--compare "${1#*=}") ;;
        -v|--verbose) py_args+=(-v) ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) args+=("$1") ;;
    esac
    shift
done
[ ${#args[@]} -ge 1 ] && [ ${#args[@]} -le 2 ] || die "usage: derive-offsets.sh [options] STRIPPED_BINARY [OUT] (see --help)"
stripped=${args[0]}
out=${args[1]:-}
[ -f "$stripped" ] || die "$stripped: no such file"
[ "$(head -c 4 "$stripped" | od -An -c | tr -d ' ')" = '177ELF' ] || die "$stripped is not an ELF file"

if [ -z "$deb_version" ]; then
    real=$(readlink -f "$stripped")
    owner=$(dpkg-query -S "$real" 2>/dev/null | head -n1 | cut -d: -f1) || true
    # /usr/bin may be reached through the /bin symlink: try the merged-/usr spelling too
    [ -n "$owner" ] || owner=$(dpkg-query -S "${real#/usr}" 2>/dev/null | head -n1 | cut -d: -f1) || true
    [ -n "$owner" ] || die "$stripped belongs to no installed package: pass --deb-version (e.g. 1.6.18-1+deb12u1)"
    [ "$owner" = memcached ] || die "$stripped belongs to package $owner; this script rebuilds memcached only"
    deb_version=$(dpkg-query -W -f='${Version}' memcached)
    # the installed file must be the package's, not a replaced one
    if sums=$(dpkg-query --control-path memcached md5sums 2>/dev/null) && [ -r "$sums" ]; then
        want=$(awk -v p="${real#/}" '$2==p{print $1}' "$sums")
        [ -z "$want" ] || [ "$want" = "$(md5sum <"$real" | cut -d' ' -f1)" ] \
            || die "$stripped differs from the file memcached $deb_version installed: pass --deb-version"
    fi
    log "$stripped is from memcached $deb_version"
fi

if ! command -v python3 >/dev/null; then
    [ "$(id -u)" -eq 0 ] || die "python3 not found; install Debian's python3 (apt-get install python3)"
    log "installing python3"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 >&2 \
        || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 >&2; } \
        || die "could not install python3"
fi

rebuild=$("$here/build-memcached.sh" --deb-version "$deb_version" --print-path) \
    || die "could not build memcached $deb_version with symbols (see above)"
command -v objdump >/dev/null || die "objdump not found (package binutils)"
stamp=$(dirname "$rebuild")/stamp
gcc_version=$(sed -n 's/^gcc=//p' "$stamp")
configure=$(sed -n 's/^configure=//p' "$stamp")
arch=$(dpkg --print-architecture 2>/dev/null || uname -m)

py_out=()
[ -n "$out" ] && py_out=(-o "$out")
python3 "$here/derive_offsets.py" --rebuild "$rebuild" "$stripped" "${py_out[@]}" "${py_args[@]}" \
    --label "$stripped $deb_version $arch" \
    --compiler "gcc $gcc_version, Debian CFLAGS" --configure "$configure"
[ -z "$out" ] || log "wrote $out"
