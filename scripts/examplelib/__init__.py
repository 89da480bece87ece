"""The official clients' example programs run against `localrun serve` (scripts/corpora/examples.py,
tests/system/test_sdk_examples.py).

The programs come from the clients' own packages (scripts/corpora/fetch.py: openai-python,
anthropic-sdk-python, ollama-python from PyPI, ollama-js from npm) and run as their users run
them, through those clients, with the clients' environment pointed at localrun and the model
names they use made aliases of a small model.

Modules (each imports only those listed before it):

* ``table`` - examples.toml: every program of every corpus, in or out of scope and why, and
  what a run of it needs (its model, its input, its answer cap, how it ends);
* ``server`` - a `localrun serve` of the run's own (a temporary home, no registry, no hub);
* ``models`` - the models the names stand for, set up over the server's API: SmolLM2-135M, and
  the tiny vision, fill-in-the-middle and thinking models tests/ generate;
* ``node`` - the npm packages a JavaScript corpus runs with, installed in a temporary folder;
* ``running`` - one program run: its copy, its environment, its deadline, its outcome;
* ``session`` - programs run one after another against one server: each corpus copied once,
  each program's names pointed at its model just before it runs.
"""
