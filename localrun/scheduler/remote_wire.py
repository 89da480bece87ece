"""What goes over the wire to an upstream: a runner request (worker.protocol's chat and
complete messages) as an OpenAI or Ollama API call, and the upstream's streamed answer back
as the runner's piece and done events. Pure: no network (scheduler.remote sends and reads).

    chat      -> POST /v1/chat/completions  (openai)   POST /api/chat      (ollama)
    complete  -> POST /v1/completions       (openai)   POST /api/generate  (ollama, raw)

The answer streams as server-sent events (OpenAI) or JSON lines (Ollama); `Reader.feed` takes
each decoded object and returns the events it makes, `Reader.done` the final one.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from localrun.engine.types import Timings
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


def path(dialect: str, op: str) -> str:
    if dialect == "ollama":
        return "/api/chat" if op == protocol.CHAT else "/api/generate"
    return "/v1/chat/completions" if op == protocol.CHAT else "/v1/completions"


def body(dialect: str, model: str, request: Message) -> Message:
    """The upstream's request body for a runner request (streaming)."""
    options = dict(request.get("options") or {})
    fmt = request.get("format")
    if dialect == "ollama":
        out: Message = {"model": model, "stream": True, "options": options}
        if fmt:
            out["format"] = fmt
        if request["op"] == protocol.CHAT:
            out["messages"] = _messages(request, openai=False)
            if request.get("tools"):
                out["tools"] = request["tools"]
            if request.get("think") is not None:
                out["think"] = request["think"]
        else:
            out["prompt"] = request["prompt"]
            out["raw"] = True
            if request.get("suffix") is not None:
                out["suffix"] = request["suffix"]
        return out
    out = {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    for key, value in options.items():
        fields = _OPENAI_OPTIONS.get(key, ())
        if key == "num_predict" and value < 0:
            continue
        for field in (fields,) if isinstance(fields, str) else fields:
            out[field] = list(value) if key == "stop" else value
    if request["op"] == protocol.CHAT:
        out["messages"] = _messages(request, openai=True)
        if request.get("tools"):
            out["tools"] = request["tools"]
            if request.get("tool_choice") is not None:
                out["tool_choice"] = request["tool_choice"]
        if fmt == "json":
            out["response_format"] = {"type": "json_object"}
        elif isinstance(fmt, dict):
            out["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": fmt},
            }
    else:
        out["prompt"] = request["prompt"]
        if request.get("suffix") is not None:
            out["suffix"] = request["suffix"]
    return out


def _messages(request: Message, *, openai: bool) -> list[Message]:
    out: list[Message] = []
    if request.get("system"):
        out.append({"role": "system", "content": request["system"]})
    for index, message in enumerate(request.get("messages") or []):
        item: Message = {"role": message.get("role", "user"), "content": message.get("content")}
        if item["content"] is None:
            item["content"] = ""
        calls = message.get("tool_calls")
        if calls:
            item["tool_calls"] = [_call(call, index, n, openai) for n, call in enumerate(calls)]
        if message.get("role") == "tool":
            if openai:
                item["tool_call_id"] = message.get("tool_call_id") or _call_id(index - 1, 0)
            elif message.get("tool_name"):
                item["tool_name"] = message["tool_name"]
        if message.get("images") and not openai:
            item["images"] = message["images"]
        out.append(item)
    return out


def _call_id(message: int, n: int) -> str:
    return f"call_{message}_{n}"


def _call(call: Message, index: int, n: int, openai: bool) -> Message:
    inner = call.get("function")
    function: Message = inner if isinstance(inner, dict) else call
    name = function.get("name", "")
    arguments = function.get("arguments") or {}
    if not openai:
        return {"function": {"name": name, "arguments": arguments}}
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return {
        "id": call.get("id") or _call_id(index, n),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


def embed_body(dialect: str, model: str, inputs: list[Any], truncate: bool) -> tuple[str, Message]:
    """The route and body of an embedding request for `inputs` (texts or token ids)."""
    if dialect == "ollama":
        return "/api/embed", {"model": model, "input": inputs, "truncate": truncate}
    return "/v1/embeddings", {"model": model, "input": inputs, "encoding_format": "float"}


def embeddings(dialect: str, data: Any) -> tuple[list[list[float]], int]:
    """The vectors of an embedding answer, in input order and L2-normalized, and the prompt
    tokens counted; ValueError for anything else."""
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

    def __init__(self, dialect: str, request_id: Any, started: float) -> None:
        self.dialect = dialect
        self.id = request_id
        self.started = started
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
        if "error" in obj:
            error = obj["error"]
            message = error.get("message") if isinstance(error, dict) else error
            raise ValueError(f"the upstream reported an error: {str(message)[:300]}")
        if self.dialect == "ollama":
            return self._ollama(obj)
        return self._openai(obj)

    def _piece(self, text: str, thinking: str = "") -> list[Message]:
        if not text and not thinking:
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
        events: list[Message] = []
        for choice in obj.get("choices") or []:
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
            if reason:
                self.reason = "length" if reason == "length" else "stop"
        return events

    def _merge_call(self, call: Any) -> None:
        if not isinstance(call, dict):
            return
        slot = self._calls.setdefault(int(call.get("index") or 0), {"name": "", "arguments": ""})
        function = call.get("function") or {}
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
                if isinstance(function, dict):
                    self._ollama_calls.append(
                        {
                            "name": function.get("name", ""),
                            "arguments": function.get("arguments") or {},
                        }
                    )
        else:
            events = self._piece(str(obj.get("response") or ""), str(obj.get("thinking") or ""))
        if obj.get("done"):
            self.reason = "length" if obj.get("done_reason") == "length" else "stop"
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
