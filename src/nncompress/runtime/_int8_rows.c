/* Per-token (per-row) dynamic int8 quantization and the int32 -> float32 epilogue around torch's
 * int8 GEMM (runtime/int8_torch.py, Int8DynamicLinear). Plain C, loaded with ctypes (runtime/native.py).
 *
 * Lecture 005, linear quantization: r = S (q - Z). For each row i (a token) with range [m_i, M_i]:
 *   lo = min(m_i, 0), hi = max(M_i, 0), S_i = (hi - lo) / (q_max - q_min),
 *   Z_i = clamp(round(q_min - lo / S_i), q_min, q_max)   (S_i <= FLT_MIN -> S_i = 1),
 *   q_ik = clamp(round(x_ik / S_i) + Z_i, q_min, q_max), stored as q_ik - c (a constant shift c that
 *   brings the codes into the GEMM's 8-bit type);
 * exactly the float32 operations of quant/primitives.py (qparams_of_finite_range, quantize):
 * IEEE division, round half to even (rintf in the default rounding mode), no contraction.
 * After acc = sum_k (q_ik - c) q_W,jk in int32 (the GEMM), the layer's output is
 *   y_ij = (acc_ij S_W,j) S_i + (S_i (c - Z_i) (S_W,j sum_k q_W,jk) + b_j).
 * One call per step instead of ~15 torch ops: on BERT-sized inputs the elementwise work, on small
 * ones the per-op dispatch, is what made per-token int8 slower than per-tensor.
 * Built for baseline x86-64; the loops are cloned for AVX2 / AVX-512 and picked at load time. Rows go
 * to OpenMP threads (torch's own team, see PARALLEL_MIN_ELEMENTS): POSIX threads of our own were
 * slower at 2 threads, because torch's OpenMP workers still spin after the GEMM and take the cores
 * (measured BERT-style batch 8: 1.13x instead of 1.73x). */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CLONES
#endif

static inline float clampf(float v, float lo, float hi) {
    v = v < lo ? lo : v;
    return v > hi ? hi : v;
}

/* (S, Z) of one range; returns 1 when the range is not finite (the input held NaN or inf). */
static int qparams(float r_min, float r_max, int q_min, int q_max, float *scale, float *zero_point) {
    if (!(fabsf(r_min) <= FLT_MAX) || !(fabsf(r_max) <= FLT_MAX)) return 1;
    float lo = r_min < 0.0f ? r_min : 0.0f, hi = r_max > 0.0f ? r_max : 0.0f;
    float s = (hi - lo) / (float)(q_max - q_min);
    float z = rintf((float)q_min - lo / (s > 0.0f ? s : 1.0f));
    *scale = s > FLT_MIN ? s : 1.0f;
    *zero_point = clampf(z, (float)q_min, (float)q_max);
    return 0;
}

CLONES
static void quantize_row(const float *restrict x, int64_t cols, float s, float z_minus_c, float lo, float hi,
                         uint8_t *restrict out) {
    for (int64_t k = 0; k < cols; k++)
        out[k] = (uint8_t)(int32_t)clampf(rintf(x[k] / s) + z_minus_c, lo, hi);
}

CLONES
static void dequantize_row(const int32_t *acc, int64_t cols, float s, float term, const float *col_scale,
                           const float *col_sum, const float *bias, float *out) {
    for (int64_t j = 0; j < cols; j++)
        out[j] = ((float)acc[j] * col_scale[j]) * s + (term * col_sum[j] + bias[j]);
}

CLONES
static void rescale_row(const float *scaled, int64_t cols, float s, float term, const float *col_sum,
                        const float *bias, float *out) {
    for (int64_t j = 0; j < cols; j++)
        out[j] = scaled[j] * s + (term * col_sum[j] + bias[j]);
}

typedef float floats16 __attribute__((vector_size(64)));
typedef int32_t ints16 __attribute__((vector_size(64)));

/* Lanes of `a` where `take` is set, else lanes of `b` (a vector `take ? a : b`; a macro, since a
 * function passing 64-byte vectors has an ISA-dependent ABI). */
#define SELECT16(take, a, b) ((floats16)(((ints16)(a) & (take)) | ((ints16)(b) & ~(take))))

/* The range [min, max] of x[0..cols); returns 1 when x holds a NaN or an infinity (v * 0 is NaN
 * exactly for those, and a NaN is never taken as a min or a max, so it is caught apart). Sixteen
 * lanes at a time in GCC vector types (one AVX-512 register, two AVX2 ones): min and max need no
 * reassociation, so this is exact on every ISA. */
