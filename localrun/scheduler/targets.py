"""Which model a request names: its store name, manifest digest and what is known before loading.

A name is resolved against the store, once a request. The Target holds the Model read from the
manifest it names (model.Model: its digest, its blobs' paths, its parameters). A runner started
for the request loads that, whatever the name points at by then. A catalog model not yet in the
store (the packaged SmolLM2) is imported into it on first use, and so is another runner's model
that LOCALRUN_OTHER_RUNNERS lists (sources.runners.importing.Index). The import runs in a child
process, so the server itself never imports gguf or numpy. Concurrent requests for one name
share one lookup (and one import).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from localrun.errors import LocalrunError, ModelLoadError, ModelNotFoundError
from localrun.hardware.fit import Footprint, footprint
from localrun.host import selfexec
from localrun.host.processes import exit_text
from localrun.model.stored import Model
from localrun.model.stored import load as load_model
from localrun.request import context
from localrun.sources.runners.importing import Index
from localrun.store import reference
from localrun.store.local import Store
from localrun.store.reference import Reference
from localrun.worker import protocol

runner_log = logging.getLogger("localrun.runner")


@dataclass(frozen=True)
class Target:
    """A model found by name: its store name, the model a runner loads, what is known before.

    The model is as its manifest was read when the name was looked up.
    """

    name: str
    model: Model
    weights: int  # bytes of model and adapter layers
    # What a load takes by its load options, from the headers (None: the weights alone).
    footprint: Footprint | None = field(default=None, compare=False, repr=False)

    @property
    def digest(self) -> str:
        return self.model.digest

    @property
    def details(self) -> dict[str, Any]:
        return self.model.details

    def trained(self, load_options: dict[str, Any] | None) -> dict[str, Any] | None:
        """Return `load_options` with num_ctx held to the context the model was trained on.

        The runner loads it so (request.context), so asking for more matches a runner so loaded.
        """
        num_ctx = context.positive((load_options or {}).get("num_ctx"))
        if num_ctx is None:
            return load_options
        held = context.context_for(num_ctx, None, self.model.trained)
        return load_options if held == num_ctx else {**(load_options or {}), "num_ctx": held}

    def context(self, load_options: dict[str, Any] | None) -> int:
        """Return the context a request with these load options is answered with, by any runner.

        That is its own num_ctx, else the model's default (Model.context).
        """
        return self.model.context((load_options or {}).get("num_ctx"))

    def rounded(self, num_ctx: int) -> int:
        """The context a load for a request of `num_ctx` tries first (request.context.loaded)."""
        return context.loaded(num_ctx, self.model.trained)


class Finder:
    """Finds the models requests name; concurrent requests for one name share the lookup."""

    def __init__(
        self,
        store: Store,
        spawn: Callable[[Coroutine[Any, Any, Target]], asyncio.Task[Target]],
    ) -> None:
        """Set up the finder; `spawn` runs a lookup as a task its owner cancels on close.

        An import in progress then kills its child process.
        """
        self.store = store
        self.others = Index()  # other runners' models (LOCALRUN_OTHER_RUNNERS)
        self._spawn = spawn
        self._pending: dict[str, asyncio.Future[Target]] = {}

    async def find(self, text: str) -> Target:
        """The model `text` names; ModelNotFoundError if there is none."""
        pending = self._pending.get(text)
        if pending is None:
            pending = self._spawn(self._lookup(text))
            self._pending[text] = pending
            pending.add_done_callback(lambda _: self._pending.pop(text, None))
            pending.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            return await asyncio.shield(pending)
        except LocalrunError as exc:
            raise exc.copy() from None

    async def _lookup(self, text: str) -> Target:
        ref = reference.parse(text)
        found = await asyncio.to_thread(read_target, self.store, ref, self.others)
        if found is not None:
            return found
        # A catalog model or another runner's not yet in the store: import it in a child
        # process (that reads the GGUF with the gguf package, which the server must not load).
        await import_model(self.store, str(ref.name))
        found = await asyncio.to_thread(read_target, self.store, ref)
        if found is None:
            raise ModelNotFoundError(text)
        return found


def canonical(text: str) -> str:
    """The store name `text` refers to, a catalog alias followed (`smollm2` -> `smollm2:135m`)."""
    return str(reference.parse(text).name)


def read_target(store: Store, ref: Reference, others: Index | None = None) -> Target | None:
    """Return the stored model `ref` names, or None for one still to be imported.

    One still to be imported is a catalog model, or one of `others`.
    """
    name = ref.name
    try:
        manifest = store.read_manifest(name)
    except ModelNotFoundError:
        if ref.hub is None and ref.entry is not None:
            return None
        if others is not None and others.named(str(name)) is not None:
            return None
        raise ModelNotFoundError(ref.text.strip()) from None
    model = load_model(store, name, manifest)
    weights = sum(
        layer.size for layer in manifest.layers if layer.kind in ("model", "adapter", "draft")
    )
    planned: Footprint | None = None
    with contextlib.suppress(LocalrunError, OSError):  # a damaged file: its runner says so
        planned = footprint(model)
    return Target(name=str(name), model=model, weights=weights, footprint=planned)


async def import_model(store: Store, text: str) -> None:
    """Import the catalog model (or another runner's) `text` into `store` in a child process.

    The child is scheduler.importer, through sources.obtain. A failure raises the typed error
    it reported, else ModelLoadError; its stderr goes to the server log.
    """
    proc = await asyncio.create_subprocess_exec(
        *selfexec.command("localrun.scheduler.importer", str(store.root), text),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:  # the server is closing: leave no child behind
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode == 0:
        return
    lines = out.decode("utf-8", "replace").strip().splitlines()
    reported: LocalrunError | None = None
    with contextlib.suppress(LocalrunError):
        reported = protocol.error_from_dict(protocol.decode(lines[-1] if lines else ""))
    if reported is not None:
        raise reported
    for line in err.decode("utf-8", "replace").splitlines():
        runner_log.warning("import of %s: %s", text, line)
    raise ModelLoadError(
        f"could not import {text} into the model store ({exit_text(proc.returncode)})",
        hint="see the server log",
    )
