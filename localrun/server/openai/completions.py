"""OpenAI's legacy completions, POST /v1/completions: a raw prompt continued, no chat template.

OpenAI and llama-server apply none either. `suffix` fills in the middle with the model's FIM
tokens.

`prompt` is a string, a list of strings, a list of token ids, or a list of such lists. OpenAI
takes all four; evaluation harnesses send token ids, which are read as they are, no BOS added.
Each prompt gets `n` choices, in order: prompt i's are indexes i*n to i*n + n - 1. `echo`
returns each prompt before its answer, and with `max_tokens: 0` the prompt alone. With `echo`
and `logprobs: N`, the prompt's tokens come first, then the answer's. Each prompt token has its
log-probability given those before it (null for the first) and its N likeliest alternatives
(engine.scoring). `text_offset` counts from the start of the text returned. A BOS the tokenizer
put before a text prompt is not echoed, since it is not in the text; a token prompt is echoed
whole. vLLM's `prompt_logprobs: N` puts the prompt's entries in its own shape on each choice.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import BadRequestError
from localrun.request.genrequest import GenRequest
from localrun.server import core
from localrun.server.body import Body, at_most, read_json
from localrun.server.generation import Generation, choices_of, start_all
from localrun.server.logprobs import (
    Budget,
    legacy_lists,
    legacy_logprobs,
    prompt_logprobs_of,
    top_logprobs,
    vllm_entries,
)
from localrun.server.openai.routes import (
    collect,
    finish_reason,
    format_of,
    head_of,
    lenient_of,
    options_of,
    stream_of,
    usage_of,
)
from localrun.server.streaming import Lazy, made_as_sent
from localrun.settings import limits
from localrun.worker.protocol import Chunk

Prompt = str | list[int]  # text, or token ids


def prompts_of(value: Any) -> list[Prompt]:
    """The request's prompts: a string, strings, token ids, or lists of token ids."""

    def ids(item: Any) -> bool:
        return isinstance(item, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in item
        )

    if isinstance(value, str):
        out: list[Prompt] = [value]
    elif isinstance(value, list) and value and all(isinstance(p, str) for p in value):
        out = list(value)
    elif isinstance(value, list) and value and ids(value):
        out = [value]
    elif isinstance(value, list) and value and all(ids(p) for p in value):
        out = list(value)
    else:
        raise BadRequestError(
            "prompt must be a string, a list of strings, a list of token ids or a list of "
            "such lists",
            hint='send {"prompt": "Once upon a time"} or {"prompt": [[9707, 11]]}',
        )
    at_most(len(out), limits.max_prompts(), "prompt", "prompts", "LOCALRUN_MAX_PROMPTS")
    return out


def _logprobs(body: Body) -> int | None:
    """The legacy completions' `logprobs: N` (0 to 5 alternatives)."""
    value = body.data.get("logprobs")
    return None if value is None else top_logprobs(value, "logprobs", 5)


def _request(body: Body, model: str, echo: bool) -> GenRequest:
    """The request every prompt shares (its prompt filled in per prompt)."""
    suffix = body.get("suffix", str) or None  # fill in the middle (editors' autocomplete)
    if echo and suffix is not None:
        raise BadRequestError("echo and suffix cannot be used together")
    logprobs = _logprobs(body)
    scored = prompt_logprobs_of(body)
    return GenRequest(
        model,
        suffix=suffix,
        options=options_of(body, echo=echo),
        format=format_of(body),
        format_lenient=lenient_of(body),
        logprobs=logprobs,
        logprobs_end=logprobs is not None,  # the end-of-generation token's entry, as OpenAI's
        # vLLM's rule: echo with logprobs scores the prompt with as many alternatives.
        prompt_logprobs=scored if scored is not None or not echo else logprobs,
        logit_bias=body.logit_bias(),
    )


def _for_prompt(req: GenRequest, prompt: Prompt) -> GenRequest:
    if isinstance(prompt, str):
        if not prompt and req.suffix is None:
            # llama-server would decode the BOS token alone; a model without one has nothing
            # to start from, so the same request would work on one model and fail on another.
            raise BadRequestError("prompt is empty", hint="send some text to continue")
        return dataclasses.replace(req, prompt=prompt)
    if not prompt:
        raise BadRequestError("a prompt of token ids is empty", hint="send at least one id")
    if req.suffix is not None:
        raise BadRequestError("suffix needs a text prompt, not token ids")
    return dataclasses.replace(req, prompt="", tokens=prompt)


