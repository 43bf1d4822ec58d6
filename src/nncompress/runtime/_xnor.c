/* XNOR + popcount binary GEMM (Rastegari et al., ECCV 2016; lecture 003 "XNOR-Net").
 *
 * Values in {-1, +1} are packed 64 per uint64 word (bit 1 = +1, bit 0 = -1; bit j of word w holds
 * element 64 w + j; the tail of the last word is zero in both operands, so it never differs).
 * For two packed rows of logical length k:  dot = k - 2 * popcount(a XOR b)
 * (each differing bit is a product of -1, each equal bit a product of +1).
 *
 * xnor_gemm: out[i * n + j] = dot(A_i, B_j) for A (m x words), B (n x words), int32 out.
 * Kernels, chosen at run time by the CPU's features (override: env NNCOMPRESS_XNOR_ISA=avx512|avx2|scalar):
 *   - AVX-512 VPOPCNTDQ: 4 x 4 register tile of A rows x B rows, 8 words per vector, 16 accumulators;
 *   - AVX2: 1 x 4 tile, popcount by nibble lookup (vpshufb) summed with vpsadbw (Mula et al. 2018);
 *   - scalar: __builtin_popcountll (the POPCNT instruction where the CPU has it).
 * The library is built for the baseline x86-64 ISA; the fast kernels carry target attributes, so
 * it runs on any x86-64 CPU (and compiles without them elsewhere). Threads: POSIX threads over
 * blocks of output rows (or columns when there are few rows), so 2 threads use 2 cores.
 * Plain C, no Python or torch headers: loaded with ctypes.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(_M_X64)
#define XNOR_X86 1
#include <immintrin.h>
#endif

typedef struct {
    const uint64_t *a, *b;
    int64_t m, n, words, k;
    int32_t *out;
    int64_t lo, hi;     /* range of A rows (or B rows when split_b) for this thread */
    int split_b;
    int isa;
} job_t;

/* ------------------------------------------------------------------ scalar */
static int64_t dot_scalar(const uint64_t *a, const uint64_t *b, int64_t words) {
    int64_t diff = 0;
    for (int64_t w = 0; w < words; ++w) diff += __builtin_popcountll(a[w] ^ b[w]);
    return diff;
}

#ifdef XNOR_X86
__attribute__((target("popcnt")))
static int64_t dot_popcnt(const uint64_t *a, const uint64_t *b, int64_t words) {
    int64_t diff = 0;
    for (int64_t w = 0; w < words; ++w) diff += __builtin_popcountll(a[w] ^ b[w]);
    return diff;
}

/* ------------------------------------------------------------------ AVX2 */
__attribute__((target("avx2")))
static inline __m256i popcount_bytes_avx2(__m256i v) {
    const __m256i lookup = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i lo = _mm256_shuffle_epi8(lookup, _mm256_and_si256(v, low));
    __m256i hi = _mm256_shuffle_epi8(lookup, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
    return _mm256_add_epi8(lo, hi);
}

__attribute__((target("avx2")))
static inline int64_t hsum_avx2(__m256i v) {
    __m128i s = _mm_add_epi64(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    return _mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1);
}

/* one A row against four B rows */
__attribute__((target("avx2,popcnt")))
static void tile_avx2_1x4(const uint64_t *a, const uint64_t *b0, const uint64_t *b1, const uint64_t *b2,
                          const uint64_t *b3, int64_t words, int64_t diff[4]) {
    __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0;
    const __m256i zero = _mm256_setzero_si256();
    int64_t w = 0;
    for (; w + 4 <= words; w += 4) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(a + w));
        acc0 = _mm256_add_epi64(acc0, _mm256_sad_epu8(popcount_bytes_avx2(_mm256_xor_si256(x, _mm256_loadu_si256((const __m256i *)(b0 + w)))), zero));
        acc1 = _mm256_add_epi64(acc1, _mm256_sad_epu8(popcount_bytes_avx2(_mm256_xor_si256(x, _mm256_loadu_si256((const __m256i *)(b1 + w)))), zero));
        acc2 = _mm256_add_epi64(acc2, _mm256_sad_epu8(popcount_bytes_avx2(_mm256_xor_si256(x, _mm256_loadu_si256((const __m256i *)(b2 + w)))), zero));
        acc3 = _mm256_add_epi64(acc3, _mm256_sad_epu8(popcount_bytes_avx2(_mm256_xor_si256(x, _mm256_loadu_si256((const __m256i *)(b3 + w)))), zero));
    }
    diff[0] = hsum_avx2(acc0); diff[1] = hsum_avx2(acc1); diff[2] = hsum_avx2(acc2); diff[3] = hsum_avx2(acc3);
    for (; w < words; ++w) {
        diff[0] += __builtin_popcountll(a[w] ^ b0[w]); diff[1] += __builtin_popcountll(a[w] ^ b1[w]);
        diff[2] += __builtin_popcountll(a[w] ^ b2[w]); diff[3] += __builtin_popcountll(a[w] ^ b3[w]);
    }
}

