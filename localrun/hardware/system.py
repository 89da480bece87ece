"""What this machine offers a model: CPU, memory and GPUs.

Like Ollama's `discover`, detection never raises. Every probe is a small function that returns
what it parsed, and any failure (missing library or tool, timeout, odd output) means "not found".
Probes are injectable (`detect(Probes(cuda=...))`) and every parser is a pure function over text.

GPU probes, one per llama.cpp backend:
- cuda: NVML through ctypes (no CUDA toolkit needed), else `nvidia-smi --query-gpu`.
- rocm: `rocm-smi --showmeminfo vram --showproductname --json`.
- vulkan: `vulkaninfo --summary` for the devices, the full report for the memory heaps.
- metal: Apple Silicon only, the share of unified memory the GPU may wire (see probe_metal).

A card can show up twice (as cuda and as vulkan): each entry is one way llama.cpp can reach it,
and `usable_gpus` keeps the ones the installed build can use. localrun.hardware.offload plans
the layers on these GPUs; it imports this module, never the reverse.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import psutil

MIB = 1024**2
GIB = 1024**3
PROBE_TIMEOUT = 5.0  # seconds for each external tool

Run = Callable[[Sequence[str]], str | None]


@dataclass(frozen=True)
class CPU:
    model: str
    arch: str  # platform.machine(): x86_64, arm64, aarch64, AMD64
    physical_cores: int
    logical_cores: int
    features: tuple[str, ...]  # instruction sets relevant to llama.cpp, in FEATURES order


@dataclass(frozen=True)
class GPU:
    index: int
    name: str
    backend: str  # "cuda" | "metal" | "vulkan" | "rocm"
    total_bytes: int
    free_bytes: int
    driver: str | None = None
    compute: str | None = None  # CUDA compute capability ("8.6") or AMD gfx target ("gfx1100")


@dataclass(frozen=True)
class SystemInfo:
    cpu: CPU
    ram_total: int
    ram_available: int
    gpus: list[GPU] = field(default_factory=list)


def run_tool(argv: Sequence[str], timeout: float = PROBE_TIMEOUT) -> str | None:
    """The stdout of a command that exited 0, or None (missing tool, failure, timeout)."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [exe, *argv[1:]],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return proc.stdout if proc.returncode == 0 else None


# --- CPU and memory -------------------------------------------------------------------------------

FEATURES = (
    "sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vbmi",
    "avx512vnni", "avx512bf16", "avx_vnni", "amx", "neon", "dotprod", "i8mm", "fp16", "sve",
    "sve2", "sme",
)  # fmt: skip

# /proc/cpuinfo "flags" (x86) and "Features" (ARM) -> our names (llama.cpp's, lowercased).
_LINUX_FLAGS = {
    "pni": "sse3", "ssse3": "ssse3", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vbmi": "avx512vbmi",
    "avx512_vnni": "avx512vnni", "avx512_bf16": "avx512bf16", "avx_vnni": "avx_vnni",
    "amx_tile": "amx", "amx_int8": "amx", "amx_bf16": "amx",
    "neon": "neon", "asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "asimdhp": "fp16",
    "fphp": "fp16", "sve": "sve", "sve2": "sve2", "sme": "sme",
}  # fmt: skip
# macOS `sysctl hw.optional` keys (both Intel and Apple Silicon) -> our names.
_SYSCTL_FLAGS = {
    "sse3": "sse3", "supplementalsse3": "ssse3", "avx1_0": "avx", "avx2_0": "avx2", "fma": "fma",
    "f16c": "f16c", "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vnni": "avx512vnni",
    "neon": "neon", "arm.FEAT_DotProd": "dotprod", "arm.FEAT_I8MM": "i8mm",
    "arm.FEAT_FP16": "fp16", "neon_fp16": "fp16", "arm.FEAT_SME": "sme",
}  # fmt: skip


def _ordered(found: set[str]) -> tuple[str, ...]:
    return tuple(f for f in FEATURES if f in found)


