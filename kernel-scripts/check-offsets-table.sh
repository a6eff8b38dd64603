#!/usr/bin/env bash
# Re-derives a shipped offset table from scratch and compares it with the shipped one:
#
#   check-offsets-table.sh [TABLE [BINARY]]
#
# TABLE defaults to Sources/ProbeTargets/Offsets/memcached-1.6.18-deb12u1.offsets, BINARY to /usr/bin/memcached.
# Every entry of TABLE (offset, size, prologue) and every global data address in its header must be derived
# identically by kernel-scripts/derive-offsets.sh; any difference, or a binary with another build-id, exits 1.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
table=${1:-$here/../Sources/ProbeTargets/Offsets/memcached-1.6.18-deb12u1.offsets}
binary=${2:-/usr/bin/memcached}
die() { echo "check-offsets-table: error: $*" >&2; exit 1; }
[ -r "$table" ] || die "$table: no such table"
[ -f "$binary" ] || die "$binary: no such file (install Debian's memcached: kernel-scripts/install-deps.sh)"

want=$(grep -m1 -o 'build-id [0-9a-fA-F]*' "$table" | cut -d' ' -f2)
have=$(readelf -n "$binary" 2>/dev/null | sed -n 's/.*Build ID: *\([0-9a-f]*\).*/\1/p' | head -n1)
[ -n "$want" ] || die "$table has no build-id header line"
[ "$want" = "$have" ] || die "$table is for build-id $want, $binary has ${have:-none}"

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
start=$(date +%s.%N)
"$here/derive-offsets.sh" --compare "$table" "$binary" "$tmp"
end=$(date +%s.%N)
echo "check-offsets-table: $table matches the table derived from $binary ($(grep -vc '^#' "$tmp") functions derived, $(awk -v a="$start" -v b="$end" 'BEGIN{printf "%.1f", b-a}') s)"