/* ------------------------------------------------------------------ AVX-512 VPOPCNTDQ */
#define XOR_POP(acc, x, y) acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_xor_si512(x, y)))

__attribute__((target("avx512f,avx512vpopcntdq")))
static void tile_avx512_4x4(const uint64_t *const a[4], const uint64_t *const b[4], int64_t words, int64_t diff[16]) {
    __m512i c00 = _mm512_setzero_si512(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00, c12 = c00, c13 = c00,
            c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00, c32 = c00, c33 = c00;
    for (int64_t w = 0; w < words; w += 8) {
        __mmask8 mask = words - w >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (words - w)) - 1);
        __m512i b0 = _mm512_maskz_loadu_epi64(mask, b[0] + w), b1 = _mm512_maskz_loadu_epi64(mask, b[1] + w);
        __m512i b2 = _mm512_maskz_loadu_epi64(mask, b[2] + w), b3 = _mm512_maskz_loadu_epi64(mask, b[3] + w);
        __m512i x = _mm512_maskz_loadu_epi64(mask, a[0] + w);
        XOR_POP(c00, x, b0); XOR_POP(c01, x, b1); XOR_POP(c02, x, b2); XOR_POP(c03, x, b3);
        x = _mm512_maskz_loadu_epi64(mask, a[1] + w);
        XOR_POP(c10, x, b0); XOR_POP(c11, x, b1); XOR_POP(c12, x, b2); XOR_POP(c13, x, b3);
        x = _mm512_maskz_loadu_epi64(mask, a[2] + w);
        XOR_POP(c20, x, b0); XOR_POP(c21, x, b1); XOR_POP(c22, x, b2); XOR_POP(c23, x, b3);
        x = _mm512_maskz_loadu_epi64(mask, a[3] + w);
        XOR_POP(c30, x, b0); XOR_POP(c31, x, b1); XOR_POP(c32, x, b2); XOR_POP(c33, x, b3);
    }
    diff[0] = _mm512_reduce_add_epi64(c00); diff[1] = _mm512_reduce_add_epi64(c01);
    diff[2] = _mm512_reduce_add_epi64(c02); diff[3] = _mm512_reduce_add_epi64(c03);
    diff[4] = _mm512_reduce_add_epi64(c10); diff[5] = _mm512_reduce_add_epi64(c11);
    diff[6] = _mm512_reduce_add_epi64(c12); diff[7] = _mm512_reduce_add_epi64(c13);
    diff[8] = _mm512_reduce_add_epi64(c20); diff[9] = _mm512_reduce_add_epi64(c21);
    diff[10] = _mm512_reduce_add_epi64(c22); diff[11] = _mm512_reduce_add_epi64(c23);
    diff[12] = _mm512_reduce_add_epi64(c30); diff[13] = _mm512_reduce_add_epi64(c31);
    diff[14] = _mm512_reduce_add_epi64(c32); diff[15] = _mm512_reduce_add_epi64(c33);
}

