"""Build a model from a Modelfile: local files and store models -> blobs + a manifest.

All hashing of user files happens here (through `Store.add_file`). Every file is validated as
GGUF before it is accepted, and opened only once: the descriptor that was validated is the one
that is copied. The manifest is written last, so an interrupted create leaves no model behind,
only temporary files that `localrun prune` (or the next command that writes) removes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localrun import gguf, params
from localrun.errors import FileNotFoundError_, InvalidGGUFError, ModelfileError
from localrun.modelfile import Modelfile
from localrun.names import ModelName
from localrun.store import MEDIA_CONFIG, MEDIA_TYPES, Layer, Manifest, Store


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
) -> str:
    """Create (or replace) model `name`; returns the manifest digest.

    `resolve` finds the manifest of a FROM model name (default: the store alone); `expected`
    maps file paths to the digest their content must have (for catalog imports).
    """
    builder = _Builder(store, report, expected or {})
    with store.writing():
        return builder.build(name, modelfile, base_dir, resolve or store.read_manifest)


class _Builder:
    def __init__(self, store: Store, report: Reporter, expected: dict[str, str]) -> None:
        self.store = store
        self.report = report
        self.expected = expected

    def build(self, name: ModelName, mf: Modelfile, base_dir: Path, resolve: Resolver) -> str:
        layers: list[Layer]
        if looks_like_path(mf.from_, base_dir):
            model_layer, info = self._add_gguf(mf.from_, base_dir, "model")
            layers = [model_layer]
            config: dict[str, Any] = {"model_format": "gguf", "details": info.details()}
            if info.license:
                config["gguf_license"] = info.license
            if info.chat_template:
                config["gguf_chat_template"] = info.chat_template
            config["parent"] = None
        else:
            from localrun import names

            base_name = names.parse(mf.from_)
            self.report(Event(f"using model {base_name}"))
            base = resolve(base_name)
            layers = list(base.layers)
            config = json.loads(self.store.read_blob(base.config.digest))
            config["parent"] = str(base_name)

        architecture = (config.get("details") or {}).get("architecture")
        adapters = list(config.get("adapters", []))
        for value in mf.adapters:
            layer, info = self._add_gguf(value, base_dir, "adapter")
            if architecture and info.architecture and info.architecture != architecture:
                raise InvalidGGUFError(
                    f"adapter {value} is for {info.architecture} models, but the base model is "
                    f"{architecture}",
                    hint="use an adapter trained for this base model",
                )
            layers.append(layer)
            adapters.append({"digest": layer.digest, "lora_alpha": info.lora_alpha})
        if adapters:
            config["adapters"] = adapters

        if mf.parameters:
            inherited = self._inherited_json(layers, "params", {})
            merged = params.merge(params.validate(inherited), mf.parameters)
            layers = self._replace(layers, "params", _json_bytes(merged))
        if mf.template is not None:
            _check_template(mf.template, mf.lines.get("TEMPLATE", 1))
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

        layers.sort(key=lambda layer: _ORDER.get(layer.kind, len(_ORDER)))
        config_digest, config_size = self.store.add_bytes(_json_bytes(config))
        manifest = Manifest(Layer(MEDIA_CONFIG, config_digest, config_size), layers)
        self.report(Event("writing manifest"))
        digest = self.store.write_manifest(name, manifest)
        self.report(Event("success", digest=digest))
        return digest

    def _add_gguf(self, value: str, base_dir: Path, kind: str) -> tuple[Layer, gguf.GGUFInfo]:
        path = resolve_path(value, base_dir)
        keyword = "FROM" if kind == "model" else "ADAPTER"
        if not os.path.lexists(path):
            raise FileNotFoundError_(
                f"{keyword} {value}: no such file ({path})",
                hint="paths in a Modelfile are relative to the Modelfile's folder",
            )
        self.report(Event(f"reading {kind} metadata"))
        fd = gguf.open_regular(path)
        try:
            info = gguf.inspect_fd(fd, str(value))
            if kind == "model" and info.kind == "adapter":
                raise InvalidGGUFError(
                    f"{value} is a LoRA adapter, not a model",
                    hint="name a base model in FROM and the adapter in ADAPTER",
                )
            if kind == "adapter" and (
                info.kind != "adapter" or info.adapter_type not in (None, "lora")
            ):
                raise InvalidGGUFError(
                    f"{value} is not a LoRA adapter (its general.type is not 'adapter')",
                    hint="ADAPTER takes a LoRA adapter in GGUF form, as llama.cpp's "
                    "convert_lora_to_gguf.py writes it",
                )

            def progress(phase: str, done: int, total: int) -> None:
                self.report(Event(f"{phase} {kind} data", completed=done, total=total))

            digest, size, _ = self.store.add_file(
                fd,
                expected=self.expected.get(str(path)),
                progress=progress,
                on_status=lambda status, digest: self.report(Event(status, digest=digest)),
            )
        finally:
            os.close(fd)
        return Layer(MEDIA_TYPES[kind], digest, size), info

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


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=False).encode()


def _check_template(template: str, line: int) -> None:
    """Refuse a TEMPLATE that is not valid Jinja (it is rendered sandboxed at run time)."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment().parse(template)
    except TemplateSyntaxError as exc:
        raise ModelfileError(
            f"TEMPLATE is not a valid Jinja chat template: {exc.message} "
            f"(line {exc.lineno} of the template)",
            line=line,
            hint="a TEMPLATE uses the variables messages, add_generation_prompt, bos_token, "
            "eos_token",
        ) from None
