"""What a model's memory of a sequence is, read from its architecture alone (no llama.cpp): a KV
entry per position, a recurrent state (Mamba, RWKV), or both (hybrid). `show` and `ps` say from
it what the prompt cache does; the engine asks llama.cpp itself (engine.weights) and keeps
checkpoints of the states that cannot be cut (engine.checkpoints)."""

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


def kind(architecture: str | None) -> str:
    """ "recurrent", "hybrid" or "positions" for a GGUF's general.architecture."""
    if architecture in RECURRENT:
        return "recurrent"
    if architecture in HYBRID:
        return "hybrid"
    return "positions"


def describe(
    memory: str, window: int = 0, every: int = EVERY, count: int = COUNT, max_bytes: int = MAX_BYTES
) -> str:
    """What the prompt cache does for a model whose memory is `memory` (`kind`'s words)."""
    if memory == "positions":
        text = "per position: any prefix a slot shares with a prompt is kept"
        if window:
            text += f" (the {window}-token sliding window's cache is kept whole)"
        return text
    if count == 0:
        return f"off past the end of what a slot holds: the {memory} state keeps no checkpoints"
    return (
        f"checkpoints of the {memory} state: a token before each prompt's end and every "
        f"{every} tokens, at most {count} ({max_bytes >> 20} MiB) a slot"
    )


def short(memory: str) -> str:
    """`describe` in a few words, for `ps`'s column."""
    return "per position" if memory == "positions" else f"{memory} checkpoints"
