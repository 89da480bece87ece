"""Ollama's templates rendered as Ollama renders them, on Go's text/template (formats/gotemplate/).

    template.py     parse as Ollama parses, render a conversation as Ollama does (the door:
                    check, load, render; it re-exports the values the callers need)
    values.py       the values its templates see (.Messages, .Tools, ...), as Go types
    convert.py      a chat request's messages and tools -> those values, collated
    funcs.py        the functions Ollama gives its templates (json, currentDate, ...)

Loaded only when a Go template is met (formats/template.py's `_ollama`), so nothing is imported
here.
"""
