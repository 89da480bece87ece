"""`localrun pull` from a registry: Ollama's library, or any OCI registry by its host.

A manifest's layers are read by media type, in Ollama's packaging or in Docker Model Runner's:

    Ollama (application/vnd.ollama.image.*)     Docker (application/vnd.docker.ai.*)
    model, projector, adapter                   gguf.v3 (each part of a split model), mmproj
    template (a Go template), system, params,   chat.template.jinja, license; the config's
    messages, license                           context_size becomes num_ctx

A layer of any other type refuses the pull, naming it (a safetensors model: pull a GGUF tag).
Ollama's parameters and messages layers are read as `localrun import ollama` reads them
(sources/runners/ollama.py). `source` in the model's config records the registry, repository,
tag and manifest digest: pulling again with nothing changed upstream transfers nothing. `pull`
says how the layers come.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrun.errors import (
    CorruptBlobError,
    DiskFullError,
    DownloadError,
    InvalidGGUFError,
    LocalrunError,
)
from localrun.gguf import scan
from localrun.recipes import create
from localrun.recipes.create import Event, Reporter
from localrun.recipes.modelfile import Modelfile
from localrun.sources import bodies, hosts, partial, present, ranges
from localrun.sources.pull import gguf_texts
from localrun.sources.registry import oci
from localrun.sources.runners import ollama as ollama_store
from localrun.sources.runners.found import MAX_TEXT
from localrun.store.local import Store
from localrun.store.manifest import MEDIA_CONFIG, MEDIA_TYPES, Layer, Manifest, check_digest
from localrun.store.names import ModelName

OLLAMA = "application/vnd.ollama.image."
OLLAMA_KINDS = {kind: kind for kind in ("model", "projector", "adapter", "template", "system",
                                        "params", "messages", "license")}  # fmt: skip
OLLAMA_KINDS["prompt"] = "template"  # the template's name in Ollama's first manifests
OLLAMA_IGNORED = ("embed",)  # layers Ollama itself skips
DOCKER = {
    "application/vnd.docker.ai.gguf.v3": "model",
    "application/vnd.docker.ai.mmproj": "projector",
    "application/vnd.docker.ai.license": "license",
    "application/vnd.docker.ai.chat.template.jinja": "template",
}
DOCKER_CONFIGS = (
    "application/vnd.docker.ai.model.config.v0.1+json",
    "application/vnd.docker.ai.model.config.v0.2+json",
)
NOT_GGUF = ("application/vnd.docker.ai.safetensors", "application/vnd.ollama.image.tensor")
BLOBS = ("model", "projector", "adapter")  # fetched in ranges and adopted as they are
TEXTS = ("template", "system", "params", "messages", "license")
MAX_LAYERS = 256
MAX_LAYER = 1 << 44  # bytes (16 TiB): past it a size is a lie
MAX_TEXTS = 16 << 20  # bytes of every text layer together
DISK_MARGIN = 256 << 20
# A registry on this machine: no latency for parallel ranges to hide (4 connections cost a
# third of the rate on 2 cores, scripts/bench/pull.py).
LOCAL_STREAMS = 1


@dataclass(frozen=True)
class Part:
    """A layer of the registry's manifest, as localrun reads it."""

    kind: str  # a store layer kind (model, projector, ..., license)
    digest: str
    size: int
    media_type: str


@dataclass
class Plan:
    """What a manifest holds: its parts, its format and its config's settings."""

    manifest: oci.Manifest
    packaging: str  # "ollama" or "docker"
    parts: list[Part]
    config: Part | None