CLONES
static int row_range(const float *restrict x, int64_t cols, float *r_min, float *r_max) {
    floats16 mn, mx, probe = {0};
    for (int l = 0; l < 16; l++) mn[l] = INFINITY, mx[l] = -INFINITY;
    int64_t k = 0;
    for (; k + 16 <= cols; k += 16) {
        floats16 v;
        memcpy(&v, x + k, sizeof v);
        mn = SELECT16(v < mn, v, mn);
        mx = SELECT16(v > mx, v, mx);
        probe += v * 0.0f;
    }
    for (; k < cols; k++) {
        float v = x[k];
        mn[0] = v < mn[0] ? v : mn[0];
        mx[0] = v > mx[0] ? v : mx[0];
        probe[0] += v * 0.0f;
    }
    int not_finite = 0;
    *r_min = mn[0], *r_max = mx[0];
    for (int l = 0; l < 16; l++) {
        *r_min = mn[l] < *r_min ? mn[l] : *r_min;
        *r_max = mx[l] > *r_max ? mx[l] : *r_max;
        not_finite |= probe[l] != probe[l];
    }
    return not_finite;
}

/* Rows are independent, so the loops below split them over OpenMP threads when the work is large
 * enough: built with -fopenmp, the library shares the OpenMP runtime torch loaded (the same soname,
 * libgomp.so.1), so it runs on torch's thread team at torch.get_num_threads() threads, the threads
 * that just ran the GEMM. Every row's result is the same whatever the thread count. */
#define PARALLEL_MIN_ELEMENTS 65536

/* x: rows x cols float32, quantized with one range per row (per_row, per token) or one range of the
 * whole tensor, both found here (min / max are exact, so they equal torch's amin / amax; a NaN
 * anywhere in a range makes it not finite, as torch's propagation does). Writes the shifted codes
 * (bytes: int8 or uint8 per the shift), each row's S and its zero-point term S (c - Z). Returns the
 * first row whose range is not finite + 1 (per tensor: the first row holding a NaN or infinity),
 * or 0. */
int64_t nnc_quantize_rows(const float *x, int64_t rows, int64_t cols, int per_row, int q_min, int q_max, int shift,
                          uint8_t *codes, float *row_scale, float *row_term) {
    float t_min = INFINITY, t_max = -INFINITY;
    int64_t first_bad = rows;
    int parallel = rows * cols >= PARALLEL_MIN_ELEMENTS;
    if (!per_row) {
#pragma omp parallel for schedule(static) reduction(min : t_min, first_bad) reduction(max : t_max) if (parallel)
        for (int64_t i = 0; i < rows; i++) {
            float r_min, r_max;
            if (row_range(x + i * cols, cols, &r_min, &r_max)) first_bad = i < first_bad ? i : first_bad;
            t_min = r_min < t_min ? r_min : t_min;
            t_max = r_max > t_max ? r_max : t_max;
        }
        if (first_bad < rows) return first_bad + 1;
    }
#pragma omp parallel for schedule(static) reduction(min : first_bad) if (parallel)
    for (int64_t i = 0; i < rows; i++) {
        float s, z, r_min = t_min, r_max = t_max;
        if ((per_row && row_range(x + i * cols, cols, &r_min, &r_max)) || qparams(r_min, r_max, q_min, q_max, &s, &z)) {
            first_bad = i < first_bad ? i : first_bad;
            continue;
        }
        row_scale[i] = s;
        row_term[i] = s * ((float)shift - z);
        quantize_row(x + i * cols, cols, s, z - (float)shift, (float)(q_min - shift), (float)(q_max - shift),
                     codes + i * cols);
    }
    return first_bad < rows ? first_bad + 1 : 0;
}

/* y = (acc S_W) S_i + (term_i colsum_W + b): acc rows x cols int32, per-column S_W, S_W sum q_W, b. */
void nnc_dequantize_rows(const int32_t *acc, int64_t rows, int64_t cols, const float *row_scale,
                         const float *row_term, const float *col_scale, const float *col_sum, const float *bias,
                         float *out) {
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN_ELEMENTS)
    for (int64_t i = 0; i < rows; i++)
        dequantize_row(acc + i * cols, cols, row_scale[i], row_term[i], col_scale, col_sum, bias, out + i * cols);
}

/* The same epilogue for a GEMM that already applied S_W (oneDNN's float32 output acc S_W); in place
 * is allowed (out == scaled). */
void nnc_rescale_rows(const float *scaled, int64_t rows, int64_t cols, const float *row_scale, const float *row_term,
                      const float *col_sum, const float *bias, float *out) {
#pragma omp parallel for schedule(static) if (rows * cols >= PARALLEL_MIN_ELEMENTS)
    for (int64_t i = 0; i < rows; i++)
        rescale_row(scaled + i * cols, cols, row_scale[i], row_term[i], col_sum, bias, out + i * cols);
}

#ifndef NNC_SOURCE_HASH
#define NNC_SOURCE_HASH "unknown"
#endif
/* The hash of this source and its compile flags (runtime/native.py refuses a build that differs). */
const char *nnc_source_hash(void) { return NNC_SOURCE_HASH; }
