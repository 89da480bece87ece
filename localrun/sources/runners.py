"""Models other runners already keep on this machine, imported in place (linked, not copied).

Ollama's store, the Hugging Face cache (`models--ORG--REPO/snapshots/REV/`, links into
`blobs/`, each named by its sha256) and LM Studio's folders (`~/.lmstudio/models/ORG/REPO/`,
older `~/.cache/lm-studio/models`); the GGUF folders' models are named as `pull` would name
them, `hf.co/ORG/REPO:QUANT`, so a later `pull` finds them there, with their projector.

Ollama's store (`OLLAMA_MODELS`, else `~/.ollama/models`) is a registry's layout on disk:

    manifests/<host>/<namespace>/<model>/<tag>   a manifest: JSON listing the layers
    blobs/sha256-<hex>                           each layer, named by its digest

A manifest's layers are the model (GGUF), the template (a Go template), the system prompt, the
parameters (JSON), a projector, adapters, messages and licenses, told apart by media type. Its
model is imported under Ollama's own name (`llama3.2:latest`; `ns/model:tag` and
`host/ns/model:tag` off the library) as a Modelfile of those layers would create it, the blobs
linked into the store (`create --link`): the files stay Ollama's, `rm` never deletes them, and
each blob's content must have the digest its name claims (a blob that does not is refused).

A digest is checked before any path is built from it (Ollama's own fix for a path traversal);
a manifest, template or parameter layer is read with a bound on its size; a blob still being
downloaded (`-partial`) is skipped and said so.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localrun.errors import BadRequestError, ImportSourceError
from localrun.recipes import params as params_mod
from localrun.recipes.modelfile import Message, Modelfile

OLLAMA = "application/vnd.ollama.image."
_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")
MAX_MANIFEST = 1 << 20  # bytes: a manifest is a few hundred
MAX_TEXT_LAYER = 4 << 20  # bytes: a template, a system prompt, parameters, messages
DEFAULT_HOST, DEFAULT_NAMESPACE = "registry.ollama.ai", "library"


@dataclass
class Found:
    """A model another runner keeps: its name here, its size, where it is, and what it holds."""

    name: str
    size: int
    location: Path  # the manifest (Ollama) or the file
    source: str  # "ollama"
    modelfile: Modelfile | None = None  # None: it cannot be imported (see `problem`)
    digests: dict[str, str] = field(default_factory=dict)  # file path -> "sha256:<hex>"
    problem: str = ""  # why it is skipped (a partial download, a hostile manifest)


def find(source: str) -> list[Found]:
    """The models of one source ("ollama", "hf", "lmstudio") or of "all"."""
    finders: dict[str, Callable[[], list[Found]]] = {
        "ollama": ollama_models,
        "hf": hf_models,
        "lmstudio": lmstudio_models,
    }
    chosen = list(finders) if source == "all" else [source]
    return [found for name in chosen for found in finders[name]()]


SOURCES = ("ollama", "hf", "lmstudio", "all")


def ollama_root() -> Path:
    """Ollama's models folder: OLLAMA_MODELS, else ~/.ollama/models."""
    configured = os.environ.get("OLLAMA_MODELS")
    return Path(configured).expanduser() if configured else Path.home() / ".ollama" / "models"


def ollama_models(root: Path | None = None) -> list[Found]:
    """Every model in an Ollama store, importable or with the reason it is not."""
    root = root if root is not None else ollama_root()
    manifests = root / "manifests"
    if not manifests.is_dir():
        return []
    found = []
    for path in sorted(_manifest_files(manifests)):
        parts = path.relative_to(manifests).parts
        name = _ollama_name(parts)
        try:
            found.append(_read_ollama(root, path, name))
        except ImportSourceError as exc:
            found.append(Found(name, 0, path, "ollama", problem=str(exc)))
    return found


def _manifest_files(manifests: Path) -> Iterator[Path]:
    """manifests/<host>/<namespace>/<model>/<tag>, without following links out of the store."""
    for host in _dirs(manifests):
        for namespace in _dirs(host):
            for model in _dirs(namespace):
                for tag in model.iterdir():
                    if tag.is_file() and not tag.is_symlink() and _PART.fullmatch(tag.name):
                        yield tag


