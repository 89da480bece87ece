"""The request loop of a runner process: requests in, events out, one engine in between.

The main thread reads requests and submits them to the engine; the engine calls each request's
sink on its own thread, where stop strings and tool calls are applied and events written.
Embeddings run on a thread of their own so that a long embedding does not hold up cancels; they
go EMBED_GROUP inputs at a time, sending each group's vectors and checking for a cancel between.
"""

from __future__ import annotations

import dataclasses
import threading
import traceback
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, BinaryIO

from localrun import config, thinking
from localrun import tools as tools_mod
from localrun.engine.types import EmbedInput, Timings
from localrun.errors import BadRequestError, EngineError, LocalrunError
from localrun.runner import Prepared, StopFilter, new_splitter
from localrun.worker import protocol
from localrun.worker.load import Loaded, Ticket

RequestId = protocol.RequestId


class Output:
    """The event stream: whole lines, written under a lock from any thread."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self.broken = False  # the reader went away: nothing more can be delivered

    def send(self, message: protocol.Message) -> None:
        data = protocol.encode(message)
        with self._lock:
            if self.broken:
                return
            try:
                self._stream.write(data)
                self._stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                self.broken = True


def unexpected(exc: BaseException) -> LocalrunError:
    """A bug or a native failure as an error the scheduler can pass on (traceback if debugging)."""
    if config.debug():
        traceback.print_exception(exc)
    return EngineError(f"the runner failed: {type(exc).__name__}: {exc}")


class RequestSink:
    """One generation's output: reasoning split off, stop strings and tool-call hold-back on
    the answer, then events."""

    def __init__(
        self, worker: Worker, id: RequestId, prepared: Prepared, return_context: bool = False
    ) -> None:
        self.worker = worker
        self.id = id
        self.prompt = prepared.tokens if return_context else None
        self.sent: list[str] = []  # the text passed on, kept when the context is returned
        self.stop = StopFilter(prepared.sampling.stop)
        self.calls = (
            tools_mod.CallStream(prepared.tool_names, forced=prepared.forced_tool)
            if prepared.tool_names
            else None
        )
        # Log-probability entries wait here until the text of their tokens is sent (stop
        # strings and tool calls hold text back); `_budget` counts the bytes sent ahead of them.
        self._entries: list[dict[str, Any]] = []
        self._budget = 0
        self.reasoning = prepared.reasoning  # "split", "hide" or None
        self.splitter = new_splitter(prepared) if prepared.reasoning else None
        self._lock = threading.Lock()
        self._ticket: Ticket | None = None
        self._cancel_wanted = False
        self.stopped = False  # a stop string was hit: the engine's "cancelled" means "stop"

    def attach(self, ticket: Ticket) -> None:
        with self._lock:
            self._ticket = ticket
            wanted = self._cancel_wanted
        if wanted:
            ticket.cancel()

    def cancel(self) -> None:
        with self._lock:
            ticket = self._ticket
            self._cancel_wanted = ticket is None
        if ticket is not None:
            ticket.cancel()

    def _send_text(self, text: str) -> None:
        if text:
            if self.prompt is not None:
                self.sent.append(text)
            entries = self._due(text)
            self.worker.output.send(protocol.piece_event(self.id, text, logprobs=entries))

    def _due(self, sent: str, dropped: int = 0) -> list[dict[str, Any]] | None:
        """The entries of the tokens whose bytes have now gone out (or were dropped: tags)."""
        if not self._entries:
            return None
        self._budget += len(sent.encode("utf-8")) + dropped
        due = []
        while self._entries and len(self._entries[0]["bytes"]) <= self._budget:
            entry = self._entries.pop(0)
            self._budget -= len(entry["bytes"])
            due.append(entry)
        return due or None

    def _context(self, tokens: list[int]) -> list[int] | None:
        """The prompt's and the answer's tokens (Ollama's `context`), to continue from."""
        if self.prompt is None:
            return None
        if self.stopped:  # the engine's tokens run past the stop string: the text did not
            tokens = self.worker.engine.tokenize(
                "".join(self.sent), add_special=False, parse_special=False
            )
        return self.prompt + tokens

    # -- called by the engine, on its thread ---------------------------------------------------

    def _think(self, text: str) -> str:
        """The answer's part of `text`; its reasoning goes out at once (unless hidden)."""
        if self.splitter is None:
            return text
        held = self.splitter.pending
        reasoning, answer = self.splitter.feed(text)
        if self._entries:
            # The tags (and the blank lines after them) are nobody's text: count them as sent.
            kept = reasoning + answer + self.splitter.pending
            self._due("", len((held + text).encode()) - len(kept.encode()))
        self._send_thinking(reasoning)
        return answer

    def _send_thinking(self, text: str) -> None:
        if text and self.reasoning == "split":
            entries = self._due(text)
            self.worker.output.send(
                protocol.piece_event(self.id, "", thinking=text, logprobs=entries)
            )
        elif text:
            self._due(text)  # hidden reasoning: its entries go with it

    def piece(self, text: str, logprobs: list[dict[str, Any]] | None = None) -> None:
        if self.stopped:
            return
        if logprobs:
            self._entries += logprobs
        text = self._think(text)
        if not text:
            return
        out = self.stop.feed(text)
        if self.calls is not None:
            out = self.calls.feed(out)
        self._send_text(out)
        if self.stop.hit:
            self.stopped = True
            self.cancel()

    def done(self, reason: str, timings: Timings, tokens: list[int]) -> None:
        try:
            out = ""
            if self.splitter is not None and not self.stopped:
                reasoning, answer = self.splitter.finish()
                self._send_thinking(reasoning)
                out = self.stop.feed(answer)
            out += self.stop.flush()
            tool_calls = None
            if self.calls is not None:
                out = self.calls.feed(out)
                rest, tool_calls = self.calls.finish()
                out += rest
            self._send_text(out)
            if self.stopped and self._budget > 0 and self._entries:
                # A stop string began inside this token: part of its text went out.
                partial = self._entries[:1]
                self.worker.output.send(protocol.piece_event(self.id, "", logprobs=partial))
            if self.stopped:
                reason = "stop"
            context = self._context(tokens)
            event = protocol.done_event(
                self.id, reason, timings, tool_calls, context, stop_sequence=self.stop.matched
            )
        except Exception as exc:  # never leave a request without its final event
            event = protocol.error_event(unexpected(exc), self.id)
        self.worker.finished(self.id)
        self.worker.output.send(event)

    def error(self, exc: LocalrunError) -> None:
        self.worker.finished(self.id)
        self.worker.output.send(protocol.error_event(exc, self.id))


def _id(message: protocol.Message) -> RequestId:
    value = message.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequestError(f"a request needs an id (a number or a string), not {value!r}")
    return value


def _optional(message: protocol.Message, key: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(key)
    if value is not None and not isinstance(value, kind):
        raise BadRequestError(f"{key} has the wrong type ({type(value).__name__})")
    return value


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise BadRequestError("messages must be a list")
    for index, message in enumerate(value):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequestError(f"messages[{index}] must be an object with a role")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            raise BadRequestError(f"messages[{index}].content must be a string")
        if message.get("tool_calls") is not None and not isinstance(message["tool_calls"], list):
            raise BadRequestError(f"messages[{index}].tool_calls must be a list")
    return value


def _token_ids(value: Any, n_vocab: int, key: str) -> list[int]:
    """Token ids from a request, each in the model's vocabulary (BadRequestError if not)."""
    if not isinstance(value, list):
        raise BadRequestError(f"{key} must be a list of token ids")
    for token in value:
        if isinstance(token, bool) or not isinstance(token, int):
            raise BadRequestError(f"{key} must be a list of token ids, not {token!r}")
        if not 0 <= token < n_vocab:
            raise BadRequestError(
                f"{key} holds the token id {token}, which is not in the model's vocabulary "
                f"(0 to {n_vocab - 1})"
            )
    return value


def _extra(value: Any) -> list[dict[str, str]]:
    """Infill's other files: [{"filename": str, "text": str}]."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(c, dict) and all(isinstance(c.get(k, ""), str) for k in ("filename", "text"))
        for c in value
    ):
        raise BadRequestError("input_extra must be a list of {filename, text} objects")
    return value


def _format(message: protocol.Message) -> str | dict[str, Any] | None:
    value = message.get("format")
    if value is None or value == "" or value == "json" or isinstance(value, dict):
        return value or None
    raise BadRequestError(f"unknown format {value!r}", hint='use "json" or a JSON schema object')


class Worker:
    """Serves requests for one loaded model until its input ends."""

    def __init__(self, loaded: Loaded, output: Output) -> None:
        self.engine = loaded.engine
        self.prompter = loaded.prompter
        self.output = output
        self._active: dict[RequestId, RequestSink] = {}
        self._embeds: dict[RequestId, threading.Event] = {}  # set: cancel that embedding
        self._lock = threading.Lock()
        self._embedder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")

    def serve(self, lines: Iterable[bytes]) -> None:
        try:
            for line in lines:
                if line.strip():
                    self.handle(line)
                if self.output.broken:
                    break  # the scheduler is gone
        finally:
            self.close()

    def close(self) -> None:
        self._embedder.shutdown(wait=True)
        self.engine.close()  # pending generations end with done("cancelled")

    def finished(self, id: RequestId) -> None:
        with self._lock:
            self._active.pop(id, None)

    def handle(self, line: bytes) -> None:
        """Answer one request line; errors become error events and the worker goes on."""
        id: RequestId | None = None
        try:
            message = protocol.decode(line)
            op = message.get("op")
            if op == protocol.CANCEL:
                with self._lock:
                    sink = self._active.get(_id(message))
                    embedding = self._embeds.get(_id(message))
                if sink is not None:  # else it has finished already
                    sink.cancel()
                if embedding is not None:
                    embedding.set()
                return
            id = _id(message)
            if op == protocol.CHAT:
                prepared = self.prompter.chat(
                    _messages(message.get("messages")),
                    system=_optional(message, "system", str),
                    options=_optional(message, "options", dict),
                    format=_format(message),
                    tools=message.get("tools"),
                    tool_choice=message.get("tool_choice"),
                    think=thinking.check(message.get("think")),
                )
                self._submit(id, self._after_context(message, prepared), message)
            elif op == protocol.COMPLETE:
                prompt = message.get("prompt")
                if not isinstance(prompt, str):
                    raise BadRequestError("prompt must be a string")
                suffix = _optional(message, "suffix", str)
                if suffix is None:
                    prepared = self.prompter.complete(
                        prompt, options=_optional(message, "options", dict), format=_format(message)
                    )
                else:
                    prepared = self.prompter.infill(
                        prompt,
                        suffix,
                        extra=_extra(message.get("extra")),
                        options=_optional(message, "options", dict),
                        format=_format(message),
                    )
                self._submit(id, self._after_context(message, prepared), message)
            elif op == protocol.TOKENIZE:
                self.output.send(protocol.tokens_event(id, self._tokenize(message)))
            elif op == protocol.DETOKENIZE:
                tokens = _token_ids(message.get("tokens"), self.engine.n_vocab, "tokens")
                pieces = [self.engine.token_bytes(t) for t in tokens]
                text = b"".join(pieces).decode("utf-8", errors="replace")
                wanted = message.get("pieces") is True
                self.output.send(protocol.text_event(id, text, pieces if wanted else None))
            elif op == protocol.EMBED:
                inputs = message.get("input")
                if isinstance(inputs, str):
                    inputs = [inputs]
                if not isinstance(inputs, list):
                    raise BadRequestError("input must be a string or a list")
                inputs = [
                    t if isinstance(t, str) else _token_ids(t, self.engine.n_vocab, "input")
                    for t in inputs
                ]
                truncate = message.get("truncate", True)
                cancel = threading.Event()
                with self._lock:
                    if id in self._active or id in self._embeds:
                        raise BadRequestError(f"a request with id {id!r} is still running")
                    self._embeds[id] = cancel
                self._embedder.submit(self._embed, id, inputs, truncate is not False, cancel)
            else:
                raise BadRequestError(f"unknown op {op!r}")
        except LocalrunError as exc:
            self.output.send(protocol.error_event(exc, id))
        except Exception as exc:
            self.output.send(protocol.error_event(unexpected(exc), id))

    def _after_context(self, message: protocol.Message, prepared: Prepared) -> Prepared:
        """The request's `context` tokens, then its prompt's (without a second BOS)."""
        if message.get("context") is None:
            return prepared
        context = _token_ids(message["context"], self.engine.n_vocab, "context")
        tokens = prepared.tokens
        bos = self.engine.token_ids(self.engine.bos_text) if self.engine.bos_text else []
        if context and bos and tokens[:1] == bos[:1]:
            tokens = tokens[1:]
        prepared.tokens = context + tokens
        prepared.cache_prefix = 0  # the model's turns no longer come first
        return prepared

    def _tokenize(self, message: protocol.Message) -> list[int]:
        """Text's tokens, or those of the chat prompt a conversation renders to."""
        if message.get("messages") is not None:
            return self.prompter.chat(
                _messages(message.get("messages")),
                system=_optional(message, "system", str),
                tools=message.get("tools"),
            ).tokens
        text = message.get("text")
        if not isinstance(text, str):
            raise BadRequestError("tokenize needs a text or messages")
        return self.engine.tokenize(
            text,
            add_special=message.get("add_special") is not False,
            parse_special=message.get("parse_special") is True,
        )

    def _submit(
        self, id: RequestId, prepared: Prepared, message: protocol.Message | None = None
    ) -> None:
        if not prepared.tokens:  # the engine needs at least one token to start from
            raise BadRequestError("the prompt is empty", hint="send a prompt of some text")
        logprobs = (message or {}).get("logprobs")
        if logprobs is not None:
            if isinstance(logprobs, bool) or not isinstance(logprobs, int) or logprobs < 0:
                raise BadRequestError("logprobs must be a count of alternatives (0 or more)")
            prepared.sampling = dataclasses.replace(prepared.sampling, logprobs=logprobs)
        wanted = message is not None and message.get("return_context") is True
        sink = RequestSink(self, id, prepared, wanted)
        with self._lock:
            if id in self._active:
                raise BadRequestError(f"a request with id {id!r} is still running")
            self._active[id] = sink
        try:
            ticket = self.engine.submit(
                prepared.tokens,
                prepared.sampling,
                stop_tokens=self.prompter.stop_tokens | prepared.stop_tokens,
                sink=sink,
                cache_prefix=prepared.cache_prefix,
            )
        except BaseException:
            self.finished(id)
            raise
        sink.attach(ticket)

    def _embed(
        self, id: RequestId, inputs: list[EmbedInput], truncate: bool, cancel: threading.Event
    ) -> None:
        count = 0
        event: protocol.Message | None = None
        try:
            for start in range(0, len(inputs), protocol.EMBED_GROUP):
                if cancel.is_set():  # the client went away: the rest is not worth computing
                    event = protocol.embeddings_event(id, [], count, cancelled=True)
                    break
                group = inputs[start : start + protocol.EMBED_GROUP]
                vectors, tokens = self.engine.embed(group, truncate=truncate)
                count += tokens
                if start + protocol.EMBED_GROUP < len(inputs):
                    self.output.send(protocol.vectors_event(id, vectors))
                else:
                    event = protocol.embeddings_event(id, vectors, count)
            if event is None:  # no inputs at all
                event = protocol.embeddings_event(id, [], count)
        except LocalrunError as exc:
            event = protocol.error_event(exc, id)
        except Exception as exc:
            event = protocol.error_event(unexpected(exc), id)
        with self._lock:
            self._embeds.pop(id, None)
        self.output.send(event)
