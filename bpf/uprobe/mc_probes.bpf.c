/* Uprobes on a vanilla memcached 1.6: every miss, store, delete, touch,
 * incr/decr, flush and eviction becomes a struct mc_event in one ring buffer,
 * and every write bumps L1's write generation for its set at the moment
 * memcached applies it (under memcached's item lock), so L1's fill protocol
 * needs no guesswork for writes it never saw on the wire.
 *
 * A uprobe hit is a trap (about 2 µs in the VM this was measured on), so the
 * store path carries as few as possible: the entry of do_store_item (its
 * command) and the call that links the new item inside it (the item, and
 * proof it was stored). Deletes and evictions are caught at their call sites
 * too, so a SET never pays for them; every probed instruction is one the
 * kernel emulates (push, call) rather than single-steps, except the rare
 * flush stores.
 *
 * The loader resolves every address in the binary (symbols, debug file or
 * a prologue-checked table) and passes (address << 8 | register) as the BPF
 * cookie; the probe derives the process's load bias from where it fired.
 *
 * memcached 1.6 item layout (x86_64): exptime @28, nbytes @32 (value +
 * "\r\n"), it_flags @38, nkey @41, data @48: [8-byte CAS if ITEM_CAS] key,
 * NUL, [u32 client flags if ITEM_CFLAGS] value. */
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#define MCACHE_MAPS_PROBE_SUBSET
#include "mcache_maps.bpf.h"
#include "mcache_hash.bpf.h"

char LICENSE[] SEC("license") = "GPL";

#define IT_EXPTIME 28
#define IT_NBYTES 32
#define IT_FLAGS 38
#define IT_NKEY 41
#define IT_DATA 48
#define ITEM_CAS 2
#define ITEM_CHUNKED 32
#define ITEM_CFLAGS 256

#define MC_EVENTS_DEFAULT_BYTES (16 << 20)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, MC_EVENTS_DEFAULT_BYTES);
} mc_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mc_probe_config);
} mc_probe_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mc_probe_stats);
} mc_probe_stats SEC(".maps");

/* Events are built here, then copied to the ring at their real length. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct mc_event);
} mc_event_scratch SEC(".maps");

/* Per-slot counts of the writes applied (see MC_WRITE_SEQ_SLOTS). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MC_WRITE_SEQ_SLOTS + 1);
	__type(key, __u32);
	__type(value, __u32);
} mc_write_seq SEC(".maps");

/* What a function's entry probe leaves for its return probe (or for a
 * function it calls), per thread. */
#define CALL_STORE 1 /* inside do_store_item */
#define CALL_DELTA 2 /* inside do_add_delta */
#define CALL_GET 3   /* item_get / limited_get_locked / item_touch / item_get_locked in flight */
/* mc_call.arg of a CALL_GET: MC_MISS_*, or this for item_get_locked in a delete path. */
#define LOOKUP_DELETE 8
struct mc_call {
	__u64 ptr;   /* STORE: the item; DELTA, GET: the key */
	__u64 buf;   /* DELTA: where memcached writes the new value */
	__u64 bias;  /* the process's load bias */
	__u32 len;   /* DELTA, GET: key length */
	__u32 arg;   /* STORE: comm; DELTA: incr; GET: MC_MISS_* */
	__u32 kind;  /* CALL_* */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct mc_call);
} mc_calls SEC(".maps");

/* Just enough of the kernel's structs for the network-namespace filter (CO-RE). */
struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));
struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));
struct nsproxy {
	struct net *net_ns;
} __attribute__((preserve_access_index));
struct task_struct {
	struct nsproxy *nsproxy;
} __attribute__((preserve_access_index));

static __always_inline void pstat(__u32 idx)
{
	__u32 zero = 0;
	struct mc_probe_stats *st = bpf_map_lookup_elem(&mc_probe_stats, &zero);
	if (st)
		st->counter[idx & (MC_PSTAT_COUNT - 1)]++;
}