def _dirs(path: Path) -> list[Path]:
    return [
        p for p in path.iterdir() if p.is_dir() and not p.is_symlink() and _PART.fullmatch(p.name)
    ]


def _ollama_name(parts: tuple[str, ...]) -> str:
    host, namespace, model, tag = parts
    if host == DEFAULT_HOST and namespace == DEFAULT_NAMESPACE:
        return f"{model}:{tag}".lower()
    if host == DEFAULT_HOST:
        return f"{namespace}/{model}:{tag}".lower()
    return f"{host}/{namespace}/{model}:{tag}".lower()


def _read_ollama(root: Path, path: Path, name: str) -> Found:
    manifest = _json(path, MAX_MANIFEST, "manifest")
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
        blob = _blob(root, layer.get("digest"), path, index)
        by_kind.setdefault(kind, []).append(blob)
        digests[str(blob)] = str(layer["digest"])
        size += blob.stat().st_size
    models = by_kind.get("model", [])
    if len(models) != 1:
        raise ImportSourceError(f"{path}: {len(models)} model layers (one is imported)")
    modelfile = Modelfile(from_=str(models[0]))
    for text_path in by_kind.get("template", [])[:1]:
        modelfile.template = _text(text_path)
    for text_path in by_kind.get("system", [])[:1]:
        modelfile.system = _text(text_path)
    for params_path in by_kind.get("params", [])[:1]:
        modelfile.parameters = _parameters(params_path)
    for messages_path in by_kind.get("messages", [])[:1]:
        modelfile.messages = _messages(messages_path)
    modelfile.licenses = [_text(p) for p in by_kind.get("license", [])]
    modelfile.adapters = [str(p) for p in by_kind.get("adapter", [])]
    projectors = by_kind.get("projector", [])
    if projectors:
        modelfile.projector = str(projectors[0])
    return Found(name, size, path, "ollama", modelfile, digests)


def _blob(root: Path, digest: Any, manifest: Path, index: int) -> Path:
    """A layer's blob, its digest checked before it names a path."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise ImportSourceError(f"{manifest}: layer {index} has no valid digest ({digest!r:.80})")
    blob = root / "blobs" / f"sha256-{match.group(1)}"
    if not blob.is_file():
        partial = next(iter(blob.parent.glob(blob.name + "-partial*")), None)
        if partial is not None:
            raise ImportSourceError(f"{manifest}: layer {index} is still downloading (skipped)")
        raise ImportSourceError(f"{manifest}: layer {index}'s blob {blob.name} is missing")
    return blob


def _json(path: Path, most: int, what: str) -> Any:
    try:
        with path.open("rb") as handle:
            data = handle.read(most + 1)
    except OSError as exc:
        raise ImportSourceError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    if len(data) > most:
        raise ImportSourceError(f"{path}: the {what} is larger than {most} bytes")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise ImportSourceError(f"{path}: the {what} is not JSON") from None


def _text(path: Path) -> str:
    with path.open("rb") as handle:
        data = handle.read(MAX_TEXT_LAYER + 1)
    if len(data) > MAX_TEXT_LAYER:
        raise ImportSourceError(f"{path}: a text layer larger than {MAX_TEXT_LAYER} bytes")
    return data.decode("utf-8", "replace")


def _parameters(path: Path) -> list[tuple[str, params_mod.Value]]:
    """Ollama's parameters layer ({"stop": [...], "temperature": 0.6, ...}) as PARAMETER lines;
    one localrun does not know is left out (Ollama has a few more knobs)."""
    values = _json(path, MAX_TEXT_LAYER, "parameters layer")
    if not isinstance(values, dict):
        raise ImportSourceError(f"{path}: the parameters layer is not an object")
    out: list[tuple[str, params_mod.Value]] = []
    for key, value in values.items():
        for item in value if isinstance(value, list) else [value]:
            if not isinstance(item, (str, int, float, bool)):
                continue
            try:
                params_mod.validate({key: [item] if key == "stop" else item})
            except BadRequestError:
                continue
            out.append((key, item))
    return out


def _messages(path: Path) -> list[Message]:
    values = _json(path, MAX_TEXT_LAYER, "messages layer")
    if not isinstance(values, list):
        return []
    return [
        Message(str(m["role"]), str(m["content"]))
        for m in values
        if isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
    ]


# -- GGUF folders: the Hugging Face cache, LM Studio ---------------------------------------------


def hf_root() -> Path:
    """The Hugging Face cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def lmstudio_roots() -> list[Path]:
    """LM Studio's models folders, the current one and the older one."""
    home = Path.home()
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def hf_models(root: Path | None = None) -> list[Found]:
    """The GGUF models of the Hugging Face cache's snapshots (models--ORG--REPO)."""
    root = root if root is not None else hf_root()
    if not root.is_dir():
        return []
    found: list[Found] = []
    for repo in sorted(_dirs_named(root, "models--")):
        parts = repo.name.split("--")
        if len(parts) != 3:
            continue
        snapshot = _snapshot(repo)
        if snapshot is not None:
            files = [p for p in sorted(snapshot.rglob("*")) if p.name.lower().endswith(".gguf")]
            found += _gguf_models(files, parts[1], parts[2], "hf", inside=repo)
        for partial in sorted((repo / "blobs").glob("*.incomplete")):
            found.append(Found(f"hf.co/{parts[1]}/{parts[2]}".lower(), partial.stat().st_size,
                               partial, "hf", problem="still downloading (skipped)"))  # fmt: skip
    return found


