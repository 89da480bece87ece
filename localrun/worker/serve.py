"""The request loop of a runner: requests in, events out, one engine in between.

A runner serves one loaded model. For the server it runs in a process of its own: worker.main
reads request lines on stdin and writes events to stdout. For `localrun run` it runs in that
process, which dispatches the same messages and reads the same events (worker.local).

The caller's thread reads each message. A generation is prepared (its template rendered, its
prompt tokenized, its grammar checked in the guard's child and compiled) on a thread of the
preparing pool, one a slot, then submitted to the engine. So a schema that takes seconds to
compile holds neither the cancels that come meanwhile nor another client's request (issue 90).
The engine calls each request's sink on its own thread, where the answer is filtered and its
events written (worker.sink). Embeddings run on a thread of their own so that a long one does
not hold up cancels; the engine's loop runs each of their decodes between two steps
(engine.calls). They go EMBED_GROUP inputs at a time, each group's vectors sent, a cancel
checked between groups.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from localrun.engine.types import EmbedInput
from localrun.errors import BadRequestError, EngineError, LocalrunError
from localrun.request.genrequest import GenRequest
from localrun.worker import protocol
from localrun.worker.load import Loaded
from localrun.worker.prompt import token_ids
from localrun.worker.sink import Output, RequestSink, unexpected

# Most tokens one event returns: 8 bytes of JSON each at most keeps its line far below the
# channel's limit (protocol.LINE_LIMIT).
MAX_TOKENS_EVENT = 4_000_000

RequestId = protocol.RequestId
# How long a prepared request waits for those that came before it to be submitted first.
ORDER_WAIT_S = 0.05


def _id(message: protocol.Message) -> RequestId:
    value = message.get("id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequestError(f"a request needs an id (a number or a string), not {value!r}")
    return value


class Worker:
    """Serves requests for one loaded model until its input ends."""

    def __init__(self, loaded: Loaded, output: Output, *, inline: bool = False) -> None:
        """Serve `loaded`, its events sent to `output`.

        With `inline`, each generation is prepared on the thread that dispatches it. That is for
        `localrun run`, one user in this process, whose errors are then queued before dispatch
        returns.
        """
        self.inline = inline
        self.engine = loaded.engine
        self.prompter = loaded.prompter
        self.output = output
        self._active: dict[RequestId, RequestSink] = {}
        self._embeds: dict[RequestId, threading.Event] = {}  # set: cancel that embedding
        self._preparing: dict[RequestId, threading.Event] = {}  # set: cancel it once prepared
        self._lock = threading.Lock()
        # A request is prepared while others are: one thread a slot (the scheduler sends a
        # runner no more requests at once than it has slots), and one for `localrun run`'s.
        slots = int(getattr(self.engine, "n_slots", 1) or 1)
        self._preparer = ThreadPoolExecutor(max_workers=slots + 1, thread_name_prefix="prepare")
        self._order = threading.Condition()  # requests submitted in the order they came
        self._arrived = 0
        self._unsubmitted: set[int] = set()
        self._embedder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed")
        # Tokenizing a long text takes a while: off the thread that takes the other requests.
        self._tokenizer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

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
        with self._lock:
            for cancel in self._preparing.values():
                cancel.set()
        self._preparer.shutdown(wait=True)
        self._tokenizer.shutdown(wait=True)
        self._embedder.shutdown(wait=True)
        self.engine.close()  # pending generations end with done("cancelled")

    def finished(self, id: RequestId) -> None:
        with self._lock:
            self._active.pop(id, None)

    def handle(self, line: bytes) -> None:
        """Answer one request line; errors become error events and the worker goes on."""
        try:
            message = protocol.decode(line)
        except LocalrunError as exc:
            self.output.send(protocol.error_event(exc))
            return
        self.dispatch(message)

    def dispatch(self, message: protocol.Message) -> None:
        """Answer one request; errors become error events and the worker goes on."""
        id: RequestId | None = None
        try:
            op = message.get("op")
            if op == protocol.CANCEL:
                self._cancel(_id(message))
                return
            id = _id(message)
            if op in (protocol.CHAT, protocol.COMPLETE):
                self._start(id, protocol.request_of(message))
            elif op == protocol.TOKENIZE:
                self._tokenizer.submit(self._send_tokens, id, message)
            elif op == protocol.DETOKENIZE:
                self._tokenizer.submit(self._send_text, id, message)
            elif op == protocol.EMBED:
                self._start_embed(id, message)
            else:
                raise BadRequestError(f"unknown op {op!r}")
        except Exception as exc:
            self.output.send(_failure(exc, id))

    def _send_tokens(self, id: RequestId, message: protocol.Message) -> None:
        """A tokenize request's one event, on the tokenizer's thread."""
        try:
            tokens = self._tokenize(message)
            if len(tokens) > MAX_TOKENS_EVENT:
                raise BadRequestError(
                    f"the text is {len(tokens)} tokens; at most {MAX_TOKENS_EVENT} are returned",
                    hint="send less text",
                )
            self.output.send(protocol.tokens_event(id, tokens))
        except Exception as exc:
            self.output.send(_failure(exc, id))

    def _cancel(self, id: RequestId) -> None:
        with self._lock:
            sink = self._active.get(id)
            embedding = self._embeds.get(id)
            preparing = self._preparing.get(id)
        if sink is not None:  # else it has finished already
            sink.cancel()
        if embedding is not None:
            embedding.set()
        if preparing is not None:
            preparing.set()

    def _start(self, id: RequestId, request: GenRequest) -> None:
        """Hand a generation to the preparing pool, its id and place in the line taken now.

        Taking the id now keeps a cancel that comes while the generation is prepared.
        """
        cancel = threading.Event()
        with self._lock:
            if id in self._active or id in self._preparing or id in self._embeds:
                raise BadRequestError(f"a request with id {id!r} is still running")
            self._preparing[id] = cancel
        with self._order:
            self._arrived += 1
            place = self._arrived
            self._unsubmitted.add(place)
        if self.inline:
            self._prepared(id, request, cancel, place)
            return
        try:
            self._preparer.submit(self._prepared, id, request, cancel, place)
        except RuntimeError:  # the pool is shut: the runner is closing
            with self._lock:
                self._preparing.pop(id, None)
            self._submitted(place)
            raise EngineError("the model is being unloaded") from None

    def _prepared(
        self, id: RequestId, request: GenRequest, cancel: threading.Event, place: int
    ) -> None:
        """Prepare and submit one generation, on a thread of the preparing pool.

        Its failure is its error event.
        """
        try:
            self._submit(id, request, cancel, place)
        except Exception as exc:
            self.output.send(_failure(exc, id))
        finally:
            with self._lock:
                self._preparing.pop(id, None)
            self._submitted(place)

    def _in_turn(self, place: int) -> None:
        """Wait, at most ORDER_WAIT_S, until the requests that came before this one are submitted.

        Quick preparations keep the order they came in, as the engine's line is FIFO. A slow one
        (a schema compiled for seconds) lets the later ones by.
        """
        with self._order:
            self._order.wait_for(lambda: min(self._unsubmitted) >= place, timeout=ORDER_WAIT_S)

    def _submitted(self, place: int) -> None:
        with self._order:
            self._unsubmitted.discard(place)
            self._order.notify_all()

    def _submit(
        self, id: RequestId, request: GenRequest, cancel: threading.Event, place: int
    ) -> None:
        prepared = self.prompter.prepare(request)
        self._in_turn(place)
        try:
            sink = RequestSink(self.output, id, prepared, self.finished, self._answer_tokens)
            with self._lock:
                if id in self._active:
                    raise BadRequestError(f"a request with id {id!r} is still running")
                self._active[id] = sink
                self._preparing.pop(id, None)  # from here a cancel reaches the sink
            if cancel.is_set():  # cancelled while it was prepared: ends before any decode
                sink.cancel()
        except BaseException:
            if prepared.media is not None:
                prepared.media.free()
            raise
        try:
            extra = {"media": prepared.media} if prepared.media is not None else {}
            ticket = self.engine.submit(
                prepared.tokens,
                prepared.sampling,
                stop_tokens=self.prompter.stop_tokens | prepared.stop_tokens,
                sink=sink,
                cache_prefix=prepared.cache_prefix,
                **extra,
            )
        except BaseException:
            self.finished(id)
            raise
        sink.attach(ticket)

    def _answer_tokens(self, text: str) -> list[int]:
        return self.engine.tokenize(text, add_special=False, parse_special=False)

    def _tokenize(self, message: protocol.Message) -> list[int]:
        """Text's tokens, or those of the chat prompt a conversation renders to."""
        if message.get("messages") is not None:
            asked = protocol.request_of({**message, "op": protocol.CHAT})
            # What the turns render to: the sampling, format and thinking it asks for are not
            # the prompt's, and are neither checked nor compiled here.
            turns = GenRequest(
                asked.model, messages=asked.messages, system=asked.system, tools=asked.tools
            )
            prepared = self.prompter.chat(turns)
            if prepared.media is not None:
                prepared.media.free()  # its tokens are what is asked for
            return prepared.tokens
        text = message.get("text")
        if not isinstance(text, str):
            raise BadRequestError("tokenize needs a text or messages")
        return self.engine.tokenize(
            text,
            add_special=message.get("add_special") is not False,
            parse_special=message.get("parse_special") is True,
        )

    def _send_text(self, id: RequestId, message: protocol.Message) -> None:
        """Send a detokenize request's one event, on the tokenizer's thread.

        A long list takes a while; the server bounds its length.
        """
        try:
            tokens = token_ids(message.get("tokens"), self.engine.n_vocab, "tokens")
            pieces = [self.engine.token_bytes(t) for t in tokens]
            text = b"".join(pieces).decode("utf-8", errors="replace")
            wanted = message.get("pieces") is True
            self.output.send(protocol.text_event(id, text, pieces if wanted else None))
        except Exception as exc:
            self.output.send(_failure(exc, id))

    # -- embeddings ---------------------------------------------------------------------------

    def _start_embed(self, id: RequestId, message: protocol.Message) -> None:
        inputs: Any = message.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list):
            raise BadRequestError("input must be a string or a list")
        inputs = [
            t if isinstance(t, str) else token_ids(t, self.engine.n_vocab, "input") for t in inputs
        ]
        truncate = message.get("truncate", True)
        query = message.get("query")
        if query is not None and not isinstance(query, str):
            raise BadRequestError("query must be a string")
        cancel = threading.Event()
        with self._lock:
            if id in self._active or id in self._embeds:
                raise BadRequestError(f"a request with id {id!r} is still running")
            self._embeds[id] = cancel
        self._embedder.submit(self._embed, id, inputs, truncate is not False, query, cancel)

    def _embed(
        self,
        id: RequestId,
        inputs: list[EmbedInput],
        truncate: bool,
        query: str | None,
        cancel: threading.Event,
    ) -> None:
        count = 0
        event: protocol.Message | None = None
        try:
            for start in range(0, len(inputs), protocol.EMBED_GROUP):
                if cancel.is_set():  # the client went away: the rest is not worth computing
                    event = protocol.embeddings_event(id, [], count, cancelled=True)
                    break
                group = inputs[start : start + protocol.EMBED_GROUP]
                vectors, tokens = self.engine.embed(group, truncate=truncate, query=query)
                count += tokens
                if start + protocol.EMBED_GROUP < len(inputs):
                    self.output.send(protocol.vectors_event(id, vectors))
                else:
                    event = protocol.embeddings_event(id, vectors, count)
            if event is None:  # no inputs at all
                event = protocol.embeddings_event(id, [], count)
        except Exception as exc:
            event = _failure(exc, id)
        with self._lock:
            self._embeds.pop(id, None)
        self.output.send(event)


def _failure(exc: Exception, id: RequestId | None) -> protocol.Message:
    """Return the error event of a request that raised `exc`.

    That is its own error, or a bug or a native failure worded as the runner's. The worker goes
    on either way.
    """
    return protocol.error_event(exc if isinstance(exc, LocalrunError) else unexpected(exc), id)
