"""A stored model read back from its manifest: what `show` prints and what the engine loads.

A name is found once, where it enters (a route's scheduler admission, `localrun run`). `load` reads
the manifest it names into a `Model`: the manifest's digest, its blobs' paths, its PARAMETERs,
template and system. `Model.load_spec` adds a load's options and the context it is loaded with
(request.context, the one rule for it) into a `LoadSpec`. Every layer below is handed that, over the
runner's channel too (`to_wire`, `from_wire`). So a `create` that points the name at other blobs
meanwhile changes nothing that was admitted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localrun.errors import BadRequestError, LocalrunError, StoreError
from localrun.recipes import params as params_mod
from localrun.recipes.modelfile import Message, Modelfile
from localrun.request.context import context_for, positive
from localrun.store import links as links_mod
from localrun.store import names
from localrun.store.local import Store
from localrun.store.manifest import Manifest
from localrun.store.names import ModelName


@dataclass(frozen=True)
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
    def trained(self) -> int | None:
        """The context the model was trained on, as its header says (None: not known)."""
        return positive(self.details.get("context_length"))

    def context(self, asked: Any = None) -> int:
        """The context a load or a request with num_ctx `asked` gets on this model.

        It is `context_for`, with the model's PARAMETER num_ctx.
        """
        return context_for(asked, self.parameters.get("num_ctx"), self.trained)

    def load_spec(self, options: dict[str, Any], context: int | None = None) -> LoadSpec:
        """This model for a load with `options` (PARAMETERs, checked here) over its own.

        `context` is the context decided for it already (the scheduler's, rounded up); None decides
        it now.
        """
        checked = params_mod.validate(options)
        chosen = self.context(checked.get("num_ctx")) if context is None else context
        return LoadSpec(self, {**self.parameters, **checked}, chosen)

    @property
    def draft(self) -> dict[str, Any] | None:
        """The draft model as the config records it, or None when there is no draft.

        It holds digest, model (the name DRAFT gave, or None for a file) and details (its GGUF
        summary).
        """
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
        """A Modelfile that recreates this model from the blobs in the store.

        With `originals`, it names the user's files the blobs were linked to in place
        (`create --link`), while they exist. That is `localrun show --modelfile`: the command a
        changed original is taken in again with. The server never names a user's file.
        """

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
        """The user's file a blob is a hard link of, while a file is there, else None.

        A new version renamed over it counts: the model is that file of theirs.
        """
        linked = links_mod.original_in(self.store_root, blob.name)
        return linked if linked is not None and Path(linked).is_file() else None

    def to_wire(self) -> dict[str, Any]:
        """This model as JSON: the runner rebuilds it with `from_wire`, reading no manifest."""
        return {
            "name": str(self.name),
            "digest": self.digest,
            "manifest": json.loads(self.manifest.to_bytes()),
            "config": self.config,
            "files": [str(p) for p in self.model_parts or [self.model_path]],
            "adapters": [str(p) for p in self.adapter_paths],
            "draft": str(self.draft_path) if self.draft_path is not None else None,
            "projector": str(self.projector_path) if self.projector_path is not None else None,
            "parameters": self.parameters,
            "system": self.system,
            "template": self.template,
            "messages": [{"role": m.role, "content": m.content} for m in self.messages],
            "licenses": self.licenses,
            "store": str(self.store_root) if self.store_root is not None else None,
        }

    @staticmethod
    def from_wire(data: Any) -> Model:
        """The model `to_wire` wrote.

        Raises BadRequestError when it is malformed, or when its manifest is not the one its digest
        names.
        """
        try:
            return _from_wire(data)
        except (KeyError, TypeError, ValueError, LocalrunError) as exc:
            reason = exc.message if isinstance(exc, LocalrunError) else repr(exc)
            raise BadRequestError(f"the load request's model is malformed: {reason}") from None


@dataclass(frozen=True)
class LoadSpec:
    """A model resolved for one load, decided once.

    It holds the manifest it was admitted by (its digest and blobs), the parameters the load goes
    ahead with, and the context it is loaded with.
    """

    model: Model
    parameters: dict[str, Any]  # its PARAMETERs, the caller's options over them
    context: int  # num_ctx the runner loads (context_for; the scheduler's rounded up)

    @property
    def digest(self) -> str:
        return self.model.digest

    def to_wire(self) -> dict[str, Any]:
        """The fields of a runner's load message that say what it loads."""
        return {
            "model": self.model.to_wire(),
            "parameters": self.parameters,
            "num_ctx": self.context,
        }

    @staticmethod
    def from_wire(message: dict[str, Any]) -> LoadSpec:
        """What a load message's `to_wire` fields say; BadRequestError when malformed."""
        model = Model.from_wire(message.get("model"))
        parameters, asked = message.get("parameters"), message.get("num_ctx")
        if not isinstance(parameters, dict):
            raise BadRequestError("the load request's parameters must be an object")
        context = positive(asked)
        if context is None:
            raise BadRequestError(f"num_ctx must be a whole number of at least 1, not {asked!r}")
        return LoadSpec(model, parameters, context)


def _from_wire(data: dict[str, Any]) -> Model:
    manifest = Manifest.from_bytes(json.dumps(data["manifest"]).encode())
    digest = "sha256:" + hashlib.sha256(manifest.to_bytes()).hexdigest()
    if data["digest"] != digest:
        raise ValueError(f"its manifest is {digest}, not {data['digest']}")
    files = [Path(_text(p)) for p in data["files"]]
    if not files:
        raise ValueError("no model file")
    draft, projector, store = data.get("draft"), data.get("projector"), data.get("store")
    return Model(
        name=names.parse(_text(data["name"])),
        digest=digest,
        manifest=manifest,
        config=dict(data["config"]),
        model_path=files[0],
        model_parts=files,
        adapter_paths=[Path(_text(p)) for p in data["adapters"]],
        draft_path=Path(_text(draft)) if draft is not None else None,
        projector_path=Path(_text(projector)) if projector is not None else None,
        parameters=dict(data["parameters"]),
        system=_text(data["system"]) if data["system"] is not None else None,
        template=_text(data["template"]) if data["template"] is not None else None,
        messages=[Message(_text(m["role"]), _text(m["content"])) for m in data["messages"]],
        licenses=[_text(t) for t in data["licenses"]],
        store_root=Path(_text(store)) if store is not None else None,
    )


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, not {type(value).__name__}")
    return value


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
