"""The exact runtime's x86 edits: K-quant weights sum a row alike in any batch (runtimes/exact.py).

llama.cpp's tiled matmul (ggml-cpu/tiled/) serves 8 rows or more of K-quant weights that are not
repacked, and the dot product (arch/x86/quants.c) fewer, and the two summed a row in different
orders: the dot product kept a vector of partial float sums, converted each block's integer sums
lane by lane and added them up at the end; the tiled kernel converts a block's whole integer sum
once and adds it to one float, block after block. The edits make the dot products of Q2_K, Q3_K,
Q4_K, Q5_K, Q6_K and IQ4_XS sum as the tiled kernel does (`localrun_kblock`: the block's integer
sums are exact in both, then d*s1, less dmin*s2 fused, times the activation's d, added fused),
make the AVX-512 VNNI kernel's last addition fused as the AVX2 kernel's is, and leave the other
IQ types (IQ2, IQ3, IQ1), whose dot products sum otherwise, and AVX-only builds to the dot product
in every batch.

Each edit is as in exact_edits.EDITS: the old text occurs once in the installed source, and the new
text nowhere in it.
"""

# ruff: noqa: E501 (the C source's own lines, quoted as they are)

from __future__ import annotations

X86_EDITS: tuple[tuple[str, str, str], ...] = (
    (
        "arch/x86/quants.c",
        "    const __m128i sum64 = _mm_add_epi32(hi64, a);\n    const __m128i hi32  = _mm_shuffle_epi32(sum64, _MM_SHUFFLE(2, 3, 0, 1));\n    return _mm_cvtsi128_si32(_mm_add_epi32(sum64, hi32));\n}\n\n",
        "    const __m128i sum64 = _mm_add_epi32(hi64, a);\n    const __m128i hi32  = _mm_shuffle_epi32(sum64, _MM_SHUFFLE(2, 3, 0, 1));\n    return _mm_cvtsi128_si32(_mm_add_epi32(sum64, hi32));\n}\n\n// localrun (exact): a K-quant block's share of a row's sum, as the tiled matmul (tiled/) sums a\n// batch's: the block's integer sums s1 (scales) and s2 (mins) times the weights' d and dmin, the\n// mins' part taken off fused, then times the activation's d and added fused; block after block\nstatic inline float localrun_kblock(float sum, int32_t s1, int32_t s2, float d, float dmin, float yd) {\n#if defined(__FMA__)\n    return fmaf(fmaf(-dmin, (float) s2, d * (float) s1), yd, sum);\n#else\n    return sum + (d * (float) s1 - dmin * (float) s2) * yd;\n#endif\n}\n\n",
    ),
    (
        "arch/x86/quants.c",
        "    const __m128i m4 = _mm_set1_epi8(0xF);\n\n    __m256 acc = _mm256_setzero_ps();\n\n    for (int i = 0; i < nb; ++i) {\n\n        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n        const float dmin = -y[i].d * GGML_CPU_FP16_TO_FP32(x[i].dmin);\n\n        const uint8_t * GGML_RESTRICT q2 = x[i].qs;\n",
        "    const __m128i m4 = _mm_set1_epi8(0xF);\n\n    float sumf = 0.0f; // localrun (exact)\n\n    for (int i = 0; i < nb; ++i) {\n\n\n        const uint8_t * GGML_RESTRICT q2 = x[i].qs;\n",
    ),
    (
        "arch/x86/quants.c",
        "        const __m256i prod = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i*)y[i].bsums));\n\n        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&dmin), _mm256_cvtepi32_ps(prod), acc);\n\n",
        "        const __m256i prod = _mm256_madd_epi16(mins, _mm256_loadu_si256((const __m256i*)y[i].bsums));\n\n\n",
    ),
    (
        "arch/x86/quants.c",
        "        }\n\n        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);\n\n    }\n\n    *s = hsum_float_8(acc);\n\n#elif defined __AVX__\n\n    const __m128i m3 = _mm_set1_epi8(0x3);\n",
        "        }\n\n        sumf = localrun_kblock(sumf, hsum_i32_8(sumi), hsum_i32_8(prod), GGML_CPU_FP16_TO_FP32(x[i].d), GGML_CPU_FP16_TO_FP32(x[i].dmin), y[i].d);\n\n    }\n\n    *s = sumf;\n\n#elif defined __AVX__\n\n    const __m128i m3 = _mm_set1_epi8(0x3);\n",
    ),
    (
        "arch/x86/quants.c",
        "    const __m128i m32 = _mm_set1_epi8(32);\n\n    __m256 acc = _mm256_setzero_ps();\n\n    uint32_t aux[3];\n\n    for (int i = 0; i < nb; ++i) {\n\n        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n\n        const uint8_t * GGML_RESTRICT q3 = x[i].qs;\n        const int8_t  * GGML_RESTRICT q8 = y[i].qs;\n",
        "    const __m128i m32 = _mm_set1_epi8(32);\n\n    float sumf = 0.0f; // localrun (exact)\n\n    uint32_t aux[3];\n\n    for (int i = 0; i < nb; ++i) {\n\n\n        const uint8_t * GGML_RESTRICT q3 = x[i].qs;\n        const int8_t  * GGML_RESTRICT q8 = y[i].qs;\n",
    ),
    (
        "arch/x86/quants.c",
        "        // multiply with block scale and accumulate\n        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);\n\n    }\n\n    *s = hsum_float_8(acc);\n\n#elif defined __AVX__\n\n    const __m128i m3 = _mm_set1_epi8(3);\n",
        "        // multiply with block scale and accumulate\n        sumf = localrun_kblock(sumf, hsum_i32_8(sumi), 0, GGML_CPU_FP16_TO_FP32(x[i].d), 0.0f, y[i].d);\n\n    }\n\n    *s = sumf;\n\n#elif defined __AVX__\n\n    const __m128i m3 = _mm_set1_epi8(3);\n",
    ),
    (
        "arch/x86/quants.c",
        "    const __m256i m4 = _mm256_set1_epi8(0xF);\n\n    __m256 acc = _mm256_setzero_ps();\n    __m128 acc_m = _mm_setzero_ps();\n\n   for (int i = 0; i < nb; ++i) {\n\n        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n        const float dmin = -y[i].d * GGML_CPU_FP16_TO_FP32(x[i].dmin);\n\n        memcpy(utmp, x[i].scales, 12);\n",
        "    const __m256i m4 = _mm256_set1_epi8(0xF);\n\n    float sumf = 0.0f; // localrun (exact)\n\n   for (int i = 0; i < nb; ++i) {\n\n\n        memcpy(utmp, x[i].scales, 12);\n",
    ),
    (
        "arch/x86/quants.c",
        "        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);\n        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(prod), acc_m);\n\n",
        "        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);\n\n",
    ),
    (
        "arch/x86/quants.c",
        "            sumi = _mm256_add_epi32(sumi, sumj);\n        }\n\n        __m256 vd = _mm256_set1_ps(d);\n        acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc);\n\n    }\n\n    acc_m = _mm_add_ps(acc_m, _mm_movehl_ps(acc_m, acc_m));\n    acc_m = _mm_add_ss(acc_m, _mm_movehdup_ps(acc_m));\n\n    *s = hsum_float_8(acc) + _mm_cvtss_f32(acc_m);\n\n#elif defined __AVX__\n",
        "            sumi = _mm256_add_epi32(sumi, sumj);\n        }\n\n        sumf = localrun_kblock(sumf, hsum_i32_8(sumi), hsum_i32_4(prod), GGML_CPU_FP16_TO_FP32(x[i].d), GGML_CPU_FP16_TO_FP32(x[i].dmin), y[i].d);\n\n    }\n\n    *s = sumf;\n\n#elif defined __AVX__\n",
    ),
    (
        "arch/x86/quants.c",
        "    const __m256i m4 = _mm256_set1_epi8(0xF);\n    const __m128i mzero = _mm_setzero_si128();\n    const __m256i mone  = _mm256_set1_epi8(1);\n\n    __m256 acc = _mm256_setzero_ps();\n\n    float summs = 0.f;\n\n",
        "    const __m256i m4 = _mm256_set1_epi8(0xF);\n    const __m256i mone  = _mm256_set1_epi8(1);\n\n    float sumf = 0.0f; // localrun (exact)\n\n",
    ),
    (
        "arch/x86/quants.c",
        "        const int8_t  * GGML_RESTRICT q8 = y[i].qs;\n\n        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n        const float dmin = -y[i].d * GGML_CPU_FP16_TO_FP32(x[i].dmin);\n\n",
        "        const int8_t  * GGML_RESTRICT q8 = y[i].qs;\n\n\n",
    ),
    (
        "arch/x86/quants.c",
        "        const __m256i mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(utmp[3], utmp[2], utmp[1], utmp[0]));\n\n        const __m256i q8sums = _mm256_loadu_si256((const __m256i*)y[i].bsums);\n        const __m128i q8s = _mm_hadd_epi16(_mm256_extracti128_si256(q8sums, 0), _mm256_extracti128_si256(q8sums, 1));\n        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);\n        const __m128i hsum = _mm_hadd_epi32(_mm_hadd_epi32(prod, mzero), mzero);\n        summs += dmin * _mm_extract_epi32(hsum, 0);\n\n        const __m128i sc128  = _mm256_extracti128_si256(mins_and_scales, 0);\n        const __m256i scales = MM256_SET_M128I(sc128, sc128);\n\n        const __m256i hbits = _mm256_loadu_si256((const __m256i*)x[i].qh);\n",
        "        const __m256i mins_and_scales = _mm256_cvtepu8_epi16(_mm_set_epi32(utmp[3], utmp[2], utmp[1], utmp[0]));\n\n        const __m256i q8sums = _mm256_loadu_si256((const __m256i*)y[i].bsums);\n        const __m128i q8s = _mm_hadd_epi16(_mm256_extracti128_si256(q8sums, 0), _mm256_extracti128_si256(q8sums, 1));\n        const __m128i prod = _mm_madd_epi16(_mm256_extracti128_si256(mins_and_scales, 1), q8s);\n\n        const __m128i sc128  = _mm256_extracti128_si256(mins_and_scales, 0);\n        const __m256i scales = MM256_SET_M128I(sc128, sc128);\n\n        const __m256i hbits = _mm256_loadu_si256((const __m256i*)x[i].qh);\n",
    ),
    (
        "arch/x86/quants.c",
        "            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));\n\n        }\n\n        __m256 vd = _mm256_set1_ps(d);\n        acc = _mm256_fmadd_ps(vd, _mm256_cvtepi32_ps(sumi), acc);\n\n    }\n\n    *s = hsum_float_8(acc) + summs;\n\n#elif defined __AVX__\n",
        "            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p16_0, p16_1));\n\n        }\n\n        sumf = localrun_kblock(sumf, hsum_i32_8(sumi), hsum_i32_4(prod), GGML_CPU_FP16_TO_FP32(x[i].d), GGML_CPU_FP16_TO_FP32(x[i].dmin), y[i].d);\n\n    }\n\n    *s = sumf;\n\n#elif defined __AVX__\n",
    ),
    (
        "arch/x86/quants.c",
        "    const __m256i m15 = _mm256_set1_epi8(15);\n\n    __m256 acc = _mm256_setzero_ps();\n\n    for (int i = 0; i < nb; ++i) {\n\n        const float d = y[i].d * GGML_CPU_FP16_TO_FP32(x[i].d);\n\n        const uint8_t * GGML_RESTRICT q4 = x[i].ql;\n        const uint8_t * GGML_RESTRICT qh = x[i].qh;\n        const int8_t  * GGML_RESTRICT q8 = y[i].qs;\n\n",
        "    const __m256i m15 = _mm256_set1_epi8(15);\n\n    float sumf = 0.0f; // localrun (exact)\n\n    for (int i = 0; i < nb; ++i) {\n\n\n        const uint8_t * GGML_RESTRICT q4 = x[i].ql;\n        const uint8_t * GGML_RESTRICT qh = x[i].qh;\n        const int8_t  * GGML_RESTRICT q8 = y[i].qs;\n\n",
    ),
    (
        "arch/x86/quants.c",
        "        sumi = _mm256_sub_epi32(sumi, q8sclsub);\n        acc = _mm256_fmadd_ps(_mm256_broadcast_ss(&d), _mm256_cvtepi32_ps(sumi), acc);\n    }\n\n    *s = hsum_float_8(acc);\n\n#elif defined __AVX__\n",
        "        sumi = _mm256_sub_epi32(sumi, q8sclsub);\n        sumf = localrun_kblock(sumf, hsum_i32_8(sumi), 0, GGML_CPU_FP16_TO_FP32(x[i].d), 0.0f, y[i].d);\n    }\n\n    *s = sumf;\n\n#elif defined __AVX__\n",
    ),
    (
        "arch/x86/quants.c",
        "#if defined __AVX2__\n\n    const __m128i values128 = _mm_loadu_si128((const __m128i*)kvalues_iq4nl);\n    const __m128i m4b  = _mm_set1_epi8(0x0f);\n\n    __m256 accum = _mm256_setzero_ps();\n    for (int ibl = 0; ibl < nb; ++ibl) {\n        const uint8_t * qs = x[ibl].qs;\n        const int8_t  * q8 = y[ibl].qs;\n        uint16_t sh = x[ibl].scales_h;\n",
        "#if defined __AVX2__\n\n    const __m128i values128 = _mm_loadu_si128((const __m128i*)kvalues_iq4nl);\n    const __m128i m4b  = _mm_set1_epi8(0x0f);\n\n    float sumf = 0.0f; // localrun (exact)\n    for (int ibl = 0; ibl < nb; ++ibl) {\n        const uint8_t * qs = x[ibl].qs;\n        const int8_t  * q8 = y[ibl].qs;\n        uint16_t sh = x[ibl].scales_h;\n",
    ),
    (
        "arch/x86/quants.c",
        "        accum = _mm256_fmadd_ps(_mm256_set1_ps(GGML_CPU_FP16_TO_FP32(x[ibl].d)*y[ibl].d),\n                _mm256_cvtepi32_ps(_mm256_add_epi32(sumi1, sumi2)), accum);\n    }\n\n    *s = hsum_float_8(accum);\n\n#elif defined __AVX__\n",
        "        sumf = localrun_kblock(sumf, hsum_i32_8(_mm256_add_epi32(sumi1, sumi2)), 0, GGML_CPU_FP16_TO_FP32(x[ibl].d), 0.0f, y[ibl].d);\n    }\n\n    *s = sumf;\n\n#elif defined __AVX__\n",
    ),
    (
        "tiled/tiled-kernel.cpp",
        "        _mm512_store_ps(p, _mm512_add_ps(_mm512_load_ps(p), _mm512_mul_ps(result, d1_vec)));\n",
        "        // localrun (exact): fused, as the AVX2 kernel's and the dot product's (arch/x86/quants.c)\n        _mm512_store_ps(p, _mm512_fmadd_ps(result, d1_vec, _mm512_load_ps(p)));\n",
    ),
    (
        "tiled/tiled.cpp",
        "#if !defined(__AVX512VNNI__) && !defined(__AVX2__) && !defined(__AVX__)\n",
        "// localrun (exact): AVX2 or better only; the AVX kernel sums otherwise than the dot product\n#if !defined(__AVX2__)\n",
    ),
    (
        "tiled/tiled.cpp",
        "        case GGML_TYPE_IQ4_XS:\n        case GGML_TYPE_IQ2_XXS:\n        case GGML_TYPE_IQ2_XS:\n        case GGML_TYPE_IQ2_S:\n        case GGML_TYPE_IQ3_XXS:\n        case GGML_TYPE_IQ3_S:\n        case GGML_TYPE_IQ1_S:\n        case GGML_TYPE_IQ1_M:\n            return true;\n",
        "        case GGML_TYPE_IQ4_XS:\n            return true;\n        // localrun (exact): these types' dot products sum otherwise; they take them in any batch\n",
    ),
    (
        "arch/x86/repack.cpp",
        "                const __m256 col_dmin_f32 = GGML_F32Cx8_LOAD(b_ptr[b].dmin);\n\n                __m256i iacc_b = _mm256_setzero_si256();\n                __m256i iacc_min_b = _mm256_setzero_si256();\n\n                const __m256i q8sums = _mm256_loadu_si256((const __m256i * )(a_ptr[b].bsums));\n",
        "                const __m256 col_dmin_f32 = GGML_F32Cx8_LOAD(b_ptr[b].dmin);\n\n\n                const __m256i q8sums = _mm256_loadu_si256((const __m256i * )(a_ptr[b].bsums));\n",
    ),
    (
        "arch/x86/repack.cpp",
        "                    q8s = _mm256_bsrli_epi128(q8s, 4);\n\n                    // Accumulate for the complete block\n                    iacc_b = _mm256_add_epi32(iacc_b, iacc_sb);\n                    iacc_min_b = _mm256_add_epi32(iacc_min_b, iacc_min_sb);\n                }\n\n                // Multiply-Add with scale values for the complete super block\n                acc_row = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_b), _mm256_mul_ps(col_scale_f32, row_scale_f32), acc_row);\n                acc_min_rows = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_min_b), _mm256_mul_ps(col_dmin_f32, row_scale_f32), acc_min_rows);\n\n            }\n",
        "                    q8s = _mm256_bsrli_epi128(q8s, 4);\n\n                    // localrun (exact): scaled a sub-block group at a time, as the gemm does\n                    acc_row = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_sb), _mm256_mul_ps(col_scale_f32, row_scale_f32), acc_row);\n                    acc_min_rows = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_min_sb), _mm256_mul_ps(col_dmin_f32, row_scale_f32), acc_min_rows);\n                }\n\n            }\n",
    ),
    (
        "arch/x86/repack.cpp",
        "                const __m256 col_dmin_f32 = GGML_F32Cx8_LOAD(b_ptr[b].dmin);\n\n                __m256i iacc_b = _mm256_setzero_si256();\n                __m256i iacc_min_b = _mm256_setzero_si256();\n\n                // Processes eight sub blocks from each Q2_K in each iteration\n",
        "                const __m256 col_dmin_f32 = GGML_F32Cx8_LOAD(b_ptr[b].dmin);\n\n\n                // Processes eight sub blocks from each Q2_K in each iteration\n",
    ),
    (
        "arch/x86/repack.cpp",
        "                    __m256i iacc_min_sb = _mm256_add_epi32(_mm256_add_epi32(iacc_min_sb_01, iacc_min_sb_23), _mm256_add_epi32(iacc_min_sb_45,iacc_min_sb_67));\n\n                    // Accumulate for the complete block\n                    iacc_b = _mm256_add_epi32(iacc_b, iacc_sb);\n                    iacc_min_b = _mm256_add_epi32(iacc_min_b, iacc_min_sb);\n                }\n\n                //Multiply-Add with scale values for complete super block\n                acc_row = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_b), _mm256_mul_ps(col_scale_f32, row_scale_f32), acc_row);\n                acc_min_rows = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_min_b), _mm256_mul_ps(col_dmin_f32, row_scale_f32), acc_min_rows);\n            }\n",
        "                    __m256i iacc_min_sb = _mm256_add_epi32(_mm256_add_epi32(iacc_min_sb_01, iacc_min_sb_23), _mm256_add_epi32(iacc_min_sb_45,iacc_min_sb_67));\n\n                    // localrun (exact): scaled a sub-block group at a time, as the gemm does\n                    acc_row = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_sb), _mm256_mul_ps(col_scale_f32, row_scale_f32), acc_row);\n                    acc_min_rows = _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc_min_sb), _mm256_mul_ps(col_dmin_f32, row_scale_f32), acc_min_rows);\n                }\n            }\n",
    ),
)
