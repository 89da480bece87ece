"""What building a backend needs, found on this machine or put together from PyPI.

Every backend: cmake and a C++ compiler (ninja when there is one); the exact runtime (the CPU
library) needs nothing more. Vulkan: the Vulkan loader and
headers, glslc (the shader compiler) and the SPIR-V headers, from the system's packages: a
missing one is named with the packages that provide it. CUDA: nvcc with the CUDA runtime and
cuBLAS, from a system toolkit (CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda) when there is one,
else from NVIDIA's CUDA 13 wheels on PyPI (nvcc, nvvm, crt, cccl, cudart, cuBLAS) installed under
LOCALRUN_HOME/runtimes/toolchains: those wheels form a toolkit once the unversioned library
links and a libcuda stub for linking (the driver's library; the real one loads at run time) are
added. (The CUDA 12 nvcc wheel holds no nvcc.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localrun.errors import ToolchainError
from localrun.runtimes.layout import root

# What provides each piece, as the error names it: Debian/Ubuntu, Fedora, Arch.
PACKAGES = {
    "cmake": "cmake (or: pip install cmake)",
    "c++": "g++ / gcc-c++ / gcc",
    "vulkan": (
        "libvulkan-dev / vulkan-loader-devel vulkan-headers / vulkan-icd-loader vulkan-headers"
    ),
    "glslc": "glslc / glslc / shaderc",
    "spirv": "spirv-headers / spirv-headers-devel / spirv-headers",
}

CUDA_WHEELS = (
    "nvidia-cuda-nvcc",
    "nvidia-nvvm",  # cicc and libdevice: nvcc compiles no device code without them
    "nvidia-cuda-crt",
    "nvidia-cuda-cccl",
    "nvidia-cuda-runtime",
    "nvidia-cublas",
)
CUDA_WHEEL_SERIES = "13"


@dataclass(frozen=True)
class Toolchain:
    backend: str
    description: str  # "glslc 2023.2, Vulkan headers 1.3.239" / "nvcc 13.0 (PyPI wheels)"
    cmake: str
    cmake_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    library_path: tuple[str, ...] = ()  # where the built module's dependencies load from
    generator: str = ""  # "Ninja", or "" for cmake's default (make)


def _missing(what: str, detail: str) -> ToolchainError:
    return ToolchainError(f"building the runtime needs {detail}", hint=f"install {PACKAGES[what]}")


def _version(argv: Sequence[str], pattern: str) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(pattern, out.stdout + out.stderr)
    return match.group(1) if match else ""


def _common() -> tuple[str, str]:
    cmake = shutil.which("cmake")
    if cmake is None:
        raise _missing("cmake", "cmake")
    if not any(shutil.which(c) for c in ("c++", "g++", "clang++")) and not os.environ.get("CXX"):
        raise _missing("c++", "a C++ compiler")
    generator = "Ninja" if shutil.which("ninja") else ""
    return cmake, generator


INCLUDE_DIRS = ("/usr/include", "/usr/local/include", "/opt/homebrew/include")


def _find_header(relative: str, extra: Sequence[str] = ()) -> Path | None:
    for base in (*extra, *INCLUDE_DIRS):
        candidate = Path(base) / relative
        if candidate.is_file():
            return candidate
    return None


def cpu() -> Toolchain:
    """The exact runtime's toolchain: ggml's CPU library for this CPU.

    It is linked as the installed one is, not as a loadable backend module (runtimes/exact.py).
    """
    cmake, generator = _common()
    cxx = os.environ.get("CXX") or next(
        (c for c in ("c++", "g++", "clang++") if shutil.which(c)), "c++"
    )
    version = _version([cxx, "--version"], r"(\d+\.\d+(?:\.\d+)?)")
    # Every kernel the installed library has is kept (llamafile's sgemm, repacking): the source
    # patches of runtimes/patches/ make them batch-invariant, on ARM too.
    args: tuple[str, ...] = ("-DGGML_NATIVE=ON", "-DGGML_BACKEND_DL=OFF")
    return Toolchain(
        backend="exact",
        description=f"{Path(cxx).name} {version or '?'}, -march=native",
        cmake=cmake,
        cmake_args=args,
        generator=generator,
    )


def rpc() -> Toolchain:
    """The rpc runtime's toolchain: ggml-rpc, a loadable module, for any CPU."""
    cmake, generator = _common()
    return Toolchain(
        backend="rpc",
        description="ggml's RPC backend",
        cmake=cmake,
        cmake_args=("-DGGML_RPC=ON",),
        generator=generator,
    )


