// SPDX-License-Identifier: GPL-2.0
/* Test-bed helper, never part of cxl-bmc: a no-op XDP program for the
 * client end of a veth pair. veth hands XDP_TX frames only to a peer that
 * runs NAPI, which an attached XDP program guarantees (GRO alone did not,
 * on this kernel): a real NIC's peer always does. */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
