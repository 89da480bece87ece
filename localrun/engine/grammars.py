"""The GBNF grammars for JSON output: any JSON value (--format json) and the values a JSON schema
accepts (format with a schema, response_format, forced tool calls). Text only: the native
grammar sampler is engine.sampling's."""

from __future__ import annotations

# A character inside a JSON string, as llama.cpp's own C++ converter writes it: no raw control
# character (U+0000-U+001F, which JSON forbids unescaped) and no DEL. llama_cpp's Python port
# of the converter allows any character but '"' and '\\', so a schema-constrained answer could
# hold a raw newline in a string and fail to parse.
JSON_CHAR_RULE = r'[^"\\\x7F\x00-\x1F] | [\\] (["\\/bfnrt] | "u" [0-9a-fA-F]{4})'


def json_grammar() -> str:
    """llama.cpp's GBNF grammar for any JSON value (used for --format json).

    Its string rule already excludes raw control characters (tests check that it does).
    """
    from llama_cpp.llama_grammar import JSON_GBNF

    return str(JSON_GBNF)


def json_schema_grammar(schema: str) -> str:
    """A GBNF grammar for the JSON values the JSON schema `schema` (JSON text) accepts.

    llama_cpp's converter is pure Python (a port of llama.cpp's json_schema_to_grammar.py) and
    raises anything from KeyError to AssertionError on schemas it cannot handle: callers catch.
    Its `char` rule is replaced by JSON_CHAR_RULE, so every string of the answer is valid JSON.
    """
    from llama_cpp.llama_grammar import PRIMITIVE_RULES, json_schema_to_gbnf

    grammar = str(json_schema_to_gbnf(schema))
    loose = f"char ::= {PRIMITIVE_RULES['char'].content}"
    return "\n".join(
        f"char ::= {JSON_CHAR_RULE}" if line == loose else line for line in grammar.split("\n")
    )
