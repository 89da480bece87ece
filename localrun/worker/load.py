"""Load the model a `load` message names: store manifest -> parameters -> plan -> batch engine."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from localrun import config, names, runner
from localrun import params as params_mod
from localrun.engine.types import EmbedInput, LoadOptions, SamplingOptions, Sink
from localrun.errors import BadRequestError, InvalidGGUFError, LocalrunError
from localrun.model import Model
from localrun.model import load as load_model
from localrun.store import Store
from localrun.worker import protocol
from localrun.worker.watch import LoadWatch, load_limit

BACKENDS = ("llama", "fake")


class Ticket(Protocol):
    def cancel(self) -> None: ...


class Engine(runner.Tokenizer, Protocol):
    """What the worker uses of engine.batch.BatchEngine (and engine.fake.FakeBatchEngine)."""

    n_ctx: int
    n_ctx_train: int
    n_slots: int
    n_vocab: int
    chat_template: str | None
    load_s: float

    def token_bytes(self, token: int) -> bytes: ...

    def submit(
        self,
        prompt: Sequence[int],
        sampling: SamplingOptions,
        *,
        stop_tokens: frozenset[int],
        sink: Sink,
        cache_prefix: int = 0,
    ) -> Ticket: ...

    def embed(
        self, texts: Sequence[EmbedInput], *, truncate: bool = True
    ) -> tuple[list[list[float]], int]: ...

    def close(self) -> None: ...


@dataclass
class Loaded:
    engine: Engine
    prompter: runner.Prompter
    info: protocol.ReadyInfo


def _text(request: dict[str, Any], key: str) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"the load request needs {key!r} (a non-empty string)")
    return value


def _build(
    backend: str, path: str, options: LoadOptions, slots: int, request: dict[str, Any]
) -> Engine:
    if backend == "fake":
        from localrun.engine.fake import FakeBatchEngine

        replies = request.get("replies") or ["Hello!"]
        delay = request.get("delay") or 0.0
        if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
            raise BadRequestError("replies must be a list of strings")
        if not isinstance(delay, int | float) or delay < 0:
            raise BadRequestError("delay must be a number of seconds")
        dims = request.get("dims") or 8
        if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
            raise BadRequestError("dims must be a whole number of at least 1")
        return FakeBatchEngine(
            path,
            options,
            slots,
            replies=replies,
            delay=float(delay),
            hang=bool(request.get("hang")),
            dims=dims,
        )
    from localrun.engine.batch import BatchEngine

    return BatchEngine(path, options, slots)


def load(request: dict[str, Any], breach: Callable[[LocalrunError], None] | None = None) -> Loaded:
    """Load what a `load` message asks for; raises a LocalrunError the worker reports.

    With `breach`, llama.cpp loads under a LoadWatch (time limit, memory bound) that calls it
    with the error on a breach; it must end the process.
    """
    started = time.perf_counter()
    if request.get("op") != protocol.LOAD:
        raise BadRequestError(f"the first request must be {protocol.LOAD!r}")
    root, name = _text(request, "store"), _text(request, "model")
    options = request.get("options") or {}
    slots = request.get("slots", 1)
    backend = request.get("backend", "llama")
    if not isinstance(options, dict):
        raise BadRequestError("options must be an object")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise BadRequestError(f"slots must be a whole number of at least 1, not {slots!r}")
    if backend not in BACKENDS:
        raise BadRequestError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    model = load_model(Store(Path(root)), names.parse(name))
    try:
        return _load(model, options, slots, backend, request, breach, started)
    except LocalrunError as exc:
        raise runner.scrubbed(exc, model) from None


def _load(
    model: Model,
    options: dict[str, Any],
    slots: int,
    backend: str,
    request: dict[str, Any],
    breach: Callable[[LocalrunError], None] | None,
    started: float,
) -> Loaded:
    parameters = {**model.parameters, **params_mod.validate(options)}
    # The fake engine runs on the CPU: planning it so keeps llama_cpp out of its runner.
    fit = runner.plan_fit(model, parameters, slots=slots, gpu=backend != "fake")
    available = runner.available_memory()
    runner.check_memory(model, fit, parameters, slots=slots, available=available)
    notes: list[str] = []
    warnings: list[str] = []
    load_options = runner.resolve_load_options(model, parameters, notes, warnings.append, fit=fit)
    watch: AbstractContextManager[Any] = contextlib.nullcontext()
    if breach is not None:
        watch = LoadWatch(
            str(model.name),
            limit=load_limit(fit.plan.ram_bytes + fit.plan.vram_bytes, available),
            timeout_s=config.load_timeout(),
            breach=breach,
        )
    try:
        with watch:
            engine = _build(backend, str(model.model_path), load_options, slots, request)
    except InvalidGGUFError as exc:
        raise runner.damaged(model, exc) from None
    # The scripted engine reads no GGUF: it renders the file's own template as llama.cpp would.
    own = fit.header.metadata.get("tokenizer.chat_template")
    template = model.template or engine.chat_template or (own if isinstance(own, str) else None)
    prompter = runner.Prompter(
        model, parameters, template, engine, runner.stop_tokens_for(template, engine)
    )
    plan = fit.plan
    size = plan.vram_bytes + plan.ram_bytes
    runtime = plan.runtime_bytes  # where the model runs is told by its own memory alone
    info = protocol.ReadyInfo(
        n_ctx=engine.n_ctx,
        n_ctx_train=engine.n_ctx_train,
        slots=engine.n_slots,
        size=size,
        size_vram=plan.vram_bytes,
        gpu_layers=plan.n_gpu_layers,
        layers=plan.total_layers,
        processor=protocol.processor_text(size - runtime, plan.vram_bytes - runtime),
        load_s=time.perf_counter() - started,
        notes=[*notes, *warnings],
        runtime=runtime,
    )
    return Loaded(engine, prompter, info)
