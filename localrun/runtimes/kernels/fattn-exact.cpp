// localrun: the CPU flash attention of the "exact" runtime (localrun/runtimes/exact.py), built
// into ggml-cpu beside ops.cpp, whose ggml_compute_forward_flash_attn_ext calls it in place of
// ggml_compute_forward_flash_attn_ext_f16 (patches/0001-cpu-flash-attention-one-kernel.patch).
// The kernel below is ggml's tiled one (ops.cpp), reorganised, under ggml's license:
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
//
// A row's arithmetic never depends on the batch it is in (a cold or a cached prompt, alone or
// beside other streams, a speculation's verification batch, any thread count):
// - an F16/F32 KV cache takes this one kernel at every row count (upstream picks a tiled kernel
//   for 64 rows or more, a split-KV one for a lone token past 512 cells whose chunks follow the
//   thread count, and a row-by-row one otherwise, each summing in its own order);
// - each output element of the kernel's GEMMs is one fixed chain of FMAs over its inputs, and
//   the GEMMs run on the tile's rows only, so what else a tile holds changes nothing;
// - the KV cells are cut into segments of LOCALRUN_FA_SEG cells at fixed positions; a row's
//   result is its segments' partial results merged in order (fa_exact_merge), whether one
//   thread runs them in turn (many rows: a prompt) or the threads run them side by side and
//   one merges (a few rows: a decode, a draft), which gives a lone token the threads that
//   upstream's split-KV gave it;
// - the rows of the q heads that read one KV head share a tile, so a decode's heads share the
//   conversion of K and V.

#include "fattn-exact.h"
#include "fattn-exact-simd.h"

#include "common.h"
#include "ggml-cpu.h"
#include "ggml-impl.h"
#include "ops.h"
#include "simd-gemm.h"
#include "vec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__GNUC__)
#define FA_EXACT_NOINLINE __attribute__((noinline))
#else
#define FA_EXACT_NOINLINE
#endif

struct fa_exact_op {
    const ggml_tensor * q;
    const ggml_tensor * k;
    const ggml_tensor * v;
    const ggml_tensor * mask;
    const ggml_tensor * sinks;
    ggml_tensor * dst;
    int64_t DK, DV, neq1, neq2, nek1;
    int64_t rk2, rk3, rv2, rv3;
    float scale, max_bias, logit_softcap, m0, m1;
    uint32_t n_head_log2;
};

// A tile: up to Q rows of one q3 index whose heads read one KV head.
struct fa_exact_tile {
    int rows;
    int iq3, ik2, ik3, iv2, iv3;
    int head[ggml_fa_tile_config::Q];
    int row1[ggml_fa_tile_config::Q];
    float slope[ggml_fa_tile_config::Q];
};

static constexpr int64_t FA_EXACT_SCRATCH_Q = ggml_fa_tile_config::Q;
static constexpr int64_t FA_EXACT_SCRATCH_KV = ggml_fa_tile_config::KV;

// Floats of one thread's scratch: Q, KQ, mask, VKQ (a segment's), V, K, VKQ (the merged one).
static int64_t fa_exact_stride(int64_t DK, int64_t DV) {
    return FA_EXACT_SCRATCH_Q*DK + 2*FA_EXACT_SCRATCH_Q*FA_EXACT_SCRATCH_KV + 2*FA_EXACT_SCRATCH_Q*DV
         + FA_EXACT_SCRATCH_KV*DV + FA_EXACT_SCRATCH_KV*DK + CACHE_LINE_SIZE_F32;
}

// One thread's scratch, laid out as fa_exact_stride counts it.
struct fa_exact_scratch {
    float * Q;     // the tile's rows of Q
    float * KQ;    // their scores against a KV tile
    float * mask;  // the mask's values for them
    float * VKQ;   // a segment's unnormalised output
    float * V;     // a V tile as F32 (and, before it, each K row converted)
    float * K;     // a K tile as F32, transposed
    float * VKQF;  // the merged output of the segments so far
};

