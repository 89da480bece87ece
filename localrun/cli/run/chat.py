"""The terminal chat of `localrun run MODEL`: streaming answers, slash commands, history.

Each turn re-renders the whole conversation. The engine reuses the KV cache of the part it has
already seen, so a turn costs only its new tokens (`--verbose` shows the counts). The chat
talks to a Session: the model on the running server, or one loaded in this process.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from localrun.errors import LocalrunError
from localrun.host import private
from localrun.settings import config

if TYPE_CHECKING:
    from localrun.cli.run.session import Answer, Session

HELP = """Available commands:
  /set parameter NAME VALUE   set a parameter for this session (e.g. /set parameter temperature 0.2)
  /set system TEXT            set the system prompt
  /set verbose | quiet        show or hide timings after each answer
  /set format json | none     constrain answers to JSON, or not
  /set think [LEVEL]          a reasoning model thinks (LEVEL: low, medium, high)
  /set nothink                it does not
  /set hidethinking | showthinking   hide or show its thinking
  /show info | parameters | system | template | modelfile | license
  /clear                      forget the conversation
  /save NAME                  save this session (system, parameters, conversation) as a model
  /load NAME                  switch to another model
  /bye                        exit (or Ctrl-D; Ctrl-Z then Enter on Windows)
  /?                          this help