def vulkan(which: Callable[[str], str | None] = shutil.which) -> Toolchain:
    cmake, generator = _common()
    sdk = os.environ.get("VULKAN_SDK")
    extra = [str(Path(sdk) / "include")] if sdk else []
    header = _find_header("vulkan/vulkan_core.h", extra)
    if header is None:
        raise _missing("vulkan", "the Vulkan headers (vulkan/vulkan_core.h)")
    glslc = which("glslc") or (str(Path(sdk) / "bin" / "glslc") if sdk else None)
    if glslc is None or not Path(glslc).exists():
        raise _missing("glslc", "glslc, the shader compiler")
    if _find_header("spirv/unified1/spirv.hpp", extra) is None:
        raise _missing("spirv", "the SPIR-V headers (spirv/unified1/spirv.hpp)")
    text = header.read_text(encoding="utf-8", errors="replace")
    match = re.search(r"#define VK_HEADER_VERSION (\d+)", text)
    headers = f"1.3.{match.group(1)}" if match else "unknown"
    shaderc = _version([glslc, "--version"], r"shaderc v?([\w.]+)")
    return Toolchain(
        backend="vulkan",
        description=f"glslc {shaderc or '?'}, Vulkan headers {headers}",
        cmake=cmake,
        cmake_args=("-DGGML_VULKAN=ON", f"-DVulkan_GLSLC_EXECUTABLE={glslc}"),
        generator=generator,
    )


# -- CUDA ---------------------------------------------------------------------------------------


def _system_nvcc() -> Path | None:
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidate = Path(os.environ[var]) / "bin" / "nvcc"
            if candidate.is_file():
                return candidate
    found = shutil.which("nvcc")
    if found:
        return Path(found)
    default = Path("/usr/local/cuda/bin/nvcc")
    return default if default.is_file() else None


def wheel_toolkit_folder() -> Path:
    return root() / "toolchains" / f"cuda-{CUDA_WHEEL_SERIES}"


def cuda(
    architectures: Sequence[str],
    *,
    use_system: bool = True,
    say: Callable[[str], None] = lambda _: None,
) -> Toolchain:
    """nvcc and the CUDA libraries: the system's toolkit, else the PyPI wheels'.

    The wheels are installed on first use. `architectures` are CUDA's numbers ("90", "89").
    """
    cmake, generator = _common()
    nvcc = _system_nvcc() if use_system else None
    libs: tuple[str, ...] = ()
    origin = "system"
    if nvcc is None:
        home = wheel_toolkit(say)
        nvcc = home / "bin" / "nvcc"
        libs = (str(home / "lib"),)
        origin = "PyPI wheels"
    version = _version([str(nvcc), "--version"], r"release ([\d.]+)")
    toolkit = nvcc.parent.parent
    args = [
        "-DGGML_CUDA=ON",
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        f"-DCUDAToolkit_ROOT={toolkit}",
        f"-DCMAKE_CUDA_ARCHITECTURES={';'.join(architectures)}",
    ]
    if libs:
        args.append(f"-DCMAKE_LIBRARY_PATH={libs[0]};{libs[0]}/stubs")
    return Toolchain(
        backend="cuda",
        description=f"nvcc {version or '?'} ({origin})",
        cmake=cmake,
        cmake_args=tuple(args),
        env={"CUDA_HOME": str(toolkit)},
        library_path=libs,
        generator=generator,
    )


