// SPDX-License-Identifier: GPL-2.0
/* L1 ingress: answers memcached UDP GETs whose every key is cached (XDP_TX),
 * takes a fill ticket on a miss, and sees every write on its way to
 * memcached (TCP and UDP) to invalidate it. Whatever it cannot answer exactly
 * is passed on untouched: never dropped, never answered in part. */
#include "mcache_packet.bpf.h"
#include "mcache_writes.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mcache_scratch);
} xdp_scratch SEC(".maps");

/* ---- writes ----------------------------------------------------------- */

struct apply_ctx {
	struct mcache_scratch *s;
	struct l1_config *cfg;
	__u64 now;
};

static long apply_op_cb(__u32 i, struct apply_ctx *c)
{
	struct mcache_scratch *s = c->s;
	struct l1_config *cfg = c->cfg;
	if (i >= s->nops || i >= MC_MAX_OPS)
		return 1;
	struct mc_op *op = &s->ops[i & (MC_MAX_OPS - 1)];
	if (op->kind == MC_OP_FLUSH) {
		struct l1_state *st = get_state();
		if (st)
			__sync_fetch_and_add(&st->epoch, 1);
		/* Until memcached has applied it (and its delay has run out) a
		 * reply could still carry pre-flush data. */
		__u64 delay = op->arg > 0 && op->arg < 60 * 60 * 24 * 30 ? (__u64)op->arg * 1000000000ULL : 0;
		block_all_fills(c->now, max_hold(cfg) + delay);
		stat_inc(L1_STAT_FLUSH);
		return 0;
	}
	if (op->kind == MC_OP_BLOCK) {
		invalidate_all(c->now, max_hold(cfg));
		return 0;
	}
	__u64 hash = op->hash;
	__u32 sidx;
	struct l1_set *set = set_for_hash(hash, cfg, &sidx);
	if (!set)
		return 0;
	set_invalidate(set, hash, c->now, cfg, op->noreply);
	stat_inc(L1_STAT_INVALIDATE);
	if (op->ttl_mode == MC_TTL_SET) {
		struct l1_ttl ttl = { .expires_ns = exptime_to_deadline(op->arg, c->now, cfg) };
		bpf_map_update_elem(&mcache_ttl, &hash, &ttl, BPF_ANY);
	} else if (op->ttl_mode == MC_TTL_FORGET) {
		bpf_map_delete_elem(&mcache_ttl, &hash);
	}
	if (!op->noreply && s->npend < MC_MAX_OPS) {
		s->pend[s->npend & (MC_MAX_OPS - 1)] = sidx;
		s->npend++;
	}
	return 0;
}

static __always_inline void apply_ops(struct mcache_scratch *s, struct l1_config *cfg, __u64 now)
{
	struct apply_ctx c = { .s = s, .cfg = cfg, .now = now };
	s->npend = 0;
	bpf_loop(MC_MAX_OPS, apply_op_cb, &c, 0);
	if (s->flags & L1_CONN_OVERFLOW) {
		/* Writes beyond what one segment records: their keys are unknown. */
		invalidate_all(now, cfg->inflight_max_ns);
		s->flags &= ~L1_CONN_OVERFLOW;
	}
}

/* Records the sets of this segment's answered writes on the stream, so the
 * reply that follows them at egress releases them. */
static __always_inline void conn_add_pending(struct l1_conn *conn, struct mcache_scratch *s)
{
	bpf_spin_lock(&conn->lock);
	for (int i = 0; i < MC_MAX_OPS; i++) {
		if (i >= s->npend)
			break;
		__u32 n = conn->npending;
		if (n >= L1_CONN_PENDING) {
			/* Not remembered: the set's pending deadline releases it. */
			break;
		}
		conn->pending_set[n & (L1_CONN_PENDING - 1)] = s->pend[i & (MC_MAX_OPS - 1)];
		conn->npending = n + 1;
	}
	bpf_spin_unlock(&conn->lock);
}

