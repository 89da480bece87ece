"""The exact runtime's x86 edits: K-quant weights sum a row alike in any batch (runtimes/exact.py).

llama.cpp's tiled matmul (ggml-cpu/tiled/) serves 8 rows or more of K-quant weights that are not
repacked, and the dot product (arch/x86/quants.c) fewer, and the two summed a row in different
orders: the dot product kept a vector of partial float sums, converted each block's integer sums
lane by lane and added them up at the end; the tiled kernel converts a block's whole integer sum
once and adds it to one float, block after block. The edits make the dot products of every type
the tiled kernel serves (Q2_K to Q6_K, IQ4_XS, and the IQ3, IQ2 and IQ1 types) sum as it does
(`localrun_kblock`: the block's integer sums are exact in both, then d*s1, less dmin*s2 fused,
times the activation's d, added fused; for IQ1 one integer sum, 8 times the grid's plus the
deltas', as the tiled kernel's codes are), make the AVX-512 VNNI kernel's last addition fused as
the AVX2 kernel's is, and leave an AVX-only build (whose tiled kernel sums otherwise) to the dot
product in every batch. With repacking (AVX2, no AMX) the Q4_K and Q2_K lone-row kernels (gemv)
scale a group of sub-blocks at a time, as their 4-row kernels (gemm) do.

`X86_EDITS` are as exact_edits.EDITS. `X86_BRANCH_EDITS` change one function's AVX2 branch (from its
`#if defined __AVX2__` to the next `#elif` or `#else`): (file, the function's signature up to its
parenthesis, its (old, new) pairs), each old text once in that branch; a branch that already says
"localrun (exact)" was patched before.
"""

# ruff: noqa: E501 (the C source's own lines, quoted as they are)

from __future__ import annotations

X86_EDITS: tuple[tuple[str, str, str], ...] = (
    (
        "arch/x86/quants.c",
        "static inline int hsum_i32_4(const __m128i a) {\n    const __m128i hi64 = _mm_unpackhi_epi64(a, a);\n    const __m128i sum64 = _mm_add_epi32(hi64, a);\n    const __m128i hi32  = _mm_shuffle_epi32(sum64, _MM_SHUFFLE(2, 3, 0, 1));\n    return _mm_cvtsi128_si32(_mm_add_epi32(sum64, hi32));\n}\n",
        "static inline int hsum_i32_4(const __m128i a) {\n    const __m128i hi64 = _mm_unpackhi_epi64(a, a);\n    const __m128i sum64 = _mm_add_epi32(hi64, a);\n    const __m128i hi32  = _mm_shuffle_epi32(sum64, _MM_SHUFFLE(2, 3, 0, 1));\n    return _mm_cvtsi128_si32(_mm_add_epi32(sum64, hi32));\n}\n\n// localrun (exact): a K-quant block's share of a row's sum, as the tiled matmul (tiled/) sums a\n// batch's: the block's integer sums s1 (scales) and s2 (mins) times the weights' d and dmin, the\n// mins' part taken off fused, then times the activation's d and added fused; block after block\nstatic inline float localrun_kblock(float sum, int32_t s1, int32_t s2, float d, float dmin, float yd) {\n#if defined(__FMA__)\n    return fmaf(fmaf(-dmin, (float) s2, d * (float) s1), yd, sum);\n#else\n    return sum + (d * (float) s1 - dmin * (float) s2) * yd;\n#endif\n}\n",
    ),
    (
        "tiled/tiled-kernel.cpp",
        "        _mm512_store_ps(p, _mm512_add_ps(_mm512_load_ps(p), _mm512_mul_ps(result, d1_vec)));\n",
        "        // localrun (exact): fused, as the AVX2 kernel's and the dot product's (arch/x86/quants.c)\n        _mm512_store_ps(p, _mm512_fmadd_ps(result, d1_vec, _mm512_load_ps(p)));\n",
    ),
    (
        "tiled/tiled.cpp",
        "#if !defined(__AVX512VNNI__) && !defined(__AVX2__) && !defined(__AVX__)\nstatic bool ggml_tiled_supported(",
        "// localrun (exact): AVX2 or better only; the AVX kernel sums otherwise than the dot product\n#if !defined(__AVX2__)\nstatic bool ggml_tiled_supported(",
    ),
)

