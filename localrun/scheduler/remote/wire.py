"""What goes over the wire to an upstream: a runner request as an API call, the answer as events.

A runner request (worker.protocol's chat and complete messages) becomes an OpenAI or Ollama API
call. The upstream's streamed answer comes back as the runner's piece and done events. Pure: no
network (scheduler.remote.upstreams sends and reads).

    chat      -> POST /v1/chat/completions  (openai)   POST /api/chat      (ollama)
    complete  -> POST /v1/completions       (openai)   POST /api/generate  (ollama, raw)

The answer streams as server-sent events (OpenAI) or JSON lines (Ollama); `Reader.feed` takes
each decoded object and returns the events it makes, `Reader.done` the final one. `headers`
go with every request; `model_names` reads an upstream's model list.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from localrun.engine.types import Timings
from localrun.errors import BadRequestError
from localrun.request.genrequest import GenRequest, pair_tool_results
from localrun.scheduler.remote.limit import AnswerLimit
from localrun.settings.upstreams import Upstream
from localrun.worker import protocol

Message = dict[str, Any]

# Ollama option -> the OpenAI request fields that mean the same: the standard ones, and the
# extensions vLLM and SGLang (repetition_penalty) and llama-server and localrun (repeat_penalty)
# read, each server ignoring the other's name.
_OPENAI_OPTIONS: dict[str, str | tuple[str, ...]] = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "seed": "seed",
    "num_predict": "max_tokens",
    "stop": "stop",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repeat_penalty": ("repetition_penalty", "repeat_penalty"),
}


class RequestRefused(ValueError):
    """An error the upstream reported about the request itself: the client's to fix.

    Too long a prompt or a bad parameter is such an error, not a fault of the upstream.
    """


# What an upstream's error object says of a request it refused (OpenAI's, vLLM's, SGLang's and
# llama-server's types and codes).
_REQUEST_ERRORS = {"invalid_request_error", "exceed_context_size_error", "BadRequestError", 400}
_STOPS = {"stop", "tool_calls", "function_call", "eos", "eos_token", "content_filter", "unload"}


def path(dialect: str, chat: bool) -> str:
    """The upstream's route for a chat, or a completion."""
    if dialect == "ollama":
        return "/api/chat" if chat else "/api/generate"
    return "/v1/chat/completions" if chat else "/v1/completions"


def body(dialect: str, model: str, request: GenRequest) -> Message:
    """The upstream's request body for a request (streaming)."""
    options = dict(request.options)
    fmt = request.format
    _unscored(model, request)
    if dialect == "ollama":
        if request.logit_bias:
            raise BadRequestError(
                f"{model} is served by an Ollama upstream, which takes no logit_bias",
                hint="leave logit_bias out for this model",
            )
        out: Message = {"model": model, "stream": True, "options": options}
        if fmt:
            out["format"] = fmt
        if options.get("seed", 0) < 0:
            del options["seed"]  # random: Ollama's own default
        if request.chat:
            out["messages"] = _messages(request, openai=False)
            if request.tools:
                out["tools"] = request.tools
            # Adaptive thinking is the model's default there: Ollama refuses `think` for a
            # model that cannot think, and its thinking models think unless told not to.
            if request.think is not None and not request.think_adaptive:
                out["think"] = request.think
        else:
            out["prompt"] = request.prompt or ""
            # Ollama fills in the middle through the model's template: never raw with a suffix.
            out["raw"] = request.suffix is None
            if request.suffix is not None:
                out["suffix"] = request.suffix
        return out
    out = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    for key, value in options.items():
        fields = _OPENAI_OPTIONS.get(key, ())
        if key in ("num_predict", "seed") and value < 0:
            continue  # no limit, a random seed: the field's absence says so
        for field in (fields,) if isinstance(fields, str) else fields:
            out[field] = list(value) if key == "stop" else value
    if request.logit_bias:  # the upstream's token ids, as the client named them
        out["logit_bias"] = {
            str(token): -100 if bias is None else bias for token, bias in request.logit_bias
        }
    if request.chat:
        out["messages"] = _messages(request, openai=True)
        think = request.think
        if think is not None:
            # vLLM, SGLang and llama-server pass this to the chat template; a level is also
            # OpenAI's reasoning_effort.
            out["chat_template_kwargs"] = {"enable_thinking": think is not False}
            if isinstance(think, str):
                out["reasoning_effort"] = think
        if request.tools:
            out["tools"] = request.tools
            if request.tool_choice is not None:
                out["tool_choice"] = request.tool_choice
        if fmt == "json":
            out["response_format"] = {"type": "json_object"}
        elif isinstance(fmt, dict):
            out["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": fmt},
            }
    else:
        out["prompt"] = request.prompt or ""
        if request.suffix is not None:
            out["suffix"] = request.suffix
    return out


