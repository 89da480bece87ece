"""A stored model read back from its manifest: what `show` prints and what the engine loads."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localrun.errors import StoreError
from localrun.recipes.modelfile import Message, Modelfile
from localrun.store import links as links_mod
from localrun.store.manifest import Manifest
from localrun.store.models import Store
from localrun.store.names import ModelName


@dataclass
class Model:
    """Everything a manifest says about a model, with its text layers read and verified."""

    name: ModelName
    digest: str
    manifest: Manifest
    config: dict[str, Any]
    model_path: Path  # the first (or only) part
    adapter_paths: list[Path] = field(default_factory=list)
    model_parts: list[Path] = field(default_factory=list)  # every part of a split model, in order
    draft_path: Path | None = None  # the draft model for speculative decoding (Modelfile DRAFT)
    projector_path: Path | None = None  # images and audio in (Modelfile PROJECTOR)
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    template: str | None = None
    messages: list[Message] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)
    store_root: Path | None = None  # the store it was read from

    @property
    def details(self) -> dict[str, Any]:
        return dict(self.config.get("details") or {})

    @property
    def draft(self) -> dict[str, Any] | None:
        """The draft model as the config records it: digest, model (the name DRAFT gave, or
        None for a file) and details (its GGUF summary); None when there is no draft."""
        layers = self.manifest.of_kind("draft")
        if not layers:
            return None
        digest = layers[-1].digest
        recorded = self.config.get("draft")
        if not isinstance(recorded, dict) or recorded.get("digest") != digest:
            recorded = {}  # a manifest made elsewhere: the layer alone
        details = recorded.get("details")
        return {
            "digest": digest,
            "model": recorded.get("model"),
            "details": dict(details) if isinstance(details, dict) else {},
        }

    def to_modelfile(self, *, originals: bool = False) -> Modelfile:
        """A Modelfile that recreates this model from the blobs in the store; with
        `originals`, from the user's files it was linked to in place (`create --link`) while
        they exist (`localrun show --modelfile`: the command a changed original is taken in
        again with; the server never names a user's file)."""

        def source(blob: Path) -> str:
            found = self._original(blob) if originals else None
            return found or str(blob)

        # A split model cannot be named by one file: it is recreated FROM its store name.
        mf = Modelfile(
            from_=source(self.model_path) if len(self.model_parts) <= 1 else str(self.name)
        )
        mf.adapters = [source(p) for p in self.adapter_paths]
        mf.draft = source(self.draft_path) if self.draft_path is not None else None
        mf.projector = source(self.projector_path) if self.projector_path else None
        for name, value in self.parameters.items():
            values = value if isinstance(value, list) else [value]
            mf.parameters += [(name, v) for v in values]
        mf.system = self.system
        mf.template = self.template
        mf.messages = list(self.messages)
        mf.licenses = list(self.licenses)
        return mf

    def _original(self, blob: Path) -> str | None:
        """The user's file a blob is a hard link of, while a file is there (a new version
        renamed over it included: the model is that file of theirs), else None."""
        links = self.store_root / "links" if self.store_root is not None else None
        linked = links_mod.original(links, blob.name) if links is not None else None
        return linked if linked is not None and Path(linked).is_file() else None


def load(store: Store, name: ModelName, manifest: Manifest | None = None) -> Model:
    """Read a model's manifest and small layers; raises ModelNotFoundError or a StoreError."""
    if manifest is None:
        manifest = store.read_manifest(name)
    raw = manifest.to_bytes()
    model_layers = manifest.of_kind("model")
    if not model_layers:
        raise StoreError(
            f"the manifest of {name} has no model layer",
            hint=f"remove it with `localrun rm {name}` and create it again",
        )

    def text(kind: str) -> str | None:
        layers = manifest.of_kind(kind)
        return store.read_blob(layers[-1].digest).decode("utf-8") if layers else None

    def as_json(kind: str, default: Any) -> Any:
        found = text(kind)
        return default if found is None else json.loads(found)

    try:
        config = json.loads(store.read_blob(manifest.config.digest))
        messages = [Message(m["role"], m["content"]) for m in as_json("messages", [])]
        parameters = as_json("params", {})
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"a layer of {name} is malformed ({exc})") from None
    drafts = manifest.of_kind("draft")
    projectors = manifest.of_kind("projector")
    return Model(
        name=name,
        digest="sha256:" + hashlib.sha256(raw).hexdigest(),
        manifest=manifest,
        config=config,
        model_path=store.blob_path(model_layers[0].digest),
        model_parts=[store.blob_path(layer.digest) for layer in model_layers],
        adapter_paths=[store.blob_path(layer.digest) for layer in manifest.of_kind("adapter")],
        draft_path=store.blob_path(drafts[-1].digest) if drafts else None,
        projector_path=store.blob_path(projectors[-1].digest) if projectors else None,
        parameters=parameters,
        system=text("system"),
        template=text("template"),
        messages=messages,
        licenses=[store.read_blob(x.digest).decode("utf-8") for x in manifest.of_kind("license")],
        store_root=store.root,
    )