def parse_cpuinfo(text: str) -> tuple[str | None, tuple[str, ...]]:
    """(model name, features) from Linux /proc/cpuinfo (the first processor is enough)."""
    model = None
    found: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and model is None and value.strip():
            model = value.strip()
        elif key in ("flags", "features") and not found:
            found = {_LINUX_FLAGS[f] for f in value.split() if f in _LINUX_FLAGS}
    return model, _ordered(found)


def parse_sysctl_features(text: str) -> tuple[str, ...]:
    """Features from `sysctl hw.optional` ("hw.optional.avx2_0: 1" lines)."""
    found = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        name = key.strip().removeprefix("hw.optional.")
        if sep and value.strip() == "1" and name in _SYSCTL_FLAGS:
            found.add(_SYSCTL_FLAGS[name])
    return _ordered(found)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read(1 << 20)
    except OSError:
        return None


def probe_cpu(read_text: Callable[[str], str | None] = _read_text, run: Run = run_tool) -> CPU:
    """The CPU's model, core counts and instruction sets."""
    model: str | None = None
    features: tuple[str, ...] = ()
    if sys.platform == "linux":
        model, features = parse_cpuinfo(read_text("/proc/cpuinfo") or "")
    elif sys.platform == "darwin":
        model = (run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "").strip() or None
        features = parse_sysctl_features(run(["sysctl", "hw.optional"]) or "")
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = psutil.cpu_count(logical=False) or logical
    return CPU(
        model=model or platform.processor() or platform.machine() or "unknown",
        arch=platform.machine(),
        physical_cores=physical,
        logical_cores=logical,
        features=features,
    )


def probe_memory() -> tuple[int, int]:
    """(total, available) RAM in bytes."""
    mem = psutil.virtual_memory()
    return int(mem.total), int(mem.available)


def default_threads() -> int:
    """Threads for generation: the physical cores this process may run on, at least 1.

    Hyper-threads share the core's vector units, so more threads than physical cores slows
    token generation down; a CPU affinity mask (a container, taskset) lowers the count further.
    """
    cores = psutil.cpu_count(logical=False) or psutil.cpu_count(logical=True) or 1
    # macOS has no affinity masks; Windows has (start /affinity), read through psutil.
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            cores = min(cores, len(os.sched_getaffinity(0)))
    elif sys.platform == "win32":
        with contextlib.suppress(psutil.Error, AttributeError, TypeError):
            cores = min(cores, len(psutil.Process().cpu_affinity() or []) or cores)
    return max(1, cores)


# --- CUDA ---------------------------------------------------------------------------------------


class _NvmlMemory(ctypes.Structure):
    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


def _load_nvml() -> Any:
    if sys.platform == "win32":
        names = ["nvml.dll", r"C:\Program Files\NVIDIA Corporation\NVSMI\nvml.dll"]
    else:
        names = ["libnvidia-ml.so.1", "libnvidia-ml.so"]
    for name in names:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def nvml_gpus(load: Callable[[], Any] = _load_nvml) -> list[GPU] | None:
    """NVIDIA GPUs through NVML (the driver's library); None when NVML cannot be used."""
    lib = load()
    if lib is None:
        return None
    try:
        lib.nvmlInit_v2.restype = ctypes.c_int
        if lib.nvmlInit_v2() != 0:
            return None
    except (AttributeError, OSError):
        return None
    try:
        return _nvml_devices(lib)
    except (AttributeError, OSError):
        return None
    finally:
        with contextlib.suppress(AttributeError, OSError):
            lib.nvmlShutdown()


def _nvml_devices(lib: Any) -> list[GPU] | None:
    count = ctypes.c_uint()
    if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
        return None
    version = ctypes.create_string_buffer(96)
    ok = lib.nvmlSystemGetDriverVersion(version, ctypes.c_uint(len(version))) == 0
    driver = version.value.decode(errors="replace") if ok else None
    gpus = []
    for i in range(count.value):
        handle = ctypes.c_void_p()
        if lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(handle)) != 0:
            continue
        name = ctypes.create_string_buffer(96)
        if lib.nvmlDeviceGetName(handle, name, ctypes.c_uint(len(name))) != 0:
            name.value = b"NVIDIA GPU"
        memory = _NvmlMemory()
        if lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
            continue
        major, minor = ctypes.c_int(), ctypes.c_int()
        cc = lib.nvmlDeviceGetCudaComputeCapability(
            handle, ctypes.byref(major), ctypes.byref(minor)
        )
        gpus.append(
            GPU(
                index=i,
                name=name.value.decode(errors="replace"),
                backend="cuda",
                total_bytes=int(memory.total),
                free_bytes=int(memory.free),
                driver=driver,
                compute=f"{major.value}.{minor.value}" if cc == 0 else None,
            )
        )
    return gpus


