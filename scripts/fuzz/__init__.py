"""Hostile input, a surface a script, against real `localrun serve` and `localrun` processes.

routes                     seeded requests on every route of every dialect
gguf_files                 mutants of a valid GGUF through `create` and `run`
model_building             templates, imports, checkpoints, adapters and jobs of `create`
registries_schemas_launch  registries (pull, push, logins), schemas, tool types, settings,
                           `launch` and the runtimes, replayed and watched
background_checkers        background runs, replays, the schema checker's turns and memory,
                           grammar preparation, scored prompts
tokens_gateway_cache       tokenizing, a gateway's upstreams, the prompt cache folder
slow_connections           a flood of slow connections
"""