/* The probe config, or NULL when this hit belongs to another process. */
static __always_inline struct mc_probe_config *accept(void)
{
	__u32 zero = 0;
	struct mc_probe_config *cfg = bpf_map_lookup_elem(&mc_probe_config, &zero);
	if (!cfg)
		return NULL;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (cfg->target_tgid && tgid != cfg->target_tgid)
		goto other;
	if (cfg->target_netns) {
		struct task_struct *task = (void *)bpf_get_current_task();
		__u32 ino = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
		if (ino != cfg->target_netns)
			goto other;
	}
	return cfg;
other:
	pstat(MC_PSTAT_FILTERED);
	return NULL;
}

/* Load bias of the process from where an entry or instruction probe fired:
 * the cookie is (probed link-time address << 8 | register); the runtime
 * address is the ip (or ip - 1 right after the breakpoint), and a bias is
 * page aligned either way. */
static __always_inline __u64 load_bias(struct pt_regs *ctx)
{
	__u64 at = bpf_get_attach_cookie(ctx) >> 8;
	return (PT_REGS_IP(ctx) - at) & ~0xfffULL;
}

static __always_inline __u32 read_u32(__u64 addr)
{
	__u32 v = 0;
	bpf_probe_read_user(&v, sizeof(v), (void *)addr);
	return v;
}

/* x86-64 register number n of the probed context. */
static __always_inline __u64 reg_value(struct pt_regs *ctx, __u32 reg)
{
	switch (reg) {
	case 0: return ctx->rax;
	case 1: return ctx->rcx;
	case 2: return ctx->rdx;
	case 3: return ctx->rbx;
	case 5: return ctx->rbp;
	case 6: return ctx->rsi;
	case 7: return ctx->rdi;
	case 8: return ctx->r8;
	case 9: return ctx->r9;
	case 10: return ctx->r10;
	case 11: return ctx->r11;
	case 12: return ctx->r12;
	case 13: return ctx->r13;
	case 14: return ctx->r14;
	case 15: return ctx->r15;
	}
	return 0;
}

static __always_inline __u64 fnv1a(const __u8 *key, __u32 len)
{
	__u64 h = L1_FNV_OFFSET;
	for (__u32 i = 0; i < MC_MAX_KEY_LEN; i++) {
		if (i >= len)
			break;
		h = l1_hash_step(h, key[i]);
	}
	return h;
}

/* A write to this key is being applied: bump its set's write generation so
 * no fill in flight completes and no way validated before is served. With
 * set_ttl, keep the key's exact TTL for future fills (exptime_rel is
 * memcached's exptime, 0 = never). */
static __always_inline void l1_write(struct mc_probe_config *cfg, const __u8 *key, __u32 len,
				     __u32 exptime_rel, __u32 now_rel, int set_ttl)
{
	if (!(cfg->flags & MC_PROBE_CFG_L1))
		return;
	__u32 zero = 0;
	struct l1_config *l1 = bpf_map_lookup_elem(&mcache_config, &zero);
	if (!l1 || !(l1->flags & L1_CFG_ENABLED))
		return;
	__u64 h = fnv1a(key, len);
	__u32 idx = set_index(h, l1->set_mask);
	__u32 *wgen = bpf_map_lookup_elem(&mcache_wgen, &idx);
	if (wgen)
		__sync_fetch_and_add(wgen, 1);
	pstat(MC_PSTAT_L1_BUMPS);
	if (!set_ttl)
		return;
	/* memcached's clock ticks once a second and may expire the item up to a
	 * second early: L1 must never outlive it. */
	struct l1_ttl ttl = {};
	if (exptime_rel) {
		__s64 left = (__s64)exptime_rel - (__s64)now_rel - 1;
		if (left <= 0) {
			bpf_map_delete_elem(&mcache_ttl, &h);
			return;
		}
		ttl.expires_ns = bpf_ktime_get_ns() + (__u64)left * 1000000000ULL;
	}
	bpf_map_update_elem(&mcache_ttl, &h, &ttl, BPF_ANY);
}

/* L1 no longer knows when this key expires: it will not cache it until a
 * store says. */
