/* Header parsing shared by ingress and egress: Ethernet (one optional VLAN
 * tag), IPv4 without options or IPv6 without extension headers, then UDP or
 * TCP. Packets we cannot parse exactly are reported so the caller can pass
 * them on and, if they might hide a write, block fills. */
#ifndef MCACHE_PACKET_BPF_H
#define MCACHE_PACKET_BPF_H

#include "mcache_common.bpf.h"

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif

#define PKT_OK 0
#define PKT_NOT_IP 1    /* not IP/UDP/TCP: not ours */
#define PKT_OPAQUE 2    /* IP fragment, IP options or IPv6 extension headers */
#define PKT_TRUNCATED 3

struct pkt_info {
	__u32 l3_off;
	__u32 l4_off;
	__u32 payload_off;
	__u32 payload_len;
	__u8 ipv6;
	__u8 proto;
	__u8 tcp_flags;
	__u8 ext_headers; /* IPv6 extension headers before L4: GETs are passed, writes tracked */
	__u8 udp_unanswerable; /* a GET memcached would never answer: source port 0, or IPv6 without UDP checksum (dropped) */
	__u16 sport; /* network order */
	__u16 dport; /* network order */
	__u32 seq;   /* TCP sequence number, host order */
	__u8 saddr[16]; /* IPv4 as ::ffff:a.b.c.d */
	__u8 daddr[16];
};

#define TCPF_FIN 0x01
#define TCPF_SYN 0x02
#define TCPF_RST 0x04
#define TCPF_ACK 0x10

static __always_inline void v4_mapped(__u8 *dst, __u32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

/* Parses headers from a linear copy `hdr` of the first bytes of the frame
 * (`len` = the whole frame's length). */
static __always_inline int parse_headers(const __u8 *hdr, __u32 hdr_cap, __u32 len, struct pkt_info *pi)
{
	__u32 off = sizeof(struct ethhdr);
	if (len < off || hdr_cap < 18 + 40 + 20)
		return PKT_TRUNCATED;
	__u16 proto = (__u16)hdr[12] << 8 | hdr[13];
	if (proto == ETH_P_8021Q || proto == ETH_P_8021AD) {
		proto = (__u16)hdr[16] << 8 | hdr[17];
		off = 18;
		if (proto == ETH_P_8021Q || proto == ETH_P_8021AD)
			return PKT_OPAQUE; /* stacked tags: pass, and block fills */
	}
	pi->l3_off = off;
	__u32 l3_len;
	__u8 l4;
	if (proto == ETH_P_IP) {
		if (len < off + 20)
			return PKT_TRUNCATED;
		const struct iphdr *ip = (const void *)(hdr + off);
		if (ip->version != 4 || ip->ihl < 5)
			return PKT_TRUNCATED;
		l4 = ip->protocol;
		if (l4 != IPPROTO_UDP && l4 != IPPROTO_TCP)
			return PKT_NOT_IP;
		if (ip->frag_off & bpf_htons(0x3fff))
			return PKT_OPAQUE; /* a fragment: what it carries cannot be read here */
		l3_len = bpf_ntohs(ip->tot_len);
		__u32 ihl = ip->ihl * 4;
		if (l3_len < ihl || off + l3_len > len)
			return PKT_TRUNCATED;
		v4_mapped(pi->saddr, ip->saddr);
		v4_mapped(pi->daddr, ip->daddr);
		pi->ipv6 = 0;
		pi->ext_headers = ihl != 20; /* IP options */
		off += ihl;
		l3_len -= ihl;
	} else if (proto == ETH_P_IPV6) {
		if (len < off + 40)
			return PKT_TRUNCATED;
		const struct ipv6hdr *ip6 = (const void *)(hdr + off);
		if (ip6->version != 6)
			return PKT_TRUNCATED;
		l4 = ip6->nexthdr;
		l3_len = bpf_ntohs(ip6->payload_len);
		if (off + 40 + l3_len > len)
			return PKT_TRUNCATED;
		__builtin_memcpy(pi->saddr, &ip6->saddr, 16);
		__builtin_memcpy(pi->daddr, &ip6->daddr, 16);
		pi->ipv6 = 1;
		off += 40;
		/* Walk extension headers (MLD reports carry hop-by-hop options);
		 * a fragment or ESP hides what follows. */
		for (int i = 0; i < 4; i++) {
			__u32 ext;
			if (l4 == 0 || l4 == 43 || l4 == 60) {
				if (off + 2 > len || off + 2 > hdr_cap)
					return PKT_TRUNCATED;
				ext = ((__u32)hdr[(off + 1) & 127] + 1) * 8;
			} else if (l4 == 51) {
				if (off + 2 > len || off + 2 > hdr_cap)
					return PKT_TRUNCATED;
				ext = ((__u32)hdr[(off + 1) & 127] + 2) * 4;
			} else if (l4 == 44 || l4 == 50) {
				return PKT_OPAQUE;
			} else {
				break;
			}
			if (ext > l3_len || off + ext + 20 > hdr_cap)
				return PKT_OPAQUE; /* too long to follow in the copied headers */
			l4 = hdr[off & 127];
			off += ext;
			l3_len -= ext;
			pi->ext_headers = 1;
		}
		if (l4 != IPPROTO_UDP && l4 != IPPROTO_TCP)
			return l4 == 0 || l4 == 43 || l4 == 60 || l4 == 51 ? PKT_OPAQUE : PKT_NOT_IP;
	} else {
		return PKT_NOT_IP;
	}
	pi->l4_off = off;
	pi->proto = l4;
	if (l4 == IPPROTO_UDP) {
		if (l3_len < 8 || off + 8 > hdr_cap)
			return PKT_TRUNCATED;
		const struct udphdr *udp = (const void *)(hdr + (off & 127));
		__u32 ulen = bpf_ntohs(udp->len);
		if (ulen < 8 || ulen > l3_len)
			return PKT_TRUNCATED;
		pi->sport = udp->source;
		pi->dport = udp->dest;
		pi->udp_unanswerable = udp->source == 0 || (pi->ipv6 && udp->check == 0);
		pi->payload_off = off + 8;
		pi->payload_len = ulen - 8;
		pi->tcp_flags = 0;
		pi->seq = 0;
	} else {
		if (l3_len < 20 || off + 20 > hdr_cap)
			return PKT_TRUNCATED;
		const struct tcphdr *tcp = (const void *)(hdr + (off & 127));
		__u32 doff = tcp->doff * 4;
		if (doff < 20 || doff > l3_len)
			return PKT_TRUNCATED;
		pi->sport = tcp->source;
		pi->dport = tcp->dest;
		pi->seq = bpf_ntohl(tcp->seq);
		pi->tcp_flags = ((const __u8 *)tcp)[13];
		pi->payload_off = off + doff;
		pi->payload_len = l3_len - doff;
	}
	return PKT_OK;
}

#endif
