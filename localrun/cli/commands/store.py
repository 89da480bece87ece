"""Commands over the model store: create, list, show, cp, rm, prune, verify, env."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from localrun.cli import listings
from localrun.cli.common import open_store, print_error
from localrun.cli.output import CreateProgress, human_size
from localrun.cli.views import params_text, print_fit, show_text
from localrun.errors import LocalrunError, ModelfileError, NotRegularFileError
from localrun.settings import config
from localrun.store import names

if TYPE_CHECKING:
    from localrun.model.stored import Model

MAX_MODELFILE = 16 * 1024 * 1024


def read_modelfile(path_text: str) -> tuple[str, Path]:
    """The text of a Modelfile and the folder its relative paths start from (`-` = stdin)."""
    from localrun.gguf import scan

    if path_text == "-":
        data = sys.stdin.buffer.read(MAX_MODELFILE + 1)
        base = Path.cwd()
    else:
        path = Path(path_text).expanduser()
        try:
            fd = scan.open_regular(path)
        except NotRegularFileError as exc:
            raise NotRegularFileError(
                f"{path_text} is not a regular file", hint="pass a Modelfile with -f"
            ) from exc
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_MODELFILE + 1)
        base = path.resolve().parent
    if len(data) > MAX_MODELFILE:
        raise ModelfileError("the Modelfile is larger than 16 MiB", line=1, path=path_text)
    try:
        return data.decode("utf-8"), base
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ModelfileError(
            "the Modelfile is not valid UTF-8 text", line=line, column=column, path=path_text
        ) from None


def create(
    name: str = typer.Argument(..., help="Name of the new model, e.g. mario or me/mario:v1."),
    file: str = typer.Option("Modelfile", "--file", "-f", help="The Modelfile ('-' for stdin)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
    link: bool = typer.Option(
        False,
        "--link",
        help="Keep the GGUF files where they are: link them into the store (a copy-on-write "
        "clone, else a hard link) instead of copying; a copy only across file systems.",
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        help="Store FROM's model (F32, F16 or BF16) quantized: q8_0, q6_k, q5_k_m, q5_k_s, "
        "q4_k_m, q4_k_s, q4_0 ... (Ollama's and llama-quantize's names).",
    ),
) -> None:
    """Create a model from a Modelfile."""
    from localrun.engine.library import quantize as quantize_mod
    from localrun.recipes import create as create_mod
    from localrun.recipes import modelfile
    from localrun.sources import obtain

    target = names.parse(name)
    text, base = read_modelfile(file)
    try:
        parsed = modelfile.parse(text)
    except ModelfileError as exc:
        raise exc.with_path(file) from None
    store = open_store(cleanup=True)
    progress = CreateProgress(quiet)
    try:
        create_mod.create(
            store,
            target,
            parsed,
            base,
            report=progress,
            find_base=obtain.base_finder(store, progress),
            link=link,
            quantize=quantize_mod.for_create(quantize) if quantize is not None else None,
        )
    except ModelfileError as exc:
        raise exc.with_path(file) from None
    finally:
        progress.close()


def list_(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List the models in the store, and those upstream servers serve (marked remote)."""
    listings.models(as_json)