async def _check_scoring(
    request: Request, model: str, prompts: list[Prompt], alternatives: int
) -> None:
    """Refuse prompts that together would be scored past LOCALRUN_MAX_PROMPT_LOGPROBS.

    It refuses before any is scored. Each one alone is bounded by its runner; the request's sum is
    bounded here.
    """
    scheduler = core.context(request).scheduler
    budget = Budget()
    tokens = 0

    async def count(text: str) -> int:
        return len(await scheduler.tokenize(model, text=text))

    for prompt in prompts:
        if isinstance(prompt, str):
            tokens += await core.until_disconnect(request, functools.partial(count, prompt))
        else:
            tokens += len(prompt)
        budget.check(tokens, alternatives)


async def _texts(request: Request, model: str, prompts: list[Prompt]) -> list[str]:
    """Each prompt's text: its own, or its token ids' from the model's vocabulary.

    An id outside the vocabulary is a 400.
    """
    scheduler = core.context(request).scheduler

    async def text(prompt: Prompt) -> str:
        if isinstance(prompt, str):
            return prompt
        return await core.until_disconnect(request, lambda: scheduler.detokenize(model, prompt))

    return [await text(prompt) for prompt in prompts]


async def completions(request: Request) -> Response:
    body = Body(await read_json(request))
    model = body.model()
    prompts = prompts_of(body.data.get("prompt"))
    echo = body.flag("echo", False)
    req = _request(body, model, echo)
    n = body.get("n", int, 1)
    requests = [c for p in prompts for c in choices_of(_for_prompt(req, p), n)]
    if req.prompt_logprobs is not None and len(prompts) > 1:
        await _check_scoring(request, model, prompts, req.prompt_logprobs)
    texts = await _texts(request, model, prompts)
    generations = await start_all(request, requests)
    base = head_of("cmpl", model)
    shown = _Shown(req, texts, n, echo, body.data.get("prompt_logprobs") is not None, generations)

    def choice(index: int, piece: Chunk, reason: str | None, first: bool) -> dict[str, Any]:
        return shown.choice(index, piece, reason, first)

    if not body.flag("stream", False):
        await collect(request, generations)
        whole = [
            choice(i, Chunk(text=g.text, logprobs=g.logprobs), finish_reason(g), True)
            for i, g in enumerate(generations)
        ]
        usage = usage_of(generations, generations[::n])
        answer = {**base, "object": "text_completion", "choices": whole, "usage": usage}
        if req.prompt_logprobs is not None:  # its entries made as they are sent, off the loop
            return made_as_sent(answer)
        return JSONResponse(answer)
    return stream_of(
        body,
        generations,
        base,
        "text_completion",
        lambda index, piece, first: choice(index, piece, None, first),
        lambda index, _: [choice(index, Chunk(), finish_reason(generations[index]), False)],
        held=shown.held if req.prompt_logprobs is not None and n > 1 else None,
        off_loop_first=req.prompt_logprobs is not None,
    )


class _Shown:
    """How each choice is written: its echoed prompt, its text and log-probabilities.

    The first piece carries the echoed prompt, with the entries its prompt's first choice scored:
    each prompt is scored once. Each token's text offset counts on from the last piece's.
    """

    def __init__(
        self,
        req: GenRequest,
        texts: list[str],
        n: int,
        echo: bool,
        vllm: bool,
        generations: list[Generation],
    ) -> None:
        self.req, self.texts, self.n, self.echo, self.vllm = req, texts, n, echo, vllm
        self.generations = generations
        # Where each choice's next token starts in the text returned.
        self.offsets = [0 if echo else len(t) for t in texts for _ in range(n)]

    def scorer(self, index: int) -> Generation:
        """The generation that scored choice `index`'s prompt (its prompt's first choice)."""
        return self.generations[index - index % self.n]

    def held(self, index: int) -> bool:
        """Whether choice `index`'s pieces wait (streamed): its prompt's entries are not all in."""
        return not self.scorer(index).scored_all

    def choice(self, index: int, piece: Chunk, reason: str | None, first: bool) -> dict[str, Any]:
        text, entries = piece.text, piece.logprobs or []
        scored = self.scorer(index).scored
        echoed = self.echo and first
        out: dict[str, Any] = {"index": index, "text": text, "logprobs": None}
        if echoed:
            out["text"] = self.texts[index // self.n] + text
        if self.req.logprobs is not None:
            start = self.offsets[index]
            head = legacy_lists(scored.shown, start) if echoed else None
            if echoed:
                start += len(self.texts[index // self.n])
            tail = legacy_logprobs(entries, start)
            self.offsets[index] = start + sum(len(e["token"]) for e in entries)
            out["logprobs"] = tail if head is None else {k: _joined(head[k], tail[k]) for k in head}
        out["finish_reason"] = reason
        if self.vllm and first:
            out["prompt_logprobs"] = Lazy(lambda: vllm_entries(scored))
        return out


def _joined(head: Callable[[], Iterator[Any]], tail: list[Any]) -> Any:
    """The echoed prompt's list (made as it is written) followed by the answer's."""
    return Lazy(lambda: itertools.chain(head(), tail))
