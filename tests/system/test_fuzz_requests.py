"""Hostile requests on every route of every dialect (scripts/fuzzlib/, via hypothesis).

The runners use the scripted engine, so the bulk runs fast; the grammar and template paths of the
real engine have their own tests (tests/integration/server/test_request_bounds.py). Every answer is
a 2xx or a 4xx in its dialect's shape, never a 5xx; the server and its runners are up afterwards,
and their memory stays bounded.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from fuzzlib import checks, hostile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localrun.scheduler import Scheduler
from localrun.store.local import Store

from support import PATIENCE_S
from support.server import LiveServer, add_model

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[LiveServer]:
    store = Store(tmp_path_factory.mktemp("fuzz-requests") / "models")
    add_model(store, "tiny", tiny_model)
    scheduler = Scheduler(
        store,
        num_parallel=2,
        max_queue=16,
        max_loaded=2,
        backend="fake",
        backend_options={"replies": ["a scripted answer"], "delay": 0.0},
    )
    server = LiveServer(store, scheduler)
    yield server
    server.close()


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url) as http:
        yield http


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_no_request_is_a_5xx(live: LiveServer, client: httpx.Client, seed: int) -> None:
    request = hostile.make_request(random.Random(seed), "tiny")
    status, text = checks.send(client, request, timeout=PATIENCE_S)
    assert status >= 0, (request.describe(), text)
    found = checks.problem(request, status, text)
    assert found is None, (request.describe(), found)


def test_the_server_and_its_runners_are_up_and_bounded(live: LiveServer) -> None:
    # Runs after the fuzzing above (same module): the server answers, and the runner tree
    # stayed small.
    assert httpx.get(live.url + "/api/tags").status_code == 200
    answer = httpx.post(
        live.url + "/api/chat",
        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False},
        timeout=PATIENCE_S,
    )
    assert answer.status_code == 200, answer.text
    me = psutil.Process()
    runners = me.children(recursive=True)
    assert sum(p.memory_info().rss for p in runners) < 1 << 30
