#include "cxltier_shim.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

static uint32_t crc_table[8][256];
static int crc_table_ready;

static void crc_table_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++) {
        for (int t = 1; t < 8; t++) crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
    }
    __atomic_store_n(&crc_table_ready, 1, __ATOMIC_RELEASE);
}

uint32_t cxltier_crc32c_sw(uint32_t crc, const void *data, size_t len) {
    if (!__atomic_load_n(&crc_table_ready, __ATOMIC_ACQUIRE)) crc_table_init();
    const uint8_t *p = data;
    while (len >= 8) {
        uint64_t w;
        __builtin_memcpy(&w, p, 8);
        w ^= crc;
        crc = crc_table[7][w & 0xFF] ^ crc_table[6][(w >> 8) & 0xFF] ^ crc_table[5][(w >> 16) & 0xFF] ^
              crc_table[4][(w >> 24) & 0xFF] ^ crc_table[3][(w >> 32) & 0xFF] ^ crc_table[2][(w >> 40) & 0xFF] ^
              crc_table[1][(w >> 48) & 0xFF] ^ crc_table[0][w >> 56];
        p += 8;
        len -= 8;
    }
    while (len--) crc = (crc >> 8) ^ crc_table[0][(crc ^ *p++) & 0xFF];
    return crc;
}

#if defined(__x86_64__)
static int cpu_flags = -1; /* bit0 sse4.2, bit1 clflushopt */

static int flags(void) {
    int f = __atomic_load_n(&cpu_flags, __ATOMIC_RELAXED);
    if (f >= 0) return f;
    unsigned a, b, c, d;
    f = 0;
    if (__get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2)) f |= 1;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 23))) f |= 2;
    __atomic_store_n(&cpu_flags, f, __ATOMIC_RELAXED);
    return f;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_hw(uint32_t crc, const void *data, size_t len) {
    const uint8_t *p = data;
    uint64_t c = crc;
    while (len >= 8) {
        uint64_t w;
        __builtin_memcpy(&w, p, 8);
        c = _mm_crc32_u64(c, w);
        p += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    while (len--) c32 = _mm_crc32_u8(c32, *p++);
    return c32;
}

uint32_t cxltier_crc32c(uint32_t crc, const void *data, size_t len) {
    return flags() & 1 ? crc32c_hw(crc, data, len) : cxltier_crc32c_sw(crc, data, len);
}
int cxltier_crc32c_is_hardware(void) { return flags() & 1; }
int cxltier_has_clflushopt(void) { return (flags() & 2) != 0; }

__attribute__((target("clflushopt")))
static void flush_opt(const void *p) { _mm_clflushopt((void *)p); }

void cxltier_flush_line(const void *p) {
    if (flags() & 2) flush_opt(p);
    else _mm_clflush(p);
}
void cxltier_sfence(void) { _mm_sfence(); }
void cxltier_mfence(void) { _mm_mfence(); }
#else
uint32_t cxltier_crc32c(uint32_t crc, const void *data, size_t len) { return cxltier_crc32c_sw(crc, data, len); }
int cxltier_crc32c_is_hardware(void) { return 0; }
int cxltier_has_clflushopt(void) { return 0; }
void cxltier_flush_line(const void *p) { (void)p; __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void cxltier_sfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
void cxltier_mfence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
#endif
