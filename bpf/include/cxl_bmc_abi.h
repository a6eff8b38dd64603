/* cxl-bmc ABI: every struct, map name and constant shared by the BPF programs
 * and the Swift side. This header is the single source of truth: the BPF C
 * includes it directly, Swift imports it as the CXLBMCABI module.
 *
 * Rules: fixed-width __u* fields, explicit padding, no bitfields, bools or
 * enum-typed fields. Sizes are pinned by _Static_assert here and by a Swift
 * MemoryLayout test.
 */
#ifndef CXL_BMC_ABI_H
#define CXL_BMC_ABI_H

#include <linux/types.h>
#include <linux/bpf.h> /* struct bpf_spin_lock */

#define CXLBMC_ABI_VERSION 1

/* ---- memcached protocol limits ------------------------------------------ */

#define MC_DEFAULT_PORT 11211
/* memcached's UDP frame header: request id, sequence, total datagrams, reserved. */
#define MC_UDP_HDR_LEN 8
/* memcached's UDP_MAX_PAYLOAD_SIZE: one reply datagram, frame header included. */
#define MC_UDP_MAX_PAYLOAD 1400
#define MC_MAX_KEY_LEN 250
/* A GET with more keys than this is passed to memcached untouched. */
#ifndef MC_MAX_GET_KEYS
#define MC_MAX_GET_KEYS 16
#endif

/* ---- L1: set-associative cache with size classes ------------------------ */

/* Each set has L1_WAYS ways; the ways are split by size class so that small
 * values do not pay for the largest slot. A "block" is the exact bytes
 * memcached sends for one hit: "VALUE <key> <flags> <bytes>[ <cas>]\r\n<data>\r\n". */
#define L1_WAYS 8
#define L1_SMALL_WAYS 4  /* ways 0..3 */
#define L1_MEDIUM_WAYS 2 /* ways 4..5 */
#define L1_LARGE_WAYS 2  /* ways 6..7 */
#define L1_SMALL_BLOCK 256
#define L1_MEDIUM_BLOCK 640
/* Largest block that fits one datagram: 1400 - frame header - "END\r\n". */
#define L1_LARGE_BLOCK (MC_UDP_MAX_PAYLOAD - MC_UDP_HDR_LEN - 5)

#define L1_CLASS_SMALL 0
#define L1_CLASS_MEDIUM 1
#define L1_CLASS_LARGE 2
#define L1_NUM_CLASSES 3

/* l1_way.state */
#define L1_WAY_EMPTY 0
#define L1_WAY_FILLING 1 /* claimed by a fill, data being copied; not servable */
#define L1_WAY_VALID 2

/* Metadata of one cached block. Protected by the owning set's spin lock; the
 * block bytes live in the class's data map at (set * ways_of_class + way). */
struct l1_way {
	__u64 key_hash;   /* 64-bit FNV-1a of the key */
	__u64 expires_ns; /* CLOCK_MONOTONIC ns after which this is a miss; 0 = never */
	__u32 epoch;      /* flush epoch at fill; an older epoch is a miss */
	__u32 seq;        /* bumped on every change: readers re-check it after copying */
	__u16 block_len;  /* bytes of the whole block */
	__u16 hdr_len;    /* bytes of "VALUE <key> <flags> <bytes>" */
	__u8 cas_len;     /* bytes of " <cas>" after the header; 0 = CAS unknown */
	__u8 key_len;
	__u8 state;       /* L1_WAY_* */
	__u8 referenced;  /* CLOCK reference bit */
};

struct l1_set {
	struct bpf_spin_lock lock;
	__u32 gen;     /* bumped by every write to a key of this set seen at ingress */
	__u16 pending; /* writes seen at ingress whose reply has not passed egress */
	__u16 hand;    /* CLOCK hand */
	/* mcache_wgen[set] when the ways were last validated: the uprobes bump
	 * mcache_wgen (they cannot take this set's lock), and a way is servable
	 * only while the two agree. */
	__u32 valid_wgen;
	__u64 blocked_until_ns;    /* no fill before this (noreply writes, releases) */
	__u64 pending_deadline_ns; /* after this, pending writes are presumed applied */
	/* The high half of each way's key_hash, written with it by a fill: a
	 * GET reads this line to find the way instead of every way's own line.
	 * An emptied way keeps its tag (its state says it is empty). */
	__u32 tag[L1_WAYS];
	struct l1_way ways[L1_WAYS];
};

