"""Generations: a request started on the scheduler, and its answer as it comes.

The /api and /v1 handlers translate their request into a `localrun.request.genrequest.GenRequest`
and call `start()`, or `start_choices()` for several answers. They format what the `Generation`
yields; none talks to the scheduler in its own way.

A generation is started before any response byte is sent, and its first piece is awaited too.
So an unknown model, a full queue or a prompt that does not fit still gets its own HTTP status.
While a handler waits for it the client is watched (`core.until_disconnect`): when it
disconnects the generation is cancelled and its slot freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request

from localrun.errors import AnswerSchemaError, BadRequestError, LocalrunError
from localrun.request.genrequest import GenRequest
from localrun.server import core
from localrun.server.logprobs import Budget, Scored
from localrun.server.schema import answer as answer_schema
from localrun.server.turns import NOBODY, Whose
from localrun.settings import limits
from localrun.worker.protocol import Chunk

if TYPE_CHECKING:
    from localrun.scheduler import Stream
    from localrun.server.metrics import Metrics


class Generation:
    """A started answer; iterate `chunks()` (or `pieces()`, its text alone) once.

    `text` and `thinking` accumulate what was streamed; timings are final after the last chunk.
    """

    def __init__(
        self,
        stream: Stream,
        started: float,
        metrics: Metrics | None = None,
        *,
        parallel_tool_calls: bool = True,
        check: answer_schema.AfterCheck | None = None,
        again: Callable[[int], Awaitable[Stream]] | None = None,
    ) -> None:
        self.stream = stream
        self.check = check  # the schemas the finished answer is validated against
        self.parallel_tool_calls = parallel_tool_calls  # False: the first tool call alone
        self.started = started
        self.text = ""
        self.thinking = ""
        self.logprobs: list[dict[str, Any]] = []  # every token's entry, when asked for
        self.scored = Scored()  # the prompt's entries, when asked for
        self.scored_all = False  # every entry of the prompt is in (its answer has begun)
        self.budget: Budget | None = None  # the request's, shared by its generations
        # The tool calls streamed so far, each with its id and place ({"id", "index", "name",
        # "arguments"}); calls that only the final event told (an upstream's) join at the end.
        self.calls: list[dict[str, Any]] = []
        self.finished = False
        # Sent whole (collect(), or a handler that reads the answer once it is complete):
        # nothing of it reached the client yet, so an answer its check refuses may be drawn
        # again (`again(draw)` starts draw number `draw`, from 1) while the request samples.
        self.whole = False
        self.draws = 1  # the answers drawn
        self._again = again
        self._first: Chunk | None = None
        self._metrics = metrics
        self._counted = False

    def _ended(self) -> None:
        """Count the answer's tokens, once a draw, however it ended."""
        self.finished = self.scored_all = True
        if self._metrics is not None and not self._counted:
            self._counted = True
            self._metrics.generated(self.stream.model, self.stream.timings)

    async def _next(self) -> Chunk | None:
        try:
            return await self.stream.__anext__()
        except StopAsyncIteration:
            self._ended()
            if self.check is not None and self.done_reason == "stop":
                await self._check(self.check)  # AnswerSchemaError ends it
            return None
        except LocalrunError:
            self._ended()  # the request's own error ends it
            raise

    async def _check(self, check: answer_schema.AfterCheck) -> None:
        """The finished answer validated (in a child: server.schema.checker), its time counted."""
        began = time.perf_counter()
        try:
            await check.check(self.text, self.tool_calls)
        except AnswerSchemaError:
            self._checked(began, valid=False)
            raise
        self._checked(began, valid=True)

    def _checked(self, began: float, *, valid: bool) -> None:
        if self._metrics is not None:
            self._metrics.checked(self.stream.model, time.perf_counter() - began, valid=valid)

    async def _following(self) -> Chunk | None:
        """The next chunk, or past a refused answer the first chunk of a new draw.

        Past the end of an answer its check refused, a new draw starts where one may be drawn
        (`_may_redraw`); else the refusal is raised.
        """
        while True:
            try:
                return await self._next()
            except AnswerSchemaError:
                if not self._may_redraw():
                    raise
            self.draws += 1
            assert self._again is not None
            self.stream = await self._again(self.draws)
            self.text = self.thinking = ""
            self.logprobs, self.calls = [], []
            self.finished = self._counted = False
            if self._metrics is not None:
                self._metrics.redrawn(self.stream.model)

    def _may_redraw(self) -> bool:
        """Whether an answer its check refused is drawn again.

        It is when the answer was sent whole, so none of it went out, and drawn at random, since a
        greedy answer would only repeat itself. It must also have been drawn fewer than
        LOCALRUN_MAX_DRAWS times so far, within LOCALRUN_DRAW_TIME of the request's start.
        """
        return (
            self.whole
            and self._again is not None
            and self.stream.sampled
            and self.draws < limits.max_draws()
            and time.perf_counter() - self.started < limits.draw_time()
        )

    async def prefetch(self) -> None:
        self._first = await self._next()

    async def chunks(self) -> AsyncGenerator[Chunk, None]:
        """The answer's chunks, empty ones skipped.

        A chunk holds text, reasoning, log-probabilities, and tool calls as each is read, with their
        ids and places.
        """
        try:
            chunk, self._first = self._first, None
            while chunk is not None:
                self.text += chunk.text
                self.thinking += chunk.thinking
                if chunk.logprobs:
                    self.logprobs += chunk.logprobs
                if chunk.scored:
                    spent = self.scored.extend(chunk.scored)
                    if self.budget is not None:
                        self.budget.spend(spent)  # BadRequestError past the request's bound
                elif chunk.text or chunk.thinking or chunk.logprobs or chunk.calls:
                    self.scored_all = True
                if chunk.calls:
                    chunk.calls = self._take_calls(chunk.calls)
                if chunk:
                    yield chunk
                chunk = None if self.finished else await self._following()
        finally:
            if not self.finished:
                await self.close()

    async def pieces(self) -> AsyncGenerator[str, None]:
        """The answer's text alone, for dialects that show nothing else."""
        async with contextlib.aclosing(self.chunks()) as chunks:
            async for chunk in chunks:
                if chunk.text:
                    yield chunk.text

    async def collect(self) -> str:
        """The whole answer, once it is complete.

        An answer its check refused is drawn again where it may be (`_may_redraw`).
        """
        self.whole = True
        async with contextlib.aclosing(self.chunks()) as chunks:
            async for _ in chunks:
                pass
        return self.text

    async def close(self) -> None:
        """Cancel an unfinished generation; shielded, so it also runs while being cancelled."""
        self.finished = True
        with anyio.CancelScope(shield=True):
            await self.stream.aclose()
        self._ended()

    @property
    def done_reason(self) -> str:
        return self.stream.done_reason or "stop"

    def _take_calls(self, calls: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        """Streamed calls given their ids and places.

        When the client takes one call per turn (parallel_tool_calls false), calls past the first
        are dropped.
        """
        taken = []
        for call in calls:
            if self.calls and not self.parallel_tool_calls:
                break
            entry = {
                "id": f"call_{secrets.token_hex(12)}",
                "index": len(self.calls),
                "name": str(call.get("name", "")),
                "arguments": call.get("arguments") or {},
            }
            self.calls.append(entry)
            taken.append(entry)
        return taken or None

    @property
    def tool_calls(self) -> list[dict[str, Any]] | None:
        """Every call of the answer (once it is complete), each with its id and place."""
        told = self.stream.tool_calls or []
        if len(told) > len(self.calls):
            self._take_calls(told[len(self.calls) :])
        return list(self.calls) or None

    def late_calls(self, streamed: int) -> list[dict[str, Any]]:
        """The calls after the first `streamed` (those the chunks did not carry)."""
        return (self.tool_calls or [])[streamed:]

    @property
    def stop_sequence(self) -> str | None:
        """The stop string that ended the answer, if one did."""
        return self.stream.stop_sequence

    @property
    def context(self) -> list[int] | None:
        return self.stream.context

    @property
    def prompt_count(self) -> int:
        """The prompt's tokens: counted at the end, told by the first piece before it."""
        t = self.stream.timings
        return t.prompt_tokens + t.cached_tokens or self.stream.prompt_count or 0


async def start(request: Request, req: GenRequest) -> Generation:
    """Start `req` on the scheduler and wait for its first piece (or its error)."""
    budget = Budget() if req.prompt_logprobs is not None else None
    return await core.until_disconnect(
        request, lambda: _begin(core.context(request), req, core.whose(request), budget)
    )


async def start_detached(ctx: core.Context, req: GenRequest, whose: Whose = NOBODY) -> Generation:
    """Start `req` for no waiting client, waiting in the scheduler's queue as any request does.

    It serves a background response of the client `whose`: the caller owns the generation, and
    closes it when it is cancelled.
    """
    return await _begin(ctx, req, whose)


async def count_prompt(request: Request, req: GenRequest) -> int:
    """The tokens of the prompt `req` renders to, as a runner of the model reads it.

    The prompt is the model's template with its tools, SYSTEM and MESSAGEs. Every dialect's token
    count says this figure.
    """
    scheduler = core.context(request).scheduler
    tokens = await core.until_disconnect(
        request, lambda: scheduler.tokenize(req.model, request=req)
    )
    return len(tokens)


async def _begin(
    ctx: core.Context, req: GenRequest, whose: Whose = NOBODY, budget: Budget | None = None
) -> Generation:
    started = time.perf_counter()
    req.memory = ctx.memory  # the server's, whatever the client sent
    check = await answer_schema.after_check(req, ctx.checker, whose)  # a 400 before any token
    stream = await ctx.scheduler.generate(req)

    async def again(draw: int) -> Stream:
        return await ctx.scheduler.generate(redrawn(req, draw))

    generation = Generation(
        stream,
        started,
        ctx.metrics,
        parallel_tool_calls=req.parallel_tool_calls,
        check=check,
        again=again if check is not None else None,
    )
    generation.budget = budget
    try:
        await generation.prefetch()
    except BaseException:
        if not generation.finished:
            await generation.close()
        raise
    return generation


_STRIDE = 0x9E3779B1  # 2**32 / the golden ratio: draws' seeds spread over the 32 bits


def redrawn(req: GenRequest, draw: int) -> GenRequest:
    """The request of an answer's draw number `draw`, from 2, with a seed of its own.

    With the request's seed, the draw's seed derives from it, so the draws are the same each time.
    The stride keeps it far from n's seed + i, so a choice's redraw is not its neighbour's answer.
    Without a seed, it gets a new random one: the model's own parameters' seed would repeat the
    answer.
    """
    seed = req.options.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and seed != -1:
        again = (seed + _STRIDE * (draw - 1)) % 2**32
    else:
        again = secrets.randbelow(2**31)
    # The prompt's log-probabilities came with the first draw: not read (and sent) again.
    return dataclasses.replace(req, options={**req.options, "seed": again}, prompt_logprobs=None)


def choices_of(req: GenRequest, n: int) -> list[GenRequest]:
    """`n` answers to one request (OpenAI's `n`).

    With a seed, choice i uses seed + i: the choices differ as they would with random seeds, and
    repeat with the same seed.
    """
    most = limits.max_choices()
    if not 1 <= n <= most:
        raise BadRequestError(
            f"n must be from 1 to {most}, not {n}", hint="raise LOCALRUN_MAX_CHOICES for more"
        )
    seed = req.options.get("seed")
    return [
        dataclasses.replace(
            req,
            options={**req.options, "seed": seed + i}
            if isinstance(seed, int) and seed != -1
            else req.options,
            # The prompt is scored once, by the first choice; the others show its entries.
            prompt_logprobs=req.prompt_logprobs if i == 0 else None,
        )
        for i in range(n)
    ]


async def start_choices(request: Request, req: GenRequest, n: int) -> list[Generation]:
    """Start `n` answers to one request (choices_of) together.

    Together, the runner reads the prompt once and copies its KV to the other slots.
    """
    requests = choices_of(req, n)
    if n == 1:
        return [await start(request, req)]
    return await start_all(request, requests)


async def start_all(request: Request, requests: list[GenRequest]) -> list[Generation]:
    """Start several requests at once, each answered on a slot of its own or waiting for one.

    The first to fail closes the others, and its error is raised.
    """
    ctx, whose = core.context(request), core.whose(request)
    scored = any(r.prompt_logprobs is not None for r in requests)
    budget = Budget() if scored else None  # the prompts' scoring, all of them together

    async def begin_all() -> list[Generation]:
        started = await asyncio.gather(
            *(_begin(ctx, r, whose, budget) for r in requests), return_exceptions=True
        )
        failed = [r for r in started if isinstance(r, BaseException)]
        if failed:
            for item in started:
                if isinstance(item, Generation):
                    await item.close()
            raise failed[0]
        return [r for r in started if isinstance(r, Generation)]

    return await core.until_disconnect(request, begin_all)


async def merged(generations: list[Generation]) -> AsyncGenerator[tuple[int, Chunk], None]:
    """The chunks of several answers as they come, each with its answer's index.

    It ends when all have ended. The first error ends it, and closing it early closes every answer.
    """
    queue: asyncio.Queue[tuple[int, Chunk | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, generation: Generation) -> None:
        try:
            async with contextlib.aclosing(generation.chunks()) as chunks:
                async for chunk in chunks:
                    await queue.put((index, chunk))
            await queue.put((index, None))
        except Exception as exc:  # handed to the reader, which raises it
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(generations)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        with anyio.CancelScope(shield=True):  # runs while the request is being cancelled too
            await asyncio.gather(*tasks, return_exceptions=True)
            for generation in generations:
                if not generation.finished:
                    await generation.close()


@dataclasses.dataclass(frozen=True)
class Run:
    """A piece of an answer as a stream shows it.

    `kind` is "thinking" or "text" (with `text`), "calls" (tool calls read as they came) or "late"
    (those only the finished answer showed). A text run carries the log-probability entries of its
    tokens, when they were asked for. One whose text a stop string held back comes with none.
    """

    kind: str
    text: str = ""
    calls: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    logprobs: list[dict[str, Any]] = dataclasses.field(default_factory=list)


async def runs(generation: Generation) -> AsyncGenerator[Run, None]:
    """The answer in the order a stream of blocks or items shows it.

    Each chunk gives its thinking, its text, then its tool calls. Last, always, come the calls that
    only the finished answer showed.
    """
    streamed = 0
    async with contextlib.aclosing(generation.chunks()) as chunks:
        async for chunk in chunks:
            if chunk.thinking:
                yield Run("thinking", text=chunk.thinking)
            if chunk.text or (chunk.logprobs and not chunk.thinking and not chunk.calls):
                yield Run("text", text=chunk.text, logprobs=chunk.logprobs or [])
            if chunk.calls:
                streamed += len(chunk.calls)
                yield Run("calls", calls=list(chunk.calls))
    yield Run("late", calls=generation.late_calls(streamed))