static __always_inline void forget_ttl(struct mc_probe_config *cfg, const __u8 *key, __u32 len)
{
	if (!(cfg->flags & MC_PROBE_CFG_L1))
		return;
	__u64 h = fnv1a(key, len);
	bpf_map_delete_elem(&mcache_ttl, &h);
}

/* Flush: every L1 entry goes (epoch bump), as for a flush_all seen on the wire. */
static __always_inline void l1_flush(struct mc_probe_config *cfg)
{
	if (!(cfg->flags & MC_PROBE_CFG_L1))
		return;
	__u32 zero = 0;
	struct l1_state *st = bpf_map_lookup_elem(&mcache_state, &zero);
	if (st) {
		__sync_fetch_and_add(&st->epoch, 1);
		/* This probe fires just before memcached stores settings.oldest_live;
		 * settings.oldest_cas, which flushes the items stored in the last
		 * second, is stored a few instructions later. A GET on another
		 * worker thread in between still reads such an item, under a ticket
		 * of the new epoch: refuse every fill until its reply has passed,
		 * as the wire path does for a flush_all it sees (found by the soak). */
		struct l1_config *l1 = bpf_map_lookup_elem(&mcache_config, &zero);
		if (l1) {
			__u64 hold = l1->inflight_max_ns > l1->noreply_hold_ns ? l1->inflight_max_ns : l1->noreply_hold_ns;
			__u64 until = bpf_ktime_get_ns() + hold;
			for (int i = 0; i < 8; i++) {
				__u64 cur = st->blocked_until_ns;
				if (cur >= until || __sync_val_compare_and_swap(&st->blocked_until_ns, cur, until) == cur)
					break;
			}
		}
	}
	pstat(MC_PSTAT_L1_BUMPS);
}

static __always_inline struct mc_event *event_begin(__u8 kind, __u8 command)
{
	__u32 zero = 0;
	struct mc_event *ev = bpf_map_lookup_elem(&mc_event_scratch, &zero);
	if (!ev)
		return NULL;
	__u64 id = bpf_get_current_pid_tgid();
	ev->ts_ns = bpf_ktime_get_ns();
	ev->cas = 0;
	ev->number = 0;
	ev->exptime_unix = 0;
	ev->tgid = id >> 32;
	ev->tid = (__u32)id;
	ev->exptime_rel = 0;
	ev->now_rel = 0;
	ev->client_flags = 0;
	ev->value_len = 0;
	ev->write_seq = 0;
	ev->pad32 = 0;
	ev->inline_len = 0;
	ev->kind = kind;
	ev->command = command;
	ev->flags = 0;
	ev->key_len = 0;
	ev->pad = 0;
	return ev;
}

/* memcached's clock: now and the absolute time of exptime_rel. */
static __always_inline void event_clock(struct mc_event *ev, struct mc_probe_config *cfg, __u64 bias)
{
	if (!cfg->current_time || !cfg->process_started) {
		ev->flags |= MC_EVF_NO_CLOCK;
		return;
	}
	ev->now_rel = read_u32(bias + cfg->current_time);
	if (ev->exptime_rel) {
		__s64 started = 0;
		bpf_probe_read_user(&started, sizeof(started), (void *)(bias + cfg->process_started));
		ev->exptime_unix = started + ev->exptime_rel;
	}
}

/* The consumer is woken only once this much is waiting (it also polls on a
 * short timer): a wake-up per event would cost memcached's thread more than
 * the event itself. A miss wakes it at once: a client is waiting for the
 * promotion it may start (misses are few where the cache works). */
#define MC_EVENTS_WAKEUP_BYTES (256 << 10)

/* A write's event takes the next number of its key's slot (a flush: of the
 * flush slot), whether or not the ring has room: a lost event leaves the
 * daemon's count behind, so it never trusts L3 for that slot again until a
 * later write's event catches it up. A miss carries the count as it was, so
 * a promotion can tell that the key was written since. */
