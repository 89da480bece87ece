"""What `localrun run` talks to: the running server, or a model loaded in this process.

`open_session()` probes LOCALRUN_HOST: when a server answers, the model is loaded (and stays
warm between invocations) there; otherwise it is loaded here, as before the server existed. A
model the server lacks that another runner here has (with LOCALRUN_OTHER_RUNNERS in this
command's environment) is imported in place into this store first, as without a server. The
one-shot answer, the chat REPL and --batch see only the `Session` and `Answer` protocols below.
The remote path imports neither llama_cpp nor the runner.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, Protocol

from localrun.engine.types import Timings
from localrun.errors import HubUnreachableError, LocalrunError, ModelNotFoundError, ServerError

if TYPE_CHECKING:
    from localrun.client import Client, Stream
    from localrun.model import Model
    from localrun.recipes.modelfile import Modelfile
    from localrun.worker.local import LocalRunner

Message = dict[str, Any]


class Answer(Protocol):
    """One streamed answer: iterate for text; then `text`, `done_reason` and `timings` are set."""

    text: str
    done_reason: str | None
    thinking: str  # a reasoning model's thinking, apart from the answer
    on_thinking: Callable[[str], None] | None  # called with each piece of it, as it comes

    @property
    def timings(self) -> Timings: ...

    def __iter__(self) -> Iterator[str]: ...

    def cancel(self) -> None:
        """Stop now (Ctrl-C): the text so far stays, done_reason becomes "cancelled"."""
        ...


@dataclass
class ModelView:
    """What the chat's /show prints of the current model (the shape `show_text` reads)."""

    details: dict[str, Any] = field(default_factory=dict)
    adapter_paths: list[PurePath] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    system: str | None = None
    messages: list[Any] = field(default_factory=list)  # modelfile.Message
    template: str | None = None
    licenses: list[str] = field(default_factory=list)
    draft: dict[str, Any] | None = None  # {model, digest, details}, as Model.draft


class Session(Protocol):
    """A model to talk to, in this process or on the server."""

    name: str  # the model's name, e.g. smollm2:135m
    notes: list[str]  # lines for --verbose (e.g. why everything runs on the CPU)
    runtime: str | None  # what runs the model here (info's runtime and exact), for --verbose
    cache_note: str | None  # why the disk prompt cache is off for the model, for --verbose

    def chat(
        self,
        messages: list[Message],
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: str | None = None,
        think: bool | str | None = None,
    ) -> Answer: ...

    def load_s(self, answer: Answer) -> float:
        """The load time to report with this answer (a load counts once, as in Ollama)."""
        ...

    def view(self) -> ModelView: ...

    def reconfigure(self, overrides: dict[str, Any]) -> None:
        """A load-time parameter (num_ctx, num_gpu, ...) changed: reload with `overrides`."""
        ...

    def switch(self, name: str, announce: Callable[[str], None]) -> None:
        """Load another model (/load NAME); `announce` gets its name once it is known to exist."""
        ...

    def save(self, name: str, modelfile: Modelfile) -> None:
        """Create model `name` from `modelfile` (FROM the current model) where the model lives."""
        ...

    def close(self) -> None: ...


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def open_session(name: str, overrides: dict[str, Any]) -> Session:
    """The server's model when LOCALRUN_HOST answers, else the model loaded in this process."""
    from localrun.client import Client

    client = Client()
    if client.is_up():
        return RemoteSession.open(client, name, overrides)
    return LocalSession.open(name, overrides)


# -- in this process ------------------------------------------------------------------------------


def _runs_on() -> str:
    """What runs a model loaded in this process, as `info` says it (the GPU runtime or the
    bindings' own, and the exact CPU library)."""
    from localrun.engine.buildinfo import build_info

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
        from localrun.cli.output import CreateProgress
        from localrun.sources import obtain
        from localrun.store import reference

        store = open_store()
        ref = reference.resolve(name)
        progress = CreateProgress()
        try:
            manifest = obtain.find(store, ref, progress)
        finally:
            progress.close()
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
        from localrun import media
        from localrun.request import GenRequest

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
        ref = reference.resolve(name)
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
            store, names.parse(name), modelfile, Path.cwd(), resolve=obtain.resolver(store)
        )

    def close(self) -> None:
        self.runner.close()


