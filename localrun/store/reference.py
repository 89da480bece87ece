"""What a user types for a model, parsed once into a Reference.

    smollm2                      a catalog alias: the store name smollm2:135m, its catalog entry
    me/mario:v1                  a store name (names.py's grammar)
    hf.co/ORG/REPO[:TAG]         a Hugging Face reference, stored as hf.co/org/repo:tag
    huggingface.co/..., hf://ORG/REPO[:TAG]
    modelscope.cn/ORG/REPO[:TAG], ms://ORG/REPO[:TAG]   a ModelScope reference

`parse(text)` reads the text once: the hub reference if it is one, else the name, the catalog
alias followed, and the catalog's entry for it. Everything below takes the Reference: the store
answers for `name`, or a source fetches it (sources.obtain), one way down and never back up to
parse the text again. A hub reference's TAG picks the GGUF (sources.base.pick).

Pure apart from reading the catalog's data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from localrun.errors import InvalidNameError
from localrun.store import catalog, names
from localrun.store.names import ModelName

HOSTS = {
    "hf.co": "hf",
    "huggingface.co": "hf",
    "www.huggingface.co": "hf",
    "modelscope.cn": "modelscope",
    "www.modelscope.cn": "modelscope",
}
SCHEMES = {"hf://": "hf", "ms://": "modelscope", "modelscope://": "modelscope"}
STORE_HOST = {"hf": "hf.co", "modelscope": "modelscope.cn"}
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class HubReference:
    """A parsed hub reference: which hub, the repository (its own spelling), the tag."""

    hub: str
    repo_id: str
    tag: str | None
    text: str

    @property
    def name(self) -> ModelName:
        """The name the model gets in the store (lower case, host of the hub)."""
        org, repo = self.repo_id.lower().split("/")
        tag = (self.tag or "latest").lower()
        return ModelName(STORE_HOST[self.hub], org, repo, tag)


@dataclass(frozen=True)
class Reference:
    """A model as a user named it, parsed: the one object the layers below are handed."""

    text: str  # as typed
    typed: ModelName  # the name as typed (a destination: `create`, `cp`'s target, `rm`)
    name: ModelName  # the model it refers to: a catalog alias followed
    hub: HubReference | None = None  # typed as a hub reference
    entry: catalog.Entry | None = None  # the catalog's entry for `name`


def parse_hub(text: str) -> HubReference | None:
    """A hub reference, or None when `text` names no hub (a plain model name)."""
    raw = text.strip()
    hub = None
    rest = raw
    for scheme, name in SCHEMES.items():
        if raw.lower().startswith(scheme):
            hub, rest = name, raw[len(scheme) :]
            break
    if hub is None:
        host, _, remainder = raw.partition("/")
        hub = HOSTS.get(host.lower())
        if hub is None:
            return None
        rest = remainder
    path, tag = rest, None
    if ":" in rest:
        path, tag = rest.rsplit(":", 1)
    parts = path.strip("/").split("/")
    if len(parts) != 2 or not all(_PART.match(p) for p in parts) or ".." in path:
        raise InvalidNameError(
            f"invalid hub reference '{raw[:120]}'",
            hint="write hf.co/ORG/REPO[:TAG] or modelscope.cn/ORG/REPO[:TAG]",
        )
    if tag is not None and not _TAG.match(tag):
        raise InvalidNameError(
            f"invalid tag '{tag[:60]}' in '{raw[:120]}'",
            hint="a tag is a quantization such as Q4_K_M or a GGUF file name",
        )
    return HubReference(hub, "/".join(parts), tag, raw)


def parse(text: str) -> Reference:
    """Parse `text` into a Reference.

    Raises InvalidNameError (a 400, a one-line error) if it names nothing valid.
    """
    hub = parse_hub(text)
    if hub is not None:
        return Reference(text, hub.name, hub.name, hub=hub)
    return of(names.parse(text), text)


def of(name: ModelName, text: str | None = None) -> Reference:
    """The Reference of a name already parsed (a Modelfile's FROM, a catalog entry's)."""
    target = catalog.canonical(name)
    return Reference(text or str(name), name, target, entry=catalog.entry(target))
