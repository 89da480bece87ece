// localrun: the CPU flash-attention kernel of the "exact" runtime (localrun/runtimes/exact.py).
// It replaces ggml_compute_forward_flash_attn_ext_tiled in ggml-cpu/ops.cpp of the llama.cpp
// source that llama-cpp-python binds (MIT, the ggml authors), and every row count takes it, so
// a row's arithmetic never depends on the batch it is in (cold or cached prompt, alone or beside
// other streams, a speculation's verification batch, any thread count).
static void ggml_compute_forward_flash_attn_ext_tiled(
        const ggml_compute_params * params,
        ggml_tensor * dst,
        int ir0, int ir1) {
    // localrun (exact): every row count takes this kernel, so a row's arithmetic never depends
    // on the batch it is in. Rows of the q heads that read one KV head share a tile (a decode's
    // heads share the conversion of K and V); the GEMMs run on the tile's rows only. Each
    // output element is the same chain of FMAs whatever the tile holds.
    const ggml_tensor * q     = dst->src[0];
    const ggml_tensor * k     = dst->src[1];
    const ggml_tensor * v     = dst->src[2];
    const ggml_tensor * mask  = dst->src[3];
    const ggml_tensor * sinks = dst->src[4];

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
    GGML_ASSERT(nbq0 == ggml_type_size(q->type));
    GGML_ASSERT(nbk0 == ggml_type_size(k->type));
    GGML_ASSERT(nbv0 == ggml_type_size(v->type));
    GGML_ASSERT(neq0 == DK);
    GGML_ASSERT(nek0 == DK);
    GGML_ASSERT(nev0 == DV);
    GGML_ASSERT(neq1 == N);
    GGML_ASSERT(nb0 == sizeof(float));
    GGML_ASSERT(nb0 <= nb1);
    GGML_ASSERT(nb1 <= nb2);
    GGML_ASSERT(nb2 <= nb3);
    GGML_ASSERT(k->type == v->type);
    const ggml_type kv_type = k->type;

    const int64_t rk2 = neq2/nek2;
    const int64_t rk3 = neq3/nek3;
    const int64_t rv2 = neq2/nev2;
    const int64_t rv3 = neq3/nev3;

    float scale         = 1.0f;
    float max_bias      = 0.0f;
    float logit_softcap = 0.0f;

    memcpy(&scale,         (float *) dst->op_params + 0, sizeof(float));
    memcpy(&max_bias,      (float *) dst->op_params + 1, sizeof(float));
    memcpy(&logit_softcap, (float *) dst->op_params + 2, sizeof(float));

    if (logit_softcap != 0) {
        scale /= logit_softcap;
    }

    const uint32_t n_head      = neq2;
    const uint32_t n_head_log2 = 1u << (uint32_t) floor(log2(n_head));

    const float m0 = powf(2.0f, -(max_bias       ) / n_head_log2);
    const float m1 = powf(2.0f, -(max_bias / 2.0f) / n_head_log2);

    const int ith = params->ith;

    static constexpr int Q_TILE_SZ  = ggml_fa_tile_config::Q;
    static constexpr int KV_TILE_SZ = ggml_fa_tile_config::KV;

    float * base  = (float *) params->wdata + ith*(Q_TILE_SZ*DK + 2*Q_TILE_SZ*KV_TILE_SZ + Q_TILE_SZ*DV + KV_TILE_SZ*DV + KV_TILE_SZ*DK + CACHE_LINE_SIZE_F32);

    float * Q_f32  = base;
    float * KQ     = Q_f32 + Q_TILE_SZ * DK;
    float * mask32 = KQ + Q_TILE_SZ * KV_TILE_SZ;
    float * VKQ32  = mask32 + Q_TILE_SZ * KV_TILE_SZ;
    float * V32    = VKQ32 + Q_TILE_SZ * DV;
    float * K_f32  = V32 + KV_TILE_SZ * DV;

    int   head[Q_TILE_SZ];
    int   row1[Q_TILE_SZ];
    float slope[Q_TILE_SZ];

    int ir = ir0;
    while (ir < ir1) {
        const int iq3 = ir/(neq2*neq1);
        const int iq2 = (ir - iq3*neq2*neq1)/neq1;
        const int iq1 = (ir - iq3*neq2*neq1 - iq2*neq1);

        const int ik3 = iq3 / rk3;
        const int ik2 = iq2 / rk2;
        const int iv3 = iq3 / rv3;
        const int iv2 = iq2 / rv2;

        // the tile ends where this KV head's q heads end (or at the chunk's end)
        const int64_t heads_end = MIN(MIN((int64_t)(ik2 + 1)*rk2, (int64_t)(iv2 + 1)*rv2), neq2);
        const int64_t rows_left = (heads_end - iq2)*neq1 - iq1;
        const int tile_rows = (int) MIN((int64_t) Q_TILE_SZ, MIN((int64_t)(ir1 - ir), rows_left));
        GGML_ASSERT(tile_rows > 0);

        float S[Q_TILE_SZ];
        float M[Q_TILE_SZ];

        for (int tq = 0; tq < tile_rows; ++tq) {
            S[tq] = 0.;
            M[tq] = -INFINITY;
            const int64_t r = iq1 + tq;
            head[tq] = (int) (iq2 + r/neq1);
            row1[tq] = (int) (r % neq1);
            const uint32_t h = head[tq];
            slope[tq] = (max_bias > 0.0f) ? h < n_head_log2 ? powf(m0, h + 1) : powf(m1, 2*(h - n_head_log2) + 1) : 1.0f;
            const float * pq = (const float *) ((char *) q->data + (row1[tq]*nbq1 + head[tq]*nbq2 + iq3*nbq3));
            memcpy(Q_f32 + tq * DK, pq, DK * sizeof(float));
        }

        memset(VKQ32, 0, tile_rows * DV * sizeof(float));

        for (int64_t ic = 0; ic < nek1; ic += KV_TILE_SZ) {
            const int kv_tile = (int)std::min((int64_t)KV_TILE_SZ, nek1 - ic);

            // skip the tile entirely if all the masks are -inf
            if (mask) {
                bool can_skip = true;
                for (int tq = 0; tq < tile_rows; tq++) {
                    const ggml_fp16_t * mp_row = (const ggml_fp16_t *)((const char *) mask->data + row1[tq]*mask->nb[1] + (head[tq]%mask->ne[2])*mask->nb[2] + (iq3%mask->ne[3])*mask->nb[3]);
                    for (int tk = 0; tk < kv_tile; tk++) {
                        mask32[tq * KV_TILE_SZ + tk] = slope[tq] * GGML_CPU_FP16_TO_FP32(mp_row[ic + tk]);
                        if (mask32[tq * KV_TILE_SZ + tk] != -INFINITY) {
                            can_skip = false;
                        }
                    }
                    for (int tk = kv_tile; tk < KV_TILE_SZ; tk++) {
                        mask32[tq * KV_TILE_SZ + tk] = -INFINITY;
                    }
                }

                if (can_skip) {
                    continue;
                }
            }

            // Pack K tile transposed: K_f32[dk][kv] so KV_TILE is contiguous (SIMD dim);
            // V32 is free here and holds each K row converted.
            for (int tk = 0; tk < kv_tile; tk++) {
                const char * k_data = (const char *)k->data + (ic + tk)*nbk1 + ik2*nbk2 + ik3*nbk3;
                const float * k_row;
                if (kv_type == GGML_TYPE_F16) {
                    ggml_cpu_fp16_to_fp32((const ggml_fp16_t *)k_data, V32, DK);
                    k_row = V32;
                } else {
                    k_row = (const float *)k_data;
                }
                for (int64_t dk = 0; dk < DK; dk++) {
                    K_f32[dk * KV_TILE_SZ + tk] = k_row[dk];
                }
            }
            for (int64_t dk = 0; dk < DK && kv_tile < KV_TILE_SZ; dk++) {
                for (int tk = kv_tile; tk < KV_TILE_SZ; tk++) {
                    K_f32[dk * KV_TILE_SZ + tk] = 0.0f;
                }
            }
            memset(KQ, 0, tile_rows * KV_TILE_SZ * sizeof(float));
            simd_gemm(KQ, Q_f32, K_f32, tile_rows, DK, KV_TILE_SZ);
            ggml_vec_scale_f32(tile_rows * KV_TILE_SZ, KQ, scale);

            if (logit_softcap != 0.0f) {
                ggml_vec_tanh_f32(tile_rows * KV_TILE_SZ, KQ, KQ);
                ggml_vec_scale_f32(tile_rows * KV_TILE_SZ, KQ, logit_softcap);
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

            bool skip[Q_TILE_SZ] = {};

            for (int tq = 0; tq < tile_rows; tq++) {
                float * kq_row = KQ + tq * KV_TILE_SZ;

                float tile_max;
                ggml_vec_max_f32(KV_TILE_SZ, &tile_max, kq_row);

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

            // V accumulation: VKQ32 += softmax(KQ) * V, the V tile as F32, zero-padded
            for (int tk = 0; tk < kv_tile; tk++) {
                const char * v_data = (const char *)v->data + (ic + tk)*nbv1 + iv2*nbv2 + iv3*nbv3;
                if (kv_type == GGML_TYPE_F16) {
                    ggml_cpu_fp16_to_fp32((const ggml_fp16_t *)v_data, V32 + tk * DV, DV);
                } else {
                    memcpy(V32 + tk * DV, v_data, DV * sizeof(float));
                }
            }
            if (kv_tile < KV_TILE_SZ) {
                memset(V32 + kv_tile * DV, 0, (KV_TILE_SZ - kv_tile) * DV * sizeof(float));
            }
            for (int tq = 0; tq < tile_rows; tq++) {
                if (skip[tq]) {
                    memset(KQ + tq * KV_TILE_SZ, 0, KV_TILE_SZ * sizeof(float));
                }
            }
            simd_gemm(VKQ32, KQ, V32, tile_rows, KV_TILE_SZ, DV);
        }

        for (int tq = 0; tq < tile_rows; tq++) {
            if (sinks) {
                const float s = ((float *)((char *) sinks->data))[head[tq]];

                float ms = 1.0f;
                float vs = 1.0f;

                if (s > M[tq]) {
                    ms = expf(M[tq] - s);
                    ggml_vec_scale_f32(DV, VKQ32 + tq * DV, ms);
                } else {
                    vs = expf(s - M[tq]);
                }

                S[tq] = S[tq] * ms + vs;
            }

            // V /= S
            const float S_inv = S[tq] == 0.0f ? 0.0f : 1.0f / S[tq];
            ggml_vec_scale_f32(DV, VKQ32 + tq * DV, S_inv);

            // permute(0, 2, 1, 3)
            memcpy((char *) dst->data + (iq3*ne2*ne1 + head[tq] + row1[tq]*ne1)*nb1, VKQ32 + tq * DV, nb1);
        }

        ir += tile_rows;
    }
}