def _load_runner(store: Any, found: Any, manifest: Any, overrides: dict[str, Any]) -> LocalRunner:
    """The model the manifest read for the name `found` says, loaded here: the name is
    resolved once, now; what the runner (and the probe before it) loads is that."""
    from localrun import model as model_mod

    return _open(model_mod.load(store, found, manifest), overrides)


def _open(model: Model, overrides: dict[str, Any]) -> LocalRunner:
    """`model` loaded here with `overrides` (its context decided now), its load warnings said
    as they are found."""
    from localrun.worker.local import open_local

    return open_local(model.resolved(overrides), warn=warn)


# -- on the server --------------------------------------------------------------------------------


class RemoteAnswer:
    """An answer streamed from /api/chat; cancel() closes the connection, which the server
    takes as the end of the request (the slot is freed within a token)."""

    def __init__(self, stream: Stream) -> None:
        self._stream = stream
        self._started = time.perf_counter()
        self.text = ""
        self.done_reason: str | None = None
        self.thinking = ""
        self.on_thinking: Callable[[str], None] | None = None
        self._timings = Timings()

    @property
    def timings(self) -> Timings:
        return self._timings

    def __iter__(self) -> Iterator[str]:
        try:
            for obj in self._stream:
                message = obj.get("message")
                thought = message.get("thinking") if isinstance(message, dict) else None
                if isinstance(thought, str) and thought:
                    self.thinking += thought
                    if self.on_thinking is not None:
                        self.on_thinking(thought)
                piece = message.get("content") if isinstance(message, dict) else None
                if isinstance(piece, str) and piece:
                    self.text += piece
                    yield piece
                if obj.get("done"):
                    self._timings = timings_from_final(obj)
                    self.done_reason = str(obj.get("done_reason") or "stop")
                    return
        finally:
            self._stream.close()
        if self.done_reason is None:
            raise ServerError(
                "the server ended the answer before it was done", hint="see the server's log"
            )

    def cancel(self) -> None:
        self.done_reason = "cancelled"
        self._stream.close()
        # No final object comes after a cancel: the time waited is all there is to report.
        self._timings.total_s = self._timings.total_s or time.perf_counter() - self._started


def timings_from_final(obj: dict[str, Any]) -> Timings:
    """Timings from the final object of /api/chat or /api/generate (durations in ns)."""

    def seconds(key: str) -> float:
        value = obj.get(key)
        return value / 1e9 if isinstance(value, int | float) else 0.0

    def count(key: str) -> int:
        value = obj.get(key)
        return int(value) if isinstance(value, int | float) else 0

    # prompt_eval_count counts the whole prompt; localrun's server also says how much of it came
    # from the KV cache (prompt_cache_count), and --verbose shows the two apart.
    cached = count("prompt_cache_count")
    return Timings(
        disk_tokens=count("prompt_disk_cache_count"),
        load_s=seconds("load_duration"),
        prompt_tokens=max(0, count("prompt_eval_count") - cached),
        cached_tokens=cached,
        prompt_s=seconds("prompt_eval_duration"),
        eval_tokens=count("eval_count"),
        eval_s=seconds("eval_duration"),
        total_s=seconds("total_duration"),
        draft_tokens=count("draft_count"),
        draft_accepted=count("draft_accepted_count"),
    )


def answered_by(client: Client, name: str, exc: LocalrunError) -> LocalrunError:
    """A model the server at LOCALRUN_HOST does not have (not in its store, nor to be pulled):
    `exc`, naming the server that answered (and its store, where it says), and, where the store
    of this command has the model, saying that the server keeps another."""
    from localrun.cli.common import open_store
    from localrun.store import reference

    served = client.store()
    err = exc.copy()
    err.message = f"{exc.message} (answered by the server at {client.address}"
    err.message += f", store {served})" if served else ")"
    err.args = (err.message,)
    try:
        here = open_store()
        has_it = str(here.root) != served and here.exists(reference.resolve(name).name)
    except LocalrunError:
        has_it = False
    if has_it:
        err.hint = (
            f"the store of this command ({here.root}) has it, the server's does not: stop "
            "that server, and `localrun run` loads the model in this process, or start the "
            "server with this command's LOCALRUN_HOME (or LOCALRUN_MODELS)"
        )
    return err