def pull(
    store: Store,
    name: ModelName,
    report: Reporter = lambda _: None,
    *,
    reach: hosts.Reach = hosts.OWNER,
) -> str:
    """Pull `name` from its registry into the store; return the digest of the manifest written.

    `reach`, who asked, says how far it may go. As `pull` from Hugging Face does (sources/pull.py),
    a blob the store has is not fetched again, and free disk space is checked first. A large
    layer comes in parallel ranges into `partial/<hex>/`, resumable, hashed as it lands
    (sources/ranges.py); a small one comes in one bounded request. Each must have its digest and
    declared size, checked before it is named in the store; a model or projector must be a valid
    GGUF. The model is written as `create` writes one (recipes/create.py), from a base of its
    weights, the manifest last.
    """
    where, trusted = reach.where(name)
    report(Event("pulling manifest"))
    with oci.Registry(where, trusted=trusted) as registry:
        plan = read_plan(registry)
        if _up_to_date(store, name, plan):
            return present.tell(store, name, report, pulling_manifest=False)
        with store.writing():
            _check_space(store, plan)
            for part in plan.parts:
                if part.kind in BLOBS:
                    _fetch_blob(store, registry, part, report, others=reach.others)
        texts = _texts(store, registry, plan)
        settings = _docker_config(registry, plan.config) if plan.config else {}
    # The blobs wait for their manifest as uploads do (prune leaves them be); the base of
    # weights and config is made inside create, under the store's lock.
    return create.create(
        store,
        name,
        _modelfile(texts, where, settings),
        Path("/"),
        report=lambda e: None if e.status.startswith("using model") else report(e),
        find_base=lambda _: _base(store, where, plan, settings),
    )


def read_plan(registry: oci.Registry) -> Plan:
    """The manifest's layers, checked and classified; a LocalrunError naming what is wrong."""
    found = registry.manifest()
    shown = registry.target.shown
    layers = found.data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise DownloadError(f"{shown}: the manifest lists no layers")
    if len(layers) > MAX_LAYERS:
        raise DownloadError(
            f"{shown}: the manifest lists {len(layers)} layers (at most {MAX_LAYERS})",
            hint="no model has that many; the registry is misbehaving",
        )
    packaging = "ollama"
    parts = []
    for index, layer in enumerate(layers):
        media, digest, size = _descriptor(layer, shown, f"layer {index}")
        if media.removeprefix(OLLAMA) in OLLAMA_IGNORED:
            continue
        if media.startswith(OLLAMA) and media.removeprefix(OLLAMA) in OLLAMA_KINDS:
            kind = OLLAMA_KINDS[media.removeprefix(OLLAMA)]
        elif media in DOCKER:
            kind, packaging = DOCKER[media], "docker"
        elif media in NOT_GGUF or "safetensors" in media:
            raise DownloadError(
                f"{shown}: the model is in safetensors ({media[:100]}); localrun runs GGUF",
                hint="pull a GGUF tag of it, or convert it with a Modelfile "
                "(FROM a checkpoint folder)",
            )
        else:
            raise DownloadError(
                f"{shown}: layer {index} is of a type localrun does not know ({media[:100]})",
                hint="nothing was saved; localrun reads Ollama's and Docker's model layers",
            )
        if kind in TEXTS and size > MAX_TEXT:
            raise DownloadError(f"{shown}: its {kind} layer is {size} bytes (at most {MAX_TEXT})")
        parts.append(Part(kind, digest, size, media))
    if not any(p.kind == "model" for p in parts):
        raise DownloadError(f"{shown}: the manifest has no model layer (GGUF)")
    if sum(p.size for p in parts if p.kind in TEXTS) > MAX_TEXTS:
        raise DownloadError(f"{shown}: its text layers hold more than {MAX_TEXTS} bytes")
    config = None
    raw_config = found.data.get("config")
    if isinstance(raw_config, dict) and raw_config.get("mediaType") in DOCKER_CONFIGS:
        media, digest, size = _descriptor(raw_config, shown, "the config")
        if size <= MAX_TEXT:
            config, packaging = Part("config", digest, size, media), "docker"
    return Plan(found, packaging, parts, config)


def _descriptor(layer: Any, shown: str, what: str) -> tuple[str, str, int]:
    if not isinstance(layer, dict):
        raise DownloadError(f"{shown}: {what} of the manifest is not an object")
    media, digest, size = layer.get("mediaType"), layer.get("digest"), layer.get("size")
    if not isinstance(media, str) or not isinstance(digest, str):
        raise DownloadError(f"{shown}: {what} has no media type or digest")
    try:
        digest = check_digest(digest)
    except LocalrunError:
        raise DownloadError(f"{shown}: {what} has an invalid digest ({digest[:80]!r})") from None
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_LAYER:
        raise DownloadError(f"{shown}: {what} has an invalid size ({str(size)[:40]})")
    return media, digest, size


