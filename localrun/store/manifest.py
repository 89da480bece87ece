"""The manifest format: digests, media-typed layers and the manifest that lists them.

A model in the store is a manifest (JSON, schemaVersion 2, as Ollama's and OCI's) naming a config
blob and its layers by sha256 digest, each with a media type that says what the layer holds:

    {"schemaVersion": 2, "mediaType": "application/vnd.localrun.store.manifest.v1+json",
     "config": {"mediaType": "application/vnd.localrun.settings.config.v1+json",
                "digest": "sha256:<64 hex>", "size": N},
     "layers": [{"mediaType": "application/vnd.localrun.model", ...}, ...]}

A digest is validated (`check_digest`) as it is read, before anything can build a path from it.
Pure data: no I/O; localrun.store.local keeps the blobs and manifests on disk.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import InvalidDigestError

# \Z, not $: "$" also matches before a trailing newline, which would then end up in a path.
DIGEST_RE = re.compile(r"^sha256[:-][0-9a-f]{64}\Z")

MEDIA_PREFIX = "application/vnd.localrun."
MEDIA_MANIFEST = MEDIA_PREFIX + "manifest.v1+json"
MEDIA_CONFIG = MEDIA_PREFIX + "config.v1+json"
LAYER_KINDS = (
    "model",
    "adapter",
    "draft",
    "projector",
    "params",
    "template",
    "system",
    "messages",
    "license",
)
MEDIA_TYPES = {kind: f"{MEDIA_PREFIX}{kind}" for kind in LAYER_KINDS}
_KIND_OF_MEDIA = {media: kind for kind, media in MEDIA_TYPES.items()}


def check_digest(digest: str) -> str:
    """Validate a digest and return it in the canonical `sha256:<hex>` form."""
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise InvalidDigestError(
            f"invalid digest {str(digest)[:80]!r}: expected sha256:<64 lowercase hex digits>"
        )
    return "sha256:" + digest[7:]


@dataclass(frozen=True)
class Layer:
    """One blob of a model, with its media type."""

    media_type: str
    digest: str
    size: int

    @property
    def kind(self) -> str:
        return _KIND_OF_MEDIA.get(self.media_type, "unknown")

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}

    @staticmethod
    def from_json(data: Any) -> Layer:
        if not isinstance(data, dict):
            raise ValueError("a layer must be an object")
        media, digest, size = data.get("mediaType"), data.get("digest"), data.get("size")
        if not isinstance(media, str) or not isinstance(size, int) or size < 0:
            raise ValueError("a layer needs mediaType and a size")
        return Layer(media, check_digest(str(digest)), size)


@dataclass
class Manifest:
    """A model: its config blob and its layers, in order."""

    config: Layer
    layers: list[Layer] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        body = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": self.config.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
        }
        return json.dumps(body, indent=2).encode() + b"\n"

    @staticmethod
    def from_bytes(raw: bytes) -> Manifest:
        try:
            data = json.loads(raw)
        except RecursionError:  # not a ValueError: callers would not expect it
            raise ValueError("the JSON is nested too deeply") from None
        if not isinstance(data, dict) or data.get("schemaVersion") != 2:
            raise ValueError("not a schemaVersion 2 manifest")
        layers = data.get("layers")
        if not isinstance(layers, list):
            raise ValueError("a manifest needs a list of layers")
        return Manifest(Layer.from_json(data.get("config")), [Layer.from_json(x) for x in layers])

    def digests(self) -> set[str]:
        return {self.config.digest, *(layer.digest for layer in self.layers)}

    @property
    def size(self) -> int:
        return self.config.size + sum(layer.size for layer in self.layers)

    def of_kind(self, kind: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.kind == kind]
