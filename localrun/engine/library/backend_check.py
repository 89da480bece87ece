"""Load a freshly built backend module into llama.cpp in a process of its own, and report it.

`python -m localrun.engine.library.backend_check MODULE [LIBRARY_FOLDER...]` prints what the
module registered as one JSON line:
{"error": null, "backend": "Vulkan", "devices": ["Vulkan0 (...)"]}.

`--exact MODULE` checks the exact runtime's CPU library (localrun/runtimes/exact.py) instead. It is
loaded in place of the installed one, before llama.cpp: it must be the process's only
libggml-cpu, and llama.cpp must register its CPU device from it.

The runtime install (localrun.runtimes.build) runs this before a runtime is moved into place. A
module that does not load, or crashes the process that loads it, is never installed. A module
that loads but finds no GPU (a machine without one, building ahead) is installed, and the
install says so.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    if argv[:1] == ["--exact"]:
        return check_exact(argv[1:])
    if not argv:
        print(json.dumps({"error": "usage: check MODULE [LIBRARY_FOLDER...]"}))
        return 2
    os.environ["LOCALRUN_RUNTIME"] = "cpu"  # the installed runtimes stay out of this check
    from localrun.engine.library.native import libllama_path
    from localrun.runtimes import activate, ggml

    lib = ggml.library(libllama_path())
    activate.preload(tuple(argv[1:]))
    reg = lib.ggml_backend_load(argv[0].encode())
    if not reg:
        print(json.dumps({"error": "ggml_backend_load refused it (see the log above)"}))
        return 1
    name = ggml.backends(lib)[-1] if ggml.backends(lib) else ""
    found = [str(d) for d in ggml.registered_devices(lib, reg)]
    print(json.dumps({"error": None, "backend": name, "devices": found}))
    return 0


def check_exact(argv: list[str]) -> int:
    if len(argv) != 1:
        print(json.dumps({"error": "usage: check --exact MODULE"}))
        return 2
    from pathlib import Path

    from localrun.runtimes import exact

    module = Path(argv[0])
    os.environ["LOCALRUN_RUNTIME"] = "cpu"  # the installed GPU runtimes stay out of this check
    state = exact.preload(module)  # before engine/native loads llama.cpp (and an installed one)
    if state.warning:
        print(json.dumps({"error": state.warning}))
        return 1
    from localrun.engine.library.native import lc
    from localrun.runtimes import ggml

    problem = exact.in_use(module)
    if problem is not None:
        print(json.dumps({"error": problem}))
        return 1
    lc.llama_backend_init()
    lib = ggml.library(None)
    print(json.dumps({"error": None, "devices": [str(d) for d in ggml.devices(lib)]}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
