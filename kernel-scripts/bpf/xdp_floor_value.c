// SPDX-License-Identifier: GPL-2.0
/* Benchmark floor, never attached by `cxl-bmc attach`: answers every
 * single-key "get <key>\r\n" to the memcached port with a VALUE reply of
 * FLOOR_VALUE_SIZE bytes — the same bytes on the wire as an L1 hit — but with
 * no lookup at all. The END floor (xdp_floor.c) under-counts what the client
 * spends on receiving and parsing a value; this one does not. IPv4 only. */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "floor_reply.h"

#ifndef FLOOR_VALUE_SIZE
#define FLOOR_VALUE_SIZE 64
#endif
#define FLOOR_PORT 11211
#define MAX_KEY 32
#define HDRS (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))

struct reply_buf {
	__u8 b[2048];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct reply_buf);
} floor_buf SEC(".maps");

#define STR_(x) #x
#define STR(x) STR_(x)

SEC("xdp")
int xdp_floor_value(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u8 *p = (void *)(udp + 1);
	if ((void *)(p + 14) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP || udp->dest != bpf_htons(FLOOR_PORT))
		return XDP_PASS;
	if (p[8] != 'g' || p[9] != 'e' || p[10] != 't' || p[11] != ' ')
		return XDP_PASS;

	__u32 zero = 0;
	struct reply_buf *r = bpf_map_lookup_elem(&floor_buf, &zero);
	if (!r)
		return XDP_PASS;
	__u8 *b = r->b;
	/* frame header: same request id, datagram 0 of 1 */
	b[0] = p[0];
	b[1] = p[1];
	b[2] = 0; b[3] = 0; b[4] = 0; b[5] = 1; b[6] = 0; b[7] = 0;
	__u32 o = 8;
	b[o++] = 'V'; b[o++] = 'A'; b[o++] = 'L'; b[o++] = 'U'; b[o++] = 'E'; b[o++] = ' ';
	__u32 klen = 0;
	for (int i = 0; i < MAX_KEY; i++) {
		__u8 *c = p + 12 + i;
		if ((void *)(c + 1) > data_end)
			return XDP_PASS;
		if (*c == '\r')
			break;
		if (*c == ' ')
			return XDP_PASS; /* one key only */
		b[(o++) & 1023] = *c;
		klen++;
	}
	if (!klen || klen == MAX_KEY)
		return XDP_PASS;
	b[(o++) & 1023] = ' ';
	b[(o++) & 1023] = '0';
	b[(o++) & 1023] = ' ';
	const char size_text[] = STR(FLOOR_VALUE_SIZE);
	for (int i = 0; i < sizeof(size_text) - 1; i++)
		b[(o++) & 1023] = size_text[i];
	b[(o++) & 1023] = '\r';
	b[(o++) & 1023] = '\n';
	for (int i = 0; i < FLOOR_VALUE_SIZE; i++)
		b[(o + i) & 2047] = 'v';
	o += FLOOR_VALUE_SIZE;
	b[(o++) & 2047] = '\r';
	b[(o++) & 2047] = '\n';
	b[(o++) & 2047] = 'E';
	b[(o++) & 2047] = 'N';
	b[(o++) & 2047] = 'D';
	b[(o++) & 2047] = '\r';
	b[(o++) & 2047] = '\n';
	__u32 rlen = o;
	if (rlen > 1400 || rlen < 13)
		return XDP_PASS;

	/* The original headers, then grow (tail, else head) and write it all. */
	__u8 hdr[HDRS];
	__builtin_memcpy(hdr, data, HDRS);
	int grow = (int)(HDRS + rlen) - (int)(data_end - data);
	if (bpf_xdp_adjust_tail(ctx, grow)) {
		if (grow <= 0 || bpf_xdp_adjust_head(ctx, -grow))
			return XDP_PASS;
	}
	if (bpf_xdp_store_bytes(ctx, 0, hdr, HDRS) || bpf_xdp_store_bytes(ctx, HDRS, b, rlen))
		return XDP_ABORTED;

	if (floor_turn_around(ctx, rlen))
		return XDP_ABORTED;
	return XDP_TX;
}

char LICENSE[] SEC("license") = "GPL";
