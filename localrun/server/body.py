"""Reading a request: its body as a JSON object, and typed access to its fields.

Every dialect reads its body with `read_json` and its fields through `Body`. A field of the
wrong type is then a 400 that names it, in the words of every route alike. Model options are
checked against localrun's parameters here: unknown ones are dropped with a warning, as Ollama
does.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from starlette.requests import Request

from localrun.errors import BadRequestError
from localrun.recipes import params
from localrun.request import jsonlimits
from localrun.settings import config

log = logging.getLogger("localrun.server")

# Tokens one request may bias (the sampler visits each for every token it samples).
MAX_LOGIT_BIAS = 4096

# Options Ollama's clients may send that localrun has no use for (they change nothing here, and
# are dropped without a warning; other unknown keys are dropped with one, as Ollama does).
IGNORED_OPTIONS = frozenset(
    {
        "numa",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
        "embedding_only",
        "tfs_z",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "penalize_newline",
        "num_gqa",
        "rope_frequency_base",
        "rope_frequency_scale",
    }
)


_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")  # a UTF-16 surrogate's escape, paired or not


async def read_json(request: Request) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is an empty object)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        data = jsonlimits.loads(raw, "the request body")
    except ValueError:
        raise BadRequestError("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequestError("the request body must be a JSON object")
    try:
        # JSON may spell lone UTF-16 surrogates ("\ud800"), which no UTF-8 text can hold: refuse
        # them here rather than fail later when the request is passed on. A body of ASCII that
        # spells none is not encoded again (that cost a 3 MB body 70 ms of the event loop); one
        # that is not ASCII may hold one as bytes (CESU-8, UTF-16), and is.
        if not raw.isascii() or _SURROGATE.search(raw):
            json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequestError(
            "the request body holds text that is not valid Unicode (a lone surrogate)"
        ) from None
    return data


class Body:
    """Typed access to a request's JSON fields; a wrong type is a 400 naming the field."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def get(self, key: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
        value = self.data.get(key)
        if value is None:
            return default
        allowed = kinds if isinstance(kinds, tuple) else (kinds,)
        if isinstance(value, bool) and bool not in allowed:
            raise BadRequestError(f"{key} must be {_kind_text(kinds)}, not a boolean")
        if not isinstance(value, kinds):
            raise BadRequestError(f"{key} must be {_kind_text(kinds)}, not {_json_type(value)}")
        return value

    def model(self) -> str:
        """The model name (Ollama's older clients send `name`)."""
        value = self.data.get("model") or self.data.get("name")
        if not isinstance(value, str) or not value.strip():
            raise BadRequestError("model is required", hint='send {"model": "NAME", ...}')
        return value.strip()

    def flag(self, key: str, default: bool) -> bool:
        return bool(self.get(key, bool, default))

    def keep_alive(self) -> float | None:
        value = self.data.get("keep_alive")
        if value is None:
            return None
        try:
            return config.parse_duration(value)
        except ValueError as exc:
            raise BadRequestError(f"keep_alive: {exc}") from None

    def options(self, key: str = "options") -> dict[str, Any]:
        """The request's model options; unknown keys are dropped with a warning in the log.

        Ollama drops them too. The values of known ones are validated later, and a bad one is a 400.
        """
        value = self.get(key, dict, {})
        out = {}
        for name, option in value.items():
            if name in IGNORED_OPTIONS or option is None:
                continue
            if name.strip().lower() not in params.SPECS:
                log.warning("ignoring unknown option %r", name[:100])
                continue
            out[name] = option
        return out

    def sampling(self, names: dict[str, str] | tuple[str, ...]) -> dict[str, Any]:
        """The numeric sampling fields present, as options.

        `names` maps a request field to its option name; a tuple names fields named as the options
        are.
        """
        pairs = names.items() if isinstance(names, dict) else ((n, n) for n in names)
        out: dict[str, Any] = {}
        for key, name in pairs:
            value = self.get(key, (int, float))
            if value is not None:
                out[name] = value
        return out

    def logit_bias(self) -> list[list[Any]] | None:
        """`logit_bias` as [token id, bias] pairs.

        It takes OpenAI's {"15043": -100, ...} (-100 to 100), or llama-server's
        [[15043, -0.5], [15043, false]], where false means never that token.
        """
        value = self.data.get("logit_bias")
        if value is None:
            return None
        if isinstance(value, dict):
            pairs = list(value.items())
        elif isinstance(value, list) and all(isinstance(p, list) and len(p) == 2 for p in value):
            pairs = [(p[0], p[1]) for p in value]
        else:
            raise BadRequestError(
                "logit_bias must map token ids to biases",
                hint='send {"logit_bias": {"15043": -100}}; POST /tokenize finds the ids',
            )
        if len(pairs) > MAX_LOGIT_BIAS:
            raise BadRequestError(f"logit_bias holds more than {MAX_LOGIT_BIAS} tokens")
        return [[_token_id(token), _bias(bias)] for token, bias in pairs] or None

    def limit(self, *keys: str, least: int = 1, hint: str | None = None) -> int | None:
        """The first of `keys` given: a token budget, at least `least`."""
        for key in keys:
            value = self.get(key, int)
            if value is not None:
                if value < least:
                    raise BadRequestError(f"{key} must be at least {least}", hint=hint)
                return int(value)
        return None

    def bounds(self, *keys: str, least: int = 1, hint: str | None = None) -> dict[str, Any]:
        """The answer's bounds as options: `num_predict` and `stop`, each if given.

        `num_predict` comes from the first of `keys` given, a token budget of at least `least`;
        `stop` from the stop strings.
        """
        options: dict[str, Any] = {}
        limit = self.limit(*keys, least=least, hint=hint)
        if limit is not None:
            options["num_predict"] = limit
        stops = self.stops()
        if stops:
            options["stop"] = stops
        return options

    def stops(self, key: str = "stop", most: int | None = None) -> list[str] | None:
        """Stop strings: a string or a list of strings (None when none are given)."""
        value = self.data.get(key)
        if isinstance(value, str):
            value = [value]
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
            raise BadRequestError(f"{key} must be a string or a list of strings")
        if most is not None and len(value) > most:
            raise BadRequestError(f"at most {most} {key} are accepted")
        return value or None

    def format(self) -> str | dict[str, Any] | None:
        value = self.data.get("format")
        if value in (None, ""):
            return None
        if value == "json" or isinstance(value, dict):
            return value  # type: ignore[no-any-return]
        raise BadRequestError('format must be "json" or a JSON schema object')