def show(
    name: str = typer.Argument(..., help="The model."),
    show_modelfile: bool = typer.Option(
        False, "--modelfile", help="Print a Modelfile that recreates it."
    ),
    show_parameters: bool = typer.Option(False, "--parameters", help="Print only its parameters."),
    show_system: bool = typer.Option(False, "--system", help="Print only its system prompt."),
    show_template: bool = typer.Option(False, "--template", help="Print only its chat template."),
    show_license: bool = typer.Option(False, "--license", help="Print only its license."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    fit: bool = typer.Option(
        False, "--fit", help="Print how it would be split between GPU and CPU, without loading it."
    ),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="With --fit: set a parameter, e.g. num_ctx=8192 (repeatable)."
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="Print the text the model is sent when a user says this."
    ),
) -> None:
    """Show a model's details, parameters, system prompt, template and license."""
    from localrun.errors import InvalidParameterError
    from localrun.recipes import params as params_mod

    if param and not fit:
        raise InvalidParameterError(
            "--param goes with --fit", hint=f"localrun show {name} --fit --param {param[0]}"
        )
    overrides = dict(params_mod.parse_assignment(item) for item in param)
    m = _stored_model(name)
    template = m.template if m.template is not None else m.config.get("gguf_chat_template")
    chosen = None
    if template is None or prompt is not None:
        from localrun.worker import view

        choice = view.template_choice(m)
        template, chosen = choice.source, choice.reason
    if prompt is not None:
        from localrun.request.genrequest import GenRequest
        from localrun.worker import view  # bound above too; repeated for the type checker

        chat = GenRequest(str(m.name), messages=[{"role": "user", "content": prompt}])
        print(view.prompt_of(m, chat), end="")
    elif fit:
        print_fit(m, overrides, as_json)
    elif as_json:
        print(json.dumps(_show_json(m, template, chosen), indent=2, ensure_ascii=False))
    elif show_modelfile:
        mf = m.to_modelfile(originals=True)
        print(
            f"# Modelfile generated by `localrun show`\n# To build a new model from it: "
            f"localrun create NEWNAME -f Modelfile\n\n{mf}",
            end="",
        )
    elif show_parameters:
        print(params_text(m.parameters))
    elif show_system:
        print(m.system or "")
    elif show_template:
        print(template or "")
    elif show_license:
        print("\n\n".join(m.licenses))
    else:
        print(show_text(m, template, chosen))


def _stored_model(name: str) -> Model:
    """The model `name` refers to, from the store (found through an alias; never pulled)."""
    from localrun.model import stored as model_mod
    from localrun.sources import obtain
    from localrun.store import reference

    store = open_store()
    ref = reference.parse(name)
    progress = CreateProgress()
    try:
        manifest = obtain.find(store, ref, progress, pull_missing=False)
    finally:
        progress.close()
    return model_mod.load(store, ref.name, manifest)


def _show_json(m: Any, template: str | None, chosen: str | None = None) -> dict[str, Any]:
    draft = m.draft
    return {
        "name": str(m.name),
        "model": m.name.full,
        "digest": m.digest,
        "details": m.details,
        "parent": m.config.get("parent"),
        "model_file": str(m.model_path),
        "adapters": [str(p) for p in m.adapter_paths],
        "draft": {**draft, "file": str(m.draft_path)} if draft else None,
        "projector": {
            **(m.config.get("projector") or {}),
            "file": str(m.projector_path),
        }
        if m.projector_path is not None
        else None,
        "parameters": m.parameters,
        "system": m.system,
        "template": template,
        "template_chosen": chosen,
        "template_source": "modelfile" if m.template is not None else "gguf",
        "messages": [{"role": x.role, "content": x.content} for x in m.messages],
        "license": m.licenses,
        "modelfile": str(m.to_modelfile(originals=True)),
    }


def cp(
    source: str = typer.Argument(
        ..., help="The model to copy: in the store, or pulled from its registry first."
    ),
    destination: str = typer.Argument(..., help="The new name."),
    push: bool = typer.Option(
        False, "--push", help="Then push the copy to the registry its name says."
    ),
) -> None:
    """Copy a model under a new name (no data is duplicated), from or to a registry."""
    from localrun.sources import obtain
    from localrun.sources.registry import push as push_mod
    from localrun.store import reference

    dst = reference.parse(destination).typed
    store = open_store(cleanup=True)
    ref = reference.parse(source)
    progress = CreateProgress()
    try:
        obtain.find(store, ref, progress)
        store.copy(ref.name, dst)
        print(f"copied '{ref.name}' to '{dst}'", flush=True)
        if push:
            push_mod.push(store, dst, report=progress)
    finally:
        progress.close()


def rm(
    models: list[str] = typer.Argument(..., help="The models to remove."),
) -> None:
    """Remove models, and the data no other model uses."""
    from localrun.store import reference

    store = open_store(cleanup=True)
    failed = False
    for text in models:
        try:
            name = reference.parse(text).typed
            freed = store.remove(name)
        except LocalrunError as err:
            print_error(err)
            failed = True
            continue
        suffix = f" (freed {human_size(freed)})" if freed else ""
        print(f"deleted '{name}'{suffix}")
    if failed:
        raise typer.Exit(1)