static __always_inline void event_write_seq(struct mc_event *ev)
{
	__u32 slot;
	switch (ev->kind) {
	case MC_EV_STORE:
	case MC_EV_DELETE:
	case MC_EV_TOUCH:
	case MC_EV_DELTA:
		slot = set_index(fnv1a(ev->key, ev->key_len), MC_WRITE_SEQ_SLOTS - 1);
		break;
	case MC_EV_FLUSH:
		slot = MC_WRITE_SEQ_FLUSH;
		break;
	case MC_EV_MISS:
		slot = set_index(fnv1a(ev->key, ev->key_len), MC_WRITE_SEQ_SLOTS - 1);
		break;
	default:
		return;
	}
	__u32 *seq = bpf_map_lookup_elem(&mc_write_seq, &slot);
	if (!seq)
		return;
	/* A miss takes no number: it carries the slot's count when it missed. */
	ev->write_seq = ev->kind == MC_EV_MISS ? *seq : __sync_fetch_and_add(seq, 1) + 1;
	ev->flags |= MC_EVF_WRITE_SEQ;
}

static __always_inline void event_send(struct mc_event *ev)
{
	event_write_seq(ev);
	__u32 n = ev->inline_len;
	if (n > MC_EVENT_VALUE_INLINE_MAX)
		n = 0;
	__u64 wake = ev->kind == MC_EV_MISS || bpf_ringbuf_query(&mc_events, BPF_RB_AVAIL_DATA) >= MC_EVENTS_WAKEUP_BYTES
			     ? BPF_RB_FORCE_WAKEUP
			     : BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_output(&mc_events, ev, MC_EVENT_HEADER_LEN + n, wake) == 0) {
		pstat(MC_PSTAT_EMITTED);
		pstat(MC_PSTAT_KIND_BASE + ev->kind);
	} else {
		pstat(MC_PSTAT_LOST);
	}
}

#define LINKED_ITEM 1 /* with its value */
#define STORE_ITEM 2  /* about to be linked: value, no CAS yet */
/* Fills key, flags, exptime, CAS and (when it fits) the value from an item;
 * with_value 0: the key and attributes only. */
static __always_inline int event_item(struct mc_event *ev, __u64 it, int with_value)
{
	__u8 head[56];
	if (bpf_probe_read_user(head, sizeof(head), (void *)it))
		return -1;
	__u32 exptime = *(__u32 *)&head[IT_EXPTIME];
	__s32 nbytes = *(__s32 *)&head[IT_NBYTES];
	__u16 flags = *(__u16 *)&head[IT_FLAGS];
	__u32 nkey = head[IT_NKEY];
	__u64 key = it + IT_DATA;
	if (flags & ITEM_CAS) {
		/* A linked item's CAS; a store's probe fires before do_item_link
		 * assigns it, so there the slot means nothing. */
		if (with_value != STORE_ITEM) {
			ev->cas = *(__u64 *)&head[IT_DATA];
			ev->flags |= MC_EVF_CAS;
		}
		key += 8;
	}
	if (nkey == 0 || nkey > MC_MAX_KEY_LEN)
		return -1;
	if (bpf_probe_read_user(ev->key, nkey & 0xff, (void *)key))
		return -1;
	ev->key_len = nkey;
	ev->exptime_rel = exptime;
	__u64 suffix = key + nkey + 1;
	__u64 data = suffix;
	if (flags & ITEM_CFLAGS) {
		ev->client_flags = read_u32(suffix);
		data += 4;
	}
	if (!with_value)
		return 0;
	__u32 vlen = nbytes >= 2 ? (__u32)nbytes - 2 : 0;
	ev->value_len = vlen;
	if ((flags & ITEM_CHUNKED) || vlen > MC_EVENT_VALUE_INLINE_MAX) {
		ev->flags |= MC_EVF_VALUE_FETCH;
		return 0;
	}
	/* vlen <= MC_EVENT_VALUE_INLINE_MAX here; the mask keeps the verifier sure of it. */
	if (vlen && bpf_probe_read_user(ev->value, vlen & (2 * MC_EVENT_VALUE_INLINE_MAX - 1), (void *)data))
		return -1;
	ev->inline_len = vlen;
	ev->flags |= MC_EVF_VALUE_INLINE;
	return 0;
}

