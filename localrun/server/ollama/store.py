"""Ollama's store routes: tags, pull, create, copy, delete and blob uploads (show is in `show`).

Store work runs in threads, since it blocks on disk, and pull and create in a job subprocess
(`jobs`), so the server never imports the GGUF reader. /api/create reads no file a client names.
A model is built from a model in the store or from blobs uploaded with POST /api/blobs/<digest>.
A value that looks like a path is refused with the same words whether or not something is there:
Ollama's CVE-2024-39719 told attackers which files exist.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from localrun.engine.library import quantize
from localrun.errors import (
    BadRequestError,
    DiskFullError,
    InvalidNameError,
    LocalrunError,
    StoreError,
)
from localrun.recipes import params
from localrun.recipes.modelfile import ROLES, Message, Modelfile
from localrun.server import core
from localrun.server.body import Body, read_json
from localrun.server.errors import body_of, unexpected
from localrun.server.ollama import jobs
from localrun.server.ollama.show import details_of, iso, local_model, own_template
from localrun.server.streaming import line, ndjson
from localrun.sources import hosts
from localrun.store import reference
from localrun.store.blobs import open_new, temp_path, write_all
from localrun.store.local import Store
from localrun.store.manifest import check_digest

UPLOAD_CHUNK = 4 * 1024 * 1024
DISK_MARGIN = 256 * 1024 * 1024
DISK_CHECK_EVERY = 256 * 1024 * 1024


# -- listing ----------------------------------------------------------------------------------


def _tags(store: Store) -> list[dict[str, Any]]:
    """The store's models, newest first, then the packaged ones not imported yet.

    The packaged ones keep a fresh store from looking empty to a chat UI; the first use imports
    them.
    """
    from localrun.store import catalog

    out = []
    for entry in sorted(store.entries(), key=lambda e: e.modified, reverse=True):
        try:
            config = json.loads(store.read_blob(entry.manifest.config.digest))
        except (LocalrunError, ValueError):
            config = {}
        out.append(
            {
                "name": str(entry.name),
                "model": str(entry.name),
                "modified_at": iso(entry.modified),
                "size": entry.size,
                "digest": entry.digest.removeprefix("sha256:"),
                "details": details_of(config.get("details") or {}, config.get("parent")),
            }
        )
    for packaged in catalog.not_imported(store):
        name = str(packaged.entry.name)
        out.append(
            {
                "name": name,
                "model": name,
                "modified_at": iso(packaged.modified),
                "size": packaged.size,
                "digest": packaged.sha256,
                "details": details_of(packaged.entry.details),
            }
        )
    return out


async def tags(request: Request) -> Response:
    ctx = core.context(request)
    local = await anyio.to_thread.run_sync(_tags, ctx.store)
    names = {m["name"] for m in local}
    # Other runners' models (LOCALRUN_OTHER_RUNNERS), imported in place on first use.
    for other in await anyio.to_thread.run_sync(ctx.scheduler.others.beside, names):
        local.append({"name": other.name, "model": other.name, "size": other.size,
                      "modified_at": iso(other.modified), "digest": "",
                      "details": details_of({"quantization": other.quantization})})  # fmt: skip
    remote = [
        {
            "name": m.name,
            "model": m.name,
            "modified_at": iso(0),
            "size": 0,
            "digest": "",
            "details": {"format": "", "family": "", "families": None, "parameter_size": "",
                        "quantization_level": ""},
            "remote_host": ", ".join(m.upstreams),  # Ollama's field for a model served elsewhere
        }
        for m in ctx.scheduler.remote.models()
        if m.name not in names
    ]  # fmt: skip
    return JSONResponse({"models": local + remote})


# -- copy and delete --------------------------------------------------------------------------


async def copy(request: Request) -> Response:
    body = Body(await read_json(request))
    source = body.get("source", str)
    destination = body.get("destination", str)
    if not source or not destination:
        raise BadRequestError("source and destination are required")
    src = await local_model(request, source)
    dst = reference.parse(destination).typed
    await anyio.to_thread.run_sync(core.context(request).store.copy, src, dst)
    return Response(status_code=200)


async def delete(request: Request) -> Response:
    body = Body(await read_json(request))
    name = reference.parse(body.model()).typed
    ctx = core.context(request)
    # A loaded copy would keep answering for a model that is gone.
    await ctx.scheduler.unload(str(name))
    await anyio.to_thread.run_sync(ctx.store.remove, name)
    return Response(status_code=200)


# -- pull and create (job subprocesses) -------------------------------------------------------


def _progress(event: dict[str, Any]) -> dict[str, Any]:
    return {k: event[k] for k in ("status", "digest", "total", "completed") if k in event}


async def _run_job(
    request: Request, job: dict[str, Any], stream: bool, clean: Any = None
) -> Response:
    """Run a job, streaming its progress as NDJSON or answering once it is done."""

    def cleaned(exc: LocalrunError) -> LocalrunError:
        return clean(exc) if clean is not None else exc

    jobs.turns(job).check()  # a line too long is a 503 before any answer starts
    if not stream:
        try:
            await core.until_disconnect(request, lambda: jobs.run_to_end(job))
        except LocalrunError as exc:
            raise cleaned(exc) from None
        return JSONResponse({"status": "success"})

    async def lines() -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(jobs.run(job)) as events:
                async for event in events:
                    yield line(_progress(event))
            yield line({"status": "success"})
        except LocalrunError as exc:
            yield line(body_of(cleaned(exc), "ollama"))
        except Exception as exc:
            yield line(body_of(unexpected(exc, str(job.get("op"))), "ollama"))

    return ndjson(lines())


async def pull_(request: Request) -> Response:
    """Ollama's /api/pull: a model from its registry or hub into the store."""
    return await _registry_job(request, "pull")


