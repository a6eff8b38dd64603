/* Shared by the benchmark floors (never part of cxl-bmc): turns a resized
 * IPv4/UDP request frame around into a reply of `payload_len` bytes —
 * MACs, addresses and ports swapped, lengths and IPv4 checksum set, UDP
 * checksum 0 (optional on IPv4). Returns 0, or -1 if the frame is too short. */
#ifndef FLOOR_REPLY_H
#define FLOOR_REPLY_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

static __always_inline int floor_turn_around(struct xdp_md *ctx, __u32 payload_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return -1;
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
	__u32 a = ip->saddr;
	ip->saddr = ip->daddr;
	ip->daddr = a;
	ip->tot_len = bpf_htons(20 + 8 + payload_len);
	ip->check = 0;
	__u32 sum = 0;
	__u16 *w = (void *)ip;
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip->check = ~sum;
	__u16 port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->len = bpf_htons(8 + payload_len);
	udp->check = 0;
	return 0;
}

#endif
