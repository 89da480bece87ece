"""The models an example's names stand for, set up over the server's own API (so that a server
given with --url gets them the same way): a base model per kind and answer cap, and each name an
example uses copied from its base (`/api/copy`: no data duplicated) just before it runs.

    text      SmolLM2-135M (the starter, `smollm2:135m`), or the model given
    vision    the tiny random-weight vision model and projector tests/ generate
    fim       the tiny model with fill-in-the-middle tokens tests/ generate
    thinking  the tiny model with a thinking chat template tests/ generate

Every base answers greedily (temperature 0: the same program gets the same answers run after
run) and at most `predict` tokens where the request sets no limit (PARAMETER num_predict:
localrun has no server-wide bound on an answer's length, and a model's own parameter is the
default a request without one gets).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import httpx

from localrun.store import reference

__all__ = ["DEFAULT_PREDICT", "Models", "SetupError", "alias_of"]

DEFAULT_PREDICT = 128
TIMEOUT_S = 600.0  # a create imports a model (the starter's 100 MB verified) before answering
# The thinking model's template opens the thought in the prompt, as DeepSeek-R1's and Qwen3's do
# (a random-weight model never writes <think> itself), and closes it empty when thinking is off.
OPENS_THINKING = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}"
    "{{ '<think>\\n\\n</think>\\n\\n' }}{% else %}{{ '<think>\\n' }}{% endif %}{% endif %}"
)


class SetupError(RuntimeError):
    """A base model or an alias could not be made; the message says which and why."""


def alias_of(name: str) -> str:
    """The stored name a program's `name` is looked up under: a catalog alias followed
    (`llama3.2` is looked up as `llama3.2:3b`, so a copy named `llama3.2` would never answer)."""
    return str(reference.parse(name).name)


def _fixture(kind: str, folder: Path) -> list[Path]:
    """The GGUF files of a fixture kind (model first, then its projector), written now."""
    from testmodels.projectors import write_tiny_vision
    from testmodels.text import write_tiny_model

    if kind == "vision":
        # The projector tests/ pairs with the tiny model, on that model with a 4k context
        # (its own has 256 tokens: a JSON answer about an image would not fit).
        _, projector = write_tiny_vision(folder / "vision")
        return [write_tiny_model(folder / "vision" / "tiny-vision-4k.gguf", n_ctx=4096), projector]
    if kind == "fim":
        return [write_tiny_model(folder / "tiny-fim.gguf", fim=True, n_ctx=4096)]
    if kind == "thinking":
        path = folder / "tiny-thinking.gguf"
        return [write_tiny_model(path, chat_template=OPENS_THINKING, n_ctx=4096)]
    raise ValueError(f"no fixture of kind {kind!r}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class Models:
    """Base models and aliases on the server at `url`."""

    def __init__(self, url: str, *, source: str = "smollm2:135m") -> None:
        self.http = httpx.Client(base_url=url, timeout=TIMEOUT_S)
        self.source = source
        self.made: set[str] = set()
        self.pointing: dict[str, str] = {}  # alias -> the base it was last copied from
        self._sources: dict[str, dict[str, object]] = {}  # kind -> its create fields
        self._fixtures = tempfile.TemporaryDirectory(prefix="localrun-example-models-")

    def close(self) -> None:
        self.http.close()
        self._fixtures.cleanup()

    def _post(self, path: str, what: str, **kwargs: object) -> None:
        try:
            response = self.http.post(path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise SetupError(f"{what}: {exc}") from exc
        if response.status_code >= 400:
            raise SetupError(f"{what}: {response.status_code} {response.text[:300]}")

    def _upload(self, path: Path) -> str:
        digest = f"sha256:{_sha256(path)}"
        with open(path, "rb") as f:
            self._post(f"/api/blobs/{digest}", f"uploading {path.name}", content=f)
        return digest

    def _modelfile(self, kind: str) -> dict[str, object]:
        """The /api/create fields of a kind's base, without its parameters (a fixture's files
        written and uploaded once)."""
        if kind == "text":
            return {"from": self.source}
        if kind not in self._sources:
            files = _fixture(kind, Path(self._fixtures.name))
            lines = [f"FROM @{self._upload(files[0])}"]
            lines += [f"PROJECTOR @{self._upload(p)}" for p in files[1:]]
            self._sources[kind] = {"modelfile": "\n".join(lines) + "\n"}
        return self._sources[kind]

    def base(self, kind: str, predict: int) -> str:
        """The base model of `kind` answering at most `predict` tokens, created on first use."""
        name = f"examples-{kind}-{predict}"
        if name not in self.made:
            body = {
                "model": name,
                **self._modelfile(kind),
                "parameters": {"num_predict": predict, "temperature": 0},
                "stream": False,
            }
            self._post("/api/create", f"creating {name}", json=body)
            self.made.add(name)
        return name

    def point(self, names: tuple[str, ...], base: str) -> None:
        """Make each of `names` answer as `base` (a copy of its manifest, under the name a
        lookup of it finds), and have it loaded: no program's first second, which one of them
        times its abort by, is a model's load."""
        for name in names:
            alias = alias_of(name)
            if self.pointing.get(alias) != base:
                body = {"source": base, "destination": alias}
                self._post("/api/copy", f"copying {base} to {alias}", json=body)
                self.pointing[alias] = base
        # Ollama's empty generate: loads the model (at once when it is loaded already).
        self._post("/api/generate", f"loading {base}", json={"model": base, "stream": False})
