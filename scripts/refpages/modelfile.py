"""docs/reference/modelfile-parameters.md: the Modelfile's instructions and PARAMETERs, and the
request fields of each API that set them."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

from localrun.engine.types import SamplingOptions
from localrun.errors import LocalrunError
from localrun.recipes import modelfile, params
from localrun.recipes.params import ParamSpec
from localrun.server.anthropic import routes as anthropic
from localrun.server.body import Body
from localrun.server.llamacpp import routes as llamacpp
from localrun.server.openai import routes as openai
from localrun.server.responses import input as responses_input
from refpages.markdown import MissingText, code, header, prose, table


def _grammar(doc: str) -> str:
    """The grammar block of recipes.modelfile's docstring: the indented lines after 'Grammar'."""
    lines = inspect.cleandoc(doc).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Grammar"))
    block = []
    for line in lines[start + 1 :]:
        if line and not line.startswith(" "):
            break
        block.append(line[4:])
    return "\n".join(block).strip("\n")


def _range(spec: ParamSpec) -> str:
    if spec.choices:
        return ", ".join(spec.choices)
    if spec.type is bool:
        return "true, false"
    low, high = spec.minimum, spec.maximum
    show = {2**31 - 1: "2^31-1", 2**63: "2^63", 2**64 - 1: "2^64-1", -(2**63): "-2^63"}

    def num(x: float) -> str:
        return show.get(int(x), str(int(x))) if float(x).is_integer() else f"{x:g}"

    if low is not None and high is not None:
        return f"{num(low)} to {num(high)}"
    if low is not None:
        return f"{num(low)} or more"
    return "repeatable" if spec.repeated else "any"


def param_default(spec: ParamSpec) -> str:
    if spec.default:
        return spec.default
    held = {f.name: f.default for f in dataclasses.fields(SamplingOptions)}
    if spec.name not in held:
        raise MissingText(
            f"PARAMETER {spec.name}: give its ParamSpec a default (recipes/params.py); the "
            "engine's SamplingOptions does not hold it"
        )
    value = held[spec.name]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return "(none)" if value in ((), "") else str(value)


def _parameter_rows() -> list[list[str]]:
    rows = []
    for spec in params.SPECS.values():
        applies = "load" if spec.name in params.LOAD_PARAMS else "request"
        kind = spec.type.__name__ + (", repeatable" if spec.repeated else "")
        rows.append([code(spec.name), kind, _range(spec), param_default(spec), applies, spec.help])
    return rows


# Each dialect whose requests set PARAMETERs by fields of their own, with its options_of(body),
# which turns a request body into options.
DIALECTS: tuple[tuple[str, Callable[[Body], dict[str, Any]]], ...] = (
    ("OpenAI chat, completions", openai.options_of),
    ("OpenAI Responses", responses_input.options_of),
    ("Anthropic Messages", anthropic.options_of),
    ("llama-server /infill", llamacpp.options_of),
)


class _Reads(dict):  # type: ignore[type-arg]
    """A request body that holds no field and records each one read from it."""

    def __init__(self) -> None:
        super().__init__()
        self.read: list[str] = []

    def get(self, key: Any, default: Any = None) -> Any:
        if key not in self.read:
            self.read.append(key)
        return default


def request_fields(options_of: Callable[[Body], dict[str, Any]]) -> dict[str, list[str]]:
    """{PARAMETER: [request fields that set it]}, found by calling `options_of` on a body that
    records the fields it reads, then on a body holding each of them alone."""
    reads = _Reads()
    options_of(Body(reads))
    found: dict[str, list[str]] = {}
    for field in reads.read:
        for probe in (7, "probe"):
            try:
                options = options_of(Body({field: probe}))
            except LocalrunError:
                continue  # not a value of this kind
            for name, value in options.items():
                if value in (probe, [probe]):
                    found.setdefault(name, []).append(field)
            break
    return found


def _api_rows() -> list[list[str]]:
    by_dialect = [request_fields(options_of) for _, options_of in DIALECTS]
    rows = []
    for name in params.SPECS:
        in_options = name in Body({"options": {name: 7}}).options()
        row = [code(name), code(f"options.{name}") if in_options else ""]
        row += [", ".join(code(f) for f in fields.get(name, [])) for fields in by_dialect]
        rows.append(row)
    return rows


def modelfile_page() -> str:
    out = header("Modelfile", "localrun/recipes (modelfile, params)")
    out += [
        prose(
            """A Modelfile is a recipe for a model: `localrun create NAME -f Modelfile` builds
            it, `localrun show NAME --modelfile` writes one back. Instructions are
            case-insensitive, one a line; `#` starts a comment line."""
        ),
        "",
        "```",
        _grammar(modelfile.__doc__ or ""),
        "```",
        "",
        "## Instructions",
        "",
    ]
    out += table(
        ["instruction", "what it does"],
        [[code(k), v] for k, v in modelfile.INSTRUCTION_HELP.items()],
    )
    out += [
        "## Parameters",
        "",
        prose(
            """One table serves `PARAMETER NAME VALUE`, `localrun run --param NAME=VALUE`, the
            chat's `/set parameter NAME VALUE` and the options of API requests, so a value is
            accepted or refused the same way everywhere. Ranges are inclusive. A `load`
            parameter decides how the model is loaded: a request that changes it loads the
            model again."""
        ),
        "",
    ]
    out += table(
        ["parameter", "type", "range", "default", "applies at", "what it does"], _parameter_rows()
    )
    out += [
        "## In the APIs",
        "",
        prose(
            """The request fields that set each parameter, per API: Ollama's `options` object
            takes every one by its name; the other APIs' fields are read from each dialect's
            translation (`options_of`)."""
        ),
        "",
    ]
    out += table(["parameter", "Ollama", *(d for d, _ in DIALECTS)], _api_rows())
    return "\n".join(out).rstrip("\n") + "\n"
