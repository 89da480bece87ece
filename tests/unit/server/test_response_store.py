"""The on-disk store of Responses API answers: limits, expiry, hostile ids, atomic writes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from localrun.errors import NotFoundError
from localrun.server.responses.store import ResponseStore, new_id


def record(response_id: str) -> dict[str, object]:
    return {"response": {"id": response_id, "object": "response"}, "messages": []}


def test_save_load_delete(tmp_path: Path) -> None:
    store = ResponseStore(tmp_path / "responses")
    rid = new_id()
    store.save(record(rid))
    assert store.load(rid)["response"]["id"] == rid
    assert not [p for p in store.root.iterdir() if not p.name.endswith(".json")]
    store.delete(rid)
    with pytest.raises(NotFoundError):
        store.load(rid)
    with pytest.raises(NotFoundError):
        store.delete(rid)


@pytest.mark.parametrize("bad", ["", "resp_", "resp_XYZ", "../x", "resp_" + "a" * 47 + "/", 5])
def test_hostile_ids_are_not_found(tmp_path: Path, bad: object) -> None:
    store = ResponseStore(tmp_path)
    with pytest.raises(NotFoundError):
        store.load(bad)  # type: ignore[arg-type]


def test_count_limit_drops_the_oldest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_RESPONSES_MAX", "3")
    store = ResponseStore(tmp_path)
    ids = []
    for age in range(5):
        rid = new_id()
        store.save(record(rid))
        when = time.time() - 100 + age  # saved in order, oldest first
        os.utime(store.root / f"{rid}.json", (when, when))
        ids.append(rid)
    store.prune()
    kept = {p.stem for p in store.root.glob("*.json")}
    assert kept == set(ids[-3:])


def test_expired_answers_are_gone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_RESPONSES_MAX_AGE", "1h")
    store = ResponseStore(tmp_path)
    old, new = new_id(), new_id()
    store.save(record(old))
    stale = time.time() - 7200
    os.utime(store.root / f"{old}.json", (stale, stale))
    with pytest.raises(NotFoundError):
        store.load(old)
    assert not (store.root / f"{old}.json").exists()
    store.save(record(new))
    assert store.load(new)


def test_zero_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALRUN_RESPONSES_MAX", "0")
    store = ResponseStore(tmp_path / "r")
    rid = new_id()
    store.save(record(rid))
    with pytest.raises(NotFoundError):
        store.load(rid)


def test_bytes_are_bounded_per_record_and_per_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localrun.errors import BadRequestError

    monkeypatch.setenv("LOCALRUN_RESPONSES_MAX_RECORD_BYTES", "100000")
    monkeypatch.setenv("LOCALRUN_RESPONSES_MAX_BYTES", "250000")
    store = ResponseStore(tmp_path)
    big = {**record(new_id()), "messages": [{"role": "user", "content": "x" * 200_000}]}
    with pytest.raises(BadRequestError, match="more than 100000 bytes"):
        store.save(big)
    assert list(tmp_path.iterdir()) == []
    ids = []
    for _ in range(5):  # 80 KB each: three fit in 250 KB
        rid = new_id()
        store.save({**record(rid), "messages": [{"role": "user", "content": "y" * 80_000}]})
        ids.append(rid)
        time.sleep(0.01)  # distinct modification times: the oldest go first
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 250_000
    for rid in ids[:2]:
        with pytest.raises(NotFoundError):
            store.load(rid)
    assert [store.load(rid)["response"]["id"] for rid in ids[2:]] == ids[2:]