async def push_(request: Request) -> Response:
    """Ollama's /api/push: a model of the store to the registry its name says."""
    return await _registry_job(request, "push")


async def _registry_job(request: Request, op: str) -> Response:
    body = Body(await read_json(request))
    text = body.model()
    ref = reference.parse(text)  # an invalid name is a 400 before anything starts
    body.flag("insecure", False)  # Ollama's clients send it: read, never obeyed (hosts.Reach)
    push = op == "push"
    if ref.hub is None and (push or ref.entry is None):  # a registry's: 403 before any answer
        await anyio.to_thread.run_sync(hosts.CLIENT.check, ref.typed if push else ref.name, push)
    store = core.context(request).store
    job = {"op": op, "store": str(store.root), "model": text}
    return await _run_job(request, job, body.flag("stream", True))


def _not_a_model(value: str) -> BadRequestError:
    # Same words whatever is at that path: the answer must not tell whether a file exists.
    return BadRequestError(
        f"{value[:200]!r} is not a model name; over the API a model is created from a model "
        "in the store or from uploaded blobs, never from files on the server",
        hint="upload the GGUF with POST /api/blobs/sha256:<digest> and name it in `files`",
    )


def _model_ref(value: str) -> str:
    text = value.strip()
    if (
        not text
        or text.startswith((".", "/", "~", "\\", "@"))
        or "\\" in text
        or text.lower().endswith(".gguf")
        or re.match(r"[A-Za-z]:[\\/]", text)  # a Windows drive path
    ):
        raise _not_a_model(value)
    try:
        reference.parse(text)
    except InvalidNameError:
        raise _not_a_model(value) from None
    return text


def _blob(store: Store, digest: Any, what: str) -> str:
    if not isinstance(digest, str):
        raise BadRequestError(f"{what} must be a digest string")
    canonical = check_digest(digest.strip().removeprefix("@"))
    if not store.has_blob(canonical):
        raise BadRequestError(
            f"{what}: blob {canonical} has not been uploaded",
            hint=f"upload it first with POST /api/blobs/{canonical}",
        )
    return str(store.blob_path(canonical))


def _source(store: Store, value: str, what: str) -> str:
    """A FROM, ADAPTER or DRAFT value of a Modelfile sent over the API: a blob or a model name.

    ADAPTER takes a blob only.
    """
    text = value.strip().removeprefix("@")
    if text.startswith(("sha256:", "sha256-")):
        return _blob(store, text, what)
    if what == "ADAPTER":
        raise _not_a_model(value)
    return _model_ref(value)


def _modelfile(store: Store, body: Body) -> Modelfile:
    """The Modelfile Ollama's create fields describe, naming only blobs and model names."""
    from localrun.recipes import modelfile as modelfile_mod

    mf: Modelfile | None = None
    text = body.get("modelfile", str)
    if text:
        mf = modelfile_mod.parse(text)
        mf.from_ = _source(store, mf.from_, "FROM")
        mf.adapters = [_source(store, a, "ADAPTER") for a in mf.adapters]
        if mf.draft is not None:
            mf.draft = _source(store, mf.draft, "DRAFT")
        if mf.projector is not None:
            mf.projector = _source(store, mf.projector, "PROJECTOR")
    files = body.get("files", dict) or {}
    base = body.get("from", str)
    if files and base:
        raise BadRequestError("give either from or files, not both")
    if files:
        if len(files) != 1:
            raise BadRequestError("files must name exactly one GGUF model file")
        (digest,) = files.values()
        mf = mf or Modelfile(from_="")
        mf.from_ = _blob(store, digest, "files")
    elif base:
        mf = mf or Modelfile(from_="")
        mf.from_ = _model_ref(base)
    if mf is None or not mf.from_:
        raise BadRequestError("from or files is required", hint="name a model in `from`")
    adapters = body.get("adapters", dict) or {}
    mf.adapters += [_blob(store, d, f"adapters[{n!r}]") for n, d in adapters.items()]
    if body.get("template", str) is not None:
        mf.template = body.get("template", str)
    if body.get("system", str) is not None:
        mf.system = body.get("system", str)
    license_ = body.get("license", (str, list))
    if license_ is not None:
        items = [license_] if isinstance(license_, str) else license_
        if not all(isinstance(x, str) for x in items):
            raise BadRequestError("license must be a string or a list of strings")
        mf.licenses += items
    for name, value in params.validate(body.get("parameters", dict) or {}).items():
        mf.parameters += [(name, v) for v in (value if isinstance(value, list) else [value])]
    for index, raw in enumerate(body.get("messages", list) or []):
        if not isinstance(raw, dict) or raw.get("role") not in ROLES:
            raise BadRequestError(f"messages[{index}] needs a role: system, user or assistant")
        if not isinstance(raw.get("content"), str):
            raise BadRequestError(f"messages[{index}].content must be a string")
        mf.messages.append(Message(raw["role"], raw["content"]))
    return mf