static fa_exact_scratch fa_exact_scratch_of(const ggml_compute_params * params, int64_t DK, int64_t DV) {
    fa_exact_scratch s;
    s.Q    = (float *) params->wdata + params->ith*fa_exact_stride(DK, DV);
    s.KQ   = s.Q + FA_EXACT_SCRATCH_Q * DK;
    s.mask = s.KQ + FA_EXACT_SCRATCH_Q * FA_EXACT_SCRATCH_KV;
    s.VKQ  = s.mask + FA_EXACT_SCRATCH_Q * FA_EXACT_SCRATCH_KV;
    s.V    = s.VKQ + FA_EXACT_SCRATCH_Q * DV;
    s.K    = s.V + FA_EXACT_SCRATCH_KV * DV;
    s.VKQF = s.K + FA_EXACT_SCRATCH_KV * DK;
    return s;
}

static fa_exact_op fa_exact_op_of(ggml_tensor * dst) {
    fa_exact_op op;
    op.q = dst->src[0];
    op.k = dst->src[1];
    op.v = dst->src[2];
    op.mask = dst->src[3];
    op.sinks = dst->src[4];
    op.dst = dst;
    op.DK = op.k->ne[0];
    op.DV = op.v->ne[0];
    op.neq1 = op.q->ne[1];
    op.neq2 = op.q->ne[2];
    op.nek1 = op.k->ne[1];
    op.rk2 = op.q->ne[2]/op.k->ne[2];
    op.rk3 = op.q->ne[3]/op.k->ne[3];
    op.rv2 = op.q->ne[2]/op.v->ne[2];
    op.rv3 = op.q->ne[3]/op.v->ne[3];
    op.scale = 1.0f;
    op.max_bias = 0.0f;
    op.logit_softcap = 0.0f;
    memcpy(&op.scale,         (float *) dst->op_params + 0, sizeof(float));
    memcpy(&op.max_bias,      (float *) dst->op_params + 1, sizeof(float));
    memcpy(&op.logit_softcap, (float *) dst->op_params + 2, sizeof(float));
    if (op.logit_softcap != 0) {
        op.scale /= op.logit_softcap;
    }
    const uint32_t n_head = op.neq2;
    op.n_head_log2 = 1u << (uint32_t) floor(log2(n_head));
    op.m0 = powf(2.0f, -(op.max_bias       ) / op.n_head_log2);
    op.m1 = powf(2.0f, -(op.max_bias / 2.0f) / op.n_head_log2);
    return op;
}

// The tile that starts at row `ir` (rows numbered as dst's: q1 fastest, then head, then q3) and
// ends at `ir1`, at the end of the heads of its KV head, or after Q rows.
static void fa_exact_tile_at(const fa_exact_op & op, int64_t ir, int64_t ir1, fa_exact_tile & t) {
    const int64_t neq1 = op.neq1, neq2 = op.neq2;
    const int iq3 = ir/(neq2*neq1);
    const int iq2 = (ir - iq3*neq2*neq1)/neq1;
    const int iq1 = (ir - iq3*neq2*neq1 - iq2*neq1);
    t.iq3 = iq3;
    t.ik3 = iq3 / op.rk3;
    t.ik2 = iq2 / op.rk2;
    t.iv3 = iq3 / op.rv3;
    t.iv2 = iq2 / op.rv2;
    const int64_t heads_end = MIN(MIN((int64_t)(t.ik2 + 1)*op.rk2, (int64_t)(t.iv2 + 1)*op.rv2), neq2);
    const int64_t rows_left = (heads_end - iq2)*neq1 - iq1;
    t.rows = (int) MIN((int64_t) ggml_fa_tile_config::Q, MIN(ir1 - ir, rows_left));
    GGML_ASSERT(t.rows > 0);
    for (int tq = 0; tq < t.rows; ++tq) {
        const int64_t r = iq1 + tq;
        t.head[tq] = (int) (iq2 + r/neq1);
        t.row1[tq] = (int) (r % neq1);
        const uint32_t h = t.head[tq];
        t.slope[tq] = (op.max_bias > 0.0f) ? h < op.n_head_log2 ? powf(op.m0, h + 1) : powf(op.m1, 2*(h - op.n_head_log2) + 1) : 1.0f;
    }
}

