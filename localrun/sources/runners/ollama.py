"""Ollama's store read as Ollama writes it, each model as a Modelfile of its layers.

Ollama's store (`OLLAMA_MODELS`, else `~/.ollama/models`) is a registry's layout on disk:

    manifests/<host>/<namespace>/<model>/<tag>   a manifest: JSON listing the layers
    blobs/sha256-<hex>                           each layer, named by its digest

A manifest's layers are the model (GGUF), the template (a Go template), the system prompt, the
parameters (JSON), a projector, adapters, messages and licenses, told apart by media type. Its
model is imported under Ollama's own name (`llama3.2:latest`; `ns/model:tag` and
`host/ns/model:tag` off the library) as a Modelfile of those layers would create it. The blobs
are linked into the store (`create --link`): the files stay Ollama's, `rm` never deletes them,
and a blob whose content lacks the digest its name claims is refused. `ollama pull` of a tag it
has rewrites the manifest in place, naming new blobs and deleting the old ones no other
manifest uses; importing the model again points it at the new blobs.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localrun.errors import ImportSourceError
from localrun.recipes import params as params_mod
from localrun.recipes.modelfile import Message, Modelfile
from localrun.sources.runners.found import (
    MAX_JSON,
    MAX_TEXT,
    PART,
    Found,
    dirs,
    parameter,
    parse_json,
    read_json,
    refused,
)

OLLAMA = "application/vnd.ollama.image."
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_TEXT_KINDS = ("template", "system", "params", "messages", "license")
MAX_TEXT_TOTAL = 16 << 20  # bytes: every text layer of one model together
DEFAULT_HOST, DEFAULT_NAMESPACE = "registry.ollama.ai", "library"


def root() -> Path:
    """Ollama's models folder: OLLAMA_MODELS, else ~/.ollama/models."""
    configured = os.environ.get("OLLAMA_MODELS")
    folder = Path(configured).expanduser() if configured else Path.home() / ".ollama" / "models"
    return folder.absolute()  # a relative OLLAMA_MODELS names files from where we stand


def models(folder: Path | None = None) -> list[Found]:
    """Every model in an Ollama store, importable or with the reason it is not."""
    folder = folder if folder is not None else root()
    manifests = folder / "manifests"
    if not manifests.is_dir():
        return []
    found = []
    for path in sorted(_manifest_files(manifests)):
        name = _name(path.relative_to(manifests).parts)
        try:
            found.append(_read(folder, path, name))
        except ImportSourceError as exc:
            found.append(refused(name, path, "ollama", str(exc)))
        except OSError as exc:  # a file that went away or cannot be read while we looked
            found.append(refused(name, path, "ollama", f"{path}: {exc.strerror}"))
        except (KeyError, TypeError, ValueError) as exc:  # a shape no check foresaw
            found.append(
                refused(name, path, "ollama", f"{path}: not a manifest Ollama writes ({exc})")
            )
    return found


def _manifest_files(manifests: Path) -> Iterator[Path]:
    """manifests/<host>/<namespace>/<model>/<tag>, without following links out of the store."""
    for host in dirs(manifests):
        for namespace in dirs(host):
            for model in dirs(namespace):
                for tag in model.iterdir():
                    if tag.is_file() and not tag.is_symlink() and PART.fullmatch(tag.name):
                        yield tag


def _name(parts: tuple[str, ...]) -> str:
    host, namespace, model, tag = parts
    if host == DEFAULT_HOST and namespace == DEFAULT_NAMESPACE:
        return f"{model}:{tag}".lower()
    if host == DEFAULT_HOST:
        return f"{namespace}/{model}:{tag}".lower()
    return f"{host}/{namespace}/{model}:{tag}".lower()


