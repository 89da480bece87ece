"""Load a model in this process (worker.local) for `localrun run` when no server answers.

It has one slot, so one conversation's KV cache, and the same runner and engine as a server's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from localrun.cli.run.session import Answer, Message, ModelView, warn

if TYPE_CHECKING:
    from localrun.model.stored import Model
    from localrun.recipes.modelfile import Modelfile
    from localrun.worker.local import LocalRunner


def _runs_on() -> str:
    """Say what runs a model loaded in this process, as `info` says it.

    That is the GPU runtime or the bindings' own library, and the exact CPU library.
    """
    from localrun.engine.library.buildinfo import build_info

    return build_info().runs_on


class LocalSession:
    """A model loaded in this process (worker.local): one slot, so one conversation's KV cache."""

    def __init__(self, runner: LocalRunner) -> None:
        self.runner = runner
        self.name = str(runner.model.name)
        self.notes = runner.loaded.notes
        self.cache_note = runner.engine.prompt_cache_note
        self.runtime: str | None = _runs_on()
        self._load_reported = False

    @classmethod
    def open(cls, name: str, overrides: dict[str, Any]) -> LocalSession:
        """Find (importing from the catalog or pulling if needed) and load a model."""
        from localrun.cli.common import open_store
        from localrun.cli.output import CreateProgress, loading
        from localrun.sources import obtain
        from localrun.store import reference

        store = open_store()
        ref = reference.parse(name)
        progress = CreateProgress()
        try:
            manifest = obtain.find(store, ref, progress)
        finally:
            progress.close()
        with loading(str(ref.name)):
            return cls(_load_runner(store, ref.name, manifest, overrides))

    def chat(
        self,
        messages: list[Message],
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: str | None = None,
        think: bool | str | None = None,
    ) -> Answer:
        from localrun.request import media
        from localrun.request.genrequest import GenRequest

        # The messages are Ollama's (what the server path sends): images become media here.
        core = [
            media.with_images(m, media.ollama_media(m, f"messages[{i}]"))
            for i, m in enumerate(messages)
        ]
        asked = GenRequest(
            self.name,
            messages=core,
            system=system,
            options=dict(options or {}),
            format=format,
            think=think,
        )
        return self.runner.generate(asked)

    def load_s(self, answer: Answer) -> float:
        if self._load_reported:
            return 0.0
        self._load_reported = True
        return float(self.runner.engine.load_s)

    def view(self) -> ModelView:
        m = self.runner.model
        return ModelView(
            details=m.details,
            adapter_paths=list(m.adapter_paths),
            parameters=dict(m.parameters),
            system=m.system,
            messages=list(m.messages),
            template=self.runner.template,
            licenses=list(m.licenses),
            draft=m.draft,
        )

    def reconfigure(self, overrides: dict[str, Any]) -> None:
        self._replace(_open(self.runner.model, overrides))

    def switch(self, name: str, announce: Callable[[str], None]) -> None:
        from localrun.cli.common import open_store
        from localrun.sources import obtain
        from localrun.store import reference

        store = open_store()
        ref = reference.parse(name)
        manifest = obtain.find(store, ref, pull_missing=False)
        announce(str(ref.name))
        self._replace(_load_runner(store, ref.name, manifest, {}))

    def _replace(self, fresh: LocalRunner) -> None:
        self.runner.close()
        self.runner = fresh
        self.name = str(fresh.model.name)
        self.notes = fresh.loaded.notes
        self.cache_note = fresh.engine.prompt_cache_note
        self._load_reported = False

    def save(self, name: str, modelfile: Modelfile) -> None:
        from pathlib import Path

        from localrun.cli.common import open_store
        from localrun.recipes import create
        from localrun.sources import obtain
        from localrun.store import names

        store = open_store()
        create.create(
            store, names.parse(name), modelfile, Path.cwd(), find_base=obtain.base_finder(store)
        )

    def close(self) -> None:
        self.runner.close()


def _load_runner(store: Any, found: Any, manifest: Any, overrides: dict[str, Any]) -> LocalRunner:
    """Load here the model that the manifest read for the name `found` describes.

    The name is resolved once, now: the runner, and the probe before it, load that model.
    """
    from localrun.model import stored as model_mod

    return _open(model_mod.load(store, found, manifest), overrides)


def _open(model: Model, overrides: dict[str, Any]) -> LocalRunner:
    """Load `model` here with `overrides`, deciding its context now.

    Its load warnings are printed as they are found.
    """
    from localrun.worker.local import open_local

    return open_local(model.load_spec(overrides), warn=warn)
