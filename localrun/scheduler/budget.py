"""The memory side of the scheduler: what the loaded models take, and which idle ones make room.

- The budget is a fixed number of bytes, or by default the memory available at each load plus the
  loaded models' KV caches and compute buffers. Their mapped weights already count as available.
- Before its first load, a model's size is planned from its headers at the load options asked
  for. Once a runner reports what it took, that measure is the estimate for the next such load.
- A load larger than the whole budget (every other model unloaded, free swap counted) is refused
  before any runner starts: a 400 naming num_ctx when the request set it.
- Otherwise idle models are unloaded, least recently used first, within `max_loaded` and the
  budget. A load that fits only once busy models finish waits.
- A context size that cannot fit is refused before the runner is given up for it.

num_ctx is held to the trained context (Target.trained), so a client cannot make a runner larger
than the model can use. A num_ctx rounded up to a power of two (local.LocalPool.start_runner)
loads only where the num_ctx itself fits, evicting no more.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from localrun.hardware.fit import too_large
from localrun.scheduler.runners import Runner
from localrun.scheduler.targets import Target


class Budget:
    """The memory budget and the sizes runners measured, for estimates."""

    def __init__(self, limit: int | None) -> None:
        """`limit` None follows the available memory at each load."""
        self.limit = limit
        self._sizes: dict[tuple[str, str, str], int] = {}  # measured sizes, for estimates

    def available(self, runners: Sequence[Runner]) -> int:
        """The bytes the loaded `runners` may take together."""
        if self.limit is not None:
            return self.limit
        import psutil

        held = sum(_given_back(r) for r in runners if r.state == "ready")
        return int(psutil.virtual_memory().available) + held

    def check_alone(
        self,
        target: Target,
        estimate: int,
        load_options: dict[str, Any],
        slots: int,
        runners: Sequence[Runner],
    ) -> None:
        """Refuse a load of `estimate` bytes that would not fit with every other model unloaded.

        Free swap is counted, as the runner's own check counts it.
        """
        budget = self.room_alone(runners)
        if estimate > budget:
            raise too_large(
                target.name,
                estimate,
                budget,
                num_ctx=load_options.get("num_ctx"),
                slots=slots,
                where=" with every other model unloaded",
            )

    def room_alone(self, runners: Sequence[Runner]) -> int:
        """Return the bytes one load may take with every other model unloaded.

        Free swap is counted when the budget follows the available memory.
        """
        budget = self.available(runners)
        if self.limit is None:
            import psutil

            budget += int(psutil.swap_memory().free)
        return budget

    def measured(self, runner: Runner, size: int) -> None:
        """Remember the `size` a loaded runner reported, for the next load with the same options."""
        self._sizes[_size_key(runner.name, runner.digest, runner.load_options)] = size

    def estimate(
        self,
        target: Target,
        load_options: dict[str, Any],
        slots: int,
        runners: Sequence[Runner] = (),
    ) -> int:
        """The bytes a load of `target` with `load_options` and `slots` is expected to take."""
        key = _size_key(target.name, target.digest, load_options)
        measured = self._sizes.get(key)
        if measured is not None:
            return measured
        if target.footprint is not None:
            whole = target.footprint.bytes(load_options, slots, target.context(load_options))
        else:
            whole = target.weights
        from localrun.settings import config

        if config.workers():
            # Split across RPC workers, only a share stays here: the runner asks the workers,
            # plans the split and refuses what does not fit; until then the whole machine is room.
            return min(whole, self.room_alone(runners))
        return whole

    def make_room(
        self, estimate: int, runners: Sequence[Runner], max_loaded: int
    ) -> list[Runner] | None:
        """Return the idle runners to stop so that a model of `estimate` bytes fits beside the rest.

        Runners are stopped least recently used first, within `max_loaded` models and the budget.
        None if stopping every idle one is not enough.
        """
        keep = list(runners)
        idle = _idle_lru(keep)
        budget = self.available(runners)
        evict: list[Runner] = []

        def fits() -> bool:
            if len(keep) >= max_loaded:
                return False
            # With nothing else loaded a model gets its chance even past the estimate.
            return not keep or sum(r.size for r in keep) + estimate <= budget

        while not fits() and idle:
            victim = idle.pop(0)
            keep.remove(victim)
            evict.append(victim)
        if not fits():
            return None
        return evict

    def excess(self, loaded: Runner, runners: Sequence[Runner]) -> Iterator[Runner]:
        """Yield idle runners other than `loaded` to stop while `runners` exceed the budget.

        Runners go least recently used first, judged by their measured sizes. Before its first
        load a model's size is estimated from its weights alone. The runner then reports weights
        + KV cache, which may not fit beside the models kept for it. Lazy: the caller stops each
        victim (taking it out of `runners`) before the sizes are summed again for the next.
        """
        budget = self.available(runners)
        idle = _idle_lru(r for r in runners if r is not loaded)
        while idle and sum(r.size for r in runners) > budget:
            yield idle.pop(0)

    def check_fits(
        self,
        runner: Runner,
        target: Target,
        load_options: dict[str, Any],
        runners: Sequence[Runner],
    ) -> None:
        """Refuse a num_ctx whose KV cache cannot fit, before the runner is given up for it.

        The size per token of context is scaled from what the runner measured (weights + KV
        cache for n_ctx x slots); it includes the compute buffers too, so it errs on the large
        side, and only a context beyond the whole budget is refused. The GPU runtime's share
        does not grow with the context and is counted once.
        """
        num_ctx = load_options.get("num_ctx")
        info = runner.info
        if not isinstance(num_ctx, int) or info is None or num_ctx <= info.n_ctx:
            return
        if target.digest != runner.digest:
            return
        fixed = target.weights + info.runtime
        per_token = max(0, info.size - fixed) / max(1, info.n_ctx * info.slots)
        needed = fixed + per_token * num_ctx * info.slots
        budget = self.available(runners)
        if needed > budget:
            raise too_large(
                target.name,
                needed,
                budget,
                num_ctx=num_ctx,
                slots=info.slots,
                hint=f"use a smaller num_ctx (it is {info.n_ctx} now), or set "
                "LOCALRUN_NUM_PARALLEL lower",
            )


def _given_back(runner: Runner) -> int:
    """Return the memory unloading `runner` gives back beyond what the kernel counts as available.

    That is all it holds less its mapped weights, which are page cache, reclaimable while mapped.
    """
    mapped = 0 if runner.load_options.get("use_mmap") is False else runner.weights
    return max(0, runner.size - mapped)


def _idle_lru(runners: Iterable[Runner]) -> list[Runner]:
    """The ready runners with no request, least recently used first."""
    idle = (r for r in runners if r.busy == 0 and r.state == "ready")
    return sorted(idle, key=lambda r: r.last_used)


def _size_key(name: str, digest: str, load_options: dict[str, Any]) -> tuple[str, str, str]:
    return (name, digest, repr(sorted(load_options.items())))