def _token_id(key: Any) -> int:
    """A logit_bias key: a token id, as a number or (JSON object keys) a string of digits."""
    if isinstance(key, str) and key.strip().isdigit():
        key = int(key)
    if isinstance(key, bool) or not isinstance(key, int) or key < 0:
        raise BadRequestError(
            f"logit_bias keys must be token ids, not {key!r}",
            hint="POST /tokenize gives a text's token ids",
        )
    return key


def _bias(value: Any) -> float | None:
    """A bias from -100 to 100, or None for llama-server's false (never that token)."""
    if value is False:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
        raise BadRequestError(
            f"a logit_bias value must be a number from -100 to 100, not {value!r}"
        )
    return float(value)


def _kind_text(kinds: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean",
             dict: "an object", list: "a list"}  # fmt: skip
    seq = kinds if isinstance(kinds, tuple) else (kinds,)
    return " or ".join(dict.fromkeys(names.get(k, k.__name__) for k in seq))


def _json_type(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", dict: "an object",
            list: "a list"}.get(type(value), type(value).__name__)  # fmt: skip


def at_most(count: int, most: int, field: str, what: str, setting: str) -> None:
    """Refuse a request's list of `what` past its bound, naming the setting that raises it."""
    if count > most:
        raise BadRequestError(
            f"{field} holds {count} {what}; one request takes at most {most}",
            hint=f"send them in several requests, or raise {setting}",
        )
