/* Helpers shared by the XDP ingress and TC egress programs: scratch memory,
 * hashing, number parsing, stats and the L1 set operations (lookup, claim,
 * publish, invalidate) that run under the set's spin lock. */
#ifndef MCACHE_COMMON_BPF_H
#define MCACHE_COMMON_BPF_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "mcache_maps.bpf.h"
#include "mcache_hash.bpf.h"

/* Payloads are copied into per-CPU scratch and parsed there; every index is
 * masked so the verifier sees it in bounds whatever the packet says. */
#define SCRATCH_SIZE 4096
#define SCRATCH_MASK (SCRATCH_SIZE - 1)
#define PAYLOAD_MAX 2048 /* largest payload parsed; larger ones take the safe path */
#define MC_MAX_OPS 32    /* key writes recorded per parsed segment */
#define MC_MAX_TOKENS 24

/* What a parsed write does to L1 (struct mc_op.kind). */
#define MC_OP_INVALIDATE 1 /* a key was written */
#define MC_OP_FLUSH 2      /* flush_all: epoch bump; arg = delay in seconds */
#define MC_OP_BLOCK 3      /* a write whose key we cannot know: block all fills */

/* What the write does to the key's TTL (struct mc_op.ttl_mode). */
#define MC_TTL_KEEP 0   /* unchanged (append, incr, delete) */
#define MC_TTL_SET 1    /* new exptime in arg */
#define MC_TTL_FORGET 2 /* may or may not have changed: forget it (add, cas) */

struct mc_op {
	__u64 hash;
	__s64 arg; /* exptime or flush delay, memcached's units (seconds) */
	__u8 kind;
	__u8 ttl_mode;
	__u8 noreply;
	__u8 pad[5];
};

#define HDR_CAP 128 /* frame headers are copied here before parsing */

struct mcache_scratch {
	__u8 hdr[HDR_CAP];
	__u8 in[SCRATCH_SIZE];
	__u8 out[SCRATCH_SIZE];
	/* parser input/output */
	__u32 in_len;
	__u32 pos;
	__u32 skip;        /* value bytes to skip before the next command */
	__u32 flags;       /* L1_CONN_* for the stream being parsed */
	__u32 partial_off; /* unfinished tail to carry to the next segment */
	__u32 partial_len;
	__u32 nops;
	__u32 ntok;
	__s64 meta_exptime;
	__u16 tok_off[MC_MAX_TOKENS];
	__u16 tok_len[MC_MAX_TOKENS];
	struct mc_op ops[MC_MAX_OPS];
	/* GET keys */
	__u32 nkeys;
	__u32 is_gets;
	__u16 key_off[MC_MAX_GET_KEYS];
	__u16 key_len[MC_MAX_GET_KEYS];
	struct l1_ticket ticket;
	/* sets whose writes await their reply on this stream */
	__u32 npend;
	__u32 pend[MC_MAX_OPS];
	/* A zeroed l1_conn to insert: too big for the BPF stack, and a per-CPU
	 * map may not hold a struct with a spin lock, hence bytes. */
	__u8 conn_init[sizeof(struct l1_conn)] __attribute__((aligned(8)));
};

/* v & m, done in a register the compiler cannot reason about, so the mask
 * the verifier needs is never optimised away. */
#define BOUND(v, m)                                                \
	({                                                         \
		__u64 __b = (v);                                   \
		asm volatile("%0 &= %1" : "+r"(__b) : "i"(m));     \
		__b;                                               \
	})

#ifndef READ_ONCE
#define READ_ONCE(x) (*(const volatile typeof(x) *)&(x))
#endif
#ifndef barrier
#define barrier() asm volatile("" ::: "memory")
#endif

/* Re-reading a way's seq after copying its block must not move before the
 * copy's loads. x86 never reorders loads with older loads, so a plain load
 * will do; elsewhere a fully ordered atomic (BPF has no read barrier), which
 * costs the reader a write to the set's cache line. */
#if defined(__TARGET_ARCH_x86)
#define SEQ_REREAD(p) ({ barrier(); READ_ONCE(*(p)); })
#else
#define SEQ_REREAD(p) __sync_fetch_and_add((p), 0)
#endif

#define IN(s, i) ((s)->in[BOUND((i), SCRATCH_MASK)])
#define OUT(s, i) ((s)->out[BOUND((i), SCRATCH_MASK)])