# q3_K and q6_K: no mins, the block's d alone
_ONE_SCALE_A_BLOCK: tuple[tuple[str, str], ...] = (
    ("    __m256 acc = _mm256_setzero_ps();\n", "    float sumf = 0.0f; // localrun (exact)\n"),
    ("        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n", ""),
    (
        "        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);\n",
        "        sumf = localrun_kblock(sumf, hsum_i32_8(sumi), 0, GGML_CPU_FP16_TO_FP32(x[i].d), 0.0f, y[i].d);\n",
    ),
    ("    *s = hsum_float_8(acc);\n", "    *s = sumf;\n"),
)

# The IQ2 types: d an eighth of the block's, as the tiled kernel's
_IQ2: tuple[tuple[str, str], ...] = (
    ("    __m256 accumf = _mm256_setzero_ps();\n", "    float sumf = 0.0f; // localrun (exact)\n"),
    ("        const float d = GGML_CPU_FP16_TO_FP32(x[i].d) * y[i].d;\n", ""),
    (
        "        accumf = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_add_epi32(sumi1, sumi2)), accumf);\n",
        "        sumf = localrun_kblock(sumf, hsum_i32_8(_mm256_add_epi32(sumi1, sumi2)), 0, GGML_CPU_FP16_TO_FP32(x[i].d) * 0.125f, 0.0f, y[i].d);\n",
    ),
    ("    *s = 0.125f * hsum_float_8(accumf);\n", "    *s = sumf;\n"),
)

