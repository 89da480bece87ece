"""Tiny random-weight multimodal fixtures: the tiny llama text model with a projector that
llama.cpp's libmtmd loads and runs.

* :func:`write_tiny_vision` - a LLaVA-style image projector (``mlp``): an image becomes 16
  embeddings;
* :func:`write_tiny_audio` - a Qwen2-Audio-style projector (``qwen2a``: Whisper's encoder, then
  one linear layer): every 30 seconds of audio become 750 embeddings.

``scripts/make_test_models.py OUT_DIR`` writes both beside its other fixtures.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from gguf import GGUFWriter, LlamaFileType

from testmodels.files import write_all
from testmodels.text import write_tiny_model

__all__ = ["AUDIO_PARAMS", "VISION_PARAMS", "write_tiny_audio", "write_tiny_vision"]

#: The tiny vision projector's shape: a 32x32 image in 8x8 patches (16 image tokens), a ViT of
#: two layers 32 wide, and LLaVA's two-layer MLP onto the text model's width.
VISION_PARAMS: Mapping[str, int] = {
    "image_size": 32,
    "patch_size": 8,
    "n_embd": 32,
    "n_ff": 64,
    "n_head": 2,
    "n_layer": 2,
}

#: The tiny audio encoder's shape: 16 mel bins (of libmtmd's 30-second, 3000-frame windows),
#: two convolutions halving the frames to Whisper's 1500 positions, two layers 32 wide, and the
#: average pool (in libmtmd) halving them again: 750 audio tokens per window.
AUDIO_PARAMS: Mapping[str, int] = {
    "n_mel": 16,
    "n_pos": 1500,
    "n_embd": 32,
    "n_ff": 64,
    "n_head": 2,
    "n_layer": 2,
}


Weights = Callable[..., np.ndarray]


def _random(seed: int) -> Weights:
    rng = np.random.default_rng(seed)

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    return weights


def _encoder_header(writer: GGUFWriter, kind: str, params: Mapping[str, int], n_out: int) -> None:
    """The keys every clip encoder has, under `clip.vision.` or `clip.audio.`."""
    writer.add_file_type(LlamaFileType.ALL_F32)
    writer.add_bool(f"clip.has_{kind}_encoder", True)
    for key, value in (
        ("embedding_length", params["n_embd"]),
        ("feed_forward_length", params["n_ff"]),
        ("block_count", params["n_layer"]),
        ("attention.head_count", params["n_head"]),
        ("projection_dim", n_out),
    ):
        writer.add_uint32(f"clip.{kind}.{key}", value)
    writer.add_float32(f"clip.{kind}.attention.layer_norm_epsilon", 1e-6)


def _encoder_layers(
    writer: GGUFWriter,
    prefix: str,
    params: Mapping[str, int],
    weights: Weights,
    *,
    k_bias: bool = True,
) -> None:
    """A pre-norm transformer's layers, as clip.cpp names them (`v.blk.N.` or `a.blk.N.`)."""
    d, ff = params["n_embd"], params["n_ff"]
    # numpy shapes are ggml's ne reversed: a linear layer from A to B is (B, A).
    for i in range(params["n_layer"]):
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            writer.add_tensor(f"{prefix}.blk.{i}.{name}.weight", weights(d, d))
            if name != "attn_k" or k_bias:
                writer.add_tensor(f"{prefix}.blk.{i}.{name}.bias", weights(d))
        for name in ("ln1", "ln2"):
            writer.add_tensor(f"{prefix}.blk.{i}.{name}.weight", np.ones(d, dtype=np.float32))
            writer.add_tensor(f"{prefix}.blk.{i}.{name}.bias", np.zeros(d, dtype=np.float32))
        writer.add_tensor(f"{prefix}.blk.{i}.ffn_up.weight", weights(ff, d))
        writer.add_tensor(f"{prefix}.blk.{i}.ffn_up.bias", weights(ff))
        writer.add_tensor(f"{prefix}.blk.{i}.ffn_down.weight", weights(d, ff))
        writer.add_tensor(f"{prefix}.blk.{i}.ffn_down.bias", weights(d))


