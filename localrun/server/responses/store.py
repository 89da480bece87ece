"""Stored answers of the Responses API (`store: true`), one JSON file each under LOCALRUN_HOME.

    ResponseStore(root).save(record, events?)  record = {"response", "messages", "input_items"};
                                               events: a background response's stream, as JSON
    ResponseStore(root).load(id)               the record; NotFoundError when unknown or expired
    ResponseStore(root).delete(id)

`messages` is the whole conversation up to and including the answer, in the core's chat shape.
It leaves out `instructions`, which OpenAI does not carry over. `previous_response_id` then
continues it without walking a chain. At most LOCALRUN_RESPONSES_MAX records are kept, in at
most LOCALRUN_RESPONSES_MAX_BYTES, none older than LOCALRUN_RESPONSES_MAX_AGE (`prune`). One
record takes at most LOCALRUN_RESPONSES_MAX_RECORD_BYTES: `check_size` refuses a larger one
before it is made. Ids are checked against their pattern before any path is built from them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any

from localrun.errors import BadRequestError, NotFoundError, StoreError
from localrun.host import private
from localrun.settings import limits

ID_PATTERN = re.compile(r"resp_[0-9a-f]{24,64}")
_SUFFIX = ".json"


def new_id() -> str:
    return f"resp_{secrets.token_hex(24)}"


def encode(record: dict[str, Any], events: list[bytes] | None = None) -> bytes:
    """A record's JSON; `events`, each already JSON, joined in as its "events" unparsed."""
    data = json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode()
    if events is None:
        return data
    return data[:-1] + b',"events":[' + b",".join(events) + b"]}"


def check_size(size: int) -> None:
    """Refuse a record of `size` bytes (or one that would grow past it) over the bound."""
    most = limits.responses_max_record_bytes()
    if size > most:
        raise BadRequestError(
            f"this response would be stored in more than {most} bytes",
            hint="send store: false (previous_response_id cannot continue it then), or raise "
            "LOCALRUN_RESPONSES_MAX_RECORD_BYTES",
        )


class ResponseStore:
    """The folder of stored responses; every method blocks on disk (call from a thread)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, response_id: str) -> Path:
        if not isinstance(response_id, str) or not ID_PATTERN.fullmatch(response_id):
            raise _not_found(response_id)
        return self.root / f"{response_id}{_SUFFIX}"

    @staticmethod
    def _limits() -> tuple[int, float]:
        return limits.responses_max(), limits.responses_max_age()

    def save(self, record: dict[str, Any], events: list[bytes] | None = None) -> None:
        """Write a record, keyed by record["response"]["id"], with `events` if given, then prune.

        It is written to a temporary file and renamed into place, so a crash leaves it whole or
        absent. A record holds a conversation: it is 0600 in a 0700 folder (localrun.host.private).
        """
        most, _ = self._limits()
        if most == 0:
            return  # storing is switched off
        path = self._path(record["response"]["id"])
        data = encode(record, events)
        check_size(len(data))
        tmp = self.root / f".tmp-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            private.private_dir(self.root)
            with open(private.create(tmp), "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StoreError(
                f"could not store the response: {exc.strerror or exc}",
                hint="free some disk space, or send store: false",
            ) from exc
        self.prune()

    def load(self, response_id: str) -> dict[str, Any]:
        path = self._path(response_id)
        _, max_age = self._limits()
        try:
            age = time.time() - path.stat().st_mtime
            if age > max_age:
                with contextlib.suppress(OSError):
                    path.unlink()
                raise _not_found(response_id)
            record = json.loads(path.read_bytes())
        except (OSError, ValueError):
            raise _not_found(response_id) from None
        if not isinstance(record, dict) or not isinstance(record.get("response"), dict):
            raise _not_found(response_id)
        return record

    def delete(self, response_id: str) -> None:
        path = self._path(response_id)
        try:
            path.unlink()
        except FileNotFoundError:
            raise _not_found(response_id) from None
        except OSError as exc:
            raise StoreError(f"could not delete the response: {exc.strerror or exc}") from exc

    def prune(self) -> int:
        """Remove expired records and the oldest past the count or the bytes; return how many went.

        It runs when a new record is saved; `load` also drops an expired one when asked for it.
        """
        most, max_age = self._limits()
        room = limits.responses_max_bytes()
        try:
            found = []
            for entry in os.scandir(self.root):
                if entry.name.endswith(_SUFFIX) and ID_PATTERN.fullmatch(entry.name[:-5]):
                    with contextlib.suppress(OSError):
                        st = entry.stat(follow_symlinks=False)
                        found.append((st.st_mtime, st.st_size, entry.path))
        except OSError:
            return 0
        found.sort(reverse=True)  # newest first
        now = time.time()
        doomed, held = [], 0
        for i, (mtime, size, path) in enumerate(found):
            held += size
            if i >= most or now - mtime > max_age or held > room:
                doomed.append(path)
        for path in doomed:
            with contextlib.suppress(OSError):
                os.unlink(path)
        return len(doomed)


def _not_found(response_id: Any) -> NotFoundError:
    shown = str(response_id)[:100]
    return NotFoundError(
        f"Response with id '{shown}' not found.",
        hint="it was deleted, has expired (LOCALRUN_RESPONSES_MAX_AGE) or was sent with "
        "store: false",
    )