__attribute__((target("avx512f,avx512vpopcntdq")))
static int64_t dot_avx512(const uint64_t *a, const uint64_t *b, int64_t words) {
    __m512i acc = _mm512_setzero_si512();
    for (int64_t w = 0; w < words; w += 8) {
        __mmask8 mask = words - w >= 8 ? (__mmask8)0xff : (__mmask8)((1u << (words - w)) - 1);
        XOR_POP(acc, _mm512_maskz_loadu_epi64(mask, a + w), _mm512_maskz_loadu_epi64(mask, b + w));
    }
    return _mm512_reduce_add_epi64(acc);
}
#endif /* XNOR_X86 */

/* ------------------------------------------------------------------ dispatch */
enum { ISA_SCALAR = 0, ISA_AVX2 = 1, ISA_AVX512 = 2 };

static int detect_isa(void) {
#ifdef XNOR_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq")) return ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt")) return ISA_AVX2;
#endif
    return ISA_SCALAR;
}

static int chosen_isa(void) {
    int best = detect_isa();
    const char *forced = getenv("NNCOMPRESS_XNOR_ISA");
    if (forced == NULL) return best;
    int want = strcmp(forced, "avx512") == 0 ? ISA_AVX512 : strcmp(forced, "avx2") == 0 ? ISA_AVX2 : ISA_SCALAR;
    return want < best ? want : best;  /* never more than the CPU has */
}

/* What the CPU supports (2 AVX-512 VPOPCNTDQ, 1 AVX2, 0 scalar) and what runs (after the override). */
int xnor_best_isa(void) { return detect_isa(); }
int xnor_isa(void) { return chosen_isa(); }

static inline int64_t dot_any(int isa, const uint64_t *a, const uint64_t *b, int64_t words) {
#ifdef XNOR_X86
    if (isa == ISA_AVX512) return dot_avx512(a, b, words);
    if (isa == ISA_AVX2) return dot_popcnt(a, b, words);
#endif
    (void)isa;
    return dot_scalar(a, b, words);
}

/* rows [lo, hi) of A against all of B (or, split_b, all of A against B rows [lo, hi)) */
static void gemm_block(const job_t *job) {
    const int64_t words = job->words, k = job->k, n = job->n;
    const int64_t i0 = job->split_b ? 0 : job->lo, i1 = job->split_b ? job->m : job->hi;
    const int64_t j0 = job->split_b ? job->lo : 0, j1 = job->split_b ? job->hi : n;
    int64_t i = i0;
#ifdef XNOR_X86
    if (job->isa == ISA_AVX512) {
        for (; i + 4 <= i1; i += 4) {
            const uint64_t *a[4] = {job->a + i * words, job->a + (i + 1) * words, job->a + (i + 2) * words,
                                    job->a + (i + 3) * words};
            int64_t j = j0;
            for (; j + 4 <= j1; j += 4) {
                const uint64_t *b[4] = {job->b + j * words, job->b + (j + 1) * words, job->b + (j + 2) * words,
                                        job->b + (j + 3) * words};
                int64_t diff[16];
                tile_avx512_4x4(a, b, words, diff);
                for (int r = 0; r < 4; ++r)
                    for (int c = 0; c < 4; ++c) job->out[(i + r) * n + j + c] = (int32_t)(k - 2 * diff[4 * r + c]);
            }
            for (; j < j1; ++j)
                for (int r = 0; r < 4; ++r)
                    job->out[(i + r) * n + j] = (int32_t)(k - 2 * dot_avx512(a[r], job->b + j * words, words));
        }
    } else if (job->isa == ISA_AVX2) {
        for (; i < i1; ++i) {
            const uint64_t *a = job->a + i * words;
            int64_t j = j0;
            for (; j + 4 <= j1; j += 4) {
                int64_t diff[4];
                tile_avx2_1x4(a, job->b + j * words, job->b + (j + 1) * words, job->b + (j + 2) * words,
                              job->b + (j + 3) * words, words, diff);
                for (int c = 0; c < 4; ++c) job->out[i * n + j + c] = (int32_t)(k - 2 * diff[c]);
            }
            for (; j < j1; ++j) job->out[i * n + j] = (int32_t)(k - 2 * dot_popcnt(a, job->b + j * words, words));
        }
    }
#endif
    for (; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j)
            job->out[i * n + j] = (int32_t)(k - 2 * dot_any(job->isa, job->a + i * words, job->b + j * words, words));
}

