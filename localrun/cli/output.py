"""Formatting helpers shared by the commands: sizes, ages, columns and progress on stderr."""

from __future__ import annotations

import contextlib
import itertools
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from localrun.recipes.create import Event


def human_size(n: int) -> str:
    """Bytes in decimal units, as Ollama and disk vendors write them: 98 MB, 4.7 GB."""
    value = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB", "MB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def ago(timestamp: float, now: float | None = None) -> str:
    seconds = max(0, int((now if now is not None else time.time()) - timestamp))
    for unit, size in (
        ("year", 31_536_000),
        ("month", 2_592_000),
        ("week", 604_800),
        ("day", 86_400),
        ("hour", 3_600),
        ("minute", 60),
    ):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count > 1 else ''} ago"
    return "just now" if seconds < 10 else f"{seconds} seconds ago"


def columns(rows: list[list[str]], gap: int = 4) -> str:
    """Left-aligned text columns (no wrapping, so piped output stays greppable)."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append((" " * gap).join(cells).rstrip())
    return "\n".join(lines)


class WordWrap:
    """Writes streamed text, breaking lines at spaces before the terminal's edge, as Ollama does.

    A word is held until it is complete (a space or newline follows), so it is never split.
    """

    def __init__(self, out: Any, width: int) -> None:
        from rich.cells import cell_len

        self.out = out
        self.width = max(width, 20)
        self.col = 0
        self.soft = False  # the current line began with a wrap, not a newline of the text
        self.spaces = 0  # spaces seen since the last word, not written yet
        self.word = ""
        self._cells = cell_len

    def write(self, text: str) -> None:
        for ch in text:
            if ch == "\n":
                self._flush_word()
                self.out.write("\n")
                self.col = self.spaces = 0
                self.soft = False
            elif ch == " ":
                self._flush_word()
                if not (self.soft and self.col == 0):  # no space right after a soft wrap
                    self.spaces += 1
            else:
                self.word += ch
        self.out.flush()

    def _flush_word(self) -> None:
        # Spaces are written only in front of the word that follows them on the same line, so
        # a wrapped line never ends in blanks.
        if not self.word:
            return
        size = self._cells(self.word)
        if self.col and self.col + self.spaces + size > self.width:
            self.out.write("\n")
            self.col = self.spaces = 0
            self.soft = True
        self.out.write(" " * self.spaces + self.word)
        self.col += self.spaces + size
        self.spaces = 0
        self.word = ""

    def flush(self) -> None:
        self.out.flush()

    def finish(self) -> None:
        self._flush_word()
        self.out.flush()


@contextlib.contextmanager
def loading(name: str, out: TextIO | None = None) -> Iterator[None]:
    """Show a spinner on a terminal's stderr while `name` loads, and clear it once it has.

    The wait before a chat's first answer then shows life, as Ollama's does. Off a terminal
    nothing is shown.
    """
    found = out if out is not None else sys.stderr  # None under pythonw (no console)
    if found is None or not found.isatty():
        yield
        return
    stream: TextIO = found
    text = f"loading {name}"
    done = threading.Event()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):  # ASCII: every console's code page has it
            stream.write(f"\r{frame} {text}")
            stream.flush()
            if done.wait(0.1):
                break
        stream.write("\r" + " " * (len(text) + 2) + "\r")
        stream.flush()

    spinner = threading.Thread(target=spin, name="loading", daemon=True)
    spinner.start()
    try:
        yield
    finally:
        done.set()
        spinner.join()


class CreateProgress:
    """Shows create/import events on stderr: a progress bar on a terminal, plain lines otherwise.

    Off a terminal a step is one line: a bar's first event prints its label and size, the rest
    nothing; a step announced as a line before its bar (quantizing, converting) is not printed
    again when the bar starts.
    """

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._label = ""

    def __call__(self, event: Event) -> None:
        if self.quiet:
            return
        if event.total is not None and event.completed is not None:
            self._bar(event)
            return
        self._close_bar()
        line = event.status if event.digest is None else f"{event.status} {event.digest}"
        print(line, file=sys.stderr, flush=True)
        if not self.tty:
            self._label = event.status  # said already: its bar, if one follows, adds no line

    def _bar(self, event: Event) -> None:
        assert event.total is not None and event.completed is not None
        if not self.tty:
            if event.status != self._label:
                self._label = event.status
                print(f"{event.status} ({human_size(event.total)})", file=sys.stderr, flush=True)
            return
        if self._progress is None or event.status != self._label:
            self._close_bar()
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                "{task.description}",
                BarColumn(),
                DownloadColumn(binary_units=False),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(event.status, total=event.total)
            self._label = event.status
        self._progress.update(self._task, completed=event.completed)

    def _close_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def close(self) -> None:
        self._close_bar()


class ThinkingView:
    """Show a reasoning model's thinking before its answer, as `ollama run` shows it.

    The thinking goes between "Thinking..." and "...done thinking.", dimmed on a terminal and
    plain text otherwise.
    """

    DIM, RESET = "\x1b[2m", "\x1b[0m"

    def __init__(self, out: Any = None) -> None:
        self.out = out or sys.stdout
        self.tty = bool(getattr(self.out, "isatty", lambda: False)())
        self.shown = False
        self.closed = False

    def thinking(self, text: str) -> None:
        if self.closed:
            return
        if not self.shown:
            self.shown = True
            self.out.write((self.DIM if self.tty else "") + "Thinking...\n")
        self.out.write(text)
        self.out.flush()

    def done(self) -> None:
        """The answer begins (or ended): close the thinking shown so far."""
        if self.shown and not self.closed:
            self.out.write("\n...done thinking.\n\n" + (self.RESET if self.tty else ""))
            self.out.flush()
        self.closed = True