def _read(folder: Path, path: Path, name: str) -> Found:
    manifest = read_json(path, MAX_JSON, "manifest")
    layers = manifest.get("layers") if isinstance(manifest, dict) else None
    if not isinstance(layers, list):
        raise ImportSourceError(f"{path} is not an Ollama manifest (no layers)")
    by_kind: dict[str, list[Path]] = {}
    digests: dict[str, str] = {}
    size = 0
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise ImportSourceError(f"{path}: layer {index} is not an object")
        kind = str(layer.get("mediaType", "")).removeprefix(OLLAMA)
        blob = _blob(folder, layer.get("digest"), path, index)
        by_kind.setdefault(kind, []).append(blob)
        digests[str(blob)] = str(layer["digest"])
        size += blob.stat().st_size
    found = by_kind.get("model", [])
    if len(found) != 1:
        raise ImportSourceError(f"{path}: {len(found)} model layers (one is imported)")
    # The small layers become the model's text here, never hashed by create: each is checked
    # against its digest now, and all of them together are bounded.
    texts = [p for kind in _TEXT_KINDS for p in by_kind.get(kind, [])]
    if sum(p.stat().st_size for p in texts) > MAX_TEXT_TOTAL:
        raise ImportSourceError(f"{path}: its text layers hold more than {MAX_TEXT_TOTAL} bytes")
    # Read once: what is checked is what is used.
    content = {p: _check_digest(p, digests[str(p)]) for p in texts}
    modelfile = Modelfile(from_=str(found[0]))
    for text_path in by_kind.get("template", [])[:1]:
        modelfile.template = _text(content[text_path])
    for text_path in by_kind.get("system", [])[:1]:
        modelfile.system = _text(content[text_path])
    for params_path in by_kind.get("params", [])[:1]:
        modelfile.parameters = parameters(params_path, content[params_path])
    for messages_path in by_kind.get("messages", [])[:1]:
        modelfile.messages = messages(messages_path, content[messages_path])
    modelfile.licenses = [_text(content[p]) for p in by_kind.get("license", [])]
    modelfile.adapters = [str(p) for p in by_kind.get("adapter", [])]
    projectors = by_kind.get("projector", [])
    if projectors:
        modelfile.projector = str(projectors[0])
    return Found(name, size, path, "ollama", modelfile, digests)


def _blob(folder: Path, digest: Any, manifest: Path, index: int) -> Path:
    """Return a layer's blob, its digest checked before it names a path.

    Checking first is Ollama's own fix for a path traversal. A blob still being downloaded
    (`-partial`) is skipped and said so.
    """
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise ImportSourceError(f"{manifest}: layer {index} has no valid digest ({digest!r:.80})")
    blob = folder / "blobs" / f"sha256-{match.group(1)}"
    if blob.is_symlink():  # Ollama writes files; a link could name any file of the user's
        raise ImportSourceError(f"{manifest}: layer {index}'s blob {blob.name} is a link")
    if not blob.is_file():
        partial = next(iter(blob.parent.glob(blob.name + "-partial*")), None)
        if partial is not None:
            raise ImportSourceError(f"{manifest}: layer {index} is still downloading (skipped)")
        raise ImportSourceError(f"{manifest}: layer {index}'s blob {blob.name} is missing")
    return blob


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def parameters(path: Path, data: bytes) -> list[tuple[str, params_mod.Value]]:
    """Return Ollama's parameters layer ({"stop": [...], "temperature": 0.6}) as PARAMETER lines.

    One localrun does not know is left out: Ollama has a few more knobs.
    """
    values = parse_json(data, path, "parameters layer")
    if not isinstance(values, dict):
        raise ImportSourceError(f"{path}: the parameters layer is not an object")
    out: list[tuple[str, params_mod.Value]] = []
    for key, value in values.items():
        for item in value if isinstance(value, list) else [value]:
            checked = parameter(str(key), item)
            if checked is not None:
                out.append(checked)
    return out


def messages(path: Path, data: bytes) -> list[Message]:
    values = parse_json(data, path, "messages layer")
    if not isinstance(values, list):
        return []
    return [
        Message(str(m["role"]), m["content"])
        for m in values
        if isinstance(m, dict)
        and m.get("role") in ("system", "user", "assistant")
        and isinstance(m.get("content"), str)
    ]


def _check_digest(path: Path, digest: str) -> bytes:
    """The content of a small layer, checked to be what its name says, or ImportSourceError."""
    with path.open("rb") as handle:
        data = handle.read(MAX_TEXT + 1)
    if f"sha256:{hashlib.sha256(data).hexdigest()}" != digest:
        raise ImportSourceError(
            f"{path}: its content is not {digest} (the blob is damaged or was replaced)"
        )
    return data