Start and end a multi-line message with \"\"\".
Ctrl-C stops an answer; Ctrl-D (Windows: Ctrl-Z, Enter) or /bye leaves."""


class ChatSession:
    """State of one terminal chat: the model, the conversation and the session settings."""

    def __init__(
        self,
        opened: Session,
        *,
        system: str | None,
        format: str | None,
        verbose: bool,
        overrides: dict[str, Any],
        wordwrap: bool = True,
        think: bool | str | None = None,
        hide_thinking: bool = False,
    ) -> None:
        self.session = opened
        self.think = think
        self.hide_thinking = hide_thinking
        self.wordwrap = wordwrap
        self.system = system
        self.format = format
        self.verbose = verbose
        self.overrides = dict(overrides)
        self.messages: list[dict[str, Any]] = []

    # -- commands -----------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run a slash command; returns False when the chat should end."""
        from localrun.cli.common import print_error

        words = line.split(maxsplit=2)
        name = words[0].lower()
        try:
            if name in ("/bye", "/exit", "/quit"):
                return False
            if name in ("/?", "/help"):
                print(HELP)
            elif name == "/clear":
                self.messages = []
                print("Cleared session context")
            elif name == "/set":
                self._set(line.split(maxsplit=1)[1] if len(words) > 1 else "")
            elif name == "/show":
                self._show(words[1].lower() if len(words) > 1 else "")
            elif name == "/save":
                self._save(words[1] if len(words) > 1 else "")
            elif name == "/load":
                self._load(words[1] if len(words) > 1 else "")
            else:
                print(f"Unknown command '{words[0]}'. Type /? for help")
        except LocalrunError as err:
            print_error(err)
        return True

    def _set(self, rest: str) -> None:
        from localrun.recipes import params as params_mod

        words = rest.split(maxsplit=1)
        what = words[0].lower() if words else ""
        if what == "parameter":
            parts = words[1].split(maxsplit=1) if len(words) > 1 else []
            if len(parts) != 2:
                print("Usage: /set parameter NAME VALUE")
                return
            spec = params_mod.spec(parts[0])
            value = spec.parse(parts[1])
            if spec.repeated:
                self.overrides.setdefault(spec.name, []).append(value)
            else:
                self.overrides[spec.name] = value
            if spec.name in params_mod.LOAD_PARAMS:
                self.session.reconfigure(self.overrides)
            print(f"Set parameter '{spec.name}' to '{parts[1]}'")
        elif what == "system":
            if len(words) < 2:
                print("Usage: /set system TEXT")
                return
            self.system = words[1].strip().strip('"')
            print("Set system message.")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            print(f"Set '{what}' mode.")
        elif what == "format":
            value = words[1].strip().lower() if len(words) > 1 else ""
            if value not in ("json", "none"):
                print("Usage: /set format json | none")
                return
            self.format = None if value == "none" else value
            print(f"Set format to '{value}'.")
        elif what in ("think", "nothink"):
            level = words[1].strip().lower() if len(words) > 1 and what == "think" else ""
            if level and level not in ("low", "medium", "high"):
                print("Usage: /set think [low | medium | high]")
                return
            self.think = (level or True) if what == "think" else False
            print("Set 'think' mode." if what == "think" else "Set 'nothink' mode.")
        elif what in ("hidethinking", "showthinking"):
            self.hide_thinking = what == "hidethinking"
            print(f"Set '{what}' mode.")
        else:
            print(
                "Usage: /set parameter NAME VALUE | system TEXT | verbose | quiet | format json"
                " | think | nothink"
            )

    def _show(self, what: str) -> None:
        if what not in ("info", "parameters", "system", "template", "modelfile", "license"):
            print("Usage: /show info | parameters | system | template | modelfile | license")
            return
        if what == "modelfile":
            print(self._modelfile(), end="")
            return
        model = self.session.view()
        if what == "info":
            from localrun.cli.views import show_text

            print(show_text(model, model.template), end="")
        elif what == "parameters":
            from localrun.cli.views import params_text

            merged = {**model.parameters, **self.overrides}
            print(params_text(merged) if merged else "No parameters are set.")
        elif what == "system":
            print(self.system if self.system is not None else model.system or "No system message.")
        elif what == "template":
            print(model.template or "No template: ChatML is used.")
        elif what == "license":
            print("\n\n".join(model.licenses) or "No license.")

    def _modelfile(self) -> Any:
        from localrun.recipes.modelfile import Message, Modelfile

        mf = Modelfile(from_=self.session.name)
        for name, value in self.overrides.items():
            mf.parameters += [(name, v) for v in (value if isinstance(value, list) else [value])]
        mf.system = self.system
        mf.messages = [Message(m["role"], m["content"]) for m in self.messages]
        return mf

    def _save(self, name: str) -> None:
        from localrun.store import names

        if not name:
            print("Usage: /save NAME")
            return
        target = names.parse(name)
        self.session.save(str(target), self._modelfile())
        print(f"Created new model '{target}'")

    def _load(self, name: str) -> None:
        if not name:
            print("Usage: /load NAME")
            return
        self.session.switch(name, lambda found: print(f"Loading model '{found}'", flush=True))
        self.messages = []
        self.overrides = {}
        self.system = None

    # -- turns --------------------------------------------------------------------------------

    def turn(self, text: str) -> None:
        """Send a user message and stream the answer; Ctrl-C stops it and keeps the session."""
        from localrun.cli.output import ThinkingView
        from localrun.cli.views import print_stats

        text, images = attach_images(text)
        message: dict[str, Any] = {"role": "user", "content": text}
        if images:
            message["images"] = images
        self.messages.append(message)
        reply: Answer | None = None
        out: Any = sys.stdout
        if self.wordwrap and sys.stdout.isatty():
            import shutil

            from localrun.cli.output import WordWrap

            out = WordWrap(sys.stdout, shutil.get_terminal_size().columns - 1)
        try:
            reply = self.session.chat(
                self.messages,
                system=self.system,
                options=dict(self.overrides),
                format=self.format,
                think=self.think,
            )
            view = ThinkingView(sys.stdout)
            if not self.hide_thinking:
                reply.on_thinking = view.thinking
            for piece in reply:
                view.done()
                out.write(piece)
                out.flush()
            view.done()
        except KeyboardInterrupt:
            # Ctrl-C at any point of the turn (rendering, prompt evaluation or streaming) ends
            # this answer only.
            if reply is not None:
                reply.cancel()
        except LocalrunError:
            self.messages.pop()
            raise
        answer = reply.text if reply is not None else ""
        if hasattr(out, "finish"):
            out.finish()
        sys.stdout.write("\n\n" if answer and not answer.endswith("\n") else "\n")
        sys.stdout.flush()
        self.messages.append({"role": "assistant", "content": answer})
        if reply is not None:
            # Asked every turn: a load counts once, in the first answer after it (as in Ollama).
            load_s = self.session.load_s(reply)
            if self.verbose:
                print_stats(reply, self.session, load_s=load_s)