def _up_to_date(store: Store, name: ModelName, plan: Plan) -> bool:
    """Whether the stored model was pulled from this very manifest, and is whole."""
    with contextlib.suppress(Exception):
        current = store.read_manifest(name)
        config = json.loads(store.read_blob(current.config.digest))
        source = config.get("source") or {}
        return source.get("manifest") == plan.manifest.digest and all(
            store.has_blob(d) for d in current.digests()
        )
    return False


def _check_space(store: Store, plan: Plan) -> None:
    needed = 0
    for part in plan.parts:
        if part.kind in BLOBS and not store.has_blob(part.digest):
            needed += part.size - ranges.kept(_blob(store, part, ""))
    if not needed:
        return
    free = shutil.disk_usage(store.root).free
    if free < needed + DISK_MARGIN:
        raise DiskFullError(
            f"the pull needs {needed / 1e9:.1f} GB but {store.root} has {free / 1e9:.1f} GB free",
            hint="free some space (`localrun prune` removes unused blobs) or move the store "
            "with LOCALRUN_MODELS",
        )


def _blob(store: Store, part: Part, what: str) -> ranges.Blob:
    folder = store.root / "partial" / check_digest(part.digest).removeprefix("sha256:")
    return ranges.Blob(part.digest, part.size, folder, what)


def _fetch_blob(
    store: Store, registry: oci.Registry, part: Part, report: Reporter, *, others: bool = True
) -> None:
    """Fetch one large layer into the store, verified, as `part.kind`.

    It may be found there already, or with `others`, in Ollama's store on this machine.
    """
    label = f"pulling {part.digest.removeprefix('sha256:')[:12]}"
    if store.has_blob(part.digest):
        report(Event(f"{label}: already present", digest=part.digest))
        return
    blob = _blob(store, part, f"{registry.target.shown}: {part.kind} layer {part.digest[:19]}")
    folder = blob.folder
    with partial.claim(folder):  # a second pull of the blob waits, then finds it
        if store.has_blob(part.digest):
            report(Event(f"{label}: already present", digest=part.digest))
            return
        if others and _from_ollama(store, part, label, report):
            return
        path, digest = ranges.download(
            blob,
            registry.opener(part.digest),
            lambda done, total: report(
                Event(label, digest=part.digest, completed=done, total=total)
            ),
            streams=LOCAL_STREAMS
            if hosts.is_loopback(registry.target.host.rsplit(":", 1)[0])
            else None,
        )
        try:
            header = scan.scan(path)
        except InvalidGGUFError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise InvalidGGUFError(
                f"{registry.target.shown}: its {part.kind} layer is not a valid GGUF file "
                f"({exc.message})"
            ) from None
        if part.kind == "projector" and scan.header_details([header])["kind"] != "projector":
            shutil.rmtree(folder, ignore_errors=True)
            raise InvalidGGUFError(f"{registry.target.shown}: its projector layer is not one")
        store.adopt(path, digest, synced=True, uploaded=True)  # kept from prune till named
        shutil.rmtree(folder, ignore_errors=True)


def _from_ollama(store: Store, part: Part, label: str, report: Reporter) -> bool:
    """Link in Ollama's own copy of the blob on this machine, as `create --link` does.

    Ollama's store has the same digests. The copy is taken once it checks out: a valid GGUF of
    that size and digest.
    """
    path = ollama_store.root() / "blobs" / f"sha256-{part.digest.removeprefix('sha256:')}"
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size != part.size:
            return False
        scan.scan(path)
        fd = os.open(path, os.O_RDONLY)
    except (OSError, LocalrunError):
        return False
    try:
        report(Event(f"{label}: from Ollama's store ({path})", digest=part.digest))
        store.hold(part.digest)
        store.add_file(fd, expected=part.digest, link_from=path)
    except CorruptBlobError:
        return False  # not what its name says: fetched instead
    finally:
        os.close(fd)
    return True