// One segment [ic0, ic1) of the KV cells for a tile's rows: M, S and the unnormalised VKQ
// (tile.rows x DV), from nothing. `Q_f32` holds the tile's rows of Q.
static void FA_EXACT_NOINLINE fa_exact_segment(
        const fa_exact_op & op, const fa_exact_tile & t, int64_t ic0, int64_t ic1,
        const fa_exact_scratch & w, float * M, float * S) {
    static constexpr int KV_TILE_SZ = ggml_fa_tile_config::KV;
    const int64_t DK = op.DK, DV = op.DV;
    const ggml_tensor * k = op.k;
    const ggml_tensor * v = op.v;
    const ggml_tensor * mask = op.mask;
    const ggml_type kv_type = k->type;
    const int tile_rows = t.rows;
    const float * Q_f32 = w.Q;
    float * KQ = w.KQ;
    float * mask32 = w.mask;
    float * V32 = w.V;
    float * K_f32 = w.K;
    float * VKQ32 = w.VKQ;

    for (int tq = 0; tq < tile_rows; ++tq) {
        S[tq] = 0.0f;
        M[tq] = -INFINITY;
    }
    memset(VKQ32, 0, tile_rows * DV * sizeof(float));
#if defined(FA_EXACT_DIRECT)
    // A few rows read K and V in place: the same sums as the shared tile's (below), no F32 copy
    const bool direct = tile_rows <= FA_EXACT_DIRECT_ROWS && DK <= 1024;
#endif

    for (int64_t ic = ic0; ic < ic1; ic += KV_TILE_SZ) {
        const int kv_tile = (int)std::min((int64_t)KV_TILE_SZ, ic1 - ic);

        // skip the tile entirely if all the masks are -inf (the mask's rows converted with the
        // vector conversion: the same values as a lookup, and a row that rows share once)
        if (mask) {
            bool can_skip = true;
            const ggml_fp16_t * last = nullptr;
            for (int tq = 0; tq < tile_rows; tq++) {
                const ggml_fp16_t * mp_row = (const ggml_fp16_t *)((const char *) mask->data + t.row1[tq]*mask->nb[1] + (t.head[tq]%mask->ne[2])*mask->nb[2] + (t.iq3%mask->ne[3])*mask->nb[3]);
                float * m32 = mask32 + tq * KV_TILE_SZ;
                if (mp_row == last && t.slope[tq] == t.slope[tq - 1]) {
                    memcpy(m32, m32 - KV_TILE_SZ, KV_TILE_SZ * sizeof(float));
                    continue;
                }
                last = mp_row;
                ggml_cpu_fp16_to_fp32(mp_row + ic, m32, kv_tile);
                if (t.slope[tq] != 1.0f) {
                    for (int tk = 0; tk < kv_tile; tk++) {
                        m32[tk] = t.slope[tq] * m32[tk];
                    }
                }
                can_skip = can_skip && fa_exact_all_hidden(kv_tile, m32);
                for (int tk = kv_tile; tk < KV_TILE_SZ; tk++) {
                    m32[tk] = -INFINITY;
                }
            }
            if (can_skip) {
                continue;
            }
        }

        const bool f16 = kv_type == GGML_TYPE_F16;
        const char * k_data = (const char *)k->data + ic*k->nb[1] + t.ik2*k->nb[2] + t.ik3*k->nb[3];
#if defined(FA_EXACT_DIRECT)
        if (direct) {
            fa_exact_with_rows(tile_rows, [&](auto R) {
                fa_exact_kq_direct<R.value>(KQ, KV_TILE_SZ, Q_f32, k_data, k->nb[1], f16, kv_tile, DK);
            });
        } else
#endif
        {
            // K tile transposed: K_f32[dk][kv], zero-padded (V32 is free here: each K row converted)
            fa_exact_k_transposed(k_data, k->nb[1], f16, kv_tile, DK, KV_TILE_SZ, K_f32, V32);
            if (kv_tile < KV_TILE_SZ) {
                for (int64_t dk = 0; dk < DK; dk++) {
                    for (int tk = kv_tile; tk < KV_TILE_SZ; tk++) {
                        K_f32[dk * KV_TILE_SZ + tk] = 0.0f;
                    }
                }
            }
            memset(KQ, 0, tile_rows * KV_TILE_SZ * sizeof(float));
            simd_gemm(KQ, Q_f32, K_f32, tile_rows, DK, KV_TILE_SZ);
        }
        ggml_vec_scale_f32(tile_rows * KV_TILE_SZ, KQ, op.scale);

        if (op.logit_softcap != 0.0f) {
            ggml_vec_tanh_f32(tile_rows * KV_TILE_SZ, KQ, KQ);
            ggml_vec_scale_f32(tile_rows * KV_TILE_SZ, KQ, op.logit_softcap);
        }

        if (kv_tile < KV_TILE_SZ) {
            for (int tq = 0; tq < tile_rows; tq++) {
                for (int tk = kv_tile; tk < KV_TILE_SZ; tk++) {
                    KQ[tq * KV_TILE_SZ + tk] = -INFINITY;
                }
            }
        }

        if (mask) {
            ggml_vec_add_f32(tile_rows * KV_TILE_SZ, KQ, KQ, mask32);
        }

        bool skip[ggml_fa_tile_config::Q] = {};

        for (int tq = 0; tq < tile_rows; tq++) {
            float * kq_row = KQ + tq * KV_TILE_SZ;

            const float tile_max = fa_exact_max(KV_TILE_SZ, kq_row);

            if (tile_max == -INFINITY) {
                skip[tq] = true;
                continue;
            }

            const float Mold = M[tq];
            const float Mnew = fmaxf(Mold, tile_max);

            if (Mnew > Mold) {
                const float ms = expf(Mold - Mnew);
                ggml_vec_scale_f32(DV, VKQ32 + tq * DV, ms);
                S[tq] *= ms;
            }
            M[tq] = Mnew;

            S[tq] += ggml_vec_soft_max_f32(KV_TILE_SZ, kq_row, kq_row, Mnew);
        }

        for (int tq = 0; tq < tile_rows; tq++) {
            if (skip[tq]) {
                memset(KQ + tq * KV_TILE_SZ, 0, KV_TILE_SZ * sizeof(float));
            }
        }
        // VKQ32 += softmax(KQ) * V, the V tile as F32, zero-padded
        const char * v_data = (const char *)v->data + ic*v->nb[1] + t.iv2*v->nb[2] + t.iv3*v->nb[3];
#if defined(FA_EXACT_DIRECT)
        if (direct) {
            fa_exact_with_rows(tile_rows, [&](auto R) {
                fa_exact_vkq_direct<R.value>(VKQ32, KQ, KV_TILE_SZ, v_data, v->nb[1], f16, kv_tile, KV_TILE_SZ, DV);
            });
            continue;
        }
#endif
        for (int tk = 0; tk < kv_tile; tk++) {
            fa_exact_row_f32(v_data + tk*v->nb[1], f16, DV, V32 + tk * DV);
        }
        if (kv_tile < KV_TILE_SZ) {
            memset(V32 + kv_tile * DV, 0, (KV_TILE_SZ - kv_tile) * DV * sizeof(float));
        }
        simd_gemm(VKQ32, KQ, V32, tile_rows, KV_TILE_SZ, DV);
    }
}

