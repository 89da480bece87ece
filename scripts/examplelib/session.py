"""A run of example programs against one server: each corpus copied (and its npm packages
installed) once, each program's model names pointed at its base model just before it runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from examplelib import node
from examplelib.models import DEFAULT_PREDICT, Models
from examplelib.running import Outcome, client_env, client_too_old, prepare, run, skipped
from examplelib.table import Corpus, Example

__all__ = ["Session", "corpora_dir", "fetched"]

ROOT = Path(__file__).resolve().parents[2]


def corpora_dir() -> Path:
    """Where scripts/corpora/fetch.py puts the corpora (LOCALRUN_CORPORA, else tests/data/)."""
    return Path(os.environ.get("LOCALRUN_CORPORA") or ROOT / "tests" / "data" / "corpora")


def fetched(corpus: Corpus, folder: Path | None = None) -> Path | None:
    """The corpus's folder when fetch_corpora fetched the version examples.toml describes."""
    path = (folder or corpora_dir()) / corpus.name
    try:
        stamp = json.loads((path / "STAMP.json").read_text())
    except (OSError, ValueError):
        return None
    return path if f"-{corpus.version}." in str(stamp.get("filename", "")) else None


class Session:
    """Programs run one after another against the server at `url` (the aliases they use are
    the server's, shared: two programs never run at once)."""

    def __init__(
        self,
        url: str,
        corpora: dict[str, Corpus],
        *,
        source: str = "smollm2:135m",
        predict: int = DEFAULT_PREDICT,
        folder: Path | None = None,
        key: str = "localrun",
    ) -> None:
        self.url = url
        self.corpora = corpora
        self.predict = predict
        self.folder = folder
        self.models = Models(url, source=source)
        self.env = client_env(url, key)
        self._work = tempfile.TemporaryDirectory(prefix="localrun-examples-")
        self._roots: dict[str, Path | str] = {}  # corpus -> its copy, or why it cannot run

    def close(self) -> None:
        self.models.close()
        self._work.cleanup()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _root(self, corpus: Corpus) -> Path | str:
        if corpus.name not in self._roots:
            self._roots[corpus.name] = self._prepare(corpus)
        return self._roots[corpus.name]

    def _prepare(self, corpus: Corpus) -> Path | str:
        source = fetched(corpus, self.folder)
        if source is None:
            return f"{corpus.name} {corpus.version} is not fetched: run scripts/corpora/fetch.py"
        too_old = client_too_old(corpus)
        if too_old:
            return too_old
        root = prepare(corpus, source, Path(self._work.name), self.url)
        if corpus.runner == "tsx":
            try:
                node.install(corpus.packages, root)
                node.tsx(root)
            except node.NodeUnavailable as exc:
                return str(exc)
        return root

    def outcome(self, example: Example) -> Outcome:
        """Run `example` (or say why it is not run)."""
        done = skipped(example)
        if done is not None:
            return done
        corpus = self.corpora[example.corpus]
        root = self._root(corpus)
        if isinstance(root, str):
            return Outcome(example, "skipped", root)
        base = self.models.base(example.model, example.predict or self.predict)
        self.models.point(corpus.names, base)
        return run(corpus, example, root, self.env)