def _unscored(model: str, request: GenRequest) -> None:
    """Refuse a token-id prompt, a scored one, or a reading over candidates.

    An upstream's prompt log-probabilities would come back in its own wire shape, which the
    streamed translation does not read. No upstream's wire carries a reading over candidates
    (/v1/systemone).
    """
    if request.tokens is not None or request.prompt_logprobs is not None:
        raise BadRequestError(
            f"{model} is served by an upstream: its prompt cannot be given as token ids or "
            "scored here",
            hint="send it a text prompt without echo and prompt_logprobs, or ask the upstream",
        )
    if request.candidates is not None:
        raise BadRequestError(
            f"{model} is served by an upstream, whose next-token probabilities over given "
            "texts are not read here",
            hint="ask a model of this server's store",
        )


def _messages(request: GenRequest, *, openai: bool) -> list[Message]:
    out: list[Message] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    given = request.messages or []
    for index, message in enumerate(given):
        if not isinstance(message, dict):
            raise ValueError(f"message {index} is not an object")
        if not isinstance(message.get("tool_calls") or [], list):
            raise ValueError(f"message {index}: tool_calls is not a list")
    # copies: the pairing gives ids in place, and the request is the caller's
    for index, message in enumerate(pair_tool_results([dict(m) for m in given])):
        item: Message = {"role": message.get("role", "user"), "content": message.get("content")}
        if item["content"] is None:
            item["content"] = ""
        if message.get("tool_calls"):
            calls = message["tool_calls"]
            item["tool_calls"] = [_call(call, index, n, openai) for n, call in enumerate(calls)]
        if message.get("role") == "tool":
            if openai:
                item["tool_call_id"] = message.get("tool_call_id") or _call_id(index, 0)
            elif message.get("tool_name"):
                item["tool_name"] = message["tool_name"]
        if message.get("images") and not openai:
            item["images"] = message["images"]
        out.append(item)
    return out


def _call_id(message: int, n: int) -> str:
    return f"call_{message}_{n}"


def _call(call: Any, index: int, n: int, openai: bool) -> Message:
    if not isinstance(call, dict):
        raise ValueError(f"message {index}: tool call {n} is not an object")
    inner = call.get("function")
    function: Message = inner if isinstance(inner, dict) else call
    name = str(function.get("name") or "")
    arguments = function.get("arguments") or {}
    if not openai:  # Ollama wants the arguments as an object, OpenAI clients send a string
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                arguments = {}
        return {
            "function": {
                "index": n,  # api.ToolCallFunction's, always written by Ollama's own clients
                "name": name,
                "arguments": arguments if isinstance(arguments, dict) else {},
            }
        }
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {
        "id": str(call.get("id") or _call_id(index, n)),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def embed_body(dialect: str, model: str, inputs: list[Any], truncate: bool) -> tuple[str, Message]:
    """The route and body of an embedding request for `inputs` (texts or token ids)."""
    if dialect == "ollama":
        return "/api/embed", {"model": model, "input": inputs, "truncate": truncate}
    return "/v1/embeddings", {"model": model, "input": inputs, "encoding_format": "float"}


def rerank_body(
    upstream: Upstream, model: str, query: str, documents: list[Any]
) -> tuple[str, Message]:
    """Return the route and body of a rerank request (llama-server's and vLLM's /v1/rerank).

    Ollama's API has none: BadRequestError.
    """
    if upstream.dialect == "ollama":
        raise BadRequestError(
            f"upstream {upstream.name} speaks Ollama's API, which has no rerank",
            hint="rerank with a local reranker or one served by an OpenAI-style upstream",
        )
    body = {"model": model, "query": query, "documents": documents, "top_n": len(documents)}
    return "/v1/rerank", body


def rerank_scores(data: Any, n: int) -> tuple[list[list[float]], int]:
    """Return a rerank answer's scores as one-value vectors in document order, and its tokens.

    The tokens are the prompt tokens counted. ValueError for anything else.
    """
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list):
        raise ValueError("no results in the rerank answer")
    scores: dict[int, float] = {}
    for item in results:
        index = item.get("index") if isinstance(item, dict) else None
        score = item.get("relevance_score") if isinstance(item, dict) else None
        if not isinstance(index, int) or not isinstance(score, (int, float)):
            raise ValueError("a rerank result without an index and a relevance_score")
        scores[index] = float(score)
    if sorted(scores) != list(range(n)):
        raise ValueError(f"{len(scores)} rerank results for {n} documents")
    usage = data.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else 0
    return [[scores[i]] for i in range(n)], int(tokens or 0)


