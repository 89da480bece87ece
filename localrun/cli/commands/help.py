"""`localrun help [TOPIC]`: the pages of docs/, read in the terminal.

A wheel carries the pages in localrun/_docs (setup.py copies them there when it builds), so a
user who installed with pip has them without the source. A checkout, or an editable install,
reads docs/ beside the package. Hints name a page as `localrun help TOPIC`, never by a path.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

import typer

from localrun.errors import LocalrunError

HERE = Path(__file__).resolve().parents[2]  # the localrun package


def folder() -> Path | None:
    """Where the pages are: the wheel's copy, else the checkout's docs/; None without either."""
    for candidate in (HERE / "_docs", HERE.parent / "docs"):
        if (candidate / "quickstart.md").is_file():
            return candidate
    return None


def topic_of(page: Path, root: Path) -> str:
    """A page's topic: its path under docs/ without `.md`; a folder's README is the folder."""
    parts = list(page.relative_to(root).with_suffix("").parts)
    if parts[-1] == "README" and len(parts) > 1:
        parts.pop()
    return "/".join(parts)


def pages() -> dict[str, Path]:
    """Every page by its topic, in the order of their paths."""
    root = folder()
    if root is None:
        return {}
    return {topic_of(p, root): p for p in sorted(root.rglob("*.md"))}


def title(page: Path) -> str:
    """The page's first heading."""
    with page.open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                return line.lstrip("#").strip()
    return page.stem


def find(topic: str) -> Path:
    """Return the page for `topic`: its exact topic, or the only one ending in it.

    So `openai` finds `api/openai`. Otherwise raise LocalrunError naming the nearest topics.
    """
    known = pages()
    if not known:
        raise _missing()
    wanted = topic.strip().lower().removesuffix(".md").removeprefix("docs/")
    if wanted in known:
        return known[wanted]
    ending = [t for t in known if t.endswith("/" + wanted)]
    if len(ending) == 1:
        return known[ending[0]]
    near = ending or difflib.get_close_matches(wanted, list(known), n=3, cutoff=0.5)
    hint = "`localrun help` lists them"
    if near:
        hint = f"did you mean {' or '.join(f'`{n}`' for n in near)}? ({hint})"
    raise LocalrunError(f"no help page is called {topic!r}", hint=hint)


def _missing() -> LocalrunError:
    return LocalrunError(
        "this copy of localrun was installed without its pages",
        hint="they are the docs/ folder of localrun's source",
    )


def help_(
    topic: str = typer.Argument(
        None,
        help="A page, as `localrun help` lists them: modelfile, api/openai, ...",
        show_default=False,
    ),
) -> None:
    """Read a page of localrun's documentation, or list them."""
    if topic is None:
        from localrun.cli.output import columns

        rows = [[t, title(p)] for t, p in pages().items()]
        if not rows:
            raise _missing()
        print(columns(rows))
        print("\nlocalrun help TOPIC prints one; piped, it prints the Markdown as it is.")
        return
    text = find(topic).read_text(encoding="utf-8")
    if sys.stdout is None:  # pythonw: nowhere to print
        return
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.markdown import Markdown

        Console().print(Markdown(text))
    else:
        sys.stdout.write(text)