static __always_inline void stat_add(__u32 idx, __u64 n)
{
	__u32 zero = 0;
	struct l1_stats *st = bpf_map_lookup_elem(&mcache_stats, &zero);
	if (st)
		st->counter[BOUND(idx, L1_STAT_COUNT - 1)] += n;
}

static __always_inline void stat_inc(__u32 idx)
{
	stat_add(idx, 1);
}

static __always_inline struct l1_config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&mcache_config, &zero);
}

static __always_inline struct l1_state *get_state(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&mcache_state, &zero);
}

/* Raises *word to at least v, racing writers included. */
static __always_inline void raise_u64(__u64 *word, __u64 v)
{
	for (int i = 0; i < 4; i++) {
		__u64 cur = *(volatile __u64 *)word;
		if (cur >= v)
			return;
		if (__sync_val_compare_and_swap(word, cur, v) == cur)
			return;
	}
}

/* Refuses every fill for a while: the safe answer when a write may be in
 * flight that we cannot attribute to a key (e.g. a retransmission). */
static __always_inline void block_all_fills(__u64 now, __u64 for_ns)
{
	struct l1_state *st = get_state();
	if (st)
		raise_u64(&st->blocked_until_ns, now + for_ns);
	stat_inc(L1_STAT_GLOBAL_BLOCK);
}

/* A write may have happened to any key (lost stream position, base64 key,
 * an IP fragment we cannot read): drop every entry (epoch bump, as for
 * flush_all) and refuse fills while it may still be in flight. */
static __always_inline void invalidate_all(__u64 now, __u64 for_ns)
{
	struct l1_state *st = get_state();
	if (st) {
		__sync_fetch_and_add(&st->epoch, 1);
		raise_u64(&st->blocked_until_ns, now + for_ns);
	}
	stat_inc(L1_STAT_GLOBAL_BLOCK);
}

/* 64-bit FNV-1a of s->in[off, off+len). */
__noinline __u64 mc_hash(struct mcache_scratch *s, __u32 off, __u32 len)
{
	__u64 h = L1_FNV_OFFSET;
	if (!s)
		return 0;
	for (__u32 i = 0; i < MC_MAX_KEY_LEN; i++) {
		if (i >= len)
			break;
		h = l1_hash_step(h, IN(s, off + i));
	}
	return h;
}

#define MC_BADNUM (-9223372036854775807LL - 1)

/* Parses a decimal in s->in[off, off+len), optionally signed. Returns
 * MC_BADNUM if it is not a plain number (memcached would reject it too). */
__noinline __s64 mc_parse_num(struct mcache_scratch *s, __u32 off, __u32 len, __u32 allow_sign)
{
	__s64 v = 0;
	int neg = 0;
	if (!s || len == 0 || len > 19)
		return MC_BADNUM;
	for (__u32 i = 0; i < 20; i++) {
		if (i >= len)
			break;
		__u8 c = IN(s, off + i);
		if (i == 0 && c == '-' && allow_sign && len > 1) {
			neg = 1;
			continue;
		}
		if (c < '0' || c > '9')
			return MC_BADNUM;
		v = v * 10 + (c - '0');
	}
	return neg ? -v : v;
}

/* memcached exptime (seconds; relative up to 30 days, else a unix time;
 * negative = already expired) to a CLOCK_MONOTONIC deadline. One second is
 * taken off because memcached's clock ticks once a second and may expire
 * the item that much early; L1 must never outlive it. Returns 0 for never,
 * 1 for already expired. */
static __always_inline __u64 exptime_to_deadline(__s64 exptime, __u64 now, struct l1_config *cfg)
{
	const __s64 month = 60 * 60 * 24 * 30;
	__s64 rel;
	if (exptime == 0)
		return 0;
	if (exptime < 0)
		return 1;
	if (exptime > month) {
		__s64 now_real_s = (__s64)((now + (__u64)cfg->realtime_offset_ns) / 1000000000ULL);
		rel = exptime - now_real_s;
	} else {
		rel = exptime;
	}
	if (rel <= 1)
		return 1;
	return now + (__u64)(rel - 1) * 1000000000ULL;
}

/* Ways of a size class: [first, first + count). */
static __always_inline void class_ways(__u32 cls, __u32 *first, __u32 *count)
{
	if (cls == L1_CLASS_SMALL) {
		*first = 0;
		*count = L1_SMALL_WAYS;
	} else if (cls == L1_CLASS_MEDIUM) {
		*first = L1_SMALL_WAYS;
		*count = L1_MEDIUM_WAYS;
	} else {
		*first = L1_SMALL_WAYS + L1_MEDIUM_WAYS;
		*count = L1_LARGE_WAYS;
	}
}