/* Block storage, one map per size class. */
struct l1_block_small { __u8 data[L1_SMALL_BLOCK]; };
struct l1_block_medium { __u8 data[L1_MEDIUM_BLOCK]; };
struct l1_block_large { __u8 data[L1_LARGE_BLOCK + 1]; /* +1: even size */ };

/* ---- fill protocol ------------------------------------------------------- */

/* A UDP GET miss takes a ticket; memcached's reply may fill L1 only if every
 * key's set generation is unchanged since the ticket was taken. */
struct l1_ticket_key {
	__u8 addr[16]; /* client address; IPv4 as ::ffff:a.b.c.d */
	__u16 port;    /* client UDP port, network order */
	__u16 req_id;  /* memcached UDP request id, network order */
};

struct l1_ticket {
	__u64 taken_ns;
	__u32 epoch;
	__u32 nkeys;
	__u64 key_hash[MC_MAX_GET_KEYS];
	__u32 gen[MC_MAX_GET_KEYS];
};

/* TTL learned from the writes seen at ingress, keyed by key hash. memcached's
 * GET reply carries no exptime, so L1 only caches keys whose TTL it saw
 * written (or, if configured, for at most l1_config.unknown_ttl_ns). */
struct l1_ttl {
	__u64 expires_ns; /* 0 = never */
};

/* ---- ingress write tracking ---------------------------------------------- */

#define L1_CONN_PENDING 8  /* sets remembered per connection */
#define L1_PARTIAL_MAX 320 /* an unfinished command line carried to the next segment */

/* l1_conn.flags */
#define L1_CONN_DESYNC 1   /* stream position lost: each of its segments empties L1 and blocks fills */
#define L1_CONN_BINARY 2   /* binary protocol connection */
#define L1_CONN_OVERFLOW 4 /* parse-time only: more writes in one segment than MC_MAX_OPS (empties L1) */
#define L1_CONN_FRESH 8    /* SYN seen, no payload yet: the first byte picks text or binary */
#define L1_CONN_SKIPLINE 16 /* inside an over-long read-only line: skip to its newline */

#define L1_PROTO_TCP 6
#define L1_PROTO_UDP 17

struct l1_conn_key {
	__u8 addr[16]; /* client address; IPv4 as ::ffff:a.b.c.d */
	__u16 port;    /* client port, network order */
	__u16 proto;   /* L1_PROTO_* */
};

/* One client connection (or UDP peer) whose writes are in flight. */
struct l1_conn {
	struct bpf_spin_lock lock;
	__u32 flags;
	__u32 rcv_nxt;      /* next expected TCP sequence number */
	__u32 skip;         /* value bytes still to come before the next command */
	__u32 write_end;    /* sequence just past the last write seen (release needs rcv_nxt >= it) */
	__u32 npending;
	__u32 pending_set[L1_CONN_PENDING];
	__u64 last_ns;
	__u16 partial_len;
	__u16 pad;
	__u32 busy;         /* set while one CPU parses this stream */
	__u8 partial[L1_PARTIAL_MAX];
};

/* ---- configuration and global state -------------------------------------- */

/* l1_config.flags */
#define L1_CFG_ENABLED 1
/* memcached's writes are reported by its uprobes (bpf/uprobe), which bump
 * mcache_wgen as memcached applies them: ingress skips write tracking. */
#define L1_CFG_PROBE_WRITES 2
/* With L1_CFG_PROBE_WRITES, the uprobes (held by the attach daemon) are the only write tracking: GETs
 * are answered only while the daemon renews probe_lease (every second). A daemon killed with -9 takes
 * its uprobes with it and leaves XDP attached; after this many units (~2.6 s) L1 answers nothing
 * (and takes no tickets, so fills nothing) until a new attach flushes it. */
#define L1_PROBE_LEASE_UNITS 2500u

struct l1_config {
	__u16 port;          /* memcached port, network order */
	__u16 pad0;
	__u32 flags;         /* L1_CFG_* */
	__u32 set_mask;      /* number of sets - 1 (power of two) */
	__u32 probe_lease;   /* with L1_CFG_PROBE_WRITES: CLOCK_MONOTONIC >> 20 (~1.05 ms units) when the daemon last renewed it */
	__u64 unknown_ttl_ns; /* cache keys of unknown TTL this long; 0 = never cache them */
	__u64 hold_ns;        /* fills refused this long after a write is released */
	__u64 noreply_hold_ns; /* ... and after a write that gets no reply */
	__u64 inflight_max_ns; /* a write with no reply by then is presumed applied */
	__s64 realtime_offset_ns; /* CLOCK_REALTIME - CLOCK_MONOTONIC, for absolute exptimes */
};

