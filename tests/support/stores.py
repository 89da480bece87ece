"""Other runners' stores as they lay them out, for `localrun import` and the sources that read
them: Ollama's blobs and manifests, the Hugging Face cache, llama.cpp's download cache."""

from __future__ import annotations

import hashlib
import json
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
