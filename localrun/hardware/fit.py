"""Memory fitting: plan how a stored model loads, and refuse a load that cannot fit.

The plan covers the context size, the GPU offload and the draft model. A load that cannot fit is
refused before anything is allocated. The errors for a model's missing or damaged stored files
are built here too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from localrun.errors import (
    CorruptBlobError,
    InvalidGGUFError,
    InvalidParameterError,
    LocalrunError,
    MissingBlobError,
    ModelLoadError,
)
from localrun.gguf import memory
from localrun.model.stored import Model
from localrun.settings import limits
from localrun.store import links as links_mod


def damaged(model: Model, exc: InvalidGGUFError) -> CorruptBlobError:
    """Return the error for a stored file of `model` that is no longer valid GGUF.

    For a file linked in place (`create --link`), it names the user's original, changed since.
    Otherwise it names the damaged blob.
    """
    path, what = _file_named(model, exc.file)
    reason = exc.reason or _BLOB_PATH.sub("the file", exc.message)
    name = model.name
    linked = links_mod.original_in(model.store_root, path.name)
    if linked is None:
        return CorruptBlobError(
            f"{what} of {name} (blob sha256:{path.name[7:19]}) is damaged: {reason}",
            hint=f"run `localrun verify` to see what else it affects, then `localrun rm {name}` "
            "and pull or create it again",
        )
    recorded = next((x.size for x in model.manifest.layers if x.digest[7:] == path.name[7:]), None)
    try:
        now: int | None = path.stat().st_size
    except OSError:
        now = None
    if recorded is not None and now is not None and now != recorded:
        change = f"its size went from {recorded:,} to {now:,} bytes"
    else:
        change = "its content no longer matches its checksum"
    return CorruptBlobError(
        f"{what} of {name}, {linked}, changed since it was linked ({change}) and is no longer "
        f"a valid GGUF file: {reason}",
        hint=f"put the file back (or a new version of it) at {linked}, then run "
        f"`localrun show {name} --modelfile | localrun create {name} --link -f -`",
    )


def check_present(model: Model) -> None:
    """Raise MissingBlobError for the first stored file of `model` that is gone.

    A file is gone when it was removed after the model was resolved, or the store is damaged.
    A runner's lease (store.leases) keeps its files.
    """
    for path, what in _files(model):
        if not path.is_file():
            raise MissingBlobError(
                f"{what} of {model.name} (blob sha256:{path.name[7:19]}) is missing from the store",
                hint=f"retry; if it is still missing, run `localrun verify`, then pull or create "
                f"{model.name} again",
            )


def _file_named(model: Model, name: str) -> tuple[Path, str]:
    """Return `model`'s file named `name` (else the model file), and what it is to the model."""
    files = _files(model)
    for path, what in files:
        if str(path) == name:
            return path, what
    return files[0]


def _files(model: Model) -> list[tuple[Path, str]]:
    """Every file of `model` a load reads, with what it is to the model."""
    parts = model.model_parts or [model.model_path]
    files = [
        (p, "the model file" if len(parts) == 1 else f"part {i + 1} of the model file")
        for i, p in enumerate(parts)
    ]
    files += [(p, "an adapter") for p in model.adapter_paths]
    files += [(model.draft_path, "the draft model")] if model.draft_path else []
    files += [(model.projector_path, "the projector")] if model.projector_path else []
    return files


@dataclass
class Fit:
    """How a model would be loaded: its header, context size, offload plan and warnings."""

    header: Any
    num_ctx: int
    plan: Any  # offload.OffloadPlan
    warnings: list[str]


class Build(Protocol):
    """What the llama.cpp build can offload; the engine's BuildInfo is one.

    The engine sits above this wing, so it hands its build in rather than being asked.
    """

    @property
    def gpu_offload(self) -> bool: ...  # a GPU backend with a device
    @property
    def runtime_warning(self) -> str | None: ...  # why the selected GPU runtime is not in use
    @property
    def gpu_devices(self) -> Sequence[Any]: ...  # the GPUs ggml registered, with their memory
    @property
    def backends(self) -> Sequence[str]: ...  # ggml backend names, e.g. ["CUDA", "CPU"]


def plan_fit(
    model: Model,
    parameters: dict[str, Any],
    *,
    num_ctx: int | None = None,
    slots: int = 1,
    build: Build | None = None,
    workers: Sequence[Any] = (),
) -> Fit:
    """Plan the GPU offload for `model` with a context of `num_ctx`, without loading it.

    `show --fit` uses it too. With num_ctx None, the context is the one `parameters` give
    (Model.context). num_ctx is per sequence; the KV cache is sized for `slots` of them.
    `build` is the llama.cpp build the model will run on (engine.library.buildinfo.build_info()).
    Without one, the plan is for the CPU alone and probes for no GPU. That serves an engine that
    never uses one (the scripted fake), whose runner then starts without importing llama_cpp.
    With `workers` (hardware.workers.Worker, that answered), the layers are split across them.
    """
    header, draft = _model_header(model), _draft_header(model)
    return _plan_fit(model, header, draft, parameters, num_ctx, slots, build, workers)


