"""A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors: what PEFT,
Unsloth and Axolotl save) converted to a GGUF LoRA for its base model, as llama.cpp's
convert_lora_to_gguf.py writes one.

The base is the GGUF the Modelfile's FROM names: its architecture, layer and head counts come
from its header and every adapted tensor must exist there with a matching shape, so an adapter
for another model is refused at create, not at load. A tensor `W` adapted by `B @ A` keeps A
and B as PEFT stores them ([r, in] and [out, r], which GGUF's reversed dimensions make ggml's
order); what the base's conversion does to W's rows (Llama's q/k permutation) is done to B's.
llama.cpp scales B @ A by alpha / r with r read from each B; PEFT's own scale (rsLoRA's
alpha / sqrt(r), per-module rank and alpha patterns) is folded into B so both agree.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from localrun.errors import CheckpointError
from localrun.gguf import scan
from localrun.recipes import architectures
from localrun.recipes.checkpoint import Tensor, check_folder, read_json, shard_files, tensors
from localrun.recipes.convert import F32, Progress, write_streamed

_LORA = re.compile(
    r"(?:base_model\.model\.)?(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.weight)?"
)


def adapter(folder: Path, base: Path, target: Path, progress: Progress | None = None) -> None:
    """Write the GGUF LoRA of adapter `folder`, made for the GGUF model `base`, to `target`."""
    check_folder(folder)
    settings = read_json(folder / "adapter_config.json", "adapter")
    if not isinstance(settings, dict):
        raise CheckpointError(f"{folder}/adapter_config.json: not an object")
    if str(settings.get("peft_type", "LORA")).upper() != "LORA":
        raise CheckpointError(
            f"{folder}: a {settings.get('peft_type')} adapter; llama.cpp applies LoRA adapters"
        )
    if settings.get("use_dora"):
        raise CheckpointError(
            f"{folder}: a DoRA adapter (its magnitude vectors are not a LoRA's)",
            hint="merge it into the model (PEFT's merge_and_unload) and convert the merged model",
        )
    patterns = _settings(folder, settings)  # lora_alpha is there, and a number
    alpha, rslora, budget = float(settings["lora_alpha"]), bool(settings.get("use_rslora")), [
        MAX_STEPS]  # fmt: skip
    # The project's own bounded header walk (cached per file), not gguf's reader, which reads
    # every array element of the vocabulary in Python.
    header = scan.scan(base)
    arch = str(header.metadata.get("general.architecture") or "")
    row = next((r for r in architectures.ARCHITECTURES.values() if r.name == arch), None)
    if row is None:
        known = sorted({r.name for r in architectures.ARCHITECTURES.values()})
        raise CheckpointError(
            f"{folder}: the base model is {arch or 'of no known architecture'}; localrun converts "
            f"adapters for {', '.join(known)} models",
        )
    blocks = int(header.arch_value("block_count") or 0)
    heads = int(header.arch_value("attention.head_count") or 0)
    kv = int(header.arch_value("attention.head_count_kv") or heads)
    shapes = {t.name: tuple(reversed(t.dims)) for t in header.tensors}
    names = gguf.get_tensor_name_map(row.arch, blocks)
    pairs = _pairs(folder, tensors(shard_files(folder, "adapter_model")))
    writer = gguf.GGUFWriter(target, arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_name(folder.resolve().name)
        jobs: list[tuple[Callable[[], Any], gguf.GGMLQuantizationType]] = []
        for module, (a, b, embedding) in sorted(pairs.items()):
            mapped = names.get_name(module + ".weight", try_suffixes=(".weight",))
            if mapped is None or mapped not in shapes:
                raise CheckpointError(
                    f"{folder}: the adapter changes {module}, which the {arch} base model has not",
                    hint="use an adapter trained for this base model",
                )
            rank = a.shape[0]
            made = (b.shape[0], a.shape[1]) if not embedding else (a.shape[1], b.shape[0])
            if made != shapes[mapped] or b.shape[1] != rank:
                raise CheckpointError(
                    f"{folder}: {module}'s adapter makes a {list(made)} matrix; the base model's "
                    f"{mapped} is {list(shapes[mapped])}",
                    hint="use an adapter trained for this base model",
                )
            scale = _scale(patterns, alpha, rslora, module, rank, budget) * rank / alpha
            a_shape = (a.shape[1], a.shape[0]) if embedding else a.shape
            for suffix, shape, make in (
                ("lora_a", a_shape, lambda a=a, e=embedding: a.f32().T if e else a.f32()),
                ("lora_b", b.shape, lambda b=b, m=module, s=scale: _b(row, m, b, s, heads, kv)),
            ):
                writer.add_tensor_info(f"{mapped}.{suffix}", shape, np.dtype(np.float32),
                                       math.prod(shape) * 4, raw_dtype=F32)  # fmt: skip
                jobs.append((make, F32))
        write_streamed(writer, target, jobs, progress)
    finally:
        writer.close()


def _pairs(folder: Path, found: dict[str, Tensor]) -> dict[str, tuple[Tensor, Tensor, bool]]:
    """module -> (A, B, is an embedding's), every A with its B; what is no LoRA refused."""
    halves: dict[str, dict[str, Tensor]] = {}
    for name, tensor in found.items():
        match = _LORA.fullmatch(name)
        if match is None:
            if "norm" in name:
                continue  # llama.cpp ignores norms in an adapter
            what = "a DoRA magnitude" if "magnitude" in name else "a full weight"
            raise CheckpointError(
                f"{folder}: tensor {name} is {what}, not a LoRA's (modules_to_save, DoRA or a "
                "bias)",
                hint="merge the adapter into the model (merge_and_unload) and convert that",
            )
        module = match.group(1).replace("language_model.", "")
        halves.setdefault(module, {})[match.group(2)] = tensor
    out = {}
    for module, parts in halves.items():
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a = parts.get("lora_embedding_A" if embedding else "lora_A")
        b = parts.get("lora_embedding_B" if embedding else "lora_B")
        if a is None or b is None or len(a.shape) != 2 or len(b.shape) != 2:
            raise CheckpointError(f"{folder}: {module} has half a LoRA (an A without its B)")
        out[module] = (a, b, embedding)
    if not out:
        raise CheckpointError(f"{folder}: the adapter has no LoRA tensors")
    return out


def _scale(patterns: list[tuple[_Pattern, float]], alpha: float, rslora: bool, module: str,
           rank: int, budget: list[int]) -> float:  # fmt: skip
    """PEFT's scale for a module: alpha / r, or alpha / sqrt(r) with rsLoRA, the alpha that of
    the first alpha_pattern key matching the module's name (peft's get_pattern_key)."""
    for pattern, value in patterns:
        if pattern.match(module, budget):
            alpha = value
            break
    return alpha / math.sqrt(rank) if rslora else alpha / rank


# lora_alpha and r as real adapters have them (8 to 512, ranks to 256): a bound far above,
# so a value of 1e308 (past float32, the GGUF's type) or NaN is refused, not written.
MAX_ALPHA = 1e6
MAX_RANK = 1 << 16


def _number(folder: Path, what: str, value: Any, most: float, *, count: bool = False) -> float:
    if not architectures.positive(value, most) or (count and not isinstance(value, int)):
        raise CheckpointError(
            f"{folder}/adapter_config.json: {what} is {value!r:.40}, not a "
            + (f"count from 1 to {most:.0f}" if count else f"number above 0 and at most {most:g}")
        )
    return float(value)


def _settings(folder: Path, settings: dict[str, Any]) -> list[tuple[_Pattern, float]]:
    """Check adapter_config.json's numbers (lora_alpha, r, the patterns' values) and compile
    alpha_pattern's keys, each refused in one line."""
    if settings.get("lora_alpha") is None:
        raise CheckpointError(f"{folder}/adapter_config.json: no lora_alpha")
    _number(folder, "lora_alpha", settings["lora_alpha"], MAX_ALPHA)
    if settings.get("r") is not None:
        _number(folder, "r", settings["r"], MAX_RANK, count=True)
    compiled = []
    for field, most, count in (("rank_pattern", MAX_RANK, True), ("alpha_pattern", MAX_ALPHA,
                                                                  False)):  # fmt: skip
        patterns = settings.get(field) or {}
        if not isinstance(patterns, dict):
            raise CheckpointError(f"{folder}/adapter_config.json: {field} is not an object")
        if len(patterns) > MAX_PATTERNS:
            raise CheckpointError(
                f"{folder}/adapter_config.json: {field} has {len(patterns)} keys; localrun "
                f"matches up to {MAX_PATTERNS}"
            )
        for key, value in patterns.items():
            value = _number(folder, f"{field}[{key!r:.60}]", value, most, count=count)
            if field == "alpha_pattern":  # a rank is read from each B, not matched
                compiled.append((_Pattern(key, folder), value))
    return compiled


# -- PEFT's pattern keys, matched in time linear in the name ------------------------------------
#
# PEFT matches a key as a regular expression, re.match(rf"(.*\.)?({key})$", module). Python's
# backtracking engine takes exponential time on a key such as `(.+)+X` (conversion held a core
# for good), so keys are compiled here to a Thompson NFA and run as a Pike VM: every thread
# advances in step, and one position is never visited twice by one instruction. The syntax is
# what adapters use: literals, `.`, escapes (\d \w \s, their negations, escaped punctuation),
# classes, groups (plain, (?:), (?P<name>)), alternation, `* + ? {m,n}` (lazy or greedy, the
# same for a yes/no answer), ^ and $. Backreferences, lookarounds and flags are refused.

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


class _Pattern:
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


def _b(row: architectures.Architecture, module: str, b: Tensor, scale: float, heads: int,
       kv: int) -> Any:  # fmt: skip
    data = b.f32() * np.float32(scale)
    if row.permute_qk and module.endswith("q_proj"):
        return architectures.permute(data, heads)
    if row.permute_qk and module.endswith("k_proj"):
        return architectures.permute(data, kv)
    return data
