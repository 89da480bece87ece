"""The source edits that make llama.cpp's CPU library the exact runtime (runtimes/exact.py).

Each edit is (file under ggml/src/ggml-cpu, the installed source's text, the exact runtime's):
the old text must occur exactly once, or the source is not the one these were written for.
Besides the flash attention (fattn_exact.cpp, patched in by exact.patch_source), a row's
arithmetic must not depend on the batch it is in, and in the installed library it does where a
batch of some size takes another kernel than a lone row (found with
scripts/probe_batch_invariance.py on x86 and, under qemu, with a probe of every graph tensor
and a harness of each repacked kernel's lone-row and 4-row versions on ARM: dot products, int8
matrix multiplication, SVE; GCC and clang):

- the weights' products: one row a dot product (ARM's i8mm takes two where it can);
- llamafile's sgemm (tinyBLAS) serves batches, ggml's dot product a lone row: a lone row takes
  sgemm too for float weights, and on ARM for Q8_0 and Q4_0 as well;
- ARM's repacked kernels: each gemv sums a row as its gemm does (fused multiply-adds where the
  compiler left them unfused, K-quant scales applied once a block);
- x86's tiled matmul (tiled/: 8 rows or more of K-quant and IQ weights that are not repacked)
  and the dot product (fewer rows) sum alike, and so do x86's repacked Q4_K and Q2_K gemv and
  gemm: exact_edits_x86 (X86_EDITS, and BRANCH_EDITS scoped to a function's AVX2 branch).

`SUPERSEDED` maps an edit's new text to what earlier versions of localrun wrote for it, so a
source tree an earlier install patched is patched again rather than refused.
"""

# ruff: noqa: E501 (the C source's own lines, quoted as they are)

from __future__ import annotations

from localrun.runtimes.exact_edits_x86 import X86_BRANCH_EDITS, X86_EDITS

