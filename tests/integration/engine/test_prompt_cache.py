"""The disk prompt cache with a real model: a SYSTEM prompt restored by a second `localrun run`
process and by a restarted server, with the same answer, the two keeping entries apart, and the
state of a sliding-window or recurrent model cached on disk."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import httpx
import pytest

from localrun.engine.prompts import disk_cache as prompt_cache

from support import PATIENCE_S
from support.cli import CLI


def long_system() -> str:
    rng = random.Random(3)
    words = [
        "keeper",
        "lighthouse",
        "storm",
        "island",
        "bottle",
        "letter",
        "tide",
        "harbor",
        "wind",
        "lamp",
        "rock",
    ]
    return "You answer in one short sentence. Notes: " + " ".join(
        rng.choice(words) for _ in range(700)
    )


def stats(stderr: str) -> dict[str, str]:
    return dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in stderr.splitlines())
        if value
    )


@pytest.fixture
def sysmodel(cli: CLI, tmp_path: Path) -> str:
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(
        f'FROM smollm2:135m\nSYSTEM """{long_system()}"""\n'
        # num_thread fixed: the thread governor would change the count with the load, and a
        # different count rounds differently (the answers compared here would then differ).
        "PARAMETER temperature 0\nPARAMETER speculate off\nPARAMETER num_ctx 2048\n"
        "PARAMETER num_thread 2\n"
    )
    made = cli("create", "notes", "-f", str(modelfile))
    assert made.code == 0, made.stderr
    return "notes"


def entries() -> list[Path]:
    return sorted(prompt_cache.folder().glob("*" + prompt_cache.SUFFIX))


@pytest.mark.model
@pytest.mark.slow
def test_a_second_process_restores_the_system_prompt_with_the_same_answer(
    cli: CLI, sysmodel: str
) -> None:
    args = ("run", sysmodel, "What does the keeper find?", "--verbose")
    first = cli(*args, "--param", "num_predict=24")
    assert first.code == 0, first.stderr
    cold = stats(first.stderr)
    assert cold["prompt disk cache"] == "0 token(s)"
    assert len(entries()) == 1
    second = cli(*args, "--param", "num_predict=24")
    warm = stats(second.stderr)
    restored = int(warm["prompt disk cache"].split()[0])
    assert restored > 700, second.stderr
    assert second.stdout == first.stdout
    assert int(warm["prompt eval count"].split()[0]) < 40  # the question alone was evaluated
    # Another question reuses the same entry.
    other = cli("run", sysmodel, "Who writes the letter?", "--verbose", "--param", "num_predict=24")
    assert int(stats(other.stderr)["prompt disk cache"].split()[0]) == restored
    assert len(entries()) == 1
    # A damaged entry: ignored (the answer is the same), removed and written anew.
    (entry,) = entries()
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])
    damaged = cli(*args, "--param", "num_predict=24")
    assert damaged.code == 0 and damaged.stdout == first.stdout
    assert stats(damaged.stderr)["prompt disk cache"] == "0 token(s)"
    (rewritten,) = entries()
    assert rewritten.stat().st_size == len(data)
    # prune clears it.
    pruned = cli("prune")
    assert pruned.code == 0, pruned.stderr
    assert entries() == []


@pytest.mark.model
@pytest.mark.server
@pytest.mark.slow
def test_a_restarted_server_restores_the_system_prompt(store: Any, sysmodel: str) -> None:
    from localrun.scheduler import Scheduler

    from support.server import LiveServer

    body = {
        "model": sysmodel,
        "messages": [{"role": "user", "content": "What does the keeper find?"}],
        "stream": False,
        "options": {"num_predict": 16},
    }
    answers = []
    for _ in range(2):
        server = LiveServer(store, Scheduler(store, num_parallel=2, max_queue=8))
        try:
            reply = httpx.post(f"{server.url}/api/chat", json=body, timeout=PATIENCE_S).json()
        finally:
            server.close()
        answers.append(reply)
    assert answers[0]["prompt_disk_cache_count"] == 0
    assert answers[1]["prompt_disk_cache_count"] > 700, answers[1]
    assert answers[1]["message"]["content"] == answers[0]["message"]["content"]
    assert answers[1]["prompt_eval_duration"] < answers[0]["prompt_eval_duration"] / 3


@pytest.mark.model
@pytest.mark.server
@pytest.mark.slow
def test_localrun_run_and_a_server_keep_entries_of_their_own(
    cli: CLI, store: Any, sysmodel: str
) -> None:
    """llama.cpp restores a state only into a context of as many slots: `localrun run` (one)
    and a server (two) each keep an entry, and neither removes the other's."""
    from localrun.scheduler import Scheduler

    from support.server import LiveServer

    args = ("run", sysmodel, "What does the keeper find?", "--verbose", "--param", "num_predict=8")
    assert cli(*args).code == 0
    assert len(entries()) == 1
    body = {
        "model": sysmodel,
        "messages": [{"role": "user", "content": "Who writes the letter?"}],
        "stream": False,
        "options": {"num_predict": 8},
    }
    for restored in (False, True):  # the second server finds the first one's entry
        server = LiveServer(store, Scheduler(store, num_parallel=2, max_queue=8))
        try:
            reply = httpx.post(f"{server.url}/api/chat", json=body, timeout=PATIENCE_S).json()
        finally:
            server.close()
        assert (reply["prompt_disk_cache_count"] > 700) is restored, reply
        assert len(entries()) == 2
    again = cli(*args)
    assert int(stats(again.stderr)["prompt disk cache"].split()[0]) > 700, again.stderr


@pytest.mark.model
@pytest.mark.parametrize(
    ("kind", "says"), [("swa", "sliding window"), ("mamba", "checkpoints of the recurrent state")]
)
def test_a_sliding_window_or_recurrent_model_is_cached_on_disk_and_verbose_says_how(
    cli: CLI, tmp_path: Path, fixtures_dir: Path, kind: str, says: str
) -> None:
    """The state of the model's own turns is kept on disk whatever its memory: the full-size
    window cache of a sliding-window model, a recurrent model's state at the prefix's end."""
    from testmodels.text import write_tiny_mamba, write_tiny_model

    if kind == "swa":
        model = write_tiny_model(fixtures_dir / "tiny-swa.gguf", swa=8, n_ctx=4096)
    else:
        model = write_tiny_mamba(fixtures_dir / "tiny-mamba.gguf")
    system = " ".join(["word"] * 200)
    modelfile = tmp_path / "Modelfile"
    modelfile.write_text(f'FROM {model}\nSYSTEM """{system}"""\nPARAMETER num_ctx 512\n')
    made = cli("create", kind, "-f", str(modelfile))
    assert made.code == 0, made.stderr
    answers = []
    for restored in (False, True):
        args = ("--param", "num_predict=4", "--param", "temperature=0")
        result = cli("run", kind, "hello", "--verbose", *args)
        assert result.code == 0, result.stderr
        shown = stats(result.stderr)
        assert says in shown["prompt cache"], result.stderr
        assert (int(shown["prompt disk cache"].split()[0]) > 150) is restored, result.stderr
        answers.append(result.stdout)
    assert answers[0] == answers[1]
    assert len(entries()) == 1
