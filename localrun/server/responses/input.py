"""A Responses request's input read into the core's chat messages and options.

`input` is a string or a list of items: messages with input_text and input_image parts,
function_call, function_call_output, custom_tool_call, custom_tool_call_output. With
`previous_response_id` the stored conversation comes first. Every item and field is checked
here with the path of what is wrong (`input[2].content`), as a 400 in OpenAI's shape. The
request's tools are read in tools.py.
"""

from __future__ import annotations

from typing import Any

from localrun.errors import BadRequestError
from localrun.formats import reasoning as reasoning_mod
from localrun.request import jsonlimits, media
from localrun.server.body import Body
from localrun.server.logprobs import top_logprobs
from localrun.server.responses import tools as responses_tools

# The `include` that asks for the answer's log-probabilities; the others name what hosted tools
# or OpenAI's own storage hold (search results, encrypted reasoning), which have none here.
LOGPROBS = "message.output_text.logprobs"

# -- input -> the core's messages -------------------------------------------------------------


def _part_text(content: Any, where: str) -> str:
    """The text of content parts that can hold no media (outputs, tool results)."""
    text, found = _parts(content, where)
    if found:
        raise BadRequestError(f"{where} holds an image; only an input message can")
    return text


def _parts(content: Any, where: str) -> tuple[str, list[media.Media]]:
    """Content parts as text, with a marker where each input_image goes, and its images."""
    if isinstance(content, str):
        media.count_markers(content, where)
        return content, []
    if not isinstance(content, list):
        raise BadRequestError(f"{where} must be a string or a list of content parts")
    texts = []
    found: list[media.Media] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text", "reasoning_text", "summary_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise BadRequestError(f"{where}[{index}].text must be a string")
            media.count_markers(text, f"{where}[{index}]")
            texts.append(text)
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise BadRequestError(
                    f"{where}[{index}] needs an image_url (a data URL); file ids are not kept",
                    hint="send the image inline: data:image/png;base64,...",
                )
            found.append(media.from_url(url, f"{where}[{index}].image_url"))
            media.check_count(len(found))
            texts.append(media.MARKER)
        elif kind in ("input_file", "input_audio"):
            raise BadRequestError(f"{where}[{index}] is {kind}; localrun takes text and images")
        elif kind == "refusal":
            texts.append(str(part.get("refusal", "")))
        else:
            raise BadRequestError(f"{where}[{index}] has type {kind!r}; a text part is expected")
    return "".join(texts), found


