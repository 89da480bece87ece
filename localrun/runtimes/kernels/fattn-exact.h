// localrun (exact): the batch-invariant CPU flash attention (fattn-exact.cpp), which ops.cpp's
// ggml_compute_forward_flash_attn_ext calls in place of ggml_compute_forward_flash_attn_ext_f16.
// MIT License. Copyright (c) 2023-2026 The ggml authors (the kernel is ggml's, reorganised).
#pragma once

#include "ggml-cpu-impl.h"

#include <cstdint>

// ops.cpp's row-by-row kernel (ggml_compute_forward_flash_attn_ext_f16_one_chunk), which stays
// static there: the exact kernel runs it for the KV cache types it does not take itself.
typedef void (*ggml_fa_one_chunk_fn)(
        const ggml_compute_params * params, ggml_tensor * dst, int ir0, int ir1,
        int64_t ic_start, int64_t ic_end, float * partials, int64_t partial_stride);

// GGML_OP_FLASH_ATTN_EXT at F32 precision: a row's result is the same in any batch and at any
// thread count (an F16/F32 KV cache: one kernel at every row count; other types: `one_chunk`
// over the whole cache, row by row).
void ggml_compute_forward_flash_attn_ext_exact(
        const ggml_compute_params * params, ggml_tensor * dst, ggml_fa_one_chunk_fn one_chunk);
