"""Hostile schemas and tool types (issue 76's items 1, 2, 4 and 11): patterns the check after
backtracks on, $ref chains, formats of 100,000 properties, hosted-tool types that reach a header
and the log, replayed against a real `localrun serve` on an ephemeral port, timed and watched.

    python scripts/fuzz/schemas.py [--only ITEM]...

Each case prints a row, and the run ends with each item against the issue's targets
(fuzzlib.replay). The exit status is 1 when a case got a 5xx, a dropped connection, a
traceback, or the server died.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from fuzzlib import inputs, replay
from fuzzlib.watched import Fuzz

HI = inputs.HI
STREAM = replay.STREAM


# -- items 1, 2, 4: schemas -------------------------------------------------------------------


PATTERNS = ["^(a|.)*b$", "^(a|a)*b$", "^(.|\\w)*!$", "^(?:a|[^b])*b$"]


def ref_chain(n: int) -> dict[str, Any]:
    defs: dict[str, Any] = {
        f"d{i}": {"type": "object", "properties": {"x": {"$ref": f"#/$defs/d{i + 1}"}}}
        for i in range(n)
    }
    defs[f"d{n}"] = {"type": "string"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def item1(fz: Fuzz) -> None:
    """A pattern the check after backtracks on, the subject forced by a const (27 and 40
    characters); the check's deadline is LOCALRUN_CHECK_TIMEOUT (5 s)."""
    for pattern in PATTERNS:
        for size in (27, 40):
            schema = {"type": "string", "const": "a" * size, "not": {"pattern": pattern}}
            body = {"model": "base", "prompt": "Say a", "format": schema, "stream": False,
                    "options": {"num_predict": 64}}  # fmt: skip
            fz.request(f"format not {pattern} on {size} a", "POST", "/api/generate", body,
                       want="422|200", within=7.0)  # fmt: skip


def _runner_pid(fz: Fuzz) -> int | None:
    import psutil

    for child in psutil.Process(fz.proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if "localrun.worker" in " ".join(child.cmdline()):
                return int(child.pid)
    return None


def item2(fz: Fuzz) -> None:
    """A $ref chain of 2,500 (60 KB) in Ollama's format and OpenAI's response_format: the
    runner must live (its pid is the same after)."""
    for n in (2_000, 2_500, 10_000):
        chain = ref_chain(n)
        pid = _runner_pid(fz)

        def same_runner(_: httpx.Response, __: str, pid: int | None = pid) -> list[str]:
            return [] if _runner_pid(fz) == pid else ["the runner changed"]

        fz.request(f"format: a $ref chain of {n}", "POST", "/api/generate",
                   {"model": "base", "prompt": "Hi", "format": chain, "stream": False},
                   check=same_runner)  # fmt: skip
        body = {"model": "base", "messages": HI, "response_format": {
            "type": "json_schema", "json_schema": {"name": "c", "schema": chain}}}  # fmt: skip
        fz.request(f"response_format: a $ref chain of {n}", "POST", "/v1/chat/completions",
                   body, check=same_runner)  # fmt: skip


def item4(fz: Fuzz) -> None:
    """A format of 20,000 and 100,000 properties (jsonschema read the first for 17 s on the
    event loop)."""
    for n in (20_000, 100_000):
        schema = {"type": "object", "uniqueItems": True,
                  "properties": {f"p{i}": {"type": "string"} for i in range(n)}}  # fmt: skip
        fz.request(f"format of {n} properties", "POST", "/api/generate",
                   {"model": "base", "prompt": "Hi", "format": schema, "stream": False},
                   within=7.0)  # fmt: skip


# -- items 11, 12, 14: tool types, settings, launch --------------------------------------------


TYPES = {
    "CR/LF": "web_search\r\nX-Forged: 1",
    "a forged log line": "x\nFORGED-LOG-LINE: admin logged in",
    "NUL": "web\x00search",
    "outside Latin-1": "web_search_\u20ac\u6f22",
}


def item11(fz: Fuzz) -> None:
    """Hosted-tool types that reach the X-Localrun-Tools-Left-Out header and the log."""
    for label, kind in TYPES.items():
        body = {"model": "base", "input": "Hi", "tools": [{"type": kind}],
                "max_output_tokens": 4}  # fmt: skip

        def clean(answer: httpx.Response, _: str) -> list[str]:
            shown = answer.headers.get("x-localrun-tools-left-out", "")
            bad = [c for c in shown if not 32 <= ord(c) < 127]
            return [f"header holds {bad[:3]!r}"] if bad else []

        fz.request(f"hosted tool type with {label}", "POST", "/v1/responses", body,
                   want="200|400", within=10.0, check=clean)  # fmt: skip
    forged = [x for x in fz.log.read_text(errors="replace").splitlines()
              if x.startswith("FORGED-LOG-LINE")]  # fmt: skip
    if forged:
        fz.rows[-1].checks.append(f"{len(forged)} forged log lines")


# -- the run -----------------------------------------------------------------------------------


ITEMS = ["1", "2", "4", "11"]
COMMANDS: replay.Steps = {}
SERVER: replay.Steps = {"1": item1, "2": item2, "4": item4, "11": item11}


def main(argv: list[str] | None = None) -> int:
    return replay.main(__doc__, ITEMS, COMMANDS, SERVER, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
