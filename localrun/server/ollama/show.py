"""/api/show: a model as Ollama's clients read it, and the `details` /api/tags and /api/ps show.

`template` is a Go template, as Ollama's clients read it: `ollama show --modelfile` fed back to
`ollama create`, or Open WebUI's editor. It is the model's own where that is Go (an Ollama
import, a Modelfile TEMPLATE in Go). Else it renders the same prompts as the template localrun
prompts the model with, a GGUF's Jinja mostly: worker.view.go_template picks one of Ollama's
built-in templates, or writes one for the model's turn markers. Where no Go template renders
them, it is "". `chat_template` (localrun's) is the template localrun prompts with.
`modelfile` agrees with `template`: its TEMPLATE is the Go one, or the model's own Jinja
TEMPLATE where there is no Go one; a GGUF's own template is then left out, since FROM keeps it.

A Modelfile from /api/show comes back through /api/create to the same prompts. A TEMPLATE that
is the Go template shown for FROM's own template stands for that template, and `own_template`
drops it: the model keeps the one it was made with, tools and reasoning included.
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import LocalrunError, ModelNotFoundError
from localrun.formats import template as template_mod
from localrun.recipes.modelfile import Modelfile
from localrun.server import core
from localrun.server.body import Body, read_json
from localrun.server.ollama import jobs
from localrun.store import reference
from localrun.store.local import Store
from localrun.store.names import ModelName
from localrun.worker import view


def iso(epoch: float) -> str:
    """RFC 3339 in UTC with a Z, as Ollama writes its times."""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def details_of(details: dict[str, Any], parent: str | None = None) -> dict[str, Any]:
    """Ollama's `details` of a model from the GGUF summary in its manifest (no file is read)."""
    from localrun.gguf.scan import format_count

    arch = details.get("architecture") or ""
    count = details.get("parameter_count")
    return {
        "parent_model": parent or "",
        "format": details.get("format") or "gguf",
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": format_count(count) if isinstance(count, int) and count else "",
        "quantization_level": details.get("quantization") or "",
    }


async def local_model(request: Request, text: str) -> ModelName:
    """The store name of a model that must be local, imported first where need be.

    A catalog model, or another runner's that LOCALRUN_OTHER_RUNNERS lists, is imported.
    """
    ctx = core.context(request)
    ref = reference.parse(text)
    name = ref.name
    if ctx.store.exists(name):
        return name
    packaged = ref.hub is None and ref.entry is not None
    if (
        packaged
        or await anyio.to_thread.run_sync(ctx.scheduler.others.named, str(name)) is not None
    ):
        await jobs.run_to_end({"op": "import", "store": str(ctx.store.root), "model": str(name)})
        return name
    raise ModelNotFoundError(str(name))


async def show(request: Request) -> Response:
    body = Body(await read_json(request))
    ctx = core.context(request)
    remote = await ctx.scheduler.remote_name(body.model())
    if remote is not None:
        return JSONResponse(_show_remote(ctx, remote))
    name = await local_model(request, body.model())
    return JSONResponse(await anyio.to_thread.run_sync(_show, ctx.store, name))


def _params_text(parameters: dict[str, Any]) -> str:
    from localrun.recipes.modelfile import format_param

    rows = []
    for key, value in parameters.items():
        for item in value if isinstance(value, list) else [value]:
            shown = json.dumps(item) if isinstance(item, str) else format_param(item)
            rows.append(f"{key:<30} {shown}")
    return "\n".join(rows)


def _without_store_paths(text: str, store: Store) -> str:
    """The Modelfile with blob paths written as digests (`FROM sha256:…`).

    /api/create accepts them, and a client learns nothing of where the store lives on the server.
    """
    blobs = re.escape(str(store.blobs)) + r"[/\\]sha256-([0-9a-f]{64})"
    return re.sub(blobs, r"sha256:\1", text)


def templates(model: Any) -> tuple[view.GoChoice, str | None]:
    """The Go template shown for `model`, and the template localrun prompts it with."""
    from localrun.model import capabilities

    try:
        header = view.header_of(model)
    except LocalrunError:  # a damaged file is `verify`'s to report: its template as stored
        own = capabilities.template_of(model)
        go = view.GoChoice(own, "own") if own and template_mod.is_go(own) else None
        return go or view.GoChoice("", "none"), own
    choice = view.template_choice(model, header)
    return view.go_template(choice, header), choice.source