def lmstudio_models(roots: list[Path] | None = None) -> list[Found]:
    """The GGUF models in LM Studio's folders (ORG/REPO/*.gguf)."""
    found: list[Found] = []
    for root in roots if roots is not None else lmstudio_roots():
        if not root.is_dir():
            continue
        for org in sorted(_dirs(root)):
            for repo in sorted(_dirs(org)):
                files = [p for p in sorted(repo.iterdir()) if p.name.lower().endswith(".gguf")]
                found += _gguf_models(files, org.name, repo.name, "lmstudio", inside=repo)
    return found


def _dirs_named(root: Path, prefix: str) -> list[Path]:
    return [p for p in root.iterdir() if p.name.startswith(prefix) and p.is_dir()]


def _snapshot(repo: Path) -> Path | None:
    """The snapshot refs/main names, else the newest."""
    snapshots = repo / "snapshots"
    if not snapshots.is_dir():
        return None
    ref = repo / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text(errors="replace").strip()
        if _PART.fullmatch(revision) and (snapshots / revision).is_dir():
            return snapshots / revision
    revisions = [p for p in snapshots.iterdir() if p.is_dir()]
    return max(revisions, key=lambda p: p.stat().st_mtime) if revisions else None


def _gguf_models(files: list[Path], org: str, repo: str, source: str, inside: Path) -> list[Found]:
    """Each model GGUF of a repository folder (a split model's first part), with its
    projector, under the name `pull` gives it: hf.co/ORG/REPO:QUANT."""
    from localrun.sources.base import quant_of

    projectors = [f for f in files if "mmproj" in f.name.lower()]
    models = [
        f for f in files
        if f not in projectors and not re.search(r"-0*(?:[2-9]|\d\d+)-of-\d+\.gguf$", f.name)
    ]  # fmt: skip
    out = []
    for path in models:
        tag = quant_of(path.name) or path.name.removesuffix(".gguf").removesuffix(".GGUF")
        name = f"hf.co/{org}/{repo}:{tag}".lower()
        try:
            real = _inside(path, inside)
        except ImportSourceError as exc:
            out.append(Found(name, 0, path, source, problem=str(exc)))
            continue
        modelfile = Modelfile(from_=str(real))
        digests = {}
        if _HEX.fullmatch(real.name):  # the hub cache names a blob by its sha256
            digests[str(real)] = f"sha256:{real.name}"
        if projectors:
            modelfile.projector = str(_inside(projectors[0], inside))
        out.append(Found(name, real.stat().st_size, path, source, modelfile, digests))
    return out


def _inside(path: Path, folder: Path) -> Path:
    """`path` with its links resolved, which must stay in `folder` (the hub cache's snapshot
    links point into the repository's blobs); a link loop or a way out is refused."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ImportSourceError(f"{path}: a broken link or a link loop") from None
    if not real.is_relative_to(folder.resolve()) or not real.is_file():
        raise ImportSourceError(f"{path}: links outside its repository folder")
    return real