class RemoteSession:
    """A model on the running server: loaded there, it stays warm after this command ends."""

    def __init__(self, client: Client, name: str, overrides: dict[str, Any]) -> None:
        self.client = client
        self.name = name
        self.notes: list[str] = []
        self.cache_note: str | None = None
        self.runtime: str | None = None  # the server's: `localrun ps` shows it
        # --param/--seed: sent with every request, as the local runner keeps them in force.
        self.overrides = dict(overrides)
        self._load_s = 0.0  # the load this command waited for, reported with the first answer

    @classmethod
    def open(cls, client: Client, name: str, overrides: dict[str, Any]) -> RemoteSession:
        """Load `name` on the server (pulling it there first if it is not in its store)."""
        from localrun.recipes import params as params_mod

        options = params_mod.validate(overrides)  # errors are reported before any request
        session = cls(client, name, options)
        try:
            session._load(name)
        except ModelNotFoundError:
            if not session._import_here(name, session._load):
                try:
                    session._pull(name)
                    session._load(name)
                except (ModelNotFoundError, HubUnreachableError) as exc:
                    raise answered_by(client, name, exc) from None
        return session

    def _load(self, name: str) -> None:
        started = time.perf_counter()
        loaded = self.client.load(name, options=self.overrides)
        self._load_s = time.perf_counter() - started
        self.name = loaded.get("model") or name

    def _import_here(self, name: str, retry: Callable[[str], object]) -> bool:
        """Import a model the server lacks (it was started without LOCALRUN_OTHER_RUNNERS)
        that this command's LOCALRUN_OTHER_RUNNERS finds, in place into the store here, as
        `localrun run` without a server and a server with the setting do; then `retry(name)`.
        False when the setting is off here or no other runner has the model."""
        from localrun.settings import config

        if not config.other_runners():
            return False
        from localrun.cli.common import open_store
        from localrun.cli.output import CreateProgress
        from localrun.sources import runners
        from localrun.store import reference

        wanted = reference.resolve(name).name
        found = runners.named(str(wanted))
        if found is None:
            return False
        store = open_store()
        if not store.exists(wanted):
            progress = CreateProgress()
            try:
                runners.adopt(store, found, progress)
            finally:
                progress.close()
        try:
            retry(name)
        except ModelNotFoundError as exc:  # the server keeps another store than this command
            raise ModelNotFoundError(
                name,
                hint=f"{found.source} has it on this machine, but the server at "
                f"{self.client.address} does not see it (it was started without "
                "LOCALRUN_OTHER_RUNNERS, and keeps another store): restart it on this machine "
                "as `LOCALRUN_OTHER_RUNNERS=1 localrun serve`",
            ) from exc
        return True

    def _pull(self, name: str) -> None:
        from localrun.cli.output import CreateProgress
        from localrun.recipes.create import Event

        progress = CreateProgress()
        try:
            with self.client.pull(name) as stream:
                for obj in stream:
                    progress(
                        Event(
                            status=str(obj.get("status", "")),
                            digest=obj.get("digest"),
                            completed=obj.get("completed"),
                            total=obj.get("total"),
                        )
                    )
        finally:
            progress.close()

    def chat(
        self,
        messages: list[Message],
        *,
        system: str | None = None,
        options: dict[str, Any] | None = None,
        format: str | None = None,
        think: bool | str | None = None,
    ) -> Answer:
        if system is not None and not (messages and messages[0].get("role") == "system"):
            # The API's way to say --system: a first system message replaces the model's SYSTEM
            # (one already in the conversation wins, as in the local runner).
            messages = [{"role": "system", "content": system}, *messages]
        merged = {**self.overrides, **(options or {})}
        stream = self.client.chat(self.name, messages, options=merged, format=format, think=think)
        return RemoteAnswer(stream)

    def load_s(self, answer: Answer) -> float:
        waited, self._load_s = self._load_s, 0.0
        return waited + answer.timings.load_s

    def view(self) -> ModelView:
        return view_from_show(self.client.show(self.name))

    def reconfigure(self, overrides: dict[str, Any]) -> None:
        """The options of the next request make the server reload the model."""
        self.overrides = dict(overrides)

    def switch(self, name: str, announce: Callable[[str], None]) -> None:
        try:
            self.client.show(name)  # ModelNotFoundError before anything is said
        except ModelNotFoundError as exc:
            if not self._import_here(name, self.client.show):
                raise answered_by(self.client, name, exc) from None
        announce(name)
        self.overrides = {}
        self._load(name)

    def save(self, name: str, modelfile: Modelfile) -> None:
        parameters: dict[str, Any] = {}
        for key, value in modelfile.parameters:
            if key in parameters:
                previous = parameters[key]
                parameters[key] = [*(previous if isinstance(previous, list) else [previous]), value]
            else:
                parameters[key] = value
        fields: dict[str, Any] = {
            "from": self.name,
            "system": modelfile.system,
            "parameters": parameters or None,
            "messages": [{"role": m.role, "content": m.content} for m in modelfile.messages]
            or None,
        }
        with self.client.create(name, **fields) as stream:
            for _ in stream:
                pass

    def close(self) -> None:
        """The model stays loaded on the server for its keep_alive."""


