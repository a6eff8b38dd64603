// SPDX-License-Identifier: GPL-2.0
/* L1 egress fill (skeleton; being filled in). */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "mcache_maps.bpf.h"

SEC("tc")
int tc_mcache_fill(struct __sk_buff *skb)
{
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