X86_BRANCH_EDITS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "arch/x86/quants.c",
        "void ggml_vec_dot_q2_K_q8_K(",
        (
            (
                "    __m256 acc = _mm256_setzero_ps();\n",
                "    float sumf = 0.0f; // localrun (exact)\n",
            ),
            (
                "        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n        const float dmin = -y[i].d * GGML_CPU_FP16_TO_FP32(x[i].dmin);\n",
                "",
            ),
            (
                "        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&dmin), _mm256_cvtepi32_ps(prod), acc);\n",
                "",
            ),
            (
                "        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);\n",
                "        sumf = localrun_kblock(sumf, hsum_i32_8(sumi), hsum_i32_8(prod), GGML_CPU_FP16_TO_FP32(x[i].d), GGML_CPU_FP16_TO_FP32(x[i].dmin), y[i].d);\n",
            ),
            ("    *s = hsum_float_8(acc);\n", "    *s = sumf;\n"),
        ),
    ),
    ("arch/x86/quants.c", "void ggml_vec_dot_q3_K_q8_K(", _ONE_SCALE_A_BLOCK),
    (
        "arch/x86/quants.c",
        "void ggml_vec_dot_q4_K_q8_K(",
        (
            (
                "    __m256 acc = _mm256_setzero_ps();\n    __m128 acc_m = _mm_setzero_ps();\n",
                "    float sumf = 0.0f; // localrun (exact)\n",
            ),
            (
                "        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n        const float dmin = -y[i].d * GGML_CPU_FP16_TO_FP32(x[i].dmin);\n",
                "",
            ),
            (
                "        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);\n",
                "",
            ),
            (
                "        __m256 vd = _mm256_set1_ps(d);\n        acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc);\n",
                "        sumf = localrun_kblock(sumf, hsum_i32_8(sumi), hsum_i32_4(prod), GGML_CPU_FP16_TO_FP32(x[i].d), GGML_CPU_FP16_TO_FP32(x[i].dmin), y[i].d);\n",
            ),
            (
                "    acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));\n    acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));\n\n    *s = hsum_float_8(acc) + _mm_cvtss_f32(acc_m);\n",
                "    *s = sumf;\n",
            ),
        ),
    ),
    (
        "arch/x86/quants.c",
        "void ggml_vec_dot_q5_K_q8_K(",
        (
            ("    const __m128i mzero = _mm_setzero_si128();\n", ""),
            (
                "    __m256 acc = _mm256_setzero_ps();\n\n    float summs = 0.f;\n",
                "    float sumf = 0.0f; // localrun (exact)\n",
            ),
            (
                "        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n        const float dmin = -y[i].d * GGML_CPU_FP16_TO_FP32(x[i].dmin);\n",
                "",
            ),
            (
                "        const __m128i hsum = _mm_hadd_epi32(_mm_hadd_epi32(prod, mzero), mzero);\n        summs += dmin * _mm_extract_epi32(hsum, 0);\n",
                "",
            ),
            (
                "        __m256 vd = _mm256_set1_ps(d);\n        acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc);\n",
                "        sumf = localrun_kblock(sumf, hsum_i32_8(sumi), hsum_i32_4(prod), GGML_CPU_FP16_TO_FP32(x[i].d), GGML_CPU_FP16_TO_FP32(x[i].dmin), y[i].d);\n",
            ),
            ("    *s = hsum_float_8(acc) + summs;\n", "    *s = sumf;\n"),
        ),
    ),
    ("arch/x86/quants.c", "void ggml_vec_dot_q6_K_q8_K(", _ONE_SCALE_A_BLOCK),
    (
        "arch/x86/quants.c",
        "void ggml_vec_dot_iq4_xs_q8_K(",
        (
            (
                "    __m256 accum = _mm256_setzero_ps();\n",
                "    float sumf = 0.0f; // localrun (exact)\n",
            ),
            (
                "        accum = _mm256_fmadd_ps(_mm256_set1_ps(GGML_CPU_FP16_TO_FP32(x[ibl].d)*y[ibl].d),\n                _mm256_cvtepi32_ps(_mm256_add_epi32(sumi1, sumi2)), accum);\n",
                "        sumf = localrun_kblock(sumf, hsum_i32_8(_mm256_add_epi32(sumi1, sumi2)), 0, GGML_CPU_FP16_TO_FP32(x[ibl].d), 0.0f, y[ibl].d);\n",
            ),
            ("    *s = hsum_float_8(accum);\n", "    *s = sumf;\n"),
        ),
    ),
    ("arch/x86/quants.c", "void ggml_vec_dot_iq2_xxs_q8_K(", _IQ2),
    ("arch/x86/quants.c", "void ggml_vec_dot_iq2_xs_q8_K(", _IQ2),
    ("arch/x86/quants.c", "void ggml_vec_dot_iq2_s_q8_K(", _IQ2),
    (
        "arch/x86/quants.c",
        "void ggml_vec_dot_iq3_xxs_q8_K(",
        (
            (
                "    __m256 accumf = _mm256_setzero_ps();\n",
                "    float sumf = 0.0f; // localrun (exact)\n",
            ),
            ("        const float d = GGML_CPU_FP16_TO_FP32(x[i].d) * y[i].d;\n", ""),
            (
                "        accumf = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_add_epi32(sumi1, sumi2)), accumf);\n",
                "        sumf = localrun_kblock(sumf, hsum_i32_8(_mm256_add_epi32(sumi1, sumi2)), 0, GGML_CPU_FP16_TO_FP32(x[i].d) * 0.25f, 0.0f, y[i].d);\n",
            ),
            ("    *s = 0.25f * hsum_float_8(accumf);\n", "    *s = sumf;\n"),
        ),
    ),
    (
        "arch/x86/quants.c",
        "void ggml_vec_dot_iq3_s_q8_K(",
        (
            (
                "    __m256 accumf = _mm256_setzero_ps();\n",
                "    float sumf = 0.0f; // localrun (exact)\n",
            ),
            ("        const float d = GGML_CPU_FP16_TO_FP32(x[i].d) * y[i].d;\n", ""),
            (
                "        accumf = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_add_epi32(sumi1, sumi2)), accumf);\n",
                "        sumf = localrun_kblock(sumf, hsum_i32_8(_mm256_add_epi32(sumi1, sumi2)), 0, GGML_CPU_FP16_TO_FP32(x[i].d), 0.0f, y[i].d);\n",
            ),
            ("    *s = hsum_float_8(accumf);\n", "    *s = sumf;\n"),
        ),
    ),
    (
        "arch/x86/quants.c",
        "void ggml_vec_dot_iq1_s_q8_K(",
        (
            (
                "    __m256 accum = _mm256_setzero_ps();\n    float accum1 = 0;\n",
                "    float sumf = 0.0f; // localrun (exact)\n",
            ),
            (
                "        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n        accum = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), accum);\n        accum1 += d * sumi1;\n",
                "        sumf = localrun_kblock(sumf, 8 * hsum_i32_8(sumi) + sumi1, 0, GGML_CPU_FP16_TO_FP32(x[i].d) * 0.125f, 0.0f, y[i].d);\n",
            ),
            ("    *s = hsum_float_8(accum) + IQ1S_DELTA * accum1;\n", "    *s = sumf;\n"),
        ),
    ),
    (
        "arch/x86/quants.c",
        "void ggml_vec_dot_iq1_m_q8_K(",
        (
            (
                "    __m256 accum1 = _mm256_setzero_ps();\n    __m256 accum2 = _mm256_setzero_ps();\n",
                "    float sumf = 0.0f; // localrun (exact)\n",
            ),
            (
                "        const __m256 d = _mm256_set1_ps(y[i].d * GGML_CPU_FP16_TO_FP32(scale.f16));\n\n        accum1 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi1), accum1);\n        accum2 = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi2), accum2);\n",
                "        sumf = localrun_kblock(sumf, 8 * hsum_i32_8(sumi1) + hsum_i32_8(sumi2), 0, GGML_CPU_FP16_TO_FP32(scale.f16) * 0.125f, 0.0f, y[i].d);\n",
            ),
            (
                "    *s = hsum_float_8(accum1) + IQ1M_DELTA * hsum_float_8(accum2);\n",
                "    *s = sumf;\n",
            ),
        ),
    ),
    (
        "arch/x86/repack.cpp",
        "void ggml_gemv_q4_K_8x8_q8_K(",
        (
            (
                "                __m256i iacc_b = _mm256_setzero_si256();\n                __m256i iacc_min_b = _mm256_setzero_si256();\n",
                "",
            ),
            (
                "                    // Accumulate for the complete block\n                    iacc_b = _mm256_add_epi32(iacc_b, iacc_sb);\n                    iacc_min_b = _mm256_add_epi32(iacc_min_b, iacc_min_sb);\n                }\n\n                // Multiply-Add with scale values for the complete super block\n                acc_row = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_b), _mm256_mul_ps(col_scale_f32, row_scale_f32), acc_row);\n                acc_min_rows = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_min_b), _mm256_mul_ps(col_dmin_f32, row_scale_f32), acc_min_rows);\n",
                "                    // localrun (exact): scaled a sub-block group at a time, as the gemm does\n                    acc_row = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_sb), _mm256_mul_ps(col_scale_f32, row_scale_f32), acc_row);\n                    acc_min_rows = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_min_sb), _mm256_mul_ps(col_dmin_f32, row_scale_f32), acc_min_rows);\n                }\n",
            ),
        ),
    ),
    (
        "arch/x86/repack.cpp",
        "void ggml_gemv_q2_K_8x8_q8_K(",
        (
            (
                "                __m256i iacc_b = _mm256_setzero_si256();\n                __m256i iacc_min_b = _mm256_setzero_si256();\n",
                "",
            ),
            (
                "                    // Accumulate for the complete block\n                    iacc_b = _mm256_add_epi32(iacc_b, iacc_sb);\n                    iacc_min_b = _mm256_add_epi32(iacc_min_b, iacc_min_sb);\n                }\n\n                //Multiply-Add with scale values for complete super block\n                acc_row = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_b), _mm256_mul_ps(col_scale_f32, row_scale_f32), acc_row);\n                acc_min_rows = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_min_b), _mm256_mul_ps(col_dmin_f32, row_scale_f32), acc_min_rows);\n",
                "                    // localrun (exact): scaled a sub-block group at a time, as the gemm does\n                    acc_row = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_sb), _mm256_mul_ps(col_scale_f32, row_scale_f32), acc_row);\n                    acc_min_rows = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_min_sb), _mm256_mul_ps(col_dmin_f32, row_scale_f32), acc_min_rows);\n                }\n",
            ),
        ),
    ),
)