// A row's merged result (M, S, VKQ) takes one more segment's, in segment order; a segment where
// the row sees no cell (S == 0) changes nothing. The one place where segments meet.
static void FA_EXACT_NOINLINE fa_exact_merge(
        int64_t DV, float * M, float * S, float * VKQ, float Ms, float Ss, const float * VKQs) {
    if (Ss == 0.0f) {
        return;
    }
    const float Mnew = fmaxf(*M, Ms);
    const float so = expf(*M - Mnew);
    const float sn = expf(Ms - Mnew);
    for (int64_t d = 0; d < DV; ++d) {
        VKQ[d] = fmaf(VKQs[d], sn, VKQ[d] * so);
    }
    *S = fmaf(Ss, sn, *S * so);
    *M = Mnew;
}

// A row's end: its sink, then VKQ / S written to dst.
static void FA_EXACT_NOINLINE fa_exact_finish(
        const fa_exact_op & op, int iq3, int head, int row1, float M, float S, float * VKQ) {
    const int64_t DV = op.DV;
    if (op.sinks) {
        const float s = ((float *)((char *) op.sinks->data))[head];
        float ms = 1.0f;
        float vs = 1.0f;
        if (s > M) {
            ms = expf(M - s);
            ggml_vec_scale_f32(DV, VKQ, ms);
        } else {
            vs = expf(s - M);
        }
        S = S * ms + vs;
    }
    const float S_inv = S == 0.0f ? 0.0f : 1.0f / S;
    ggml_vec_scale_f32(DV, VKQ, S_inv);
    const ggml_tensor * dst = op.dst;
    const int64_t ne1 = dst->ne[1], ne2 = dst->ne[2];
    // permute(0, 2, 1, 3)
    memcpy((char *) dst->data + (iq3*ne2*ne1 + head + row1*ne1)*dst->nb[1], VKQ, dst->nb[1]);
}

