"""The model parameters (Ollama's set): names, types, ranges and parsing.

One table serves the Modelfile's PARAMETER, `--param NAME=VALUE` on the command line and the
`options` of API requests, so a value is accepted or refused the same way everywhere.
Pure: no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from localrun.errors import InvalidParameterError
from localrun.settings.config import SPECULATE_MODES
from localrun.settings.parse import MAX_CONTEXT_LENGTH

Value = int | float | bool | str


@dataclass(frozen=True)
class ParamSpec:
    """A parameter: its type, inclusive bounds, whether it repeats, and what it does.

    `default` words what applies when no one sets it, for a parameter the engine's sampling
    options (engine.types.SamplingOptions) do not hold, or hold other than what applies.
    """

    name: str
    type: type
    help: str
    minimum: float | None = None
    maximum: float | None = None
    repeated: bool = False
    choices: tuple[str, ...] = ()  # a str parameter's allowed values (empty: any)
    default: str = ""

    def parse(self, text: str) -> Value:
        """Parse one textual value; raises InvalidParameterError naming the parameter."""
        value: Value
        if self.type is str:
            # Stop sequences keep their blanks; a choice is a word.
            return self.check(text.strip().lower() if self.choices else text)
        text = text.strip()
        if self.type is bool:
            lowered = text.lower()
            if lowered in ("true", "1", "yes", "on"):
                value = True
            elif lowered in ("false", "0", "no", "off"):
                value = False
            else:
                raise self._error(f"expected true or false, got {text!r}")
        elif self.type is int:
            try:
                value = int(text, 10)
            except ValueError:
                raise self._error(f"expected an integer, got {text!r}") from None
        else:
            try:
                value = float(text)
            except ValueError:
                raise self._error(f"expected a number, got {text!r}") from None
        return self.check(value)

    def check(self, value: Any) -> Value:
        """Validate an already-typed value (as it arrives in JSON) and return it."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise self._error(f"expected true or false, got {value!r}")
            return value
        if self.type is str:
            if not isinstance(value, str) or not value:
                raise self._error(f"expected a non-empty string, got {value!r}")
            if self.choices and value not in self.choices:
                raise self._error(f"expected one of {', '.join(self.choices)}, got {value!r}")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self._error(f"expected a number, got {value!r}")
        if self.type is int:
            if isinstance(value, float):
                if not value.is_integer():
                    raise self._error(f"expected an integer, got {value!r}")
                value = int(value)
        else:
            try:
                value = float(value)
            except OverflowError:  # an int from JSON too large for a float
                raise self._error("expected a finite number, got a huge integer") from None
            if not math.isfinite(value):
                raise self._error(f"expected a finite number, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise self._error(f"{value} is below the minimum {_num(self.minimum)}")
        if self.maximum is not None and value > self.maximum:
            raise self._error(f"{value} is above the maximum {_num(self.maximum)}")
        return value  # type: ignore[no-any-return]

    def _error(self, reason: str) -> InvalidParameterError:
        return InvalidParameterError(
            f"invalid value for parameter {self.name}: {reason}",
            hint=f"{self.name}: {self.help}",
        )


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_I32 = 2**31 - 1

SPECS: dict[str, ParamSpec] = {
    p.name: p
    for p in (
        ParamSpec(
            "num_ctx",
            int,
            "context window in tokens (1 or more)",
            1,
            MAX_CONTEXT_LENGTH,
            default="LOCALRUN_CONTEXT_LENGTH (4096), held to the context the model was trained on",
        ),
        ParamSpec(
            "num_batch",
            int,
            "prompt tokens processed per batch (1 or more)",
            1,
            2**20,
            default="512",
        ),
        ParamSpec(
            "num_gpu",
            int,
            "layers to offload to the GPU; -1 = decide automatically",
            -1,
            10_000,
            default="-1 (as many as the GPU's memory holds)",
        ),
        ParamSpec(
            "main_gpu", int, "index of the GPU for small tensors and scratch", 0, 255, default="0"
        ),
        ParamSpec(
            "num_thread",
            int,
            "CPU threads for generation; 0 = decide automatically",
            0,
            4096,
            default="0 (the physical cores this process may run on)",
        ),
        ParamSpec(
            "use_mmap", bool, "map the model file instead of reading it into memory", default="true"
        ),
        ParamSpec(
            "num_keep",
            int,
            "tokens kept from the prompt when the context shifts (taken for Ollama's clients; "
            "localrun never shifts the context, a full one ends the answer)",
            -1,
            _I32,
            default="(unused)",
        ),
        # Ollama and OpenAI take any 64-bit seed; llama.cpp's sampler takes 32 bits, so the
        # engine reduces a seed as Go's uint32() does (engine.sampling.sampler.native_seed).
        ParamSpec(
            "seed",
            int,
            "random seed; -1 = random; a 64-bit seed (Ollama's clients send such) is reduced to "
            "32 bits as Ollama does",
            -(2**63),
            2**64 - 1,
        ),
        ParamSpec(
            "num_predict", int, "tokens to generate; -1 = until done, -2 = fill context", -2, _I32
        ),
        ParamSpec("top_k", int, "sample from the k likeliest tokens; 0 = off", 0, _I32),
        ParamSpec("top_p", float, "nucleus sampling probability mass, 0 to 1", 0.0, 1.0),
        ParamSpec(
            "min_p", float, "minimum probability relative to the likeliest, 0 to 1", 0.0, 1.0
        ),
        ParamSpec("typical_p", float, "locally typical sampling mass, 0 to 1; 1 = off", 0.0, 1.0),
        ParamSpec(
            "repeat_last_n", int, "tokens looked back for repeat penalty; -1 = num_ctx", -1, _I32
        ),
        ParamSpec("temperature", float, "sampling temperature, 0 (greedy) to 100", 0.0, 100.0),
        ParamSpec(
            "repeat_penalty", float, "penalty for repeated tokens, 0 to 100; 1 = off", 0.0, 100.0
        ),
        ParamSpec(
            "presence_penalty", float, "penalty for tokens already present, -2 to 2", -2.0, 2.0
        ),
        ParamSpec("frequency_penalty", float, "penalty by token frequency, -2 to 2", -2.0, 2.0),
        ParamSpec("stop", str, "a sequence that ends generation (repeatable)", repeated=True),
        ParamSpec(
            "speculate",
            str,
            "speculative decoding: auto (prompt lookup where it pays, the DRAFT model if any), "
            "ngram, draft or off",
            choices=SPECULATE_MODES,
            default="LOCALRUN_SPECULATE (auto)",
        ),
        ParamSpec(
            "grammar_forcing",
            bool,
            "where a schema or grammar forces the text, write it as the tokenizer spells it "
            "(true) or let the model spell it token by token (false: a model that does not "
            "answer in its tokenizer's spelling)",
            default="true",
        ),
        ParamSpec(
            "draft_num_predict",
            int,
            "most tokens drafted ahead per step by speculation, 0 to 256; 0 = off",
            0,
            256,
        ),
    )
}

# The PARAMETERs that decide how a model is loaded (its context, batch, threads, GPU layers and
# memory mapping): a request that changes one needs the model loaded again.
LOAD_PARAMS = ("num_ctx", "num_batch", "num_thread", "num_gpu", "main_gpu", "use_mmap")


def spec(name: str) -> ParamSpec:
    """The spec of a parameter by (case-insensitive) name; raises InvalidParameterError."""
    found = SPECS.get(name.strip().lower())
    if found is None:
        raise InvalidParameterError(
            f"unknown parameter {name!r}",
            hint="known parameters: " + ", ".join(SPECS),
        )
    return found


def parse_assignment(text: str) -> tuple[str, Value]:
    """Parse `NAME=VALUE` (as given to --param)."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise InvalidParameterError(
            f"expected NAME=VALUE, got {text!r}", hint="for example --param temperature=0.2"
        )
    found = spec(name)
    return found.name, found.parse(value)


def merge(base: dict[str, Any], updates: list[tuple[str, Value]]) -> dict[str, Any]:
    """Apply (name, value) pairs over `base`: a repeated parameter replaces the inherited list."""
    out = dict(base)
    fresh: set[str] = set()
    for name, value in updates:
        if SPECS[name].repeated:
            if name not in fresh:
                out[name] = []
                fresh.add(name)
            out[name].append(value)
        else:
            out[name] = value
    return out


def validate(values: dict[str, Any]) -> dict[str, Any]:
    """Validate a JSON object of parameters (a params layer or API options)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        found = spec(name)
        if found.repeated:
            items = value if isinstance(value, list) else [value]
            out[found.name] = [found.check(v) for v in items]
        else:
            out[found.name] = found.check(value)
    return out
