"""A stored background response whose server process is gone reads as failed, not queued
forever; one whose process lives, or that finished, reads as it was stored."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from localrun.server.responses_background import settled


def record(status: str, pid: int) -> dict[str, Any]:
    created = {"type": "response.created", "sequence_number": 0, "response": {}}
    response = {"id": "resp_1", "status": status, "background": True, "error": None}
    return {"response": response, "owner": {"pid": pid}, "events": [created]}


def gone_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


def test_a_run_whose_server_is_gone_is_failed() -> None:
    found = settled(record("in_progress", gone_pid()))
    assert found["response"]["status"] == "failed"
    assert "server stopped" in found["response"]["error"]["message"]
    last = found["events"][-1]
    assert last["type"] == "response.failed" and last["sequence_number"] == 1
    assert settled(record("queued", 0))["response"]["status"] == "failed"


def test_a_live_or_finished_run_reads_as_stored() -> None:
    live = record("in_progress", os.getpid())
    assert settled(live) == live
    done = record("completed", gone_pid())
    assert settled(done) == done
