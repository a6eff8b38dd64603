// SPDX-License-Identifier: GPL-2.0
/* L1 egress: watches memcached's replies leaving the host.
 *  - A reply on a stream with writes in flight releases them (memcached
 *    answers a write only after applying it).
 *  - A UDP GET reply fills L1 with each VALUE block, but only under a
 *    ticket taken at ingress whose key generations are unchanged: a reply
 *    that may predate a write never reaches the cache.
 * The packet itself always continues unchanged (TC_ACT_OK). */
#include <linux/pkt_cls.h>
#include "mcache_packet.bpf.h"
#include "mcache_writes.bpf.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mcache_scratch);
} tc_scratch SEC(".maps");

/* ---- release of in-flight writes ---------------------------------------- */

static __always_inline void handle_reply_release(struct pkt_info *pi, struct l1_config *cfg, __u64 now)
{
	struct l1_conn_key key = {};
	__builtin_memcpy(key.addr, pi->daddr, 16);
	key.port = pi->dport;
	key.proto = pi->proto == IPPROTO_TCP ? L1_PROTO_TCP : L1_PROTO_UDP;
	struct l1_conn *conn = bpf_map_lookup_elem(&mcache_conns, &key);
	if (!conn)
		return;
	int closing = pi->proto == IPPROTO_TCP && (pi->tcp_flags & (TCPF_FIN | TCPF_RST));
	if (pi->payload_len || closing)
		stat_add(L1_STAT_RELEASE, conn_release_pending(conn, closing, now, cfg->hold_ns));
	/* A UDP peer has no stream to follow: once its writes are settled its
	 * entry goes, or every client port that ever wrote would keep one and
	 * fill the map (then each new writer empties L1). A write racing this
	 * delete loses its release and stays pending until inflight_max: safe. */
	if (closing || (key.proto == L1_PROTO_UDP && pi->payload_len && !READ_ONCE(conn->npending)))
		bpf_map_delete_elem(&mcache_conns, &key);
}

/* ---- fill ---------------------------------------------------------------- */

struct fill_ctx {
	struct mcache_scratch *s;
	struct l1_config *cfg;
	__u64 now;
	__u32 epoch;
	__u32 pos;
};

/* Picks the way to fill in the class's ways, under the set lock: the key's
 * own way, an empty one, a dead one (expired or flushed), else CLOCK. */
static __always_inline int pick_victim(struct l1_set *set, __u32 first, __u32 count, __u64 hash,
				       __u32 epoch, __u64 now)
{
	for (__u32 i = 0; i < L1_SMALL_WAYS; i++) {
		__u32 w = first + i;
		if (i >= count || w >= L1_WAYS)
			break;
		if (set->ways[w].key_hash == hash && set->ways[w].state != L1_WAY_EMPTY)
			return set->ways[w].state == L1_WAY_FILLING ? -1 : (int)w;
	}
	for (__u32 i = 0; i < L1_SMALL_WAYS; i++) {
		__u32 w = first + i;
		if (i >= count || w >= L1_WAYS)
			break;
		struct l1_way *wy = &set->ways[w];
		if (wy->state == L1_WAY_EMPTY ||
		    (wy->state == L1_WAY_VALID &&
		     (wy->epoch != epoch || (wy->expires_ns && wy->expires_ns <= now))))
			return w;
	}
	for (__u32 i = 0; i < 2 * L1_SMALL_WAYS; i++) {
		if (i >= 2 * count)
			break;
		__u32 w = first + (set->hand & (count - 1));
		set->hand++;
		if (w >= L1_WAYS)
			break;
		struct l1_way *wy = &set->ways[w];
		if (wy->state != L1_WAY_VALID)
			continue;
		if (wy->referenced) {
			wy->referenced = 0;
			continue;
		}
		return w;
	}
	return -1;
}

/* The set's generation as a ticket records it: ingress writes + uprobe
 * writes. wgen is looked up before the set lock is taken (no helper calls
 * under a spin lock) and read under it. */
