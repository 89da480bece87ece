"""What a model family reads and writes: chat templates, tool calls, reasoning markers.

    template.py         a conversation -> prompt text, for worker/prompt.py: the door to the rest
    jinja/              Hugging Face's template environment, sandboxed
    adapt.py            the conversation adapted to what a template renders (probed once)
    families.py         the template of a GGUF that has none, by its vocabulary's markers
    ollama/             Ollama's Go templates, run by gotemplate/ as Go runs text/template
    sandbox.py          time and size bounds on an untrusted template's rendering, Jinja's or Go's
    calls.py            tool definitions in the prompt, the tool note, tool_choice
    parsers/            each family's call syntax and reasoning tags, chosen from the template
    reasoning.py        which templates think, how a request asks, the answer split in two
    grammar_bounds.py   the bounds on the schema a request constrains its answer with
    schema_refs.py      how deep a schema nests once its $refs are followed

Text in, text out: imports only errors, settings and jsonlimits. Dialects never look inside.
"""