async def create(request: Request) -> Response:
    body = Body(await read_json(request))
    target = reference.parse(body.model()).typed
    kind = body.get("quantize", str)
    if kind:
        kind = quantize.check_type(kind)  # an unknown type refused before the job starts
    store = core.context(request).store
    mf = await anyio.to_thread.run_sync(own_template, store, _modelfile(store, body))
    job = {"op": "create", "store": str(store.root), "model": str(target), "modelfile": str(mf)}
    if kind:
        job["quantize"] = kind

    def clean(exc: LocalrunError) -> LocalrunError:
        # Name blobs by digest, not by where the store keeps them.
        exc.message = exc.message.replace(str(store.blobs) + os.sep, "")
        exc.args = (exc.message,)
        return exc

    return await _run_job(request, job, body.flag("stream", True), clean)


# -- blobs ------------------------------------------------------------------------------------


async def blob_head(request: Request) -> Response:
    store = core.context(request).store
    digest = check_digest(request.path_params["digest"])
    return Response(status_code=200 if store.has_blob(digest) else 404)


def _disk_error(exc: OSError) -> LocalrunError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DiskFullError(
            "no space left in the model store for this upload",
            hint="free some disk space (`localrun prune` removes unused blobs)",
        )
    return StoreError(f"could not write the upload: {exc.strerror or exc}")


def _check_space(store: Store, needed: int) -> None:
    if shutil.disk_usage(store.blobs).free < needed + DISK_MARGIN:
        raise DiskFullError(
            f"the model store has no room for {needed} more bytes",
            hint="free some disk space (`localrun prune` removes unused blobs)",
        )


def _write(fd: int, hasher: Any, data: bytes) -> None:
    hasher.update(data)
    write_all(fd, data)


async def blob_upload(request: Request) -> Response:
    """Stream an upload to a temporary file in the store, hashing it; keep it if it matches."""
    store = core.context(request).store
    digest = check_digest(request.path_params["digest"])
    if store.has_blob(digest):
        return Response(status_code=200)
    # As a writer of the store (like `localrun create`): a prune or rm in another process
    # waits, instead of deleting the upload's temporary file under it.
    async with _writing(store):
        return await _upload(request, store, digest)


@contextlib.asynccontextmanager
async def _writing(store: Store) -> AsyncIterator[None]:
    """Hold store.writing() across awaits, while the upload streams on the event loop.

    A thread of its own takes and releases the lock, as filelock requires.
    """
    acquired, done = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def hold() -> None:
        try:
            with store.writing():
                acquired.set()
                done.wait()
        except BaseException as exc:  # reported to the request below
            failed.append(exc)
            acquired.set()

    threading.Thread(target=hold, name="upload-lock", daemon=True).start()
    try:
        await anyio.to_thread.run_sync(acquired.wait)
        if failed:
            raise failed[0]
        yield
    finally:
        done.set()


async def _upload(request: Request, store: Store, digest: str) -> Response:
    declared = request.headers.get("content-length")
    try:
        await anyio.to_thread.run_sync(lambda: store.blobs.mkdir(parents=True, exist_ok=True))
        if declared and declared.isdigit():
            await anyio.to_thread.run_sync(_check_space, store, int(declared))
        tmp = temp_path(store.blobs)
        fd = open_new(tmp)
    except OSError as exc:
        raise _disk_error(exc) from exc
    hasher = hashlib.sha256()
    kept = False
    try:
        buffer = bytearray()
        received = checked = 0
        async for chunk in request.stream():
            buffer += chunk
            received += len(chunk)
            if len(buffer) >= UPLOAD_CHUNK:
                data, buffer = bytes(buffer), bytearray()
                await anyio.to_thread.run_sync(_write, fd, hasher, data)
            if received - checked >= DISK_CHECK_EVERY:
                checked = received
                await anyio.to_thread.run_sync(_check_space, store, 0)
        await anyio.to_thread.run_sync(_write, fd, hasher, bytes(buffer))
        os.close(fd)
        fd = -1
        actual = "sha256:" + hasher.hexdigest()
        if actual != digest:
            raise BadRequestError(
                f"the uploaded content has digest {actual}, not {digest}; nothing was stored",
                hint="upload the file again; its digest is the sha256 of its content",
            )
        await anyio.to_thread.run_sync(
            functools.partial(store.adopt, Path(tmp), digest, uploaded=True)
        )
        kept = True
    except OSError as exc:
        raise _disk_error(exc) from exc
    except ClientDisconnect:
        raise core.ClientGone() from None
    finally:
        if fd >= 0:
            os.close(fd)
        if not kept:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    return Response(status_code=201)