def view_from_show(data: dict[str, Any]) -> ModelView:
    """A ModelView from /api/show (Ollama's shape: parameters as text, model_info keys)."""
    from localrun.recipes.modelfile import Message as MfMessage

    info = data.get("model_info") or {}
    arch = info.get("general.architecture") or (data.get("details") or {}).get("family")
    details = {
        "architecture": arch,
        "parameter_count": info.get("general.parameter_count"),
        "context_length": info.get(f"{arch}.context_length"),
        "embedding_length": info.get(f"{arch}.embedding_length"),
        "quantization": (data.get("details") or {}).get("quantization_level"),
    }
    messages = [
        MfMessage(str(m.get("role", "")), str(m.get("content", "")))
        for m in data.get("messages") or []
        if isinstance(m, dict)
    ]
    license_ = data.get("license")
    licenses = license_ if isinstance(license_, list) else [license_] if license_ else []
    return ModelView(
        details={k: v for k, v in details.items() if v is not None},
        adapter_paths=[PurePath(p) for p in data.get("adapters") or []],
        parameters=_parse_parameters(data.get("parameters")),
        system=data.get("system") or None,
        messages=messages,
        template=data.get("template") or None,
        licenses=[str(t) for t in licenses],
        draft=_draft_from_show(data.get("draft")),
    )


def _draft_from_show(raw: Any) -> dict[str, Any] | None:
    """/api/show's `draft` (details in Ollama's shape) as Model.draft has it."""
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
        return None
    shown = raw.get("details")
    if not isinstance(shown, dict):
        shown = {}
    details = {"architecture": shown.get("family"), "quantization": shown.get("quantization_level")}
    return {"model": raw.get("model") or None, "digest": raw["digest"], "details": details}


def _parse_parameters(raw: Any) -> dict[str, Any]:
    """/api/show `parameters`: Ollama's text (`name value` lines) or an object."""
    if isinstance(raw, dict):
        return dict(raw)
    if not isinstance(raw, str):
        return {}
    from localrun.recipes import params as params_mod

    out: dict[str, Any] = {}
    for line in raw.splitlines():
        name, _, text = line.strip().partition(" ")
        if not name:
            continue
        try:
            spec = params_mod.spec(name)
            value = spec.parse(_unquote(text.strip()))
        except LocalrunError:
            continue  # a parameter this client does not know: not worth failing /show over
        if spec.repeated:
            out.setdefault(spec.name, []).append(value)
        else:
            out[spec.name] = value
    return out


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        import json

        try:
            return str(json.loads(text))
        except ValueError:
            return text[1:-1]
    return text
