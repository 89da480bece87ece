"""Hostile input, a surface a script, against real `localrun serve` and `localrun` processes.

routes                     seeded requests on every route of every dialect
gguf_files                 mutants of a valid GGUF through `create` and `run`
model_building             templates, imports, checkpoints, adapters and jobs of `create`
registries                 hostile registries: pull, push, logins (fuzzlib.replay)
schemas                    hostile schemas and tool types (fuzzlib.replay)
launch_and_runtime         settings, `launch`'s files and the exact runtime (fuzzlib.replay)
background_checkers        background runs, replays, the schema checker's turns and memory,
                           grammar preparation, scored prompts
tokens_gateway_cache       tokenizing, a gateway's upstreams, the prompt cache folder
slow_connections           a flood of slow connections
"""
