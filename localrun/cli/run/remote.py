"""Hold the CLI's session with the model of a running server (LOCALRUN_HOST).

The chat streams from /api/chat, and the model's view is read from /api/show. A model the server
lacks is pulled or imported. A not-found error names the server and store that answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from localrun.cli.run.session import Answer, Message, ModelView
from localrun.engine.types import Timings
from localrun.errors import HubUnreachableError, LocalrunError, ModelNotFoundError, ServerError

if TYPE_CHECKING:
    from localrun.cli.client import Client, Stream
    from localrun.recipes.modelfile import Modelfile


class RemoteAnswer:
    """An answer streamed from /api/chat, which cancel() ends.

    cancel() closes the connection, which the server takes as the end of the request. The slot is
    freed within a token.
    """

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
    """Return `exc` for a model the server at LOCALRUN_HOST lacks, naming the server that answered.

    The model is not in the server's store, nor to be pulled. The error names the server's store
    too, where the server says it. Where this command's store has the model, the hint says that
    the server keeps another store.
    """
    from localrun.cli.common import open_store
    from localrun.store import reference

    served = client.store()
    err = exc.copy()
    err.message = f"{exc.message} (answered by the server at {client.address}"
    err.message += f", store {served})" if served else ")"
    err.args = (err.message,)
    try:
        here = open_store()
        has_it = str(here.root) != served and here.exists(reference.parse(name).name)
    except LocalrunError:
        return err
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
        from localrun.cli.output import loading

        started = time.perf_counter()
        with loading(name):  # the server loads it now: the first answer waits for no load
            loaded = self.client.load(name, options=self.overrides)
        self._load_s = time.perf_counter() - started
        self.name = loaded.get("model") or name

    def _import_here(self, name: str, retry: Callable[[str], object]) -> bool:
        """Import a model the server lacks from another runner into the store here, then retry.

        The server was started without LOCALRUN_OTHER_RUNNERS, but this command's setting finds
        the model. It is imported in place, as `localrun run` without a server does, and as a
        server with the setting does. Then `retry(name)` runs. Return False when the setting is
        off here or no other runner has the model.
        """
        from localrun.settings import config

        if not config.other_runners():
            return False
        from localrun.cli.common import open_store
        from localrun.cli.output import CreateProgress
        from localrun.sources.runners import importing as runners
        from localrun.store import reference

        wanted = reference.parse(name).name
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
        # localrun's chat_template: the one the model is prompted with (`template` is the Go
        # template Ollama's clients read, "" where none renders the same prompts)
        template=data.get("chat_template") or data.get("template") or None,
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
