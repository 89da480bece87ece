"""What a model family reads and writes: chat templates, tool calls, reasoning markers.

    template.py         a conversation -> prompt text: the one door to what follows
    jinja/              Hugging Face's template environment, sandboxed
    adapt.py            the conversation adapted to what a template renders (probed once)
    families.py         the template of a GGUF that has none, by its vocabulary's markers
    ollama/             Ollama's Go templates as Ollama renders them (template, values,
                        convert, funcs), on gotemplate/
    gotemplate/         Go's text/template as Go executes it (lex, parse, exec, funcs, fmt, json)
    sandbox.py          the bounds on rendering an untrusted template (time, size), Jinja's
                        and Go's alike
    calls.py            tool definitions in the prompt, the tool note, tool_choice
    parsers/            each family's call syntax and reasoning tags, chosen from the template
                        (one module a family behind one table; derive.py for the rest)
    reasoning.py        which templates think, how a request asks, the answer split in two
    grammar_bounds.py   the bounds on the schema a request constrains its answer with
    schema_refs.py      how deep a schema nests once its $refs are followed

Text in, text out: imports only errors, settings and jsonlimits. The runner's prompt
(worker/prompt.py) puts these together for one loaded model; dialects never look inside.
"""
