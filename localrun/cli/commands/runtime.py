"""`localrun runtime list / install / select / rm`: manage the runtimes localrun builds itself.

These are the GPU runtimes, and the exact runtime: the CPU library whose answers do not depend on
the batch.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import typer

from localrun.cli.output import columns
from localrun.errors import ToolchainError


def _size(n: int) -> str:
    if n < 1e6:  # the rpc runtime: some 300 kB
        return f"{n / 1e3:.0f} kB"
    return f"{n / 1e6:.0f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"


def _suits(runtime: Any, gpus: list[Any]) -> str:
    from localrun.runtimes import exact, patchset
    from localrun.runtimes.activate import suiting_gpus

    if runtime.backend == exact.BACKEND:
        return "this CPU" if runtime.cpu == patchset.cpu_identity() else "another CPU"
    if runtime.backend == "rpc":
        return "workers"
    ok = suiting_gpus(runtime, gpus)
    return ", ".join(g.name for g in ok) if ok else "no device here"


def _exact_in_use(version: str, built_in: Any) -> str | None:
    """Return the name of the exact runtime every localrun process here loads, or None.

    That is exact.preload's choice, its library checked as a load checks it.
    """
    from localrun.runtimes import exact
    from localrun.runtimes.activate import checked
    from localrun.settings import config

    if not sys.platform.startswith("linux"):
        return None
    if built_in is not None:  # llama_cpp's own CPU library: in use whatever the setting
        return str(built_in.name)
    if config.exact() == "off":
        return None
    found = exact.installed(version)
    if not found or checked(found[-1])[0] is None:
        return None
    return found[-1].name


def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the installed runtimes, which one is selected, and which suit this machine's GPUs.

    The exact runtime is in use whenever it is installed for this CPU, or when pip built the
    installed llama.cpp as the exact runtime (listed as "built in").
    """
    from localrun.hardware import system
    from localrun.runtimes import exact, layout, source
    from localrun.runtimes.activate import auto_choice

    built_in = exact.builtin()  # llama_cpp's own library, made exact by pip's build
    runtimes = layout.installed() + ([built_in] if built_in is not None else [])
    chosen = layout.selection()
    version = source.bindings_version()
    first = auto_choice(version) if chosen == layout.AUTO else None
    in_use = first.name if first is not None else chosen
    exact_in_use = _exact_in_use(version, built_in)
    gpus = system.detect().gpus
    if as_json:
        out = []
        for r in runtimes:
            record = r.to_json()
            record.update(
                selected=r.name in (in_use, exact_in_use), suits=_suits(r, gpus), path=str(r.path)
            )
            out.append(record)
        print(json.dumps({"selected": chosen, "runtimes": out}, indent=2))
        return
    rows = [["NAME", "BACKEND", "LLAMA.CPP", "TOOLCHAIN", "SIZE", "SELECTED", "SUITS"]]
    for r in runtimes:
        stale = "" if r.llama_cpp_version == version else " (stale)"
        rows.append(
            [
                r.name,
                r.backend + (f" {','.join(r.targets)}" if r.targets else ""),
                r.llama_cpp_version
                + (f" (ggml {r.ggml_version})" if r.ggml_version else "")
                + stale,
                r.toolchain,
                _size(r.size),
                _selected(r.name, in_use, exact_in_use, chosen == layout.AUTO),
                _suits(r, gpus),
            ]
        )
    print(columns(rows))
    if not runtimes:
        print("no runtime installed: models run on the installed llama.cpp (`localrun info`)")
    print(f"selection: {chosen}")


def _selected(name: str, in_use: str, exact_in_use: str | None, auto: bool) -> str:
    if name == exact_in_use:
        return "yes (exact)"
    if name == in_use:
        return "yes (auto)" if auto else "yes"
    return ""


def _built_in_exact() -> bool:
    """Say so when pip built the installed llama.cpp as the exact runtime: nothing to build."""
    from localrun.runtimes import exact

    built_in = exact.builtin()
    if built_in is not None:
        print(
            f"nothing to build: the installed llama.cpp's CPU library is the exact runtime "
            f"({built_in.name}: pip built it with localrun's patches)"
        )
    return built_in is not None


