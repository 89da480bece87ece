"""What the benchmarks in scripts/ share; each script keeps its own measurement and report.

Modules (each imports only those listed before it):

* ``common`` - progress lines (say), a stack that cannot be measured (Unavailable), running a
  tool to completion, the default model (the SmolLM2 starter);
* ``report`` - medians, ratios and formatting of the figures;
* ``machine`` - how busy the machine was (cores other processes took, steal), waiting for quiet;
* ``build`` - the llama.cpp build (llama-bench, llama-server, llama-mtmd-cli) from the sources
  llama-cpp-python vendors, with CUDA on --cuda;
* ``load`` - a busy machine made on purpose: bounded busy loops beside a measurement;
* ``workloads`` - the prompts speculative decoding is measured on;
* ``corpus`` - held-out prompts made from this repository (measure/lookup_bound.py --corpus);
* ``store`` - a localrun of a benchmark's own: its CLI against a store in a temporary home;
* ``streams`` - the prompt, one measured request (Stream) and how to stream it from each server;
* ``serve`` - the servers a benchmark starts: localrun serve, llama-server, llama_cpp.server;
* ``dialects`` - localrun's API dialects against each other, and fill-in-the-middle against
  llama-server's (part of scripts/bench/serve.py's run);
* ``promptcache`` - the disk prompt cache: two fresh `localrun run` in a row against a cold
  llama-server (part of scripts/bench/speculative.py's run);
* ``bound`` - the oracle bound of prompt-lookup speculation (scripts/measure/lookup_bound.py);
* ``scores`` - llama.cpp's own log-probabilities of a prompt's tokens (llama-cpp-python with
  logits at every row), the oracle of prompt scoring (tests, scripts/measure/eval_harness.py);
* ``worker`` - the jobs scripts/bench/decode.py runs in a child process (llama_cpp imported there
only).
"""
