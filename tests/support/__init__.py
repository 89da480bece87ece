"""What the tests of every tier share; a test file imports from here, never from another test
file (tests/unit/test_layout.py checks it). Fixtures stay in tests/conftest.py.

    support            where things are (ROOT, DATA, TEMPLATES, ...), PATIENCE_S, free_port()
    support.cli        the `localrun` command in a subprocess, and its one-line errors
    support.server     the real app on uvicorn in a thread (LiveServer), models added to a store
    support.serve      `localrun serve` in a subprocess (Serve), and as a gateway to upstreams
    support.dialects   one question with tools, asked in each dialect through the official clients
    support.tools      the tool definitions the tests offer (WEATHER, ...)
    support.media      images and sounds as requests carry them
    support.batch      a request to the batch engine, and the sink that collects its answer
    support.speculation  the code-editing prompt, and comparing answers up to a near tie
    support.stores     other runners' stores (Ollama's, the Hugging Face cache, llama.cpp's, LM
                       Studio's) as they lay them out
    support.runtimes   the GPU runtimes' build folder and the Vulkan software device
    support.runner     a runner process (`python -m localrun.worker`) driven through its protocol
    support.blobs      a store as the tests look into it: digests, blob and temporary files
    support.workers    what a test runs in a child process of its own (spawn imports it by name)
    support.rpc        llama.cpp's RPC protocol as the fake workers speak it, on loopback
    support.mshub, support.proxy
                       ModelScope's hub and the forward proxy, on loopback (Hugging Face's hub
                       and the registries: scripts/hubs, which the scripts use too)
    support.family_cases   each model family's canonical tool call, with its template
    support.vllm_shim  the stand-in `vllm` package that runs vLLM's parser tests on localrun's

scripts/ is on sys.path too (pyproject's pythonpath), and the imports go one way: the tests import
scripts/, never the reverse (tests/unit/test_layout.py checks it). scripts/testmodels writes the
test models, scripts/hubs serves the hubs, and the scripts' other shared libraries serve the tests
as they serve the scripts, one implementation for both: benchlib's reference scores
(llama-cpp-python's own log-probabilities) and busy loop, fuzzlib's scripted upstream and hostile
inputs; unit/scripts tests them. A test of a script imports it from its folder
(`from maintenance import build_binary`, `from fuzz import gguf_files`).
"""

from __future__ import annotations

import os
from pathlib import Path

from hubs import free_port as free_port  # where the tests have always found it

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
DATA = TESTS / "data"
TEMPLATES = DATA / "templates"  # llama.cpp's chat templates (models/templates)
OLLAMA_TEMPLATES = DATA / "ollama_templates"
# Other projects' test files, fetched by scripts/corpora/fetch.py (or where LOCALRUN_CORPORA says).
CORPORA = Path(os.environ.get("LOCALRUN_CORPORA") or DATA / "corpora")

# How long a test waits for what it expects (an answer, a line, an exit, a file) before it calls
# it a hang. A deadline is for hangs, never a measure of speed: CI machines are shared, and at a
# load of 12 on 2 cores a step that takes 2 seconds takes a minute. Tests wait on the event
# itself; this bounds the wait.
PATIENCE_S = 600.0