static __always_inline struct l1_conn *new_conn(struct mcache_scratch *s, __u64 now)
{
	struct l1_conn *c = (struct l1_conn *)s->conn_init;
	__builtin_memset(c, 0, sizeof(*c));
	c->last_ns = now;
	return c;
}

static __always_inline void conn_key_from(struct l1_conn_key *k, struct pkt_info *pi, __u16 proto)
{
	__builtin_memcpy(k->addr, pi->saddr, 16);
	k->port = pi->sport;
	k->proto = proto;
}

static __always_inline int handle_tcp(struct xdp_md *ctx, struct mcache_scratch *s, struct pkt_info *pi,
				      struct l1_config *cfg, __u64 now)
{
	struct l1_conn_key key = {};
	conn_key_from(&key, pi, L1_PROTO_TCP);
	struct l1_conn *conn = bpf_map_lookup_elem(&mcache_conns, &key);

	if (pi->tcp_flags & TCPF_SYN) {
		struct l1_conn *fresh = new_conn(s, now);
		if (conn)
			conn_release_pending(conn, 1, now, cfg->noreply_hold_ns); /* its fate is unknown */
		fresh->rcv_nxt = pi->seq + 1;
		fresh->flags = L1_CONN_FRESH;
		if (bpf_map_update_elem(&mcache_conns, &key, fresh, BPF_ANY) != 0)
			invalidate_all(now, cfg->inflight_max_ns);
		if (pi->payload_len)
			invalidate_all(now, cfg->inflight_max_ns); /* data on SYN: not followed */
		return XDP_PASS;
	}
	if (pi->tcp_flags & TCPF_RST) {
		if (conn) {
			conn_release_pending(conn, 1, now, cfg->noreply_hold_ns); /* its fate is unknown */
			bpf_map_delete_elem(&mcache_conns, &key);
		}
		return XDP_PASS;
	}
	if (pi->payload_len == 0)
		return XDP_PASS;
	stat_inc(L1_STAT_TCP_SEGMENTS);

	if (!conn) {
		/* A stream that started before we attached: we cannot know where
		 * its commands begin, so while it talks no fill is safe. */
		struct l1_conn *lost = new_conn(s, now);
		lost->flags = L1_CONN_DESYNC;
		bpf_map_update_elem(&mcache_conns, &key, lost, BPF_NOEXIST);
		stat_inc(L1_STAT_DESYNC);
		invalidate_all(now, cfg->inflight_max_ns);
		return XDP_PASS;
	}
	conn->last_ns = now;
	if (conn->flags & L1_CONN_DESYNC) {
		invalidate_all(now, cfg->inflight_max_ns);
		return XDP_PASS;
	}
	if (__sync_lock_test_and_set(&conn->busy, 1)) {
		/* Two CPUs on one stream at once: give up following it. */
		conn->flags |= L1_CONN_DESYNC;
		stat_inc(L1_STAT_DESYNC);
		invalidate_all(now, cfg->inflight_max_ns);
		return XDP_PASS;
	}

	__u32 seq = pi->seq, len = pi->payload_len;
	__u32 expect = conn->rcv_nxt;
	if (seq != expect) {
		if ((__s32)(seq + len - expect) <= 0) {
			/* Pure retransmission: its writes were seen, but the first
			 * copy may never have reached memcached. */
			stat_inc(L1_STAT_RETRANSMIT);
			block_all_fills(now, cfg->inflight_max_ns);
		} else {
			conn->flags |= L1_CONN_DESYNC;
			stat_inc(L1_STAT_DESYNC);
			invalidate_all(now, cfg->inflight_max_ns);
		}
		conn->busy = 0;
		return XDP_PASS;
	}

