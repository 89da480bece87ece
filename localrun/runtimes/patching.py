"""Unified diffs: read, apply to a source tree idempotently, and write.

The exact runtime keeps its changes to llama.cpp as .patch files (runtimes/patches/), as Ollama
keeps its own (llama/patches/): a header saying what and why, then `diff --git` sections that
`git apply` and `patch -p1` also take. A build applies them here: a machine that builds the
runtime needs cmake and a C++ compiler, not git or patch.

Applying is `patch -p1` with no fuzz: a hunk's old lines must match the file exactly, at the
line its header gives or the nearest line from there. A patch whose every hunk is found reversed
was applied before and is skipped. One that neither applies nor is applied is refused whole,
naming the patch, the file and the hunk, before any file is written. The upgrade script
(scripts/maintenance/upgrade_llama_cpp.py) also asks for fuzz, as GNU patch's --fuzz, and
`diff` writes the patch again against the new source.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from localrun.errors import RuntimeBuildError

# A hunk's heading, as git's default: the nearest line above it that starts a name (80 chars)
FUNCNAME = re.compile(r"^[A-Za-z_$]")
HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass(frozen=True)
class Hunk:
    old_start: int  # 1-based, as the header gives it (0 for an insertion into an empty file)
    lines: tuple[str, ...]  # each with its mark: " " context, "-" removed, "+" added
    line_no: int  # where its @@ header is in the patch file, for errors

    def first_change(self) -> str:
        return next((line for line in self.lines if line[0] in "-+"), "").strip()


@dataclass(frozen=True)
class FilePatch:
    path: str  # relative to the tree (a/ and b/ taken off)
    hunks: tuple[Hunk, ...]


@dataclass(frozen=True)
class Patch:
    name: str
    header: str  # everything before the first diff: what the patch does and why
    files: tuple[FilePatch, ...]


@dataclass
class Placed:
    """Where a hunk went.

    Its 1-based line in the file it was applied to, how far that is from the line its header
    gives, and how many context lines at each end fuzz ignored.
    """

    hunk: int
    line: int
    offset: int
    fuzz: int


@dataclass
class Outcome:
    patch: str
    state: str  # "present" (applied before), "applies", or "failed"
    placed: dict[str, list[Placed]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)  # each file as the patch makes it
    # (file, hunk number, the hunk): hunk 0, None where the file is missing or unreadable
    failed: list[tuple[str, int, Hunk | None]] = field(default_factory=list)


class HunkFailed(Exception):
    def __init__(self, index: int, hunk: Hunk) -> None:
        super().__init__(index)
        self.index = index
        self.hunk = hunk


def parse(text: str, name: str = "patch") -> Patch:
    """`text` (a unified diff with a header, as git format-patch writes it) read."""
    lines = text.split("\n")
    files: list[FilePatch] = []
    header_end: int | None = None
    i = 0
    while i < len(lines):
        if not (lines[i].startswith("--- ") and i + 1 < len(lines)):
            i += 1
            continue
        if not lines[i + 1].startswith("+++ "):
            i += 1
            continue
        if header_end is None:
            header_end = i - 1 if i > 0 and lines[i - 1].startswith("diff --git ") else i
        path = _strip(lines[i + 1][4:])
        i += 2
        hunks: list[Hunk] = []
        while i < len(lines) and (m := HUNK.match(lines[i])):
            hunk, i = _hunk(lines, i, m, name)
            hunks.append(hunk)
        files.append(FilePatch(path, tuple(hunks)))
    if not files:
        raise RuntimeBuildError(f"{name} holds no diff", hint="restore it from localrun's source")
    return Patch(name, "\n".join(lines[:header_end]), tuple(files))


def _strip(path: str) -> str:
    path = path.split("\t", 1)[0].strip()
    return path[2:] if path.startswith(("a/", "b/")) else path


def _hunk(lines: list[str], i: int, m: re.Match[str], name: str) -> tuple[Hunk, int]:
    old_n = int(m.group(2) if m.group(2) is not None else 1)
    new_n = int(m.group(4) if m.group(4) is not None else 1)
    at, body = i + 1, []
    while old_n > 0 or new_n > 0:
        if at >= len(lines):
            raise RuntimeBuildError(
                f"{name}: the hunk at line {i + 1} ends early", hint="the patch file is damaged"
            )
        line = lines[at] or " "  # an empty context line, as some editors leave it
        at += 1
        if line.startswith("\\"):  # "\ No newline at end of file"
            continue
        mark = line[0]
        if mark not in " -+":
            raise RuntimeBuildError(
                f"{name}: line {at} is not part of a hunk", hint="the patch file is damaged"
            )
        old_n -= mark in " -"
        new_n -= mark in " +"
        body.append(line)
    return Hunk(int(m.group(1)), tuple(body), i + 1), at


def apply_lines(
    lines: list[str], hunks: tuple[Hunk, ...], *, reverse: bool = False, fuzz: int = 0
) -> tuple[list[str], list[Placed]]:
    """Return `lines` with `hunks` applied (or reversed).

    A hunk is looked for at its line, moved by the earlier hunks' offset, then ever farther from
    it, never before the end of the previous one. With `fuzz`, up to that many context lines at
    each end may differ; they are left as the file has them. HunkFailed names the first hunk
    that does not match.
    """
    out: list[str] = []
    done = 0  # lines of `lines` consumed
    offset = 0
    placed: list[Placed] = []
    for index, hunk in enumerate(hunks, 1):
        body = tuple(_reversed(line) for line in hunk.lines) if reverse else hunk.lines
        old = [line[1:] for line in body if line[0] in " -"]
        new = [line[1:] for line in body if line[0] in " +"]
        expected = max(hunk.old_start - 1, 0) + offset
        for f in range(fuzz + 1):
            top, bottom = min(f, _context_run(body)), min(f, _context_run(body[::-1]))
            core = old[top : len(old) - bottom]
            at = _nearest(lines, core, expected + top, done)
            if at is not None:
                break
        else:
            raise HunkFailed(index, hunk)
        out += lines[done:at] + new[top : len(new) - bottom]
        done = at + len(core)
        offset = at - top - max(hunk.old_start - 1, 0)
        placed.append(Placed(index, at - top + 1, offset, max(top, bottom)))
    return out + lines[done:], placed


def _reversed(line: str) -> str:
    return {"-": "+", "+": "-"}.get(line[0], " ") + line[1:]


def _nearest(lines: list[str], core: list[str], start: int, floor: int) -> int | None:
    """Where `core` occurs in `lines` nearest to `start`, at or after `floor`; None if nowhere."""
    last = len(lines) - len(core)
    start = min(max(start, floor), max(last, floor))
    for distance in range(max(start - floor, last - start) + 1):
        for at in (start - distance, start + distance) if distance else (start,):
            if floor <= at <= last and lines[at : at + len(core)] == core:
                return at
    return None


def _context_run(body: tuple[str, ...]) -> int:
    n = 0
    for line in body:
        if line[0] != " ":
            break
        n += 1
    return n


def status(tree: Path, patch: Patch, *, fuzz: int = 0) -> Outcome:
    """What `patch` would do to `tree`; nothing is written.

    - "present": every hunk is found reversed (applied before).
    - "applies": Outcome.texts holds each file as the patch makes it, Outcome.placed where
      each hunk went.
    - "failed": Outcome.failed names the hunks that do not match.
    """
    if _check(tree, patch, reverse=True).state == "applies":
        return Outcome(patch.name, "present")
    return _check(tree, patch, reverse=False, fuzz=fuzz)


def _check(tree: Path, patch: Patch, *, reverse: bool, fuzz: int = 0) -> Outcome:
    outcome = Outcome(patch.name, "applies")
    for fp in patch.files:
        try:
            text = (tree / fp.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            outcome.failed.append((fp.path, 0, fp.hunks[0] if fp.hunks else None))
            continue
        try:
            lines, placed = apply_lines(_lines(text), fp.hunks, reverse=reverse, fuzz=fuzz)
        except HunkFailed as exc:
            outcome.failed.append((fp.path, exc.index, exc.hunk))
            continue
        outcome.placed[fp.path] = placed
        outcome.texts[fp.path] = _text(lines, text)
    if outcome.failed:
        outcome.state = "failed"
        outcome.texts.clear()
    return outcome


def diff(path: str, old: str, new: str, context: int = 3) -> str:
    """The `diff --git` section that turns `old` into `new`, or "" when they are the same.

    `path` is the file's path, as the patch files write it.
    """
    a, b = _lines(old), _lines(new)
    if a == b:
        return ""
    out = [f"diff --git a/{path} b/{path}", f"--- a/{path}", f"+++ b/{path}"]
    # autojunk off: in a 12,000-line file a common line (a brace) is not noise
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for group in matcher.get_grouped_opcodes(context):
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        heading = next((x for x in reversed(a[:i1]) if FUNCNAME.match(x)), "")[:80]
        out.append(f"@@ -{_range(i1, i2)} +{_range(j1, j2)} @@ {heading}".rstrip())
        for tag, x1, x2, y1, y2 in group:
            if tag == "equal":
                out += [" " + line for line in a[x1:x2]]
                continue
            out += ["-" + line for line in a[x1:x2]]
            out += ["+" + line for line in b[y1:y2]]
    return "\n".join(out) + "\n"


def _lines(text: str) -> list[str]:
    """A file's lines, without their newlines.

    A last newline ends the last line, as in a diff. A file without one is read as if it had
    it: llama.cpp's sources all do.
    """
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def _text(lines: list[str], like: str) -> str:
    return "\n".join(lines) + ("\n" if like.endswith("\n") or not like else "")


def _range(start: int, end: int) -> str:
    n = end - start
    return f"{start + 1 if n else start},{n}"


def regenerate(tree: Path, patch: Patch, outcome: Outcome) -> str:
    """Write `patch` again against `tree` as it is before the patch.

    Its header, then each file's diff to the text that `outcome` (a status of it, fuzz
    allowed) gives.
    """
    parts = [patch.header + "\n"]
    for fp in patch.files:
        old = (tree / fp.path).read_text(encoding="utf-8")
        parts.append(diff(fp.path, old, outcome.texts[fp.path]))
    return "".join(parts)
