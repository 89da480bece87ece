"""Build a model from a Modelfile: local files and store models -> blobs + a manifest.

All hashing of user files happens here (through `Store.add_file`). Every file is validated as
GGUF before it is accepted, and opened only once: the descriptor that was validated is the one
that is copied. Nothing is copied before every file, every pairing (an adapter's architecture, a
draft model's vocabulary) and the TEMPLATE have been checked, so a refused create copies none of
its files. The manifest is written last, so an interrupted create leaves no model behind, only
temporary files that `localrun prune` (or the next command that writes) removes.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from localrun.errors import (
    CheckpointError,
    DiskFullError,
    FileNotFoundError_,
    InvalidGGUFError,
    MissingBlobError,
    StoreError,
)
from localrun.gguf import scan
from localrun.host import files
from localrun.recipes import checks, params
from localrun.recipes.modelfile import Modelfile
from localrun.store import names
from localrun.store.blobs import hash_fd, temp_path, unlink_quietly
from localrun.store.local import Store
from localrun.store.manifest import MEDIA_CONFIG, MEDIA_TYPES, Layer, Manifest
from localrun.store.names import ModelName


@dataclass(frozen=True)
class Event:
    """A step of a create, for progress display (and, later, the streamed /api/create)."""

    status: str
    digest: str | None = None
    completed: int | None = None
    total: int | None = None


Reporter = Callable[[Event], None]
BaseFinder = Callable[[ModelName], Manifest]


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
    find_base: BaseFinder | None = None,
    expected: dict[str, str] | None = None,
    link: bool = False,
    quantize: Quantize | None = None,
) -> str:
    """Create (or replace) model `name`; returns the manifest digest.

    `find_base` finds the manifest of a FROM model name (default: the store alone); `expected`
    maps file paths to the digest their content must have (for catalog imports). With `link`
    the files are linked into the store where the file system allows, not copied
    (store.links). With `quantize`, FROM's model (an F32, F16 or BF16 one) is stored quantized.
    """
    builder = _Builder(store, report, expected or {}, link, quantize)
    with store.writing():
        return builder.build(name, modelfile, base_dir, find_base or store.read_manifest)


@dataclass(frozen=True)
class Quantize:
    """What `create --quantize` asks for, and llama.cpp's quantizer to do it.

    `kind` is the type as engine.library.quantize spells it. `bits_per_weight` is the bits a
    weight takes in it, for the progress estimate. `run(source, target, type, progress)` is the
    engine's quantizer: it writes `target`, telling bytes written.
    """

    kind: str
    bits_per_weight: float
    run: Callable[[Path, Path, str, Callable[[int], None]], None]


# The types a model may be quantized from: full or half precision.
QUANTIZABLE = ("F32", "F16", "BF16")


@dataclass
class _Opened:
    """A GGUF file the Modelfile names, opened and validated but not yet in the store."""

    value: str  # as written in the Modelfile
    path: Path
    fd: int
    info: scan.GGUFInfo
    kind: str  # the layer kind it becomes
    own: bool = False  # a file this create wrote in the store (quantized): moved in, not copied


class _Draft(NamedTuple):
    source: _Opened | Layer  # a file to copy, or the model layer of a stored model
    info: scan.GGUFInfo
    name: str | None  # the stored model's name; None for a file


class _Builder:
    def __init__(
        self,
        store: Store,
        report: Reporter,
        expected: dict[str, str],
        link: bool,
        quantize: Quantize | None = None,
    ) -> None:
        self.store = store
        self.report = report
        self.expected = expected
        self.link = link
        self.quantize = quantize
        self.opened: list[_Opened] = []
        self.temporary: list[Path] = []  # files this create wrote, gone when it ends
        self.base_file: Path | None = None  # FROM's model file, which adapters are made for

    def build(self, name: ModelName, mf: Modelfile, base_dir: Path, find_base: BaseFinder) -> str:
        # The files stay open from their validation to their copy (see the module docstring).
        try:
            return self._build(name, mf, base_dir, find_base)
        finally:
            for item in self.opened:
                os.close(item.fd)
            for path in self.temporary:
                unlink_quietly(path)

    def _build(self, name: ModelName, mf: Modelfile, base_dir: Path, find_base: BaseFinder) -> str:
        # Every file opened and every check made first: a refused create copies nothing.
        model, layers, config = self._base(mf, base_dir, find_base)
        if self.quantize is not None:
            model = self._quantized(model or self._stored_model(layers, mf.from_), self.quantize)
            config["details"] = model.info.details()
        architecture = (config.get("details") or {}).get("architecture")
        self.base_file = model.path if model else self._stored_path(layers)
        adapter_files = [self._open(value, base_dir, "adapter") for value in mf.adapters]
        checks.adapters([(a.value, a.info) for a in adapter_files], architecture)
        draft = None
        if mf.draft is not None:
            draft = self._draft(mf.draft, base_dir, find_base)
            target = model.info if model else self._stored_info(layers, mf.from_)
            checks.vocabulary(target, draft.info, mf.from_, mf.draft)
        projector = None
        if mf.projector is not None:
            projector = self._open(mf.projector, base_dir, "projector")
            target = model.info if model else self._stored_info(layers, mf.from_)
            checks.projector(target, projector.value, projector.info, mf.from_)
        if mf.template is not None:
            checks.template(mf.template, mf.lines.get("TEMPLATE", 1))

        if model is not None:
            layers = [self._store_file(model)] + [x for x in layers if x.kind != "model"]
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
        self, mf: Modelfile, base_dir: Path, find_base: BaseFinder
    ) -> tuple[_Opened | None, list[Layer], dict[str, Any]]:
        """Return what FROM names, with its layers and config.

        It is a GGUF file, opened and not yet stored, with a new config; or a stored model's
        layers and config.
        """
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
        base = find_base(base_name)
        config = json.loads(self.store.read_blob(base.config.digest))
        config["parent"] = str(base_name)
        return None, list(base.layers), config

    def _stored_path(self, layers: list[Layer]) -> Path | None:
        """A stored model's file, None where it is split in several (or has none)."""
        parts = [layer for layer in layers if layer.kind == "model"]
        return self.store.blob_path(parts[0].digest) if len(parts) == 1 else None

    def _stored_model(self, layers: list[Layer], shown: str) -> _Opened:
        """A stored model's model file, opened as a file the Modelfile named."""
        parts = [layer for layer in layers if layer.kind == "model"]
        if len(parts) != 1:
            raise InvalidGGUFError(
                f"{shown} is split into {len(parts)} files; a split model cannot be quantized",
                hint="quantize from a model in one GGUF file",
            )
        self._stored_info(parts, shown)  # the blob is there
        return self._open(str(self.store.blob_path(parts[0].digest)), Path("/"), "model", shown)

    def _quantized(self, model: _Opened, quantize: Quantize) -> _Opened:
        """`model` quantized by llama.cpp into a file of the store's (moved in as it is)."""
        have, kind = model.info.quantization, quantize.kind.upper()
        if have not in QUANTIZABLE:
            raise InvalidGGUFError(
                f"{model.value} is already quantized ({have or 'an unknown type'}); quantizing "
                f"it again to {kind} would lose more than it saves",
                hint="quantize from the model in F16, BF16 or F32",
            )
        target = self._temp()
        status = f"quantizing {have} model to {kind}"
        self.report(Event(status))
        total = int(model.info.parameter_count * quantize.bits_per_weight / 8) or model.info.size

        def progress(done: int) -> None:
            self.report(Event(status, completed=min(done, total), total=total))

        # llama.cpp opens by name: the descriptor that was validated, where the system names one.
        again = files.reopened(model.fd)
        quantize.run(Path(again) if again else model.path, target, quantize.kind, progress)
        progress(total)
        before, after = model.info.size, target.stat().st_size
        self.report(Event(f"quantized {have} -> {kind}: {_size(before)} -> {_size(after)} "
                          f"({after / max(before, 1):.0%})"))  # fmt: skip
        return self._open(str(target), Path("/"), "model", model.value, own=True)

    def _temp(self) -> Path:
        """Return a new temporary file name in the store's blobs folder.

        The file is removed when this create ends unless it was moved in. The store's cleanup
        removes one a dead process left.
        """
        self.store.blobs.mkdir(parents=True, exist_ok=True)
        path = temp_path(self.store.blobs)
        self.temporary.append(path)
        return path

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
        """Store the Modelfile's text layers and return `layers` with them in place.

        The parameters, template, system prompt, messages and licenses replace the inherited
        ones.
        """
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

    def _open(
        self, value: str, base_dir: Path, kind: str, shown: str | None = None, own: bool = False
    ) -> _Opened:
        """Open and validate a file the Modelfile names; it is closed when the build ends.

        Messages show it as `shown`, if given, else as written.
        """
        path = resolve_path(value, base_dir)
        value = shown or value
        keyword = checks.KEYWORDS[kind]
        if not os.path.lexists(path):
            raise FileNotFoundError_(
                f"{keyword} {value}: no such file ({path})",
                hint="paths in a Modelfile are relative to the Modelfile's folder",
            )
        if kind in ("model", "adapter") and path.is_dir():
            path, own = self._converted(path, value, kind), True
        self.report(Event(f"reading {kind} metadata"))
        fd = scan.open_regular(path)
        try:
            info = scan.inspect_fd(fd, str(value))
            checks.fits(info, value, kind)
        except BaseException:
            os.close(fd)
            raise
        item = _Opened(value, path, fd, info, kind, own)
        self.opened.append(item)
        return item

    def _converted(self, folder: Path, value: str, kind: str) -> Path:
        """Convert a safetensors checkpoint (FROM) or PEFT adapter (ADAPTER) folder to GGUF.

        The GGUF is a file in the store's folder, which the build moves in or removes.
        """
        # numpy and gguf's writer are loaded for a conversion only: the server imports this
        # module and stays without them.
        from localrun.recipes import convert, lora

        keyword = checks.KEYWORDS[kind]
        marker = "config.json" if kind == "model" else "adapter_config.json"
        if not (folder / marker).is_file():
            raise CheckpointError(
                f"{keyword} {value}: a folder without {marker}",
                hint=f"{keyword} takes a GGUF file or a Hugging Face "
                + ("checkpoint folder (config.json, tokenizer, *.safetensors)" if kind == "model"
                   else "PEFT adapter folder (adapter_config.json, adapter_model.safetensors)"),
            )  # fmt: skip
        target = self._temp()
        status = f"converting {kind} {value} to GGUF"
        self.report(Event(status))

        def progress(done: int, total: int) -> None:
            self.report(Event(status, completed=done, total=total))

        try:
            if kind == "model":
                convert.checkpoint(folder, target, progress)
            elif self.base_file is None:
                raise CheckpointError(
                    f"ADAPTER {value}: the base model is split into several files; an adapter "
                    "folder is converted for a model in one file",
                    hint="convert the adapter for the model's one-file GGUF",
                )
            else:
                lora.adapter(folder, self.base_file, target, progress)
        except OSError as exc:
            # numpy's tofile says a full disk as "N requested and M written", with no errno.
            short = exc.errno is None and re.search(r"\d+ requested and \d+ written", str(exc))
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or short:
                raise DiskFullError(
                    f"no space left to convert {value}",
                    hint="free some disk space (`localrun prune` removes unused blobs)",
                ) from exc
            raise CheckpointError(f"{keyword} {value}: {exc.strerror or exc}") from exc
        except _UNFORESEEN as exc:
            # What no check foresaw in a folder that is the user's input: still one line.
            raise CheckpointError(f"{keyword} {value}: cannot be converted ({exc!r:.200})") from exc
        return target

    def _store_file(self, item: _Opened) -> Layer:
        """Copy an opened file into the store (from the descriptor that was validated)."""

        def progress(phase: str, done: int, total: int) -> None:
            self.report(Event(f"{phase} {item.kind} data", completed=done, total=total))

        if item.own:  # our own file, in the store's folder: hashed and moved in, not copied
            size = os.fstat(item.fd).st_size
            digest = hash_fd(item.fd, size, lambda d, t: progress("hashing", d, t))
            present = self.store.has_blob(digest)
            self.report(Event("using existing layer" if present else "creating new layer",
                              digest=digest))  # fmt: skip
            if not present:
                self.store.adopt(item.path, digest)
            return Layer(MEDIA_TYPES[item.kind], digest, size)

        digest, size, _ = self.store.add_file(
            item.fd,
            expected=self.expected.get(str(item.path)),
            progress=progress,
            on_status=lambda status, digest: self.report(Event(status, digest=digest)),
            link_from=item.path if self.link else None,
        )
        return Layer(MEDIA_TYPES[item.kind], digest, size)

    def _draft(self, value: str, base_dir: Path, find_base: BaseFinder) -> _Draft:
        """Return the draft model DRAFT names.

        It is a file still to copy, or a stored model's model layer, shared rather than copied.
        """
        if looks_like_path(value, base_dir):
            item = self._open(value, base_dir, "draft")
            return _Draft(item, item.info, None)
        draft_name = names.parse(value)
        self.report(Event(f"using draft model {draft_name}"))
        parts = find_base(draft_name).of_kind("model")
        if len(parts) > 1:
            raise InvalidGGUFError(
                f"the draft model {draft_name} is split into {len(parts)} files; a draft model "
                "must be one GGUF file",
                hint="draft with a smaller model of the same family, in one file",
            )
        info = self._stored_info(parts, str(draft_name))
        checks.fits(info, value, "draft")
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


# What a conversion may raise on a folder no check foresaw (the folder is the user's input).
_UNFORESEEN = (KeyError, ValueError, TypeError, IndexError, AttributeError, ZeroDivisionError)
_ORDER = {kind: index for index, kind in enumerate(MEDIA_TYPES)}


def _size(n: int) -> str:
    """A size as `create` says it: 1.2 GB, 83.4 MB, 512 B."""
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False).encode()
