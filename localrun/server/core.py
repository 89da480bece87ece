"""What every handler shares: the app's `Context`, and the watch on the client.

The handlers of every dialect read the store, the scheduler and the metrics from the `Context`
that `create_app` puts on the app (`context(request)`); nothing lives at module level. While a
handler waits (for a slot, a load, the first token, a whole non-streamed answer, a job) it runs
the work under `until_disconnect`: when the client disconnects the work is cancelled, its slot
freed, and the handler ends with `ClientGone` (app.py answers it with no body).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import anyio
from starlette.requests import Request

from localrun.server.http import connections, escape
from localrun.server.schema.checker import Checker
from localrun.server.turns import Whose
from localrun.store.local import Store

if TYPE_CHECKING:
    from localrun.scheduler import Scheduler
    from localrun.server.metrics import Metrics

T = TypeVar("T")

log = logging.getLogger("localrun.server")

# Names the hosted tools a request offered that the server left out (it runs none of them).
LEFT_OUT_HEADER = "X-Localrun-Tools-Left-Out"
LEFT_OUT_NAMED = 16  # types the header names, each cut to escape.HEADER_LIMIT / 4 characters


def tools_left_out(kinds: list[str]) -> dict[str, str]:
    """The response headers naming the hosted tools a request offered and the server left out.

    They are logged once; no tools, no headers. Their types are the client's text, so they are
    escaped to printable ASCII and bounded: a CR or LF in a header cuts the connection, and in the
    log starts a line.
    """
    if not kinds:
        return {}
    named = list(dict.fromkeys(escape.for_header(k, escape.HEADER_LIMIT // 4) for k in kinds))
    shown = ", ".join(named[:LEFT_OUT_NAMED])
    if len(named) > LEFT_OUT_NAMED:
        shown += f" and {len(named) - LEFT_OUT_NAMED} more"
    log.info("left out of the tools offered: %s (hosted tools, which localrun does not run)", shown)
    return {LEFT_OUT_HEADER: shown}


class ClientGone(Exception):
    """The client disconnected while its request was being answered."""


@dataclass
class Context:
    """What the handlers share: the store, the scheduler and the version they report."""

    store: Store
    scheduler: Scheduler
    version: str
    metrics: Metrics | None = None  # counts every generation and embedding where it ends
    # Where schemas and answers are checked, off the event loop (server.schema.checker).
    checker: Checker = field(default_factory=Checker)
    # Whom this server's answers are remembered for, so that speculation drafts a repeated
    # request from the answer it got before (engine.speculation.answers): the API key's holders, or
    # with none the one person of a loopback-only server; None where clients are not told apart.
    memory: str | None = None
    # The store's folder, which /api/version names so that a `localrun` told "not found" can
    # say which store answered; only a loopback-only server says where its files are.
    shown_store: str | None = None


def whose(request: Request) -> Whose:
    """The client a request comes from, as shared limits tell clients apart.

    It is the address a per-client cap counts, and the connection.
    """
    peer = tuple(request.client) if request.client is not None else None
    return connections.client_key(request.client), peer


def context(request: Request) -> Context:
    ctx: Context = request.app.state.ctx
    return ctx


async def until_disconnect(request: Request, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` unless the client disconnects first (then it is cancelled: ClientGone).

    Only for after the body has been read: the next message on the request channel is then
    the disconnect.
    """
    result: list[T] = []
    failure: list[Exception] = []
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass
            group.cancel_scope.cancel()

        group.start_soon(watch)
        try:
            result.append(await work())
        except Exception as exc:  # re-raised below: a task group would wrap it in a group
            failure.append(exc)
        finally:
            group.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if not result:
        raise ClientGone()
    return result[0]