static __always_inline __u32 set_gen(struct l1_set *set, __u32 *wgen)
{
	return set->gen + (wgen ? READ_ONCE(*wgen) : 0);
}

static __always_inline int fill_allowed(struct l1_set *set, __u32 *wgen, __u32 gen, __u64 now)
{
	return set_gen(set, wgen) == gen && !(set->pending && now <= set->pending_deadline_ns) &&
	       now >= set->blocked_until_ns;
}

/* Under the set lock, before a way is claimed: if a uprobe bumped the write
 * generation since the ways were validated, some key of the set was written
 * (which one is not known): drop them all. */
static __always_inline void revalidate_ways(struct l1_set *set, __u32 *wgenp)
{
	__u32 wgen = wgenp ? READ_ONCE(*wgenp) : 0;
	if (set->valid_wgen == wgen)
		return;
	for (int w = 0; w < L1_WAYS; w++) {
		if (set->ways[w].state != L1_WAY_EMPTY) {
			set->ways[w].state = L1_WAY_EMPTY;
			set->ways[w].seq++;
		}
	}
	set->valid_wgen = wgen;
}

/* Stores one block s->in[pos, pos + blen) for the key with this hash. */
static __always_inline void fill_block(struct fill_ctx *c, __u64 hash, __u32 pos, __u32 blen, __u32 hlen,
				       __u32 clen, __u32 klen)
{
	struct mcache_scratch *s = c->s;
	__u64 now = c->now;

	/* The ticket must cover this key: its generation then is the bar. */
	__u32 gen = 0;
	int found = 0;
	for (__u32 k = 0; k < MC_MAX_GET_KEYS; k++) {
		if (k >= s->ticket.nkeys)
			break;
		if (s->ticket.key_hash[k] == hash) {
			gen = s->ticket.gen[k];
			found = 1;
			break;
		}
	}
	if (!found) {
		stat_inc(L1_STAT_FILL_NO_TICKET);
		return;
	}

	/* memcached's reply carries no exptime: L1 uses what it saw written. */
	__u64 expires;
	struct l1_ttl *ttl = bpf_map_lookup_elem(&mcache_ttl, &hash);
	if (ttl) {
		expires = ttl->expires_ns;
		if (expires && expires <= now) {
			stat_inc(L1_STAT_FILL_NO_TTL);
			return;
		}
	} else if (c->cfg->unknown_ttl_ns) {
		expires = now + c->cfg->unknown_ttl_ns;
	} else {
		stat_inc(L1_STAT_FILL_NO_TTL);
		return;
	}

	__u32 cls = blen <= L1_SMALL_BLOCK ? L1_CLASS_SMALL
		  : blen <= L1_MEDIUM_BLOCK ? L1_CLASS_MEDIUM
		  : blen <= L1_LARGE_BLOCK ? L1_CLASS_LARGE : 99;
	if (cls == 99) {
		stat_inc(L1_STAT_FILL_SKIPPED);
		return;
	}
	__u32 first, count;
	class_ways(cls, &first, &count);

	__u32 sidx;
	struct l1_set *set = set_for_hash(hash, c->cfg, &sidx);
	if (!set)
		return;

	__u32 *wgen = bpf_map_lookup_elem(&mcache_wgen, &sidx);

	/* Claim a way: from here until publish it is FILLING, never served. */
	int way;
	__u32 my_seq = 0;
	bpf_spin_lock(&set->lock);
	if (!fill_allowed(set, wgen, gen, now)) {
		bpf_spin_unlock(&set->lock);
		stat_inc(L1_STAT_FILL_REFUSED);
		return;
	}
	revalidate_ways(set, wgen);
	way = pick_victim(set, first, count, hash, c->epoch, now);
	if (way >= 0) {
		struct l1_way *wy = &set->ways[way & (L1_WAYS - 1)];
		wy->state = L1_WAY_FILLING;
		wy->key_hash = hash;
		set->tag[way & (L1_WAYS - 1)] = (__u32)(hash >> 32);
		wy->seq++;
		my_seq = wy->seq;
	}
	bpf_spin_unlock(&set->lock);
	if (way < 0) {
		stat_inc(L1_STAT_FILL_BUSY);
		return;
	}

	void *blk = block_of(sidx, way);
	long copied = -1;
	if (blk) {
		void *src = &s->in[BOUND(pos, SCRATCH_MASK >> 1)];
		if (cls == L1_CLASS_SMALL && blen <= L1_SMALL_BLOCK && blen)
			copied = bpf_probe_read_kernel(blk, blen, src);
		else if (cls == L1_CLASS_MEDIUM && blen <= L1_MEDIUM_BLOCK && blen)
			copied = bpf_probe_read_kernel(blk, blen, src);
		else if (cls == L1_CLASS_LARGE && blen <= L1_LARGE_BLOCK && blen)
			copied = bpf_probe_read_kernel(blk, blen, src);
	}

	/* Publish only if nothing was written to the key meanwhile. */
	int published = 0;
	bpf_spin_lock(&set->lock);
	struct l1_way *wy = &set->ways[way & (L1_WAYS - 1)];
	if (wy->seq == my_seq && wy->state == L1_WAY_FILLING) {
		if (copied == 0 && fill_allowed(set, wgen, gen, now)) {
			wy->state = L1_WAY_VALID;
			wy->expires_ns = expires;
			wy->epoch = c->epoch;
			wy->block_len = blen;
			wy->hdr_len = hlen;
			wy->cas_len = clen;
			wy->key_len = klen;
			wy->referenced = 0;
			published = 1;
		} else {
			wy->state = L1_WAY_EMPTY;
		}
		wy->seq++;
	}
	bpf_spin_unlock(&set->lock);
	stat_inc(published ? L1_STAT_FILL : L1_STAT_FILL_REFUSED);
}

