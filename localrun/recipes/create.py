"""Build a model from a Modelfile: local files and store models -> blobs + a manifest.

All hashing of user files happens here (through `Store.add_file`). Every file is validated as
GGUF before it is accepted, and opened only once: the descriptor that was validated is the one
that is copied. Nothing is copied before every file, every pairing (an adapter's architecture, a
draft model's vocabulary) and the TEMPLATE have been checked, so a refused create copies none of
its files. The manifest is written last, so an interrupted create leaves no model behind, only
temporary files that `localrun prune` (or the next command that writes) removes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from localrun.errors import (
    FileNotFoundError_,
    InvalidGGUFError,
    MissingBlobError,
    ModelfileError,
    StoreError,
)
from localrun.gguf import scan
from localrun.recipes import params
from localrun.recipes.modelfile import Modelfile
from localrun.store import names
from localrun.store.manifest import MEDIA_CONFIG, MEDIA_TYPES, Layer, Manifest
from localrun.store.models import Store
from localrun.store.names import ModelName


@dataclass(frozen=True)
class Event:
    """A step of a create, for progress display (and, later, the streamed /api/create)."""

    status: str
    digest: str | None = None
    completed: int | None = None
    total: int | None = None


Reporter = Callable[[Event], None]
Resolver = Callable[[ModelName], Manifest]


def _quiet(_: Event) -> None:
    pass


def looks_like_path(value: str, base_dir: Path) -> bool:
    """Whether a FROM value names a file rather than a model in the store."""
    if value.startswith((".", "/", "~", "\\")) or value.lower().endswith(".gguf"):
        return True
    if len(value) > 2 and value[1] == ":" and value[2] in "\\/":  # C:\ on Windows
        return True
    return os.path.lexists(resolve_path(value, base_dir))


def resolve_path(value: str, base_dir: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base_dir / path


def create(
    store: Store,
    name: ModelName,
    modelfile: Modelfile,
    base_dir: Path,
    *,
    report: Reporter = _quiet,
    resolve: Resolver | None = None,
    expected: dict[str, str] | None = None,
    link: bool = False,
) -> str:
    """Create (or replace) model `name`; returns the manifest digest.

    `resolve` finds the manifest of a FROM model name (default: the store alone); `expected`
    maps file paths to the digest their content must have (for catalog imports). With `link`
    the files are linked into the store where the file system allows, not copied
    (store.links).
    """
    builder = _Builder(store, report, expected or {}, link)
    with store.writing():
        return builder.build(name, modelfile, base_dir, resolve or store.read_manifest)


@dataclass
class _Opened:
    """A GGUF file the Modelfile names, opened and validated but not yet in the store."""

    value: str  # as written in the Modelfile
    path: Path
    fd: int
    info: scan.GGUFInfo
    kind: str  # the layer kind it becomes


class _Draft(NamedTuple):
    source: _Opened | Layer  # a file to copy, or the model layer of a stored model
    info: scan.GGUFInfo
    name: str | None  # the stored model's name; None for a file


class _Builder:
    def __init__(
        self, store: Store, report: Reporter, expected: dict[str, str], link: bool
    ) -> None:
        self.store = store
        self.report = report
        self.expected = expected
        self.link = link
        self.opened: list[_Opened] = []

    def build(self, name: ModelName, mf: Modelfile, base_dir: Path, resolve: Resolver) -> str:
        # The files stay open from their validation to their copy (see the module docstring).
        try:
            return self._build(name, mf, base_dir, resolve)
        finally:
            for item in self.opened:
                os.close(item.fd)

    def _build(self, name: ModelName, mf: Modelfile, base_dir: Path, resolve: Resolver) -> str:
        # Every file opened and every check made first: a refused create copies nothing.
        model, layers, config = self._base(mf, base_dir, resolve)
        architecture = (config.get("details") or {}).get("architecture")
        adapter_files = [self._open(value, base_dir, "adapter") for value in mf.adapters]
        _check_adapters(adapter_files, architecture)
        draft = None
        if mf.draft is not None:
            draft = self._draft(mf.draft, base_dir, resolve)
            target = model.info if model else self._stored_info(layers, mf.from_)
            _check_vocabulary(target, draft.info, mf.from_, mf.draft)
        projector = None
        if mf.projector is not None:
            projector = self._open(mf.projector, base_dir, "projector")
            target = model.info if model else self._stored_info(layers, mf.from_)
            _check_projector(target, projector, mf.from_)
        if mf.template is not None:
            _check_template(mf.template, mf.lines.get("TEMPLATE", 1))

        if model is not None:
            layers = [self._store_file(model)]
        layers += self._store_adapters(adapter_files, config)
        if draft is not None:
            layers = [x for x in layers if x.kind != "draft"] + [self._store_draft(draft, config)]
        if projector is not None:
            layer = self._store_file(projector)
            config["projector"] = {"digest": layer.digest, "details": projector.info.details()}
            layers = [x for x in layers if x.kind != "projector"] + [layer]
        layers = self._text_layers(mf, layers)
        layers.sort(key=lambda layer: _ORDER.get(layer.kind, len(_ORDER)))
        config_digest, config_size = self.store.add_bytes(_json_bytes(config))
        manifest = Manifest(Layer(MEDIA_CONFIG, config_digest, config_size), layers)
        self.report(Event("writing manifest"))
        digest = self.store.write_manifest(name, manifest)
        self.report(Event("success", digest=digest))
        return digest

    def _base(
        self, mf: Modelfile, base_dir: Path, resolve: Resolver
    ) -> tuple[_Opened | None, list[Layer], dict[str, Any]]:
        """What FROM names: a GGUF file (opened, not yet stored) with a new config, or a stored
        model's layers and config."""
        if looks_like_path(mf.from_, base_dir):
            model = self._open(mf.from_, base_dir, "model")
            info = model.info
            config: dict[str, Any] = {"model_format": "gguf", "details": info.details()}
            if info.license:
                config["gguf_license"] = info.license
            if info.chat_template:
                config["gguf_chat_template"] = info.chat_template
            config["parent"] = None
            return model, [], config
        base_name = names.parse(mf.from_)
        self.report(Event(f"using model {base_name}"))
        base = resolve(base_name)
        config = json.loads(self.store.read_blob(base.config.digest))
        config["parent"] = str(base_name)
        return None, list(base.layers), config

    def _store_adapters(self, adapter_files: list[_Opened], config: dict[str, Any]) -> list[Layer]:
        """Copy the adapters in; the config lists them (after the inherited ones)."""
        layers = []
        adapters = list(config.get("adapters", []))
        for item in adapter_files:
            layer = self._store_file(item)
            layers.append(layer)
            adapters.append({"digest": layer.digest, "lora_alpha": item.info.lora_alpha})
        if adapters:
            config["adapters"] = adapters
        return layers

    def _store_draft(self, draft: _Draft, config: dict[str, Any]) -> Layer:
        source = draft.source
        layer = self._store_file(source) if isinstance(source, _Opened) else source
        # What `show` says of the draft, without reading its file.
        config["draft"] = {
            "digest": layer.digest,
            "model": draft.name,
            "details": draft.info.details(),
        }
        return layer

    def _text_layers(self, mf: Modelfile, layers: list[Layer]) -> list[Layer]:
        """`layers` with the Modelfile's parameters, template, system prompt, messages and
        licenses stored and put in place of the inherited ones."""
        if mf.parameters:
            inherited = self._inherited_json(layers, "params", {})
            merged = params.merge(params.validate(inherited), mf.parameters)
            layers = self._replace(layers, "params", _json_bytes(merged))
        if mf.template is not None:
            layers = self._replace(layers, "template", mf.template.encode())
        if mf.system is not None:
            layers = self._replace(layers, "system", mf.system.encode())
        if mf.messages:
            messages = [{"role": m.role, "content": m.content} for m in mf.messages]
            layers = self._replace(layers, "messages", _json_bytes(messages))
        for text in mf.licenses:
            digest, size = self.store.add_bytes(text.encode())
            layer = Layer(MEDIA_TYPES["license"], digest, size)
            if layer not in layers:
                layers.append(layer)
        return layers

    def _open(self, value: str, base_dir: Path, kind: str) -> _Opened:
        """Open and validate a file the Modelfile names; it is closed when the build ends."""
        path = resolve_path(value, base_dir)
        keyword = {"model": "FROM", "adapter": "ADAPTER", "draft": "DRAFT"}.get(kind, "PROJECTOR")
        if not os.path.lexists(path):
            raise FileNotFoundError_(
                f"{keyword} {value}: no such file ({path})",
                hint="paths in a Modelfile are relative to the Modelfile's folder",
            )
        self.report(Event(f"reading {kind} metadata"))
        fd = scan.open_regular(path)
        try:
            info = scan.inspect_fd(fd, str(value))
            _check_kind(info, value, kind)
        except BaseException:
            os.close(fd)
            raise
        item = _Opened(value, path, fd, info, kind)
        self.opened.append(item)
        return item

    def _store_file(self, item: _Opened) -> Layer:
        """Copy an opened file into the store (from the descriptor that was validated)."""

        def progress(phase: str, done: int, total: int) -> None:
            self.report(Event(f"{phase} {item.kind} data", completed=done, total=total))

        digest, size, _ = self.store.add_file(
            item.fd,
            expected=self.expected.get(str(item.path)),
            progress=progress,
            on_status=lambda status, digest: self.report(Event(status, digest=digest)),
            link_from=item.path if self.link else None,
        )
        return Layer(MEDIA_TYPES[item.kind], digest, size)

    def _draft(self, value: str, base_dir: Path, resolve: Resolver) -> _Draft:
        """The draft model DRAFT names: a file still to copy, or a stored model's model layer
        (shared, not copied)."""
        if looks_like_path(value, base_dir):
            item = self._open(value, base_dir, "draft")
            return _Draft(item, item.info, None)
        draft_name = names.parse(value)
        self.report(Event(f"using draft model {draft_name}"))
        parts = resolve(draft_name).of_kind("model")
        if len(parts) > 1:
            raise InvalidGGUFError(
                f"the draft model {draft_name} is split into {len(parts)} files; a draft model "
                "must be one GGUF file",
                hint="draft with a smaller model of the same family, in one file",
            )
        info = self._stored_info(parts, str(draft_name))
        _check_kind(info, value, "draft")
        layer = Layer(MEDIA_TYPES["draft"], parts[0].digest, parts[0].size)
        return _Draft(layer, info, str(draft_name))

    def _stored_info(self, layers: list[Layer], shown: str) -> scan.GGUFInfo:
        """The GGUF summary of a stored model's (first) model file, read from its header."""
        found = [layer for layer in layers if layer.kind == "model"]
        if not found:
            raise StoreError(
                f"the manifest of {shown} has no model layer",
                hint=f"remove it with `localrun rm {shown}` and create it again",
            )
        digest = found[0].digest
        if not self.store.has_blob(digest):
            raise MissingBlobError(
                f"blob {digest} of {shown} is missing from the store",
                hint="run `localrun verify` to see which models are affected",
            )
        fd = scan.open_regular(self.store.blob_path(digest))
        try:
            return scan.inspect_fd(fd, shown)
        finally:
            os.close(fd)

    def _replace(self, layers: list[Layer], kind: str, data: bytes) -> list[Layer]:
        digest, size = self.store.add_bytes(data)
        self.report(Event(f"writing {kind} layer", digest=digest))
        return [layer for layer in layers if layer.kind != kind] + [
            Layer(MEDIA_TYPES[kind], digest, size)
        ]

    def _inherited_json(self, layers: list[Layer], kind: str, default: Any) -> Any:
        found = [layer for layer in layers if layer.kind == kind]
        if not found:
            return default
        return json.loads(self.store.read_blob(found[-1].digest))


