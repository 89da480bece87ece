"""Store jobs (create, pull, push, catalog import) run in a short-lived subprocess.

Why a subprocess: these read GGUF headers with the `gguf` package, which imports numpy, and the
server process must stay small (no numpy, gguf or llama_cpp in it). It also keeps a hostile
uploaded file away from the server's memory: a parser blow-up ends the job, not the server.

The server side (`run`) writes one JSON request line to `python -m localrun.server.ollama.jobs`
and reads JSON event lines back (the lines are spelt out above `_run`). The job process serves
it in `_serve_one`.

Jobs take turns (`Turns`, LOCALRUN_MAX_JOBS), network jobs and local ones in separate lines. A
network job's memory is capped (`_cap_memory`, LOCALRUN_PULL_MAX_MEMORY). A job stopped before
it ended (its client left) has the temporary files it was writing removed from the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import ssl
import sys
import tempfile
import weakref
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import IO, Any

from localrun.errors import BusyError, HubError, LocalrunError
from localrun.host import limits as host_limits
from localrun.host import selfexec

Event = dict[str, Any]
_KILL_TIMEOUT_S = 5.0
MAX_WAITING = 64
NETWORK = ("pull", "push")  # the jobs whose pace and input are a remote peer's


# Jobs take turns: at most LOCALRUN_MAX_JOBS run at once, the next wait in line (a streamed
# create says it is waiting), and past MAX_WAITING more a request is refused as busy (503).
# Network jobs (pull, push: a remote peer's pace) and local ones (create, import: this machine's
# cores and disk) wait in separate lines, so a registry that stalls never holds a create. Two
# stalled pulls once held both turns, and another client's create waited 45 s. Each job is told
# its share of the cores (`threads`, which a quantization uses), so eight quantizations never
# run thirty-two threads on two cores.
class Turns:
    """The jobs of one event loop: how many run, and the line of those waiting."""

    def __init__(self) -> None:
        self.running = 0
        self.waiting: list[asyncio.Future[None]] = []

    def check(self) -> None:
        """Refuse a job that could only wait past MAX_WAITING (before an answer starts)."""
        if len(self.waiting) >= MAX_WAITING:
            raise BusyError(
                f"the server is busy: {len(self.waiting)} store jobs are already waiting",
                hint="retry later, or raise LOCALRUN_MAX_JOBS on the server",
                retry_after=10,
            )

    async def take(self) -> AsyncGenerator[Event, None]:
        """Wait for a turn (yielding one progress event while waiting)."""
        from localrun.settings import config

        if self.running < config.max_jobs() and not self.waiting:
            self.running += 1
            return
        self.check()
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(turn)
        try:
            yield {"event": "progress", "status": f"waiting for {self.running} other jobs to end"}
            await turn  # handed over by give(): `running` already counts this job
        except BaseException:
            if turn in self.waiting:
                self.waiting.remove(turn)
            elif turn.done() and not turn.cancelled():
                self.give()  # handed a turn as it went away
            raise

    def give(self) -> None:
        """End a job's turn: the next in line takes it."""
        while self.waiting:
            turn = self.waiting.pop(0)
            if not turn.done():
                turn.set_result(None)
                return
        self.running -= 1

    def threads(self) -> int:
        """A running job's share of the cores."""
        from localrun.hardware import system

        return max(1, system.default_threads() // max(1, self.running))


_TURNS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[bool, Turns]] = (
    weakref.WeakKeyDictionary()
)


def turns(request: dict[str, Any]) -> Turns:
    """The line the job `request` waits in: the running loop's network jobs, or its local ones.

    Each server has its own loop.
    """
    loop = asyncio.get_running_loop()
    lines = _TURNS.get(loop)
    if lines is None:
        lines = _TURNS[loop] = {True: Turns(), False: Turns()}
    return lines[request.get("op") in NETWORK]


async def run(request: dict[str, Any]) -> AsyncGenerator[Event, None]:
    """Run a job when its turn comes, yielding its progress events; raise its LocalrunError.

    Closing the iterator early (a client that went away) stops the job, or its wait.
    """
    line = turns(request)
    async with contextlib.aclosing(line.take()) as waiting:
        async for event in waiting:
            yield event
    try:
        async for event in _run(request, line.threads()):
            yield event
    finally:
        line.give()


