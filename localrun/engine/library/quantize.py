"""A GGUF model quantized to a smaller type with llama.cpp's own quantizer.

`llama_model_quantize` (llama.cpp's `llama-quantize`) reads an F32, F16 or BF16 model and
writes the chosen type; tensors a type cannot hold (k-quants need rows of 256) get llama.cpp's
fallback, as its tool does. It runs on a thread of its own while the caller is told how much
of the output is written (llama.cpp offers no progress callback: the file's growth is it).
`create` calls it through `for_create` (recipes sits below the engine and never loads
llama.cpp itself).
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from localrun.errors import DiskFullError, InvalidParameterError, ModelLoadError
from localrun.recipes.create import Quantize

# The types `create --quantize` takes, by the names Ollama and llama-quantize use: llama.cpp's
# file type and the bits a weight takes (for the progress bar's estimate of the result).
TYPES: dict[str, tuple[str, float]] = {
    "q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", 8.5),
    "q6_k": ("LLAMA_FTYPE_MOSTLY_Q6_K", 6.56),
    "q5_k_m": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.7),
    "q5_k_s": ("LLAMA_FTYPE_MOSTLY_Q5_K_S", 5.5),
    "q5_1": ("LLAMA_FTYPE_MOSTLY_Q5_1", 6.0),
    "q5_0": ("LLAMA_FTYPE_MOSTLY_Q5_0", 5.5),
    "q4_k_m": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.9),
    "q4_k_s": ("LLAMA_FTYPE_MOSTLY_Q4_K_S", 4.6),
    "q4_1": ("LLAMA_FTYPE_MOSTLY_Q4_1", 5.0),
    "q4_0": ("LLAMA_FTYPE_MOSTLY_Q4_0", 4.5),
    "q3_k_m": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", 3.9),
    "q2_k": ("LLAMA_FTYPE_MOSTLY_Q2_K", 3.0),
    "f16": ("LLAMA_FTYPE_MOSTLY_F16", 16.0),
    "bf16": ("LLAMA_FTYPE_MOSTLY_BF16", 16.0),
}


_LOW_DISK = 64 << 20  # bytes free under which a failed quantization is taken for a full disk


def check_type(kind: str) -> str:
    """`kind` in the spelling TYPES uses; InvalidParameterError naming the choices if unknown."""
    key = kind.strip().lower()
    if key not in TYPES:
        raise InvalidParameterError(
            f"unknown quantization type {kind!r}",
            hint=f"use one of: {', '.join(TYPES)}",
        )
    return key


def for_create(kind: str, threads: int = 0) -> Quantize:
    """What `create` needs to quantize a model to `kind` on `threads` threads (0: every core).

    An unknown `kind` is refused now, with InvalidParameterError.
    """
    key = check_type(kind)
    return Quantize(key, TYPES[key][1], functools.partial(quantize, threads=threads))


def quantize(
    source: Path,
    target: Path,
    kind: str,
    progress: Callable[[int], None] | None = None,
    *,
    threads: int = 0,
) -> None:
    """Write `source` quantized to `kind` at `target`; the caller removes `target` on failure.

    `progress` is told the bytes written so far, about four times a second.
    """
    # llama.cpp is loaded here, not at import: the server checks a type's name without it.
    from localrun.engine import weights as weights_mod
    from localrun.engine.library.native import lc

    weights_mod.ready()  # llama.cpp's log kept, not printed; its backend ready
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, TYPES[check_type(kind)][0])
    params.nthread = threads or max(1, os.cpu_count() or 1)
    result: list[int] = []

    # A pointer, as llama_cpp annotates the argument: the address byref would pass.
    params_p = ctypes.pointer(params)

    def run() -> None:
        result.append(lc.llama_model_quantize(os.fsencode(source), os.fsencode(target), params_p))

    worker = threading.Thread(target=run, name="quantize", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.25)
        if progress is not None and target.exists():
            progress(target.stat().st_size)
    # A source opened by descriptor (/proc/self/fd/5) has no name worth showing.
    shown = "the model" if source.name.isdigit() else source.name
    if not result or result[0] != 0:
        if shutil.disk_usage(target.parent).free < _LOW_DISK:
            raise DiskFullError(
                f"no space left to quantize {shown} to {kind}",
                hint="free some disk space (`localrun prune` removes unused blobs)",
            )
        raise ModelLoadError(
            f"llama.cpp could not quantize {shown} to {kind}: {weights_mod.last_log_error()}",
            hint="check that the file is a complete F32, F16 or BF16 model, and the disk space",
        )