def install(
    backend: str = typer.Argument(
        "auto",
        help="cuda, vulkan, auto (what this machine's GPUs need), exact (the CPU library "
        "whose answers do not depend on the batch), or rpc (llama.cpp's RPC backend, for "
        "`localrun worker` and `serve --workers`).",
    ),
    arch: str = typer.Option(
        None, "--arch", help="CUDA architectures to build for (89,90); default: the GPUs here."
    ),
    jobs: int = typer.Option(
        None, "--jobs", "-j", min=1, help="Compile jobs (default: every core)."
    ),
    keep_build: bool = typer.Option(
        False,
        "--keep-build",
        help="Keep the build folder (LOCALRUN_RUNTIME_BUILDS) after the install, so that "
        "installing the same runtime again compiles nothing; by default it is removed once "
        "the runtime is installed (a failed install always keeps it, to resume).",
    ),
) -> None:
    """Build a runtime from the source of the installed llama.cpp, then install it."""
    from localrun.hardware import system
    from localrun.runtimes import build

    backend = backend.lower()
    if backend not in ("auto", "cuda", "vulkan", "exact", "rpc"):
        raise typer.BadParameter("expected cuda, vulkan, auto, exact or rpc")
    if backend == "auto":
        backend = auto_backend(system.detect().gpus)

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if backend == "exact" and _built_in_exact():
        return
    plan = build.plan(backend, arch=arch, say=say)
    say(f"building {plan.name} with {plan.tools.description}")
    show = Stages(sys.stderr.isatty())
    try:
        done = build.install(plan, jobs=jobs, progress=show.update, say=say, keep=keep_build)
    finally:
        show.close()
    runtime = done.runtime
    if runtime.backend == "exact":
        say("every localrun process on this machine loads it now (LOCALRUN_EXACT=off: none)")
    elif runtime.backend == "rpc":
        say("`localrun worker` and `localrun serve --workers` load it when they need it")
    elif done.devices:
        say(f"it found {', '.join(done.devices)}")
    else:
        say("it found no GPU on this machine: models run on the CPU until it has one")
    print(
        f"installed runtime {runtime.name} ({_size(runtime.size)}, built in "
        f"{runtime.build_seconds:.0f} s)"
    )
    from localrun.runtimes import layout, source

    sources = source.kept()
    if sources:  # 74 MB a newcomer found and nothing had said
        size = _size(sum(p.stat().st_size for p in sources))
        say(f"llama-cpp-python's source stays in {sources[0].parent} ({size}) for the next "
            "build: `localrun prune` removes it")  # fmt: skip
    chosen = layout.saved_selection()
    if runtime.backend not in ("exact", "rpc") and chosen not in (layout.AUTO, runtime.name):
        print(f"selection stays {chosen}: `localrun runtime select {runtime.name}` to use it")


def auto_backend(gpus: list[Any]) -> str:
    """CUDA for an NVIDIA GPU, Vulkan for any other; ToolchainError when there is no GPU."""
    if any(g.backend == "cuda" for g in gpus):
        return "cuda"
    if any(g.backend in ("vulkan", "rocm") for g in gpus):
        return "vulkan"
    if any(g.backend == "metal" for g in gpus):
        raise ToolchainError(
            "this Mac's GPU (Metal) is used by the installed llama.cpp already",
            hint="see `localrun info`",
        )
    raise ToolchainError(
        "no GPU was found on this machine", hint="name one: localrun runtime install vulkan"
    )


class Stages:
    """The install's progress: a bar for the compile, a line for each other stage."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.stage = ""
        self.last = 0.0
        self.progress: Any = None
        self.task: Any = None

    def update(self, stage: str, done: int, total: int) -> None:
        if stage != self.stage:
            self.stage = stage
            if self.progress is not None and stage != "compile":
                self.close()  # the bar is done: the next stages print as lines
            if self.progress is None:
                print(f"{stage}...", file=sys.stderr, flush=True)
        if stage != "compile" or total <= 0:
            return
        if self.tty:
            if self.progress is None:
                from rich.console import Console
                from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

                self.progress = Progress(
                    "compile",
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    console=Console(stderr=True),
                    transient=True,
                )
                self.progress.start()
                self.task = self.progress.add_task("compile", total=total)
            self.progress.update(self.task, completed=done, total=total)
        elif time.monotonic() - self.last > 10 or done == total:
            self.last = time.monotonic()
            print(f"compile {done}/{total}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def select(name: str = typer.Argument(..., help="A runtime's name, auto, or cpu.")) -> None:
    """Choose the runtime that runs models (a running server's next model load uses it)."""
    from localrun.runtimes import layout
    from localrun.settings.parse import parse_runtime

    try:
        value = parse_runtime(name)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    layout.select(value)
    print(f"selected {value}")


def rm(name: str = typer.Argument(..., help="The runtime to remove.")) -> None:
    """Remove an installed runtime."""
    from localrun.runtimes import layout

    runtime = layout.remove(name)
    print(f"removed runtime {runtime.name} ({_size(runtime.size)})")
