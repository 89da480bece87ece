"""A stored response's events made again from it (`replayed`) are those its live stream made,
each item's text in one delta, and making them leaves the stored response as it was."""

from __future__ import annotations

import copy
import json
from typing import Any

from localrun.server.responses.events import EventStream, replayed
from localrun.server.responses.store import new_id

CALL = {
    "type": "function_call",
    "id": "fc_1",
    "call_id": "call_1",
    "name": "weather",
    "arguments": '{"city":"Paris"}',
    "status": "completed",
}


def live_stream() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An answer streamed as a generation streams one: reasoning, text in pieces, a call."""
    obj: dict[str, Any] = {"id": new_id(), "status": "in_progress", "output": []}
    stream = EventStream(obj)
    events = stream.opening()
    events += stream.delta("reasoning", "Think")
    events += stream.delta("reasoning", "ing.")
    logprobs = [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": []}]
    events += stream.delta("text", "Hi", logprobs)
    events += stream.delta("text", " there", [])
    events += stream.end([CALL])
    obj["status"] = "completed"
    events.append(stream.event("response.completed", response=obj))
    return obj, [json.loads(data) for _, data in events]


def merged(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events with each item's deltas as one, numbered again."""
    out: list[dict[str, Any]] = []
    for event in events:
        last = out[-1] if out else {}
        if event["type"].endswith(".delta") and last.get("type") == event["type"]:
            last["delta"] += event["delta"]
            if "logprobs" in event:
                last["logprobs"] = last["logprobs"] + event["logprobs"]
            continue
        out.append(dict(event))
    for number, event in enumerate(out):
        event["sequence_number"] = number
    return out


def test_replayed_events_are_the_live_streams_in_one_delta_an_item() -> None:
    obj, live = live_stream()
    again = [json.loads(data) for _, data in replayed(obj)]
    assert [e["type"] for e in again] == [e["type"] for e in merged(live)]
    # The opening events carry the response as it began, the rest as the live stream had them.
    assert again[2:] == merged(live)[2:]


def test_replaying_leaves_the_stored_response_as_it_was() -> None:
    """An item without a status (none of localrun's, but a stored file's) is copied too."""
    obj, _ = live_stream()
    del obj["output"][0]["status"]
    kept = copy.deepcopy(obj)
    events = [json.loads(data) for _, data in replayed(obj)]
    assert obj == kept
    added = next(e for e in events if e["type"] == "response.output_item.added")
    assert added["item"]["content"] == [] and "status" not in added["item"]
    done = next(e for e in events if e["type"] == "response.output_item.done")
    assert done["item"] == kept["output"][0]
