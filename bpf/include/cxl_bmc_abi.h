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
	__u32 gen;     /* bumped by every write to a key of this set */
	__u32 pending; /* writes seen at ingress whose reply has not passed egress */
	__u32 hand;    /* CLOCK hand */
	__u64 blocked_until_ns;    /* no fill before this (noreply writes, releases) */
	__u64 pending_deadline_ns; /* after this, pending writes are presumed applied */
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

struct l1_config {
	__u16 port;          /* memcached port, network order */
	__u16 pad0;
	__u32 flags;         /* L1_CFG_* */
	__u32 set_mask;      /* number of sets - 1 (power of two) */
	__u32 pad1;
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
#define L1_PROG_XDP "xdp_mcache_get"
#define L1_PROG_TC "tc_mcache_fill"

/* ---- layout checks ------------------------------------------------------- */

_Static_assert(sizeof(struct l1_way) == 32, "l1_way layout");
_Static_assert(sizeof(struct l1_set) == 32 + L1_WAYS * 32, "l1_set layout");
_Static_assert(L1_SMALL_WAYS + L1_MEDIUM_WAYS + L1_LARGE_WAYS == L1_WAYS, "ways split");
_Static_assert(sizeof(struct l1_ticket_key) == 20, "l1_ticket_key layout");
_Static_assert(sizeof(struct l1_ticket) == 16 + MC_MAX_GET_KEYS * 12, "l1_ticket layout");
_Static_assert(sizeof(struct l1_conn_key) == 20, "l1_conn_key layout");
_Static_assert(sizeof(struct l1_config) == 56, "l1_config layout");
_Static_assert(sizeof(struct l1_conn) == 392, "l1_conn layout");
_Static_assert(sizeof(struct l1_state) == 16, "l1_state layout");
_Static_assert(sizeof(struct l1_stats) == 8 * L1_STAT_COUNT, "l1_stats layout");

#endif /* CXL_BMC_ABI_H */