static void fa_exact_load_q(const fa_exact_op & op, const fa_exact_tile & t, float * Q_f32) {
    for (int tq = 0; tq < t.rows; tq++) {
        const float * pq = (const float *) ((char *) op.q->data + (t.row1[tq]*op.q->nb[1] + t.head[tq]*op.q->nb[2] + t.iq3*op.q->nb[3]));
        memcpy(Q_f32 + tq * op.DK, pq, op.DK * sizeof(float));
    }
}

// Rows [ir0, ir1) on this thread: each tile runs its segments in turn, merging as it goes.
static void fa_exact_rows(
        const ggml_compute_params * params, const fa_exact_op & op, int64_t ir0, int64_t ir1) {
    static constexpr int Q_TILE_SZ  = ggml_fa_tile_config::Q;
    const int64_t DV = op.DV;
    const fa_exact_scratch w = fa_exact_scratch_of(params, op.DK, DV);

    fa_exact_tile t;
    float M[Q_TILE_SZ], S[Q_TILE_SZ], MF[Q_TILE_SZ], SF[Q_TILE_SZ];
    int64_t ir = ir0;
    while (ir < ir1) {
        fa_exact_tile_at(op, ir, ir1, t);
        fa_exact_load_q(op, t, w.Q);
        for (int tq = 0; tq < t.rows; tq++) {
            MF[tq] = -INFINITY;
            SF[tq] = 0.0f;
        }
        memset(w.VKQF, 0, t.rows * DV * sizeof(float));
        for (int64_t ic = 0; ic < op.nek1; ic += LOCALRUN_FA_SEG) {
            const int64_t ic1 = std::min(ic + (int64_t) LOCALRUN_FA_SEG, op.nek1);
            fa_exact_segment(op, t, ic, ic1, w, M, S);
            for (int tq = 0; tq < t.rows; tq++) {
                fa_exact_merge(DV, &MF[tq], &SF[tq], w.VKQF + tq*DV, M[tq], S[tq], w.VKQ + tq*DV);
            }
        }
        for (int tq = 0; tq < t.rows; tq++) {
            fa_exact_finish(op, t.iq3, t.head[tq], t.row1[tq], MF[tq], SF[tq], w.VKQF + tq*DV);
        }
        ir += t.rows;
    }
}