	/* The carried-over tail of the last segment, then this payload. */
	__u32 plen = conn->partial_len;
	if (plen > L1_PARTIAL_MAX || len > PAYLOAD_MAX) {
		conn->flags |= L1_CONN_DESYNC;
		stat_inc(L1_STAT_DESYNC);
		invalidate_all(now, cfg->inflight_max_ns);
		conn->busy = 0;
		return XDP_PASS;
	}
	if (plen)
		bpf_probe_read_kernel(s->in, plen, conn->partial);
	if (bpf_xdp_load_bytes(ctx, pi->payload_off, &s->in[BOUND(plen, 511)], len) != 0) {
		conn->flags |= L1_CONN_DESYNC;
		invalidate_all(now, cfg->inflight_max_ns);
		conn->busy = 0;
		return XDP_PASS;
	}
	s->in_len = plen + len;
	s->pos = 0;
	s->skip = conn->skip;
	s->flags = conn->flags;
	s->nops = 0;

	int r = mc_parse_stream(s);
	apply_ops(s, cfg, now);
	if (r == MC_DESYNC) {
		conn->flags |= L1_CONN_DESYNC;
		stat_inc(L1_STAT_DESYNC);
		invalidate_all(now, cfg->inflight_max_ns);
	} else {
		__u32 tail = s->pos < s->in_len ? s->in_len - s->pos : 0;
		if (tail > L1_PARTIAL_MAX)
			tail = 0; /* mc_parse_stream already refused this */
		if (tail)
			bpf_probe_read_kernel(conn->partial, tail, &s->in[BOUND(s->pos, SCRATCH_MASK >> 1)]);
		conn->partial_len = tail;
		conn->skip = s->skip;
		conn->flags = s->flags & (L1_CONN_BINARY | L1_CONN_SKIPLINE);
	}
	conn->rcv_nxt = seq + len;
	if (s->npend) {
		/* Released only once every byte of these writes has arrived. */
		__u32 end = seq + len + s->skip;
		bpf_spin_lock(&conn->lock);
		conn->write_end = end;
		bpf_spin_unlock(&conn->lock);
		conn_add_pending(conn, s);
	}
	conn->busy = 0;
	return XDP_PASS;
}

/* A UDP datagram that is not a lone GET: track its writes; the reply to
 * this client releases them. */
static __always_inline int handle_udp_writes(struct mcache_scratch *s, struct pkt_info *pi,
					     struct l1_config *cfg, __u64 now)
{
	s->pos = MC_UDP_HDR_LEN;
	s->skip = 0;
	s->flags = 0;
	s->nops = 0;
	int r = mc_parse_stream(s);
	apply_ops(s, cfg, now);
	if (r == MC_DESYNC)
		invalidate_all(now, cfg->inflight_max_ns);
	if (s->npend) {
		struct l1_conn_key key = {};
		conn_key_from(&key, pi, L1_PROTO_UDP);
		struct l1_conn *conn = bpf_map_lookup_elem(&mcache_conns, &key);
		if (!conn) {
			bpf_map_update_elem(&mcache_conns, &key, new_conn(s, now), BPF_NOEXIST);
			conn = bpf_map_lookup_elem(&mcache_conns, &key);
		}
		if (!conn) {
			invalidate_all(now, cfg->inflight_max_ns);
			return XDP_PASS;
		}
		conn->last_ns = now;
		conn_add_pending(conn, s);
	}
	return XDP_PASS;
}

/* ---- GET -------------------------------------------------------------- */

/* Splits "get|gets <key>+\r\n" (the whole datagram after the frame header)
 * into keys. Returns 0 if it is such a request we may answer, else the
 * pass reason. */