def embeddings(dialect: str, data: Any) -> tuple[list[list[float]], int]:
    """Return an embedding answer's vectors, in input order and L2-normalized, and its tokens.

    The tokens are the prompt tokens counted. ValueError for anything else.
    """
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if dialect == "ollama":
        raw = data.get("embeddings")
        tokens = data.get("prompt_eval_count")
    else:
        items = data.get("data")
        if not isinstance(items, list):
            raise ValueError("no data in the answer")
        ordered = sorted(
            items, key=lambda item: item.get("index", 0) if isinstance(item, dict) else 0
        )
        raw = [item.get("embedding") if isinstance(item, dict) else None for item in ordered]
        usage = data.get("usage")
        tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else 0
    if not isinstance(raw, list):
        raise ValueError("no embeddings in the answer")
    vectors = []
    for vector in raw:
        if not isinstance(vector, list) or not all(isinstance(x, (int, float)) for x in vector):
            raise ValueError("an embedding that is not a list of numbers")
        norm = math.sqrt(sum(float(x) * float(x) for x in vector))
        vectors.append(
            [float(x) / norm for x in vector] if norm > 0 else [float(x) for x in vector]
        )
    return vectors, int(tokens or 0)


class Reader:
    """Turns one upstream answer's stream into runner events, with its timings."""

    def __init__(
        self, dialect: str, request_id: Any, started: float, limit: AnswerLimit | None = None
    ) -> None:
        self.dialect = dialect
        self.id = request_id
        self.started = started
        # Past it the answer ends "length" and nothing more is read (cut): remote_limit.
        self.limit = limit or AnswerLimit(2**62, client=False)
        self.first: float | None = None  # when the first piece arrived
        self.reason: str | None = None
        self.prompt_tokens = 0
        self.eval_tokens = 0
        self.pieces = 0
        self._calls: dict[int, Message] = {}  # OpenAI tool calls, streamed in parts
        self._ollama_calls: list[Message] = []
        self._upstream_timings: Timings | None = None

    def feed(self, obj: Any) -> list[Message]:
        """The piece events in one decoded stream object (ValueError if it is not one)."""
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        error = obj.get("error") or (obj if obj.get("object") == "error" else None)
        if error:
            raise _reported(error)
        if self.cut:
            return []
        if self.dialect == "ollama":
            return self._ollama(obj)
        return self._openai(obj)

    @property
    def cut(self) -> bool:
        """The answer reached its limit: it ends here as a length-limited one."""
        return self.limit.reached

    def _piece(self, text: str, thinking: str = "") -> list[Message]:
        if not text and not thinking:
            return []
        if not self.limit.piece(len(text) + len(thinking)):
            self.reason = "length"
            return []
        if self.first is None:
            self.first = time.perf_counter()
        self.pieces += 1
        return [protocol.piece_event(self.id, text, thinking=thinking)]

    def _openai(self, obj: Message) -> list[Message]:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.eval_tokens = int(usage.get("completion_tokens") or 0)
            if not self.limit.report(self.eval_tokens):
                self.reason = "length"
                return []
        events: list[Message] = []
        for choice in obj.get("choices") or []:
            if self.cut:
                break
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict):
                thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
                events += self._piece(str(delta.get("content") or ""), str(thinking))
                for call in delta.get("tool_calls") or []:
                    self._merge_call(call)
            elif "text" in choice:  # /v1/completions
                events += self._piece(str(choice.get("text") or ""))
            reason = choice.get("finish_reason")
            if reason and not self.cut:
                self.reason = _reason(str(reason))
        return events

    def _merge_call(self, call: Any) -> None:
        if not isinstance(call, dict):
            return
        function = call.get("function") or {}
        size = len(str(function.get("name") or "")) + len(str(function.get("arguments") or ""))
        if not self.limit.arguments(size):
            self.reason = "length"
            return
        slot = self._calls.setdefault(int(call.get("index") or 0), {"name": "", "arguments": ""})
        if function.get("name"):
            slot["name"] += str(function["name"])
        if function.get("arguments"):
            slot["arguments"] += str(function["arguments"])

    def _ollama(self, obj: Message) -> list[Message]:
        message = obj.get("message")
        if isinstance(message, dict):
            events = self._piece(
                str(message.get("content") or ""), str(message.get("thinking") or "")
            )
            for call in message.get("tool_calls") or []:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and not self.limit.arguments(
                    len(json.dumps(function, default=str))
                ):
                    self.reason = "length"
                elif isinstance(function, dict):
                    self._ollama_calls.append(
                        {
                            "name": function.get("name", ""),
                            "arguments": function.get("arguments") or {},
                        }
                    )
        else:
            events = self._piece(str(obj.get("response") or ""), str(obj.get("thinking") or ""))
        if obj.get("done") and not self.cut:
            self.reason = _reason(str(obj.get("done_reason") or "stop"))
            self.prompt_tokens = int(obj.get("prompt_eval_count") or 0)
            self.eval_tokens = int(obj.get("eval_count") or 0)
        return events

    def tool_calls(self) -> list[Message] | None:
        if self._ollama_calls:
            return self._ollama_calls
        calls = []
        for _, call in sorted(self._calls.items()):
            try:
                arguments = json.loads(call["arguments"]) if call["arguments"] else {}
            except ValueError:
                if self.cut:
                    continue  # cut off mid-call at the limit: no call was made
                arguments = {}
            calls.append(
                {
                    "name": call["name"],
                    "arguments": arguments if isinstance(arguments, dict) else {},
                }
            )
        return calls or None

    def timings(self) -> Timings:
        """The upstream's token counts, and the times seen here."""
        now = time.perf_counter()
        first = self.first or now
        return Timings(
            prompt_tokens=self.prompt_tokens,
            prompt_s=first - self.started,
            eval_tokens=self.eval_tokens or self.pieces,
            eval_s=now - first,
            total_s=now - self.started,
        )

    def done(self) -> Message:
        """The final event: the reason, the tool calls, the timings."""
        return protocol.done_event(
            self.id, self.reason or "stop", self.timings(), self.tool_calls()
        )