def _small(registry: oci.Registry, part: Part) -> bytes:
    """A small layer (a template, parameters, the config), read whole and checked."""
    what = f"{registry.target.shown}: its {part.kind} layer"
    with registry.stream("GET", registry.url(f"blobs/{part.digest}")) as response:
        data = bodies.read_bounded(response, part.size, what)
    if len(data) != part.size or "sha256:" + hashlib.sha256(data).hexdigest() != part.digest:
        raise DownloadError(
            f"{what} is not the {part.size} bytes of {part.digest[:19]}... the manifest names",
            hint="nothing was saved; the registry is damaged or misbehaving",
        )
    return data


def _texts(store: Store, registry: oci.Registry, plan: Plan) -> dict[Part, bytes]:
    """Each text layer's bytes (from the store where it has them)."""
    texts = {}
    for part in plan.parts:
        if part.kind not in TEXTS:
            continue
        if store.has_blob(part.digest):
            data = store.read_blob(part.digest)
            if len(data) == part.size:
                texts[part] = data
                continue
        texts[part] = _small(registry, part)
    return texts


def _base(store: Store, where: hosts.Target, plan: Plan, settings: dict[str, Any]) -> Manifest:
    """The weights' layers and their config: the base `create` adds the text layers to."""
    layers = [Layer(MEDIA_TYPES[p.kind], p.digest, p.size) for p in plan.parts if p.kind in BLOBS]
    models = [store.blob_path(layer.digest) for layer in layers if layer.kind == "model"]
    headers = [scan.scan(path) for path in models]
    config: dict[str, Any] = {
        "model_format": "gguf",
        "details": scan.header_details(headers),
        "parent": None,
        "source": {
            "registry": where.host,
            "repository": where.repository,
            "tag": where.tag,
            "manifest": plan.manifest.digest,
            "packaging": plan.packaging,
        },
    }
    config.update(gguf_texts(headers[0]))
    for layer in layers:
        if layer.kind == "projector":
            header = scan.scan(store.blob_path(layer.digest))
            config["projector"] = {
                "digest": layer.digest,
                "details": scan.header_details([header]),
            }
    if settings:
        config["source"]["config"] = settings
    digest, size = store.add_bytes(json.dumps(config, sort_keys=True).encode())
    return Manifest(Layer(MEDIA_CONFIG, digest, size), layers)


def _docker_config(registry: oci.Registry, part: Part) -> dict[str, Any]:
    """What Docker's model config says that localrun keeps (its `config` object's scalars)."""
    data = bodies.json_or_none(_small(registry, part))
    inner = data.get("config") if isinstance(data, dict) else None
    if not isinstance(inner, dict):
        return {}
    return {
        k: v
        for k, v in inner.items()
        if isinstance(k, str) and isinstance(v, str | int | float) and len(str(v)) < 200
    }


def _modelfile(
    texts: dict[Part, bytes], where: hosts.Target, settings: dict[str, Any]
) -> Modelfile:
    """The text layers as a Modelfile's lines (FROM the base, named as the registry names it)."""
    shown = Path(where.shown)
    # FROM the base, named as the registry names the model (a tag that ends in .gguf is left
    # out: create would take the name for a file).
    tag = "" if where.tag.lower().endswith(".gguf") else f":{where.tag}"
    mf = Modelfile(from_=f"{where.host}/{where.repository}{tag}")
    for part, data in texts.items():
        text = data.decode("utf-8", "replace")
        if part.kind == "template" and mf.template is None:
            mf.template = text
        elif part.kind == "system" and mf.system is None:
            mf.system = text
        elif part.kind == "params" and not mf.parameters:
            mf.parameters = ollama_store.parameters(shown, data)
        elif part.kind == "messages" and not mf.messages:
            mf.messages = ollama_store.messages(shown, data)
        elif part.kind == "license":
            mf.licenses.append(text)
    context = settings.get("context_size")
    if isinstance(context, int) and not isinstance(context, bool) and context > 0:
        mf.parameters.append(("num_ctx", context))
    return mf
