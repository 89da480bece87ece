"""The hostile files of issue 57 that scripts/fuzz/model_building.py hands to `localrun create` and
the server: GGUFs whose own chat template is hostile, an F16 model to quantize, tiny Hugging Face
checkpoints and PEFT adapters mutated (a FIFO, a backtracking pattern key, NaN and 1e308 alphas,
a rope factor of 0), a sparse checkpoint with a 2^22-row embedding, a shard of a million empty
tensors, and other runners' folders that point at the whole machine.

Each writer makes its files under a folder it is given and returns the Modelfile (or the
environment) that names them.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

HI = [{"role": "user", "content": "hi"}]

__all__ = [
    "adapter_modelfile",
    "checkpoint_modelfile",
    "f16_modelfile",
    "gguf_modelfile",
    "hostile_templates",
    "many_tensors_modelfile",
    "modelfile",
    "other_runners",
    "sparse_modelfile",
    "tool_history",
]


def hostile_templates(tests: Path) -> dict[str, str]:
    """HOSTILE of tests/unit/formats/test_template_hostile.py, read without importing the test
    module."""
    path = tests / "unit" / "formats" / "test_template_hostile.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "HOSTILE" for t in node.targets
        ):
            found: dict[str, str] = ast.literal_eval(node.value)
            return found
    raise SystemExit(f"no HOSTILE in {path}")


def modelfile(folder: Path, text: str) -> Path:
    """`text` as folder/Modelfile."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "Modelfile"
    path.write_text(text, encoding="utf-8")
    return path


def gguf_modelfile(folder: Path, template: str) -> Path:
    """A tiny llama GGUF whose own chat template is `template`."""
    from testmodels.text import write_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(folder / "model.gguf", chat_template=template)
    return modelfile(folder, f"FROM {model}\n")


def f16_modelfile(folder: Path, extra_bytes: int) -> Path:
    """A tiny F16 llama GGUF grown by `extra_bytes` (a quantization that lasts a while)."""
    from testmodels.text import write_tiny_model

    folder.mkdir(parents=True, exist_ok=True)
    model = write_tiny_model(folder / "f16.gguf", dtype="f16", extra_bytes=extra_bytes)
    return modelfile(folder, f"FROM {model}\n")


def _checkpoint(folder: Path, **config: Any) -> Path:
    """A tiny Llama checkpoint in `folder/llama`, config.json changed by `config`."""
    from testmodels.hf_checkpoints import write_checkpoint

    ck = write_checkpoint(folder / "llama", "llama")
    settings = json.loads((ck.folder / "config.json").read_text())
    for key, value in config.items():
        if isinstance(value, dict):
            settings[key] = {**settings.get(key, {}), **value}
        else:
            settings[key] = value
    (ck.folder / "config.json").write_text(json.dumps(settings))
    return ck.folder


def checkpoint_modelfile(folder: Path, *, fifo: bool = False, **config: Any) -> Path:
    """A tiny checkpoint, its model.safetensors a FIFO if `fifo`, its config.json changed."""
    ck = _checkpoint(folder, **config)
    if fifo:
        (ck / "model.safetensors").unlink()
        os.mkfifo(ck / "model.safetensors")
    return modelfile(folder, f"FROM {ck}\n")


def adapter_modelfile(folder: Path, **change: Any) -> Path:
    """A tiny checkpoint with a PEFT LoRA whose adapter_config.json is changed by `change`."""
    from testmodels.hf_checkpoints import write_adapter, write_checkpoint

    ck = write_checkpoint(folder / "llama", "llama")
    write_adapter(folder / "lora", ck)
    path = folder / "lora" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    return modelfile(folder, f"FROM {ck.folder}\nADAPTER {folder / 'lora'}\n")


def _safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes | None]]) -> None:
    """A safetensors file; a tensor given no bytes is left a hole (the file is sparse)."""
    sizes = {"F32": 4, "F16": 2, "BF16": 2}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape, _) in tensors.items():
        size = sizes[dtype]
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as out:
        out.write(len(text).to_bytes(8, "little") + text)
        start = out.tell()
        for name, (_, _, data) in tensors.items():
            if data is not None:
                out.seek(start + header[name]["data_offsets"][0])
                out.write(data)
        out.truncate(start + offset)


