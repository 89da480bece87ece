"""Loaded models of `localrun serve`: one runner subprocess each, keep-alive, memory, a queue.

Each loaded model lives in its own `python -m localrun.worker` process and answers up to
`num_parallel` requests at once. localrun.worker.process handles the processes themselves. A
runner also exits when the server dies: its stdin reaches EOF. One concern a module:

    core.py     the Scheduler: the server's request methods, routing, admission, the queue
    local.py    the local runner pool: loading, keep-alive timers, evictions, deaths, stopping
    budget.py   the memory budget, size estimates, which idle models to evict, num_ctx limits
    runners.py  one runner's state (slots, keep-alive, load options) and how /api/ps shows it
    targets.py  which model a name resolves to; catalog models imported on first use
    importer.py the child process that imports a catalog model into the store
    remote/     the upstreams of upstreams.toml: routing among them, the wire, bounded reads
"""

from localrun.scheduler.core import Embeddings, Scheduler
from localrun.scheduler.runners import RunningModel
from localrun.worker.process import Stream

__all__ = ["Embeddings", "RunningModel", "Scheduler", "Stream"]
