"""Loaded models of `localrun serve`: one runner subprocess each, keep-alive, memory and a queue,
and the upstream servers that answer for the models the store does not have.

Each loaded model lives in its own `python -m localrun.worker` process and answers up to
`num_parallel` requests at once. The package, one concern a module, imports flowing down:

    core.py     the Scheduler: the request methods the server calls (a GenRequest to
                `generate`), routing a name to an upstream or a local runner, admission and
                the waiting line
    local.py    the local runner pool: starting and loading runner processes, keep-alive
                timers, evictions, deaths, unloading and stopping
    budget.py   the memory budget, size estimates from what runners measured, which idle
                models to evict (least recently used first), num_ctx that cannot fit
    runners.py  one runner's state (slots, keep-alive, load options it matches) and how
                /api/ps shows it
    targets.py  which model a name resolves to; catalog models imported into the store on
                first use, in a child process (importer.py is that child)
    remote/     the remote runners: upstreams.py (upstreams.toml's servers, routing among
                them: affinity, fewest in flight; health checks, ejection, retries,
                cancellation), wire.py (a GenRequest as an upstream's OpenAI or Ollama API
                call, its streamed answer back as runner events), read.py (an upstream's
                answer read within bounds: bytes, lines, JSON objects), limit.py (an
                upstream's answer held to the client's limit)

The runner processes themselves (pipes, events, stderr, stopping and reaping) are handled by
localrun.worker.process. A runner also exits when the server dies: its stdin reaches EOF.
"""

from localrun.scheduler.core import Embeddings, Scheduler
from localrun.scheduler.runners import RunningModel
from localrun.worker.process import Stream

__all__ = ["Embeddings", "RunningModel", "Scheduler", "Stream"]
