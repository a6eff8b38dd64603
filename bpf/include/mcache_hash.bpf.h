/* The key hash and set index every L1 program computes the same way: the XDP
 * and TC programs over packet bytes in scratch, the uprobes over memcached's
 * item. One definition, so a write bumps the set a GET looks in. */
#ifndef MCACHE_HASH_BPF_H
#define MCACHE_HASH_BPF_H

#include <linux/types.h>

/* 64-bit FNV-1a. */
#define L1_FNV_OFFSET 0xcbf29ce484222325ULL
#define L1_FNV_PRIME 0x100000001b3ULL

static __always_inline __u64 l1_hash_step(__u64 h, __u8 byte)
{
	return (h ^ byte) * L1_FNV_PRIME;
}

static __always_inline __u32 set_index(__u64 hash, __u32 mask)
{
	return ((__u32)hash ^ (__u32)(hash >> 32)) & mask;
}

#endif
