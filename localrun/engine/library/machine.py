"""The llama.cpp parameters every model loads with on this machine, from the build and the CPU.

They hold for the engine's models, and for every model a test, a script or a benchmark loads through
llama-cpp-python or starts llama.cpp's own programs on. tests/unit/engine/test_machine.py holds
every file under tests/ and scripts/ to it.

Why one place: llama-cpp-python's and llama.cpp's programs' defaults differ from localrun's where
the machine matters. On a CPU with AMX, llama.cpp's default weight repacking puts Q4_0 and Q8_0
weights into AMX buffers whose matrix multiplication segfaults (llama.cpp#20824). A test or a
benchmark anchor that loaded a model with the defaults crashed on such a machine, while
`localrun run` worked.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from localrun.engine.library.buildinfo import AMX, build_info
from localrun.hardware.system import default_threads
from localrun.settings import config

# The issue that makes repacking unsafe on AMX, for the messages that explain it.
AMX_CRASH = "llama.cpp#20824"

# llama-cpp-python's Llama reads its model parameters' defaults while it is built: one
# construction at a time may see them replaced (Llama has no argument for repacking).
_defaults_lock = threading.RLock()


@dataclass(frozen=True)
class MachineParams:
    """What localrun sets on llama.cpp on this machine, and why."""

    repack: bool  # llama_model_params.use_extra_bufts: weights repacked for the CPU's kernels
    repack_reason: str  # why repacking is on or off, for `localrun info`
    amx: bool  # the CPU has AMX (llama.cpp's system info says AMX_INT8 = 1)
    threads: int  # generation threads when none are asked for: the physical cores usable

    def apply(self, mparams: Any) -> Any:
        """Set these on a llama_model_params (from llama_model_default_params) and return it."""
        mparams.use_extra_bufts = self.repack
        return mparams

    def server_args(self) -> list[str]:
        """The same, as arguments of llama.cpp's programs built on its common arguments.

        Those are llama-server, llama-cli and llama-mtmd-cli.
        """
        return [] if self.repack else ["--no-repack"]

    def bench_args(self) -> list[str]:
        """The same, as llama-bench's arguments."""
        return [] if self.repack else ["--repack", "0"]

    @contextlib.contextmanager
    def defaults(self) -> Iterator[None]:
        """Make llama-cpp-python's default model parameters carry these while inside.

        It is for a `llama_cpp.Llama` built by code that is not ours (llama_cpp.server), since Llama
        takes no argument for repacking. It is not thread-safe against other code that reads the
        defaults meanwhile; `llama` below holds it for one construction.
        """
        from localrun.engine.library.native import lc

        module = lc.llama_cpp  # llama.py calls llama_cpp.llama_cpp.llama_model_default_params
        with _defaults_lock:
            real = module.llama_model_default_params
            module.llama_model_default_params = lambda: self.apply(real())
            try:
                yield
            finally:
                module.llama_model_default_params = real

    def llama(self, model_path: str, **kwargs: Any) -> Any:
        """A `llama_cpp.Llama` of `model_path` loaded with these parameters.

        `kwargs` are Llama's own; n_threads and n_threads_batch default to `threads`, as the
        engine's do.
        """
        from localrun.engine.library.native import lc

        kwargs.setdefault("n_threads", self.threads)
        kwargs.setdefault("n_threads_batch", kwargs["n_threads"])
        with self.defaults():
            model = lc.Llama(model_path, **kwargs)
        if bool(model.model_params.use_extra_bufts) != self.repack:  # a future Llama that
            raise RuntimeError("llama_cpp.Llama did not take localrun's model parameters")
        return model


def machine_params() -> MachineParams:
    """The parameters for this machine, under the settings in force now.

    LOCALRUN_CPU_REPACK is read at each call, so a test may set it.
    """
    system_info = build_info().system_info
    amx = AMX in system_info
    mode = config.cpu_repack()
    if mode != "auto":
        reason = f"LOCALRUN_CPU_REPACK={mode}"
        repack = mode == "on"
    elif amx:
        reason = f"this CPU has AMX, whose llama.cpp kernels crash ({AMX_CRASH})"
        repack = False
    else:
        reason = "llama.cpp's default"
        repack = True
    return MachineParams(repack=repack, repack_reason=reason, amx=amx, threads=default_threads())