/* Parses the VALUE block at c->pos ("VALUE <key> <flags> <bytes>[ <cas>]\r\n
 * <data>\r\n") and fills it. Stops at "END\r\n" or anything unexpected. */
static long fill_cb(__u32 i, struct fill_ctx *c)
{
	struct mcache_scratch *s = c->s;
	__u32 pos = c->pos, len = s->in_len;
	if (pos + 5 > len || pos >= PAYLOAD_MAX)
		return 1;
	if (IN(s, pos) == 'E' && IN(s, pos + 1) == 'N' && IN(s, pos + 2) == 'D')
		return 1;
	if (IN(s, pos) != 'V' || IN(s, pos + 1) != 'A' || IN(s, pos + 2) != 'L' || IN(s, pos + 3) != 'U' ||
	    IN(s, pos + 4) != 'E' || IN(s, pos + 5) != ' ') {
		stat_inc(L1_STAT_FILL_SKIPPED);
		return 1;
	}
	int nl = mc_find_nl(s, pos, len);
	if (nl < 0 || nl < pos + 2 || IN(s, nl - 1) != '\r')
		return 1;
	int ntok = mc_tokenize(s, pos, nl - 1);
	if (ntok != 4 && ntok != 5)
		return 1;
	__u32 klen = tok_len(s, 1);
	__s64 bytes = mc_parse_num(s, tok_off(s, 3), tok_len(s, 3), 0);
	if (klen == 0 || klen > MC_MAX_KEY_LEN || bytes < 0 || bytes > MC_UDP_MAX_PAYLOAD ||
	    mc_parse_num(s, tok_off(s, 2), tok_len(s, 2), 0) < 0 ||
	    (ntok == 5 && mc_parse_num(s, tok_off(s, 4), tok_len(s, 4), 0) < 0))
		return 1;
	__u32 data = nl + 1;
	__u32 end = data + (__u32)bytes; /* the value's "\r\n" starts here */
	if (end + 2 > len || IN(s, end) != '\r' || IN(s, end + 1) != '\n')
		return 1;
	__u32 hdr_end = tok_off(s, 3) + tok_len(s, 3);
	__u32 hlen = hdr_end - pos;
	__u32 clen = ntok == 5 ? tok_off(s, 4) + tok_len(s, 4) - hdr_end : 0;
	__u32 blen = end + 2 - pos;
	c->pos = end + 2;
	if (clen > 255)
		return 1;
	fill_block(c, mc_hash(s, tok_off(s, 1), klen), pos, blen, hlen, clen, klen);
	return 0;
}

