"""What the llama.cpp of this process can use: GPU offload, backends, devices and CPU features.

It also names the GPU runtime loaded into it, and the exact runtime's CPU library
(localrun/runtimes). This is the one place these facts are read from llama_cpp.

The backend names and devices are those of the ggml that libllama uses (runtimes/ggml.py says why
not llama_cpp._ggml's). runtimes/activate reads them once, after it loaded the runtime. Where that
registry cannot be reached, the names come from `llama_print_system_info()`, which lists only the
backends that report features.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from localrun.errors import EngineError
from localrun.runtimes.ggml import Device

# What llama_print_system_info() says of a CPU with AMX (Sapphire Rapids and later).
AMX = "AMX_INT8 = 1"


@dataclass(frozen=True)
class BuildInfo:
    version: str  # llama-cpp-python's version
    gpu_offload: bool  # llama_supports_gpu_offload(): a GPU backend with a device
    backends: list[str]  # ggml backend names, e.g. ["CUDA", "CPU"]
    system_info: str  # llama_print_system_info(), e.g. "CPU : SSE3 = 1 | AVX = 1 | ..."
    devices: list[str] = field(default_factory=list)  # "CPU (AMD EPYC)", "CUDA0 (NVIDIA H100)"
    runtime: str = "built-in"  # the GPU runtime loaded (localrun runtime), or the bindings' own
    runtime_warning: str | None = None  # why the selected runtime is not in use
    gpu_devices: list[Device] = field(default_factory=list)  # with the memory each reports
    # The exact runtime's CPU library in use (localrun/runtimes/exact.py), or None; and why
    # one that was asked for is not.
    exact: str | None = None
    exact_warning: str | None = None

    @property
    def exact_text(self) -> str:
        """Whether answers are independent of the batch on the CPU: for info."""
        if self.exact:
            note = f"; {self.exact_warning}" if self.exact_warning else ""
            return f"{self.exact} (a token's logits do not depend on its batch){note}"
        why = f" ({self.exact_warning})" if self.exact_warning else ""
        return f"no{why}: greedy answers may depend on the batch (localrun runtime install exact)"

    @property
    def runtime_text(self) -> str:
        """The runtime, and why the selected one is not in use: for info and show --fit."""
        return self.runtime + (f" ({self.runtime_warning})" if self.runtime_warning else "")

    @property
    def runs_on(self) -> str:
        """What runs models, in one line: info's runtime and, where loaded, its exact CPU library.

        It is for run --verbose.
        """
        return self.runtime_text + (f", exact CPU library {self.exact}" if self.exact else "")


@functools.cache
def build_info() -> BuildInfo:
    """The facts of the llama.cpp build in this environment (read once per process)."""
    try:
        from localrun.engine.library.native import lc as llama_cpp
    except (ImportError, OSError, RuntimeError) as exc:  # the last two: libllama did not load
        raise EngineError(
            f"llama.cpp could not be loaded ({type(exc).__name__}: {exc})",
            hint="reinstall it: pip install --force-reinstall llama-cpp-python",
        ) from exc
    system_info = llama_cpp.llama_print_system_info().decode("utf-8", "replace")
    system_info = system_info.strip().removesuffix("|").strip()
    from localrun.runtimes import exact
    from localrun.runtimes.activate import current

    exact_state = exact.current()
    activation = current()  # engine/native ran it, and read the registry after it
    if activation is not None and activation.backends:
        backends, devices = activation.backends, activation.devices
    else:
        backends, devices = parse_backends(system_info), []
    return BuildInfo(
        version=str(getattr(llama_cpp, "__version__", "unknown")),
        gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
        backends=backends,
        system_info=system_info,
        devices=[str(d) for d in devices],
        runtime=activation.name if activation else "built-in",
        runtime_warning=activation.warning if activation else None,
        gpu_devices=activation.gpu_devices if activation else [],
        exact=exact_state.runtime.name if exact_state.runtime else None,
        exact_warning=exact_state.warning,
    )


def parse_backends(system_info: str) -> list[str]:
    """Backend names from a system info line: "CUDA : ARCHS = 890 | ... | CPU : SSE3 = 1 |"."""
    out: list[str] = []
    for part in system_info.split("|"):
        name, sep, _ = part.partition(" : ")
        if sep and name.strip() and name.strip() not in out:
            out.append(name.strip())
    return out
