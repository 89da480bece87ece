"""Guidance (the `guidance` package on llama-cpp-python) behind the slice of OpenAI's chat
route that scripts/measure/structured.py asks: the other stack in its runs, set up as the
JSONSchemaBench paper's harness sets it up (epfl-dlab/jsonschemabench `engines/guidance.py`).

    PYTHON scripts/benchlib/stacks/guidance_server.py --model GGUF --port N [--threads N] [--ctx N]

PYTHON has `guidance` installed (it pins its own llguidance, so it lives in a virtual
environment of its own: measure/structured.py's `--guidance-python`) and can import
llama_cpp and localrun. What the harness does, done here:
- the prompt is the GGUF's chat template applied by llama-cpp-python (`Jinja2ChatFormatter`);
- a schema without `type` gets `"type": "object"` (the harness's `adapt_schema`);
- `guidance.json(schema, temperature=0, whitespace_flexible=False)`, its `max_tokens` the
  request's, at most what the context has left;
- a schema Guidance cannot compile is refused (a 400), as the harness counts it.
Requests are served one at a time; each is answered as one stream chunk (the answer, whole),
then its finish reason ("length" where the text is not whole JSON: the budget cut it) and its
usage. A request past `--timeout` seconds ends with an error chunk (the harness's generation
timeout), and the process with it (the benchmark starts another). The model is loaded with the
llama.cpp parameters localrun uses on this machine (localrun.engine.library.machine: no AMX
repacking, whose kernels crash).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any


@dataclass
class Answer:
    """A guided answer, or why there is none: `refused` before generation (a 400), else it
    ended mid-answer (a timeout, a grammar error)."""

    text: str = ""
    tokens: int = 0
    finish: str = "stop"  # or "length": every token it was allowed
    error: str = ""
    refused: bool = True
    code: str | None = None  # the refusal's OpenAI error code


class Guided:
    """The model, loaded once, and a guided answer for a request's turns and schema."""

    def __init__(self, model: str, threads: int, ctx: int) -> None:
        from guidance.models import LlamaCpp
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        from localrun.engine.library.machine import machine_params

        self.llm = machine_params().llama(model, n_ctx=ctx, n_threads=threads, verbose=False)
        self.guided = LlamaCpp(self.llm, echo=False)
        meta = self.llm.metadata
        tokens = self.llm._model.token_get_text
        self.formatter = Jinja2ChatFormatter(
            template=meta["tokenizer.chat_template"],
            eos_token=tokens(self.llm.token_eos()),
            bos_token=tokens(self.llm.token_bos()),
        )
        self.ctx = ctx

    def count(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode(), add_bos=False, special=True))

    def answer(
        self, turns: list[dict[str, Any]], schema: Any, budget: int, timeout: float
    ) -> Answer:
        from guidance import json as guidance_json

        prompt = self.formatter(messages=turns).prompt
        used = self.count(prompt)
        if used >= self.ctx:
            return Answer(
                error=f"the prompt's {used} tokens are past the context of {self.ctx}",
                code="context_length_exceeded",
            )
        if isinstance(schema, dict) and "type" not in schema:
            schema = {**schema, "type": "object"}
        budget = min(budget, self.ctx - used)
        try:
            op = guidance_json(
                schema=schema, name="out", temperature=0.0, max_tokens=budget,
                whitespace_flexible=False,
            )  # fmt: skip
        except Exception as exc:  # the harness: any compile failure is an unsupported schema
            return Answer(error=f"{type(exc).__name__}: {exc}"[:300])
        deadline = time.monotonic() + timeout
        state = None
        try:
            for step in self.guided.stream() + prompt + op:
                state = step
                if time.monotonic() > deadline:
                    return Answer(error=f"past {timeout:.0f} s", refused=False)
        except Exception as exc:  # a grammar error mid-answer: as the harness, no answer
            return Answer(error=f"{type(exc).__name__}: {exc}"[:300], refused=False)
        try:
            text = str(state["out"]) if state is not None else ""
        except KeyError:
            text = ""
        # Guidance says nothing of why its stream ended: an answer its grammar ended is whole
        # JSON, one the budget cut is not (Guidance's token count is not the streamed
        # state's, and the text tokenized again may take fewer tokens than were generated).
        try:
            json.loads(text)
            finish = "stop"
        except ValueError:
            finish = "length"
        return Answer(text, self.count(text), finish)


def handler(guided: Guided, timeout: float) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._send(200, {"status": "ok"} if self.path == "/health" else {})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            schema = ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
            if schema is None:
                self._send(400, {"error": {"message": "only json_schema requests are served"}})
                return
            got = guided.answer(
                body["messages"], schema, int(body.get("max_tokens") or 2048), timeout
            )
            if got.error and got.refused:
                self._send(400, {"error": {"message": got.error, "code": got.code}})
                return
            chunks: list[dict[str, Any]] = [{"error": {"message": got.error}}]  # ended mid-answer
            if not got.error:
                chunks = [
                    {"choices": [{"delta": {"content": got.text}, "finish_reason": None}]},
                    {"choices": [{"delta": {}, "finish_reason": got.finish}]},
                    {"choices": [], "usage": {"completion_tokens": got.tokens}},
                ]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for chunk in chunks:
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.write(b"data: [DONE]\n\n")
            if got.error:
                # Guidance's stream left unfinished goes on decoding on the model's context in
                # a thread of its own, and the next request on that context ended the process
                # every time: end it now, answered; the benchmark starts it afresh.
                self.wfile.flush()
                os._exit(3)

        def _send(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--timeout", type=float, default=40.0, help="seconds a generation")
    args = parser.parse_args()
    guided = Guided(args.model, args.threads, args.ctx)
    # One request at a time, as the bench asks them: the model is one llama context.
    HTTPServer(("127.0.0.1", args.port), handler(guided, args.timeout)).serve_forever()


if __name__ == "__main__":
    main()