__noinline int mc_parse_get(struct mcache_scratch *s)
{
	if (!s)
		return L1_STAT_PASS_MALFORMED;
	__u32 len = s->in_len, p = MC_UDP_HDR_LEN;
	if (len < p + 6 || IN(s, len - 1) != '\n' || IN(s, len - 2) != '\r')
		return L1_STAT_PASS_NOT_GET;
	if (IN(s, p) != 'g' || IN(s, p + 1) != 'e' || IN(s, p + 2) != 't')
		return L1_STAT_PASS_NOT_GET;
	s->is_gets = IN(s, p + 3) == 's';
	p += s->is_gets ? 4 : 3;
	if (IN(s, p) != ' ')
		return L1_STAT_PASS_NOT_GET;
	__u32 end = len - 2;
	__u32 n = 0;
	/* The common request, one key after one space: a single scan. */
	__u32 stop = mc_scan(s, p + 1, end, SCAN_DELIM);
	if (stop == end && end - (p + 1) - 1 < MC_MAX_KEY_LEN) {
		s->key_off[0] = p + 1;
		s->key_len[0] = end - (p + 1);
		s->nkeys = 1;
		return 0;
	}
	for (__u32 k = 0; k <= MC_MAX_GET_KEYS; k++) {
		__u32 start = mc_scan(s, p, end, SCAN_NONSPACE);
		if (start >= end)
			break;
		if (k == MC_MAX_GET_KEYS)
			return L1_STAT_PASS_TOO_MANY_KEYS;
		__u32 stop = mc_scan(s, start, end, SCAN_DELIM);
		if (stop < end && IN(s, stop) != ' ')
			return L1_STAT_PASS_MALFORMED; /* control bytes: memcached's business */
		if (stop - start > MC_MAX_KEY_LEN)
			return L1_STAT_PASS_MALFORMED;
		s->key_off[k & (MC_MAX_GET_KEYS - 1)] = start;
		s->key_len[k & (MC_MAX_GET_KEYS - 1)] = stop - start;
		n = k + 1;
		p = stop;
	}
	if (n == 0)
		return L1_STAT_PASS_MALFORMED;
	s->nkeys = n;
	return 0;
}

struct get_ctx {
	struct mcache_scratch *s;
	struct l1_config *cfg;
	__u64 now;
	__u32 epoch;
	__u32 out;  /* bytes of reply built so far */
	__u32 miss; /* a key is not servable: pass */
	__u32 why;  /* pass reason when not a plain miss */
};

/* Compares the key inside the copied block with the requested key. */
__noinline int key_matches(struct mcache_scratch *s, __u32 out_off, __u32 key_off, __u32 klen)
{
	if (!s || klen > MC_MAX_KEY_LEN)
		return 0;
	/* Eight bytes at a time: `in` and `out` are followed by more of the
	 * scratch value, so a word's overshoot stays inside it. */
	for (__u32 i = 0; i < (MC_MAX_KEY_LEN + 7) / 8; i++) {
		__u32 at = i * 8;
		if (at >= klen)
			break;
		__u64 a = *(__u64 *)&s->out[BOUND(out_off + 6 + at, SCRATCH_MASK)];
		__u64 b = *(__u64 *)&s->in[BOUND(key_off + at, SCRATCH_MASK)];
		__u64 diff = a ^ b;
		if (klen - at < 8)
			diff &= (1ULL << ((klen - at) * 8)) - 1; /* bytes past the key */
		if (diff)
			return 0;
	}
	return OUT(s, out_off + 6 + klen) == ' ';
}

/* Looks up key k and appends its block to the reply. Every key is visited
 * (even after a miss) so the ticket records each key's generation. */