struct l1_state {
	__u32 epoch;    /* flush_all epoch */
	__u32 pad;
	__u64 blocked_until_ns; /* no fill of any key before this */
};

/* ---- statistics (per-CPU, summed by the CLI) ----------------------------- */

#define L1_STAT_GET_SEEN 0          /* UDP get/gets requests seen at ingress */
#define L1_STAT_HIT 1               /* answered from L1 with XDP_TX */
#define L1_STAT_MISS 2              /* at least one key missed: passed on */
#define L1_STAT_FILL 3              /* blocks stored by egress */
#define L1_STAT_FILL_REFUSED 4      /* fills refused as unsafe (write since GET) */
#define L1_STAT_FILL_NO_TICKET 5    /* replies with no matching ticket */
#define L1_STAT_FILL_NO_TTL 6       /* not cached: TTL unknown */
#define L1_STAT_FILL_SKIPPED 7      /* replies not cacheable (multi-datagram, errors) */
#define L1_STAT_INVALIDATE 8        /* key writes seen at ingress */
#define L1_STAT_FLUSH 9             /* flush_all seen */
#define L1_STAT_RELEASE 10          /* in-flight writes released by their reply */
#define L1_STAT_PASS_NOT_MC 11      /* not for memcached: passed */
#define L1_STAT_PASS_MALFORMED 12   /* malformed or truncated memcached packet */
#define L1_STAT_PASS_TOO_BIG 13     /* answer would not fit one datagram */
#define L1_STAT_PASS_NOT_GET 14     /* other memcached requests */
#define L1_STAT_PASS_TOO_MANY_KEYS 15
#define L1_STAT_DESYNC 16           /* TCP stream position lost: fills blocked */
#define L1_STAT_HIT_RACE 17         /* hit lost to a concurrent write while copying */
#define L1_STAT_TCP_SEGMENTS 18     /* TCP payload segments parsed for writes */
#define L1_STAT_RETRANSMIT 19       /* TCP retransmissions: all fills blocked briefly */
#define L1_STAT_GLOBAL_BLOCK 20     /* writes L1 could not attribute to a key: all fills blocked briefly */
#define L1_STAT_FILL_BUSY 21        /* fill skipped: no way free in the set */
#define L1_STAT_PASS_NO_LEASE 22    /* uprobes in charge but the daemon's lease ran out: passed */
#define L1_STAT_PASS_BAD_CHECKSUM 23 /* a GET L1 could answer whose IPv4 or UDP checksum is wrong: passed (the kernel drops it) */
#define L1_STAT_COUNT 32 /* a power of two: indices are masked */

struct l1_stats {
	__u64 counter[L1_STAT_COUNT];
};

/* ---- map and program names, shared with the Swift loader ------------------ */

#define L1_MAP_CONFIG "mcache_config"
#define L1_MAP_STATE "mcache_state"
#define L1_MAP_STATS "mcache_stats"
#define L1_MAP_SETS "mcache_sets"
#define L1_MAP_SMALL "mcache_small"
#define L1_MAP_MEDIUM "mcache_medium"
#define L1_MAP_LARGE "mcache_large"
#define L1_MAP_TICKETS "mcache_tickets"
#define L1_MAP_TTL "mcache_ttl"
#define L1_MAP_CONNS "mcache_conns"
#define L1_MAP_WGEN "mcache_wgen"
#define L1_PROG_XDP "xdp_mcache_get"
#define L1_PROG_TC "tc_mcache_fill"

/* ---- uprobe events: what memcached really did ---------------------------- */
/* Probes on a vanilla memcached report every miss, store, delete, touch,
 * incr/decr, flush and eviction through one BPF ring buffer; the same probes
 * bump L1's set generation at the moment memcached applies a write. */

/* mc_event.kind */
#define MC_EV_MISS 1   /* a GET found nothing (key) */
#define MC_EV_STORE 2  /* set/add/replace/append/prepend/cas applied (STORED) */
#define MC_EV_DELETE 3 /* a command deleted the key (delete, md, failed-alloc set): see MC_DELETE_* */
#define MC_EV_TOUCH 4  /* a touch/gat changed an item's exptime */
#define MC_EV_DELTA 5  /* incr/decr applied: mc_event.number is the new value */
#define MC_EV_FLUSH 6  /* flush_all: mc_event.number is the delay in seconds */
#define MC_EV_EVICT 7  /* the LRU evicted a live item to make room */
#define MC_EV_KIND_MAX 7

