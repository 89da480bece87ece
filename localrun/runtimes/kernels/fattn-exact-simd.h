// localrun (exact): the in-register building blocks of the batch-invariant flash attention
// (fattn-exact.cpp): a tile's maximum, its all-hidden test, K and V rows converted and
// transposed eight at a time, and the few-row products that read K and V in place, each the
// same chain of FMAs as simd_gemm's on a converted tile. Included by fattn-exact.cpp only.
//
//
// MIT License. Copyright (c) 2023-2026 The ggml authors.
// Permission is hereby granted, free of charge, to any person obtaining a copy of this software
// and associated documentation files (the "Software"), to deal in the Software without
// restriction, including without limitation the rights to use, copy, modify, merge, publish,
// distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
// Software is furnished to do so, subject to the following conditions:
// The above copyright notice and this permission notice shall be included in all copies or
// substantial portions of the Software.
// THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
// BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
// NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
// DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
// OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.

#pragma once

#include "common.h"
#include "simd-mappings.h"

#include <cmath>
#include <cstring>
#include <type_traits>


// The largest of x[0..n): the hottest loop of a prompt's tiles as ggml_vec_max_f32's serial
// scalar chain. A maximum does not depend on the order it is taken in (ties of +0 and -0 aside,
// which subtract and exponentiate alike), so vectors give ggml_vec_max_f32's value for any row
// without NaN (with one, either is NaN or not by lane order: the same at every row count).
static inline float fa_exact_max(int n, const float * x) {
    float m = -INFINITY;
    int i = 0;
#if defined(__AVX512F__)
    __m512 v = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) {
        v = _mm512_max_ps(v, _mm512_loadu_ps(x + i));
    }
    m = _mm512_reduce_max_ps(v);
#elif defined(__AVX__)
    __m256 v = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= n; i += 8) {
        v = _mm256_max_ps(v, _mm256_loadu_ps(x + i));
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    m = _mm_cvtss_f32(h);
#elif defined(__ARM_NEON) && defined(__aarch64__)
    float32x4_t v = vdupq_n_f32(-INFINITY);
    for (; i + 4 <= n; i += 4) {
        v = vmaxq_f32(v, vld1q_f32(x + i));
    }
    m = vmaxvq_f32(v);
#endif
    for (; i < n; ++i) {
        m = MAX(m, x[i]);
    }
    return m;
}

// Whether every one of x[0..n) is -inf (a mask tile that hides every cell from these rows).
static inline bool fa_exact_all_hidden(int n, const float * x) {
    int i = 0;
#if defined(__AVX512F__)
    const __m512 hidden = _mm512_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16) {
        if (_mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), hidden, _CMP_NEQ_UQ)) {
            return false;
        }
    }
#elif defined(__AVX__)
    const __m256 hidden = _mm256_set1_ps(-INFINITY);
    for (; i + 8 <= n; i += 8) {
        if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), hidden, _CMP_NEQ_UQ))) {
            return false;
        }
    }
#endif
    for (; i < n; ++i) {
        if (x[i] != -INFINITY) {
            return false;
        }
    }
    return true;
}

#if defined(__AVX__) && defined(__F16C__)
#define FA_EXACT_VEC8 1
// r[0..8) transposed in place (rows become columns): data moved, no value changed.
static inline void fa_exact_transpose8(__m256 r[8]) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// 8 values of an F16 or F32 row from element d, as F32 (F16 to F32 is exact either way).
static inline __m256 fa_exact_load8(const char * row, bool f16, int64_t d) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const ggml_fp16_t *) row + d)))
               : _mm256_loadu_ps((const float *) row + d);
}
#endif

#if defined(FA_EXACT_VEC8)
// K's values d..d+8 of the 8 cells from `rows` (a row every nb1 bytes), transposed: kt[j] holds
// value d+j of each of the 8 cells.
static inline void fa_exact_k_block8(const char * rows, size_t nb1, bool f16, int64_t d, __m256 kt[8]) {
    for (int j = 0; j < 8; ++j) {
        kt[j] = fa_exact_load8(rows + j*nb1, f16, d);
    }
    fa_exact_transpose8(kt);
}
#endif

// A KV row of D values (F16 or F32) as F32, inline: a decode converts one a cell.
static inline void fa_exact_row_f32(const char * row, bool f16, int64_t D, float * out) {
    if (!f16) {
        memcpy(out, row, D*sizeof(float));
        return;
    }
    int64_t d = 0;
#if defined(FA_EXACT_VEC8)
    for (; d + 8 <= D; d += 8) {
        _mm256_storeu_ps(out + d, fa_exact_load8(row, true, d));
    }
#endif
    for (; d < D; ++d) {
        out[d] = GGML_CPU_FP16_TO_FP32(((const ggml_fp16_t *) row)[d]);
    }
}

