"""Answers and numbers held to a reference: what localrun computes against the model itself,
llama.cpp's own tools, the published suites and the real clients.

    precision          each CPU path's log-probabilities against an F32-KV reference
    batch_invariance   whether a token's logits depend on the batch it was read in
    lookup_bound       the oracle bound of prompt lookup on this machine
    vision             images: answers against llama.cpp's multimodal tool, and their speed
    structured         JSONSchemaBench against llama-server, side by side
    schema_suite       the JSON Schema Test Suite asked of every route
    schema_neighbours  what a hostile schema costs another client's stream
    convert_compare    the safetensors conversion against convert_hf_to_gguf.py, tensor by tensor
    eval_harness       lm-evaluation-harness scoring a model through `localrun serve`
    agent_prompts      the tokens each coding agent's first prompt takes
    agents_e2e         the real coding agents end to end against `localrun serve`
"""