# The lines between the server and a job's process:
#   -> {"op": "create", "store": ROOT, "model": NAME, "modelfile": TEXT, "quantize"?: TYPE}
#   -> {"op": "pull", "store": ROOT, "model": TEXT}
#   -> {"op": "push", "store": ROOT, "model": TEXT}
#   -> {"op": "import", "store": ROOT, "model": NAME}  (a catalog model or another runner's,
#                                                       no hubs)
#   <- {"event": "progress", "status": ..., "digest"?, "completed"?, "total"?}  (any number)
#   <- {"event": "done", "digest": "sha256:..."}  or  {"event": "error", "error": {...}}
async def _run(request: dict[str, Any], threads: int) -> AsyncGenerator[Event, None]:
    """Run a job in its process, with its share of the cores."""
    request = {**request, "threads": threads}
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *selfexec.command("localrun.server.ollama.jobs"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=None if _debug() else asyncio.subprocess.DEVNULL,
        env=env,
        limit=1024 * 1024,
    )
    assert proc.stdin is not None and proc.stdout is not None
    finished = False
    try:
        proc.stdin.write(json.dumps(request).encode() + b"\n")
        await proc.stdin.drain()
        proc.stdin.close()
        while True:
            line = await proc.stdout.readline()
            if not line:
                break
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event") if isinstance(event, dict) else None
            if kind == "progress":
                yield event
            elif kind == "done":
                finished = True
                return
            elif kind == "error":
                finished = True
                raise LocalrunError.from_dict(event.get("error") or {})
        code = await proc.wait()
        finished = True
        raise LocalrunError(
            f"the {request.get('op')} job ended unexpectedly (exit status {code})",
            hint="see the server's log; LOCALRUN_DEBUG=1 shows the job's output",
        )
    finally:
        # Shielded: a request whose client left is cancelled, and the cancellation is raised
        # again at every await of its scope, which stopped this cleanup at its first one (the
        # job's temporary file stayed in the store until `prune`).
        import anyio  # the server's: a job's own process never needs it

        with anyio.CancelScope(shield=True):
            await _stop(proc, request, finished)


async def _stop(proc: asyncio.subprocess.Process, request: dict[str, Any], finished: bool) -> None:
    """Wait for the job's process to end, then remove what a stopped job was writing.

    A job that had not finished is stopped, and killed if it will not stop.
    """
    if not finished and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), _KILL_TIMEOUT_S)
    except asyncio.TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    if not finished and request.get("store"):
        await asyncio.to_thread(_remove_temp_files, str(request["store"]), proc.pid)


def _remove_temp_files(root: str, pid: int) -> None:
    """The temporary files a stopped job left in the store."""
    from localrun.store.local import Store

    with contextlib.suppress(OSError, LocalrunError):
        Store(Path(root)).remove_temp_files(pid)


async def run_to_end(request: dict[str, Any]) -> None:
    async for _ in run(request):
        pass


def _debug() -> bool:
    from localrun.settings import config

    return config.debug()


# -- the job process ------------------------------------------------------------------------


# The modelfile of a create comes from the server, which only puts store blob paths and model
# names in it, never a path a client sent. Every job is an API client's (the CLI pulls, pushes
# and creates in its own process), so every job reaches registries as one: hosts.CLIENT, what
# the server's owner allows, never a client's `insecure`.
def _serve_one(request: dict[str, Any], out: IO[bytes]) -> str:
    from localrun.engine.library import quantize
    from localrun.recipes import create, modelfile
    from localrun.sources import obtain
    from localrun.sources.hosts import CLIENT
    from localrun.sources.registry import push
    from localrun.store import reference
    from localrun.store.local import Store

    def emit(event: Event) -> None:
        out.write(json.dumps(event).encode() + b"\n")
        out.flush()

    def report(event: create.Event) -> None:
        if event.status == "success":
            return  # the server sends its own success line
        item: Event = {"event": "progress", "status": event.status}
        for key in ("digest", "completed", "total"):
            if getattr(event, key) is not None:
                item[key] = getattr(event, key)
        emit(item)

    store = Store(Path(request["store"]))
    op = request.get("op")
    text = str(request.get("model", ""))
    ref = reference.parse(text)
    if op == "import":
        obtain.find(store, ref, report, pull_missing=False, reach=CLIENT)
        return ""
    if op == "pull":
        return obtain.pull_ref(store, ref, report, reach=CLIENT)
    if op == "push":
        return push.push(store, ref.typed, report, reach=CLIENT)
    if op == "create":
        parsed = modelfile.parse(str(request["modelfile"]))
        target = ref.typed
        # FROM a model name must never be taken for a relative path: resolve relative to an
        # empty folder of our own.
        with tempfile.TemporaryDirectory(prefix="localrun-create-") as empty:
            return create.create(
                store,
                target,
                parsed,
                Path(empty),
                report=report,
                find_base=obtain.base_finder(store, report, hubs=False, reach=CLIENT),
                quantize=quantize.for_create(request["quantize"], int(request.get("threads", 0)))
                if request.get("quantize")
                else None,
            )
    raise LocalrunError(f"unknown job {op!r}")