def _plan_fit(
    model: Model,
    header: Any,
    draft: Any,
    parameters: dict[str, Any],
    num_ctx: int | None,
    slots: int,
    build: Build | None,
    workers: Sequence[Any] = (),
) -> Fit:
    """plan_fit on the headers of the model and of its draft model (None without one)."""
    from localrun.hardware import system
    from localrun.hardware.offload import DEFAULT_NUM_BATCH, plan_offload

    asked = parameters.get("num_ctx")
    if num_ctx is None:
        num_ctx = model.context(asked)
    warnings = []
    trained = model.trained
    if isinstance(asked, int) and trained is not None and asked > trained == num_ctx:
        warnings.append(
            f"num_ctx {asked} is larger than the {num_ctx} tokens {model.name} was trained on; "
            f"using {num_ctx}"
        )
    requested = parameters.get("num_gpu")
    offload, gpus = False, []
    if build is not None:
        offload = build.gpu_offload
        if build.runtime_warning:
            warnings.append(build.runtime_warning)
        if offload and build.gpu_devices:  # as llama.cpp sees them, with the memory they report
            gpus = system.from_devices(build.gpu_devices)
        elif offload:
            gpus = system.usable_gpus(system.detect().gpus, build.backends)
    num_batch = parameters.get("num_batch", DEFAULT_NUM_BATCH)
    if workers and build is not None:
        from localrun.hardware.split import plan_split

        plan = plan_split(
            header,
            num_ctx,
            workers=workers,
            gpus=gpus if offload else [],
            local_bytes=_total_memory(),
            num_parallel=slots,
            num_batch=num_batch,
        )
    else:
        plan = plan_offload(
            header,
            num_ctx,
            requested=None if requested in (None, -1) else requested,
            gpus=gpus,
            gpu_offload_supported=offload,
            num_parallel=slots,
            num_batch=num_batch,
        )
    if build is None:
        plan.reason = "this engine runs on the CPU only"
    if draft is not None:
        _plan_draft(draft, plan, num_ctx, slots, parameters)
    if model.projector_path is not None:
        _plan_projector(model.projector_path, plan)
    return Fit(header, num_ctx, plan, warnings + list(plan.warnings))


def _plan_projector(path: Path, plan: Any) -> None:
    """Add the projector's weights to the plan, and a quarter more for its compute buffers.

    The quarter covers an image's encode. The projector goes on the GPU when any layer does,
    since libmtmd follows the model there, unless the model is split across workers: then it
    runs on the CPU (engine.batch).
    """
    try:
        size = path.stat().st_size
    except OSError:
        return  # the load says what is missing
    if plan.gpu is not None and plan.n_gpu_layers > 0 and not plan.split.workers:
        plan.vram_bytes += size * 5 // 4
    else:
        plan.ram_bytes += size * 5 // 4


def _plan_draft(
    header: Any, plan: Any, num_ctx: int, slots: int, parameters: dict[str, Any]
) -> None:
    """Add the draft model's weights, KV cache and compute buffer to the plan.

    They go on the GPU when the whole model is there, on the CPU otherwise (see draft_offloaded).
    """
    from localrun.hardware.offload import DEFAULT_NUM_BATCH, plan_offload

    draft = plan_offload(
        header,
        num_ctx,
        requested=0,
        gpus=[],
        gpu_offload_supported=False,
        num_parallel=slots,
        num_batch=parameters.get("num_batch", DEFAULT_NUM_BATCH),
    )
    if draft_offloaded(plan):
        plan.vram_bytes += draft.ram_bytes
    else:
        plan.ram_bytes += draft.ram_bytes
    plan.kv_bytes += draft.kv_bytes


def _model_header(model: Model) -> Any:
    """The header of `model`'s file, with the tensors of every part of a split model."""
    from localrun.gguf import scan as scan_mod

    try:
        headers = [scan_mod.scan(path) for path in (model.model_parts or [model.model_path])]
    except InvalidGGUFError as exc:
        raise damaged(model, exc) from None
    # The planner sizes layers from every part's tensors (scan results are shared: copy).
    return dataclasses.replace(headers[0], tensors=[t for h in headers for t in h.tensors])


def _draft_header(model: Model) -> Any:
    """The header of `model`'s draft model, or None without one."""
    from localrun.gguf import scan as scan_mod

    if model.draft_path is None:
        return None
    try:
        return scan_mod.scan(str(model.draft_path))
    except InvalidGGUFError as exc:
        raise damaged(model, exc) from None


