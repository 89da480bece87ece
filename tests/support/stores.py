"""Other runners' stores as they lay them out, for `localrun import` and the sources that read
them: Ollama's blobs and manifests, the Hugging Face cache, llama.cpp's download cache."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any


def ollama_blob(root: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}"


def ollama_manifest(
    root: Path, name: str, layers: list[tuple[str, str, int]], host: str = ""
) -> Path:
    """manifests/registry.ollama.ai/library/NAME/TAG as Ollama writes it."""
    model, _, tag = name.partition(":")
    namespace, _, model = model.rpartition("/")
    folder = root / "manifests" / (host or "registry.ollama.ai") / (namespace or "library") / model
    folder.mkdir(parents=True, exist_ok=True)
    config = ollama_blob(root, b'{"model_format":"gguf","model_family":"llama"}')
    body: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": config, "size": 46},
        "layers": [
            {"mediaType": f"application/vnd.ollama.image.{kind}", "digest": digest, "size": size}
            for kind, digest, size in layers
        ],
    }  # fmt: skip
    path = folder / (tag or "latest")
    path.write_text(json.dumps(body))
    return path


def hf_cache(root: Path, gguf: bytes) -> Path:
    """The Hugging Face cache as huggingface_hub writes it: blobs named by sha256, a snapshot
    of links into them, refs/main naming the snapshot."""
    repo = root / "models--someorg--Tiny-GGUF"
    digest = hashlib.sha256(gguf).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(gguf)
    (repo / "blobs" / ("ef" * 32 + ".incomplete")).write_bytes(b"half")
    snapshot = repo / "snapshots" / ("12" * 20)
    snapshot.mkdir(parents=True)
    (snapshot / "tiny-Q8_0.gguf").symlink_to(f"../../blobs/{digest}")
    (snapshot / "escape-Q4_0.gguf").symlink_to("/etc/hostname")
    (snapshot / "loop-Q5_0.gguf").symlink_to("loop-Q5_0.gguf")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("12" * 20)
    return repo


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cached(cache: Path, flat: str, data: bytes) -> Path:
    """A file as llama.cpp's downloader leaves it: the file and its .etag sidecar."""
    path = cache / flat
    path.write_bytes(data)
    (cache / f"{flat}.etag").write_text(f'"{sha256(data)[:20]}"')
    return path


def hub_file(rfilename: str, data: bytes, sha: str | None = None) -> dict[str, Any]:
    sha = sha or sha256(data)
    return {"rfilename": rfilename, "blobId": f"sha256:{sha}", "size": len(data),
            "lfs": {"sha256": sha, "size": len(data), "pointerSize": 134}}  # fmt: skip


def llama_manifest(cache: Path, name: str, gguf: dict[str, Any], **extra: Any) -> None:
    """manifest=...json: the hub's registry manifest as llama.cpp stores it, with ggufFile."""
    body = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"digest": "sha256:" + "0" * 64, "size": 551,
                   "mediaType": "application/vnd.docker.container.image.v1+json"},
        "layers": [{"digest": gguf["blobId"], "size": gguf["size"],
                    "mediaType": "application/vnd.ollama.image.model"}],
        "ggufFile": gguf,
        **extra,
    }  # fmt: skip
    (cache / name).write_text(json.dumps(body))


CHATML_JINJA = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def listing(stdout: str) -> dict[str, str]:
    """`import --dry-run`'s rows by model name."""
    return {line.split()[0]: line for line in stdout.splitlines()[1:] if line.strip()}


def lm_studio_settings(**extra: Any) -> dict[str, Any]:
    """A model's settings as LM Studio's "My Models -> gear" saves them."""
    prediction = [
        ("llm.prediction.temperature", 0.7),
        ("llm.prediction.temperature", 1.5),  # a repeated key: the first counts
        ("llm.prediction.topKSampling", 20),
        ("llm.prediction.topPSampling", {"checked": True, "value": 0.8}),
        ("llm.prediction.minPSampling", {"checked": True, "value": 7}),  # out of range: left out
        ("llm.prediction.repeatPenalty", {"checked": False, "value": 1.3}),  # unchecked: off
        ("llm.prediction.maxPredictedTokens", {"checked": True, "value": 64}),
        ("llm.prediction.seed", {"checked": True, "value": 42}),
        ("llm.prediction.stopStrings", ["<|im_end|>", "</s>"]),
        ("llm.prediction.systemPrompt", "You are terse."),
        ("llm.prediction.promptTemplate", {"type": "jinja", "stopStrings": [],
                                           "jinjaPromptTemplate": {"template": CHATML_JINJA}}),
        ("llm.prediction.llama.cpuThreads", 4),  # no counterpart: ignored
        ("ext.virtualModel.customField.x.enableThinking", True),
    ]  # fmt: skip
    load = [("llm.load.contextLength", 2048), ("llm.load.llama.flashAttention", True)]
    return {
        "preset": "",
        "operation": {"fields": [{"key": k, "value": v} for k, v in prediction]},
        "load": {"fields": [{"key": k, "value": v} for k, v in load]},
        **extra,
    }


def lm_studio(tmp_path: Path, tiny_model: Path, tiny_fim_model: Path) -> dict[str, Path]:
    """LM Studio moved: ~/.lmstudio-home-pointer names its home, whose settings.json names
    another downloads folder; a model with saved settings, two whose settings are broken, and
    one `lms import -l` linked in from elsewhere. The user's folder, the models', and the file
    linked in."""
    user = tmp_path / "user"
    lm_home = tmp_path / "LM Studio home"
    models = tmp_path / "big disk" / "lm-models"
    user.mkdir()
    (user / ".lmstudio-home-pointer").write_text(f"{lm_home}\n")
    lm_home.mkdir()
    (lm_home / "settings.json").write_text(json.dumps({"downloadsFolder": str(models)}))
    decoy = user / ".lmstudio" / "models" / "decoy" / "Decoy-GGUF"  # not the home: not read
    decoy.mkdir(parents=True)
    shutil.copyfile(tiny_model, decoy / "Decoy-Q4_0.gguf")
    configs = lm_home / ".internal" / "user-concrete-model-default-config"
    for repo, file, settings in (
        ("Tiny-GGUF", "Tiny-Q4_K_M.gguf", json.dumps(lm_studio_settings())),
        ("Big-GGUF", "Big-Q4_0.gguf", json.dumps(lm_studio_settings(pad=" " * (2 << 20)))),
        ("Bad-GGUF", "Bad-Q4_0.gguf", '{"operation": '),
    ):
        (models / "bartowski" / repo).mkdir(parents=True)
        shutil.copyfile(tiny_model, models / "bartowski" / repo / file)
        (configs / "bartowski" / repo).mkdir(parents=True)
        (configs / "bartowski" / repo / f"{file}.json").write_text(settings)
    elsewhere = tmp_path / "downloads" / "elsewhere.gguf"
    elsewhere.parent.mkdir()
    shutil.copyfile(tiny_fim_model, elsewhere)  # other weights: a blob of its own
    (models / "linked" / "Elsewhere-GGUF").mkdir(parents=True)
    (models / "linked" / "Elsewhere-GGUF" / "Elsewhere-Q8_0.gguf").symlink_to(elsewhere)
    return {"user": user, "models": models, "elsewhere": elsewhere}