// A few rows (a decode, a draft): the threads run (tile, segment) pairs side by side, each
// pair's partial results kept; then each row's are merged in segment order. False when the
// partials would not fit their buffer: the rows then go the way of many rows.
static bool fa_exact_side_by_side(const ggml_compute_params * params, const fa_exact_op & op) {
    const int64_t neq1 = op.neq1, neq2 = op.neq2, neq3 = op.q->ne[3];
    const int64_t DK = op.DK, DV = op.DV;
    const int64_t group = neq1*op.rk2;
    if (op.rk2 != op.rv2 || group > (int64_t) ggml_fa_tile_config::Q) {
        return false;
    }
    const int64_t n_groups = (neq2/op.rk2)*neq3;
    const int64_t n_segs = (op.nek1 + LOCALRUN_FA_SEG - 1)/LOCALRUN_FA_SEG;
    const int64_t part = 2 + DV;
    if ((size_t)(n_groups*n_segs*group*part)*sizeof(float) > (size_t) LOCALRUN_FA_PARTIALS) {
        return false;
    }
    static constexpr int Q_TILE_SZ  = ggml_fa_tile_config::Q;
    const int ith = params->ith, nth = params->nth;
    const fa_exact_scratch w = fa_exact_scratch_of(params, DK, DV);
    float * partials = (float *) params->wdata + nth*fa_exact_stride(DK, DV);

    // Fewer (group, segment) pairs than threads (a decode of a model with few KV heads at short
    // depth: Gemma 3's one): a group's rows are parted among threads, each part its own tile (a
    // row's sums do not depend on the tile's other rows), so no thread waits while one works.
    const int64_t n_units = n_groups*n_segs;
    const int64_t n_parts = n_units < nth ? std::min(group, (nth + n_units - 1)/n_units) : 1;
    const int64_t part_rows = (group + n_parts - 1)/n_parts;

    fa_exact_tile t;
    float M[Q_TILE_SZ], S[Q_TILE_SZ];
    int64_t loaded = -1;
    for (int64_t u = ith; u < n_units*n_parts; u += nth) {
        const int64_t gp = u / n_segs, s = u % n_segs;
        const int64_t g = gp / n_parts, r0 = (gp % n_parts)*part_rows;
        if (r0 >= group) {
            continue;
        }
        const int64_t rows = std::min(part_rows, group - r0);
        const int64_t ir = g*group + r0;
        fa_exact_tile_at(op, ir, ir + rows, t);
        GGML_ASSERT(t.rows == rows);
        if (loaded != gp) {
            fa_exact_load_q(op, t, w.Q);
            loaded = gp;
        }
        const int64_t ic0 = s*LOCALRUN_FA_SEG;
        const int64_t ic1 = std::min(ic0 + (int64_t) LOCALRUN_FA_SEG, op.nek1);
        fa_exact_segment(op, t, ic0, ic1, w, M, S);
        for (int tq = 0; tq < t.rows; tq++) {
            float * p = partials + ((g*n_segs + s)*group + r0 + tq)*part;
            p[0] = M[tq];
            p[1] = S[tq];
            memcpy(p + 2, w.VKQ + tq*DV, DV*sizeof(float));
        }
    }
    ggml_barrier(params->threadpool);
    const int64_t nr = n_groups*group;
    for (int64_t r = ith; r < nr; r += nth) {
        const int64_t g = r / group, tq = r % group;
        fa_exact_tile_at(op, g*group, g*group + group, t);
        float MF = -INFINITY, SF = 0.0f;
        float * VKQF = w.VKQ;
        memset(VKQF, 0, DV*sizeof(float));
        for (int64_t s = 0; s < n_segs; s++) {
            const float * p = partials + ((g*n_segs + s)*group + tq)*part;
            fa_exact_merge(DV, &MF, &SF, VKQF, p[0], p[1], p + 2);
        }
        fa_exact_finish(op, t.iq3, t.head[tq], t.row1[tq], MF, SF, VKQF);
    }
    return true;
}