static long get_key_cb(__u32 k, struct get_ctx *c)
{
	struct mcache_scratch *s = c->s;
	if (k >= s->nkeys || k >= MC_MAX_GET_KEYS)
		return 1;
	__u32 koff = s->key_off[k & (MC_MAX_GET_KEYS - 1)];
	__u32 klen = s->key_len[k & (MC_MAX_GET_KEYS - 1)];
	__u64 h = mc_hash(s, koff, klen);
	s->ticket.key_hash[k & (MC_MAX_GET_KEYS - 1)] = h;

	__u32 sidx;
	struct l1_set *set = set_for_hash(h, c->cfg, &sidx);
	if (!set) {
		c->miss = 1;
		return 0;
	}
	/* Lockless read, seqcount style: writers change a way only after
	 * bumping its seq (claim) and bump it again when done (publish or
	 * invalidate), both under the set lock. A reader that finds the same
	 * seq, still VALID, after copying the block has a consistent copy. */
	int way = -1;
	__u32 seq = 0, blen = 0, hlen = 0, clen = 0;
	/* memcached's uprobes bump the set's write generation when it applies a
	 * write: ways validated under an older one are not servable. */
	__u32 *wgenp = bpf_map_lookup_elem(&mcache_wgen, &sidx);
	__u32 wgen = wgenp ? READ_ONCE(*wgenp) : 0;
	__u32 gen = READ_ONCE(set->gen) + wgen;
	__u64 now = c->now;
	__u32 tag = (__u32)(h >> 32);
	for (int w = 0; w < L1_WAYS; w++) {
		if (READ_ONCE(set->valid_wgen) != wgen)
			break;
		if (READ_ONCE(set->tag[w]) != tag)
			continue;
		struct l1_way *wy = &set->ways[w];
		if (READ_ONCE(wy->key_hash) != h)
			continue;
		seq = READ_ONCE(wy->seq);
		barrier();
		if (wy->state == L1_WAY_VALID && wy->key_len == klen && wy->epoch == c->epoch &&
		    (wy->expires_ns == 0 || wy->expires_ns > now) && (!s->is_gets || wy->cas_len)) {
			way = w;
			blen = wy->block_len;
			hlen = wy->hdr_len;
			clen = wy->cas_len;
			if (!wy->referenced)
				wy->referenced = 1; /* CLOCK: a lost update only costs accuracy */
			break;
		}
	}
	s->ticket.gen[k & (MC_MAX_GET_KEYS - 1)] = gen;
	if (c->miss)
		return 0;
	if (way < 0) {
		c->miss = 1;
		return 0;
	}

	/* Copy the block out (without the CAS for a plain get), then check it
	 * is still the one we looked up: a writer may have replaced it. */
	__u8 *blk = block_of(sidx, way);
	if (!blk || blen > L1_LARGE_BLOCK || hlen > blen || hlen + clen > blen) {
		c->miss = 1;
		return 0;
	}
	__u32 o = c->out;
	__u32 want = s->is_gets ? blen : blen - clen;
	if (o + want + 5 > MC_UDP_MAX_PAYLOAD) {
		c->miss = 1;
		c->why = L1_STAT_PASS_TOO_BIG;
		return 0;
	}
	if (s->is_gets || !clen) {
		bpf_probe_read_kernel(&s->out[BOUND(o, 2047)], BOUND(want, 2047), blk);
	} else {
		bpf_probe_read_kernel(&s->out[BOUND(o, 2047)], BOUND(hlen, 2047), blk);
		__u32 rest = blen - hlen - clen;
		bpf_probe_read_kernel(&s->out[BOUND(o + hlen, 2047)], BOUND(rest, 2047), blk + hlen + clen);
	}
	if (!key_matches(s, o, koff, klen)) {
		c->miss = 1; /* a 64-bit hash collision: just a miss */
		return 0;
	}
	struct l1_way *wy = &set->ways[way & (L1_WAYS - 1)];
	int ok = SEQ_REREAD(&wy->seq) == seq && READ_ONCE(wy->state) == L1_WAY_VALID;
	if (!ok) {
		c->miss = 1;
		c->why = L1_STAT_HIT_RACE;
		return 0;
	}
	c->out = o + want;
	return 0;
}

static __always_inline __u16 csum_fold(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* One's-complement sum of buf[0, len) (a scratch buffer; len ≤ 2048, padded
 * to 4 with zeros). */
static __always_inline __u64 scratch_sum(__u8 *buf, __u32 len)
{
	__u64 sum = 0;
	__u32 padded = (len + 3) & ~3U;
	buf[BOUND(len, SCRATCH_MASK)] = 0;
	buf[BOUND(len + 1, SCRATCH_MASK)] = 0;
	buf[BOUND(len + 2, SCRATCH_MASK)] = 0;
	for (int c = 0; c < 4; c++) {
		__u32 off = c * 512;
		if (off >= padded)
			break;
		__u32 n = padded - off;
		if (n > 512)
			n = 512;
		__s64 r = bpf_csum_diff(NULL, 0, (__be32 *)&buf[BOUND(off, 2047)], BOUND(n, 1023), 0);
		if (r >= 0)
			sum += (__u32)r;
	}
	return sum;
}

