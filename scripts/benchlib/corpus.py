"""More prompts of each workload's kind, made from this repository's own text and code.

The workloads of benchlib/workloads.py are few, chosen for their content; a change to how the
drafter decides is tuned on them and could fit their answers alone. These prompts are the held
out check (scripts/measure/lookup_bound.py --corpus): paragraphs of README.md and docs/, module
docstrings to quote, functions of localrun/ to rename an identifier in (code) or to rewrite in
another shape (diverge), and more stories (prose). They follow the repository as it changes, so
figures from two checkouts are comparable only on the same corpus; a fixed seed picks the same ones
from the same files.
"""

from __future__ import annotations

import ast
import random
import re
import textwrap
from pathlib import Path

from benchlib.workloads import edit, quote, rewrite, story

ROOT = Path(__file__).resolve().parents[2]
_HOWS = (
    "Rewrite this code as a class with methods, in modern style.",
    "Refactor this code to be more readable and rename the variables.",
    "Review this code and suggest improvements, quoting what you change.",
    "Explain what this code does, line by line.",
    "Add type hints and a docstring to every function.",
    "Translate this code to JavaScript.",
)
_SUBJECTS = (
    "story about a fox and a crow",
    "essay about the history of the printing press",
    "story about a train journey across the mountains",
    "essay about why bees matter",
    "letter to a friend about a summer holiday",
    "story about a robot learning to paint",
)
_COMMON = {"self", "None", "True", "False", "len", "list", "dict", "str", "int"}


def _paragraphs(text: str) -> list[str]:
    found = []
    for block in text.split("\n\n"):
        block = block.strip()
        if 300 < len(block) < 800 and not block.startswith(("|", "```", "#", "-", "1.")):
            found.append(re.sub(r"[`*_\[\]]", "", block).replace("\n", " "))
    return found


def _functions(source: str) -> list[tuple[str, str]]:
    """(code, an identifier used 3 times or more) for each function of 20 to 45 lines."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef) or node.end_lineno is None:
            continue
        if not 20 <= node.end_lineno - node.lineno <= 45:
            continue
        code = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno]) + "\n")
        names = [n.id for n in ast.walk(node) if isinstance(n, ast.Name)]
        chosen = sorted(n for n in set(names) if names.count(n) >= 3 and len(n) > 3)
        chosen = [n for n in chosen if n not in _COMMON]
        if chosen:
            found.append((code, chosen[0]))
    return found


def corpus(root: Path = ROOT, seed: int = 7) -> dict[str, tuple[str, ...]]:
    """Workload name -> prompts: 16 to quote, 14 renames, 12 rewrites, 6 stories."""
    rng = random.Random(seed)
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    paragraphs = [p for page in pages for p in _paragraphs(page.read_text(encoding="utf-8"))]
    docs: list[str] = []
    functions: list[tuple[str, str]] = []
    for path in sorted((root / "localrun").rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source))
        if doc and 300 < len(doc) < 900:
            docs.append(doc.replace("\n", " "))
        functions += _functions(source)
    for found in (paragraphs, docs, functions):
        rng.shuffle(found)
    renames = []
    for code, name in functions[:14]:
        new = f"{name}_new" if rng.random() < 0.5 else f"the_{name}"
        renames.append(edit(code, name, new))
    later = functions[14:26]
    rewrites = [rewrite(code, _HOWS[i % len(_HOWS)]) for i, (code, _) in enumerate(later)]
    return {
        "quote": tuple(quote(text) for text in paragraphs[:8] + docs[:8]),
        "code": tuple(renames),
        "diverge": tuple(rewrites),
        "prose": tuple(story(subject) for subject in _SUBJECTS),
    }