/* mc_event.command for MC_EV_STORE: memcached's NREAD_* values. append and
 * prepend events carry only the key (MC_EVF_VALUE_FETCH): the new item's
 * value, flags and CAS are read back from memcached. */
#define MC_CMD_LINK 0
#define MC_CMD_ADD 1
#define MC_CMD_SET 2
#define MC_CMD_REPLACE 3
#define MC_CMD_APPEND 4
#define MC_CMD_PREPEND 5
#define MC_CMD_CAS 6
/* mc_event.command for MC_EV_MISS: the function that missed. */
#define MC_MISS_GET 1        /* item_get: text get/gets, meta mg, binary get */
#define MC_MISS_GET_LOCKED 2 /* limited_get_locked: meta mg with N/R/T-style flags */
#define MC_MISS_TOUCH 3      /* item_touch: gat/gats, binary gat/touch */
/* mc_event.command for MC_EV_DELETE */
#define MC_DELETE_UNLINK 0 /* memcached held the item and unlinked it */
#define MC_DELETE_ABSENT 1 /* memcached did not hold the key (NOT_FOUND): L3 may still, and must forget it */
/* mc_event.command for MC_EV_DELTA */
#define MC_DELTA_INCR 1
#define MC_DELTA_DECR 2

/* mc_event.flags */
#define MC_EVF_VALUE_INLINE 1 /* value_len bytes follow the key: the whole value */
#define MC_EVF_VALUE_FETCH 2  /* value not included (chunked, or > MC_EVENT_VALUE_INLINE_MAX): fetch it */
#define MC_EVF_CAS 4          /* cas holds the item's CAS */
#define MC_EVF_NO_CLOCK 8     /* memcached's clock was not readable: exptime_unix unknown */
#define MC_EVF_WRITE_SEQ 16   /* write_seq holds the key's write sequence after this write (a miss: when it missed) */

/* Values up to this many bytes travel inside the event. */
#define MC_EVENT_VALUE_INLINE_MAX 4096
#define MC_EVENT_KEY_CAP 256

/* One event. Records in the ring buffer are variable-length: the header and
 * the key always, then inline_len value bytes (MC_EVENT_HEADER_LEN + inline_len). */
struct mc_event {
	__u64 ts_ns;        /* CLOCK_MONOTONIC, bpf_ktime_get_ns() */
	__u64 cas;          /* the item's CAS when MC_EVF_CAS */
	__u64 number;       /* DELTA: new value; FLUSH: delay in seconds */
	__s64 exptime_unix; /* absolute expiry (unix seconds); 0 = never; see MC_EVF_NO_CLOCK */
	__u32 tgid;         /* memcached process */
	__u32 tid;          /* its worker thread */
	__u32 exptime_rel;  /* memcached's own exptime (seconds since its start); 0 = never */
	__u32 now_rel;      /* memcached's current_time when the event fired */
	__u32 client_flags;
	__u32 value_len;    /* bytes of the whole value (its "\r\n" excluded) */
	__u32 write_seq;    /* MC_EVF_WRITE_SEQ: the key's mc_write_seq slot after this write */
	__u32 pad32;
	__u16 inline_len;   /* value bytes carried in this record */
	__u8 kind;          /* MC_EV_* */
	__u8 command;       /* MC_CMD_* / MC_MISS_* / MC_DELTA_* */
	__u8 flags;         /* MC_EVF_* */
	__u8 key_len;
	__u16 pad;
	__u8 key[MC_EVENT_KEY_CAP];
	__u8 value[MC_EVENT_VALUE_INLINE_MAX];
};
#define MC_EVENT_HEADER_LEN (72 + MC_EVENT_KEY_CAP)

/* Per-binary facts the probes need, written by the loader after load. All
 * addresses are link-time virtual addresses in memcached's ELF; the probes
 * learn the process's load bias from where they fired.
 *
 * Each probe's BPF cookie is (probed link-time address << 8 | register):
 * call-site and instruction probes read their item (or value) from that
 * register (x86-64 numbering: 0 rax … 7 rdi, 8 r8 … 15 r15). */
