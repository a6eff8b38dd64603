#!/bin/bash
# Runs cxl-tier-bench with its pools on 4 KiB pages (/dev/shm) and on 2 MiB pages (a hugetlbfs),
# side by side in one run (`make bench-tier`).
#
#   bash kernel-scripts/bench-tier-hugepages.sh PATH/TO/cxl-tier-bench [bench arguments...]
#
# Reserves the 2 MiB pages the run needs (/proc/sys/vm/nr_hugepages raised by that many), mounts a
# hugetlbfs in a temporary directory, runs the bench with --hugetlb-dir, then unmounts it and
# restores nr_hugepages to its previous value — always, also when the bench fails or is
# interrupted (trap). When the pages cannot be reserved (not root, memory too fragmented), it says
# so on stderr and in the report and measures 4 KiB pages only; it never changes any other setting.
set -u

bench=${1:?usage: bench-tier-hugepages.sh CXL_TIER_BENCH [ARGS...]}
shift

NR=/proc/sys/vm/nr_hugepages
previous=$(cat "$NR")
mountpoint=""
mounted=0

restore() {
    if [ "$mounted" = 1 ]; then umount "$mountpoint" || umount -l "$mountpoint"; fi
    if [ -n "$mountpoint" ]; then rmdir "$mountpoint" 2>/dev/null; fi
    if [ "$(cat "$NR")" != "$previous" ]; then echo "$previous" > "$NR"; fi
}
trap restore EXIT
trap 'exit 130' INT TERM HUP

free_pages() { awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo; }
page_kib=$(awk '/^Hugepagesize:/ { print $2 }' /proc/meminfo)

pool_bytes=$("$bench" "$@" --print-pool-size) || { echo "bench-tier-hugepages: $bench --print-pool-size failed" >&2; exit 2; }
page_bytes=$((page_kib * 1024))
# The bench holds two pools at once (the batched-put pool beside the first), then the 1 GiB
# pointer-chase file beside the first.
pages=$(( 2 * ((pool_bytes + page_bytes - 1) / page_bytes) + 4 ))

reason=""
if [ "$page_kib" != 2048 ]; then
    reason="the default huge page size here is ${page_kib} KiB, not 2 MiB"
elif [ "$(id -u)" != 0 ]; then
    reason="reserving huge pages needs root (run \`make bench-tier\` as root)"
elif ! echo $((previous + pages)) > "$NR" 2>/dev/null; then
    reason="writing $NR failed"
elif [ "$(free_pages)" -lt "$pages" ]; then
    reason="asked the kernel for $pages more 2 MiB pages ($((pages * 2)) MiB), it reserved only $(free_pages) (memory too small or fragmented)"
    echo "$previous" > "$NR"
else
    mountpoint=$(mktemp -d /tmp/cxl-tier-hugetlbfs.XXXXXX)
    if mount -t hugetlbfs -o pagesize=2M,mode=0700 none "$mountpoint"; then
        mounted=1
    else
        reason="mount -t hugetlbfs failed"
    fi
fi

if [ "$mounted" = 1 ]; then
    echo "bench-tier-hugepages: $pages pages of 2 MiB reserved (nr_hugepages $previous -> $(cat "$NR")), hugetlbfs at $mountpoint" >&2
    "$bench" "$@" --hugetlb-dir "$mountpoint"
else
    echo "bench-tier-hugepages: 2 MiB pages NOT measured: $reason; 4 KiB pages only" >&2
    "$bench" "$@" --no-hugetlb "$reason"
fi