void ggml_compute_forward_flash_attn_ext_exact(
        const ggml_compute_params * params,
        ggml_tensor * dst,
        ggml_fa_one_chunk_fn one_chunk) {

    const ggml_tensor * q     = dst->src[0];
    const ggml_tensor * k     = dst->src[1];
    const ggml_tensor * v     = dst->src[2];

    GGML_TENSOR_LOCALS(int64_t, neq, q,   ne)
    GGML_TENSOR_LOCALS(size_t,  nbq, q,   nb)
    GGML_TENSOR_LOCALS(int64_t, nek, k,   ne)
    GGML_TENSOR_LOCALS(size_t,  nbk, k,   nb)
    GGML_TENSOR_LOCALS(int64_t, nev, v,   ne)
    GGML_TENSOR_LOCALS(size_t,  nbv, v,   nb)
    GGML_TENSOR_LOCALS(int64_t, ne,  dst, ne)
    GGML_TENSOR_LOCALS(size_t,  nb,  dst, nb)

    const int64_t DK = nek0;
    const int64_t DV = nev0;
    const int64_t N  = neq1;

    GGML_ASSERT(ne0 == DV);
    GGML_ASSERT(ne2 == N);

    // input tensor rows must be contiguous
    GGML_ASSERT(nbq0 == ggml_type_size(q->type));
    GGML_ASSERT(nbk0 == ggml_type_size(k->type));
    GGML_ASSERT(nbv0 == ggml_type_size(v->type));

    GGML_ASSERT(neq0 == DK);
    GGML_ASSERT(nek0 == DK);
    GGML_ASSERT(nev0 == DV);

    GGML_ASSERT(neq1 == N);

    // dst cannot be transposed or permuted
    GGML_ASSERT(nb0 == sizeof(float));
    GGML_ASSERT(nb0 <= nb1);
    GGML_ASSERT(nb1 <= nb2);
    GGML_ASSERT(nb2 <= nb3);

    const int ith = params->ith;
    const int nth = params->nth;

    const bool kv_is_f32_or_f16 = (k->type == GGML_TYPE_F32 || k->type == GGML_TYPE_F16);
    bool use_tiled = !params->use_ref && q->type == GGML_TYPE_F32 && kv_is_f32_or_f16 && k->type == v->type;
#if defined(GGML_SIMD) && !defined(__x86_64__) && !defined(_M_X64)
#if defined(__ARM_FEATURE_SVE)
    const int64_t f32_epr = svcntw();
#else
    const int64_t f32_epr = GGML_F32_EPR;
#endif
    use_tiled &= (DV % f32_epr == 0);
#endif

    const fa_exact_op op = fa_exact_op_of(dst);
    if (use_tiled && fa_exact_side_by_side(params, op)) {
        return;
    }

    // total rows in q
    const int64_t nr = neq1*neq2*neq3;

    // disable for NUMA
    const bool disable_chunking = ggml_is_numa();

    // 4x chunks per thread
    int nth_scaled = nth * 4;
    int64_t chunk_size = (nr + nth_scaled - 1) / nth_scaled;
    int64_t nchunk     = (nr + chunk_size - 1) / chunk_size;

    if (nth == 1 || nchunk < nth || disable_chunking) {
        nchunk = nth;
    }

    if (ith == 0) {
        ggml_threadpool_chunk_set(params->threadpool, nth);
    }

    ggml_barrier(params->threadpool);

    const int64_t dr = (nr + nchunk - 1) / nchunk;

    int current_chunk = ith;

    while (current_chunk < nchunk) {
        const int64_t ir0 = dr * current_chunk;
        const int64_t ir1 = MIN(ir0 + dr, nr);

        if (use_tiled) {
            fa_exact_rows(params, op, ir0, ir1);
        } else {
            one_chunk(params, dst, ir0, ir1, 0, nek1, nullptr, 0);
        }

        current_chunk = ggml_threadpool_chunk_add(params->threadpool, 1);
    }
}