def wheel_toolkit(say: Callable[[str], None]) -> Path:
    """A CUDA toolkit folder made from PyPI's CUDA 13 wheels (installed once, then reused).

    The wheels install as nvidia/cu13/{bin,include,lib} with versioned libraries only; cmake's
    FindCUDAToolkit wants libcudart.so, libcublas.so and libcublasLt.so, and ggml-cuda links the
    driver's libcuda.so, which only an installed driver has: a stub with its soname stands in
    for the link (the real library is loaded when the runtime is).
    """
    folder = wheel_toolkit_folder()
    home = folder / "nvidia" / "cu13"
    if (folder / ".complete").is_file():
        return home
    from localrun.runtimes.source import run_pip

    say("installing the CUDA toolkit from PyPI (about 930 MB installed)")
    partial = folder.with_name(f".{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    run_pip(
        ["install", "--no-deps", "--target", str(partial),
         *[f"{name}=={CUDA_WHEEL_SERIES}.*" for name in CUDA_WHEELS]],
        what="install the CUDA toolkit wheels",
        hint="install a CUDA toolkit (nvcc) and set CUDA_HOME, or check the package index",
        partial=partial,
        timeout=3600,
    )  # fmt: skip
    try:
        finish_wheel_toolkit(partial / "nvidia" / "cu13")
        (partial / ".complete").write_text("")
        if not (folder / ".complete").is_file():  # another install may have finished first
            shutil.rmtree(folder, ignore_errors=True)
            os.replace(partial, folder)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ToolchainError(
            f"could not finish the CUDA toolkit from the wheels ({exc})",
            hint=f"remove {folder} and run the install again",
        ) from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return home


def finish_wheel_toolkit(home: Path) -> None:
    """Add what the wheels lack for cmake and the linker: unversioned links, a libcuda stub."""
    lib = home / "lib"
    if not (home / "bin" / "nvcc").is_file():
        raise ToolchainError(
            f"the CUDA wheels hold no nvcc under {home}",
            hint=f"the CUDA {CUDA_WHEEL_SERIES} wheels are needed (CUDA 12's nvcc wheel has none)",
        )
    for stem in ("libcudart", "libcublas", "libcublasLt"):
        versioned = sorted(lib.glob(f"{stem}.so.*"), key=lambda p: len(p.name))
        link = lib / f"{stem}.so"
        if versioned and not link.exists():
            link.symlink_to(versioned[0].name)
    stubs = lib / "stubs"
    stubs.mkdir(exist_ok=True)
    stub = stubs / "libcuda.so"
    if not stub.exists():
        compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
        if compiler is None:
            raise _missing("c++", "a C compiler")
        source = stubs / "stub.c"
        source.write_text("/* stands in for the driver's libcuda at link time */\n")
        subprocess.run(
            [compiler, "-shared", "-o", str(stub), "-Wl,-soname,libcuda.so.1", str(source)],
            check=True,
            capture_output=True,
        )


def cuda_architectures(asked: str | None, detected: Sequence[str]) -> list[str]:
    """CUDA architecture numbers to build for: `asked` ("89,90", "sm_90") or the GPUs' own."""
    if asked:
        out = []
        for part in asked.replace(";", ",").split(","):
            value = part.strip().lower().removeprefix("sm_").removeprefix("sm").replace(".", "")
            if not re.fullmatch(r"\d{2,3}[af]?", value):
                raise ToolchainError(
                    f"'{part.strip()}' is not a CUDA architecture",
                    hint="name them as compute capabilities: --arch 89,90",
                )
            out.append(value)
        return sorted(set(out))
    found = sorted({c.replace(".", "") for c in detected if c})
    if not found:
        raise ToolchainError(
            "no NVIDIA GPU was found to build the CUDA runtime for",
            hint="name the architectures: localrun runtime install cuda --arch 89,90",
        )
    return found
