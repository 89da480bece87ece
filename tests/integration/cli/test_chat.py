"""The terminal chat, driven through a real pseudo-terminal (pexpect) with SmolLM2."""

from __future__ import annotations

import json
import os
import re
import stat
import sys
from pathlib import Path

import pexpect
import pytest

from support import PATIENCE_S
from support.cli import CLI

pytestmark = [pytest.mark.model, pytest.mark.slow]

PROMPT = ">>> "


def _spawn(home: Path, *args: str) -> pexpect.spawn:
    env = {**os.environ, "LOCALRUN_HOME": str(home), "TERM": "dumb", "PYTHONUNBUFFERED": "1"}
    child = pexpect.spawn(
        sys.executable,
        ["-m", "localrun", "run", "smollm2:135m", *args],
        env=env,
        encoding="utf-8",
        timeout=PATIENCE_S,
        dimensions=(40, 200),
    )
    child.expect_exact(PROMPT)
    return child


def _counts(text: str) -> tuple[int, int]:
    evaluated = int(re.search(r"prompt eval count:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    cached = int(re.search(r"prompt cache hit:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    return evaluated, cached


def test_turns_reuse_the_cache_and_save_the_session(cli: CLI, home: Path) -> None:
    assert cli("show", "smollm2:135m").code == 0  # import once, outside the timed session
    child = _spawn(home, "--verbose", "--param", "temperature=0", "--param", "num_predict=40")
    child.sendline("What is the capital of France?")
    child.expect(r"done reason:\s+\w+")
    first = child.before
    assert "Paris" in first
    first_eval, first_cached = _counts(first)
    assert first_cached == 0
    child.expect_exact(PROMPT)
    child.sendline("And of Italy?")
    child.expect(r"done reason:\s+\w+")
    second_eval, second_cached = _counts(child.before)
    # The whole first exchange came from the KV cache; only the new turn was evaluated.
    assert second_cached >= first_eval
    assert second_eval < 20
    child.expect_exact(PROMPT)
    child.sendline('"""Reply with one word:')
    child.expect_exact("... ")
    child.sendline('what colour is the sky?"""')
    child.expect(r"done reason:\s+\w+")
    child.expect_exact(PROMPT)
    child.sendline("/set system You are a terse assistant.")
    child.expect_exact("Set system message.")
    child.expect_exact(PROMPT)
    child.sendline("/show system")
    child.expect_exact("You are a terse assistant.")
    child.expect_exact(PROMPT)
    child.sendline("/save france-chat")
    child.expect_exact("Created new model 'france-chat:latest'")
    child.expect_exact(PROMPT)
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    saved = json.loads(cli("show", "france-chat", "--json").stdout)
    assert saved["system"] == "You are a terse assistant."
    assert saved["parent"] == "smollm2:135m"
    roles = [m["role"] for m in saved["messages"]]
    assert roles == ["user", "assistant"] * 3
    assert saved["messages"][0]["content"] == "What is the capital of France?"
    assert saved["messages"][4]["content"] == "Reply with one word:\nwhat colour is the sky?"
    assert saved["parameters"]["temperature"] == 0.0
    # History survives the session, readable by its owner alone (in a home made 0700).
    assert "What is the capital of France?" in (home / "history").read_text()
    assert stat.S_IMODE((home / "history").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_the_wait_for_a_load_shows_life(cli: CLI, home: Path) -> None:
    """The model loads before the prompt shows: a spinner says so (a newcomer waited 4.7 s for
    the first answer with no sign of life), and is gone once the model is in."""
    assert cli("show", "smollm2:135m").code == 0  # imported: what is left is the load
    child = _spawn(home)
    assert "loading smollm2:135m" in child.before, child.before
    child.sendline("/bye")
    child.expect(pexpect.EOF)


def test_ctrl_c_stops_the_answer_and_keeps_the_session(cli: CLI, home: Path) -> None:
    assert cli("show", "smollm2:135m").code == 0
    child = _spawn(home, "--param", "num_predict=2000", "--param", "temperature=0.8")
    child.sendline("Write a very long story about a dragon and a knight.")
    child.expect_exact("knight.\r\n")  # the echo of the input
    child.expect(r"\w+ \w+ \w+ \w+")  # some words of the answer have streamed
    child.sendintr()
    child.expect_exact(PROMPT)
    child.sendline("/show parameters")
    child.expect_exact("num_predict")
    child.expect_exact(PROMPT)
    child.sendline("/set parameter temperature hot")
    child.expect_exact("Error: invalid value for parameter temperature")
    child.expect_exact(PROMPT)
    child.sendline("/nonsense")
    child.expect_exact("Unknown command '/nonsense'")
    child.expect_exact(PROMPT)
    child.sendline("/set parameter num_predict 5")
    child.expect_exact("Set parameter 'num_predict' to '5'")
    child.expect_exact(PROMPT)
    child.sendline("Hello!")
    child.expect_exact(PROMPT)
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_load_switches_models(cli: CLI, home: Path, tmp_path: Path) -> None:
    mf = tmp_path / "Modelfile"
    mf.write_text("FROM smollm2:135m\nSYSTEM You always answer 'Arr!'.\n")
    assert cli("create", "pirate", "-f", str(mf)).code == 0
    child = _spawn(home)
    child.sendline("/load pirate")
    child.expect_exact("Loading model 'pirate:latest'")
    child.expect_exact(PROMPT)
    child.sendline("/show system")
    child.expect_exact("You always answer 'Arr!'.")
    child.expect_exact(PROMPT)
    child.sendline("/load ghost")
    child.expect_exact("Error: model 'ghost:latest' not found")
    child.expect_exact(PROMPT)
    child.sendline("/bye")
    child.expect(pexpect.EOF)
