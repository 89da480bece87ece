"""The memory side of the scheduler: what the loaded models take, and which idle ones make room.

The budget is a fixed number of bytes, or (by default) the memory available at each load plus
what the loaded models already take. A model's size before its first load is estimated from its
weights; once a runner reports what it took (weights, KV cache and compute buffers), that
measure is the estimate for the next load of the same model with the same load options.

Room for a load is made by evicting idle models, least recently used first, within
`max_loaded` models and the budget. A context size whose KV cache cannot fit in the budget
(scaled from what the loaded runner measured) is refused before the runner is given up for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from localrun.errors import InvalidParameterError
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

        used = sum(r.size for r in runners if r.state == "ready")
        return int(psutil.virtual_memory().available) + used

    def measured(self, runner: Runner, size: int) -> None:
        """Remember the `size` a runner reported once loaded, for the next load of its model
        with its load options."""
        self._sizes[_size_key(runner.name, runner.digest, runner.load_options)] = size

    def estimate(self, target: Target, load_options: dict[str, Any]) -> int:
        """The bytes a load of `target` with `load_options` is expected to take."""
        key = _size_key(target.name, target.digest, load_options)
        return self._sizes.get(key, target.weights)

    def make_room(
        self, estimate: int, runners: Sequence[Runner], max_loaded: int
    ) -> list[Runner] | None:
        """The idle runners to stop (least recently used first) so that a model taking
        `estimate` bytes loads beside the others within `max_loaded` models and the budget;
        None if stopping every idle one is not enough."""
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
        """The idle runners other than `loaded` to stop (least recently used first) while the
        measured sizes of `runners` exceed the budget.

        Before its first load a model's size is estimated from its weights alone; the runner
        then reports weights + KV cache, which may not fit beside the models kept for it.
        Lazy: the caller stops each victim (taking it out of `runners`) before the sizes are
        summed again for the next.
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
            raise InvalidParameterError(
                f"num_ctx {num_ctx} needs about {_gb(needed)} of memory for {target.name} "
                f"({info.slots} slots); about {_gb(budget)} is available",
                hint=f"use a smaller num_ctx (it is {info.n_ctx} now), or set "
                "LOCALRUN_NUM_PARALLEL lower",
            )


def _idle_lru(runners: Iterable[Runner]) -> list[Runner]:
    """The ready runners with no request, least recently used first."""
    idle = (r for r in runners if r.busy == 0 and r.state == "ready")
    return sorted(idle, key=lambda r: r.last_used)


def _size_key(name: str, digest: str, load_options: dict[str, Any]) -> tuple[str, str, str]:
    return (name, digest, repr(sorted(load_options.items())))


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB"