#define MC_FAILED_STORE_LOOKUPS 4
struct mc_probe_config {
	__u32 target_tgid;     /* nonzero: only this process */
	__u32 target_netns;    /* nonzero: only processes in this network namespace (inode) */
	__u32 flags;           /* MC_PROBE_CFG_* */
	__u32 pad;
	__u64 current_time;    /* &current_time (rel_time_t); 0 = unknown */
	__u64 process_started; /* &process_started (time_t); 0 = unknown */
	__u64 settings;        /* &settings */
	/* Return addresses (link-time) of the item_get calls by which a set whose
	 * allocation failed drops the old value: there a NULL is a delete of a key
	 * memcached does not hold, not a GET miss. 0 = unused. */
	__u64 failed_store_lookups[MC_FAILED_STORE_LOOKUPS];
};
#define MC_PROBE_CFG_L1 1 /* L1 maps are attached: bump generations */

/* memcached 1.6 struct settings: offsets of the fields the flush probe reads. */
#define MC_SETTINGS_OLDEST_LIVE 0x24
#define MC_SETTINGS_OLDEST_CAS 0x28
#define MC_SETTINGS_USE_CAS 0x70

/* Per-CPU counters of the probes. */
#define MC_PSTAT_EMITTED 0   /* events written to the ring buffer */
#define MC_PSTAT_LOST 1      /* events dropped: ring buffer full */
#define MC_PSTAT_FILTERED 2  /* hits in other processes, ignored */
#define MC_PSTAT_L1_BUMPS 3  /* L1 generations bumped */
#define MC_PSTAT_READ_FAULT 4 /* memcached memory not readable: event dropped */
#define MC_PSTAT_KIND_BASE 8 /* + MC_EV_*: events emitted per kind */
#define MC_PSTAT_COUNT 16
struct mc_probe_stats {
	__u64 counter[MC_PSTAT_COUNT];
};

#define MC_MAP_EVENTS "mc_events"
#define MC_MAP_WRITE_SEQ "mc_write_seq"

/* Write sequences: the probes count every write memcached applies (store,
 * delete — of a held key or not —, touch, incr/decr) in the slot of its key,
 * and every flush in the last slot, and put the new count in the event. The
 * daemon compares what it has applied with these counts: a promotion from L3
 * goes ahead only when L3 has seen every write to the key's slot, and is
 * undone when a write slipped in before it landed (L3Sync). */
#define MC_WRITE_SEQ_SLOTS 65536 /* per-key slots: set_index(fnv1a(key), MC_WRITE_SEQ_SLOTS - 1) */
#define MC_WRITE_SEQ_FLUSH MC_WRITE_SEQ_SLOTS /* the flush_all slot */
#define MC_MAP_PROBE_CONFIG "mc_probe_config"
#define MC_MAP_PROBE_STATS "mc_probe_stats"

/* ---- layout checks ------------------------------------------------------- */

_Static_assert(sizeof(struct l1_way) == 32, "l1_way layout");
_Static_assert(sizeof(struct l1_set) == 32 + L1_WAYS * 4 + L1_WAYS * 32, "l1_set layout");
/* Header and tags fill one cache line; sets stay line-aligned in the array. */
_Static_assert(sizeof(struct l1_set) % 64 == 0, "l1_set alignment");
_Static_assert(L1_SMALL_WAYS + L1_MEDIUM_WAYS + L1_LARGE_WAYS == L1_WAYS, "ways split");
_Static_assert(sizeof(struct l1_ticket_key) == 20, "l1_ticket_key layout");
_Static_assert(sizeof(struct l1_ticket) == 16 + MC_MAX_GET_KEYS * 12, "l1_ticket layout");
_Static_assert(sizeof(struct l1_conn_key) == 20, "l1_conn_key layout");
_Static_assert(sizeof(struct l1_config) == 56, "l1_config layout");
_Static_assert(sizeof(struct l1_conn) == 392, "l1_conn layout");
_Static_assert(sizeof(struct l1_state) == 16, "l1_state layout");
_Static_assert(sizeof(struct l1_stats) == 8 * L1_STAT_COUNT, "l1_stats layout");

_Static_assert(sizeof(struct mc_event) == MC_EVENT_HEADER_LEN + MC_EVENT_VALUE_INLINE_MAX, "mc_event layout");
_Static_assert(sizeof(struct mc_probe_config) == 40 + 8 * MC_FAILED_STORE_LOOKUPS, "mc_probe_config layout");
#endif /* CXL_BMC_ABI_H */
