"""Model references: parse, validate and format `[host/][namespace/]name[:tag]`, with no I/O.

Grammar (the whole reference is at most 400 characters):

    reference  = [ [ host "/" ] namespace "/" ] name [ ":" tag ]
    host       = label *( "." label ) [ ":" port ]       ; 1-253 characters before the port
    label      = alnum [ *( alnum / "-" ) alnum ]
    port       = 1*5 DIGIT
    namespace  = alnum *( alnum / "." / "_" / "-" )      ; 1-80 characters
    name       = alnum *( alnum / "." / "_" / "-" )      ; 1-96 characters
    tag        = ( alnum / "_" ) *( alnum / "." / "_" / "-" )   ; 1-128 characters

With three parts the first is the host, with two it is the namespace. No part may contain "..",
a path separator or start with ".", so a reference never names a path outside the store. Names
are case-insensitive, lower case when canonical, and default to `localrun/library/NAME:latest`.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from localrun.errors import InvalidNameError

# The short form of a name omits these defaults except the tag: `smollm2:135m`,
# `me/assistant:latest`.
DEFAULT_HOST = "localrun"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
MAX_REFERENCE = 400

_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_HOST_RE = re.compile(rf"^(?P<h>{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?$")
_NAMESPACE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,95}$")
_TAG_RE = re.compile(r"^[a-z0-9_][a-z0-9._-]{0,127}$")

_RULES = {
    "namespace": (
        _NAMESPACE_RE,
        "1-80 letters, digits, '.', '_' or '-', starting with a letter or digit",
    ),
    "name": (_NAME_RE, "1-96 letters, digits, '.', '_' or '-', starting with a letter or digit"),
    "tag": (_TAG_RE, "1-128 letters, digits, '.', '_' or '-', not starting with '.' or '-'"),
}

_HINT = "a model name looks like `name`, `name:tag` or `namespace/name:tag`"


@dataclass(frozen=True, order=True)
class ModelName:
    """A validated, canonical (lower-case) model reference."""

    host: str
    namespace: str
    name: str
    tag: str

    def __post_init__(self) -> None:
        _check_host(self.host, self.host)
        for kind, value in (("namespace", self.namespace), ("name", self.name), ("tag", self.tag)):
            _check_part(kind, value, value)
        if len(self.full) > MAX_REFERENCE:
            # Otherwise str() could give a reference that parse() refuses.
            raise InvalidNameError(
                f"model name is {len(self.full)} characters long; the limit is {MAX_REFERENCE}",
                hint=_HINT,
            )

    def __str__(self) -> str:
        """The short form: defaults omitted, except the tag."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.name}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.name}:{self.tag}"
        return f"{self.name}:{self.tag}"

    @property
    def full(self) -> str:
        return f"{self.host}/{self.namespace}/{self.name}:{self.tag}"

    @property
    def parts(self) -> tuple[str, str, str, str]:
        """The path components of the manifest: host, namespace, name, tag."""
        return (self.host, self.namespace, self.name, self.tag)


def parse(text: str) -> ModelName:
    """Parse and validate a reference, filling in the defaults; raises InvalidNameError."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidNameError("model name is empty", hint=_HINT)
    raw = text.strip()
    if len(raw) > MAX_REFERENCE:
        raise InvalidNameError(
            f"model name is {len(raw)} characters long; the limit is {MAX_REFERENCE}", hint=_HINT
        )
    if not raw.isascii():
        # Checked before lower(): some characters lower to ASCII (KELVIN SIGN becomes "k").
        raise InvalidNameError(
            f"invalid model name '{_shown(raw)}': only ASCII letters, digits, '.', '_', '-', "
            "'/' and ':' are allowed",
            hint=_HINT,
        )
    lowered = raw.lower()
    if "\\" in lowered or "\x00" in lowered:
        raise InvalidNameError(
            f"invalid model name '{_shown(raw)}': no '\\' or NUL allowed", hint=_HINT
        )
    if lowered.startswith("/"):
        raise InvalidNameError(
            f"invalid model name '{_shown(raw)}': an absolute path is not a model name",
            hint="to build a model from a file, write `FROM ./file.gguf` in a Modelfile "
            "and run `localrun create NAME -f Modelfile`",
        )
    path, tag = lowered, DEFAULT_TAG
    slash = lowered.rfind("/")
    colon = lowered.rfind(":")
    if colon > slash:
        path, tag = lowered[:colon], lowered[colon + 1 :]
        if not tag:
            raise InvalidNameError(f"invalid model name '{_shown(raw)}': empty tag", hint=_HINT)
    pieces = path.split("/")
    if len(pieces) > 3:
        raise InvalidNameError(
            f"invalid model name '{_shown(raw)}': at most host/namespace/name", hint=_HINT
        )
    host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
    if len(pieces) == 3:
        host, namespace, name = pieces
        _check_host(host, raw)
    elif len(pieces) == 2:
        namespace, name = pieces
    else:
        (name,) = pieces
    _check_part("namespace", namespace, raw)
    _check_part("name", name, raw)
    _check_part("tag", tag, raw)
    return ModelName(host, namespace, name, tag)


def is_valid(text: str) -> bool:
    try:
        parse(text)
    except InvalidNameError:
        return False
    return True


def _shown(raw: str) -> str:
    # Keep error lines to one line and a sane length, whatever the input.
    clean = raw.encode("unicode_escape").decode("ascii")
    return clean if len(clean) <= 80 else clean[:77] + "..."


def _check_part(kind: str, value: str, raw: str) -> None:
    pattern, rule = _RULES[kind]
    if not value:
        raise InvalidNameError(f"invalid model name '{_shown(raw)}': empty {kind}", hint=_HINT)
    if ".." in value:
        raise InvalidNameError(
            f"invalid model name '{_shown(raw)}': '..' is not allowed", hint=_HINT
        )
    if not pattern.fullmatch(value):
        raise InvalidNameError(
            f"invalid model name '{_shown(raw)}': the {kind} '{_shown(value)}' must be {rule}",
            hint=_HINT,
        )
    if sys.platform == "win32" and reserved_on_windows(value):
        raise InvalidNameError(
            f"invalid model name '{_shown(raw)}': Windows reserves '{_shown(value)}' for a "
            "device, so no file or folder of the store can have it",
            hint="choose another name (or add a letter to this one)",
        )


# Names Windows gives to devices in every folder, with or without an extension ("nul.txt").
_RESERVED = re.compile(
    r"^(con|prn|aux|nul|com[0-9\u00b9\u00b2\u00b3]|lpt[0-9\u00b9\u00b2\u00b3])(\..*)?$"
)


def reserved_on_windows(part: str) -> bool:
    """Whether Windows refuses `part` as a file or folder name (CON, NUL, COM1, aux.v2 ...)."""
    return bool(_RESERVED.fullmatch(part.lower()))


def _check_host(value: str, raw: str) -> None:
    match = _HOST_RE.fullmatch(value)
    if not match or len(match.group("h")) > 253 or ".." in value:
        raise InvalidNameError(
            f"invalid model name '{_shown(raw)}': the host '{_shown(value)}' must be a "
            "host name such as hf.co or localhost:8080",
            hint=_HINT,
        )
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        raise InvalidNameError(
            f"invalid model name '{_shown(raw)}': port {port} is out of range", hint=_HINT
        )