static __always_inline void handle_get_reply(struct __sk_buff *skb, struct mcache_scratch *s,
					     struct pkt_info *pi, struct l1_config *cfg, __u64 now)
{
	__u32 plen = pi->payload_len;
	if (plen < MC_UDP_HDR_LEN + 5 || plen > PAYLOAD_MAX)
		return;
	if (bpf_skb_load_bytes(skb, pi->payload_off, s->in, plen) != 0)
		return;
	s->in_len = plen;
	struct l1_ticket_key tk = {};
	__builtin_memcpy(tk.addr, pi->daddr, 16);
	tk.port = pi->dport;
	tk.req_id = (__u16)s->in[1] << 8 | s->in[0];
	struct l1_ticket *t = bpf_map_lookup_elem(&mcache_tickets, &tk);
	if (!t) {
		stat_inc(L1_STAT_FILL_NO_TICKET);
		return;
	}
	s->ticket = *t;
	/* memcached 1.6 sends each item of a multi-get as its own message
	 * (each "datagram 0 of 1"), END riding on the last: the ticket serves
	 * every message until the one that ends the reply. */
	if (plen >= MC_UDP_HDR_LEN + 5 && IN(s, plen - 5) == 'E' && IN(s, plen - 4) == 'N' &&
	    IN(s, plen - 3) == 'D' && IN(s, plen - 2) == '\r' && IN(s, plen - 1) == '\n')
		bpf_map_delete_elem(&mcache_tickets, &tk);
	if (s->in[MC_UDP_HDR_LEN] != 'V')
		return; /* every key missed ("END"), or an error: nothing to fill */

	if (s->in[2] != 0 || s->in[3] != 0 || s->in[4] != 0 || s->in[5] != 1) {
		/* Part of a multi-datagram reply: too big for one L1 answer. */
		stat_inc(L1_STAT_FILL_SKIPPED);
		return;
	}
	struct l1_state *st = get_state();
	if (!st)
		return;
	if (st->epoch != s->ticket.epoch || now < st->blocked_until_ns) {
		stat_inc(L1_STAT_FILL_REFUSED);
		return;
	}
	struct fill_ctx c = { .s = s, .cfg = cfg, .now = now, .epoch = s->ticket.epoch, .pos = MC_UDP_HDR_LEN };
	bpf_loop(MC_MAX_GET_KEYS, fill_cb, &c, 0);
}

SEC("tc")
int tc_mcache_fill(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct mcache_scratch *s = bpf_map_lookup_elem(&tc_scratch, &zero);
	struct l1_config *cfg = get_config();
	if (!s || !cfg || !(cfg->flags & L1_CFG_ENABLED))
		return TC_ACT_OK;

	__u32 len = skb->len;
	__u32 cap = len >= HDR_CAP ? HDR_CAP : BOUND(len, HDR_CAP - 1);
	__builtin_memset(s->hdr, 0, HDR_CAP);
	if (cap < 14 || bpf_skb_load_bytes(skb, 0, s->hdr, cap) != 0)
		return TC_ACT_OK;
	struct pkt_info pi = {};
	if (parse_headers(s->hdr, HDR_CAP, len, &pi) != PKT_OK || pi.sport != cfg->port)
		return TC_ACT_OK;

	__u64 now = bpf_ktime_get_ns();
	handle_reply_release(&pi, cfg, now);
	if (pi.proto == IPPROTO_UDP)
		handle_get_reply(skb, s, &pi, cfg, now);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
