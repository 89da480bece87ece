"""llama-server's small routes and vLLM's tokenizer routes, for editor plugins and scripts.

    GET  /health          {"status": "ok"}, open without the API key like GET /
    POST /tokenize        llama-server's {"content"} -> {"tokens"}, or vLLM's {"prompt"} shape
    GET  /tokenizer_info  vLLM's: the special tokens and chat template from a model's GGUF header
    POST /detokenize      {"tokens", "model"?} -> {"content", "prompt"} (vLLM's key too)
    POST /apply-template  {"messages", ...} -> {"prompt"}: the text the model is sent for a chat
    POST /infill          fill-in-the-middle for editors' autocomplete, whole or streamed

Each route's body is spelt out above its function. lm-evaluation-harness's remote tokenizer calls
vLLM's shapes. llama-server serves one model; localrun serves many, so a request may name its
`model` (default_model picks one otherwise). Defaults follow llama-server: no BOS added, special
tokens parsed. A piece that is not whole UTF-8 (part of a character) is a list of its byte
values, as llama-server sends it. Errors have OpenAI's shape, which is llama-server's.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localrun.errors import BadRequestError, LocalrunError
from localrun.model import stored as model_mod
from localrun.request.genrequest import GenRequest
from localrun.server import core
from localrun.server.body import Body, read_json
from localrun.server.errors import body_of, unexpected
from localrun.server.generation import Generation, start
from localrun.server.messages import chat_messages
from localrun.server.ollama.show import local_model
from localrun.server.openai.routes import think_of
from localrun.server.streaming import event_stream, sse
from localrun.settings import limits
from localrun.worker import view


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def default_model(request: Request, body: Body) -> str:
    """The model a request names, else the one loaded, else the store's only model.

    A request names it in its body, or as `?model=` as vLLM's routes take it. The one loaded now is
    used when exactly one is: llama-server's clients know of one model. The store's only model is
    loaded when it is used: an evaluation harness asks /tokenizer_info before its first completion,
    naming none. A 400 when none of these says which.
    """
    if body.data.get("model") is not None or body.data.get("name") is not None:
        return body.model()
    asked = request.query_params.get("model")
    if asked:
        return Body({"model": asked}).model()
    ctx = core.context(request)
    loaded = {m.name for m in ctx.scheduler.running()}
    if len(loaded) == 1:
        return loaded.pop()
    if not loaded:
        stored = await anyio.to_thread.run_sync(ctx.store.names)
        if len(stored) == 1:
            return str(stored[0])
    raise BadRequestError(
        "name the model: "
        + (f"{len(loaded)} models are loaded" if loaded else "no model is loaded, and the "
           "store holds several"),
        hint='send {"model": "NAME", ...} (or ?model=NAME), or load the model first',
    )  # fmt: skip


# POST /apply-template {"messages", "tools"?, "tool_choice"?, "add_generation_prompt"?,
# "reasoning_effort"?, "chat_template_kwargs"?, "model"?} -> {"prompt"}: the text the model is
# sent for that chat, without the BOS its tokenizer adds, whatever its template's kind. It is
# rendered from the store; the model is not loaded.
async def apply_template(request: Request) -> Response:
    body = Body(await read_json(request))
    name = await local_model(request, await default_model(request, body))
    messages = chat_messages(body.data.get("messages"), openai=True)
    tools = body.data.get("tools") or None
    chat = GenRequest(
        str(name),
        messages=messages,
        tools=tools,
        tool_choice=body.data.get("tool_choice"),
        think=think_of(body),
    )
    generation_prompt = body.flag("add_generation_prompt", True)
    store = core.context(request).store

    def render() -> str:
        return view.prompt_of(
            model_mod.load(store, name), chat, add_generation_prompt=generation_prompt
        )

    return JSONResponse({"prompt": await anyio.to_thread.run_sync(render)})


# POST /tokenize {"content", "add_special"?, "parse_special"?, "with_pieces"?, "model"?}
# -> {"tokens": [ids]}, or with with_pieces {"tokens": [{"id", "piece"}]}. vLLM's shape,
# {"prompt", "add_special_tokens"?: true, "model"?} -> {"count", "max_model_len", "tokens"},
# goes to _vllm_tokenize.
async def tokenize(request: Request) -> Response:
    body = Body(await read_json(request))
    if body.data.get("prompt") is not None and body.data.get("content") is None:
        return await _vllm_tokenize(request, body)
    content = body.get("content", str)
    if content is None:
        return JSONResponse({"tokens": []})  # as llama-server answers a body without content
    _check_size(content, "content")
    with_pieces = body.flag("with_pieces", False)
    scheduler = core.context(request).scheduler
    model = await default_model(request, body)
    tokens = await core.until_disconnect(
        request,
        lambda: scheduler.tokenize(
            model,
            text=content,
            add_special=body.flag("add_special", False),
            parse_special=body.flag("parse_special", True),
        ),
    )
    if not with_pieces:
        return JSONResponse({"tokens": tokens})
    most = limits.max_token_pieces()
    if len(tokens) > most:
        raise BadRequestError(
            f"with_pieces spells out at most {most} tokens, and the content is {len(tokens)}",
            hint="leave with_pieces out, send less text, or raise LOCALRUN_MAX_TOKEN_PIECES",
        )
    pieces = await core.until_disconnect(request, lambda: scheduler.token_pieces(model, tokens))
    return JSONResponse(
        {"tokens": [{"id": t, "piece": _piece(p)} for t, p in zip(tokens, pieces, strict=True)]}
    )


async def _vllm_tokenize(request: Request, body: Body) -> Response:
    """vLLM's /tokenize: {"prompt", "add_special_tokens"?} -> {"count", "max_model_len", "tokens"}.

    Evaluation harnesses' remote tokenizer asks so. Special tokens' texts are read as the tokens, as
    Hugging Face tokenizers read them.
    """
    text = body.get("prompt", str)
    _check_size(text, "prompt")
    scheduler = core.context(request).scheduler
    model = await default_model(request, body)
    add = body.flag("add_special_tokens", True)
    tokens = await core.until_disconnect(
        request,
        lambda: scheduler.tokenize(model, text=text, add_special=add, parse_special=True),
    )
    running = [m for m in scheduler.running() if m.name == model]
    length = running[0].context_length if running else None
    return JSONResponse({"count": len(tokens), "max_model_len": length, "tokens": tokens})


def _check_size(text: str, key: str) -> None:
    most = limits.max_tokenize_bytes()
    if len(text.encode("utf-8", errors="replace")) > most:
        raise BadRequestError(
            f"{key} is longer than {most} bytes",
            hint="tokenize it in parts, or raise LOCALRUN_MAX_TOKENIZE_BYTES",
        )


async def tokenizer_info(request: Request) -> Response:
    """vLLM's GET /tokenizer_info: a model's special tokens and chat template, from its GGUF header.

    The model is the one `?model=` names, else the one loaded; it is not loaded for this. The answer
    is {"bos_token", "eos_token", "chat_template", ...}, what evaluation harnesses' remote tokenizer
    reads.
    """
    name = request.query_params.get("model")
    body = Body({"model": name} if name else {})
    model = await local_model(request, await default_model(request, body))
    store = core.context(request).store

    def read() -> dict[str, Any]:
        stored = model_mod.load(store, model)
        header = view.header_of(stored)
        return {
            "tokenizer_class": "llama.cpp",
            "bos_token": header.bos_text or None,
            "eos_token": header.eos_text or None,
            "chat_template": view.template_choice(stored, header).source,
            "model_max_length": header.arch_value("context_length"),
        }

    return JSONResponse(await anyio.to_thread.run_sync(read))


def _piece(data: bytes) -> str | list[int]:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return list(data)


# Bytes of JSON a token id may take in a /detokenize body ("1234567, "), and room for the rest.
_ID_BYTES = 16
_BODY_SLACK = 65536


async def detokenize(request: Request) -> Response:
    most = limits.max_detokenize_tokens()
    size = len(await request.body())
    if size > most * _ID_BYTES + _BODY_SLACK:  # refused before it is parsed: 30 MB costs seconds
        raise BadRequestError(
            f"the request body is {size / 1e6:.1f} MB, more than {most:,} token ids take; "
            f"/detokenize reads at most {most:,}",
            hint="send them in parts, or raise LOCALRUN_MAX_DETOKENIZE_TOKENS",
        )
    body = Body(await read_json(request))
    tokens: Any = body.get("tokens", list)
    if tokens is None:
        return JSONResponse({"content": "", "prompt": ""})
    if len(tokens) > most:  # refused before any work: a long list costs a runner seconds
        raise BadRequestError(
            f"tokens holds {len(tokens):,} token ids; /detokenize reads at most {most:,}",
            hint="send them in parts, or raise LOCALRUN_MAX_DETOKENIZE_TOKENS",
        )
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise BadRequestError("tokens must be a list of token ids (integers)")
    scheduler = core.context(request).scheduler
    model = await default_model(request, body)
    text = await core.until_disconnect(request, lambda: scheduler.detokenize(model, tokens))
    return JSONResponse({"content": text, "prompt": text})  # llama-server's key, and vLLM's


# llama-server's sampling fields (the same names as localrun's options).
_SAMPLING = (
    "temperature", "top_k", "top_p", "min_p", "typical_p", "seed", "repeat_penalty",
    "repeat_last_n", "presence_penalty", "frequency_penalty",
)  # fmt: skip


def options_of(body: Body) -> dict[str, Any]:
    """The request's sampling fields, n_predict and stop as options."""
    return body.sampling(_SAMPLING) | body.bounds("n_predict", least=-1, hint="-1: no limit")