def write_tiny_vision(
    directory: str | os.PathLike[str], *, seed: int = 0, n_embd_text: int = 64
) -> tuple[Path, Path]:
    """Write a tiny vision model: the tiny llama text model (``tiny-vision.gguf``) and a
    random-weight LLaVA-style projector for it (``tiny-vision-mmproj.gguf``, projector type
    ``mlp``) that llama.cpp's libmtmd loads and runs; return both paths. An image becomes
    (image_size / patch_size)^2 = 16 embeddings of the text model's width."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(directory / "tiny-vision.gguf", seed=seed, n_embd=n_embd_text)
    path = directory / "tiny-vision-mmproj.gguf"
    v = VISION_PARAMS
    d, patch = v["n_embd"], v["patch_size"]
    n_patches = (v["image_size"] // patch) ** 2
    writer = GGUFWriter(path, "clip")
    writer.add_name("tiny-vision-mmproj")
    _encoder_header(writer, "vision", v, n_embd_text)
    writer.add_string("clip.projector_type", "mlp")
    writer.add_bool("clip.use_gelu", True)
    writer.add_uint32("clip.vision.image_size", v["image_size"])
    writer.add_uint32("clip.vision.patch_size", patch)
    writer.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
    writer.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
    weights = _random(seed + 1)
    writer.add_tensor("v.patch_embd.weight", weights(d, 3, patch, patch).astype(np.float16))
    writer.add_tensor("v.position_embd.weight", weights(n_patches, d))
    _encoder_layers(writer, "v", v, weights)
    writer.add_tensor("mm.0.weight", weights(n_embd_text, d))
    writer.add_tensor("mm.0.bias", weights(n_embd_text))
    writer.add_tensor("mm.2.weight", weights(n_embd_text, n_embd_text))
    writer.add_tensor("mm.2.bias", weights(n_embd_text))
    write_all(writer)
    return model, path


def write_tiny_audio(
    directory: str | os.PathLike[str], *, seed: int = 0, n_embd_text: int = 64
) -> tuple[Path, Path]:
    """Write a tiny audio model: the tiny llama text model with room for a clip
    (``tiny-audio.gguf``, 2048 positions) and a random-weight Qwen2-Audio-style projector
    (``tiny-audio-mmproj.gguf``, projector type ``qwen2a``) that libmtmd loads, feeding 16 kHz
    audio through its Whisper preprocessor; return both paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(
        directory / "tiny-audio.gguf", seed=seed, n_embd=n_embd_text, n_ctx=2048
    )
    path = directory / "tiny-audio-mmproj.gguf"
    a = AUDIO_PARAMS
    d, n_mel = a["n_embd"], a["n_mel"]
    writer = GGUFWriter(path, "clip")
    writer.add_name("tiny-audio-mmproj")
    _encoder_header(writer, "audio", a, n_embd_text)
    writer.add_string("clip.projector_type", "qwen2a")
    writer.add_uint32("clip.audio.num_mel_bins", n_mel)
    weights = _random(seed + 2)
    # Convolution kernels (ne: width 3, in, out) in f16 as converters write them; their biases
    # one column per channel, so they broadcast over the frames.
    writer.add_tensor("a.conv1d.1.weight", weights(d, n_mel, 3).astype(np.float16))
    writer.add_tensor("a.conv1d.1.bias", weights(d, 1))
    writer.add_tensor("a.conv1d.2.weight", weights(d, d, 3).astype(np.float16))
    writer.add_tensor("a.conv1d.2.bias", weights(d, 1))
    writer.add_tensor("a.position_embd.weight", weights(a["n_pos"], d))
    _encoder_layers(writer, "a", a, weights, k_bias=False)  # Whisper's keys have no bias
    writer.add_tensor("a.post_ln.weight", np.ones(d, dtype=np.float32))
    writer.add_tensor("a.post_ln.bias", np.zeros(d, dtype=np.float32))
    writer.add_tensor("mm.a.fc.weight", weights(n_embd_text, d))
    writer.add_tensor("mm.a.fc.bias", weights(n_embd_text))
    write_all(writer)
    return model, path