static __always_inline __u64 sum16(const void *p, __u32 words)
{
	const __u16 *w = p;
	__u64 sum = 0;
	for (__u32 i = 0; i < words; i++)
		sum += w[i];
	return sum;
}

/* The request's IPv4 header and UDP checksums are right — or the UDP one
 * is the pseudo-header sum a local sender leaves for offload (veth: the
 * kernel delivers such a datagram without checking it). The kernel drops a
 * datagram with a wrong one, so memcached would never answer it. */
static __always_inline int request_checksums_ok(struct mcache_scratch *s, struct pkt_info *pi)
{
	__u32 l3 = pi->l3_off == 18 ? 18 : 14;
	__u64 pseudo;
	const struct udphdr *udp;
	__u32 ulen = pi->payload_len + 8;
	if (!pi->ipv6) {
		const struct iphdr *ip = (const void *)(s->hdr + l3);
		if (csum_fold(sum16(ip, 10)) != 0)
			return 0;
		udp = (const void *)(ip + 1);
		if (udp->check == 0)
			return 1; /* no UDP checksum */
		pseudo = sum16(&ip->saddr, 4);
	} else {
		const struct ipv6hdr *ip6 = (const void *)(s->hdr + l3);
		udp = (const void *)(ip6 + 1);
		pseudo = sum16(&ip6->saddr, 16);
	}
	pseudo += bpf_htons(IPPROTO_UDP) + bpf_htons(ulen);
	if (udp->check == (__u16)~csum_fold(pseudo))
		return 1; /* left for offload by a local sender */
	__u64 sum = pseudo + sum16(udp, 4) + scratch_sum(s->in, pi->payload_len);
	return csum_fold(sum) == 0;
}

/* Turns the request frame into the reply held in s->out[0, rlen). */
static __always_inline int send_reply(struct xdp_md *ctx, struct mcache_scratch *s, struct pkt_info *pi,
				      __u32 rlen)
{
	/* The program is not frags-aware: the frame is linear. */
	__u32 old_len = (__u32)((long)ctx->data_end - (long)ctx->data);
	__u32 new_len = pi->payload_off + rlen;
	if (rlen < MC_UDP_HDR_LEN + 5 || rlen > MC_UDP_MAX_PAYLOAD)
		return -1;
	int grow = (int)new_len - (int)old_len;
	__u32 hdr_len = pi->payload_off;
	if (hdr_len < 42 || hdr_len > 70)
		return -1;
	if (bpf_xdp_adjust_tail(ctx, grow) != 0) {
		/* Not enough tailroom (veth copies small frames into tight
		 * buffers): grow at the head instead, where XDP always has
		 * headroom, and lay the headers down again from our copy. */
		if (grow <= 0 || bpf_xdp_adjust_head(ctx, -grow) != 0)
			return -1; /* nothing was changed: pass */
		if (bpf_xdp_store_bytes(ctx, 0, s->hdr, hdr_len) != 0)
			return -2;
	}
	if (bpf_xdp_store_bytes(ctx, hdr_len, s->out, rlen) != 0)
		return -2; /* cannot happen after a successful resize */

	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return -2;
	__u8 mac[ETH_ALEN];
	__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);

	__u32 l3 = pi->l3_off == 18 ? 18 : 14;
	__u16 ulen = 8 + rlen;
	__u64 sum = scratch_sum(s->out, rlen);
	struct udphdr *udp;
	if (!pi->ipv6) {
		struct iphdr *ip = data + l3;
		if ((void *)(ip + 1) > data_end)
			return -2;
		__u32 a = ip->saddr;
		ip->saddr = ip->daddr;
		ip->daddr = a;
		ip->tot_len = bpf_htons(20 + ulen);
		ip->ttl = 64;
		ip->check = 0;
		ip->check = csum_fold(sum16(ip, 10));
		udp = (void *)(ip + 1);
		if ((void *)(udp + 1) > data_end)
			return -2;
		sum += sum16(&ip->saddr, 4);
	} else {
		struct ipv6hdr *ip6 = data + l3;
		if ((void *)(ip6 + 1) > data_end)
			return -2;
		struct in6_addr a = ip6->saddr;
		ip6->saddr = ip6->daddr;
		ip6->daddr = a;
		ip6->payload_len = bpf_htons(ulen);
		ip6->hop_limit = 64;
		udp = (void *)(ip6 + 1);
		if ((void *)(udp + 1) > data_end)
			return -2;
		sum += sum16(&ip6->saddr, 16);
	}
	__u16 port = udp->source;
	udp->source = udp->dest;
	udp->dest = port;
	udp->len = bpf_htons(ulen);
	udp->check = 0;
	sum += bpf_htons(IPPROTO_UDP) + bpf_htons(ulen);
	sum += sum16(udp, 4);
	__u16 ck = csum_fold(sum);
	udp->check = ck ? ck : 0xffff;
	return 0;
}

