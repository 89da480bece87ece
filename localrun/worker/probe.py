"""Load a model in a child process before `localrun run` loads it in its own.

llama.cpp aborts (SIGABRT on a GGML_ASSERT), hangs or allocates without end on some model files
that pass every header check. In-process, that kills or freezes the command a person is typing
into, with a native backtrace. So a model not yet seen to load cleanly with this llama.cpp is
first loaded by a runner process: `python -m localrun.worker`, the server's runner, which loads
under the watchdog of localrun.worker.load_watch. A crash, a hang past LOCALRUN_LOAD_TIMEOUT or
a memory blow-up then costs the child, and the command fails with one line naming the model.

A clean load is remembered by the digests of the model's files and the llama.cpp version
(`$LOCALRUN_HOME/loaded/<key>`), so later runs load at once.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from localrun.errors import LocalrunError, ModelLoadError
from localrun.host import private, processes, selfexec
from localrun.host.processes import exit_text
from localrun.model.stored import LoadSpec, Model
from localrun.settings import config, limits
from localrun.worker import protocol

# Past the load timeout the runner stops itself; this covers one that cannot.
_GRACE_S = 30.0


def _key(model: Model) -> str:
    from localrun.engine.library.buildinfo import build_info

    kinds = ("model", "adapter", "draft")
    layers = [layer.digest for layer in model.manifest.layers if layer.kind in kinds]
    info = build_info()  # a marker from one llama.cpp build says nothing of another
    # ...nor one on a GPU runtime of the same build on the CPU alone.
    devices = [str(d) for d in info.gpu_devices]
    text = json.dumps([layers, info.version, info.system_info, info.runtime, devices])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _marker(model: Model) -> Path:
    return config.home() / "loaded" / _key(model)


def ensure_loads(spec: LoadSpec) -> None:
    """Return once the spec's model is known to load cleanly; raise a LocalrunError if not.

    The child is handed the spec made here, never its name to look up.
    """
    model = spec.model
    if model.store_root is None:
        return  # not from a store (a test's model object): nothing to probe with
    marker = _marker(model)
    if marker.exists():
        return
    _probe(spec)
    try:
        config.make_dirs(marker.parent)
        private.touch(marker)  # never through a link planted there
    except OSError:
        pass  # unrecorded: the next run probes again


def _probe(spec: LoadSpec) -> None:
    model = spec.model
    request = protocol.load_request(spec.to_wire(), slots=1)
    timeout = limits.load_timeout() + _GRACE_S
    with tempfile.TemporaryFile() as stderr:
        try:
            proc = subprocess.run(
                selfexec.command("localrun.worker"),
                input=protocol.encode(request),
                stdout=subprocess.PIPE,
                stderr=stderr,
                timeout=timeout,
                start_new_session=processes.NEW_SESSION,
                creationflags=processes.GROUP_FLAGS,
            )
        except subprocess.TimeoutExpired:
            raise ModelLoadError(
                f"{model.name} did not finish loading in {timeout:g} s",
                hint="the model file is probably damaged; remove it and pull or create it again",
            ) from None
        except OSError as exc:
            raise ModelLoadError(f"could not start a process to load {model.name}: {exc}") from None
        if config.debug():
            stderr.seek(0)
            sys.stderr.write(stderr.read().decode("utf-8", "replace")[-20000:])
    reported = _reported(proc.stdout)
    if isinstance(reported, LocalrunError):
        raise reported
    if reported == "ready":
        return
    raise ModelLoadError(
        f"llama.cpp failed while loading {model.name} ({exit_text(proc.returncode)}): the model "
        "file is damaged or not supported by this llama.cpp",
        hint="run with LOCALRUN_DEBUG=1 to see llama.cpp's output; remove the model, or pull or "
        "create it again",
    )


def _reported(out: bytes) -> LocalrunError | str | None:
    """What the runner said about its load: "ready", its error, or None (it died first)."""
    for line in out.splitlines():
        try:
            event = protocol.decode(line)
        except LocalrunError:
            continue
        if event.get("event") == "ready":
            return "ready"
        if event.get("event") == "error":
            return protocol.error_from_dict(event.get("error"))
    return None
