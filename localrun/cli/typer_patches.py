"""Patch typer to start faster and show flags without a type; cli/app applies the patches once.

- Help shows no value type for flags (typer 0.29 writes `--version <bool>` for a flag).
- A value that needs no conversion is not handed to pydantic. So `localrun list` does not
  import pydantic (about 100 ms of its start-up) to read no option at all (see _Plain).
- Help imports typer.rich_utils without rich.markdown and rich.traceback (markdown-it and
  Pygments, about 60 ms), which localrun's help never uses (see import_rich_help).

Where a later typer lacks what a patch replaces, the patch is not applied. The command then works
as typer has it, and tests/unit/cli/test_startup.py, which checks what `list` and `--help`
import, says the start-up cost came back.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any


def apply() -> None:
    """Apply every patch (idempotent)."""
    _flags_without_a_type()
    _no_conversion_needed()
    _help_without_markdown()


def _flags_without_a_type() -> None:
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_localrun", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich._localrun = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


# typer 0.29 converts every parameter's value through a pydantic TypeAdapter, built on first use.
# It builds one even for a value it then returns untouched (an option left out, None). None, a
# `str` that is a str and a `list[str]` of strs are taken here as they are, exactly as the adapter
# would return them. Anything else (numbers, paths, choices) still goes through typer's own
# conversion.
class _Plain:
    """Convert a parameter's value, building typer's pydantic TypeAdapter only when needed."""

    def __init__(self, param: Any, build: Any) -> None:
        self.param = param
        self.build = build

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        many = param.multiple or param.nargs == -1
        if value is None:  # typer's RuntimeParam.coerce returns these before any conversion
            return () if many else None
        described = param.type_descriptor
        plain = described.parameter_info.parser is None and described.file_annotation is None
        if plain and not many and described.annotation is str and type(value) is str:
            return value
        if (
            plain
            and many
            and described.annotation == list[str]
            and type(value) in (list, tuple)
            and all(type(item) is str for item in value)
        ):
            return list(value)
        return self.build(param).coerce(value, param=param, ctx=ctx)


def _no_conversion_needed() -> None:
    from typer.core import _TyperParameter

    build = getattr(_TyperParameter, "get_runtime_param", None)
    if build is None or getattr(build, "_localrun", False):
        return

    def get_runtime_param(self: _TyperParameter) -> Any:
        return _Plain(self, build)

    get_runtime_param._localrun = True  # type: ignore[attr-defined]
    _TyperParameter.get_runtime_param = get_runtime_param  # type: ignore[method-assign]


class _Deferred(type):
    """The metaclass of a stand-in for a rich class, which hands over to the real class.

    Calling the stand-in or reading an attribute of it imports the real class.
    """

    _module: str
    _name: str

    def real(cls) -> Any:
        return getattr(importlib.import_module(cls._module), cls._name)

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        return cls.real()(*args, **kwargs)

    def __getattr__(cls, name: str) -> Any:
        return getattr(cls.real(), name)


# The modules typer.rich_utils imports and help never uses, and the class it takes from each.
# rich_utils imports them at the top, but needs Markdown only for rich_markup_mode="markdown"
# and Traceback only for pretty exceptions; localrun uses neither. Each stands in as a class
# that imports the real one when it is used.
_UNUSED_BY_HELP = {"rich.markdown": "Markdown", "rich.traceback": "Traceback"}


def import_rich_help() -> None:
    """Import typer.rich_utils with stand-ins for the rich modules help does not use."""
    if "typer.rich_utils" in sys.modules:
        return
    import types

    placed = []
    for module, name in _UNUSED_BY_HELP.items():
        if module in sys.modules:
            continue
        stand_in = types.ModuleType(module)
        setattr(stand_in, name, _Deferred(name, (), {"_module": module, "_name": name}))
        sys.modules[module] = stand_in
        placed.append(module)
    try:
        importlib.import_module("typer.rich_utils")
    finally:
        for module in placed:  # a later import of either module gets the real one
            del sys.modules[module]


def _help_without_markdown() -> None:
    from typer.core import TyperCommand, TyperGroup

    for cls in (TyperCommand, TyperGroup):
        format_help = cls.format_help
        if getattr(format_help, "_localrun", False):
            continue
        cls.format_help = _importing_rich_help_first(format_help)  # type: ignore[method-assign]


def _importing_rich_help_first(format_help: Any) -> Any:
    from typer import core

    def wrapped(self: Any, ctx: Any, formatter: Any) -> Any:
        if core.HAS_RICH and self.rich_markup_mode is not None:  # typer's test for rich help
            import_rich_help()
        return format_help(self, ctx, formatter)

    wrapped._localrun = True  # type: ignore[attr-defined]
    return wrapped
