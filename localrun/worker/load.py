"""Load a model for a runner from its LoadSpec: parameters -> memory plan -> engine -> prompter.

`load_model` is how every runner loads, in the server's runner process (`load`, from the first
line it reads) and in the process of `localrun run` (worker.local). Either way it is handed a
model.LoadSpec, the model as the edge settled it: the blobs it names are what it loads, with
the parameters and the context decided there; no name is looked up here.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from localrun.engine.types import Engine, LoadOptions
from localrun.errors import BadRequestError, InvalidGGUFError, LocalrunError
from localrun.formats import template as template_mod
from localrun.hardware import fit as fit_mod
from localrun.model.stored import LoadSpec, Model
from localrun.settings import limits
from localrun.worker import protocol, view
from localrun.worker.load_watch import LoadWatch, load_limit
from localrun.worker.prompt import Prompter, stop_tokens_for

BACKENDS = ("llama", "fake")


@dataclass
class Loaded:
    """A model loaded and ready to answer."""

    engine: Engine
    prompter: Prompter
    info: protocol.ReadyInfo
    notes: list[str] = field(default_factory=list)  # where it runs and why
    warnings: list[str] = field(default_factory=list)  # said once, at the load


def load(request: dict[str, Any], breach: Callable[[LocalrunError], None] | None = None) -> Loaded:
    """Load what a `load` message asks for; raises a LocalrunError the worker reports.

    With `breach`, llama.cpp loads under a LoadWatch (time limit, memory bound) that calls it
    with the error on a breach; it must end the process.
    """
    if request.get("op") != protocol.LOAD:
        raise BadRequestError(f"the first request must be {protocol.LOAD!r}")
    spec = LoadSpec.from_wire(request)
    slots = request.get("slots", 1)
    backend = request.get("backend", "llama")
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise BadRequestError(f"slots must be a whole number of at least 1, not {slots!r}")
    if backend not in BACKENDS:
        raise BadRequestError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    fallback = request.get("fallback_ctx")
    if fallback is not None and (isinstance(fallback, bool) or not isinstance(fallback, int)):
        raise BadRequestError(f"fallback_ctx must be a whole number, not {fallback!r}")
    return load_model(
        spec,
        slots=slots,
        backend=backend,
        extra=request,
        breach=breach,
        fallback_ctx=fallback,
        split=True,
    )


def load_model(
    spec: LoadSpec,
    *,
    slots: int = 1,
    backend: str = "llama",
    extra: dict[str, Any] | None = None,
    breach: Callable[[LocalrunError], None] | None = None,
    warn: Callable[[str], None] | None = None,
    before_build: Callable[[], None] | None = None,
    fallback_ctx: int | None = None,
    split: bool = False,
) -> Loaded:
    """Load the spec's model, with its parameters and context, into an engine of `slots` slots.

    `extra` holds the fake backend's settings for tests. `warn` hears each load warning.
    `before_build` runs once the load is known to fit, before the engine is made.
    `fallback_ctx` is a smaller num_ctx to load where the spec's does not fit (`fitted`).
    `split`: across LOCALRUN_WORKERS, in a runner of its own (a failing worker ends it).
    """
    started = time.perf_counter()
    model = spec.model
    try:
        fit_mod.check_present(model)
        parameters = dict(spec.parameters)
        build = None
        if backend != "fake":  # the fake engine runs on the CPU, its runner without llama_cpp
            from localrun.engine.library.buildinfo import build_info

            build = build_info()
        notes: list[str] = []
        warnings: list[str] = []

        def warned(message: str) -> None:
            warnings.append(message)
            if warn is not None:
                warn(message)

        found = _workers(warned, split) if build is not None else []
        available = fit_mod.available_memory()
        parameters, plan = fitted(
            model, parameters, spec.context, slots, build, available, fallback_ctx, found
        )
        load_options = options_for(model, parameters, notes, warned, plan)
        if before_build is not None:
            before_build()
        path = str(model.model_path)
        trained = plan.header.arch_value("context_length")
        try:
            with _watch(str(model.name), plan, available, breach):
                engine = _build(backend, path, load_options, slots, extra or {}, trained)
        except InvalidGGUFError as exc:
            raise fit_mod.damaged(model, exc) from None
    except LocalrunError as exc:
        raise fit_mod.scrubbed(exc, model) from None
    choice = view.template_choice(model, plan.header)
    template = choice.source
    with contextlib.suppress(LocalrunError):  # a broken template fails its requests, with why
        template_mod.prepare(template)
    if choice.base:
        warned(f"{model.name}: {choice.reason}")
    prompter = Prompter(model, parameters, template, engine, stop_tokens_for(template, engine))
    info = _ready_info(
        engine, plan, [*notes, *warnings], time.perf_counter() - started, native=backend != "fake"
    )
    return Loaded(engine, prompter, info, notes, warnings)


def _watch(
    name: str, plan: fit_mod.Fit, available: int, breach: Callable[[LocalrunError], None] | None
) -> AbstractContextManager[Any]:
    """The LoadWatch of a load with `breach` (its time limit and memory bound), else nothing."""
    if breach is None:
        return contextlib.nullcontext()
    # A worker's tensors are read from this machine's file (mapped) as they are sent.
    held = plan.plan.ram_bytes + plan.plan.vram_bytes + plan.plan.split.remote_bytes
    return LoadWatch(
        name,
        limit=load_limit(held, available),
        timeout_s=limits.load_timeout(),
        breach=breach,
    )


def fitted(
    model: Model,
    parameters: dict[str, Any],
    num_ctx: int,
    slots: int,
    build: fit_mod.Build | None,
    available: int,
    fallback_ctx: int | None = None,
    workers: list[Any] | None = None,
) -> tuple[dict[str, Any], fit_mod.Fit]:
    """Return the parameters a load with a context of `num_ctx` goes ahead with, and their plan.

    The load is refused (check_memory) when it cannot fit in `available` bytes. `fallback_ctx`
    is the num_ctx a request asked for, which the scheduler rounded up to `num_ctx`. That
    smaller context is loaded instead where the rounded one does not fit in memory or puts
    fewer layers on the GPU: rounding up saves reloads, never speed or a load.
    """
    found = tuple(workers or ())
    plan = fit_mod.plan_fit(
        model, parameters, num_ctx=num_ctx, slots=slots, build=build, workers=found
    )
    if fallback_ctx is not None and 0 < fallback_ctx < plan.num_ctx:
        smaller = {**parameters, "num_ctx": fallback_ctx}
        least = fit_mod.plan_fit(
            model, smaller, num_ctx=fallback_ctx, slots=slots, build=build, workers=found
        )
        room = available or fit_mod.available_memory()  # as check_memory counts it
        if plan.plan.ram_bytes > room or plan.plan.n_gpu_layers < least.plan.n_gpu_layers:
            parameters, plan = smaller, least
    fit_mod.check_memory(model, plan, parameters, slots=slots, available=available)
    return parameters, plan


def _ready_info(
    engine: Engine, plan: fit_mod.Fit, notes: list[str], load_s: float, *, native: bool
) -> protocol.ReadyInfo:
    offload = plan.plan
    # The checkpoints its slots may keep grow after the load: counted from the start.
    size = offload.vram_bytes + offload.ram_bytes + fit_mod.checkpoint_bytes(plan, engine.n_slots)
    runtime = offload.runtime_bytes  # where the model runs is told by its own memory alone
    engine_runtime, devices = _engine_runtime() if native else ("", [])
    return protocol.ReadyInfo(
        n_ctx=engine.n_ctx,
        n_ctx_train=engine.n_ctx_train,
        slots=engine.n_slots,
        size=size,
        size_vram=offload.vram_bytes,
        gpu_layers=offload.n_gpu_layers,
        layers=offload.total_layers,
        # Every layer on the GPU reads "100% GPU", as in Ollama, though llama.cpp keeps the
        # token embeddings (and a CPU compute buffer) in RAM.
        processor=(
            _split_text(offload)
            if offload.split.workers
            else "100% GPU"
            if offload.total_layers and offload.n_gpu_layers >= offload.total_layers
            else protocol.processor_text(size - runtime, offload.vram_bytes - runtime)
        ),
        split=list(offload.split.shares),
        load_s=load_s,
        notes=notes,
        runtime=runtime,
        engine_runtime=engine_runtime,
        devices=devices,
    )


def _split_text(offload: Any) -> str:
    """Where a split model runs, by its layers: "34%/66% CPU/2 workers"."""
    split = offload.split
    total = max(1, offload.total_layers)
    remote = round(100 * split.remote_layers / total)
    here = "GPU" if offload.gpu is not None else "CPU"
    count = len(split.workers)
    return f"{100 - remote}%/{remote}% {here}/{count} worker{'s' if count != 1 else ''}"


def _engine_runtime() -> tuple[str, list[str]]:
    """Return the GPU runtime and devices of this runner's llama.cpp.

    Not for the fake engine, which never imports llama_cpp.
    """
    from localrun.engine.library.buildinfo import build_info

    build = build_info()
    return build.runtime, [str(d) for d in build.gpu_devices]


def _build(
    backend: str,
    path: str,
    options: LoadOptions,
    slots: int,
    extra: dict[str, Any],
    trained: Any = None,
) -> Engine:
    """Make the engine of `backend` for the model at `path`.

    The fake is told the context the model was trained on (`trained`, from the header), which
    llama.cpp reads itself.
    """
    if backend == "fake":
        from localrun.engine.fake import FakeBatchEngine

        replies = extra.get("replies") or ["Hello!"]
        delay = extra.get("delay") or 0.0
        if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
            raise BadRequestError("replies must be a list of strings")
        if not isinstance(delay, int | float) or delay < 0:
            raise BadRequestError("delay must be a number of seconds")
        deaf = extra.get("deaf") or 0.0
        if not isinstance(deaf, int | float) or deaf < 0:
            raise BadRequestError("deaf must be a number of seconds")
        dims = extra.get("dims") or 8
        if isinstance(dims, bool) or not isinstance(dims, int) or dims < 1:
            raise BadRequestError("dims must be a whole number of at least 1")
        return FakeBatchEngine(
            path,
            options,
            slots,
            trained=trained if isinstance(trained, int) and trained > 0 else 0,
            replies=replies,
            delay=float(delay),
            hang=bool(extra.get("hang")),
            deaf=float(deaf),
            dims=dims,
        )
    from localrun.engine.batch import BatchEngine

    engine = BatchEngine(path, options, slots)
    if options.workers:  # a worker that stops answering ends this runner, not holds it
        from localrun.runtimes import rpc

        rpc.bound(options.workers, limits.worker_timeout())
    return engine


def options_for(
    model: Model,
    parameters: dict[str, Any],
    notes: list[str],
    warn: Callable[[str], None],
    fit: fit_mod.Fit,
) -> LoadOptions:
    """Turn the model's parameters and its fit into concrete load options.

    The fit is planned for the slots it loads with. The options include threads, context and
    GPU layers.
    """
    from localrun.hardware import system
    from localrun.hardware.offload import DEFAULT_NUM_BATCH

    notes.append(fit.plan.reason)
    for warning in fit.warnings:
        warn(warning)
    return LoadOptions(
        num_ctx=fit.num_ctx,
        num_batch=parameters.get("num_batch", DEFAULT_NUM_BATCH),
        # More threads than cores only slows llama.cpp down (and 4096 of them stall a machine).
        num_thread=min(
            parameters.get("num_thread") or system.default_threads(), os.cpu_count() or 1
        ),
        adapt_threads=not parameters.get("num_thread"),
        num_gpu=fit.plan.n_gpu_layers,
        main_gpu=parameters.get("main_gpu", 0),
        use_mmap=parameters.get("use_mmap", True),
        adapters=tuple((str(path), 1.0) for path in model.adapter_paths),
        splits=tuple(str(path) for path in model.model_parts[1:]),
        draft=str(model.draft_path) if model.draft_path else None,
        draft_num_gpu=999 if fit_mod.draft_offloaded(fit.plan) else 0,
        projector=str(model.projector_path) if model.projector_path else None,
        workers=fit.plan.split.workers,
        tensor_split=fit.plan.split.tensor_split,
    )


def _workers(warn: Callable[[str], None], split: bool) -> list[Any]:
    """The RPC workers (LOCALRUN_WORKERS) that answer now; each that does not is warned of.

    Only a runner of its own splits (`split`): llama.cpp ends the process whose worker fails,
    which must not be `localrun run`'s.
    """
    from localrun.settings import config

    endpoints = config.workers()
    if not endpoints:
        return []
    if not split:
        warn(
            "LOCALRUN_WORKERS is for `localrun serve`: this model loads here alone (with a "
            "server running, `localrun run` splits it through the server)"
        )
        return []
    from localrun.hardware import workers

    found, problems = workers.survey(endpoints)
    for problem in problems:
        warn(problem)
    return found