_ORDER = {kind: index for index, kind in enumerate(MEDIA_TYPES)}


def _check_adapters(adapter_files: list[_Opened], architecture: str | None) -> None:
    """Every adapter made for the base model's architecture."""
    for item in adapter_files:
        if architecture and item.info.architecture and item.info.architecture != architecture:
            raise InvalidGGUFError(
                f"adapter {item.value} is for {item.info.architecture} models, but the base "
                f"model is {architecture}",
                hint="use an adapter trained for this base model",
            )


def _check_projector(model: scan.GGUFInfo, projector: _Opened, shown: str) -> None:
    """The projector hands the model embeddings of the model's width, or it is another's."""
    width, made = model.embedding_length, projector.info.projection_dim
    if width is not None and made is not None and width != made:
        raise InvalidGGUFError(
            f"the projector {projector.value} makes embeddings {made} wide, but {shown} takes "
            f"{width}: it belongs to another model",
            hint="use the mmproj file published with this model",
        )


def _check_kind(info: scan.GGUFInfo, value: str, kind: str) -> None:
    """Refuse a GGUF of the wrong kind for its instruction (FROM, ADAPTER, DRAFT or
    PROJECTOR)."""
    if kind == "projector" and info.kind != "projector":
        raise InvalidGGUFError(
            f"{value} is not a projector (its general.architecture is not clip)",
            hint="PROJECTOR takes the model's mmproj GGUF, published beside its model file",
        )
    if kind != "projector" and info.kind == "projector":
        keyword = {"model": "FROM", "adapter": "ADAPTER", "draft": "DRAFT"}[kind]
        raise InvalidGGUFError(
            f"{value} is a projector (mmproj), not what {keyword} takes",
            hint=f"put it on a PROJECTOR line: `PROJECTOR {value}`",
        )
    if kind == "model" and info.kind == "adapter":
        raise InvalidGGUFError(
            f"{value} is a LoRA adapter, not a model",
            hint="name a base model in FROM and the adapter in ADAPTER",
        )
    if kind == "adapter" and (info.kind != "adapter" or info.adapter_type not in (None, "lora")):
        raise InvalidGGUFError(
            f"{value} is not a LoRA adapter (its general.type is not 'adapter')",
            hint="ADAPTER takes a LoRA adapter in GGUF form, as llama.cpp's "
            "convert_lora_to_gguf.py writes it",
        )
    if kind == "draft" and info.kind == "adapter":
        raise InvalidGGUFError(
            f"the draft model {value} is a LoRA adapter, not a model",
            hint="DRAFT takes a smaller model with the same vocabulary (adapters go in ADAPTER)",
        )
    split = info.metadata.get("split.count")
    if kind == "draft" and isinstance(split, int) and split > 1:
        raise InvalidGGUFError(
            f"the draft model {value} is part 1 of {split} files; a draft model must be one "
            "GGUF file",
            hint="draft with a smaller model of the same family, in one file",
        )


