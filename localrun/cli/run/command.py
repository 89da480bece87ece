"""`localrun run MODEL [PROMPT]`: one-shot answers, batch prompts, or a terminal chat.

The model is reached through a Session (cli/run/session.py, opened by cli/run/connect.py): the
running server's, or one loaded in this process when no server answers.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from localrun.cli.output import ThinkingView
from localrun.cli.run.batch import run_batch
from localrun.cli.run.chat import ChatSession, chat_loop
from localrun.cli.views import print_stats
from localrun.errors import InvalidParameterError

if TYPE_CHECKING:
    from localrun.cli.run.session import Session

STDIN_LIMIT = 64 * 1024 * 1024


@dataclass(frozen=True)
class Asked:
    """How `run` asks for answers and shows them, the same for one answer and for the chat."""

    system: str | None
    format: str | None
    verbose: bool
    think: bool | str | None
    hide_thinking: bool


def run(
    model: str = typer.Argument(..., help="The model, e.g. smollm2:135m."),
    prompt: list[str] | None = typer.Argument(
        None, help="The prompt; without one (and with no piped input) a chat starts."
    ),
    verbose: bool = typer.Option(False, "--verbose", help="Print timings to stderr."),
    format: str | None = typer.Option(None, "--format", help="Constrain the answer: json."),
    system: str | None = typer.Option(None, "--system", help="Use this system prompt."),
    param: list[str] = typer.Option(
        [], "--param", "-p", help="Set a parameter: NAME=VALUE (repeatable)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed, for repeatable answers."),
    batch: Path | None = typer.Option(
        None, "--batch", help="Answer every prompt of a JSONL file (one JSON per line)."
    ),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="With --batch: write the results here (default stdout)."
    ),
    nowordwrap: bool = typer.Option(
        False, "--nowordwrap", help="In the chat, do not wrap words at the terminal's edge."
    ),
    think: str | None = typer.Option(
        None,
        "--think",
        help="A reasoning model thinks: --think, --think=false, or a level: --think=high.",
    ),
    hidethinking: bool = typer.Option(
        False, "--hidethinking", help="Do not show a reasoning model's thinking."
    ),
    image: list[Path] = typer.Option(
        [], "--image", help="Show the model this image with the prompt (repeatable)."
    ),
    audio: list[Path] = typer.Option(
        [], "--audio", help="Let the model hear this audio file with the prompt (repeatable)."
    ),
) -> None:
    """Run a model: answer PROMPT, answer a --batch file, or chat in the terminal.

    With a server up at LOCALRUN_HOST the model runs there, and stays loaded; else in-process.
    """
    from localrun.cli.run.connect import (
        open_session,  # here: its imports cost every command's start
    )

    started = time.perf_counter()
    overrides = _overrides(format, param, seed, batch, output)
    asked = Asked(system, format, verbose, think_option(think), hidethinking)
    text, piped = _prompt(prompt, batch)
    images, sounds = _media(image, audio, text, model)
    opened = open_session(model, overrides)
    _advise_gpu()
    if batch is not None:
        raise typer.Exit(run_batch(opened, batch, output, system=system, format=format))
    if text.strip():
        one_shot(opened, text, asked, started, images, sounds)
    elif piped is not None or not sys.stdin.isatty():
        raise InvalidParameterError(
            "no prompt: give one as an argument or on stdin",
            hint=f'localrun run {model} "Why is the sky blue?"',
        )
    else:
        chat_loop(_chat(opened, asked, overrides, wordwrap=not nowordwrap))


def _chat(
    opened: Session, asked: Asked, overrides: dict[str, Any], *, wordwrap: bool
) -> ChatSession:
    return ChatSession(
        opened,
        system=asked.system,
        format=asked.format,
        verbose=asked.verbose,
        overrides=overrides,
        wordwrap=wordwrap,
        think=asked.think,
        hide_thinking=asked.hide_thinking,
    )


def _media(
    image: list[Path], audio: list[Path], text: str, model: str
) -> tuple[list[str], list[str]]:
    """The --image and --audio files, read and checked (base64), for a prompt that has text."""
    from localrun.request import media

    images = [media.read_file(str(path)) for path in image]
    sounds = [media.read_file(str(path), "audio") for path in audio]
    if (images or sounds) and not text.strip():
        raise InvalidParameterError(
            "--image and --audio go with a prompt",
            hint=f'localrun run {model} "What is in it?" --image ...',
        )
    return images, sounds


def _overrides(
    format: str | None, param: list[str], seed: int | None, batch: Path | None, output: Path | None
) -> dict[str, Any]:
    """The parameters --param and --seed set, once the options are checked."""
    from localrun.recipes import params as params_mod

    if format not in (None, "json"):
        raise InvalidParameterError(
            f"unknown --format {format!r}", hint="the only format is json: --format json"
        )
    overrides: dict[str, Any] = {}
    for item in param:
        name, value = params_mod.parse_assignment(item)
        if params_mod.SPECS[name].repeated:
            overrides.setdefault(name, []).append(value)
        else:
            overrides[name] = value
    if seed is not None:
        overrides["seed"] = params_mod.spec("seed").check(seed)
    if output is not None and batch is None:
        raise InvalidParameterError("--output goes with --batch", hint="add --batch FILE")
    return overrides


def _prompt(prompt: list[str] | None, batch: Path | None) -> tuple[str, str | None]:
    """Return the prompt's text, with what was piped to stdin after it, and what was piped.

    What was piped is None when stdin is a terminal. With --batch, stdin is not read.
    """
    text = " ".join(prompt or [])
    piped = None
    if batch is None and not sys.stdin.isatty():
        piped = sys.stdin.read(STDIN_LIMIT)
    if piped:
        text = f"{text}\n\n{piped}" if text else piped
    return text, piped


def think_option(value: str | None) -> bool | str | None:
    """--think's value: true/false (yes/no, on/off) or a level; None when not given."""
    if value is None:
        return None
    word = value.strip().lower()
    if word in ("true", "yes", "on", "1"):
        return True
    if word in ("false", "no", "off", "0"):
        return False
    from localrun.formats import reasoning

    if word in reasoning.LEVELS:
        return word
    raise InvalidParameterError(
        f"unknown --think value {value!r}", hint="use --think, --think=false or --think=high"
    )


def one_shot(
    opened: Session,
    text: str,
    asked: Asked,
    started: float,
    images: list[str] | None = None,
    sounds: list[str] | None = None,
) -> None:
    """Stream the answer to `text` to stdout, its thinking before it, then any timings.

    `images` and `sounds` go with the text, base64.
    """
    message: dict[str, Any] = {"role": "user", "content": text}
    if images:
        message["images"] = images
    if sounds:
        message["audio"] = sounds  # localrun's field beside Ollama's images
    reply = opened.chat(
        [message],
        system=asked.system,
        format=asked.format,
        think=asked.think,
    )
    out = sys.stdout
    view = ThinkingView(out)
    if not asked.hide_thinking:
        reply.on_thinking = view.thinking
    last = ""
    try:
        for piece in reply:
            view.done()
            out.write(piece)
            out.flush()
            last = piece
        view.done()
    except KeyboardInterrupt:
        reply.cancel()
        out.write("\n")
        raise
    if not last.endswith("\n"):
        out.write("\n")
    out.flush()
    if asked.verbose:
        print_stats(reply, opened, time.perf_counter() - started)


def _advise_gpu() -> None:
    """One line, once, when this machine's GPU sits idle for want of a runtime."""
    from localrun.runtimes.advice import detected_gpus, say_once

    say_once(detected_gpus, lambda line: print(line, file=sys.stderr, flush=True))