static __always_inline int handle_get(struct xdp_md *ctx, struct mcache_scratch *s, struct pkt_info *pi,
				      struct l1_config *cfg, __u64 now)
{
	struct l1_state *st = get_state();
	if (!st)
		return XDP_PASS;
	__u32 zero = 0;
	struct l1_stats *stats = bpf_map_lookup_elem(&mcache_stats, &zero);
	if (!stats)
		return XDP_PASS;
	stats->counter[L1_STAT_GET_SEEN]++;
	struct get_ctx c = { .s = s, .cfg = cfg, .now = now, .epoch = st->epoch, .out = MC_UDP_HDR_LEN };
	bpf_loop(MC_MAX_GET_KEYS, get_key_cb, &c, 0);

	if (c.miss) {
		struct l1_ticket_key tk = {};
		__builtin_memcpy(tk.addr, pi->saddr, 16);
		tk.port = pi->sport;
		tk.req_id = (__u16)s->in[1] << 8 | s->in[0];
		s->ticket.taken_ns = now;
		s->ticket.epoch = c.epoch;
		s->ticket.nkeys = s->nkeys;
		bpf_map_update_elem(&mcache_tickets, &tk, &s->ticket, BPF_ANY);
		stats->counter[BOUND(c.why ? c.why : L1_STAT_MISS, L1_STAT_COUNT - 1)]++;
		return XDP_PASS;
	}
	/* Frame header: same request id, datagram 0 of 1. */
	__u32 o = c.out;
	if (o + 5 > MC_UDP_MAX_PAYLOAD)
		return XDP_PASS;
	s->out[0] = s->in[0];
	s->out[1] = s->in[1];
	s->out[2] = 0;
	s->out[3] = 0;
	s->out[4] = 0;
	s->out[5] = 1;
	s->out[6] = 0;
	s->out[7] = 0;
	OUT(s, o) = 'E';
	OUT(s, o + 1) = 'N';
	OUT(s, o + 2) = 'D';
	OUT(s, o + 3) = '\r';
	OUT(s, o + 4) = '\n';
	if (!request_checksums_ok(s, pi)) {
		stat_inc(L1_STAT_PASS_BAD_CHECKSUM);
		return XDP_PASS;
	}
	int r = send_reply(ctx, s, pi, o + 5);
	if (r == -1) {
		stat_inc(L1_STAT_PASS_TOO_BIG);
		return XDP_PASS;
	}
	if (r != 0)
		return XDP_ABORTED; /* the frame was resized but could not be rebuilt */
	stats->counter[L1_STAT_HIT]++;
	return XDP_TX;
}

/* ---- entry -------------------------------------------------------------- */