# llama.cpp's own test of a draft model (common_speculative_are_compatible in
# common/speculative.cpp): the same tokenizer, BOS and EOS, at most 128 tokens more or fewer,
# and the same token texts from id 5 on over the range both have.
_VOCAB_SIZE_SLACK = 128
_VOCAB_CHECK_FROM = 5


def _check_vocabulary(
    target: scan.GGUFInfo, draft: scan.GGUFInfo, target_name: str, draft_name: str
) -> None:
    """Refuse a draft model whose tokens do not mean what the model's tokens mean."""
    difference = _vocab_difference(target, draft, target_name)
    if difference:
        raise InvalidGGUFError(
            f"the draft model {draft_name} {difference}",
            hint="a draft model must share its model's tokenizer: use a smaller model of the "
            "same family and release",
        )


def _vocab_difference(target: scan.GGUFInfo, draft: scan.GGUFInfo, target_name: str) -> str:
    """What differs between the two vocabularies, in words; empty when they are compatible."""
    key = "tokenizer.ggml.model"
    ours, theirs = draft.metadata.get(key), target.metadata.get(key)
    n_draft, n_target = len(draft.tokens), len(target.tokens)
    first, common = _VOCAB_CHECK_FROM, min(n_draft, n_target)
    detail = ""
    if ours != theirs:
        detail = f"; its tokenizer is {ours!r}, not {theirs!r}"
    elif draft.tokens[first:common] != target.tokens[first:common]:
        i = next(i for i in range(first, common) if draft.tokens[i] != target.tokens[i])
        detail = f"; token {i} is {_token(draft.tokens[i])}, not {_token(target.tokens[i])}"
    if detail or abs(n_draft - n_target) > _VOCAB_SIZE_SLACK:
        return (
            f"has {n_draft} tokens and a different vocabulary than {target_name} "
            f"({n_target} tokens{detail})"
        )
    for what in ("bos", "eos"):
        ours, theirs = (
            info.metadata.get(f"tokenizer.ggml.{what}_token_id") for info in (draft, target)
        )
        if ours is not None and theirs is not None and ours != theirs:
            return f"has {what.upper()} token id {ours}, {target_name} has {theirs}"
        ours, theirs = (
            info.metadata.get(f"tokenizer.ggml.add_{what}_token") for info in (draft, target)
        )
        if isinstance(ours, bool) and isinstance(theirs, bool) and ours != theirs:
            does, other = ("adds", "does not") if ours else ("does not add", "does")
            return f"{does} a {what.upper()} token to a prompt and {target_name} {other}"
    return ""


def _token(raw: bytes) -> str:
    text = repr(raw.decode("utf-8", "replace"))
    return text if len(text) <= 40 else text[:37] + "..."


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False).encode()


def _check_template(template: str, line: int) -> None:
    """Refuse a TEMPLATE that cannot be rendered (it is rendered sandboxed at run time)."""
    from localrun.errors import TemplateError
    from localrun.formats import template as template_mod

    try:
        template_mod.check(template)
    except TemplateError as exc:
        raise ModelfileError(
            f"TEMPLATE: {exc.message}",
            line=line,
            hint="a TEMPLATE is a Jinja chat template (messages, add_generation_prompt, "
            "bos_token, eos_token, tools) or an Ollama Go template (.System, .Prompt, "
            ".Messages, .Tools ...)",
        ) from None
