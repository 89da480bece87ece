"""Answer a file of prompts: `localrun run MODEL --batch prompts.jsonl [--output out.jsonl]`.

Each input line is a JSON string (the prompt) or an object with `prompt` or `messages`. An object
may also hold `id`, `system`, `options`, `format` and `images` (file paths or base64, on the line
or on a message). Each output line answers the input line of the same position, in order, and
keeps its `id`. Durations are in nanoseconds, with the field names of Ollama's API. A bad line
gives an error record and the batch goes on; the exit status is 1 if any line failed.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from localrun.errors import InvalidParameterError, LocalrunError

if TYPE_CHECKING:
    from localrun.cli.run.session import Session

MAX_LINE = 16 * 1024 * 1024


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def load_line(raw: str) -> Any:
    """The JSON value of one input line; raises InvalidParameterError."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        reason = f"{exc.msg} at column {exc.colno}" if isinstance(exc, ValueError) else "too deep"
        raise InvalidParameterError(f"not valid JSON ({reason})") from None


def _with_images(message: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """`message` with the line's (or message's) `images`: files to read, or base64 data."""
    images = item.get("images")
    if images is None:
        return message
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise InvalidParameterError("'images' must be a list of file paths or base64 strings")
    from localrun.request import media

    media.check_count(len(images))
    message["images"] = [
        media.read_file(image) if os.path.isfile(os.path.expanduser(image)) else image
        for image in images
    ]
    return message


def parse_line(item: Any) -> dict[str, Any]:
    """Turn one input line's JSON into {messages, id, system, options, format}.

    A line that is neither a string nor a valid object raises InvalidParameterError.
    """
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, dict):
        raise InvalidParameterError("a line must be a JSON string or an object")
    out: dict[str, Any] = {"id": item.get("id")}
    if "prompt" in item:
        if not isinstance(item["prompt"], str) or not item["prompt"].strip():
            raise InvalidParameterError("'prompt' must be a non-empty string")
        out["messages"] = [_with_images({"role": "user", "content": item["prompt"]}, item)]
    elif "messages" in item:
        messages = item["messages"]
        if not isinstance(messages, list) or not messages:
            raise InvalidParameterError("'messages' must be a non-empty list")
        for message in messages:
            if (
                not isinstance(message, dict)
                or message.get("role") not in ("system", "user", "assistant")
                or not isinstance(message.get("content"), str)
            ):
                raise InvalidParameterError(
                    "each message needs a role (system, user or assistant) and a string content"
                )
        out["messages"] = [
            _with_images({"role": m["role"], "content": m["content"]}, m) for m in messages
        ]
    else:
        raise InvalidParameterError("a line needs 'prompt' or 'messages'")
    options = item.get("options", {})
    if not isinstance(options, dict):
        raise InvalidParameterError("'options' must be an object")
    from localrun.recipes import params

    out["options"] = params.validate(options)
    system = item.get("system")
    if system is not None and not isinstance(system, str):
        raise InvalidParameterError("'system' must be a string")
    out["system"] = system
    fmt = item.get("format")
    if fmt not in (None, "json"):
        raise InvalidParameterError("'format' must be \"json\" when given")
    out["format"] = fmt
    return out


def _lines(source: IO[str]) -> Iterator[tuple[int, str]]:
    index = 0
    for raw in source:
        if not raw.strip():
            continue
        yield index, raw
        index += 1


def run_batch(
    opened: Session, path: Path, output: Path | None, *, system: str | None, format: str | None
) -> int:
    """Answer every line; returns the exit status (0: all answered, 1: some lines failed)."""
    source: IO[str]
    if str(path) == "-":
        source = sys.stdin
        total = None
    else:
        try:
            source = open(path, encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InvalidParameterError(
                f"cannot read the batch file {path}: {exc.strerror}", hint="check the path"
            ) from None
        with open(path, encoding="utf-8", errors="replace") as counting:
            total = sum(1 for line in counting if line.strip())
    try:
        sink: IO[str] = open(output, "w", encoding="utf-8") if output else sys.stdout  # noqa: SIM115
    except OSError as exc:
        source.close()
        raise InvalidParameterError(f"cannot write {output}: {exc.strerror}") from None
    failures = 0
    progress = _Progress(total)
    try:
        for index, raw in _lines(source):
            record = _answer(opened, index, raw, system, format)
            if "error" in record:
                failures += 1
            sink.write(json.dumps(record, ensure_ascii=False) + "\n")
            sink.flush()
            progress.advance(failures)
    except UnicodeDecodeError:
        raise InvalidParameterError(f"the batch file {path} is not UTF-8 text") from None
    finally:
        progress.close()
        if sink is not sys.stdout:
            sink.close()
        if source is not sys.stdin:
            source.close()
    if failures:
        print(f"{failures} line(s) failed; see the error records", file=sys.stderr)
    return 1 if failures else 0


def _answer(
    opened: Session, index: int, raw: str, system: str | None, format: str | None
) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index}
    try:
        if len(raw) > MAX_LINE:
            raise InvalidParameterError("the line is longer than 16 MiB")
        value = load_line(raw)
        if isinstance(value, dict) and "id" in value:
            record["id"] = value["id"]  # kept even when the rest of the line is wrong
        item = parse_line(value)
        record["id"] = item["id"]
        reply = opened.chat(
            item["messages"],
            system=item["system"] if item["system"] is not None else system,
            options=item["options"],
            format=item["format"] or format,
        )
        for _ in reply:
            pass
    except LocalrunError as err:
        record["error"] = {"code": err.code, "message": err.message}
        return record
    t = reply.timings
    record.update(
        model=opened.name,
        response=reply.text,
        done_reason=reply.done_reason,
        # As the API counts them (server/ollama/routes.py): every token of the prompt, and of
        # those how many the KV cache held already.
        prompt_eval_count=t.prompt_tokens + t.cached_tokens,
        prompt_cache_count=t.cached_tokens,
        eval_count=t.eval_tokens,
        prompt_eval_duration=_ns(t.prompt_s),
        eval_duration=_ns(t.eval_s),
        total_duration=_ns(t.total_s),
    )
    return record


class _Progress:
    """A progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int | None) -> None:
        self.bar: Any = None
        if not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress(
            "{task.description}",
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.bar.start()
        self.task = self.bar.add_task("prompts", total=total)

    def advance(self, failures: int) -> None:
        if self.bar is not None:
            label = f"prompts ({failures} failed)" if failures else "prompts"
            self.bar.update(self.task, advance=1, description=label)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