static __always_inline void call_put(__u32 kind, __u64 ptr, __u64 buf, __u32 len, __u32 arg, __u64 bias)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct mc_call call = {.ptr = ptr, .buf = buf, .bias = bias, .len = len, .arg = arg, .kind = kind};
	bpf_map_update_elem(&mc_calls, &id, &call, BPF_ANY);
}

/* ---- store: do_store_item(item *it, int comm, conn *c, uint32_t hv) ----- */

SEC("uprobe")
int mc_store_begin(struct pt_regs *ctx)
{
	if (!accept())
		return 0;
	call_put(CALL_STORE, PT_REGS_PARM1(ctx), 0, 0, (__u32)PT_REGS_PARM2(ctx), load_bias(ctx));
	return 0;
}

/* The calls inside do_store_item that link the stored item: do_item_link(it)
 * for a new key, item_replace(old, it) over an existing one (append/prepend
 * pass the new item holding both parts). They run only when the store
 * succeeds, under the item lock: a bump here orders every GET (one whose
 * ticket predates it is refused; one after waits for the lock and finds
 * the new item). memcached assigns the CAS inside the link, after this. */
SEC("uprobe")
int mc_store_link(struct pt_regs *ctx)
{
	struct mc_probe_config *cfg = accept();
	if (!cfg)
		return 0;
	/* Cookie: address << 8 | command register << 4 | item register. A
	 * command register (non-zero) is one do_store_item keeps `comm` in from
	 * its prologue to every link call (known builds only, see
	 * MemcachedTargets.storeCommandRegister): then its entry carries no
	 * probe, and a SET costs one trap instead of two. */
	__u64 cookie = bpf_get_attach_cookie(ctx);
	__u64 it = reg_value(ctx, cookie & 0xf);
	__u32 comm_reg = (cookie >> 4) & 0xf;
	__u8 command = MC_CMD_LINK;
	if (comm_reg) {
		__u64 comm = reg_value(ctx, comm_reg) & 0xffffffff;
		command = comm <= MC_CMD_CAS ? comm : MC_CMD_LINK;
	} else {
		__u64 id = bpf_get_current_pid_tgid();
		struct mc_call *call = bpf_map_lookup_elem(&mc_calls, &id);
		if (call && call->kind == CALL_STORE) {
			command = call->arg <= MC_CMD_CAS ? call->arg : MC_CMD_LINK;
			bpf_map_delete_elem(&mc_calls, &id);
		}
	}
	struct mc_event *ev = event_begin(MC_EV_STORE, command);
	if (!ev)
		return 0;
	if (event_item(ev, it, STORE_ITEM)) {
		pstat(MC_PSTAT_READ_FAULT);
		return 0;
	}
	event_clock(ev, cfg, load_bias(ctx));
	l1_write(cfg, ev->key, ev->key_len, ev->exptime_rel, ev->now_rel, 1);
	event_send(ev);
	return 0;
}

/* Calls to do_item_unlink(it, hv) / item_unlink(it) in the delete paths
 * (delete, md, binary delete, and the sets whose allocation failed, which
 * drop the old value), under the item lock. Unlinks inside a store
 * (replace) or of dead items (lazy expiry) are other call sites. */
SEC("uprobe")
int mc_delete_call(struct pt_regs *ctx)
{
	struct mc_probe_config *cfg = accept();
	if (!cfg)
		return 0;
	__u64 it = reg_value(ctx, bpf_get_attach_cookie(ctx) & 0xff);
	struct mc_event *ev = event_begin(MC_EV_DELETE, 0);
	if (!ev)
		return 0;
	if (event_item(ev, it, 0)) {
		pstat(MC_PSTAT_READ_FAULT);
		return 0;
	}
	event_clock(ev, cfg, load_bias(ctx));
	l1_write(cfg, ev->key, ev->key_len, 0, 0, 0);
	event_send(ev);
	return 0;
}

/* Calls to do_item_unlink_nolock(it, hv) inside lru_pull_tail: an eviction,
 * unless the item was already dead (expired or flushed). */
