"""What the fuzzers of scripts/fuzz/ share, and the scripted upstream the gateway's tests talk
to.

Modules (each imports only those listed before it):

* ``hostile`` - the seeded generator of hostile requests for every route of every dialect;
* ``checks`` - sending one, and whether its answer is sound (status, the dialect's error shape);
  the memory of the server's process tree;
* ``upstream`` - FakeUpstream: a scripted OpenAI-only upstream that answers, or fails on cue
  (hostile modes included);
* ``processes`` - a real `localrun serve` and `localrun` commands, and what is watched in them
  (peak memory, job processes and threads, the slowest /api/version);
* ``inputs`` - the hostile files of issue 57 (GGUFs with hostile templates, mutated checkpoints
  and adapters, sparse and many-tensor shards, other runners' folders);
* ``layout`` - a minimal GGUF layout: parse, edit, serialize;
* ``mutants`` - mutants of a valid GGUF, semantic and structural;
* ``watch`` - what a case does to a server: the peaks of its parts (the server, its runners,
  its jobs), the slowest /api/version, the longest pause of another client's stream;
* ``watched`` - issue 76's harness: cases run as requests or commands under ``watch``, and
  their rows against the targets;
* ``registry`` - issue 76's hostile registries on loopback (scripts/hubs/registries.py's scripted
  one in each mode, a port that speaks no HTTP, a closed one);
* ``replay`` - issue 76's runs (scripts/fuzz/registries.py, schemas.py, launch_and_runtime.py):
  the home, the base model pushed to a registry, the commands' and the server's cases, the
  summary against the targets;
* ``report`` - the end of a fuzzer's report: its defects and misses, and its exit status.
"""
