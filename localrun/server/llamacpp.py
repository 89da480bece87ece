"""llama-server's small routes, for the editor plugins and scripts that call them.

    GET  /health       {"status": "ok"} (open without the API key, like GET /)
    POST /tokenize     {"content", "add_special"?, "parse_special"?, "with_pieces"?, "model"?}
                       -> {"tokens": [ids]} or, with_pieces, {"tokens": [{"id", "piece"}]}
    POST /detokenize   {"tokens", "model"?} -> {"content"}

llama-server serves one model; localrun serves many, so a request may name its `model`. Without
one, the model loaded now is used when exactly one is (core.default_model). Defaults follow
llama-server: no BOS added, special tokens parsed. A piece that is not whole UTF-8 (part of a
character) is a list of its byte values, as llama-server sends it. Errors have OpenAI's shape,
which is llama-server's.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import BadRequestError
from localrun.server import core
from localrun.server.core import Body


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def tokenize(request: Request) -> Response:
    body = Body(await core.read_json(request))
    content = body.get("content", str)
    if content is None:
        return JSONResponse({"tokens": []})  # as llama-server answers a body without content
    scheduler = core.context(request).scheduler
    model = core.default_model(request, body)
    tokens = await core.until_disconnect(
        request,
        lambda: scheduler.tokenize(
            model,
            text=content,
            add_special=body.flag("add_special", False),
            parse_special=body.flag("parse_special", True),
        ),
    )
    if not body.flag("with_pieces", False):
        return JSONResponse({"tokens": tokens})
    pieces = await core.until_disconnect(request, lambda: scheduler.token_pieces(model, tokens))
    return JSONResponse(
        {"tokens": [{"id": t, "piece": _piece(p)} for t, p in zip(tokens, pieces, strict=True)]}
    )


def _piece(data: bytes) -> str | list[int]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


async def detokenize(request: Request) -> Response:
    body = Body(await core.read_json(request))
    tokens: Any = body.get("tokens", list)
    if tokens is None:
        return JSONResponse({"content": ""})
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise BadRequestError("tokens must be a list of token ids (integers)")
    scheduler = core.context(request).scheduler
    model = core.default_model(request, body)
    text = await core.until_disconnect(request, lambda: scheduler.detokenize(model, tokens))
    return JSONResponse({"content": text})
