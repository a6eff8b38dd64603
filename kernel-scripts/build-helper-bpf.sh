#!/usr/bin/env bash
# Compiles the test-bed's helper XDP programs (kernel-scripts/bpf/*.c, not part
# of cxl-bmc) with the Swift toolchain's clang; prints the output directory.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${CXLBMC_HELPER_BPF_DIR:-/tmp/cxl-bmc-helper-bpf}
clang=${CLANG:-$(command -v clang || echo /opt/swift/usr/bin/clang)}
arch=$(uname -m)
mkdir -p "$out"
for src in "$here"/bpf/*.c; do
    obj="$out/$(basename "${src%.c}").o"
    if [ ! -f "$obj" ] || [ "$src" -nt "$obj" ]; then
        # Build aside and rename, so a concurrent test bed never loads half a file.
        "$clang" -target bpf -O2 -g -Wall -idirafter "/usr/include/$arch-linux-gnu" -idirafter /usr/include \
            -c "$src" -o "$obj.$$"
        mv -f "$obj.$$" "$obj"
    fi
done
echo "$out"
