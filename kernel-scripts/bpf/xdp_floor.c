// SPDX-License-Identifier: GPL-2.0
/* Benchmark floor, never attached by `cxl-bmc attach`: answers every UDP
 * datagram to the memcached port with a bare "END\r\n" (a miss) straight
 * from XDP, with no parsing and no lookup. On veth XDP's cost lands on the
 * sender's CPU, so the bench measures the machine's CPU per GET with this
 * program and subtracts it: what remains is the server side's own share. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "floor_reply.h"

#define FLOOR_PORT 11211

SEC("xdp")
int xdp_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *p = (void *)(udp + 1);
	if ((void *)(p + 8) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || udp->dest != bpf_htons(FLOOR_PORT))
		return XDP_PASS;
	int delta = (int)(sizeof(*eth) + sizeof(*ip) + sizeof(*udp) + 8 + 5) - (int)(data_end - data);
	if (bpf_xdp_adjust_tail(ctx, delta))
		return XDP_PASS;
	if (floor_turn_around(ctx, 8 + 5))
		return XDP_ABORTED;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	p = data + sizeof(*eth) + sizeof(*ip) + sizeof(*udp);
	if ((void *)(p + 13) > data_end)
		return XDP_ABORTED;
	/* frame header: keep the request id, datagram 0 of 1 */
	p[2] = 0; p[3] = 0; p[4] = 0; p[5] = 1; p[6] = 0; p[7] = 0;
	p[8] = 'E'; p[9] = 'N'; p[10] = 'D'; p[11] = '\r'; p[12] = '\n';
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