@dataclass(frozen=True)
class Footprint:
    """The memory a model takes, planned from its headers alone, which are read once.

    The scheduler counts it for a model whose runner has not measured it yet. It is the CPU
    plan's RAM: weights, the KV cache of every slot and compute buffers, the draft model's too.
    That is what a runner on the CPU reports once loaded, and a GPU plan's whole less the GPU
    runtime. It adds the checkpoints each slot may keep of a sliding window or a recurrent state
    (engine.checkpoints), which grow after the load.
    """

    model: Model
    header: Any
    draft: Any

    def bytes(self, options: dict[str, Any], slots: int, num_ctx: int | None = None) -> int:
        """Return the bytes a load with `options` and `slots` takes.

        `options` go over the model's parameters. The context is `num_ctx`, or when it is None,
        the one `options` give (Model.context).
        """
        parameters = {**self.model.parameters, **options}
        fit = _plan_fit(self.model, self.header, self.draft, parameters, num_ctx, slots, None)
        return int(fit.plan.ram_bytes) + checkpoint_bytes(fit, slots)


def checkpoint_bytes(fit: Fit, slots: int) -> int:
    """Return the memory the checkpoints of `slots` slots may take beside the KV cache.

    The checkpoints (engine.checkpoints) keep a sliding window or a recurrent state, up to
    LOCALRUN_CHECKPOINT_MAX_BYTES (256 MiB) a slot, and grow after the load. They are counted so
    that LOCALRUN_NUM_PARALLEL slots of such a model cannot pass the machine's memory.
    """
    _, count, most = limits.checkpoints()
    window = getattr(fit.header, "sliding_window", None) or 0
    kind = memory.kind(getattr(fit.header, "architecture", None), window)
    slot_kv = fit.plan.kv_bytes // max(1, slots)
    return slots * memory.checkpoint_bytes(kind, window, fit.num_ctx, slot_kv, count, most)


def footprint(model: Model) -> Footprint:
    """Return `model`'s Footprint, reading and checking its headers.

    Raises CorruptBlobError if a file is damaged.
    """
    return Footprint(model, _model_header(model), _draft_header(model))


def draft_offloaded(plan: Any) -> bool:
    """Whether a draft model goes to the GPU: when the model is there whole."""
    return bool(plan.gpu is not None and plan.n_gpu_layers >= plan.total_layers)


def _total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def available_memory() -> int:
    """Bytes a load may use now: free and reclaimable RAM, and free swap."""
    import psutil

    return int(psutil.virtual_memory().available + psutil.swap_memory().free)


def check_memory(
    model: Model, fit: Fit, parameters: dict[str, Any], *, slots: int = 1, available: int = 0
) -> None:
    """Refuse, before anything is allocated, a load whose planned RAM exceeds what is available.

    llama.cpp sizes the KV cache from num_ctx without asking: num_ctx 16777216 would take a
    runner past every limit (or abort it) instead of answering. `available` defaults to
    `available_memory()`.
    """
    needed = fit.plan.ram_bytes + checkpoint_bytes(fit, slots)
    available = available or available_memory()
    if needed > available:
        num_ctx = fit.num_ctx if "num_ctx" in parameters else None
        raise too_large(str(model.name), needed, available, num_ctx=num_ctx, slots=slots)


def too_large(
    name: str,
    needed: float,
    available: float,
    *,
    num_ctx: int | None,
    slots: int = 1,
    where: str = "",
    hint: str = "use a smaller num_ctx, or set LOCALRUN_NUM_PARALLEL lower",
) -> LocalrunError:
    """Return the refusal of a load of `name` that needs more memory than is `available`.

    `where` says with what unloaded. When the request set num_ctx, the error names it and is
    a 400 with `hint`; otherwise it is a ModelLoadError.
    """
    have = f"about {_gb(available)} is available{where}"
    if num_ctx is not None:
        per = f" ({slots} slots)" if slots > 1 else ""
        return InvalidParameterError(
            f"num_ctx {num_ctx} needs about {_gb(needed)} of memory for {name}{per}; {have}",
            hint=hint,
        )
    return ModelLoadError(
        f"{name} needs about {_gb(needed)} of memory to load; {have}",
        hint="close other programs, set a smaller num_ctx, or use a smaller quantization",
    )


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size < 1e12 else f"{size / 1e12:.1f} TB"


# A stored file's path (…/blobs/sha256-<hex>) says where the store is: clients get the model's
# name instead, the server log the details.
_BLOB_PATH = re.compile(r"(?:[^\s'\"()]*[/\\])?blobs[/\\]sha256-[0-9a-f]{64}")


def scrubbed(exc: LocalrunError, model: Model) -> LocalrunError:
    """`exc` with the paths of stored files replaced by the model's name."""
    message = _BLOB_PATH.sub(f"the file of {model.name}", exc.message)
    if message != exc.message:
        exc.message = message
        exc.args = (message,)
    return exc
