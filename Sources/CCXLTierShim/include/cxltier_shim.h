/* Things Swift cannot express directly for CXLTier: SSE4.2 crc32c, atomics on words inside a
 * shared mapping, and cache-line flush/fence instructions. Every function is prefixed cxltier_. */
#ifndef CXLTIER_SHIM_H
#define CXLTIER_SHIM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/vfs.h>

/* crc32c (Castagnoli) continuing from `crc` (pass 0 to start): hardware SSE4.2 when the CPU has
 * it, else a table-driven software version. No pre/post inversion is left to the caller. */
uint32_t cxltier_crc32c(uint32_t crc, const void *data, size_t len);
/* The software version, always (tests compare both). */
uint32_t cxltier_crc32c_sw(uint32_t crc, const void *data, size_t len);
/* 1 when cxltier_crc32c uses the SSE4.2 instruction. */
int cxltier_crc32c_is_hardware(void);

/* 1 when the CPU has clflushopt (else cxltier_flush_line uses clflush). */
int cxltier_has_clflushopt(void);
/* Writes back and invalidates the cache line holding `p` (clflushopt, or clflush). */
void cxltier_flush_line(const void *p);
/* Orders flushes and stores before later stores (sfence). */
void cxltier_sfence(void);
/* Full fence (mfence). */
void cxltier_mfence(void);

/* Atomics on naturally aligned 64-bit words in shared memory. */
static inline uint64_t cxltier_load_acquire(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline uint64_t cxltier_load_relaxed(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void cxltier_store_release(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void cxltier_store_relaxed(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline uint64_t cxltier_fetch_add(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
/* Relaxed bit set/clear (CLOCK reference bits: hints, no ordering needed). */
static inline uint64_t cxltier_fetch_or(uint64_t *p, uint64_t v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
static inline uint64_t cxltier_fetch_and(uint64_t *p, uint64_t v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }
/* Returns 1 on success; *expected holds the value found either way. */
static inline int cxltier_compare_exchange(uint64_t *p, uint64_t *expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, expected, desired, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
/* Starts loading the line holding `p` (for reading) without waiting for it. */
static inline void cxltier_prefetch(const void *p) { __builtin_prefetch(p, 0, 3); }
static inline void cxltier_fence_acquire(void) { __atomic_thread_fence(__ATOMIC_ACQUIRE); }
static inline void cxltier_fence_release(void) { __atomic_thread_fence(__ATOMIC_RELEASE); }
static inline void cxltier_fence_seq_cst(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

/* Copy out of shared memory that another party may be changing: the result is only trusted
 * after validation, so a plain memcpy is what we want (the compiler must not assume stability). */
static inline void cxltier_copy_volatile(void *dst, const void *src, size_t n) {
    __builtin_memcpy(dst, src, n);
    __atomic_signal_fence(__ATOMIC_SEQ_CST);
}

/* fstatfs's file system magic and block size (Swift's Glibc module has no statfs): 0, or -1 with errno. */
static inline int cxltier_fs_info(int fd, int64_t *type, int64_t *block_size) {
    struct statfs fs;
    if (fstatfs(fd, &fs) != 0) return -1;
    *type = (int64_t)fs.f_type;
    *block_size = (int64_t)fs.f_bsize;
    return 0;
}

#endif
