/* Maps shared by xdp_mcache and tc_mcache. Both objects declare them with
 * LIBBPF_PIN_BY_NAME, so the loader pins them once under
 * /sys/fs/bpf/cxl-bmc/<iface>/ and the second object (and a restart) reuses
 * the pins: a manually attached egress filter keeps seeing the same cache. */
#ifndef MCACHE_MAPS_BPF_H
#define MCACHE_MAPS_BPF_H

#include "cxl_bmc_abi.h"

/* Defaults; the loader sizes the set-dependent maps before load. */
#define L1_DEFAULT_SETS 4096
#define L1_TICKETS_MAX 65536
#define L1_TTL_MAX 262144
#define L1_CONNS_MAX 16384

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l1_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l1_state);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct l1_stats);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_stats SEC(".maps");

/* Write generations bumped by memcached's uprobes at the moment a write is
 * applied, one per set. Lock-free: tracing programs may not take the sets'
 * spin locks. A ticket records set gen + wgen; a fill or a hit needs both
 * unchanged. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L1_DEFAULT_SETS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_wgen SEC(".maps");

/* Losing a TTL entry only means the key is not cached (unknown TTL). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, L1_TTL_MAX);
	__type(key, __u64);
	__type(value, struct l1_ttl);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_ttl SEC(".maps");

/* The uprobe object uses only the maps above: tracing programs may not touch
 * maps holding a bpf_spin_lock. */
#ifndef MCACHE_MAPS_PROBE_SUBSET

/* Set metadata: tags, generations, in-flight writes; one spin lock each. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L1_DEFAULT_SETS);
	__type(key, __u32);
	__type(value, struct l1_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_sets SEC(".maps");

/* Block bytes per size class, indexed set * ways_of_class + way_in_class. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L1_DEFAULT_SETS * L1_SMALL_WAYS);
	__type(key, __u32);
	__type(value, struct l1_block_small);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_small SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L1_DEFAULT_SETS * L1_MEDIUM_WAYS);
	__type(key, __u32);
	__type(value, struct l1_block_medium);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_medium SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, L1_DEFAULT_SETS * L1_LARGE_WAYS);
	__type(key, __u32);
	__type(value, struct l1_block_large);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_large SEC(".maps");

/* Bounded: a lost reply only costs a ticket slot until LRU reclaims it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, L1_TICKETS_MAX);
	__type(key, struct l1_ticket_key);
	__type(value, struct l1_ticket);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_tickets SEC(".maps");

/* Not LRU: silently losing a connection with writes in flight would lose
 * their release. When full, writes fall back to a global fill block. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, L1_CONNS_MAX);
	__type(key, struct l1_conn_key);
	__type(value, struct l1_conn);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} mcache_conns SEC(".maps");

#endif /* MCACHE_MAPS_PROBE_SUBSET */
#endif