def _f32_weights(folder: Path) -> dict[str, tuple[str, list[int], bytes | None]]:
    from testmodels.hf_checkpoints import write_checkpoint

    ck = write_checkpoint(folder, "llama", dtype="F32")
    return {
        name: ("F32", list(array.shape), array.astype("<f4").tobytes())
        for name, array in sorted(ck.weights.items())
    }


def sparse_modelfile(folder: Path, *, vocab: int = 0, ffn: int = 0) -> Path:
    """An F32 checkpoint whose large tensors are holes (0 bytes on disk): a `vocab` x 64 token
    embedding (vocab_size padded far past the tokenizer), or one layer whose MLP matrices are
    `ffn` x 64 (intermediate_size `ffn`)."""
    ck = folder / "sparse"
    weights = _f32_weights(ck)
    config = json.loads((ck / "config.json").read_text())
    if vocab:
        del weights["lm_head.weight"]
        weights["model.embed_tokens.weight"] = ("F32", [vocab, 64], None)
        config.update(vocab_size=vocab, tie_word_embeddings=True)
    if ffn:
        weights = {k: v for k, v in weights.items() if ".layers.1." not in k}
        for name, shape in (("gate", [ffn, 64]), ("up", [ffn, 64]), ("down", [64, ffn])):
            weights[f"model.layers.0.mlp.{name}_proj.weight"] = ("F32", shape, None)
        config.update(intermediate_size=ffn, num_hidden_layers=1)
    _safetensors(ck / "model.safetensors", weights)
    (ck / "config.json").write_text(json.dumps(config))
    return modelfile(folder, f"FROM {ck}\n")


def many_tensors_modelfile(folder: Path, count: int) -> Path:
    """A checkpoint of two shards, the second naming `count` empty tensors (about 75 bytes of
    header each)."""
    ck = folder / "many"
    weights = _f32_weights(ck)
    (ck / "model.safetensors").unlink()
    _safetensors(ck / "model-00001-of-00002.safetensors", weights)
    empty: dict[str, tuple[str, list[int], bytes | None]] = {
        f"model.layers.0.x{i:07d}": ("F32", [0], None) for i in range(count)
    }
    _safetensors(ck / "model-00002-of-00002.safetensors", empty)
    return modelfile(folder, f"FROM {ck}\n")


def other_runners(folder: Path) -> dict[str, str]:
    """The environment of a user whose LM Studio downloads into `/` and whose Hugging Face
    cache holds a snapshot linking to /usr; Ollama's and llama.cpp's folders empty."""
    user = folder / "user"
    (user / ".lmstudio").mkdir(parents=True)
    (user / ".lmstudio" / "settings.json").write_text(json.dumps({"downloadsFolder": "/"}))
    repo = folder / "hub" / "models--org--repo"
    snapshot = repo / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "usr").symlink_to("/usr")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc")
    for empty in ("ollama", "llama.cpp"):
        (folder / empty).mkdir()
    return {
        "HOME": str(user),
        "HF_HUB_CACHE": str(folder / "hub"),
        "OLLAMA_MODELS": str(folder / "ollama"),
        "LLAMA_CACHE": str(folder / "llama.cpp"),
        "LOCALRUN_OTHER_RUNNERS": "1",
    }


def tool_history(value: str) -> dict[str, bytes]:
    """A chat whose assistant turn called a tool with argument `value` (raw JSON, such as
    1e999 that no encoder writes) for a model `go-args`, in each route's shape."""
    calls = [{"function": {"name": "f", "arguments": {"n": "@"}}}]
    native: dict[str, Any] = {
        "messages": [*HI, {"role": "assistant", "content": "", "tool_calls": calls}]
    }
    native.update(stream=False, keep_alive=0, options={"num_predict": 4})
    function = {"name": "f", "arguments": json.dumps({"n": "@"})}
    openai = [*HI, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": function}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"}]  # fmt: skip
    anthropic = [*HI, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "c1", "name": "f", "input": {"n": "@"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "c1", "content": "ok"}]}]  # fmt: skip
    bodies = {
        "/api/chat": native,
        "/v1/chat/completions": {"messages": openai, "max_tokens": 4},
        "/v1/messages": {"messages": anthropic, "max_tokens": 4},
        "/apply-template": {"messages": openai},
    }
    raw = {'"@"': value, '\\"@\\"': value}  # the argument, and inside a JSON string
    out = {}
    for path, body in bodies.items():
        text = json.dumps({"model": "go-args", **body})
        for placeholder, replacement in raw.items():
            text = text.replace(placeholder, replacement)
        out[path] = text.encode()
    return out