SEC("uprobe")
int mc_evict_call(struct pt_regs *ctx)
{
	struct mc_probe_config *cfg = accept();
	if (!cfg)
		return 0;
	__u64 bias = load_bias(ctx);
	__u64 it = reg_value(ctx, bpf_get_attach_cookie(ctx) & 0xff);
	struct mc_event *ev = event_begin(MC_EV_EVICT, 0);
	if (!ev)
		return 0;
	if (event_item(ev, it, LINKED_ITEM)) {
		pstat(MC_PSTAT_READ_FAULT);
		return 0;
	}
	event_clock(ev, cfg, bias);
	if (!(ev->flags & MC_EVF_NO_CLOCK)) {
		if (ev->exptime_rel && ev->exptime_rel <= ev->now_rel)
			return 0; /* expired */
		/* memcached's item_is_flushed(). */
		__u32 oldest = cfg->settings ? read_u32(bias + cfg->settings + MC_SETTINGS_OLDEST_LIVE) : 0;
		__u64 oldest_cas = 0;
		if (cfg->settings)
			bpf_probe_read_user(&oldest_cas, 8, (void *)(bias + cfg->settings + MC_SETTINGS_OLDEST_CAS));
		__u32 time = read_u32(it + 24);
		if (oldest && oldest <= ev->now_rel &&
		    (time <= oldest || (oldest_cas && (ev->flags & MC_EVF_CAS) && ev->cas < oldest_cas)))
			return 0; /* flushed */
	}
	event_send(ev);
	return 0;
}

/* ---- lookups: item_get, limited_get_locked, item_touch ----------------- */

static __always_inline int get_begin_accepted(struct pt_regs *ctx, __u32 source)
{
	__u64 nkey = PT_REGS_PARM2(ctx);
	if (nkey == 0 || nkey > MC_MAX_KEY_LEN)
		return 0;
	call_put(CALL_GET, PT_REGS_PARM1(ctx), 0, (__u32)nkey, source, load_bias(ctx));
	return 0;
}

static __always_inline int get_begin(struct pt_regs *ctx, __u32 source)
{
	if (!accept())
		return 0;
	return get_begin_accepted(ctx, source);
}

static __always_inline int get_end(struct pt_regs *ctx, __u32 source)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct mc_call *call = bpf_map_lookup_elem(&mc_calls, &id);
	if (!call || call->kind != CALL_GET)
		return 0;
	if (call->arg == LOOKUP_DELETE && source == MC_MISS_GET)
		source = LOOKUP_DELETE; /* item_get in a failed set */
	if (call->arg != source)
		return 0;
	struct mc_call c = *call;
	bpf_map_delete_elem(&mc_calls, &id);
	__u32 zero = 0;
	struct mc_probe_config *cfg = bpf_map_lookup_elem(&mc_probe_config, &zero);
	if (!cfg)
		return 0;
	__u64 found = PT_REGS_RC(ctx);
	struct mc_event *ev;
	if (found && source == MC_MISS_TOUCH) {
		ev = event_begin(MC_EV_TOUCH, 0);
		if (!ev || event_item(ev, found, 0))
			return 0;
		event_clock(ev, cfg, c.bias);
		/* After the new exptime is in place: a fill that raced the touch is
		 * refused, later ones see it. */
		l1_write(cfg, ev->key, ev->key_len, ev->exptime_rel, ev->now_rel, 1);
		event_send(ev);
		return 0;
	}
	if (found && source == MC_MISS_GET_LOCKED) {
		/* meta mg with N/R/T returns the item locked and may then change
		 * its exptime in place (inlined, no function to probe): L1 forgets
		 * the key's TTL, so it caches it again only after the next store. */
		ev = event_begin(MC_EV_TOUCH, 0);
		if (!ev || event_item(ev, found, 0))
			return 0;
		l1_write(cfg, ev->key, ev->key_len, 0, 0, 0);
		forget_ttl(cfg, ev->key, ev->key_len);
		return 0;
	}
	if (found)
		return 0;
	/* Nothing found. In a delete path: a delete of a key memcached does not
	 * hold (L3 may hold it, and must not promote it back), under the item
	 * lock like an unlink. Otherwise a GET miss. */
	int deleted = source == LOOKUP_DELETE;
	ev = event_begin(deleted ? MC_EV_DELETE : MC_EV_MISS, deleted ? MC_DELETE_ABSENT : source);
	if (!ev)
		return 0;
	if (bpf_probe_read_user(ev->key, c.len & 0xff, (void *)c.ptr)) {
		pstat(MC_PSTAT_READ_FAULT);
		return 0;
	}
	ev->key_len = c.len;
	event_clock(ev, cfg, c.bias);
	if (deleted)
		l1_write(cfg, ev->key, ev->key_len, 0, 0, 0);
	event_send(ev);
	return 0;
}

