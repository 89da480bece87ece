"""The runner subprocess of `localrun serve`: one loaded model answering over JSON lines.

`python -m localrun.worker` (see __main__) loads a model with the batch engine and serves chat,
completion and embedding requests from its stdin; `protocol` holds the message helpers that
both it and the scheduler use, and `process` the server's side of one runner (start, requests,
events, stop). Importing this package is cheap: no llama_cpp, no numpy.
"""
