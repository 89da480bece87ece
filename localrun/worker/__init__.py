"""The runner: one loaded model answering requests, in a process of its own or in this one.

Importing this package is cheap: no llama_cpp, no numpy. One concern a module:
    load.py        a model's LoadSpec loaded: memory plan, engine, prompter; never a name looked up
    prompt.py      a GenRequest made into prompt tokens and sampling for the loaded model
    grammars/      a `format`'s grammar for llguidance (format.py); a forced call's (forced.py)
    view.py        the prompt a chat renders to, without loading the model
    probe.py       a model not yet seen to load is loaded first in a child runner (`run`)
    serve.py       the Worker: requests in (prepared by prompt.py), events out
    sink.py        an answer on its way out: thinking, stop strings, tool calls, log-probabilities
    protocol.py    the JSON-lines messages between the scheduler and a runner
    main.py        `python -m localrun.worker`, `localrun serve`'s runner; writer.py, its stdout
    load_watch.py  the watchdog over a load in that process (time limit, memory bound)
    process.py     the server's side of one runner process (start, requests, events, stop)
    local.py       a runner in the process of `localrun run`: the same Worker, events in queues
"""
