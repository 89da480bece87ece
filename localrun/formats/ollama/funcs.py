"""The functions Ollama gives its templates: json, currentDate, yesterdayDate, toTypeScriptType.

They follow the funcs of ollama/ollama `template/template.go`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from localrun.formats.gotemplate.fmt import Fail, go_type
from localrun.formats.gotemplate.json import JSONUnsupported, go_json
from localrun.formats.ollama.values import ToolProperty


def _json(value: Any) -> str:
    try:
        return go_json(value)
    except (JSONUnsupported, RecursionError):
        return ""


def _dates(args: tuple[Any, ...]) -> None:
    for arg in args:
        if not isinstance(arg, str):
            raise Fail(f"wrong type for value; expected string; got {go_type(arg)}")


def _current_date(*args: Any) -> str:
    _dates(args)  # the format argument is accepted and ignored, as in Ollama
    return datetime.now().strftime("%Y-%m-%d")


def _yesterday_date(*args: Any) -> str:
    _dates(args)
    return (datetime.now() - timedelta(days=1)).strftime("%Y-%m-%d")


_TS = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean",
       "array": "any[]", "object": "Record<string, any>", "null": "null"}  # fmt: skip


def _typescript(prop: Any) -> str:
    if not isinstance(prop, ToolProperty):
        return "any"
    if prop.AnyOf:
        return " | ".join(_typescript(p) for p in prop.AnyOf)
    if not prop.Type:
        return "any"
    return " | ".join(_TS.get(t, "any") for t in prop.Type)


FUNCS = {
    "json": _json,
    "currentDate": _current_date,
    "yesterdayDate": _yesterday_date,
    "toTypeScriptType": _typescript,
}
