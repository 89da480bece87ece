"""GET /metrics: the server's counters in Prometheus's text format, one registry per app.

The series are named localrun_*: requests by route, method and status; tokens per model (prompt,
cached, generated, drafted and kept, embedded); answer checks and redraws; the scheduler's queue,
slots and loaded models; and each upstream's requests, errors, latency and health. The comment
below lists them.

Requests are counted by one ASGI middleware, under the route template, never the raw path, so a
client cannot grow the label set. Tokens are counted where every generation and embedding ends
(core), and the scheduler's state is read at each scrape. Nothing is module-level: apps run side
by side in the tests, each with its own registry. The route is behind the API key like any other.
"""

# The series:
# localrun_requests_total{route, method, status}        every answered request
# localrun_prompt_tokens_total{model}                   prompt tokens read (evaluated + cached)
# localrun_prompt_cached_tokens_total{model}            prompt tokens the KV cache already held
# localrun_generated_tokens_total{model}                tokens generated
# localrun_draft_tokens_total{model}                    tokens speculative decoding drafted
# localrun_draft_accepted_tokens_total{model}           of those, the tokens the model kept
# localrun_embedded_tokens_total{model}                 tokens read for embeddings
# localrun_answer_checks_total{model, result}           answers validated after (valid, refused)
# localrun_answer_check_seconds_total{model}            time those checks took
# localrun_answer_redraws_total{model}                  sampled answers drawn again, refused
# localrun_queue_length                                 requests waiting for a slot
# localrun_slots_in_use{model} / localrun_slots{model}  busy and total slots of a loaded model
# localrun_models_loaded                                loaded models
# localrun_model_load_seconds{model}                    how long a loaded model took to load
# localrun_upstream_requests_total{upstream}            requests sent to an upstream server
# localrun_upstream_errors_total{upstream}              of those and of its health checks, failed
# localrun_upstream_in_flight{upstream}                 requests it is answering now
# localrun_upstream_first_piece_seconds_total{upstream} summed time to the first piece
# localrun_upstream_ejections_total{upstream}           times it was taken out of routing
# localrun_upstream_healthy{upstream}                   1 while it is routed to, else 0

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localrun.engine.types import Timings

if TYPE_CHECKING:
    from localrun.scheduler import Scheduler


class Metrics:
    """The counters of one app and the scheduler it reads at each scrape."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.scheduler = scheduler
        r = self.registry
        self.requests = Counter(
            "localrun_requests", "Requests answered", ["route", "method", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "localrun_prompt_tokens", "Prompt tokens read", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "localrun_prompt_cached_tokens",
            "Prompt tokens the KV cache held already (prompt-cache hits)",
            ["model"],
            registry=r,
        )
        self.generated_tokens = Counter(
            "localrun_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.draft_tokens = Counter(
            "localrun_draft_tokens",
            "Tokens drafted by speculative decoding",
            ["model"],
            registry=r,
        )
        self.draft_accepted = Counter(
            "localrun_draft_accepted_tokens",
            "Drafted tokens the model kept (a decode saved each)",
            ["model"],
            registry=r,
        )
        self.embedded_tokens = Counter(
            "localrun_embedded_tokens", "Tokens read for embeddings", ["model"], registry=r
        )
        self.checks = Counter(
            "localrun_answer_checks",
            "Answers validated after against the part of their schema not enforced "
            "(uniqueItems, not ...), by result: valid or refused",
            ["model", "result"],
            registry=r,
        )
        self.check_seconds = Counter(
            "localrun_answer_check_seconds",
            "Seconds spent validating answers after",
            ["model"],
            registry=r,
        )
        self.redraws = Counter(
            "localrun_answer_redraws",
            "Sampled answers drawn again because their check refused them",
            ["model"],
            registry=r,
        )
        r.register(_SchedulerCollector(scheduler))

    def generated(self, model: str, timings: Timings) -> None:
        """A generation ended (finished, stopped or cancelled): count its tokens."""
        self.prompt_tokens.labels(model).inc(timings.prompt_tokens + timings.cached_tokens)
        self.cached_tokens.labels(model).inc(timings.cached_tokens)
        self.generated_tokens.labels(model).inc(timings.eval_tokens)
        self.draft_tokens.labels(model).inc(timings.draft_tokens)
        self.draft_accepted.labels(model).inc(timings.draft_accepted)

    def checked(self, model: str, seconds: float, *, valid: bool) -> None:
        """An answer was validated after (server.schema.answer)."""
        self.checks.labels(model, "valid" if valid else "refused").inc()
        self.check_seconds.labels(model).inc(seconds)

    def redrawn(self, model: str) -> None:
        self.redraws.labels(model).inc()

    def embedded(self, model: str, tokens: int) -> None:
        self.embedded_tokens.labels(model).inc(tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _SchedulerCollector:
    """Gauges read from the scheduler when scraped."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def describe(self) -> list[Metric]:
        return []  # read at scrape time only

    def collect(self) -> Iterator[Metric]:
        running = self.scheduler.running()
        queue = GaugeMetricFamily("localrun_queue_length", "Requests waiting for a slot")
        queue.add_metric([], self.scheduler.waiting)
        loaded = GaugeMetricFamily("localrun_models_loaded", "Loaded models")
        loaded.add_metric([], len(running))
        busy = GaugeMetricFamily("localrun_slots_in_use", "Busy slots", labels=["model"])
        slots = GaugeMetricFamily("localrun_slots", "Slots of a loaded model", labels=["model"])
        load = GaugeMetricFamily(
            "localrun_model_load_seconds", "Seconds a loaded model took to load", labels=["model"]
        )
        for m in running:
            busy.add_metric([m.name], m.busy)
            slots.add_metric([m.name], m.slots)
            load.add_metric([m.name], m.load_s)
        yield from (queue, loaded, busy, slots, load)
        yield from self._upstreams()

    def _upstreams(self) -> Iterator[Metric]:
        states = self.scheduler.remote.states
        if not states:
            return
        label = ["upstream"]
        requests = CounterMetricFamily(
            "localrun_upstream_requests", "Requests sent to an upstream", labels=label
        )
        errors = CounterMetricFamily(
            "localrun_upstream_errors", "Failed requests and health checks", labels=label
        )
        first = CounterMetricFamily(
            "localrun_upstream_first_piece_seconds",
            "Summed seconds from sending a request upstream to its first piece",
            labels=label,
        )
        ejections = CounterMetricFamily(
            "localrun_upstream_ejections", "Times taken out of routing", labels=label
        )
        in_flight = GaugeMetricFamily(
            "localrun_upstream_in_flight", "Requests an upstream is answering", labels=label
        )
        healthy = GaugeMetricFamily(
            "localrun_upstream_healthy", "1 while an upstream is routed to", labels=label
        )
        for state in states:
            requests.add_metric([state.name], state.requests)
            errors.add_metric([state.name], state.errors)
            first.add_metric([state.name], state.latency_s)
            ejections.add_metric([state.name], state.ejections)
            in_flight.add_metric([state.name], state.in_flight)
            healthy.add_metric([state.name], 1 if state.healthy else 0)
        yield from (requests, errors, first, ejections, in_flight, healthy)


# The methods counted under their own name (the ones HTTP defines for resources).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class RequestCounter:
    """ASGI middleware: counts each HTTP request by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]  # an exception that escapes every handler

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            # Labels take known values only: a client's made-up methods (3,000 of them made
            # 3,000 series) count as "other".
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.requests.labels(path, method, str(status[0])).inc()


async def endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.metrics
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