// `n` K rows from `k_data` (a row every `nb1` bytes) as F32, transposed: K_f32[dk*ld + tk].
// `tmp` holds DK floats. Eight cells at a time are converted and transposed in registers.
static void fa_exact_k_transposed(
        const char * k_data, size_t nb1, bool f16, int n, int64_t DK, int ld, float * K_f32, float * tmp) {
    int tk = 0;
#if defined(FA_EXACT_VEC8)
    if (DK % 8 == 0) {
        for (; tk + 8 <= n; tk += 8) {
            const char * rows = k_data + tk*nb1;
            for (int64_t d = 0; d < DK; d += 8) {
                __m256 r[8];
                fa_exact_k_block8(rows, nb1, f16, d, r);
                for (int j = 0; j < 8; ++j) {
                    _mm256_storeu_ps(K_f32 + (d + j)*ld + tk, r[j]);
                }
            }
        }
    }
#endif
    for (; tk < n; ++tk) {
        fa_exact_row_f32(k_data + tk*nb1, f16, DK, tmp);
        for (int64_t dk = 0; dk < DK; dk++) {
            K_f32[dk*ld + tk] = tmp[dk];
        }
    }
}

#if defined(FA_EXACT_VEC8) && defined(__FMA__)
#define FA_EXACT_DIRECT 1
// The most rows that read K and V in place (fa_exact_kq_direct, fa_exact_vkq_direct): a decode's
// and a short draft's; more rows convert a tile once and share it (simd_gemm).
static constexpr int FA_EXACT_DIRECT_ROWS = 8;

// KQ[r][tk] (r < R, row stride ld) for n cells read in place from k_data (a row every nb1 bytes),
// each the chain of FMAs simd_gemm computes on the transposed tile: from +0, k*q added fused for
// dk = 0, 1, ... in order. Eight cells at a time are converted and transposed in registers, so a
// decode stores no F32 copy of K (a 256-wide head's is 64 KB a tile, past L1).
template <int R>
static void fa_exact_kq_direct(
        float * KQ, int ld, const float * Q, const char * k_data, size_t nb1, bool f16, int n, int64_t DK) {
    int tk = 0;
    for (; tk + 8 <= n; tk += 8) {
        __m256 acc[R];
        for (int r = 0; r < R; ++r) {
            acc[r] = _mm256_setzero_ps();
        }
        const char * rows = k_data + tk*nb1;
        for (int64_t d = 0; d < DK; d += 8) {
            __m256 kt[8];
            fa_exact_k_block8(rows, nb1, f16, d, kt);
            for (int j = 0; j < 8; ++j) {
                for (int r = 0; r < R; ++r) {
                    acc[r] = _mm256_fmadd_ps(kt[j], _mm256_broadcast_ss(Q + r*DK + d + j), acc[r]);
                }
            }
        }
        for (int r = 0; r < R; ++r) {
            _mm256_storeu_ps(KQ + r*ld + tk, acc[r]);
        }
    }
    float row[1024];
    for (; tk < n; ++tk) {
        fa_exact_row_f32(k_data + tk*nb1, f16, DK, row);
        for (int r = 0; r < R; ++r) {
            float a = 0.0f;
            for (int64_t d = 0; d < DK; ++d) {
                a = fmaf(row[d], Q[r*DK + d], a);
            }
            KQ[r*ld + tk] = a;
        }
    }
}

// VKQ[r][d] (r < R, row stride DV) += the tile's cells' KQ[r][tk]*V[tk][d], V read in place for
// the first n cells and zero for the rest of the tile's `cells`: each element the chain of FMAs
// simd_gemm computes on the converted, zero-padded tile (v*kq added fused, cell after cell). A
// cell's V row is read whole and in order (the accumulators stay in L1: R*DV floats), as the
// hardware prefetches it.
template <int R>
static void fa_exact_vkq_direct(
        float * VKQ, const float * KQ, int ld, const char * v_data, size_t nb1, bool f16, int n, int cells, int64_t DV) {
    const int64_t DV8 = DV - DV % 8;
    for (int tk = 0; tk < cells; ++tk) {
        const char * row = v_data + tk*nb1;
        __m256 p[R];
        for (int r = 0; r < R; ++r) {
            p[r] = _mm256_broadcast_ss(KQ + r*ld + tk);
        }
        for (int64_t d = 0; d < DV8; d += 8) {
            const __m256 v = tk < n ? fa_exact_load8(row, f16, d) : _mm256_setzero_ps();
            for (int r = 0; r < R; ++r) {
                float * acc = VKQ + r*DV + d;
                _mm256_storeu_ps(acc, _mm256_fmadd_ps(v, p[r], _mm256_loadu_ps(acc)));
            }
        }
        for (int64_t d = DV8; d < DV; ++d) {
            const float v = tk >= n ? 0.0f : f16 ? GGML_CPU_FP16_TO_FP32(((const ggml_fp16_t *) row)[d]) : ((const float *) row)[d];
            for (int r = 0; r < R; ++r) {
                VKQ[r*DV + d] = fmaf(v, KQ[r*ld + tk], VKQ[r*DV + d]);
            }
        }
    }
}

// `f` called with R = rows (1 to FA_EXACT_DIRECT_ROWS) as a constant, so that the two above keep
// their accumulators in registers.
template <typename F>
static void fa_exact_with_rows(int rows, F && f) {
    switch (rows) {
        case 1: f(std::integral_constant<int, 1>{}); break;
        case 2: f(std::integral_constant<int, 2>{}); break;
        case 3: f(std::integral_constant<int, 3>{}); break;
        case 4: f(std::integral_constant<int, 4>{}); break;
        case 5: f(std::integral_constant<int, 5>{}); break;
        case 6: f(std::integral_constant<int, 6>{}); break;
        case 7: f(std::integral_constant<int, 7>{}); break;
        default: f(std::integral_constant<int, 8>{}); break;
    }
}
#endif