SEC("xdp")
int xdp_mcache_get(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct mcache_scratch *s = bpf_map_lookup_elem(&xdp_scratch, &zero);
	struct l1_config *cfg = get_config();
	if (!s || !cfg || !(cfg->flags & L1_CFG_ENABLED))
		return XDP_PASS;

	__u32 len = bpf_xdp_get_buff_len(ctx);
	/* parse_headers never reads past `len`, so bytes past `cap` need no
	 * clearing. */
	__u32 cap = len >= HDR_CAP ? HDR_CAP : BOUND(len, HDR_CAP - 1);
	if (cap < 14 || bpf_xdp_load_bytes(ctx, 0, s->hdr, cap) != 0)
		return XDP_PASS;

	struct pkt_info pi = {};
	int pr = parse_headers(s->hdr, HDR_CAP, len, &pi);
	/* Writes read the precise clock; the GET hit path gets by with the
	 * coarse one. */
	/* With memcached's uprobes attached, writes are seen where memcached
	 * applies them: ingress needs to track none of them. */
	int wire_writes = !(cfg->flags & L1_CFG_PROBE_WRITES);
	if (pr == PKT_OPAQUE) {
		/* Might be a write we cannot read: no fill is safe for a while. */
		if (wire_writes)
			invalidate_all(bpf_ktime_get_ns(), cfg->inflight_max_ns);
		return XDP_PASS;
	}
	if (pr != PKT_OK) {
		if (pr == PKT_TRUNCATED)
			stat_inc(L1_STAT_PASS_MALFORMED);
		return XDP_PASS;
	}
	if (pi.dport != cfg->port) {
		stat_inc(L1_STAT_PASS_NOT_MC);
		return XDP_PASS;
	}
	if (pi.proto == IPPROTO_TCP)
		return wire_writes ? handle_tcp(ctx, s, &pi, cfg, bpf_ktime_get_ns()) : XDP_PASS;

	/* UDP: frame header, then one request. */
	__u32 plen = pi.payload_len;
	if (plen < MC_UDP_HDR_LEN) {
		stat_inc(L1_STAT_PASS_MALFORMED);
		return XDP_PASS;
	}
	if (plen > PAYLOAD_MAX) {
		/* A datagram too large to read here may hold any write. */
		if (wire_writes)
			invalidate_all(bpf_ktime_get_ns(), cfg->inflight_max_ns);
		stat_inc(L1_STAT_PASS_TOO_BIG);
		return XDP_PASS;
	}
	if (bpf_xdp_load_bytes(ctx, pi.payload_off, s->in, plen) != 0) {
		if (wire_writes)
			invalidate_all(bpf_ktime_get_ns(), cfg->inflight_max_ns);
		stat_inc(L1_STAT_PASS_MALFORMED);
		return XDP_PASS;
	}
	s->in_len = plen;
	if (s->in[4] != 0 || s->in[5] != 1) {
		/* memcached refuses multi-datagram requests itself. */
		stat_inc(L1_STAT_PASS_MALFORMED);
		return XDP_PASS;
	}
	int why = mc_parse_get(s);
	if (why == 0 && (pi.ext_headers || pi.udp_unanswerable))
		why = L1_STAT_PASS_MALFORMED; /* IP options or IPv6 extension headers, port 0, no IPv6 checksum: not answered here */
	if (why == 0) {
		/* The coarse clock lags by at most a tick; L1's deadlines already
		 * end a second before memcached's. */
		__u64 now = bpf_ktime_get_coarse_ns();
		/* The uprobes alone invalidate, and they die with the daemon:
		 * without its lease, nothing may be answered (nor filled). */
		if (!wire_writes && (__u32)(now >> 20) - cfg->probe_lease > L1_PROBE_LEASE_UNITS) {
			stat_inc(L1_STAT_PASS_NO_LEASE);
			return XDP_PASS;
		}
		return handle_get(ctx, s, &pi, cfg, now);
	}
	stat_inc(why);
	return wire_writes ? handle_udp_writes(s, &pi, cfg, bpf_ktime_get_ns()) : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";
