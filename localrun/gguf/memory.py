"""What a model's memory of a sequence is, read from its header alone, without llama.cpp.

It is a KV entry per position, a sliding window's last positions beside global layers, a recurrent
state (Mamba, RWKV), or a recurrent state beside attention (hybrid). `show` and `ps` say from it
what the prompt cache does. The engine asks llama.cpp itself (engine.weights) and keeps checkpoints
of the states that cannot be cut (engine.checkpoints).
"""

from __future__ import annotations

# llama.cpp's llm_arch_is_recurrent and llm_arch_is_hybrid (src/llama-arch.cpp), by GGUF name.
RECURRENT = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
HYBRID = frozenset(
    {
        "jamba",
        "falcon-h1",
        "plamo2",
        "granitehybrid",
        "lfm2",
        "lfm2moe",
        "nemotron_h",
        "nemotron_h_moe",
        "qwen3next",
        "kimi-linear",
        "qwen35",
        "qwen35moe",
        "minimax-01",
    }
)
# Checkpoints a slot keeps of a recurrent state by default (settings/limits: LOCALRUN_CHECKPOINT_*).
EVERY, COUNT, MAX_BYTES = 2048, 16, 256 << 20


def kind(architecture: str | None, window: int | None = None) -> str:
    """The memory of a model of this general.architecture and attention.sliding_window.

    It is "recurrent", "hybrid", "window" or "positions".
    """
    if architecture in RECURRENT:
        return "recurrent"
    if architecture in HYBRID:
        return "hybrid"
    return "window" if window else "positions"


def describe(
    memory: str, window: int = 0, every: int = EVERY, count: int = COUNT, max_bytes: int = MAX_BYTES
) -> str:
    """What the prompt cache does for a model whose memory is `memory` (`kind`'s words)."""
    if memory == "positions":
        return "per position: any prefix a slot shares with a prompt is kept"
    part = f"{window}-token sliding window" if memory == "window" and window else f"{memory} state"
    if count == 0:
        return (
            f"no checkpoints of the {part}: a prompt parting from a slot further back is read again"
        )
    return (
        f"checkpoints of the {part}: a token before each prompt's end and every "
        f"{every} tokens, at most {count} ({max_bytes >> 20} MiB, the newest always) a slot"
    )


def checkpoint_bytes(
    memory: str, window: int, num_ctx: int, slot_kv: int, count: int = COUNT, most: int = MAX_BYTES
) -> int:
    """The most memory one slot's checkpoints may take (engine.checkpoints).

    That is `count` of them within `most` bytes, the newest kept whatever its size. A checkpoint of
    a window holds its last `window` positions, counted here at the slot's KV per position.
    `slot_kv` is for `num_ctx` and every layer, so this over-estimates. A recurrent state is counted
    as the slot's KV.
    """
    if memory == "positions" or count == 0 or slot_kv <= 0:
        return 0
    one = slot_kv
    if memory == "window" and window and num_ctx > window:
        one = slot_kv * window // num_ctx
    return min(count * one, max(most, one))


def short(memory: str) -> str:
    """`describe` in a few words, for `ps`'s column."""
    return "per position" if memory == "positions" else f"{memory} checkpoints"
