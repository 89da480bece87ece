#!/usr/bin/env python3
"""Does a token's logits row depend on the batch it was evaluated in? (issue 60)

    scripts/measure/batch_invariance.py [--model GGUF] [--kv f16,q8_0,bf16] [--fa 1,0]
                                      [--prompts 30,100,700] [--threads N] [--ops]
                                      [--gpu-layers N]

The context is made as localrun makes it (engine.weights.Weights.context_params: one KV stream a
sequence, its batch sizes, repacking as the machine's), with flash attention and the KV cache's
type set by the options. A prompt's last token is evaluated five ways:

- cached: the prompt but its last token in one decode, then the last token alone (a repeated
  request whose prompt was cached): the reference;
- whole: inside the whole prompt's decode (the first request);
- again: alone once more (the same decode twice);
- beside: alone, beside another sequence's token in the same batch (another client's stream);
- draft: as the first row of a batch of five (speculation's verification);
- 1 thread: alone, on one thread (the thread governor's count).

Each row is compared with the reference bit for bit: `=` or the largest difference. With `--ops`,
each node of the graph whose rows are the batch's tokens (a layer's norm, attention output,
FFN output, the logits) is recorded for the token's row, and a difference names the first node
where the bits part: the operation to make independent of the batch. `--gpu-layers N` puts N
layers on the GPU runtime localrun loads (`localrun runtime select`; Vulkan on Mesa's lavapipe
with GGML_VK_VISIBLE_DEVICES=0).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import default_model

if "--ops" in sys.argv:  # a fused node's own output is never written: each node alone
    os.environ["GGML_CPU_DISABLE_FUSION"] = "1"  # read once, when llama.cpp loads

from localrun.engine.library.native import lc
from localrun.engine.types import LoadOptions
from localrun.engine.weights import Weights

KV_TYPES = {"f16": 1, "q8_0": 8, "bf16": 30, "f32": 0}


class _Tensor(ctypes.Structure):
    """The head of ggml's struct ggml_tensor: its type, buffer, shape and strides."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    ]