# Why the cap: a registry's 2.6 KB, inflated by httpx, took a pull job to 3.1 GB (issue 76).
# The decoding is bounded now (sources/bodies.py); the cap bounds whatever else a remote peer
# may find. Measured on 2 cores, a pull job holds 110 MB of data (52 MB resident) at its start,
# numpy's share the larger: a stack per BLAS thread, so more on more cores. That is why the cap
# is counted from the start and not from zero.
def _cap_memory(op: str) -> int | None:
    """Cap a network job's memory growth at LOCALRUN_PULL_MAX_MEMORY; return the growth allowed.

    The cap is on private memory (Linux: RLIMIT_DATA, the heap and private writable mappings;
    Windows: a Job Object), counted from what the job holds once its modules are in. It is 512 MiB
    by default. Past it the job ends with one line, not the machine in swap. None means no cap: a
    local job, or a system without one (macOS: host.limits). A local job has no cap because
    converting or quantizing a big model takes GBs, and it reads the store and checked uploads.
    """
    if op not in NETWORK:
        return None
    import gguf  # noqa: F401  (numpy: in before the start is measured, as said above)

    from localrun.settings import limits
    from localrun.sources import hf  # noqa: F401

    start = host_limits.private_bytes()
    if start is None:
        return None
    allowed = limits.pull_max_memory()
    if host_limits.cap_memory(start + allowed) is not None:
        return None
    return allowed


def out_of_memory(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, is an allocation that failed.

    Past the cap, a malloc says MemoryError, an mmap or a socket's buffer ENOMEM, and OpenSSL
    "malloc failure" (an SSL context made after the cap, loading its certificates).
    """
    seen: BaseException | None = exc
    for _ in range(5):  # a wrapped error: httpx's around the socket's or OpenSSL's
        if seen is None:
            return False
        if isinstance(seen, MemoryError) or getattr(seen, "errno", None) == errno.ENOMEM:
            return True
        if isinstance(seen, ssl.SSLError) and "malloc failure" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _out_of_memory(op: str, cap: int | None) -> LocalrunError:
    if cap is None:
        return LocalrunError(f"the {op} job ran out of memory", hint="see the server's log")
    return HubError(
        f"the {op} job reached its memory cap ({cap >> 20} MiB above its start) and was stopped",
        hint="what the registry or hub sent would have taken more; if a model really needs it, "
        "raise LOCALRUN_PULL_MAX_MEMORY on the server",
    )


def main() -> int:
    # Events go to a private copy of stdout; anything else printing to fd 1 lands on stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    request: dict[str, Any] = {}
    cap: int | None = None
    try:
        request = json.loads(sys.stdin.readline())
        cap = _cap_memory(str(request.get("op")))
        digest = _serve_one(request, out)
        out.write(json.dumps({"event": "done", "digest": digest}).encode() + b"\n")
        code = 0
    except LocalrunError as exc:
        out.write(json.dumps({"event": "error", "error": exc.to_dict()}).encode() + b"\n")
        code = 1
    except Exception as exc:  # reported as one line: the server turns it into a 500
        err = LocalrunError(f"the {request.get('op', '')} job failed: {type(exc).__name__}: {exc}")
        if out_of_memory(exc):
            err = _out_of_memory(str(request.get("op")), cap)
        out.write(json.dumps({"event": "error", "error": err.to_dict()}).encode() + b"\n")
        code = 1
    out.flush()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
