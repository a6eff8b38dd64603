#!/usr/bin/env bash
# Compiles the test-bed's helper XDP programs (kernel-scripts/bpf/*.c, not part
# of cxl-bmc) with the Swift toolchain's clang; prints the output directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${CXLBMC_HELPER_BPF_DIR:-/tmp/cxl-bmc-helper-bpf}
clang=${CLANG:-$(command -v clang || echo /opt/swift/usr/bin/clang)}
arch=$(uname -m)
mkdir -p "$out"
build() { # SRC OBJ [CLANG FLAGS...]
    local src=$1 obj=$2
    shift 2
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ] || [ "$here/bpf/floor_reply.h" -nt "$obj" ]; then
        # Build aside and rename, so a concurrent test bed never loads half a file.
        "$clang" -target bpf -O2 -g -Wall -idirafter "/usr/include/$arch-linux-gnu" -idirafter /usr/include \
            "$@" -c "$src" -o "$obj.$$"
        mv -f "$obj.$$" "$obj"
    fi
}
build "$here/bpf/xdp_pass.c" "$out/xdp_pass.o"
build "$here/bpf/xdp_floor.c" "$out/xdp_floor.o"
# The value floor is built for each value size the benchmark uses.
for size in 64 1024; do
    build "$here/bpf/xdp_floor_value.c" "$out/xdp_floor_value_$size.o" -DFLOOR_VALUE_SIZE=$size
done
echo "$out"