def _ggml() -> Any:
    lib = ctypes.CDLL(str(Path(lc.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_get_data.restype = ctypes.c_void_p
    lib.ggml_get_data.argtypes = [ctypes.c_void_p]
    lib.ggml_type_size.restype = ctypes.c_size_t
    lib.ggml_type_size.argtypes = [ctypes.c_int]
    lib.ggml_blck_size.restype = ctypes.c_int64
    lib.ggml_blck_size.argtypes = [ctypes.c_int]
    return lib


class Recorder:
    """cb_eval: each computed node whose second dimension is the batch's tokens, the bytes of
    the watched token's row (in graph order)."""

    def __init__(self) -> None:
        self.ggml = _ggml()
        self.rows: list[tuple[str, bytes]] = []
        self.n_tokens = 0
        self.index = -1  # the watched token's row in the batch; -1: record nothing
        self.callback = lc.ggml_backend_sched_eval_callback(self._seen)

    def _seen(self, tensor: int, ask: bool, user_data: int) -> bool:
        if ask or self.index < 0:
            return True
        head = _Tensor.from_address(tensor)
        data = self.ggml.ggml_get_data(tensor)
        if head.ne[1] != self.n_tokens or head.ne[2] != 1 or not data:
            return True
        row = (
            head.ne[0] * self.ggml.ggml_type_size(head.type) // self.ggml.ggml_blck_size(head.type)
        )
        name = self.ggml.ggml_get_name(tensor).decode(errors="replace")
        self.rows.append((name, ctypes.string_at(data + self.index * head.nb[1], row)))
        return True


def first_difference(a: list[tuple[str, bytes]], b: list[tuple[str, bytes]]) -> str:
    """The first node of `a` whose row differs in `b` (a name's k-th node against its k-th:
    a layer names both its norms `norm-L`)."""

    def keyed(rows: list[tuple[str, bytes]]) -> dict[tuple[str, int], bytes]:
        count: Counter[str] = Counter()
        out = {}
        for name, row in rows:
            out[name, count[name]] = row
            count[name] += 1
        return out

    seen = keyed(b)
    for key, row in keyed(a).items():
        if key in seen and seen[key] != row:
            return key[0] + (f" (its {key[1] + 1}. node)" if key[1] else "")
    return "the output"  # the logits alone (their node holds the rows asked for, not all)


def decode(ctx: Any, rows: list[tuple[int, int, int, bool]], n_vocab: int) -> dict[Any, Any]:
    """One llama_decode of (token, position, sequence, logits) rows; the logits rows asked."""
    batch = lc.llama_batch_init(len(rows), 0, 1)
    try:
        for i, (token, pos, seq, logits) in enumerate(rows):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(rows)
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        out = {}
        for i, (_, pos, seq, logits) in enumerate(rows):
            if logits:
                row = lc.llama_get_logits_ith(ctx, i)
                if not row:
                    raise RuntimeError(f"llama.cpp gave no logits for row {i}")
                out[seq, pos] = np.ctypeslib.as_array(row, shape=(n_vocab,)).copy()
        return out
    finally:
        lc.llama_batch_free(batch)


def probe(weights: Weights, args: argparse.Namespace, fa: int, kv: str, n: int) -> str:
    n_vocab = weights.n_vocab
    prompt = [(i * 7919) % (n_vocab - 10) + 5 for i in range(n)]
    other = [(i * 104729) % (n_vocab - 10) + 5 for i in range(41)]
    options = LoadOptions(
        num_ctx=4096, num_thread=args.threads, num_batch=2048, num_gpu=args.gpu_layers
    )
    cparams = weights.context_params(options, 2 * 4096)
    cparams.n_seq_max, cparams.kv_unified = 2, False
    cparams.n_ubatch = 2048  # the whole prompt in one ubatch: its rows are recorded as one
    cparams.flash_attn_type = fa
    cparams.type_k = cparams.type_v = KV_TYPES[kv]
    recorder = Recorder() if args.ops else None
    if recorder is not None:
        cparams.cb_eval = recorder.callback
    ctx = lc.llama_init_from_model(weights.model, cparams)
    if not ctx:
        return "no context (llama.cpp refused these settings)"
    memory = lc.llama_get_memory(ctx)
    last = (0, n - 1)
    logits: dict[str, Any] = {}
    ops: dict[str, list[tuple[str, bytes]]] = {}

    def watch(case: str, rows: list[tuple[int, int, int, bool]], at: int) -> None:
        if recorder is not None:
            recorder.rows, recorder.n_tokens, recorder.index = [], len(rows), at
        logits[case] = decode(ctx, rows, n_vocab)[last]
        if recorder is not None:
            ops[case], recorder.index = recorder.rows, -1
        lc.llama_memory_seq_rm(memory, 0, n - 1, -1)

    alone = [(prompt[-1], n - 1, 0, True)]
    try:
        watch("whole", [(t, p, 0, p == n - 1) for p, t in enumerate(prompt)], n - 1)
        lc.llama_memory_seq_rm(memory, 0, -1, -1)
        decode(ctx, [(t, p, 0, False) for p, t in enumerate(prompt[:-1])], n_vocab)
        watch("cached", alone, 0)
        watch("again", alone, 0)
        decode(ctx, [(t, p, 1, False) for p, t in enumerate(other[:40])], n_vocab)
        watch("beside", [*alone, (other[40], 40, 1, True)], 0)
        watch("draft", [*alone, *((7 + k, n + k, 0, True) for k in range(4))], 0)
        lc.llama_set_n_threads(ctx, 1, 1)
        watch("1 thread", alone, 0)
    finally:
        lc.llama_free(ctx)
    base = logits["cached"]
    said = []
    for case, row in logits.items():
        if case == "cached":
            continue
        if np.array_equal(row, base):
            said.append(f"{case} =")
            continue
        where = f" at {first_difference(ops['cached'], ops[case])}" if ops else ""
        said.append(f"{case} {np.abs(row - base).max():.0e}{where}")
    return ", ".join(said)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: the SmolLM2 starter)")
    parser.add_argument("--kv", default="f16,q8_0,bf16", help="KV cache types to try")
    parser.add_argument("--fa", default="1,0", help="flash attention: 1 on, 0 off")
    parser.add_argument("--prompts", default="30,100,700", help="prompt lengths, tokens")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ops", action="store_true", help="name the first node that differs")
    parser.add_argument(
        "--gpu-layers", type=int, default=0, help="layers on the GPU runtime localrun loads"
    )
    args = parser.parse_args(argv)
    if args.ops and args.gpu_layers:
        parser.error("--ops reads the graph's tensors in host memory: not with --gpu-layers")
    model = args.model or default_model()
    if model is None:
        parser.error("needs --model or the SmolLM2 starter")
    weights = Weights(
        str(model),
        LoadOptions(num_ctx=4096, num_thread=args.threads, num_gpu=args.gpu_layers),
    )
    try:
        for fa in (int(x) for x in args.fa.split(",")):
            for kv in args.kv.split(","):
                for n in (int(x) for x in args.prompts.split(",")):
                    start = time.perf_counter()
                    said = probe(weights, args, fa, kv, n)
                    took = time.perf_counter() - start
                    print(f"fa={fa} kv={kv:5} prompt={n:4}: {said} ({took:.1f} s)", flush=True)
    finally:
        weights.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