/* item *item_get(const char *key, size_t nkey, conn *c, bool do_update): a GET,
 * unless it returns into a failed set (see mc_probe_config.failed_store_lookups). */
SEC("uprobe")
int mc_get_begin(struct pt_regs *ctx)
{
	struct mc_probe_config *cfg = accept();
	if (!cfg)
		return 0;
	if (cfg->failed_store_lookups[0]) {
		__u64 ret = 0;
		/* At the first instruction the return address is on top of the stack. */
		bpf_probe_read_user(&ret, sizeof(ret), (void *)PT_REGS_SP(ctx));
		ret -= load_bias(ctx);
		for (int i = 0; i < MC_FAILED_STORE_LOOKUPS; i++) {
			if (cfg->failed_store_lookups[i] && ret == cfg->failed_store_lookups[i])
				return get_begin_accepted(ctx, LOOKUP_DELETE);
		}
	}
	return get_begin_accepted(ctx, MC_MISS_GET);
}
SEC("uretprobe")
int mc_get_end(struct pt_regs *ctx) { return get_end(ctx, MC_MISS_GET); }

/* item *limited_get_locked(char *key, size_t nkey, conn *c, bool do_update, uint32_t *hv, bool *overflow) */
SEC("uprobe")
int mc_get_locked_begin(struct pt_regs *ctx) { return get_begin(ctx, MC_MISS_GET_LOCKED); }
SEC("uretprobe")
int mc_get_locked_end(struct pt_regs *ctx) { return get_end(ctx, MC_MISS_GET_LOCKED); }

/* item *item_get_locked(const char *key, size_t nkey, conn *c, bool do_update, uint32_t *hv):
 * the lookup of delete, md, binary delete and a failed-alloc ms, and the one
 * inside limited_get_locked (a GET: its own probes report that). */
SEC("uprobe")
int mc_lookup_begin(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct mc_call *call = bpf_map_lookup_elem(&mc_calls, &id);
	if (call && call->kind == CALL_GET && call->arg == MC_MISS_GET_LOCKED)
		return 0;
	return get_begin(ctx, LOOKUP_DELETE);
}
SEC("uretprobe")
int mc_lookup_end(struct pt_regs *ctx) { return get_end(ctx, LOOKUP_DELETE); }

/* item *item_touch(const char *key, size_t nkey, uint32_t exptime, conn *c) */
SEC("uprobe")
int mc_touch_begin(struct pt_regs *ctx) { return get_begin(ctx, MC_MISS_TOUCH); }
SEC("uretprobe")
int mc_touch_end(struct pt_regs *ctx) { return get_end(ctx, MC_MISS_TOUCH); }

/* ---- incr/decr: do_add_delta(conn *c, const char *key, size_t nkey, bool incr,
 *      int64_t delta, char *buf, uint64_t *cas, uint32_t hv, item **it_ret) ----
 * Called under the item lock: the bump at entry orders GETs as for a link. */