def _infill_request(body: Body, model: str) -> GenRequest:
    prefix = body.get("input_prefix", str, "")
    suffix = body.get("input_suffix", str, "")
    extra = body.get("input_extra", list, [])
    for index, chunk in enumerate(extra):
        if not isinstance(chunk, dict) or not isinstance(chunk.get("text", ""), str):
            raise BadRequestError(f"input_extra[{index}] must be an object with a text string")
        if not isinstance(chunk.get("filename", ""), str):
            raise BadRequestError(f"input_extra[{index}].filename must be a string")
    options = options_of(body)
    return GenRequest(
        model,
        # llama-server puts `prompt` right after the prefix: the start of the middle, typed.
        prompt=prefix + body.get("prompt", str, ""),
        suffix=suffix,
        extra=[{"filename": c.get("filename", "tmp"), "text": c.get("text", "")} for c in extra],
        options=options,
        logit_bias=body.logit_bias(),
    )


def _timings(generation: Generation) -> dict[str, Any]:
    t = generation.stream.timings

    def rate(n: int, s: float) -> float:
        return n / s if s > 0 else 0.0

    return {
        "cache_n": t.cached_tokens,
        "prompt_n": t.prompt_tokens,
        "prompt_ms": t.prompt_s * 1000,
        "prompt_per_second": rate(t.prompt_tokens, t.prompt_s),
        "predicted_n": t.eval_tokens,
        "predicted_ms": t.eval_s * 1000,
        "predicted_per_second": rate(t.eval_tokens, t.eval_s),
        # As llama-server reports its speculative decoding.
        "draft_n": t.draft_tokens,
        "draft_n_accepted": t.draft_accepted,
    }