def input_items(value: Any) -> list[dict[str, Any]]:
    """`input` as a list of items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise BadRequestError("input must be a string or a list of items")
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise BadRequestError(f"input[{index}] must be an object")
    return list(value)


def messages_of(
    items: list[dict[str, Any]], history: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Input items -> the core's chat messages, continuing `history` (a stored conversation).

    Consecutive function_call items become one assistant turn with tool_calls (joined to the
    assistant text just before them); a function_call_output is a tool message. Reasoning
    items are dropped: the model reasons afresh.
    """
    out = [dict(m) for m in history or []]
    names = {
        call.get("id"): call.get("function", {}).get("name")
        for m in out
        for call in m.get("tool_calls") or []
        if isinstance(call, dict)
    }
    for index, item in enumerate(items):
        where = f"input[{index}]"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            out.append(_message(item, where))
        elif kind in ("function_call", "custom_tool_call"):
            call = _function_call(item, where)
            names[call["id"]] = call["function"]["name"]
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            out.append(_call_output(item, where, names))
        elif kind == "reasoning":
            continue
        else:
            raise BadRequestError(
                f"{where} has type {kind!r}; localrun takes message, function_call, "
                "function_call_output, custom_tool_call, custom_tool_call_output and reasoning "
                "items"
            )
    return out


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A message item as a chat message (`developer` is the system role)."""
    role = item.get("role")
    if role == "developer":
        role = "system"
    if role not in ("user", "assistant", "system"):
        raise BadRequestError(f"{where}.role must be user, assistant, system or developer")
    text, found = _parts(item.get("content"), where)
    if found and role != "user":
        raise BadRequestError(f"{where} holds an image; only a user message can")
    message: dict[str, Any] = {"role": role, "content": text}
    if found:
        message["media"] = [m.to_wire() for m in found]
    return message


def _function_call(item: dict[str, Any], where: str) -> dict[str, Any]:
    """A function_call item, or a custom tool's call, as a tool call of the core's shape.

    Its arguments are parsed; a custom tool call's text becomes the argument `input`. The call is
    named as the model knows the tool: a namespaced one as `<namespace>.<name>` (tools.py).
    """
    call_id, name = item.get("call_id"), item.get("name")
    if not isinstance(call_id, str) or not isinstance(name, str) or not name:
        raise BadRequestError(f"{where} needs a call_id and a name")
    name = responses_tools.model_name(item.get("namespace"), name)
    if item.get("type") == "custom_tool_call":
        text = item.get("input", "")
        if not isinstance(text, str):
            raise BadRequestError(f"{where}.input must be a string")
        function = {"name": name, "arguments": {"input": text}}
        return {"id": call_id, "type": "function", "function": function}
    arguments = item.get("arguments", "{}")
    if not isinstance(arguments, str):
        raise BadRequestError(f"{where}.arguments must be a JSON string")
    try:
        parsed = jsonlimits.loads(arguments, f"{where}.arguments") if arguments.strip() else {}
    except ValueError:
        raise BadRequestError(f"{where}.arguments is not valid JSON") from None
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": parsed},
    }


def _call_output(item: dict[str, Any], where: str, names: dict[Any, Any]) -> dict[str, Any]:
    """A function_call_output item as a tool message, named after the call it answers."""
    call_id = item.get("call_id")
    if not isinstance(call_id, str):
        raise BadRequestError(f"{where}.call_id must be a string")
    output = item.get("output", "")
    text = output if isinstance(output, str) else _part_text(output, f"{where}.output")
    message = {"role": "tool", "content": text, "tool_call_id": call_id}
    if names.get(call_id):
        message["tool_name"] = names[call_id]
    return message


# -- request fields ---------------------------------------------------------------------------


def format_of(body: Body) -> str | dict[str, Any] | None:
    text = body.get("text", dict) or {}
    spec = text.get("format")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise BadRequestError("text.format must be an object")
    kind = spec.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise BadRequestError("text.format.schema must be a JSON schema object")
        return schema
    raise BadRequestError(f"text.format type {kind!r} is not text, json_object or json_schema")


def lenient(body: Body) -> bool:
    """Whether `text.format`'s schema is taken as Ollama's `format` is.

    It is unless the schema is `strict: true`, which is enforced whole or refused. Otherwise the
    keywords the engine cannot enforce are checked on the finished answer.
    """
    spec = (body.get("text", dict) or {}).get("format")
    return not (isinstance(spec, dict) and spec.get("strict") is True)


def think_of(body: Body) -> bool | str | None:
    reasoning = body.get("reasoning", dict)
    effort = (reasoning or {}).get("effort")
    return None if effort is None else reasoning_mod.from_effort(effort, "reasoning.effort")


def logprobs_of(body: Body) -> int | None:
    """The alternatives per token of the log-probabilities asked for, or None when none are.

    `include` names message.output_text.logprobs to ask, and `top_logprobs` (0 to 20) gives the
    count.
    """
    include = body.get("include", list) or []
    for index, value in enumerate(include):
        if not isinstance(value, str):
            raise BadRequestError(f"include[{index}] must be a string")
    top = top_logprobs(body.data.get("top_logprobs"))
    return top if LOGPROBS in include else None


def options_of(body: Body) -> dict[str, Any]:
    return body.sampling(("temperature", "top_p", "seed")) | body.bounds("max_output_tokens")