SEC("uprobe")
int mc_delta_begin(struct pt_regs *ctx)
{
	struct mc_probe_config *cfg = accept();
	if (!cfg)
		return 0;
	__u64 nkey = PT_REGS_PARM3(ctx);
	if (nkey == 0 || nkey > MC_MAX_KEY_LEN)
		return 0;
	__u8 key[MC_MAX_KEY_LEN + 6];
	if (bpf_probe_read_user(key, nkey & 0xff, (void *)PT_REGS_PARM2(ctx)))
		return 0;
	l1_write(cfg, key, nkey, 0, 0, 0);
	call_put(CALL_DELTA, PT_REGS_PARM2(ctx), ctx->r9 /* 6th argument */, (__u32)nkey,
		 (__u8)PT_REGS_PARM4(ctx), load_bias(ctx));
	return 0;
}

SEC("uretprobe")
int mc_delta_end(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct mc_call *call = bpf_map_lookup_elem(&mc_calls, &id);
	if (!call || call->kind != CALL_DELTA)
		return 0;
	struct mc_call c = *call;
	bpf_map_delete_elem(&mc_calls, &id);
	if (PT_REGS_RC(ctx) != 0) /* OK = 0; NON_NUMERIC, EOM, NOT_FOUND, CAS mismatch */
		return 0;
	__u32 zero = 0;
	struct mc_probe_config *cfg = bpf_map_lookup_elem(&mc_probe_config, &zero);
	if (!cfg)
		return 0;
	struct mc_event *ev = event_begin(MC_EV_DELTA, c.arg ? MC_DELTA_INCR : MC_DELTA_DECR);
	if (!ev)
		return 0;
	if (bpf_probe_read_user(ev->key, c.len & 0xff, (void *)c.ptr))
		return 0;
	ev->key_len = c.len;
	/* buf holds the new value in decimal, NUL-terminated (INCR_MAX_STORAGE_LEN 24). */
	char digits[24] = {};
	bpf_probe_read_user_str(digits, sizeof(digits), (void *)c.buf);
	__u64 v = 0;
	__u32 n = 0;
	for (int i = 0; i < 21; i++) {
		char d = digits[i];
		if (d < '0' || d > '9')
			break;
		v = v * 10 + (d - '0');
		n++;
	}
	ev->number = v;
	ev->value_len = n;
	if (n) {
		__builtin_memcpy(ev->value, digits, 21);
		ev->inline_len = n;
		ev->flags |= MC_EVF_VALUE_INLINE;
	}
	event_clock(ev, cfg, c.bias);
	event_send(ev);
	return 0;
}

/* ---- flush_all: an instruction probe on each store to
 * settings.oldest_live (memcached inlines the flush handlers); the cookie's
 * low byte names the register holding the new value. -------------------- */

SEC("uprobe")
int mc_flush(struct pt_regs *ctx)
{
	struct mc_probe_config *cfg = accept();
	if (!cfg)
		return 0;
	__u64 bias = load_bias(ctx);
	__u32 oldest = (__u32)reg_value(ctx, bpf_get_attach_cookie(ctx) & 0xff);
	l1_flush(cfg);
	struct mc_event *ev = event_begin(MC_EV_FLUSH, 0);
	if (!ev)
		return 0;
	event_clock(ev, cfg, bias);
	/* With CAS on (the default) memcached stores the flush time minus one. */
	__u8 use_cas = 1;
	if (cfg->settings)
		bpf_probe_read_user(&use_cas, 1, (void *)(bias + cfg->settings + MC_SETTINGS_USE_CAS));
	__u32 at = oldest + (use_cas ? 1 : 0);
	ev->exptime_rel = at;
	if (!(ev->flags & MC_EVF_NO_CLOCK)) {
		__s64 started = 0;
		bpf_probe_read_user(&started, sizeof(started), (void *)(bias + cfg->process_started));
		ev->exptime_unix = started + at;
		ev->number = at > ev->now_rel ? at - ev->now_rel : 0;
	}
	event_send(ev);
	return 0;
}

/* Benchmarks only (`cxl-bmc events --bench-empty`): attached at every site in
 * place of the real programs, it measures what the uprobes cost memcached by
 * themselves (trap, or trampoline syscall, and the BPF dispatch). */
SEC("uprobe")
int mc_empty(struct pt_regs *ctx)
{
	return 0;
}

