"""Hugging Face's chat template environment: Jinja, sandboxed, as transformers renders it.

    env.py      the environment (transformers' additions, a budget on `range`, the sizing
                filters and operators checked): compile_jinja, render_jinja, variables

The bounds it renders under (the sizes it checks, the watchdog on time and memory) are
formats/sandbox.py's, which Go templates share. What a conversation must look like for one
template is formats/adapt.py's. Nothing is imported here; jinja2 itself only when a template
is compiled.
"""