EDITS: tuple[tuple[str, str, str], ...] = (
    (
        # The flash attention's KV segments, and the bytes of their partial results.
        "common.h",
        "#define GGML_FA_TILE_KV 64\n",
        "#define GGML_FA_TILE_KV 64\n// localrun (exact): the KV cells' segments, and the bytes of their partial results\n#define LOCALRUN_FA_SEG 256\n#define LOCALRUN_FA_PARTIALS (8*1024*1024)\n",
    ),
    (
        # The op's planned scratch: a thread's, with the merged rows, then the partials.
        "ggml-cpu.c",
        "size_t prefill  = sizeof(float)*(GGML_FA_TILE_Q*DK + 2*GGML_FA_TILE_Q*GGML_FA_TILE_KV + GGML_FA_TILE_Q*DV + GGML_FA_TILE_KV*DV + GGML_FA_TILE_KV*DK)*n_tasks;",
        "size_t prefill  = sizeof(float)*(GGML_FA_TILE_Q*DK + 2*GGML_FA_TILE_Q*GGML_FA_TILE_KV + 2*GGML_FA_TILE_Q*DV + GGML_FA_TILE_KV*DV + GGML_FA_TILE_KV*DK + CACHE_LINE_SIZE_F32)*n_tasks + LOCALRUN_FA_PARTIALS;",
    ),
    (
        # The weights' products: one row a dot product in any batch. With int8 matrix
        # multiplication (ARM's i8mm) Q4_0, Q4_1 and Q8_0 take two rows a dot product where the
        # batch's shape allows, and sum them in another order.
        "ggml-cpu.c",
        "        int64_t num_rows_per_vec_dot = vec_dot_num_rows;\n",
        "        int64_t num_rows_per_vec_dot = vec_dot_num_rows;\n        num_rows_per_vec_dot = 1; // localrun (exact): one row a dot product\n",
    ),
    (
        # llamafile's sgemm serves two rows or more, ggml's dot product a lone one, and they sum in
        # different orders: a lone row of float weights takes sgemm too (an element's sum is one
        # chain whatever the tile), and on ARM Q8_0 and Q4_0 (tinyBLAS_Q0_ARM) as well.
        "llamafile/sgemm.cpp",
        "#if !defined(__MMA__)\n    if (n < 2)\n        return false;\n#endif\n",
        "#if !defined(__MMA__)\n    // localrun (exact): float weights take it for a lone row, and on ARM Q8_0 and Q4_0 too\n    // (tinyBLAS_Q0_ARM serves them from two rows on, ggml's dot product sums in another order)\n    if (n < 2 && Atype != GGML_TYPE_F32 && Atype != GGML_TYPE_F16 && Atype != GGML_TYPE_BF16\n#if defined(__ARM_FEATURE_DOTPROD)\n        && Atype != GGML_TYPE_Q8_0 && Atype != GGML_TYPE_Q4_0\n#endif\n        )\n        return false;\n#endif\n",
    ),
    (
        # tinyBLAS for a lone row (float weights take it: above): 8 rows of the weights at a time,
        # 8 chains of FMAs in flight where its 4-row tile left the FMA units half idle (an F16
        # model's decode lost 7% to ggml's dot product); an element's sum is the same in any tile.
        "llamafile/sgemm.cpp",
        "        // compute RM for only need tile with size RM&RM-1\n#if VECTOR_REGISTERS == 32\n",
        "        // compute RM for only need tile with size RM&RM-1\n        if (n == 1 && m % 64 == 0) {  // localrun (exact): a lone row, 8 chains in flight\n            gemm<8, 1, 8>(m, n, 12);\n            return true;\n        }\n#if VECTOR_REGISTERS == 32\n",
    ),
    (
        # ARM, F32 weights: tinyBLAS from 4 rows only; a lone row and small batches took the dot
        # product, which sums in another order.
        "llamafile/sgemm.cpp",
        "#elif defined(__ARM_NEON)\n        if (n < 4)\n            return false;\n        tinyBLAS<4, float32x4_t, float32x4_t, float, float, float> tb{ params,\n",
        "#elif defined(__ARM_NEON)\n        // localrun (exact): every row count (a lone row sums as a batch's)\n        tinyBLAS<4, float32x4_t, float32x4_t, float, float, float> tb{ params,\n",
    ),
    (
        # ARM, F16 weights: tinyBLAS from 8 rows only; likewise.
        "llamafile/sgemm.cpp",
        "#elif defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC) && !defined(_MSC_VER)\n        if (n < 8)\n            return false;\n",
        "#elif defined(__ARM_FEATURE_FP16_VECTOR_ARITHMETIC) && !defined(_MSC_VER)\n        // localrun (exact): every row count (a lone row sums as a batch's)\n",
    ),
    (
        # tinyBLAS_Q0_ARM: vmlaq_n_f32 is unfused with GCC and contracted to an FMA by clang, tile by
        # tile; an explicit FMA is one rounding on every compiler and tile.
        "llamafile/sgemm.cpp",
        "                        Cv[j][i] = vmlaq_n_f32(Cv[j][i],\n",
        "                        Cv[j][i] = vfmaq_n_f32(Cv[j][i], // localrun (exact): fused\n",
    ),
    (
        # arch/arm/repack.cpp: each gemv (a lone row, a batch's last n % 4 rows) must sum a row as its
        # gemm (4 rows at a time) does. vmla/vmls fused, as the kernels' vfma are: GCC keeps them
        # unfused and clang contracts them (q8_0_4x4, q6_K, the K-quants' 8x8).
        "arch/arm/repack.cpp",
        "#define UNUSED GGML_UNUSED\n",
        "#define UNUSED GGML_UNUSED\n\n// localrun (exact): vmla/vmls fused, as the kernels' vfma are: GCC keeps them unfused and clang\n// contracts them, so a gemv and its gemm summed a row differently (q8_0_4x4, q6_K, K-quant 8x8)\n#if defined(__ARM_NEON)\n#define vmlaq_f32 vfmaq_f32\n#define vmlsq_f32 vfmsq_f32\n#endif\n",
    ),
    (
        # q6_K_8x4 gemv: an explicit FMA, as its gemm's.
        "arch/arm/repack.cpp",
        "            float32x4_t w_0123 = vmulq_f32(vcvtq_f32_s32(acc[0]), sb_scale_0);\n            float32x4_t w_4567 = vmulq_f32(vcvtq_f32_s32(acc[1]), sb_scale_1);\n\n            acc_f32[0] = vaddq_f32(acc_f32[0], w_0123);\n            acc_f32[1] = vaddq_f32(acc_f32[1], w_4567);\n",
        "            // localrun (exact): fused, as the gemm's\n            acc_f32[0] = vfmaq_f32(acc_f32[0], vcvtq_f32_s32(acc[0]), sb_scale_0);\n            acc_f32[1] = vfmaq_f32(acc_f32[1], vcvtq_f32_s32(acc[1]), sb_scale_1);\n",
    ),
    (
        # q6_K_8x8 gemv: likewise.
        "arch/arm/repack.cpp",
        "            float32x2_t w_01 = vmul_f32(vcvt_f32_s32(acc[0]), vget_low_f32(sb_scale_0));\n            float32x2_t w_23 = vmul_f32(vcvt_f32_s32(acc[1]), vget_high_f32(sb_scale_0));\n            float32x2_t w_45 = vmul_f32(vcvt_f32_s32(acc[2]), vget_low_f32(sb_scale_1));\n            float32x2_t w_67 = vmul_f32(vcvt_f32_s32(acc[3]), vget_high_f32(sb_scale_1));\n\n            acc_f32[0] = vaddq_f32(acc_f32[0], vcombine_f32(w_01, w_23));\n            acc_f32[1] = vaddq_f32(acc_f32[1], vcombine_f32(w_45, w_67));\n",
        "            // localrun (exact): fused, as the gemm's\n            acc_f32[0] = vfmaq_f32(acc_f32[0], vcvtq_f32_s32(vcombine_s32(acc[0], acc[1])), sb_scale_0);\n            acc_f32[1] = vfmaq_f32(acc_f32[1], vcvtq_f32_s32(vcombine_s32(acc[2], acc[3])), sb_scale_1);\n",
    ),
    (
        # q4_K_8x8 gemv: the sub-blocks' scaled sums in integers, applied once a block (mins, then
        # scales) as the i8mm gemm does.
        "arch/arm/repack.cpp",
        "            float32x4_t sb_min_1   = vmulq_f32(q4_dmin_1, q8_d);\n",
        "            float32x4_t sb_min_1   = vmulq_f32(q4_dmin_1, q8_d);\n            int32x4_t   acc_i32[2] = { vdupq_n_s32(0), vdupq_n_s32(0) };  // localrun (exact)\n",
    ),
    (
        # (q4_K_8x8 gemv, continued)
        "arch/arm/repack.cpp",
        "                    // 0123 or 4567\n                    float32x4_t sumf_0 =\n                        vcvtq_f32_s32(vmulq_s32(vmovl_s16(group_scales_lo), vpaddq_s32(acc_lo[p], acc_lo[p + 1])));\n                    acc_f32[i] = vfmaq_f32(acc_f32[i], sb_scale, sumf_0);\n\n                    float32x4_t sumf_1 =\n                        vcvtq_f32_s32(vmulq_s32(vmovl_s16(group_scales_hi), vpaddq_s32(acc_hi[p], acc_hi[p + 1])));\n                    acc_f32[i] = vfmaq_f32(acc_f32[i], sb_scale, sumf_1);\n                }\n",
        "                    // localrun (exact): 0123 or 4567, in integers until the block's end\n                    acc_i32[i] = vmlaq_s32(acc_i32[i], vmovl_s16(group_scales_lo), vpaddq_s32(acc_lo[p], acc_lo[p + 1]));\n                    acc_i32[i] = vmlaq_s32(acc_i32[i], vmovl_s16(group_scales_hi), vpaddq_s32(acc_hi[p], acc_hi[p + 1]));\n                    (void) sb_scale;\n                }\n",
    ),
    (
        # (q4_K_8x8 gemv, continued)
        "arch/arm/repack.cpp",
        "            acc_f32[0] = vmlsq_f32(acc_f32[0], vcvtq_f32_s32(bias_acc[0]), sb_min_0);\n            acc_f32[1] = vmlsq_f32(acc_f32[1], vcvtq_f32_s32(bias_acc[1]), sb_min_1);\n",
        "            acc_f32[0] = vfmsq_f32(acc_f32[0], vcvtq_f32_s32(bias_acc[0]), sb_min_0);\n            acc_f32[1] = vfmsq_f32(acc_f32[1], vcvtq_f32_s32(bias_acc[1]), sb_min_1);\n            acc_f32[0] = vfmaq_f32(acc_f32[0], vcvtq_f32_s32(acc_i32[0]), sb_scale_0);  // localrun (exact)\n            acc_f32[1] = vfmaq_f32(acc_f32[1], vcvtq_f32_s32(acc_i32[1]), sb_scale_1);\n",
    ),
    (
        # q5_K_8x8 gemv: likewise, its mins' bias in integers too until the block's end.
        "arch/arm/repack.cpp",
        "            float32x4_t sb_min_1   = vmulq_f32(q5_dmin_1, q8_d);\n",
        "            float32x4_t sb_min_1   = vmulq_f32(q5_dmin_1, q8_d);\n            int32x4_t   acc_i32[2]  = { vdupq_n_s32(0), vdupq_n_s32(0) };  // localrun (exact)\n            int32x4_t   bias_i32[2] = { vdupq_n_s32(0), vdupq_n_s32(0) };\n",
    ),
    (
        # (q5_K_8x8 gemv, continued)
        "arch/arm/repack.cpp",
        "                    // 0123 or 4567\n                    float32x4_t sumf_0 =\n                        vcvtq_f32_s32(vmulq_s32(vmovl_s16(group_scales_lo), vpaddq_s32(acc_lo[p], acc_lo[p + 1])));\n                    acc_f32[i] = vfmaq_f32(acc_f32[i], sb_scale, sumf_0);\n\n                    float32x4_t sumf_1 =\n                        vcvtq_f32_s32(vmulq_s32(vmovl_s16(group_scales_hi), vpaddq_s32(acc_hi[p], acc_hi[p + 1])));\n                    acc_f32[i] = vfmaq_f32(acc_f32[i], sb_scale, sumf_1);\n\n                    // FUSED BIAS: Compute and subtract bias immediately\n                    // bias = (bsums_lo * mins_lo + bsums_hi * mins_hi) * sb_min\n                    int32x4_t bias       = vmull_s16(bsums_vec_lo, group_mins_lo);\n                    bias                 = vmlal_s16(bias, bsums_vec_hi, group_mins_hi);\n                    float32x4_t bias_f32 = vcvtq_f32_s32(bias);\n                    acc_f32[i]           = vmlsq_f32(acc_f32[i], sb_min, bias_f32);\n                }\n            }  // for sb\n",
        "                    // localrun (exact): 0123 or 4567, in integers until the block's end\n                    acc_i32[i]  = vmlaq_s32(acc_i32[i], vmovl_s16(group_scales_lo), vpaddq_s32(acc_lo[p], acc_lo[p + 1]));\n                    acc_i32[i]  = vmlaq_s32(acc_i32[i], vmovl_s16(group_scales_hi), vpaddq_s32(acc_hi[p], acc_hi[p + 1]));\n                    bias_i32[i] = vmlal_s16(bias_i32[i], bsums_vec_lo, group_mins_lo);\n                    bias_i32[i] = vmlal_s16(bias_i32[i], bsums_vec_hi, group_mins_hi);\n                    (void) sb_scale;\n                    (void) sb_min;\n                }\n            }  // for sb\n            acc_f32[0] = vfmsq_f32(acc_f32[0], vcvtq_f32_s32(bias_i32[0]), sb_min_0);\n            acc_f32[1] = vfmsq_f32(acc_f32[1], vcvtq_f32_s32(bias_i32[1]), sb_min_1);\n            acc_f32[0] = vfmaq_f32(acc_f32[0], vcvtq_f32_s32(acc_i32[0]), sb_scale_0);\n            acc_f32[1] = vfmaq_f32(acc_f32[1], vcvtq_f32_s32(acc_i32[1]), sb_scale_1);\n",
    ),
    *X86_EDITS,
)

BRANCH_EDITS = X86_BRANCH_EDITS

SUPERSEDED: dict[str, tuple[str, ...]] = {
    EDITS[3][2]: (
        "#if !defined(__MMA__)\n    // localrun (exact): float weights take it for a lone row\n    if (n < 2 && Atype != GGML_TYPE_F32 && Atype != GGML_TYPE_F16 && Atype != GGML_TYPE_BF16)\n        return false;\n#endif\n",
    ),
}