def headers(upstream: Upstream) -> dict[str, str]:
    """The headers of every request to `upstream`: the answers it may stream, and its key."""
    headers = {
        "Accept": "text/event-stream, application/x-ndjson, application/json",
        # Read raw and decompressed within bounds (scheduler.remote.read): gzip, or none.
        "Accept-Encoding": "gzip",
    }
    key = upstream.api_key()
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def model_names(data: Any, dialect: str) -> list[str]:
    """The model names of an upstream's model list (/v1/models or /api/tags), at most 1000."""
    items = (
        data.get("models" if dialect == "ollama" else "data") if isinstance(data, dict) else None
    )
    if not isinstance(items, list):
        raise ValueError("not a model list")
    key = "name" if dialect == "ollama" else "id"
    names = [str(item[key]) for item in items if isinstance(item, dict) and item.get(key)]
    return [n for n in names if 0 < len(n) <= 256][:1000]


def _reason(reason: str) -> str:
    """Return a finish reason as the runner's: stop or length.

    Anything else (vLLM's "abort", an "error") is an answer the upstream broke off. It raises
    ValueError, never a quiet stop.
    """
    if reason == "length":
        return "length"
    if reason in _STOPS:
        return "stop"
    raise ValueError(f"the upstream ended the answer with {reason[:40]!r}")


def _reported(error: Any) -> ValueError:
    """Return the exception for an error object in a stream.

    That is RequestRefused when the error is about the request, else ValueError: the upstream
    failed.
    """
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("msg") or error)[:300]
        kinds = {error.get("type"), error.get("code")}
    else:
        message, kinds = str(error)[:300], set()
    if kinds & _REQUEST_ERRORS:
        return RequestRefused(message)
    return ValueError(f"the upstream reported an error: {message}")
