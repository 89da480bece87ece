"""Go's text/template, as Go executes it, for the templates Ollama's models carry.

    lex.py      source -> tokens (and looks_like_go: whether a template is Go's kind at all)
    parse.py    tokens -> a tree, checked as Go's text/template/parse checks it
    exec.py     the parsed set (GoTemplate, parse), its Budget, the executor
    funcs.py    Go's builtin functions (truth, the comparisons, len, index, the print family)
    fmt.py      Go's fmt and strconv: values as %v prints them, Sprint, Sprintf
    json.py     Go's encoding/json: json.Marshal, byte for byte

Nothing here knows Ollama: its values and functions are formats/ollama/. Nothing is imported
here either: formats/template.py asks lex.py of every template whether it is Go's kind, and
loads the rest only when one is (formats/template.py's `_ollama`).
"""