/* The block bytes of (set, way). */
static __always_inline void *block_of(__u32 set, __u32 way)
{
	__u32 idx;
	if (way < L1_SMALL_WAYS) {
		idx = set * L1_SMALL_WAYS + way;
		return bpf_map_lookup_elem(&mcache_small, &idx);
	}
	if (way < L1_SMALL_WAYS + L1_MEDIUM_WAYS) {
		idx = set * L1_MEDIUM_WAYS + (way - L1_SMALL_WAYS);
		return bpf_map_lookup_elem(&mcache_medium, &idx);
	}
	idx = set * L1_LARGE_WAYS + (way - L1_SMALL_WAYS - L1_MEDIUM_WAYS);
	return bpf_map_lookup_elem(&mcache_large, &idx);
}

/* A write to the key with this hash: drop its block, bump the generation so
 * no GET already in flight may fill, and (for a write that will be answered)
 * count it pending until its reply passes egress. */
static __always_inline void set_invalidate(struct l1_set *set, __u64 hash, __u64 now,
					   struct l1_config *cfg, int noreply)
{
	bpf_spin_lock(&set->lock);
	set->gen++;
	for (int w = 0; w < L1_WAYS; w++) {
		if (set->ways[w].key_hash == hash && set->ways[w].state != L1_WAY_EMPTY) {
			set->ways[w].state = L1_WAY_EMPTY;
			set->ways[w].seq++;
		}
	}
	if (noreply) {
		if (set->blocked_until_ns < now + cfg->noreply_hold_ns)
			set->blocked_until_ns = now + cfg->noreply_hold_ns;
	} else {
		/* A leaked count (its release never came) expires with the deadline. */
		if (set->pending && now > set->pending_deadline_ns)
			set->pending = 0;
		set->pending++;
		set->pending_deadline_ns = now + cfg->inflight_max_ns;
	}
	bpf_spin_unlock(&set->lock);
}

/* A pending write of this set is settled (its reply passed egress, or its
 * stream is gone): bump the generation, drop the pending count, and refuse
 * fills for hold_ns more (pipelined commands memcached answers before
 * applying the next one; or a stream whose fate we no longer follow). */
static __always_inline void set_release(struct l1_set *set, __u64 now, __u64 hold_ns)
{
	bpf_spin_lock(&set->lock);
	set->gen++;
	if (set->pending)
		set->pending--;
	if (set->blocked_until_ns < now + hold_ns)
		set->blocked_until_ns = now + hold_ns;
	bpf_spin_unlock(&set->lock);
}

/* The longest a write may still be in flight unseen. */
static __always_inline __u64 max_hold(struct l1_config *cfg)
{
	return cfg->inflight_max_ns > cfg->noreply_hold_ns ? cfg->inflight_max_ns : cfg->noreply_hold_ns;
}

/* Takes a stream's pending sets and releases them: all of them, or only
 * once every byte of its writes has reached memcached (rcv_nxt >= write_end),
 * since only then can a reply follow them. Returns how many. */
static __always_inline __u32 conn_release_pending(struct l1_conn *conn, int all, __u64 now, __u64 hold_ns)
{
	__u32 sets[L1_CONN_PENDING] = {};
	__u32 n = 0;
	bpf_spin_lock(&conn->lock);
	if (conn->npending && (all || (__s32)(conn->rcv_nxt - conn->write_end) >= 0)) {
		n = conn->npending;
		for (int i = 0; i < L1_CONN_PENDING; i++)
			sets[i] = conn->pending_set[i];
		conn->npending = 0;
	}
	bpf_spin_unlock(&conn->lock);
	for (int i = 0; i < L1_CONN_PENDING; i++) {
		if (i >= n)
			break;
		struct l1_set *set = bpf_map_lookup_elem(&mcache_sets, &sets[i]);
		if (set)
			set_release(set, now, hold_ns);
	}
	return n;
}

static __always_inline struct l1_set *set_for_hash(__u64 hash, struct l1_config *cfg, __u32 *idx)
{
	*idx = set_index(hash, cfg->set_mask);
	return bpf_map_lookup_elem(&mcache_sets, idx);
}

#endif