_EOF_KEY = "Ctrl-Z then Enter" if sys.platform == "win32" else "Ctrl-D"


def _history_file() -> Path:
    return config.home() / "history"


def _setup_history() -> Any:
    try:
        # pyreadline3's on Windows (a dependency there); the standard library's elsewhere.
        readline: Any = importlib.import_module("readline")
    except ImportError:  # no line editing: plain input() still works, without history
        return None
    path = _history_file()
    with contextlib.suppress(OSError):
        private.private_dir(path.parent, owned=False)  # LOCALRUN_HOME: 0700 when made here
        private.touch(path)  # what people typed: 0600 (a link planted there is not followed)
        private.restrict(path)
        if stat.S_ISREG(os.lstat(path).st_mode):
            readline.read_history_file(path)
    readline.set_history_length(2000)
    return readline


def _write_history(readline: Any, path: Path) -> None:
    readline.write_history_file(str(path))
    private.restrict(path)  # readline may write a file of its own and rename it there


def _read_message(first: str) -> str | None:
    """Complete a message that starts with \"\"\" by reading lines until the closing quotes."""
    body = first.lstrip()[3:]
    if body.rstrip().endswith('"""'):
        return body.rstrip()[:-3]
    lines = [body]
    while True:
        try:
            line = input("... ")
        except EOFError:
            return None
        if line.rstrip().endswith('"""'):
            lines.append(line.rstrip()[:-3])
            return "\n".join(lines).strip("\n")
        lines.append(line)


# A path to an image in a chat message, as Ollama's CLI finds them: absolute, ~/ or ./ paths
# ending in an image extension, spaces escaped with a backslash (or the path in quotes).
_IMAGE_PATH = re.compile(
    r"""(?:'([^']+\.(?:jpe?g|png|webp|gif|bmp))'|"([^"]+\.(?:jpe?g|png|webp|gif|bmp))"|"""
    r"""((?:~|\.{1,2})?/(?:\\ |\S)+?\.(?:jpe?g|png|webp|gif|bmp)))(?=\s|$)""",
    re.IGNORECASE,
)


def _starts_with_image(line: str) -> bool:
    """Whether a line that starts with "/" starts with an image's path, as Ollama's chat checks.

    Such a line is a message, not a command.
    """
    match = _IMAGE_PATH.match(line)
    return match is not None and os.path.isfile(
        os.path.expanduser(next(g for g in match.groups() if g).replace("\\ ", " "))
    )


def attach_images(text: str) -> tuple[str, list[str]]:
    """Split a message into its text without the image paths it names, and those images (base64).

    Each image is announced on stderr as it is added. A path that is no file stays text.
    """
    from localrun.request import media

    images: list[str] = []
    kept = text
    for match in _IMAGE_PATH.finditer(text):
        written = match.group(0)
        path = next(g for g in match.groups() if g).replace("\\ ", " ")
        if not os.path.isfile(os.path.expanduser(path)):
            continue
        images.append(media.read_file(path))
        kept = kept.replace(written, "", 1)
        print(f"Added image '{path}'", file=sys.stderr)
    return (" ".join(kept.split()) if images else text), images


def chat_loop(session: ChatSession) -> None:
    """The terminal chat: lines read, commands run, turns answered, until /bye or Ctrl-D."""
    from localrun.cli.common import print_error

    readline = _setup_history()
    print(f"Type /? for help, /bye or {_EOF_KEY} to leave.", file=sys.stderr, flush=True)
    try:
        while True:
            try:
                line = input(">>> ")
            except EOFError:
                print()
                break
            except KeyboardInterrupt:
                print("\nUse Ctrl + d or /bye to exit.")
                continue
            if not line.strip():
                continue
            if line.lstrip().startswith('"""'):
                message = _read_message(line)
                if message is None:
                    break
            elif line.startswith("/") and not _starts_with_image(line):
                if not session.command(line.strip()):
                    break
                continue
            else:
                message = line
            try:
                session.turn(message)
            except LocalrunError as err:
                print_error(err)
    finally:
        if readline is not None:
            with contextlib.suppress(OSError):  # a new file replaces a link, never its target
                private.write_with(_history_file(), lambda new: _write_history(readline, new))
        session.session.close()