def _final(generation: Generation, model: str, content: str) -> dict[str, Any]:
    t = generation.stream.timings
    if generation.stop_sequence is not None:
        stop_type = "word"
    else:
        stop_type = "limit" if generation.done_reason == "length" else "eos"
    return {
        "index": 0,
        "content": content,
        "stop": True,
        "model": model,
        "tokens_predicted": t.eval_tokens,
        "tokens_evaluated": generation.prompt_count,
        "tokens_cached": t.cached_tokens,
        "truncated": False,
        "stop_type": stop_type,
        "stopping_word": generation.stop_sequence or "",
        "timings": _timings(generation),
    }


# POST /infill {"input_prefix", "input_suffix", "input_extra"?: [{"filename", "text"}],
# "prompt"?, "n_predict"?, sampling fields, "stream"?, "model"?}
# -> {"content", "stop", "tokens_predicted", "timings", ...}; streamed, SSE
# `data: {"content", "stop": false}` ... and the final object.
async def infill(request: Request) -> Response:
    """llama-server's /infill for editors' autocomplete (llama.vscode, llama.vim)."""
    body = Body(await read_json(request))
    model = await default_model(request, body)
    generation = await start(request, _infill_request(body, model))
    if not body.flag("stream", False):
        text = await core.until_disconnect(request, generation.collect)
        return JSONResponse(_final(generation, model, text))

    async def events() -> AsyncIterator[bytes]:
        try:
            async with contextlib.aclosing(generation.pieces()) as pieces:
                async for piece in pieces:
                    yield sse({"index": 0, "content": piece, "stop": False})
            yield sse(_final(generation, model, ""))
        except LocalrunError as exc:
            yield sse(body_of(exc, "openai"))
        except Exception as exc:
            yield sse(body_of(unexpected(exc, "a streamed infill"), "openai"))

    return event_stream(events())
