"""`localrun info`: the CPU, memory and GPUs found, and whether this llama.cpp can use them."""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import typer

from localrun.cli.output import columns, human_size
from localrun.errors import LocalrunError
from localrun.host.features import features as host_features

if TYPE_CHECKING:
    from localrun.engine.library.buildinfo import BuildInfo
    from localrun.engine.library.machine import MachineParams
    from localrun.hardware.system import GPU, SystemInfo

# How to get a llama-cpp-python build for each kind of GPU (its CMake switch).
_BUILD_FLAGS = {
    "cuda": "-DGGML_CUDA=on",
    "rocm": "-DGGML_HIP=on",
    "vulkan": "-DGGML_VULKAN=on",
    "metal": "-DGGML_METAL=on",
}


def info(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the CPU, memory and GPUs found, and what the installed llama.cpp was built to use."""
    from localrun.engine.library.buildinfo import build_info
    from localrun.engine.library.machine import machine_params
    from localrun.hardware import system

    found = system.detect()
    build: BuildInfo | None = None
    build_error: str | None = None
    try:
        build = build_info()
    except LocalrunError as err:  # still worth printing the hardware
        build_error = f"{err.message}; {err.hint}" if err.hint else err.message
    threads = system.default_threads()
    notes = _notes(found, build) + _privacy_notes()
    machine = machine_params() if build else None
    if as_json:
        out: dict[str, Any] = {
            "cpu": asdict(found.cpu),
            "ram": {"total": found.ram_total, "available": found.ram_available},
            "gpus": [asdict(g) for g in found.gpus],
            "threads": threads,
            "llama_cpp": asdict(build) if build else {"error": build_error},
            "amx": machine.amx if machine else None,
            "weight_repacking": (
                {"on": machine.repack, "why": machine.repack_reason} if machine else None
            ),
            "notes": notes,
            "system": {f.name: {"had": f.had, "how": f.how} for f in host_features()},
            "workers": [{"endpoint": e, "offers": o} for e, o in _workers()],
        }
        print(json.dumps(out, indent=2))
        return
    cpu = found.cpu
    rows = [
        ["CPU", f"{cpu.model} ({cpu.arch})" if cpu.arch else cpu.model],
        ["cores", f"{cpu.physical_cores} physical, {cpu.logical_cores} logical"],
        ["instruction sets", " ".join(cpu.features) or "unknown"],
        [
            "RAM",
            f"{human_size(found.ram_total)} total, {human_size(found.ram_available)} available",
        ],
    ]
    rows += [[f"GPU {g.index}", _gpu_line(g)] for g in found.gpus] or [["GPU", "none"]]
    rows.append(["threads", f"{threads} (override with the num_thread parameter)"])
    if build is None:
        rows.append(["llama.cpp", f"unavailable: {build_error}"])
    else:
        rows += [
            ["llama.cpp", f"llama-cpp-python {build.version}"],
            ["GPU offload", "yes" if build.gpu_offload else "no"],
            ["backends", ", ".join(build.backends) or "unknown"],
            ["runtime", build.runtime_text],
            ["exact", build.exact_text],
        ]
        if build.devices:
            rows.append(["devices", ", ".join(build.devices)])
        rows.append(["system info", build.system_info])
    if machine is not None:
        rows.append(["weight repacking", _repacking(machine)])
    rows += [[f.name, f.how if f.had else f"not here: {f.how}"] for f in host_features()]
    rows += [[f"worker {endpoint}", offers] for endpoint, offers in _workers()]
    rows += [["note", note] for note in notes]
    print(columns(rows))


def _workers() -> list[tuple[str, str]]:
    """Each RPC worker of LOCALRUN_WORKERS and what it offers now, or why it cannot serve."""
    from localrun.hardware import workers
    from localrun.settings import config

    found = []
    for endpoint in config.workers():
        try:
            worker = workers.probe(endpoint)
        except LocalrunError as exc:
            found.append((endpoint, exc.message.removeprefix(f"worker {endpoint} ")))
            continue
        memory = ", ".join(f"{human_size(d.free_bytes)} free" for d in worker.devices)
        found.append((endpoint, f"RPC {worker.version}, {memory}"))
    return found


def _repacking(machine: MachineParams) -> str:
    """Whether llama.cpp repacks weights, why, and how to change it."""
    state = "on" if machine.repack else "off"
    amx = " (this CPU has AMX)" if machine.amx and machine.repack else ""
    return f"{state}: {machine.repack_reason}{amx}; set LOCALRUN_CPU_REPACK=on|off|auto"


def _gpu_line(gpu: GPU) -> str:
    parts = [f"{human_size(gpu.free_bytes)} free of {human_size(gpu.total_bytes)}"]
    if gpu.driver:
        parts.append(f"driver {gpu.driver}")
    if gpu.compute:
        parts.append(f"compute {gpu.compute}")
    return f"{gpu.name} ({gpu.backend}): {', '.join(parts)}"


def _privacy_notes() -> list[str]:
    """One line for each folder of conversations that other users may read or enter."""
    from localrun.engine.prompts import disk_cache as prompt_cache
    from localrun.host import private
    from localrun.settings import config

    home = config.home()
    holds = {
        home: "your chat history",
        config.responses_dir(): "stored Responses API conversations",
        prompt_cache.folder().parent: "the prompt cache",
        prompt_cache.folder(): "prompts' tokens",
        home / "logs": "the logs of servers started for agents",
    }
    return [
        f"{folder} is open to other users ({mode}) and holds {holds[folder]}: "
        f"chmod 700 {shlex.quote(str(folder))}"
        for folder, mode in private.exposed(holds)
    ]


def _notes(found: SystemInfo, build: BuildInfo | None) -> list[str]:
    """What stands between the GPUs found and llama.cpp using them."""
    from localrun.hardware.system import usable_gpus

    if build is None or not found.gpus:
        return []
    if build.gpu_offload and usable_gpus(found.gpus, build.backends):
        return []
    kind = found.gpus[0].backend
    how = "install a runtime for it: localrun runtime install auto"
    if kind == "metal":
        how = f'reinstall llama-cpp-python with CMAKE_ARGS="{_BUILD_FLAGS[kind]}"'
    if not build.gpu_offload:
        return [f"a {kind} GPU was found but this llama.cpp cannot use it; {how}"]
    return [
        f"this llama.cpp was built for {', '.join(build.backends)}, which cannot reach the "
        f"{kind} GPU found; {how}"
    ]
