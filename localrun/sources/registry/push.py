"""`localrun push NAME`: a model of the store to its registry, in Ollama's packaging.

What `ollama push` sends: a Docker schema 2 manifest whose config is Ollama's
(`application/vnd.docker.container.image.v1+json`: model_format, model_family, model_type,
file_type, ...) and whose layers are `application/vnd.ollama.image.<kind>`: model, projector,
adapter, template, system, params, messages, license. So `ollama pull` and `localrun pull`
both take it back. A layer the registry has already (HEAD) is not sent again; each blob goes
in one upload (POST for a location, PUT with its digest, which the registry checks); the
manifest goes last, so a pull never sees half a push.

A draft model (localrun's own DRAFT) has no place in Ollama's format and stays behind, said so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from localrun.errors import LocalrunError, MissingBlobError
from localrun.recipes.create import Event, Reporter
from localrun.sources import hosts
from localrun.sources.registry import oci
from localrun.store.local import Store
from localrun.store.manifest import Layer
from localrun.store.names import ModelName

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
OLLAMA = "application/vnd.ollama.image."
PUSHED = ("model", "projector", "adapter", "template", "system", "params", "messages", "license")
READ = 4 << 20


def push(
    store: Store,
    name: ModelName,
    report: Reporter = lambda _: None,
    *,
    reach: hosts.Reach = hosts.OWNER,
) -> str:
    """Push `name` to the registry its name says, and return the pushed manifest's digest.

    It pushes only if `reach`, who asked, may push there.
    """
    where, trusted = reach.where(name, push=True)  # refused before anything is read or sent
    manifest = store.read_manifest(name)
    missing = sorted(d for d in manifest.digests() if not store.has_blob(d))
    if missing:  # said before anything is sent
        raise MissingBlobError(
            f"{name} lacks its blob {missing[0]}; nothing was pushed",
            hint="`localrun verify` names what is damaged; pull or create the model again",
        )
    config = json.loads(store.read_blob(manifest.config.digest))
    layers = [layer for layer in manifest.layers if layer.kind in PUSHED]
    left = sorted({layer.kind for layer in manifest.layers} - set(PUSHED))
    if left:
        report(Event(f"not pushed: the {', '.join(left)} layer (Ollama's format has no place)"))
    ollama_config = _ollama_config(config, layers)
    config_digest, config_size = store.add_bytes(ollama_config)
    with oci.Registry(where, push=True, trusted=trusted) as registry:
        report(Event(f"pushing to {where.shown}"))
        blobs = [Layer(CONFIG, config_digest, config_size)] + [
            Layer(OLLAMA + layer.kind, layer.digest, layer.size) for layer in layers
        ]
        for blob in blobs:
            _push_blob(store, registry, blob, report)
        body = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": blobs[0].to_json(),
            "layers": [blob.to_json() for blob in blobs[1:]],
        }
        raw = json.dumps(body, indent=2).encode()
        report(Event("pushing manifest"))
        registry.put_manifest(raw, MANIFEST)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    report(Event("success", digest=digest))
    return digest


def _push_blob(store: Store, registry: oci.Registry, blob: Layer, report: Reporter) -> None:
    label = f"pushing {blob.digest.removeprefix('sha256:')[:12]}"
    if registry.has_blob(blob.digest):
        report(Event(f"{label}: already there", digest=blob.digest))
        return
    path = store.blob_path(blob.digest)

    def chunks() -> Iterator[bytes]:
        done = 0
        with path.open("rb") as handle:
            while chunk := handle.read(READ):
                done += len(chunk)
                report(Event(label, digest=blob.digest, completed=done, total=blob.size))
                yield chunk
        if done != blob.size:
            raise LocalrunError(f"{path} changed while it was pushed")

    registry.upload_blob(blob.digest, blob.size, chunks)


def _ollama_config(config: dict[str, Any], layers: list[Layer]) -> bytes:
    """Ollama's config for a model (what `ollama show` reads back from it)."""
    from localrun.gguf.scan import format_count

    details = config.get("details") or {}
    family = details.get("architecture") or ""
    count = details.get("parameter_count")
    body = {
        "model_format": "gguf",
        "model_family": family,
        "model_families": [family] if family else [],
        "model_type": format_count(count) if isinstance(count, int) and count else "",
        "file_type": details.get("quantization") or "",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
    }
    return json.dumps(body, sort_keys=True).encode()
