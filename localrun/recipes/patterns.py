r"""PEFT's pattern keys (an adapter's alpha_pattern, rank_pattern), matched in linear time.

PEFT matches a key as a regular expression, re.match(rf"(.*\.)?({key})$", module). Python's
backtracking engine takes exponential time on a key such as `(.+)+X` (conversion held a core
for good), so keys are compiled here to a Thompson NFA and run as a Pike VM: every thread
advances in step, and one position is never visited twice by one instruction. The syntax is
what adapters use: literals, `.`, escapes (\d \w \s, their negations, escaped punctuation),
classes, groups (plain, (?:), (?P<name>)), alternation, `* + ? {m,n}` (lazy or greedy, the
same for a yes/no answer), ^ and $. Backreferences, lookarounds and flags are refused.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localrun.errors import CheckpointError

MAX_PATTERNS = 4096  # keys per pattern table (one per layer and module of a large model fits)
MAX_KEY = 1000  # characters
MAX_PROGRAM = 4000  # instructions of one key, {m,n} expanded
MAX_STEPS = 20_000_000  # thread steps for a whole adapter: seconds, not hours

Op = tuple[Any, ...]
_SPECIAL = set("\\.^$*+?{}[]()|")
_CLASSES: dict[str, Callable[[str], bool]] = {
    "d": str.isdecimal, "w": lambda c: c.isalnum() or c == "_", "s": str.isspace,
}  # fmt: skip
_COUNTED = re.compile(r"\{(\d{0,4})(?:(,)(\d{0,4}))?\}")


class Pattern:
    r"""One pattern key, compiled; match() is PEFT's re.match(rf"(.*\.)?({key})$", name)."""

    def __init__(self, key: Any, folder: Path) -> None:
        self.key = key if isinstance(key, str) else ""
        self._where = f"{folder}/adapter_config.json: alpha_pattern {key!r:.60}"
        if not isinstance(key, str) or not key or len(key) > MAX_KEY:
            raise CheckpointError(f"{self._where} is not a pattern of 1 to {MAX_KEY} characters")
        # Most keys are a module's name or a dotted path (`.` any character, `\.` a dot): the
        # name's end of the same length, at its start or after a dot, compared, no engine.
        plain = re.fullmatch(r"(?:[^\\.^$*+?{}\[\]()|]|\\\.|\.)+", key)
        self.fixed = re.findall(r"\\\.|.", key) if plain else None
        self.code: list[Op] = []
        if self.fixed is None:
            self._pos = 0
            tree = self._alternation()
            if self._pos != len(key):
                self._refuse("an unmatched )")
            anything = ("rep", ("set", lambda c: c != "\n"), 0, None)
            self._emit(("cat", [("rep", ("cat", [anything, ("set", ".".__eq__)]), 0, 1), tree]))
            self.code.append(("match",))

    def match(self, name: str, budget: list[int]) -> bool:
        if self.fixed is not None:
            start = len(name) - len(self.fixed)
            return (start == 0 or (start > 0 and name[start - 1] == ".")) and all(
                want == "." or char == want[-1]
                for want, char in zip(self.fixed, name[start:], strict=True)
            )
        code, current = self.code, self._closure([0], 0, name)
        for pos, char in enumerate(name):
            budget[0] -= len(current)
            if budget[0] < 0:
                raise CheckpointError(
                    f"{self._where}: the adapter's patterns take too long to match",
                    hint="name the modules (or simple patterns of them) in alpha_pattern",
                )
            current = self._closure(
                [pc + 1 for pc in current if code[pc][0] == "set" and code[pc][1](char)],
                pos + 1, name,
            )  # fmt: skip
            if not current:
                return False
        return any(code[pc][0] == "match" for pc in current)

    def _closure(self, starts: list[int], pos: int, name: str) -> list[int]:
        """The instructions that read a character (or match) reached from `starts` at `pos`."""
        out, seen, stack = [], set(), list(reversed(starts))
        while stack:
            pc = stack.pop()
            if pc in seen:
                continue
            seen.add(pc)
            op = self.code[pc]
            if op[0] == "jmp":
                stack.append(op[1])
            elif op[0] == "split":
                stack += [op[2], op[1]]
            elif op[0] in ("bol", "eol"):
                if pos == (0 if op[0] == "bol" else len(name)):
                    stack.append(pc + 1)
            else:
                out.append(pc)
        return out

    def _refuse(self, what: str) -> None:
        raise CheckpointError(
            f"{self._where} uses {what}, which localrun does not match",
            hint="PEFT's keys are module names or simple patterns of them (., \\d, [..], (a|b), "
            "*, +, ?)",
        )

    def _peek(self) -> str:
        return self.key[self._pos] if self._pos < len(self.key) else ""

    def _alternation(self) -> Op:
        branches = [self._sequence()]
        while self._peek() == "|":
            self._pos += 1
            branches.append(self._sequence())
        return branches[0] if len(branches) == 1 else ("alt", branches)

    def _sequence(self) -> Op:
        items: list[Op] = []
        while self._peek() not in ("", "|", ")"):
            atom = self._atom()
            counted = _COUNTED.match(self.key, self._pos) if self._peek() == "{" else None
            if self._peek() in ("*", "+", "?") or (counted and counted.group(0) not in
                                                   ("{}", "{,}")):  # fmt: skip
                atom = self._quantified(atom, counted)
            items.append(atom)
        return ("cat", items)

    def _quantified(self, atom: Op, counted: re.Match[str] | None) -> Op:
        if atom[0] in ("bol", "eol"):
            self._refuse("a repeated anchor")
        if counted is not None:
            low, comma, high = counted.groups()
            least = int(low or 0)
            most = None if comma and not high else int(high) if comma else least
            if most is not None and most < least:
                self._refuse(f"the repeat {counted.group(0)}")
            self._pos = counted.end()
        else:
            least, most = {"*": (0, None), "+": (1, None), "?": (0, 1)}[self._peek()]
            self._pos += 1
        if self._peek() == "?":
            self._pos += 1  # lazy: the same yes or no
        if self._peek() in ("*", "+", "?", "{"):
            self._refuse("a repeated repeat")
        return ("rep", atom, least, most)

    def _atom(self) -> Op:
        char = self._peek()
        self._pos += 1
        if char == "(":
            return self._group()
        if char == "[":
            return ("set", self._class())
        if char == "\\":
            return self._escape()
        if char in ("*", "+", "?"):
            self._refuse(f"{char} with nothing to repeat")
        if char in ("^", "$"):
            return ("bol",) if char == "^" else ("eol",)
        if char == ".":
            return ("set", lambda c: c != "\n")
        return ("set", char.__eq__)

    def _group(self) -> Op:
        if self.key.startswith("?:", self._pos):
            self._pos += 2
        elif self.key.startswith("?P<", self._pos) and ">" in self.key[self._pos :]:
            self._pos = self.key.index(">", self._pos) + 1
        elif self._peek() == "?":
            self._refuse(f"the group ({self.key[self._pos : self._pos + 3]}")
        inner = self._alternation()
        if self._peek() != ")":
            self._refuse("an unclosed (")
        self._pos += 1
        return inner

    def _escape(self) -> Op:
        char = self._peek()
        self._pos += 1
        if char.lower() in _CLASSES:
            test = _CLASSES[char.lower()]
            return ("set", test if char.islower() else lambda c: not test(c))
        if char in ("A", "Z"):
            return ("bol",) if char == "A" else ("eol",)
        if not char or char.isalnum():
            self._refuse(f"the escape \\{char}")
        return ("set", char.__eq__)

    def _class(self) -> Callable[[str], bool]:
        negate = self._peek() == "^"
        self._pos += negate
        tests: list[Callable[[str], bool]] = []
        first = True
        while self._peek() != "]" or first:
            char = self._peek()
            if not char:
                self._refuse("an unclosed [")
            self._pos += 1
            first = False
            if char == "\\":
                escaped = self._escape()
                tests.append(escaped[1])
                continue
            if self._peek() == "-" and self.key[self._pos + 1 : self._pos + 2] not in ("", "]"):
                high = self.key[self._pos + 1]
                if high == "\\" or high < char:
                    self._refuse(f"the range {char}-{high}")
                self._pos += 2
                tests.append(functools.partial(_between, char, high))
            else:
                tests.append(char.__eq__)
        self._pos += 1
        return lambda c: any(test(c) for test in tests) != negate

    def _emit(self, node: Op) -> None:
        code, kind = self.code, node[0]
        if len(code) > MAX_PROGRAM:
            self._refuse(f"more than {MAX_PROGRAM} steps (a large repeat count)")
        if kind in ("set", "bol", "eol"):
            code.append(node)
        elif kind == "cat":
            for item in node[1]:
                self._emit(item)
        elif kind == "alt":
            ends = []
            for branch in node[1][:-1]:
                split = len(code)
                code.append(())
                self._emit(branch)
                ends.append(len(code))
                code.append(())
                code[split] = ("split", split + 1, len(code))
            self._emit(node[1][-1])
            for end in ends:
                code[end] = ("jmp", len(code))
        else:
            self._emit_repeat(node)

    def _emit_repeat(self, node: Op) -> None:
        _, item, least, most = node
        code = self.code
        for _ in range(least):
            self._emit(item)
        if most is None:
            loop = len(code)
            code.append(())
            self._emit(item)
            code.append(("jmp", loop))
            code[loop] = ("split", loop + 1, len(code))
            return
        for _ in range(most - least):
            split = len(code)
            code.append(())
            self._emit(item)
            code[split] = ("split", split + 1, len(code))


def _between(low: str, high: str, char: str) -> bool:
    return low <= char <= high
