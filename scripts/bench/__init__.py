"""Speed against llama.cpp measured in the same run, interleaved: each script prints its ratios.

    decode         `localrun run` decode against llama-bench and llama-cpp-python (--suite: the
    others) serve          `localrun serve` against llama-server and llama_cpp.server, each dialect
    streams        many streams at once against llama-server with as many slots
    multiturn      a multi-turn chat: time to first token a turn, a new process resuming it
    speculative    speculative decoding and the disk prompt cache against llama-server
    exact          what the exact runtime costs in llama.cpp's own tools
    busy           decode on a machine kept busy on purpose
    overhead       the generation loop's cost beyond llama_decode, per token
    offload        the offload planner against what a real GPU holds
    gateway        serve routing a model to an upstream, against the upstream itself
    workers        a model split across two RPC workers against itself alone and llama.cpp's split
    pull           pull throughput against hf_hub_download and a registry

Run one as `python scripts/bench/NAME.py`; it puts scripts/ on sys.path for the packages the
scripts share (benchlib, testmodels, hubs).
"""