NVIDIA_SMI = [
    "nvidia-smi",
    "--query-gpu=index,name,memory.total,memory.free,driver_version",
    "--format=csv,noheader,nounits",
]


def parse_nvidia_smi(text: str) -> list[GPU]:
    """GPUs from `nvidia-smi --query-gpu=...` CSV (memory in MiB); odd lines are skipped."""
    gpus = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 5:
            continue
        # A name may itself hold a comma: the index is first, the three numbers last.
        index, name, (total, free, driver) = cells[0], ", ".join(cells[1:-3]), cells[-3:]
        try:
            gpu = GPU(
                index=int(index),
                name=name or "NVIDIA GPU",
                backend="cuda",
                total_bytes=int(float(total) * MIB),
                free_bytes=int(float(free) * MIB),
                driver=driver if driver and not driver.startswith("[") else None,
            )
        except ValueError:  # "[N/A]", a warning, a header
            continue
        gpus.append(gpu)
    return gpus


def probe_cuda(
    nvml: Callable[[], list[GPU] | None] = nvml_gpus,
    run: Run = run_tool,
    env: Mapping[str, str] | None = None,
) -> list[GPU]:
    """NVIDIA GPUs as CUDA numbers them: NVML, else nvidia-smi; CUDA_VISIBLE_DEVICES applied."""
    gpus = nvml()
    if gpus is None:
        gpus = parse_nvidia_smi(run(NVIDIA_SMI) or "")
    return _visible(gpus, (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES"))


def _visible(gpus: list[GPU], mask: str | None) -> list[GPU]:
    """The GPUs a *_VISIBLE_DEVICES list of indices leaves, renumbered as the runtime does.

    UUIDs and MIG names are not resolved here: such a mask leaves the list unchanged.
    """
    if mask is None:
        return gpus
    items = [x.strip() for x in mask.split(",")]
    if mask.strip() in ("", "-1"):
        return []
    if not all(x.isdigit() for x in items):
        return gpus
    by_index = {g.index: g for g in gpus}
    out: list[GPU] = []
    for item in items:
        gpu = by_index.get(int(item))
        if gpu is None:
            break  # the runtime stops at the first invalid entry
        out.append(replace(gpu, index=len(out)))
    return out


# --- ROCm ---------------------------------------------------------------------------------------

ROCM_SMI = ["rocm-smi", "--showmeminfo", "vram", "--showproductname", "--json"]
_ROCM_NAME_KEYS = ("Card Series", "Card series", "Device Name", "Card SKU", "Card Model")


def parse_rocm_smi(text: str) -> list[GPU]:
    """GPUs from `rocm-smi ... --json` (keys vary between ROCm releases)."""
    start = text.find("{")  # some releases print warnings before the JSON
    try:
        data = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    system = data.get("system")
    driver = system.get("Driver version") if isinstance(system, dict) else None
    gpus = []
    for key, card in data.items():
        match = re.fullmatch(r"card(\d+)", key)
        if not match or not isinstance(card, dict):
            continue
        try:
            total = int(card["VRAM Total Memory (B)"])
            used = int(card.get("VRAM Total Used Memory (B)", 0))
        except (KeyError, ValueError, TypeError):
            continue
        name = next((str(card[k]) for k in _ROCM_NAME_KEYS if card.get(k)), "AMD GPU")
        gfx = card.get("GFX Version")
        gpus.append(
            GPU(
                index=int(match.group(1)),
                name=name,
                backend="rocm",
                total_bytes=total,
                free_bytes=max(0, total - used),
                driver=str(driver) if driver else None,
                compute=str(gfx) if gfx else None,
            )
        )
    return sorted(gpus, key=lambda g: g.index)


def probe_rocm(run: Run = run_tool, env: Mapping[str, str] | None = None) -> list[GPU]:
    """AMD GPUs through rocm-smi; HIP_VISIBLE_DEVICES (or ROCR_VISIBLE_DEVICES) applied."""
    gpus = parse_rocm_smi(run(ROCM_SMI) or "")
    env = os.environ if env is None else env
    return _visible(gpus, env.get("HIP_VISIBLE_DEVICES", env.get("ROCR_VISIBLE_DEVICES")))


# --- Vulkan -------------------------------------------------------------------------------------

_GPU_HEADER = re.compile(r"^GPU(\d+):\s*$")
_PROPERTY = re.compile(r"^\s*(\w+)\s*=\s*(.*?)\s*$")
_HEAP = re.compile(r"^\s*memoryHeaps\[(\d+)\]:")


@dataclass
class _VkDevice:
    index: int
    props: dict[str, str] = field(default_factory=dict)
    heaps: list[dict[str, Any]] = field(default_factory=list)


def _vulkan_devices(text: str) -> list[_VkDevice]:
    devices: list[_VkDevice] = []
    current: _VkDevice | None = None
    heap: dict[str, Any] | None = None
    for line in text.splitlines():
        header = _GPU_HEADER.match(line)
        if header:
            current, heap = _VkDevice(int(header.group(1))), None
            devices.append(current)
            continue
        if current is None:
            continue
        if _HEAP.match(line):
            heap = {"local": False}
            current.heaps.append(heap)
            continue
        if line.strip().startswith("memoryTypes"):
            heap = None
            continue
        prop = _PROPERTY.match(line)
        if heap is not None:
            if prop and prop.group(1) in ("size", "budget", "usage"):
                number = prop.group(2).split(maxsplit=1)[0] if prop.group(2) else ""
                if number.isdigit():
                    heap[prop.group(1)] = int(number)
            elif "MEMORY_HEAP_DEVICE_LOCAL_BIT" in line:
                heap["local"] = True
        elif prop and prop.group(1) not in current.props:
            current.props[prop.group(1)] = prop.group(2)
    return devices


def parse_vulkaninfo(text: str) -> list[GPU]:
    """GPUs from `vulkaninfo --summary` or the full report; software renderers are skipped.

    Memory is the largest device-local heap (llama.cpp allocates from it): free is its budget
    less its usage when the driver reports a budget. The summary has no heaps: 0 bytes.
    """
    gpus: list[GPU] = []
    seen: set[str] = set()
    for dev in _vulkan_devices(text):
        props = dev.props
        if "CPU" in props.get("deviceType", "") or "deviceName" not in props:
            continue
        uuid = props.get("deviceUUID", f"#{dev.index}")
        if uuid in seen:  # some loaders list a device twice
            continue
        seen.add(uuid)
        heaps = [h for h in dev.heaps if "size" in h]
        best = max(heaps, key=lambda h: (h["local"], h["size"]), default=None)
        total = best["size"] if best else 0
        free = total
        if best and "budget" in best:
            free = max(0, best["budget"] - best.get("usage", 0))
        driver = props.get("driverInfo") or props.get("driverVersion")
        gpus.append(GPU(dev.index, props["deviceName"], "vulkan", total, free, driver or None))
    return gpus


def probe_vulkan(run: Run = run_tool) -> list[GPU]:
    """GPUs that Vulkan drivers expose, with memory from the full vulkaninfo report."""
    gpus = parse_vulkaninfo(run(["vulkaninfo", "--summary"]) or "")
    if not gpus or all(g.total_bytes for g in gpus):
        return gpus
    detailed = {g.index: g for g in parse_vulkaninfo(run(["vulkaninfo"]) or "")}
    return [detailed.get(g.index, g) if not g.total_bytes else g for g in gpus]


# --- Metal --------------------------------------------------------------------------------------

# Metal reports no free figure. The GPU may wire a "recommended working set" of the unified
# memory: macOS sets it to about 2/3 of RAM on machines with 32 GiB or less, about 3/4 above.
# A raised `iogpu.wired_limit_mb` sysctl wins. Free = that total, as Ollama does.


def metal_working_set(ram_total: int) -> int:
    """The GPU's share of unified memory that macOS allows by default (see the comment above)."""
    return ram_total * 3 // 4 if ram_total > 32 * GIB else ram_total * 2 // 3


def probe_metal(
    platform_name: str | None = None,
    machine: str | None = None,
    ram_total: int | None = None,
    run: Run = run_tool,
) -> list[GPU]:
    """The Apple Silicon GPU (one, sharing RAM with the CPU); none elsewhere."""
    platform_name = sys.platform if platform_name is None else platform_name
    machine = platform.machine() if machine is None else machine
    if platform_name != "darwin" or machine != "arm64":
        return []
    if ram_total is None:
        ram_total = probe_memory()[0]
    total = metal_working_set(ram_total)
    limit = (run(["sysctl", "-n", "iogpu.wired_limit_mb"]) or "").strip()
    if limit.isdigit() and int(limit) > 0:  # raised (or lowered) by the user; 0 = default
        total = min(int(limit) * MIB, ram_total)
    name = (run(["sysctl", "-n", "machdep.cpu.brand_string"]) or "").strip() or "Apple GPU"
    return [GPU(0, name, "metal", total, total)]


# --- detection ----------------------------------------------------------------------------------


def _no_gpus() -> list[GPU]:
    return []


@dataclass
class Probes:
    """The detection steps; tests replace some with canned results."""

    cpu: Callable[[], CPU] = probe_cpu
    memory: Callable[[], tuple[int, int]] = probe_memory
    cuda: Callable[[], list[GPU]] = probe_cuda
    rocm: Callable[[], list[GPU]] = probe_rocm
    vulkan: Callable[[], list[GPU]] = probe_vulkan
    metal: Callable[[], list[GPU]] = probe_metal


def detect(probes: Probes | None = None) -> SystemInfo:
    """CPU, RAM and GPUs of this machine. Never raises: a probe that fails found nothing."""
    p = probes or Probes()
    # Detection only informs a choice (and `localrun info`); a broken driver or an odd tool
    # version must never stop a model from running on the CPU, so every error is swallowed.
    try:
        cpu = p.cpu()
    except Exception:
        cpu = CPU(platform.machine() or "unknown", platform.machine(), 1, 1, ())
    try:
        ram_total, ram_available = p.memory()
    except Exception:
        ram_total = ram_available = 0
    gpus: list[GPU] = []
    for probe in (p.cuda, p.rocm, p.vulkan, p.metal):
        try:
            gpus += probe()
        except Exception:
            continue
    return SystemInfo(cpu, ram_total, ram_available, gpus)


# ggml backend registry names -> GPU.backend
_BUILD_BACKENDS = {"cuda": "cuda", "rocm": "rocm", "hip": "rocm", "metal": "metal",
                   "mtl": "metal", "vulkan": "vulkan"}  # fmt: skip


def usable_gpus(gpus: Sequence[GPU], backends: Sequence[str]) -> list[GPU]:
    """The GPUs a llama.cpp build with these backends (["CUDA", "CPU"]) can reach.

    With no backend list (unknown build) every GPU is kept.
    """
    if not backends:
        return list(gpus)
    wanted = {_BUILD_BACKENDS[b.lower()] for b in backends if b.lower() in _BUILD_BACKENDS}
    return [g for g in gpus if g.backend in wanted]


def from_devices(devices: Sequence[Any]) -> list[GPU]:
    """Return GPUs from the devices ggml registered (runtimes.ggml.Device).

    The memory a backend reports is what it can allocate, which the offload plan must use.
    """
    out = []
    for i, d in enumerate(devices):
        named = str(d.backend).lower()
        backend = _BUILD_BACKENDS.get(named, named)
        out.append(GPU(i, d.description or d.name, backend, d.total_bytes, d.free_bytes))
    return out
