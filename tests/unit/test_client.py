"""localrun.cli.client without a server: a wire error whose code it does not know keeps its message,
`ps`'s columns, and nothing listening is one line with a hint."""

from __future__ import annotations

import time

import pytest

from localrun.cli.client import Client
from localrun.cli.commands import server as server_cmds
from localrun.errors import (
    BadRequestError,
    LocalrunError,
    ServerUnreachableError,
)

from support import free_port
from support.cli import CLI, assert_one_line_error


def test_nothing_listening_is_one_line_with_a_hint(cli: CLI) -> None:
    host = f"127.0.0.1:{free_port()}"
    result = cli("ps", env={"LOCALRUN_HOST": host})
    assert_one_line_error(result, f"no localrun server answers at {host}", "localrun serve")
    assert_one_line_error(cli("stop", "smollm2:135m", env={"LOCALRUN_HOST": host}), host)
    with pytest.raises(ServerUnreachableError):
        Client(("127.0.0.1", free_port())).ps()
    assert not Client(("127.0.0.1", free_port())).is_up()


def test_until_and_processor_columns() -> None:
    now = 1_000_000.0
    assert server_cmds.until(now + 4 * 60 + 30, now) == "4 minutes from now"
    assert server_cmds.until(now + 59, now) == "59 seconds from now"
    assert server_cmds.until(now + 3600, now) == "About an hour from now"
    assert server_cmds.until(now - 1, now) == "Stopping..."
    assert server_cmds.until(float("inf"), now) == "Forever"
    assert server_cmds.until("2318-01-01T00:00:00Z", time.time()) == "Forever"
    assert server_cmds.until("1970-01-12T14:46:40.5+00:00", now) == "About an hour from now"
    assert server_cmds.processor({"size": 10, "size_vram": 10}) == "100% GPU"
    assert server_cmds.processor({"size": 100, "size_vram": 48}) == "52%/48% CPU/GPU"
    assert server_cmds.processor({"size": 100, "size_vram": 0, "processor": "100% CPU"}) == (
        "100% CPU"
    )


def test_unknown_code_keeps_the_message() -> None:
    from localrun.cli.client import error_from_wire

    err = error_from_wire(500, b'{"error": "boom", "code": "from_the_future"}')
    assert type(err) is LocalrunError and err.message == "boom"
    err = error_from_wire(400, b'{"error": "odd", "code": "from_the_future"}')
    assert isinstance(err, BadRequestError) and err.message == "odd"
