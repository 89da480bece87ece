"""The jobs scripts/bench/decode.py runs in a child process of its own (`bench/decode.py --worker
MODE ARG`): llama_cpp is imported only there, never in the bench process.

  sysinfo  ggml's compiled-in CPU features of a libllama (ARG: its path)
  turn     the tokens a new user turn adds to a conversation, with the model's own tokenizer
  decode   plain llama-cpp-python's streaming decode rate (tokens after the first)
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any, cast

__all__ = ["work"]


def work(mode: str, arg: str) -> dict[str, Any]:
    """Run one job in this (child) process and return its JSON-able result."""
    if mode == "sysinfo":
        import ctypes

        lib = ctypes.CDLL(arg)
        lib.llama_backend_init()
        lib.llama_print_system_info.restype = ctypes.c_char_p
        return {"system_info": lib.llama_print_system_info().decode()}

    from localrun.engine.library.machine import machine_params

    # localrun's own parameters for this machine (no weight repacking on a CPU with AMX);
    # localrun.engine.library.native loads the C++ runtime before llama.cpp's libraries.
    params = machine_params()

    job = json.loads(arg)
    if mode == "turn":
        llm = params.llama(job["model"], vocab_only=True, verbose=False)
        template = str(llm.metadata.get("tokenizer.chat_template", ""))
        if "<|im_start|>" in template:
            # ChatML: end of the previous answer, the user turn, and the assistant header.
            text = f"<|im_end|>\n<|im_start|>user\n{job['message']}<|im_end|>\n"
            text += "<|im_start|>assistant\n"
            basis = "ChatML turn"
        else:
            text, basis = job["message"], "message only, template not counted"
        tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
        return {"new_turn_tokens": len(tokens), "new_turn_basis": basis}

    if mode == "decode":
        llm = params.llama(
            job["model"],
            n_ctx=2048,
            n_threads=job["threads"],
            n_batch=512,
            n_gpu_layers=-1 if os.environ.get("LLAMA_CPP_LIB_PATH") else 0,
            verbose=False,
        )
        # Warm-up, as llama-bench does before it measures: first-touch of weights and buffers.
        llm.create_completion(job["prompt"], max_tokens=8, temperature=0)
        stamps: list[float] = []
        stream = llm.create_completion(
            job["prompt"], max_tokens=job["n_predict"], temperature=0, stream=True
        )
        # One chunk per token, except that a token ending inside a UTF-8 character is held back
        # and sent with the next: the count can only be low, by the few such tokens.
        for chunk in cast(Iterator[dict[str, Any]], stream):
            if chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
        if len(stamps) < 2:
            raise SystemExit(f"only {len(stamps)} token(s) streamed")
        # The first token's time includes the prompt; decode speed starts after it.
        return {"tokens": len(stamps), "tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0])}

    raise SystemExit(f"unknown worker mode {mode!r}")
