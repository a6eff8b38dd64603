/* libxdp (Debian: libxdp-dev). */
#include <bpf/libbpf.h>
#include <xdp/libxdp.h>
