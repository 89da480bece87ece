"""`localrun run`: one-shot prompts, piped input, --format json, batch files and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localrun.store.local import Store

from support.cli import CLI, assert_one_line_error

pytestmark = pytest.mark.model

GREEDY = ["--param", "temperature=0", "--param", "num_predict=48"]


def test_one_shot_streams_only_the_answer(cli: CLI) -> None:
    result = cli("run", "smollm2:135m", "What is the capital of France?", *GREEDY)
    assert result.code == 0, result.stderr
    assert "Paris" in result.stdout
    assert "<|im_end|>" not in result.stdout and "<|im_start|>" not in result.stdout
    again = cli("run", "smollm2:135m", "What is the capital of France?", *GREEDY)
    assert again.stdout == result.stdout  # greedy is deterministic
    assert again.stderr == ""  # the model was imported by the first run; nothing else is said


def test_verbose_prints_timings_to_stderr(cli: CLI) -> None:
    result = cli("run", "smollm2:135m", "Say hi.", "--verbose", *GREEDY)
    assert result.code == 0, result.stderr
    for key in (
        "total duration:",
        "load duration:",
        "prompt eval count:",
        "prompt eval rate:",
        "eval count:",
        "eval duration:",
        "eval rate:",
    ):
        assert key in result.stderr
    assert "eval rate" not in result.stdout
    assert "running on the CPU" in result.stderr  # the offload decision, in one line


def test_prompt_from_stdin_and_appended(cli: CLI) -> None:
    piped = cli("run", "smollm2:135m", *GREEDY, input="What is the capital of France?\n")
    assert piped.code == 0 and "Paris" in piped.stdout
    both = cli(
        "run", "smollm2:135m", "Repeat this word exactly:", "--verbose", *GREEDY, input="banana\n"
    )
    assert both.code == 0
    alone = cli("run", "smollm2:135m", "Repeat this word exactly:", "--verbose", *GREEDY)
    count = [
        int(line.split()[3])
        for r in (both, alone)
        for line in r.stderr.splitlines()
        if line.startswith("prompt eval count:")
    ]
    assert count[0] > count[1]  # the piped text went into the prompt


def test_system_and_seed_and_params(cli: CLI) -> None:
    args = ["run", "smollm2:135m", "Who are you?", "--system", "You are a pirate named Bob."]
    args += ["--seed", "3", "--param", "temperature=0.7", "--param", "num_predict=30"]
    pirate = cli(*args)
    again = cli(*args)
    assert pirate.code == 0 and pirate.stdout == again.stdout  # same seed, same answer


def test_format_json_output_parses(cli: CLI) -> None:
    result = cli(
        "run",
        "smollm2:135m",
        "Reply with a JSON object with the keys name and age for a cat named Tom aged 3.",
        "--format",
        "json",
        "--param",
        "temperature=0",
        "--param",
        "num_predict=300",
    )
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout) == {"name": "Tom", "age": 3}


def test_bad_input_is_one_line(cli: CLI) -> None:
    assert_one_line_error(
        cli("run", "nothere", "hi"), "model 'nothere:latest' not found", "localrun list"
    )
    assert_one_line_error(cli("run", "smollm2:135m", "hi", "--param", "top_p=7"), "top_p")
    assert_one_line_error(cli("run", "smollm2:135m", "hi", "--param", "warmth=1"), "warmth")
    assert_one_line_error(cli("run", "smollm2:135m", "hi", "--param", "oops"), "NAME=VALUE")
    assert_one_line_error(cli("run", "smollm2:135m", "hi", "--format", "xml"), "--format")
    assert_one_line_error(cli("run", "smollm2:135m", input=""), "no prompt")


def test_prompt_longer_than_the_context(cli: CLI) -> None:
    long_prompt = "word " * 400
    result = cli("run", "smollm2:135m", long_prompt, "--param", "num_ctx=256")
    # This command's own ways to raise it, within the 8192 tokens SmolLM2 was trained on.
    assert_one_line_error(
        result,
        "longer than the model's context length of 256 tokens",
        "raise the context to 2048 tokens (the model was trained on 8192): --param num_ctx=2048",
    )


def test_num_ctx_above_the_trained_context_warns(cli: CLI) -> None:
    result = cli("run", "smollm2:135m", "hi", "--param", "num_ctx=16384", *GREEDY)
    assert result.code == 0, result.stderr
    assert "warning: num_ctx 16384 is larger than the 8192 tokens" in result.stderr


def test_corrupt_model_blob_points_to_verify(cli: CLI, home: Path) -> None:
    assert cli("show", "smollm2:135m").code == 0
    store = Store(home / "models")
    blob = store.blob_path(store.read_manifest(store.names()[0]).of_kind("model")[0].digest)
    data = bytearray(blob.read_bytes())
    data[0:4] = b"XXXX"
    blob.write_bytes(bytes(data))
    assert_one_line_error(cli("run", "smollm2:135m", "hi"), "damaged", "localrun verify")


def test_batch_keeps_order_and_ids_and_reports_bad_lines(cli: CLI, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "\n".join(
            [
                json.dumps("What is the capital of France?"),
                json.dumps({"id": "q2", "prompt": "Say hello.", "options": {"num_predict": 8}}),
                "{not json",
                json.dumps({"id": 4, "messages": [{"role": "user", "content": "Count to 3."}]}),
                json.dumps({"id": "bad-option", "prompt": "x", "options": {"top_p": 9}}),
                "",
                json.dumps(
                    {
                        "id": "last",
                        "prompt": "Reply with a JSON object with the key fruit: a fruit name.",
                        "format": "json",
                        "options": {"num_predict": 200},
                    }
                ),
            ]
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    result = cli("run", "smollm2:135m", "--batch", str(prompts), "--output", str(out), *GREEDY)
    assert result.code == 1  # some lines failed
    assert "2 line(s) failed" in result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4, 5]
    assert [r.get("id") for r in records] == [None, "q2", None, 4, "bad-option", "last"]
    assert "Paris" in records[0]["response"]
    assert records[1]["eval_count"] <= 8
    assert records[2]["error"]["code"] == "invalid_parameter"
    assert "not valid JSON" in records[2]["error"]["message"]
    assert records[4]["error"]["code"] == "invalid_parameter"
    json.loads(records[5]["response"])
    for record in (records[0], records[1], records[3], records[5]):
        assert record["prompt_eval_count"] > 0 and record["total_duration"] > 0
        assert record["done_reason"] in ("stop", "length")


def test_batch_all_good_to_stdout(cli: CLI, tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps("Say yes.") + "\n" + json.dumps("Say no.") + "\n")
    result = cli("run", "smollm2:135m", "--batch", str(prompts), *GREEDY)
    assert result.code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 2 and all("response" in r for r in lines)
    # The shared system prompt of the second line came from the KV cache; the prompt is counted
    # whole, as the API counts it.
    assert lines[1]["prompt_cache_count"] > 0
    assert lines[1]["prompt_eval_count"] > lines[1]["prompt_cache_count"]
    assert lines[0]["prompt_eval_count"] >= lines[1]["prompt_cache_count"]


def test_missing_batch_file(cli: CLI, tmp_path: Path) -> None:
    assert_one_line_error(
        cli("run", "smollm2:135m", "--batch", str(tmp_path / "none.jsonl")), "cannot read"
    )