static void *gemm_thread(void *arg) { gemm_block((const job_t *)arg); return NULL; }

/* out (m x n, int32) = k - 2 popcount(A_i xor B_j); `threads` POSIX threads (<= 1: the caller's). */
int xnor_gemm(const uint64_t *a, const uint64_t *b, int64_t m, int64_t n, int64_t words, int64_t k,
              int32_t *out, int threads) {
    if (m <= 0 || n <= 0) return 0;
    int isa = chosen_isa();
    int split_b = m < 4 * (int64_t)threads && n > m;  /* few A rows (a conv's channels): split B's rows */
    int64_t total = split_b ? n : m, grain = split_b ? 4 : 4;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    int64_t blocks = (total + grain - 1) / grain;
    if (threads > blocks) threads = (int)blocks;
    job_t jobs[64];
    pthread_t ids[64];
    int64_t per = (blocks + threads - 1) / threads;
    for (int t = 0; t < threads; ++t) {
        int64_t lo = t * per * grain, hi = (t + 1) * per * grain;
        jobs[t] = (job_t){a, b, m, n, words, k, out, lo < total ? lo : total, hi < total ? hi : total, split_b, isa};
    }
    int started = 0;
    for (int t = 1; t < threads; ++t) {
        if (pthread_create(&ids[t], NULL, gemm_thread, &jobs[t]) != 0) break;
        started = t;
    }
    gemm_block(&jobs[0]);
    for (int t = started + 1; t < threads; ++t) gemm_block(&jobs[t]);  /* threads that could not start */
    for (int t = 1; t <= started; ++t) pthread_join(ids[t], NULL);
    return 0;
}

#ifdef XNOR_X86
__attribute__((target("avx512f")))
static uint64_t pack_word_avx512(const float *x) {  /* 64 floats -> 64 bits */
    const __m512 zero = _mm512_setzero_ps();
    uint64_t bits = 0;
    for (int q = 0; q < 4; ++q)
        bits |= (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(x + 16 * q), zero, _CMP_GE_OQ) << (16 * q);
    return bits;
}

__attribute__((target("avx2")))
static uint64_t pack_word_avx2(const float *x) {
    const __m256 zero = _mm256_setzero_ps();
    uint64_t bits = 0;
    for (int q = 0; q < 8; ++q)
        bits |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + 8 * q), zero, _CMP_GE_OQ)) << (8 * q);
    return bits;
}
#endif

/* Pack a float32 row-major (rows x k) matrix: bit = (x >= 0). out: rows x words uint64, zeroed tail. */
int xnor_pack_f32(const float *x, int64_t rows, int64_t k, uint64_t *out) {
    int64_t words = (k + 63) / 64;
    int isa = chosen_isa();
    for (int64_t r = 0; r < rows; ++r) {
        const float *row = x + r * k;
        uint64_t *dst = out + r * words;
        for (int64_t w = 0; w < words; ++w) {
            int64_t base = w * 64, count = k - base < 64 ? k - base : 64;
#ifdef XNOR_X86
            if (count == 64 && isa == ISA_AVX512) { dst[w] = pack_word_avx512(row + base); continue; }
            if (count == 64 && isa == ISA_AVX2) { dst[w] = pack_word_avx2(row + base); continue; }
#endif
            uint64_t bits = 0;
            for (int64_t j = 0; j < count; ++j) bits |= (uint64_t)(row[base + j] >= 0.0f) << j;
            dst[w] = bits;
        }
    }
    (void)isa;
    return 0;
}

#ifndef NNC_SOURCE_HASH
#define NNC_SOURCE_HASH "unknown"
#endif
/* The hash of this source and its compile flags (runtime/native.py refuses a build that differs). */
const char *nnc_source_hash(void) { return NNC_SOURCE_HASH; }
