"""The unit tier: tests of one wing each (tests/unit/<wing> as localrun/<wing>; top-level modules
and the package's layout here), fast enough to run a wing's in seconds: `pytest tests/unit/store`.

A unit test starts no server and loads no model; a test that does belongs in
tests/integration. Held here: a test under tests/unit marked `server`, `model`, `slow` or
`network` stops the collection, and one that listens on a socket (a server, a local hub) or has
llama.cpp load a model's weights fails, saying where it belongs. (A model loaded by another
process, the `localrun` CLI's, is not seen here: the markers and the tier's times keep those
out.)
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

UNIT = Path(__file__).resolve().parent
NOT_UNIT = ("server", "model", "slow", "network")
MOVE = "a unit test starts no server and loads no model: move it to tests/integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    wrong = [
        f"{item.nodeid} ({', '.join(marks)})"
        for item in items
        if item.path.is_relative_to(UNIT)
        and (marks := [name for name in NOT_UNIT if item.get_closest_marker(name)])
    ]
    if wrong:
        raise pytest.UsageError(f"{MOVE} (or drop the marker):\n  " + "\n  ".join(wrong))


def _refuse(what: str) -> Callable[..., NoReturn]:
    def refused(*args: Any, **kwargs: Any) -> NoReturn:
        pytest.fail(f"{what}: {MOVE}", pytrace=False)

    return refused


@pytest.fixture(autouse=True)
def _unit_tier(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "listen", _refuse("it listens on a socket"))
    # llama_cpp is in the process once a test module has imported the engine (at collection):
    # every model load, localrun's (engine.weights) and llama-cpp-python's own (Llama), passes
    # through llama_model_load_from_file. Loading a vocabulary alone is allowed.
    native = sys.modules.get("llama_cpp.llama_cpp")
    if native is not None:
        load = native.llama_model_load_from_file

        def vocabulary_only(path: bytes, params: Any) -> Any:
            if not params.vocab_only:
                _refuse("it loads a model")()
            return load(path, params)

        monkeypatch.setattr(native, "llama_model_load_from_file", vocabulary_only)
        monkeypatch.setattr(sys.modules["llama_cpp"], "llama_model_load_from_file", vocabulary_only)
    yield
