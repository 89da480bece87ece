"""A client's grammar compiled first in a process of its own, where a crash costs one request.

llguidance is native code that recurses through a grammar as it compiles it. A grammar deep
enough passes its thread's stack and kills the process: a schema whose definitions chain 2,500 deep,
a Lark grammar of 2,700 rules each naming the next (issue 76). In a runner that process holds every
stream of the model. formats.grammar_bounds refuses the schemas known to go there, but bounds on
shapes prove nothing about the shapes nobody measured. So before a runner compiles a grammar it has
not seen (engine.sampling.constraint.Constraint), `Guard.check` has a child process compile it
first. The child runs llguidance's validation (the same compiler, no vocabulary) on a thread with
half the stack the runner compiles on. A grammar the child survives compiles in the runner with room
to spare. One that kills the child, or runs past the deadline, is the request's 400, and the next
grammar starts a new child.
"""

from __future__ import annotations

import collections
import hashlib
import re
import sys
import threading
from typing import Any

import llguidance

from localrun.errors import BadRequestError, BusyError
from localrun.host import asked
from localrun.host import limits as host_limits

# What one grammar may cost (here, not in engine.sampling.constraint, which imports llama_cpp: the
# guard's child imports this module and llguidance alone): its size when compiled, and the work
# of one mask (llguidance's fuel: the lexer's and the Earley parser's steps). A grammar past
# them is refused when it is compiled, or stops the answer where a step runs out.
LIMITS = llguidance.LLParserLimits(
    max_grammar_size=500_000,
    step_lexer_fuel=200_000,
    step_max_items=50_000,
    max_lexer_states=250_000,
    verbose_errors=False,
)
HINT = "simplify the schema or grammar; `localrun help structured-outputs` lists what is enforced"
DEADLINE_S = 10.0  # llguidance's own limits (LIMITS) end a compile well before
REMEMBERED = 512  # digests of grammars that passed


def message(error: str) -> str:
    """llguidance's error as one line: its first, without the grammar or the place in it.

    The request's schema is not the grammar it was written into.
    """
    text = " ".join(error.strip().split("\n", 1)[0].split())
    text = re.sub(r"^at \d+\(\d+\): ", "", text)
    if len(text) > 300:
        text = text[:297] + "..."
    return f"the output's schema or grammar cannot be enforced: {text}"


def guard_stack() -> int:
    """The stack of the child's compiling thread: half this process's threads', at most 4 MiB.

    This process's threads get RLIMIT_STACK, which glibc gives a thread by default and the main
    thread grows to. A grammar that fits in half fits the runner's twice over. Windows gives a
    thread 1 MiB unless it asks: half of that.
    """
    soft = host_limits.stack_soft()
    if soft is None:
        return 512 << 10 if sys.platform == "win32" else 4 << 20
    return max(256 << 10, min(4 << 20, soft // 2))


class Guard:
    """The child that compiles grammars first, one per loaded model, shared by submitting threads.

    Grammars that passed are remembered by digest, since an agent sends its tools' schemas at every
    turn: a grammar costs one round trip once.
    """

    def __init__(self, deadline_s: float = DEADLINE_S) -> None:
        self.deadline_s = deadline_s
        self._lock = threading.Lock()
        self._child: asked.Asked | None = None
        self._passed: collections.OrderedDict[bytes, None] = collections.OrderedDict()

    def check(self, grammar: str) -> None:
        """Return when the grammar compiles in the child, else raise BadRequestError.

        The error says whether it did not compile, killed the child, or took past the deadline.
        """
        key = hashlib.sha256(grammar.encode("utf-8", "surrogatepass")).digest()
        with self._lock:
            if key in self._passed:
                self._passed.move_to_end(key)
                return
            error = self._ask(grammar)
            if error is None:
                self._passed[key] = None
                while len(self._passed) > REMEMBERED:
                    self._passed.popitem(last=False)
                return
        raise BadRequestError(error, hint=HINT)

    def close(self) -> None:
        with self._lock:
            if self._child is not None:
                self._child.kill()
                self._child = None

    def _ask(self, grammar: str) -> str | None:
        """The child's word on the grammar: None where it compiles, else why not."""
        try:
            if self._child is None or not self._child.alive():
                self._child = asked.Asked(
                    "localrun.engine.sampling.grammar_guard", str(guard_stack())
                )
            answer = self._child.ask({"grammar": grammar}, self.deadline_s)
        except asked.NotStarted as exc:
            self._child = None
            raise BusyError(
                f"the grammar compiler's check cannot start ({exc}); the grammar was not compiled",
                hint="retry in a few seconds; the server's log may say why",
                retry_after=5,
            ) from None
        except TimeoutError:
            self._child = None
            return f"compiling the output's schema or grammar took over {self.deadline_s:g} s"
        except EOFError:  # the child died compiling it
            self._child = None
            return (
                "the output's schema or grammar cannot be enforced: it crashed the grammar "
                "compiler (llguidance), in a process of its own"
            )
        if isinstance(answer, dict) and answer.get("ok") is True:
            return None
        return str(answer.get("error") if isinstance(answer, dict) else answer)[:400]


# -- the child ---------------------------------------------------------------------------------
# `python -m localrun.engine.sampling.grammar_guard STACK_BYTES` reads one JSON line a grammar
# and answers one: {"ok": true} or {"ok": false, "error": TEXT}. It is started on the first
# grammar and ends with its parent (its stdin closes).


def _compiles(question: Any) -> dict[str, Any]:
    try:
        grammar = question["grammar"]
        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, limits=LIMITS
        )
    except (KeyError, TypeError, ValueError) as exc:
        return {"ok": False, "error": f"the grammar cannot be read: {exc}"}
    return {"ok": False, "error": message(messages[0])} if failed else {"ok": True}


def main(argv: list[str]) -> int:
    # The compiler's recursion runs on a thread whose stack is the one asked for (half the
    # runner's): a grammar that fits here fits there twice over.
    threading.stack_size(int(argv[0]) if argv else 4 << 20)
    worker = threading.Thread(target=asked.serve, args=(_compiles,), name="guard", daemon=True)
    worker.start()
    worker.join()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