def prune() -> None:
    """Free disk space: remove unused blobs, leftovers of interrupted writes, and caches.

    The caches are the disk prompt cache, the llama.cpp source a runtime install kept, and the
    single binary's other unpacked builds.
    """
    from localrun.engine.prompts import disk_cache as prompt_cache
    from localrun.host import selfexec
    from localrun.runtimes import source

    report = open_store().prune(partials=True)
    assert report is not None
    states, state_bytes = prompt_cache.clear()
    builds, build_bytes = selfexec.prune_builds(config.binary_cache())
    sources, source_bytes = source.clear_kept()
    partial = (
        f", {report.partial_downloads} interrupted download"
        f"{'s' if report.partial_downloads != 1 else ''}"
        if report.partial_downloads
        else ""
    )
    print(
        f"removed {report.temp_files} temporary file{'s' if report.temp_files != 1 else ''}"
        f"{partial} and {report.orphan_blobs} unused blob{'s' if report.orphan_blobs != 1 else ''}"
        + (f", cleared {states} cached prompt{'s' if states != 1 else ''}" if states else "")
        + (f", {builds} older unpacked build{'s' if builds != 1 else ''}" if builds else "")
        + (f", {sources} kept llama.cpp source{'s' if sources != 1 else ''}" if sources else "")
        + f", freed {human_size(report.bytes_freed + state_bytes + build_bytes + source_bytes)}"
    )


def verify() -> None:
    """Re-hash every blob in the store and report damaged models.

    A linked file's original that is gone or changed (another runner removed or updated it) is
    a notice, exit 0: the store's content is intact. A hard-linked original edited in place is
    damage, exit 1: the blob is that file."""
    store = open_store()
    bar = _VerifyBar()
    try:
        report = store.verify(bar)
    finally:
        bar.close()
    for digest, models in sorted(report.corrupt.items()):
        used = f"used by {', '.join(models) or 'no model'}"
        if digest in report.edited:
            print(f"edited in place: {report.edited[digest]} (linked as {digest}; {used})")
        else:
            print(f"corrupt: {digest} ({used})")
    for digest, models in sorted(report.missing.items()):
        print(f"missing: {digest} (used by {', '.join(models)})")
    for name in report.bad_manifests:
        print(f"damaged manifest: {name}")
    for digest, (state, path, models) in sorted(report.drifted.items()):
        used = f"used by {', '.join(models) or 'no model'}"
        print(f"source {state}: {path} (linked as {digest}; {used}); the store keeps what it "
              "linked")  # fmt: skip
    if report.drifted:
        print("notice: models whose source changed or went away are as they were; `localrun "
              "import` (or `create --link`) again takes the new version, `localrun rm` frees "
              "the space kept")  # fmt: skip
    if report.ok:
        print(f"verified {report.checked} blob{'s' if report.checked != 1 else ''}: all intact")
        return
    affected = sorted(
        {m for ms in (*report.corrupt.values(), *report.missing.values()) for m in ms}
    )
    affected += report.bad_manifests
    hint = (
        f"remove the affected models (`localrun rm {' '.join(affected)}`) and create or pull "
        "them again"
        if affected
        else "run `localrun prune` to remove unused damaged blobs"
    )
    if report.edited:
        hint = (
            "a file linked with `create --link` was changed after it was added; create the "
            f"models that use it again (`localrun create NAME --link`), or {hint}"
        )
    print(f"Error: the store has damage; {hint}", file=sys.stderr)
    raise typer.Exit(1)


class _VerifyBar:
    def __init__(self) -> None:
        self.progress = CreateProgress()

    def __call__(self, digest: str, done: int, total: int) -> None:
        from localrun.recipes.create import Event

        self.progress(Event(f"verifying {digest[7:19]}", completed=done, total=total))

    def close(self) -> None:
        self.progress.close()


def env(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show every LOCALRUN_* setting, its value and where the value comes from."""
    listings.settings(as_json)
