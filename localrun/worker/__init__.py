"""The runner: one loaded model answering requests, in a process of its own or in this one.

    load.py      a model's LoadSpec loaded for a runner: memory plan, engine,
                 prompter; the runner is handed what to load, never a name to look up
    prompt.py    a GenRequest made into prompt tokens and sampling for the loaded model
                 (template, SYSTEM and MESSAGE layers, tools, thinking, fill in the middle)
    grammars/    format.py (a `format`'s grammar, as llguidance takes it) and forced.py (a
                 call's grammar in the family's syntax: forced, or a strict tool's)
    view.py      the prompt a chat renders to, without loading the model
    probe.py     a model not yet seen to load is loaded first in a child runner (`run`)
    serve.py     the Worker: requests in (prepared by localrun.worker.prompt), events out
    sink.py      an answer on its way out: thinking split off, stop strings, tool calls,
                 log-probabilities with the text of their tokens
    protocol.py  the JSON-lines messages between the scheduler and a runner (a GenRequest
                 travels whole)
    writer.py    the runner process's event lines to stdout, written by a thread of their own
    main.py      `python -m localrun.worker` (see __main__): the runner process of `localrun
                 serve`, reading requests on stdin
    load_watch.py  the watchdog over a load in that process (time limit, memory bound)
    process.py   the server's side of one runner process (start, requests, events, stop)
    local.py     a runner in the process of `localrun run`: the same Worker, dispatched to
                 directly, its events read from queues

Importing this package is cheap: no llama_cpp, no numpy.
"""