def _modelfile_text(model: Any, go: view.GoChoice, store: Store) -> str:
    """/api/show's `modelfile`, its TEMPLATE the model's own or else the Go template shown.

    The model's own template is the one its Modelfile gave. A Jinja one is kept as it is:
    /api/create of it keeps its tools and reasoning, which the Go template shown may not render.
    Else TEMPLATE is the Go template shown for what FROM brings, or none where there is none, since
    FROM brings it.
    """
    mf = model.to_modelfile()
    mf.template = model.template or go.source
    note = ""
    if not go.source:
        note = (
            "# No Go template renders this model's prompts: its chat template is in /api/show's "
            "chat_template\n"
        )
    return (
        f'# Modelfile generated by "localrun show"\n# To build a new Modelfile based on this '
        f"one, replace the FROM line with:\n# FROM {model.name}\n{note}\n"
        f"{_without_store_paths(str(mf), store)}"
    )


def _show(store: Store, name: ModelName) -> dict[str, Any]:
    from localrun.model import capabilities as capabilities_mod
    from localrun.model import stored as model_mod

    m = model_mod.load(store, name)
    go, chat_template = templates(m)
    d = m.details
    arch = d.get("architecture")
    info: dict[str, Any] = {
        "general.architecture": arch,
        "general.name": d.get("name"),
        "general.parameter_count": d.get("parameter_count"),
        "general.quantization": d.get("quantization"),
    }
    for key, field in (
        ("context_length", "context_length"),
        ("embedding_length", "embedding_length"),
        ("block_count", "block_count"),
        ("attention.head_count", "head_count"),
    ):
        if arch and d.get(field) is not None:
            info[f"{arch}.{key}"] = d[field]
    out: dict[str, Any] = {
        "modelfile": _modelfile_text(m, go, store),
        "parameters": _params_text(m.parameters),
        "template": go.source,
        "chat_template": chat_template or "",
        "details": details_of(d, m.config.get("parent")),
        "model_info": {k: v for k, v in info.items() if v is not None},
        "capabilities": capabilities_mod.capabilities(m),
        "modified_at": iso(store.manifest_path(name).stat().st_mtime),
    }
    out.update(_parts(m))
    return out


def _parts(m: Any) -> dict[str, Any]:
    """The fields of a model's other parts: draft, projector, system, license, messages."""
    from localrun.model import capabilities as capabilities_mod

    out: dict[str, Any] = {}
    draft = m.draft
    if draft:
        out["draft"] = {
            "model": draft["model"] or "",
            "digest": draft["digest"],
            "details": details_of(draft["details"]),
        }
    projector = m.config.get("projector")
    if m.projector_path is not None:
        details = projector.get("details") if isinstance(projector, dict) else None
        details = details if isinstance(details, dict) else {}
        # Ollama's field: the projector's own metadata.
        out["projector_info"] = {
            "general.architecture": details.get("architecture") or "clip",
            "clip.modalities": capabilities_mod.projector_modalities(m),
            "clip.projection_dim": details.get("projection_dim"),
            "clip.parameter_count": details.get("parameter_count"),
        }
    if m.system:
        out["system"] = m.system
    if m.licenses:
        out["license"] = "\n\n".join(m.licenses)
    if m.messages:
        out["messages"] = [{"role": x.role, "content": x.content} for x in m.messages]
    return out


def _show_remote(ctx: core.Context, model: str) -> dict[str, Any]:
    """What localrun knows of a model an upstream serves: its name and where it is served.

    These are Ollama's remote_model and remote_host. Its template and parameters are the
    upstream's own.
    """
    hosts = [s.name for s in ctx.scheduler.remote.states if model in s.models()]
    return {
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": details_of({}),
        "model_info": {},
        "capabilities": ["completion", "tools"],
        "modified_at": iso(0),  # unknown; Go's ShowResponse always writes the field
        "remote_model": model,
        "remote_host": ", ".join(hosts),
    }


def own_template(store: Store, mf: Modelfile) -> Modelfile:
    """`mf` without a TEMPLATE that is the Go template /api/show gives for FROM's template.

    FROM's template is a blob's GGUF template or a model's own. The Go one stands for it, and the
    new model keeps it. This runs in a thread, since it reads a GGUF header.
    """
    if not mf.template or not template_mod.is_go(mf.template):
        return mf
    with contextlib.suppress(LocalrunError, OSError):
        if _from_go_template(store, mf.from_) == mf.template:
            mf.template = None
    return mf


def _from_go_template(store: Store, from_: str) -> str:
    """The Go template /api/show gives for `from_`, a blob's path or a model's name."""
    from localrun.formats import families
    from localrun.gguf import scan
    from localrun.model import stored as model_mod

    path = Path(from_)
    if path.parent == store.blobs:
        header = scan.scan(path)
        own = header.metadata.get("tokenizer.chat_template")
        choice = families.choose(None, own if isinstance(own, str) else None, header.chat_tokens)
        return view.go_template(choice, header).source
    model = model_mod.load(store, reference.parse(from_).name)
    return templates(model)[0].source
